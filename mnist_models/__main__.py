"""`python -m mnist_models ...` is `mnist-bench ...`; torchrun starts each rank this way (`-m mnist_models`)."""

import os
import sys

from .cli import main

code = main()
if "TORCHELASTIC_RUN_ID" in os.environ:  # a torchrun rank (distributed.under_torchrun, without importing torch)
    from .scale.distributed import leave

    leave(code)
sys.exit(code)
