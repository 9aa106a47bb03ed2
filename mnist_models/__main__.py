"""`python -m mnist_models ...` is `mnist-bench ...`; torchrun starts each rank this way (`-m mnist_models`)."""

import sys

from .cli import main

sys.exit(main())
