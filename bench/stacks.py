"""The stacks a run measures: each one an interpreter that every server process of the stack runs on.

- image: `.venv-image` (the `demisto/fastapi` image replicated: Python 3.12, uvicorn with h11 on plain asyncio,
  no httptools, no uvloop), what the integration really runs on. The headline table.
- dev: `.venv` (Python 3.11 with httptools and uvloop), the development venv. The second table.

The load generator and the driver run on this interpreter (the dev venv) whatever the stack.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
IMAGE_PYTHON = REPO / ".venv-image" / "bin" / "python"
DEV_PYTHON = REPO / ".venv" / "bin" / "python"
STACK_KEYS = ("image", "dev")
TITLES = {
    "image": "image stack (.venv-image: the demisto/fastapi image replicated, h11 + asyncio)",
    "dev": "dev stack (.venv: httptools + uvloop)",
}

# Run by each stack's own interpreter: what it has, and what uvicorn's "auto" settings pick there.
_PROBE = """
import importlib.metadata as metadata, importlib.util, json, platform, sys
found = {"python": platform.python_version(), "executable": sys.executable}
for name in ("uvicorn", "h11", "httptools", "uvloop", "fastapi", "starlette", "pydantic"):
    try:
        found[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        found[name] = None
found["http_auto"] = "httptools" if importlib.util.find_spec("httptools") else "h11"
found["loop_auto"] = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
print(json.dumps(found))
"""


class StackError(RuntimeError):
    pass


@dataclass
class Stack:
    key: str  # image | dev
    python: str  # the interpreter of every server process of this stack
    versions: dict[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return TITLES[self.key]


def default_python(key: str) -> Path:
    if key == "image":
        return IMAGE_PYTHON
    return DEV_PYTHON if DEV_PYTHON.exists() else Path(sys.executable)


def probe(python: str) -> dict[str, Any]:
    """Library versions as `python` itself sees them (not this interpreter)."""
    try:
        completed = subprocess.run(
            [python, "-c", _PROBE], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
        )
    except OSError as error:
        raise StackError(f"cannot run {python}: {error}") from None
    if completed.returncode != 0:
        raise StackError(f"{python} failed to report its libraries: {completed.stderr.strip()[-500:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def make_stack(key: str, python: Path | None) -> Stack:
    """The stack `key` on `python` (default: its venv); fails with one line when that interpreter is missing."""
    path = python or default_python(key)
    if not path.exists():
        if key == "image" and python is None:
            raise StackError(
                f"{path.relative_to(REPO)} not found: run `make .venv-image` first "
                "(or pass --image-python PATH, or --stacks dev)"
            )
        raise StackError(f"{key} stack: interpreter {path} not found")
    path = path.absolute()  # not resolved: a venv's bin/python must stay the venv's, not its base interpreter
    return Stack(key, str(path), probe(str(path)))
