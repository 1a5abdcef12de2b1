"""The CommonServerPython helpers a long-running integration uses, written for xsoar-local.

Integrations do `from CommonServerPython import *`, which also brings `demisto`, the standard modules below
and the `typing` names into their scope, as in the real platform.
"""

import base64  # noqa: F401  (re-exported)
import json
import os  # noqa: F401  (re-exported to the integration's scope)
import random
import re  # noqa: F401  (re-exported)
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple, Union  # noqa: F401, UP035  (re-exported)

import demistomock as demisto

from xsoar_local.masking import MASK
from xsoar_local.masking import secret_values as _secret_values

entryTypes = {
    "note": 1,
    "downloadAgent": 2,
    "file": 3,
    "error": 4,
    "pinned": 5,
    "userManagement": 6,
    "image": 7,
    "playgroundError": 8,
    "entryInfoFile": 9,
    "warning": 11,
    "map": 15,
    "widget": 17,
}

formats = {
    "html": "html",
    "table": "table",
    "json": "json",
    "text": "text",
    "dbotResponse": "dbotCommandResponse",
    "markdown": "markdown",
}

# Commands in which return_error raises instead of reporting an entry and exiting.
_RAISING_COMMANDS = ("long-running-execution", "fetch-incidents", "fetch-indicators")


