"""Atomic writes: a reader sees the old file or the whole new one, never half of one.

Each write goes to a temporary file in the destination's folder (same filesystem) and is moved
into place with os.replace, which is atomic on POSIX and Windows.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import UsageError


def _write_via_temp(path: Path, write: Callable[[Any], None], mode: str) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UsageError(f"cannot write to {path.parent}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def ensure_writable_dir(path: Path) -> Path:
    """Create `path` if needed and prove a file can be written there, before hours of work."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write to {path}: {exc.strerror or exc}") from None
    return path


def write_text(path: Path, text: str) -> Path:
    return _write_via_temp(path, lambda fh: fh.write(text), "w")


def write_bytes(path: Path, data: bytes) -> Path:
    return _write_via_temp(path, lambda fh: fh.write(data), "wb")


def write_json(path: Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_torch(path: Path, obj: Any) -> Path:
    import torch

    return _write_via_temp(path, lambda fh: torch.save(obj, fh), "wb")
