"""Run `mnist-bench ARGS...` as one rank of a torchrun job; keep this rank's trained weights and a log
of what it did.

usage (under torchrun): ddp_weights.py OUT_DIR mnist-bench-args...
  -> OUT_DIR/rank<RANK>.pt (its final weights) and OUT_DIR/rank<RANK>.json: {"losses": its own
     per-epoch mean loss (its shard), "evaluations": how many test-set evaluations it ran}
"""

import json
import os
import sys

import torch

import mnist_models.runs.train as training
from mnist_models import cli
from mnist_models.scale.distributed import end_process

out, args = sys.argv[1], sys.argv[2:]
rank = os.environ["RANK"]
real_train, real_epoch, real_evaluate = training.train, training.train_epoch, training.evaluate
log = {"losses": [], "evaluations": 0}


def train_and_keep(*a, **k):
    model, record = real_train(*a, **k)
    torch.save({name: t.detach().clone() for name, t in model.state_dict().items()}, os.path.join(out, f"rank{rank}.pt"))
    return model, record


def epoch(*a, **k):
    result = real_epoch(*a, **k)
    log["losses"].append(result.mean_loss)
    return result


def evaluate(*a, **k):
    log["evaluations"] += 1
    return real_evaluate(*a, **k)


training.train, training.train_epoch, training.evaluate = train_and_keep, epoch, evaluate
try:
    status = cli.main(args)
finally:
    with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
        json.dump(log, fh)
end_process(status)  # as a real rank ends
