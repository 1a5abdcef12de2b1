"""Where each instance runs: a Python environment replicating the docker image its integration names.

The real platform starts an instance inside its integration's `script.dockerimage`. xsoar-local resolves that
reference to the pin file claiming it (`xsoar_local/images/*.txt`, see `xsoar_local.images`) and runs the instance
on a virtualenv built from it, one per pin file, under `server.environments_dir` (by default
`<data_dir>/environments/<pin file name>`): built on first use with its progress shown, reused afterwards,
rebuilt when the pin file changes. An image without a pin file (or an integration naming none) runs on the
platform's own interpreter, with a warning, or is refused when `server.unknown_image` is `error`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from xsoar_local.config import ServerConfig
from xsoar_local.errors import ConfigError, XsoarLocalError
from xsoar_local.images import (
    ImageError,
    ImagePins,
    Progress,
    build_env,
    interpreter_version,
    recorded_build,
    resolve_image,
    say,
)
from xsoar_local.instances import Instance

IMAGE = "image"
PLATFORM = "platform"
OVERRIDE = "override"

# Runs every instance on this interpreter instead of its image's environment, with a warning: for measuring one
# integration on several stacks (the benchmark's dev stack), not for trying what the platform will run.
INSTANCE_PYTHON_VAR = "XSOAR_LOCAL_INSTANCE_PYTHON"

Warn = Callable[[str], None]


@dataclass(frozen=True)
class Environment:
    """The interpreter an instance runs on, and why that one."""

    kind: str  # IMAGE: the image replicated; PLATFORM: the platform's own interpreter; OVERRIDE: INSTANCE_PYTHON_VAR
    image: str | None  # the integration's `script.dockerimage`, as its YAML names it
    python: str  # the interpreter's path
    python_version: str  # `3.12.1`
    path: Path | None = None  # the virtualenv (IMAGE)
    pins_file: str | None = None  # the pin file it was built from (IMAGE)
    reason: str | None = None  # why the platform's own (PLATFORM)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "python": self.python,
            "python_version": self.python_version,
            "path": str(self.path) if self.path is not None else None,
            "pins_file": self.pins_file,
            "reason": self.reason,
        }

    @property
    def label(self) -> str:
        """One short phrase for tables and banners."""
        if self.kind == IMAGE:
            return f"{self.image} replicated (Python {self.python_version}, {self.path})"
        if self.kind == OVERRIDE:
            return f"{self.python} (Python {self.python_version}, set by {INSTANCE_PYTHON_VAR})"
        return f"the platform's own (Python {self.python_version}), as {self.reason}"


def platform_environment(image: str | None, reason: str) -> Environment:
    return Environment(PLATFORM, image, sys.executable, platform.python_version(), reason=reason)


def _override_environment(python: str) -> Environment:
    version = interpreter_version(python)
    if version is None:
        raise XsoarLocalError(
            f"{INSTANCE_PYTHON_VAR}={python}: not a Python that runs (fix: unset it, or fix the path)"
        )
    return Environment(OVERRIDE, None, python, version, reason=f"{INSTANCE_PYTHON_VAR} is set")


def environment_dir(server: ServerConfig, pins: ImagePins) -> Path:
    return server.environments_dir / pins.pins_path.stem


def prepare_environments(
    instances: list[Instance],
    server: ServerConfig,
    *,
    progress: Progress = say,
    warn: Warn = say,
    announce_reuse: bool = True,
) -> list[Instance]:
    """The instances with their environment: each image's virtualenv built (or found up to date) once, however
    many instances use it. Raises `XsoarLocalError` when an environment cannot be had: the Python version a pin file
    needs is missing, a build fails, or an image is unknown and `server.unknown_image` is `error`."""
    override = os.environ.get(INSTANCE_PYTHON_VAR)
    if override:
        environment = _override_environment(override)
        warn(
            f"warning: {INSTANCE_PYTHON_VAR} is set: every instance runs on {override}, not on its image's environment"
        )
        return [
            replace(item, environment=replace(environment, image=item.integration.docker_image)) for item in instances
        ]
    by_image: dict[str | None, Environment] = {}
    prepared: list[Instance] = []
    for instance in instances:
        image = instance.integration.docker_image
        if image not in by_image:
            users = [item.name for item in instances if item.integration.docker_image == image]
            by_image[image] = _environment(image, users, server, progress, warn, announce_reuse)
        prepared.append(replace(instance, environment=by_image[image]))
    return prepared


def _environment(
    image: str | None, users: list[str], server: ServerConfig, progress: Progress, warn: Warn, announce_reuse: bool
) -> Environment:
    names = ", ".join(repr(name) for name in users)
    if image is None:
        problem = "its integration YAML names no script.dockerimage"
    else:
        try:
            pins = resolve_image(image)
        except ImageError as exc:
            problem = f"image {image} is not known to xsoar-local ({exc.problem})"
        else:
            return _image_environment(image, pins, server, progress, announce_reuse)
    if server.unknown_image == "error":
        raise ConfigError(
            f"instance {names}: {problem}; server.unknown_image is 'error', so nothing is started"
            " (fix: add the image's pins to xsoar_local/images/, set server.unknown_image: warn to run it on the"
            " platform's own environment, or disable the instance with enabled: false)"
        )
    environment = platform_environment(image, problem)
    warn(
        f"warning: instance {names}: {problem}: it runs on the platform's own environment instead"
        f" (Python {environment.python_version}, {environment.python}), which differs from the real platform's"
    )
    return environment


def _image_environment(
    image: str, pins: ImagePins, server: ServerConfig, progress: Progress, announce_reuse: bool
) -> Environment:
    venv_dir = environment_dir(server, pins)
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    with _building(venv_dir, progress):
        python = build_env(pins, venv_dir, image=image, progress=progress, announce_reuse=announce_reuse)
    version = _recorded_python(venv_dir) or pins.python
    return Environment(IMAGE, image, str(python), version, path=venv_dir, pins_file=pins.pins_path.name)


@contextlib.contextmanager
def _building(venv_dir: Path, progress: Progress) -> Iterator[None]:
    """Hold the environment's build lock: two platforms (or a platform and `xsoar-local test`) sharing an
    environments_dir do not build the same virtualenv at once; the second waits and then finds it up to date."""
    lock_path = venv_dir.with_name(f"{venv_dir.name}.lock")
    with lock_path.open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another xsoar-local that is building {venv_dir} ...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _recorded_python(venv_dir: Path) -> str | None:
    version = recorded_build(venv_dir).get("python")
    return version if isinstance(version, str) else None
