"""Packs and the integrations they hold, read from a pack folder or from a `demisto-sdk zip-packs` zip.

A pack folder keeps each integration split (`Integrations/<Name>/<Name>.yml` beside `<Name>.py`); the zip holds
the unified YAML (`Integrations/integration-<Name>.yml`) with the script text in `script.script`. Both give the
same `Integration`.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from xsoar_local.errors import PackError

# `script.script` of a split integration: the code lives in the `.py` beside the YAML.
_SPLIT_SCRIPT_MARKERS = ("", "-")

# An integration YAML inside a pack: `Integrations/<Name>/<Name>.yml` (split) or `Integrations/<file>.yml`
# (unified), optionally under one top-level folder (a zipped pack folder).
_INTEGRATION_YML = re.compile(r"^(?:[^/]+/)?Integrations/(?:[^/]+/)?[^/]+\.ya?ml$")


@dataclass(frozen=True)
class ParamSpec:
    """One entry of an integration's `configuration`."""

    name: str
    display: str
    type: int
    required: bool
    default: Any
    hidden: bool
    options: tuple[str, ...]


@dataclass(frozen=True)
class Integration:
    """What the platform needs from an integration YAML to configure and run an instance of it."""

    id: str
    name: str
    display: str
    params: tuple[ParamSpec, ...]
    script_type: str
    long_running: bool
    long_running_port: bool
    is_fetch: bool
    is_fetch_samples: bool
    script: str
    script_path: str
    pack_id: str
    # `script.dockerimage` (`repo:tag`): the image the platform runs the integration in; None if the YAML names none.
    docker_image: str | None = None

    def param(self, name: str) -> ParamSpec | None:
        return next((spec for spec in self.params if spec.name == name), None)

    def answers_to(self, name: str) -> bool:
        return name in (self.id, self.name, self.display)


@dataclass(frozen=True)
class Pack:
    id: str
    path: Path
    integrations: tuple[Integration, ...]


