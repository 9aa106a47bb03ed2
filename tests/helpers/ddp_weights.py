"""Run `mnist-bench ARGS...` as one rank of a torchrun job, and keep this rank's trained weights.

usage (under torchrun): ddp_weights.py OUT_DIR mnist-bench-args...   -> OUT_DIR/rank<RANK>.pt
"""

import os
import sys

import torch

import mnist_models.runs.train as training
from mnist_models import cli

out, args = sys.argv[1], sys.argv[2:]
real_train = training.train


def train_and_keep(*a, **k):
    model, record = real_train(*a, **k)
    torch.save(
        {name: t.detach().clone() for name, t in model.state_dict().items()}, os.path.join(out, f"rank{os.environ['RANK']}.pt")
    )
    return model, record


training.train = train_and_keep
sys.exit(cli.main(args))
