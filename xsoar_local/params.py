"""An instance's params, checked against its integration's `configuration` with `defaultvalue`s applied.

Values come out the way `demisto.params()` hands them to the script: booleans as booleans, credentials as
`{"identifier", "password"}`, multi-selects as lists, other text as strings, and the listen port as an int.
"""

from __future__ import annotations

import difflib
from enum import IntEnum
from typing import Any

from xsoar_local.errors import ConfigError
from xsoar_local.packs import Integration, ParamSpec

# The param a long-running integration (`script.longRunningPort: true`) listens on.
LISTEN_PORT_PARAM = "longRunningPort"


class ParamType(IntEnum):
    SHORT_TEXT = 0
    ENCRYPTED = 4
    BOOLEAN = 8
    CREDENTIALS = 9
    LONG_TEXT = 12
    INCIDENT_TYPE = 13
    ENCRYPTED_LONG_TEXT = 14
    SINGLE_SELECT = 15
    MULTI_SELECT = 16


_TEXT_TYPES = {ParamType.SHORT_TEXT, ParamType.ENCRYPTED, ParamType.LONG_TEXT, ParamType.INCIDENT_TYPE}
_TEXT_TYPES |= {ParamType.ENCRYPTED_LONG_TEXT}


class _InvalidValue(ValueError):
    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


def resolve_params(instance: str, integration: Integration, given: dict[str, Any]) -> dict[str, Any]:
    """The params the instance's script receives; a `ConfigError` lists every param that is wrong."""
    problems: list[str] = []
    resolved: dict[str, Any] = {}
    for name, value in given.items():
        spec = integration.param(str(name))
        if spec is None:
            problems.append(f"instance {instance!r}: unknown param {name!r} ({_unknown_fix(integration, str(name))})")
            continue
        if value is None or value == "":
            continue
        try:
            resolved[spec.name] = _convert(integration, spec, value)
        except _InvalidValue as exc:
            problems.append(f"instance {instance!r}: param {spec.name!r} {exc.problem} (fix: {exc.fix})")
    for spec in integration.params:
        if spec.name in resolved:
            continue
        if spec.default not in (None, ""):
            resolved[spec.name] = _default(integration, spec)
        elif spec.required and not _is_listen_port(integration, spec):
            state = "is empty" if spec.name in given else "is missing"
            problems.append(
                f"instance {instance!r}: required param {spec.name!r} ({spec.display}) {state}"
                f" (fix: add {spec.name}: <value> under the instance's params)"
            )
    if problems:
        raise ConfigError(*problems)
    return resolved


def _unknown_fix(integration: Integration, name: str) -> str:
    names = [spec.name for spec in integration.params]
    close = difflib.get_close_matches(name, names, n=1)
    if close:
        return f"fix: did you mean {close[0]!r}?"
    return f"fix: remove it; {integration.id!r} takes {', '.join(names) or 'no params'}"


def _is_listen_port(integration: Integration, spec: ParamSpec) -> bool:
    return integration.long_running_port and spec.name == LISTEN_PORT_PARAM


def _default(integration: Integration, spec: ParamSpec) -> Any:
    try:
        return _convert(integration, spec, spec.default)
    except _InvalidValue:
        # A pack's own default is passed on as written: the script was built to read it.
        return spec.default


def _convert(integration: Integration, spec: ParamSpec, value: Any) -> Any:
    if _is_listen_port(integration, spec):
        return _port(value)
    if spec.type == ParamType.BOOLEAN:
        return _boolean(value)
    if spec.type == ParamType.CREDENTIALS:
        return _credentials(value)
    if spec.type in _TEXT_TYPES:
        return _text(value)
    if spec.type == ParamType.SINGLE_SELECT:
        return _choice(spec, _text(value))
    if spec.type == ParamType.MULTI_SELECT:
        return _choices(spec, value)
    return value


def _port(value: Any) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not isinstance(value, int | str) or not text.isdigit() or not 0 < int(text) < 65536:
        raise _InvalidValue(
            f"must be a port number (1-65535), got {value!r}",
            "set it to a free port such as 8000, or remove it to have a free port assigned",
        )
    return int(text)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise _InvalidValue(f"must be a boolean, got {value!r}", "use true or false")


def _credentials(value: Any) -> dict[str, str]:
    fix = "use {identifier: <username>, password: <secret>}"
    if not isinstance(value, dict) or set(value) != {"identifier", "password"}:
        shown = sorted(value) if isinstance(value, dict) else repr(value)
        raise _InvalidValue(f"must be a mapping with exactly identifier and password, got {shown}", fix)
    if not all(isinstance(item, str | int) and not isinstance(item, bool) for item in value.values()):
        raise _InvalidValue("must have text values for identifier and password", f"{fix}, quoting the values")
    return {"identifier": str(value["identifier"]), "password": str(value["password"])}


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise _InvalidValue(f"must be text, got {value!r}", "quote the value")


def _choice(spec: ParamSpec, value: str) -> str:
    if spec.options and value not in spec.options:
        raise _InvalidValue(f"must be one of {', '.join(spec.options)}, got {value!r}", "pick one of those options")
    return value


def _choices(spec: ParamSpec, value: Any) -> list[str]:
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",") if item.strip()]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        items = value
    else:
        raise _InvalidValue(f"must be a list of options, got {value!r}", "use a YAML list of option names")
    for item in items:
        _choice(spec, item)
    return items
