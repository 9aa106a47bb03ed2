"""Run the scaling job (mnist_models.scale.scaling) as one rank of a torchrun job, with one rank's
train step slowed: a planted straggler.

usage (under torchrun): slow_rank.py RANK SECONDS scaling-args...
"""

import os
import sys
import time

import mnist_models.scale.scaling as scaling

slow_rank, seconds, args = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
real_build = scaling.build


def build(*a, **k):
    work = real_build(*a, **k)
    if int(os.environ["RANK"]) == slow_rank:
        real_step = work.step

        def step(x, y):
            time.sleep(seconds)
            return real_step(x, y)

        work.step = step
    return work


scaling.build = build
sys.exit(scaling.main(args))
