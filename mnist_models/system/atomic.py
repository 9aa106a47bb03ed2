"""Atomic writes: a reader sees the old file or the whole new one, never half of one.

Each write goes to a temporary file in the destination's folder (same filesystem), is flushed to
disk, and is moved into place with os.replace, which is atomic on POSIX and Windows. Temporary
names carry the writer's pid (`.NAME.PID.XXXX.tmp`), so a later run can tell the leftovers of a
killed writer from the files of a live one (`stale_temp_files`). Files get the permissions of any
other file this process creates (mkstemp's 0600 would hide results from other users).

Every OSError becomes a one-line WriteError naming the path: a full disk is a message, not a traceback.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import WriteError

_TEMP = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _cannot(path: Path, exc: OSError) -> WriteError:
    return WriteError(f"cannot write {path}: {exc.strerror or exc}")


def stage(path: Path, write: Callable[[Any], None], mode: str = "w") -> Path:
    """Write a temporary file beside `path`, flushed to disk but not yet in place; returns its path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _cannot(path.parent, exc) from None
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _cannot(path, exc) from None
    except RuntimeError as exc:
        Path(tmp).unlink(missing_ok=True)
        if "PytorchStreamWriter" in str(exc) or "inline_container" in str(exc):  # torch.save's C++ writer on a failed write
            raise WriteError(f"cannot write {path}: the write failed ({_free_space(path.parent)})") from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _free_space(folder: Path) -> str:
    """'no space left on the device: 0 bytes free' or how much is free, for a failed write's message."""
    try:
        stats = os.statvfs(folder)
    except OSError:
        return "is the disk full?"
    free = stats.f_bavail * stats.f_frsize
    return "no space left on the device" if free < 2**20 else f"{free / 2**20:.0f} MiB free there; is the disk full?"


def commit(tmp: Path, path: Path) -> Path:
    """Move a staged file into place (atomic within one filesystem)."""
    try:
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _cannot(path, exc) from None
    return Path(path)


def _write(path: Path, write: Callable[[Any], None], mode: str) -> Path:
    return commit(stage(path, write, mode), path)


def ensure_writable_dir(path: Path) -> Path:
    """Create `path` if needed and prove a file can be written there, before hours of work."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise _cannot(path, exc) from None
    return path


def check_writable_dir(path: Path) -> Path:
    """Prove that `path` could be created and written, without creating it (a failed run leaves no folder)."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise WriteError(f"cannot write to {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WriteError(f"cannot write to {path}: no permission to write in {existing}")
    return path


def write_text(path: Path, text: str) -> Path:
    return _write(path, lambda fh: fh.write(text), "w")


def write_bytes(path: Path, data: bytes) -> Path:
    return _write(path, lambda fh: fh.write(data), "wb")


def json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


def write_json(path: Path, obj: Any) -> Path:
    return write_text(path, json_text(obj))


def torch_writer(obj: Any) -> Callable[[Any], None]:
    import torch

    return lambda fh: torch.save(obj, fh)


def save_torch(path: Path, obj: Any) -> Path:
    return _write(path, torch_writer(obj), "wb")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # somebody else's live process
    return True


def process_start(pid: int) -> str | None:
    """When a process started (clock ticks since boot, /proc/PID/stat field 22), or None where that
    cannot be read (not Linux, no such process). With the pid it names one process: a pid is reused,
    a (pid, start) pair is not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after the command name, which may hold spaces and ')'
    return fields[19] if len(fields) > 19 else None


def same_process_alive(pid: int, started: str | None) -> bool:
    """Is the process that wrote (pid, started) still running? A live pid with another start time is a
    different process that got the number after the writer died."""
    if not pid_alive(pid):
        return False
    now = process_start(pid)
    return started is None or now is None or now == started


def stale_temp_files(folder: Path) -> list[Path]:
    """Temporary files in `folder` whose writer is no longer running (killed mid-write)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = []
    for path in folder.iterdir():
        match = _TEMP.match(path.name)
        if match and not pid_alive(int(match.group(1))):
            stale.append(path)
    return stale