class DemistoException(Exception):
    def __init__(self, message: str, exception: Exception | None = None, res: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.exception = exception
        self.res = res


def __line__() -> int:
    """The caller's line number; unified scripts call it in their `register_module_line` wrappers."""
    frame = sys._getframe(1)
    return frame.f_lineno


def register_module_line(module_name: str, start_end: str, line: int, wrapper: int = 0) -> None:
    """Line bookkeeping the real platform does for unified scripts; nothing to do here."""


def is_debug_mode() -> bool:
    return demisto.is_debug_mode()


# --- arguments ---


def argToBoolean(value: Any) -> bool:
    """As the real CSP: a bool as is; "true"/"yes"/"false"/"no" in any case (no stripping); else ValueError."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value.lower() in ("true", "yes"):
            return True
        if value.lower() in ("false", "no"):
            return False
        raise ValueError("Argument does not contain a valid boolean-like value")
    raise ValueError("Argument is neither a string nor a boolean")


def arg_to_number(arg: Any, arg_name: str | None = None, required: bool = False) -> int | None:
    """As the real CSP: an int (a bool too) as is; a number text as int (truncated); a float or anything else
    raises ValueError."""
    if arg is None or arg == "":
        if required:
            raise ValueError(f'Missing "{arg_name}"' if arg_name else "Missing required argument")
        return None
    if isinstance(arg, str):
        try:
            return int(arg) if arg.isdigit() else int(float(arg))
        except (ValueError, OverflowError):
            pass
    elif isinstance(arg, int):
        return arg
    raise ValueError(f'Invalid number: "{arg_name}"="{arg}"' if arg_name else f'"{arg}" is not a valid number')


# --- entries ---


def tableToMarkdown(name: str, t: Any, headers: str | list[str] | None = None) -> str:
    rows = [t] if isinstance(t, dict) else list(t or [])
    markdown = f"### {name}\n" if name else ""
    if not rows:
        return markdown + "**No entries.**\n"
    if isinstance(headers, str):
        headers = [headers]
    if not headers:
        headers = list(dict.fromkeys(key for row in rows for key in row))

    def cell(value: Any) -> str:
        text = json.dumps(value) if isinstance(value, dict | list) else "" if value is None else str(value)
        return text.replace("|", "\\|").replace("\n", "<br>")

    markdown += "|" + "|".join(headers) + "|\n"
    markdown += "|" + "|".join("---" for _ in headers) + "|\n"
    for row in rows:
        markdown += "| " + " | ".join(cell(row.get(header)) for header in headers) + " |\n"
    return markdown


class CommandResults:
    def __init__(
        self,
        outputs_prefix: str | None = None,
        outputs_key_field: str | None = None,
        outputs: Any = None,
        readable_output: str | None = None,
        raw_response: Any = None,
    ) -> None:
        self.outputs_prefix = outputs_prefix
        self.outputs_key_field = outputs_key_field
        self.outputs = outputs
        self.readable_output = readable_output
        self.raw_response = raw_response

    def to_context(self) -> dict[str, Any]:
        entry_context: dict[str, Any] = {}
        if self.outputs_prefix and self.outputs is not None:
            key = self.outputs_prefix
            if self.outputs_key_field:
                field = self.outputs_key_field
                key = f"{key}(val.{field} && val.{field} == obj.{field})"
            entry_context[key] = self.outputs
        human_readable = self.readable_output
        if human_readable is None and self.outputs is not None:
            human_readable = tableToMarkdown(self.outputs_prefix or "", self.outputs)
        return {
            "Type": entryTypes["note"],
            "ContentsFormat": formats["json"],
            "Contents": self.raw_response if self.raw_response is not None else self.outputs,
            "HumanReadable": human_readable,
            "EntryContext": entry_context,
        }


def return_results(results: Any) -> None:
    if results is None:
        return
    if isinstance(results, CommandResults):
        demisto.results(results.to_context())
    elif isinstance(results, list):
        for result in results:
            return_results(result)
    else:
        demisto.results(results)


def return_error(message: str, error: Any = "", outputs: Any = None) -> None:
    """Raise during long-running-execution and fetch-incidents; otherwise report an error entry and exit."""
    if demisto.command() in _RAISING_COMMANDS:
        raise Exception(message)
    demisto.error(message)
    if error:
        demisto.error(str(error))
    if sys.exc_info()[0] is not None:
        demisto.error(traceback.format_exc())
    demisto.results(
        {
            "Type": entryTypes["error"],
            "ContentsFormat": formats["text"],
            "Contents": message,
            "EntryContext": outputs,
        }
    )
    sys.exit(0)


# --- integration context ---


def get_integration_context(sync: bool = True, with_version: bool = False) -> dict[str, Any]:
    versioned = demisto.getIntegrationContextVersioned(sync)
    return versioned if with_version else versioned.get("context", {})


def set_integration_context(context: dict[str, Any], sync: bool = True, version: int = -1) -> None:
    demisto.setIntegrationContextVersioned(context, version, sync)


def get_integration_context_with_version(sync: bool = True) -> tuple[dict[str, Any], int]:
    versioned = get_integration_context(sync, with_version=True)
    return versioned.get("context", {}), versioned.get("version", 0)


def _merge_objects(stored: Any, new: Any, id_key: str) -> Any:
    """Merge `new` into the stored (JSON-encoded) dict, or list of dicts matched on `id_key`."""
    current = json.loads(stored) if isinstance(stored, str) and stored else stored
    if isinstance(current, dict) and isinstance(new, dict):
        return {**current, **new}
    if isinstance(current, list) and isinstance(new, list):
        new_ids = {item.get(id_key) for item in new if isinstance(item, dict)}
        kept = [item for item in current if not (isinstance(item, dict) and item.get(id_key) in new_ids)]
        return kept + new
    return new


def update_integration_context(
    context: dict[str, Any], object_keys: dict[str, str] | None = None, sync: bool = True
) -> tuple[dict[str, Any], int]:
    """The stored context merged with `context` (dict and list values JSON-encoded), and the version it was read at.

    Nothing is written: pass both to set_integration_context, as set_to_integration_context_with_retries does.
    """
    integration_context, version = get_integration_context_with_version(sync)
    for key, value in context.items():
        if object_keys and key in object_keys:
            value = _merge_objects(integration_context.get(key), value, object_keys[key])
        integration_context[key] = json.dumps(value) if isinstance(value, dict | list) else value
    return integration_context, version


# Its own generator: a retry on a worker thread leaves the global `random` state alone (hypothesis checks it).
_RETRY_JITTER = random.Random()


def set_to_integration_context_with_retries(
    context: dict[str, Any], object_keys: dict[str, str] | None = None, sync: bool = True, max_retry_times: int = 3
) -> None:
    """Merge `context` into the integration context; retry when another writer got in between."""
    for attempt in range(1, max(max_retry_times, 1) + 1):
        integration_context, version = update_integration_context(context, object_keys, sync)
        try:
            set_integration_context(integration_context, sync, version)
            return
        except ValueError as exc:
            demisto.debug(f"Integration context version conflict (attempt {attempt}/{max_retry_times}): {exc}")
            if attempt < max_retry_times:
                time.sleep(_RETRY_JITTER.uniform(0.05, 0.3))
    raise Exception("Failed updating integration context. Max retry attempts exceeded.")


# --- logging ---


class IntegrationLogger:
    """Log sink that masks the instance's secrets; file-like (`write`, `flush`) for libraries' log handlers.

    While buffering (the default) messages are kept until `print_log()`, and also sent to demisto.debug at once
    when `debug_logging` is on; without buffering they go straight to demisto.info.
    """

    def __init__(self, debug_logging: bool = False) -> None:
        self.debug_logging = debug_logging
        self.buffering = True
        self.messages: list[str] = []
        self.write_buf: list[str] = []  # what write() got since its last newline
        self.replace_strs: list[str] = []
        self._add_secrets_from_params(demisto.params())

    def _add_secrets_from_params(self, params: dict[str, Any]) -> None:
        # The same rules as the platform's masking of an instance's exit reason.
        self.add_replace_strs(*_secret_values(params))

    def add_replace_strs(self, *strs: str) -> None:
        for secret in strs:
            if not isinstance(secret, str) or not secret.strip():
                continue
            # Also the form the secret takes inside a JSON document.
            for form in (secret, json.dumps(secret)[1:-1]):
                if form not in self.replace_strs:
                    self.replace_strs.append(form)
        self.replace_strs.sort(key=len, reverse=True)

    def encode(self, message: Any) -> str:
        text = str(message)
        for secret in self.replace_strs:
            text = text.replace(secret, MASK)
        return text

    def set_buffering(self, state: bool) -> None:
        self.buffering = state

    def __call__(self, message: Any) -> None:
        text = self.encode(message)
        if not self.buffering:
            demisto.info(text)
            return
        self.messages.append(text)
        if self.debug_logging:
            demisto.debug(text)

    def write(self, msg: str) -> int:
        """As a stream: text is held until a write that holds a newline, then sent as one message (without
        one trailing newline), as the real logger does; a line written without a newline stays held."""
        text = self.encode(msg)
        ends_line = "\n" in text
        self.write_buf.append(text[:-1] if text.endswith("\n") else text)
        if ends_line:
            message, self.write_buf = "".join(self.write_buf), []
            if not self.buffering:
                demisto.info(message)
            else:
                self.messages.append(message)
                if self.debug_logging:
                    demisto.debug(message)
        return len(msg)

    def flush(self) -> None:
        """Nothing buffered at the stream level; present for the file-like interface."""

    def print_log(self, verbose: bool = False) -> None:
        if self.write_buf:
            self.messages.append("".join(self.write_buf))
            self.write_buf = []
        if self.messages:
            demisto.info("\n".join(self.messages))
            self.messages = []

    def debug(self, message: Any) -> None:
        demisto.debug(self.encode(message))

    def info(self, message: Any) -> None:
        demisto.info(self.encode(message))

    def error(self, message: Any) -> None:
        demisto.error(self.encode(message))

    def exception(self, message: Any) -> None:
        demisto.error(self.encode(f"{message}\n{traceback.format_exc()}"))