class _PackFiles:
    """Read-only view of a pack's files, by POSIX path relative to the pack root, for a folder or a zip."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip = zipfile.ZipFile(path) if path.is_file() else None

    def names(self) -> list[str]:
        if self._zip is not None:
            return [name for name in self._zip.namelist() if not name.endswith("/")]
        return sorted(item.relative_to(self.path).as_posix() for item in self.path.rglob("*") if item.is_file())

    def exists(self, name: str) -> bool:
        if self._zip is not None:
            return name in self._zip.namelist()
        return (self.path / name).is_file()

    def read_text(self, name: str) -> str:
        if self._zip is not None:
            return self._zip.read(name).decode("utf-8")
        return (self.path / name).read_text(encoding="utf-8")

    def location(self, name: str) -> str:
        """Where a file is, for messages and tracebacks."""
        return f"{self.path}!/{name}" if self._zip is not None else str(self.path / name)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def load_pack(path: str | Path) -> Pack:
    """Read every integration of the pack folder or zip at `path`."""
    path = Path(path)
    if not path.exists():
        raise PackError(f"pack {str(path)!r} does not exist; fix: give the path of a pack folder or a pack zip")
    if path.is_file() and not zipfile.is_zipfile(path):
        raise PackError(f"pack {str(path)!r} is neither a folder nor a zip; fix: give a pack folder or a pack zip")
    try:
        files = _PackFiles(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise PackError(f"pack {str(path)!r} cannot be read: {exc}") from exc
    try:
        pack_id = _pack_id(files)
        documents = {name: _load_yaml(files, name) for name in files.names() if _INTEGRATION_YML.match(name)}
        integrations = tuple(
            _read_integration(files, name, data, pack_id) for name, data in documents.items() if _is_integration(data)
        )
    finally:
        files.close()
    return Pack(id=pack_id, path=path, integrations=integrations)


def find_integration(packs: list[Pack], name: str) -> tuple[Pack, Integration]:
    """The integration called `name` (its id, name or display), and its pack; one pack id must hold it."""
    found = [(pack, item) for pack in packs for item in pack.integrations if item.answers_to(name)]
    if not found:
        known = sorted({item.id for pack in packs for item in pack.integrations})
        raise PackError(
            f"integration {name!r} is in none of the packs ({', '.join(known) or 'no integrations'});"
            " fix: install its pack with `xsoar-local install <pack>` or correct the integration name"
        )
    pack_ids = sorted({pack.id for pack, _ in found})
    if len(pack_ids) > 1:
        raise PackError(
            f"integration {name!r} is in more than one pack ({', '.join(pack_ids)});"
            " fix: keep only one of those packs in the config's packs list"
        )
    return found[0]


def _pack_id(files: _PackFiles) -> str:
    # zip-packs writes the pack id into metadata.json; a pack folder is named after its id.
    for name in ("metadata.json", "pack_metadata.json"):
        if files.exists(name):
            try:
                pack_id = json.loads(files.read_text(name)).get("id")
            except (ValueError, AttributeError):
                pack_id = None
            if isinstance(pack_id, str) and pack_id:
                return pack_id
    return files.path.stem if files.path.is_file() else files.path.name


def _load_yaml(files: _PackFiles, name: str) -> Any:
    try:
        return yaml.safe_load(files.read_text(name))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise PackError(f"integration YAML {files.location(name)} cannot be read: {_one_line(exc)}") from exc


def _is_integration(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("script"), dict) and "configuration" in data


def _read_integration(files: _PackFiles, name: str, data: dict[str, Any], pack_id: str) -> Integration:
    script_section: dict[str, Any] = data["script"]
    integration_id = str((data.get("commonfields") or {}).get("id") or data.get("name") or "")
    if not integration_id:
        raise PackError(f"integration YAML {files.location(name)} has no commonfields.id; fix: add one")
    script, script_path = _script_text(files, name, script_section)
    return Integration(
        id=integration_id,
        name=str(data.get("name") or integration_id),
        display=str(data.get("display") or data.get("name") or integration_id),
        params=tuple(_param_spec(files.location(name), item) for item in data.get("configuration") or []),
        script_type=str(script_section.get("type") or "python"),
        long_running=_flag(script_section.get("longRunning")),
        long_running_port=_flag(script_section.get("longRunningPort")),
        is_fetch=_flag(script_section.get("isfetch")),
        is_fetch_samples=_flag(script_section.get("isFetchSamples")),
        script=script,
        script_path=script_path,
        pack_id=pack_id,
        docker_image=_docker_image(script_section.get("dockerimage")),
    )


def _script_text(files: _PackFiles, yml_name: str, script_section: dict[str, Any]) -> tuple[str, str]:
    embedded = script_section.get("script")
    if isinstance(embedded, str) and embedded.strip() not in _SPLIT_SCRIPT_MARKERS:
        return embedded, f"{files.location(yml_name)}#script"
    yml = PurePosixPath(yml_name)
    for candidate in (yml.with_suffix(".py"), yml.parent / f"{yml.parent.name}.py"):
        if files.exists(str(candidate)):
            return files.read_text(str(candidate)), files.location(str(candidate))
    raise PackError(
        f"integration YAML {files.location(yml_name)} has no script: script.script is empty and"
        f" {yml.with_suffix('.py').name} is missing; fix: put the script beside the YAML"
    )


def _param_spec(where: str, item: Any) -> ParamSpec:
    if not isinstance(item, dict) or not item.get("name"):
        raise PackError(f"integration YAML {where} has a configuration entry without a name: {item!r}")
    try:
        param_type = int(item.get("type", 0))
    except (TypeError, ValueError) as exc:
        raise PackError(f"integration YAML {where}: param {item['name']!r} has a non-numeric type") from exc
    return ParamSpec(
        name=str(item["name"]),
        display=str(item.get("display") or item["name"]),
        type=param_type,
        required=_flag(item.get("required")),
        default=item.get("defaultvalue"),
        hidden=_flag(item.get("hidden")),
        options=tuple(str(option) for option in item.get("options") or []),
    )


def _docker_image(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _flag(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
