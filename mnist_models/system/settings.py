"""Settings a user may give through the environment, read with the same rules as the flags."""

from __future__ import annotations

import os

from .errors import UsageError


def seconds_from_env(name: str, default: float) -> float:
    """A positive number of seconds from $name (a time bound a user may widen), else `default`; any
    other value is a one-line UsageError naming the variable, never a ValueError deep inside a run."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds == float("inf"):
        raise UsageError(f"${name} must be a positive number of seconds, got {raw!r}")
    return seconds
