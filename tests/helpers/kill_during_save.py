"""Run `mnist-bench ARGS...` and SIGKILL the process while it saves its Nth run (the fault tests).

usage: kill_during_save.py WHERE N mnist-bench-args...
WHERE: weights (halfway through writing the weights), record (halfway through writing the record,
weights staged), between (weights moved into place, record not yet).
"""

import os
import signal
import sys

from mnist_models import cli
from mnist_models.system import atomic

where, nth, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
real_stage, real_commit = atomic.stage, atomic.commit
saves = {".pt": 0, ".json": 0}


def die(fh=None):
    if fh is not None:
        fh.write(b"half" if "b" in fh.mode else "half")
        fh.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def stage(path, write, mode="w"):
    suffix = os.path.splitext(str(path))[1]
    if suffix in saves:
        saves[suffix] += 1
        if saves[suffix] == nth and (where, suffix) in (("weights", ".pt"), ("record", ".json")):
            return real_stage(path, die, mode)
    return real_stage(path, write, mode)


def commit(tmp, path):
    if where == "between" and str(path).endswith(".json") and saves[".json"] == nth:
        die()
    return real_commit(tmp, path)


atomic.stage, atomic.commit = stage, commit
cli.run_as_process(args)
