"""Run `mnist-bench ARGS...` as one rank of a torchrun job with a fault planted (the DDP tests).

usage (under torchrun): ddp_plant.py PLANT mnist-bench-args...
PLANT  nan:R        rank R's epoch loss is NaN (as if its shard blew up)
       error:R      rank R raises its own RuntimeError (an out-of-memory) in its first epoch
       slow-end:S   rank 0's seed-style evaluation, done alone after training, takes S seconds longer
       code:R       rank R runs another checkout's code (its source digest differs)
       data:R       rank R loaded other data (its dataset digest differs)
"""

import math
import os
import sys
import time
from dataclasses import replace

import mnist_models.runs.train as training
from mnist_models import cli

plant, args = sys.argv[1], sys.argv[2:]
kind, _, value = plant.partition(":")
rank = int(os.environ["RANK"])
real_epoch, real_evaluate = training.train_epoch, training.evaluate


def epoch(*a, **k):
    if kind == "error" and rank == int(value):
        raise RuntimeError("CPU out of memory (planted): tried to allocate 1.00 GiB")
    result = real_epoch(*a, **k)
    return replace(result, mean_loss=math.nan) if kind == "nan" and rank == int(value) else result


def evaluate(*a, scale=True, **k):
    if kind == "slow-end" and rank == 0 and not scale:
        time.sleep(float(value))
    return real_evaluate(*a, scale=scale, **k)


training.train_epoch, training.evaluate = epoch, evaluate
if kind == "code" and rank == int(value):
    import mnist_models.scale.job as job

    job.code_fingerprint = lambda: "another-checkout"
if kind == "data" and rank == int(value):
    from mnist_models.core.data import Dataset

    Dataset.digest = lambda self: "other-images"
cli.run_as_process(args)  # and end as a real rank does (distributed.end_process)
