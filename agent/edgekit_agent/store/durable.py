"""Crash-safe file writes for the store: temporary file, fsync, ``os.replace``, fsync of the folder.

``checkpoint(step)`` lets tests SIGKILL the process at a named step (``EDGEKIT_STORE_CRASH_AT``).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from ..errors import StoreError, first_line
from ..validate import loads_strict

CRASH_HOOK_ENV = "EDGEKIT_STORE_CRASH_AT"  # tests: SIGKILL ourselves at this install step
_COPY_CHUNK = 64 << 10


def copy_durably(src: Path, dst: Path) -> Path:
    """Copy to a temporary name beside ``dst`` and fsync it; ``_place`` makes it the slot's bundle."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            first = True
            while chunk := fin.read(_COPY_CHUNK):
                fout.write(chunk)
                if first:
                    fout.flush()
                    checkpoint("copying")
                    first = False
            fout.flush()
            os.fsync(fout.fileno())
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot write slot {dst.parent.name}: {exc.strerror or exc}; "
                         "previous bundle stays active") from None
    return tmp


def place(staged: Path, dst: Path) -> None:
    try:
        os.replace(staged, dst)
        fsync_dir(dst.parent)
    except OSError as exc:
        raise StoreError(f"cannot place the bundle in slot {dst.parent.name}: "
                         f"{exc.strerror or exc}") from None


def write_json_atomic(path: Path, obj: Any, hook: str | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        if hook:
            checkpoint(hook)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object (strict: no NaN, no duplicate keys), None when the file does not exist."""
    try:
        obj = loads_strict(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:
        raise StoreError(f"{path} is unreadable ({first_line(exc)}); the store needs repair") from None
    if not isinstance(obj, dict):
        raise StoreError(f"{path} is not a JSON object; the store needs repair")
    return obj


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def checkpoint(step: str) -> None:
    if os.environ.get(CRASH_HOOK_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
