"""The `demisto` object of the script environment: the server-side API an integration calls.

Configured from environment variables at import (see docs/script-env-contract.md); state lives in an
`xsoar_local.store` backend, in memory by default or in the SQLite file named by `XSOAR_LOCAL_STORE`.
Every function is safe to call from several threads.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

try:
    from xsoar_local.store import Store, open_store
except ModuleNotFoundError:  # this folder used straight from a checkout, without the package installed
    sys.path.append(str(Path(__file__).resolve().parents[2]))
    from xsoar_local.store import Store, open_store

LOG_LEVELS = {"debug": 10, "info": 20, "error": 40}

# What results() and incidents() received, one item per call, for tests to inspect.
RESULTS: list[Any] = []
INCIDENTS: list[Any] = []

LOG_LEVEL = "info"
callingContext: dict[str, Any] = {}

_PARAMS: dict[str, Any] = {}
_ARGS: dict[str, Any] = {}
_COMMAND = "test-module"
_INSTANCE = "local"
_INTEGRATION = "Generic Webhook"
_IS_FETCH_SAMPLES = False
_RESULTS_FILE: str | None = None
_store: Store = open_store(None)
_lock = threading.RLock()


def _json_object(environ: Mapping[str, str], name: str) -> dict[str, Any]:
    raw = environ.get(name)
    if not raw:
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"{name} must hold a JSON object, got {type(value).__name__}")
    return value


def load_env(environ: Mapping[str, str] = os.environ, *, with_store: bool = True) -> None:
    """(Re)read the configuration from the environment variables; done once at import."""
    global _PARAMS, _ARGS, _COMMAND, _INSTANCE, _INTEGRATION, _IS_FETCH_SAMPLES, _RESULTS_FILE, LOG_LEVEL
    _PARAMS = _json_object(environ, "DEMISTO_PARAMS")
    _ARGS = _json_object(environ, "DEMISTO_ARGS")
    _COMMAND = environ.get("DEMISTO_COMMAND") or "test-module"
    _INSTANCE = environ.get("DEMISTO_INSTANCE_NAME") or "local"
    _INTEGRATION = environ.get("DEMISTO_INTEGRATION_NAME") or "Generic Webhook"
    _IS_FETCH_SAMPLES = environ.get("DEMISTO_IS_FETCH_SAMPLES", "").strip().lower() == "true"
    _RESULTS_FILE = environ.get("DEMISTO_RESULTS_FILE") or None
    level = (environ.get("DEMISTO_LOG_LEVEL") or "info").strip().lower()
    LOG_LEVEL = level if level in LOG_LEVELS else "info"
    callingContext.clear()
    callingContext["context"] = {
        "IntegrationBrand": _INTEGRATION,
        "IntegrationInstance": _INSTANCE,
        "IsFetchSamples": _IS_FETCH_SAMPLES,
    }
    if with_store:
        use_store(environ.get("XSOAR_LOCAL_STORE") or None)


def use_store(path: str | os.PathLike[str] | None) -> Store:
    """Switch the backend: `None` for a fresh in-memory store, else the SQLite store file at `path`."""
    global _store
    with _lock:
        previous, _store = _store, open_store(path)
    previous.close()
    return _store


def get_store() -> Store:
    return _store


def reset() -> None:
    """Back to the state after import, with a fresh in-memory store and nothing recorded (for tests)."""
    load_env(with_store=False)
    use_store(None)
    with _lock:
        RESULTS.clear()
        INCIDENTS.clear()


# --- what the integration was started with ---


def params() -> dict[str, Any]:
    return _PARAMS


def args() -> dict[str, Any]:
    return _ARGS


def command() -> str:
    return _COMMAND


def getParam(name: str) -> Any:
    return params().get(name)


def integrationInstance() -> str:
    return _INSTANCE


def isFetchSamples() -> bool:
    return _IS_FETCH_SAMPLES


def demistoVersion() -> dict[str, str]:
    return {"version": "8.9.0", "buildNumber": "local"}


def demistoUrls() -> dict[str, str]:
    return {"server": os.environ.get("DEMISTO_SERVER_URL") or "http://127.0.0.1"}


def investigation() -> dict[str, Any]:
    return {"id": "0"}


def uniqueFile() -> str:
    return str(uuid.uuid4())


def is_debug_mode() -> bool:
    return LOG_LEVEL == "debug"


# --- logging: one stderr line per message ---


def _log(level: str, msg: Any) -> None:
    if LOG_LEVELS[level] < LOG_LEVELS[LOG_LEVEL]:
        return
    # One stderr line per line of the message, each with the time; the lines after the first are marked with
    # `+` after the level, so that text inside a message cannot pass for an entry of its own.
    stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    text = str(msg).replace("\r", "")
    first, *rest = (text[:-1] if text.endswith("\n") else text).split("\n")
    label = level.upper()
    text = f"{stamp} {label} {first}\n" + "".join(f"{stamp} {label}+ {line}\n" for line in rest)
    with _lock:
        sys.stderr.write(text)
        sys.stderr.flush()


def debug(msg: Any) -> None:
    _log("debug", msg)


def info(msg: Any) -> None:
    _log("info", msg)


def error(msg: Any) -> None:
    _log("error", msg)


def log(msg: Any) -> None:
    _log("info", msg)


# --- entries returned to the server ---


def _record(kind: str, value: Any, into: list[Any]) -> None:
    # Serialized first, as the server does: a value that is not JSON raises here (TypeError or ValueError).
    line = json.dumps({"kind": kind, "value": value})
    with _lock:
        into.append(value)
        if _RESULTS_FILE:
            with open(_RESULTS_FILE, "a", encoding="utf-8") as results_file:
                results_file.write(line + "\n")


def results(x: Any) -> None:
    _record("results", x, RESULTS)


def incidents(incidents: list[dict[str, Any]] | None) -> None:
    _record("incidents", incidents, INCIDENTS)


# --- platform state, per instance ---


def createIncidents(
    incidents: list[dict[str, Any]], lastRun: dict[str, Any] | None = None, userID: str | None = None
) -> list[dict[str, Any]]:
    created = _store.create_incidents(integrationInstance(), incidents)
    if lastRun is not None:
        _store.set_last_run(integrationInstance(), lastRun)
    return created


def getIntegrationContext() -> dict[str, Any]:
    return _store.get_integration_context(integrationInstance())[0]


def setIntegrationContext(context: dict[str, Any]) -> None:
    _store.set_integration_context(integrationInstance(), context)


def getIntegrationContextVersioned(refresh: bool = False) -> dict[str, Any]:
    context, version = _store.get_integration_context(integrationInstance())
    return {"context": context, "version": version}


def setIntegrationContextVersioned(context: dict[str, Any], version: int = -1, sync: bool = False) -> None:
    """Raises ValueError when `version` is not -1 and another writer has changed the context since it was read."""
    _store.set_integration_context(integrationInstance(), context, version)


def updateModuleHealth(data: str | dict[str, Any], is_error: bool = False) -> None:
    message = data if isinstance(data, str) else json.dumps(data)
    _store.set_module_health(integrationInstance(), message, is_error)


def getLastRun() -> dict[str, Any]:
    return _store.get_last_run(integrationInstance())


def setLastRun(obj: dict[str, Any]) -> None:
    _store.set_last_run(integrationInstance(), obj)


load_env()
