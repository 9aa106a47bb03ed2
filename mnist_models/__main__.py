"""`python -m mnist_models ...` is `mnist-bench ...`; torchrun starts each rank this way (`-m mnist_models`)."""

from .cli import run_as_process

run_as_process()
