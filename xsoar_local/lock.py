"""One platform per data dir: `xsoar-local up` holds a lock on `<data_dir>/xsoar-local.lock` while it runs.

The lock is an advisory `flock` on the open file, so the kernel releases it when the process ends however it ends
(SIGKILL included): a stale file never blocks a new start. The file's content says who holds it (pid, config,
gateway URL), for the message a second `up` prints and for `status`, which asks the running platform.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xsoar_local.errors import XsoarLocalError

# How long `acquire` tries before it takes the lock for another platform's: 40 x 50 ms.
ACQUIRE_ATTEMPTS = 40
ACQUIRE_INTERVAL = 0.05


@dataclass
class DataDirLock:
    path: Path
    _fd: int | None = None

    def acquire(self, **holder: Any) -> None:
        """Take the lock and record `holder` in the file; raises when another platform holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise XsoarLocalError(
                f"data dir {self.path.parent} cannot be used: {exc.strerror or exc}"
                " (fix: set server.data_dir to a folder this user can write)"
            ) from None
        # `read_holder` (a `status` call) holds a shared lock for a moment: only a lock held all along is another
        # platform's.
        for attempt in range(ACQUIRE_ATTEMPTS):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == ACQUIRE_ATTEMPTS - 1:
                    os.close(fd)
                    raise XsoarLocalError(_held_message(self.path, read_holder(self.path))) from None
                time.sleep(ACQUIRE_INTERVAL)
        self._fd = fd
        self.update(pid=os.getpid(), **holder)

    def update(self, **holder: Any) -> None:
        """Record more about the holder (the gateway's URL once it is bound)."""
        if self._fd is None:
            return
        recorded = {**_read(self.path), **holder}
        data = (json.dumps(recorded, sort_keys=True) + "\n").encode()
        os.pwrite(self._fd, data, 0)  # written over, then cut: a reader never finds it empty meanwhile
        os.ftruncate(self._fd, len(data))

    def release(self) -> None:
        if self._fd is None:
            return
        # Emptied first: a reader that finds the lock free and the file empty knows nobody runs.
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


def read_holder(path: Path) -> dict[str, Any] | None:
    """What the running platform recorded in the lock file, or None when no platform holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(path)  # held: by a running platform
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _held_message(path: Path, holder: dict[str, Any] | None) -> str:
    holder = holder or {}
    who = ", ".join(
        f"{label} {holder[key]}"
        for key, label in (("pid", "pid"), ("url", "gateway"), ("config", "config"))
        if key in holder
    )
    return (
        f"data dir {path.parent} is in use by another xsoar-local ({who or 'details unknown'}):"
        " one platform per data dir (fix: stop that one first, or give this config another server.data_dir)"
    )
