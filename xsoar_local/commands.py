"""On-demand commands of an instance (`test-module`, `fetch-incidents`), each run once in its own process.

The process is the same runner the supervisor uses; what the script reports through `demisto.results()` and
`demisto.incidents()` comes back through the results file of docs/script-env-contract.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xsoar_local.errors import XsoarLocalError
from xsoar_local.instances import Instance
from xsoar_local.runner import runner_command, runner_env

TEST_MODULE = "test-module"
FETCH_INCIDENTS = "fetch-incidents"
DEFAULT_TIMEOUT = 60.0

# `entryTypes['error']` of the platform: what `return_error()` reports through `demisto.results()`.
ERROR_ENTRY_TYPE = 4


@dataclass
class CommandOutcome:
    returncode: int
    stderr: str
    results: list[Any] = field(default_factory=list)
    incidents: list[dict[str, Any]] = field(default_factory=list)

    def errors(self) -> list[str]:
        return [
            str(entry.get("Contents"))
            for entry in self.results
            if isinstance(entry, dict) and entry.get("Type") == ERROR_ENTRY_TYPE
        ]

    def failure(self) -> str | None:
        """Why the command failed, in one line, or None."""
        errors = self.errors()
        if errors:
            return " ".join(errors[0].split())
        if self.returncode != 0:
            lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
            return lines[-1] if lines else f"the script exited with code {self.returncode}"
        return None


def run_command(
    instance: Instance,
    command: str,
    *,
    store_path: Path | None,
    timeout: float = DEFAULT_TIMEOUT,
    fetch_samples: bool = False,
) -> CommandOutcome:
    with tempfile.TemporaryDirectory(prefix="xsoar-local-") as folder:
        results_file = Path(folder) / "results.jsonl"
        env = runner_env(
            instance=instance.name,
            integration=instance.integration.name,
            params=instance.params,
            command=command,
            store_path=store_path,
            results_file=results_file,
            fetch_samples=fetch_samples,
        )
        process = subprocess.Popen(
            runner_command(instance.pack.path, instance.integration.id, instance.python),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            _, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise XsoarLocalError(f"instance {instance.name!r}: {command} did not finish within {timeout:g}s") from None
        finally:
            # Ends the command and anything it started, also on timeout or Ctrl-C.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        outcome = CommandOutcome(returncode=process.returncode, stderr=stderr)
        for entry in _read_results(results_file):
            if entry.get("kind") == "incidents":
                value = entry.get("value") or []
                outcome.incidents.extend(value if isinstance(value, list) else [value])
            else:
                outcome.results.append(entry.get("value"))
    return outcome


def run_test_module(instance: Instance, *, store_path: Path | None, timeout: float = DEFAULT_TIMEOUT) -> str | None:
    """None when the instance's test-module answers `ok`, else what it reported instead."""
    outcome = run_command(instance, TEST_MODULE, store_path=store_path, timeout=timeout)
    failure = outcome.failure()
    if failure is not None:
        return failure
    if "ok" in outcome.results:
        return None
    return f"{TEST_MODULE} answered {outcome.results!r} instead of 'ok'"


def fetch_samples(
    instance: Instance, *, store_path: Path | None, timeout: float = DEFAULT_TIMEOUT
) -> list[dict[str, Any]]:
    """The incidents `fetch-incidents` returns for the mapping wizard (`isFetchSamples`)."""
    integration = instance.integration
    if not (integration.is_fetch_samples or integration.is_fetch):
        raise XsoarLocalError(
            f"instance {instance.name!r}: integration {integration.id!r} does not fetch incidents or samples"
            " (its YAML sets neither script.isFetchSamples nor script.isfetch)"
        )
    outcome = run_command(instance, FETCH_INCIDENTS, store_path=store_path, timeout=timeout, fetch_samples=True)
    failure = outcome.failure()
    if failure is not None:
        raise XsoarLocalError(f"instance {instance.name!r}: {FETCH_INCIDENTS} failed: {failure}")
    return outcome.incidents


def _read_results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            entry = json.loads(line)
            if isinstance(entry, dict):
                entries.append(entry)
    return entries
