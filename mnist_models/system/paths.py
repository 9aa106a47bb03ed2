"""Where files go by default: one home folder, so reports never scatter over the folders a command
happens to be run from.

The home is, in order: $MNIST_BENCH_HOME; the source checkout this package runs from (the folder
holding pyproject.toml and mnist_models/, as with `pip install -e .`); else the current folder.
Every default path (`data/`, `reports/` and what lies below it, `.benchmarks/`) is relative to the
home. A relative path given on the command line means what the shell means: relative to the current
folder. Paths written into records and reports are shown relative to the home when they lie in it.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "MNIST_BENCH_HOME"
# The folder that holds the mnist_models package (this file is mnist_models/system/paths.py).
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def _checkout() -> Path | None:
    if (SOURCE_ROOT / "pyproject.toml").is_file() and (SOURCE_ROOT / "mnist_models").is_dir():
        return SOURCE_ROOT
    return None


def home() -> Path:
    """The folder every default path is relative to (see the module's docstring)."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser().resolve()
    return _checkout() or Path.cwd()


def shown(path: Path | str) -> str:
    """A path as records and reports show it: relative to the home when it lies inside, else absolute."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(home()))
    except ValueError:
        return str(resolved)


# Every generated file lives under this folder unless a flag names another place.
REPORTS_DIR = home() / "reports"
# Each machine's evidence (benchmarks, profiles, tune results, baselines, run records) lives in its
# own folder below this one, named by system.machine.machine_key: a run on one machine never
# replaces or mixes into another's. Summaries of all machines stay directly in REPORTS_DIR.
MACHINES_DIR = REPORTS_DIR / "machines"
