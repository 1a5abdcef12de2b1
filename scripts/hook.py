"""Runs a pre-commit hook's command from one of the repository's venvs, building the venv first when it is missing.

Usage (the hooks' `entry` in .pre-commit-config.yaml): `python3 scripts/hook.py VENV COMMAND [ARG...]`, e.g.
`python3 scripts/hook.py .venv .venv/bin/ruff check`; pre-commit appends the file names. When VENV/.installed
does not exist (before the first `make test`), it runs `make -s VENV/.installed` first (a few minutes the first
time), under a lock: pre-commit runs a hook in several processes at once. Then it execs COMMAND.

Standard library only.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def say(text: str) -> None:
    print(f"scripts/hook.py: {text}", file=sys.stderr, flush=True)


def ensure_venv(venv: str) -> int:
    """Builds VENV with make when its marker is missing; returns make's exit status (0 when nothing to do)."""
    marker = ROOT / venv / ".installed"
    if marker.exists():
        return 0
    target = f"{venv}/.installed"
    lock_path = ROOT / "build" / f"{venv.strip('/').replace('/', '_')}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another hook process may be building it: wait for it
        if marker.exists():
            return 0
        say(f"{venv} is missing: building it with `make {target}` (can take a few minutes)")
        make = os.environ.get("MAKE", "make")
        status = subprocess.run(
            [make, "-s", "--no-print-directory", "-C", str(ROOT), target],
            stdin=subprocess.DEVNULL,
            stdout=sys.stderr,
            check=False,
        ).returncode
    if status != 0:
        say(f"building {venv} failed (make exit status {status}); run `make {target}` to see why")
    return status


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        say("usage: python3 scripts/hook.py VENV COMMAND [ARG...]")
        return 2
    venv, command = argv[0], argv[1:]
    status = ensure_venv(venv)
    if status != 0:
        return status
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        say(f"cannot run {command[0]} ({exc.strerror}); run `make {venv}/.installed` (or `rm -r {venv}` first)")
        return 127
    return 0  # not reached: execvp replaces this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
