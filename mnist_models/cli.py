"""`mnist-bench`: the command line. It parses and prints; what a command does lives in its wing.

The commands are declared in mnist_models/commands/ (training.py: train, sweep, tune, recipe-search,
targets, data; comparing.py: ab, calibrate, bisect, explain, compare; reports.py: profile, report),
their shared flags in commands/flags.py. This module is the edge every command passes through: the
environment is checked once, SIGTERM is turned into a clean stop like Ctrl-C, and an error a user can
cause (MnistBenchError) prints as one line and exits non-zero; nothing half-written stays.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from .commands import comparing, reports, training
from .system.allocator import keep_freed_memory
from .system.errors import Interrupted, MnistBenchError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (plus a pointer to --help), not a usage dump."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mnist-bench",
        description="Train, sweep, profile and report on the seed's two MNIST CNNs (simple, deep).",
    )
    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("mnist-cnn-bench")
    except PackageNotFoundError:  # run from a checkout that was not installed
        own = "unknown (not installed)"
    parser.add_argument("--version", action="version", version=f"mnist-bench {own}", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for commands in (training, comparing, reports):
        commands.register(sub)
    return parser


def _terminated(signum, frame) -> None:
    raise Interrupted("terminated (SIGTERM): every process this command started was ended; finished runs are saved", signum)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        from .runs.config import check_thread_env
        from .scale.distributed import Rank

        check_thread_env()  # the environment is read once, with the flags' rules, before any work
        Rank.from_env()
        signal.signal(signal.SIGTERM, _terminated)  # SIGTERM cleans up as Ctrl-C does (claims, workers, temp files)
        keep_freed_memory()  # before any tensor: every command's steps reuse their memory (system/allocator.py)
        return args.func(args)
    except MnistBenchError as exc:
        from .scale.distributed import report_failure

        try:
            rank = Rank.from_env()
        except MnistBenchError:  # the environment itself was the error
            rank = None
        where = f"rank {rank.rank}: " if rank and rank.world_size > 1 and not str(exc).startswith("rank ") else ""
        print(f"mnist-bench: error: {where}{exc}", file=sys.stderr)
        if rank:
            report_failure(str(exc))  # torchrun's launcher reads it: the job's one-line reason
        return exc.exit_code
    except KeyboardInterrupt:
        print("mnist-bench: interrupted; finished runs are saved, the unfinished one left nothing behind", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mnist-bench data | head -1`: the reader is gone, which is no error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's exit flush must not raise again
        return 0


def run_as_process(argv: list[str] | None = None) -> None:
    """main(argv) as a whole process: `mnist-bench`, `python -m mnist_models` and the tests' planted
    ranks all run and end here (scale/distributed.py, end_process), so a test's rank ends as a user's does."""
    from .scale.distributed import end_process

    end_process(main(argv))


if __name__ == "__main__":
    run_as_process()
