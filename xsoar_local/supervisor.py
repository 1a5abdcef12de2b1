"""Long-running executions: one process per enabled long-running instance, kept running like the real server does.

Each instance runs `long-running-execution` through the runner in its own session (so its own process group,
the way each instance of the real server has its own container). A process that exits is restarted with
exponential backoff, and the instance's module health says what happened. `stop()` ends every process group:
SIGTERM, then SIGKILL after a grace period, so nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from xsoar_local.instances import Instance
from xsoar_local.masking import mask_secrets, secret_values
from xsoar_local.ports import INSTANCE_HOST
from xsoar_local.runner import runner_command, runner_env
from xsoar_local.store import Store

log = logging.getLogger(__name__)

LONG_RUNNING_EXECUTION = "long-running-execution"


class InstanceState(StrEnum):
    STARTING = "starting"  # the process runs but does not accept connections on its listen port yet
    RUNNING = "running"
    DOWN = "down"  # the process exited; it is restarted when the backoff delay is over
    STOPPED = "stopped"


@dataclass(frozen=True)
class Backoff:
    initial: float = 1.0
    maximum: float = 30.0
    # A run at least this long counts as healthy: the next crash starts the backoff over.
    stable_after: float = 30.0
    # A process that does not listen on its port within this time is restarted.
    startup_timeout: float = 60.0

    def delay(self, failures: int) -> float:
        return min(self.initial * 2 ** max(failures - 1, 0), self.maximum)


@dataclass
class InstanceProcess:
    """The live state of one supervised instance, as the gateway and the read API see it."""

    instance: Instance
    state: InstanceState = InstanceState.STOPPED
    restarts: int = 0
    last_exit: str | None = None
    retry_at: float | None = None
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.returncode is None else None

    def retry_after(self) -> int:
        """Seconds a caller should wait before trying the instance again."""
        if self.state == InstanceState.DOWN and self.retry_at is not None:
            return max(1, math.ceil(self.retry_at - time.monotonic()) + 1)
        return 1

    def describe(self) -> dict[str, Any]:
        return {
            "status": self.state.value,
            "pid": self.pid,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
        }


class Supervisor:
    def __init__(
        self,
        instances: list[Instance],
        *,
        store: Store,
        store_path: Path,
        log_dir: Path,
        backoff: Backoff | None = None,
        stop_timeout: float = 5.0,
    ) -> None:
        self.processes = {item.name: InstanceProcess(item) for item in instances if item.supervised}
        self._store = store
        self._store_path = store_path
        self._log_dir = log_dir
        self._backoff = backoff or Backoff()
        self._stop_timeout = stop_timeout
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def get(self, name: str) -> InstanceProcess | None:
        return self.processes.get(name)

    def log_path(self, name: str) -> Path:
        return self._log_dir / f"{name}.log"

    async def start(self) -> None:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        for item in self.processes.values():
            item.state = InstanceState.STARTING
            self._tasks.append(asyncio.create_task(self._keep_running(item), name=f"supervise {item.instance.name}"))

    async def stop(self) -> None:
        """End every instance's process group; returns once none of them is left."""
        self._stopping = True
        running = [item.process for item in self.processes.values() if item.process and item.pid is not None]
        for process in running:
            _signal_group(process.pid, signal.SIGTERM)
        if running:
            _, pending = await asyncio.wait(
                [asyncio.ensure_future(p.wait()) for p in running], timeout=self._stop_timeout
            )
            if pending:
                log.warning("%d instance process(es) ignored SIGTERM; killing them", len(pending))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for item in self.processes.values():
            if item.process is not None and (item.process in running or item.process.returncode is None):
                # Also ends what the instance started itself, which stays in its process group.
                _signal_group(item.process.pid, signal.SIGKILL)
                await item.process.wait()
            item.state = InstanceState.STOPPED

    async def _keep_running(self, item: InstanceProcess) -> None:
        failures = 0
        # Recorded before the process starts, so that what the integration reports itself comes after it.
        await self._set_health(item, f"{LONG_RUNNING_EXECUTION} started", False)
        while not self._stopping:
            started = time.monotonic()
            exit_reason = await self._run_once(item)
            if self._stopping:
                return
            failures = 1 if time.monotonic() - started >= self._backoff.stable_after else failures + 1
            delay = self._backoff.delay(failures)
            item.state, item.last_exit = InstanceState.DOWN, exit_reason
            item.retry_at = time.monotonic() + delay
            log.warning(
                "instance %r: %s %s; restarting in %.0fs",
                item.instance.name,
                LONG_RUNNING_EXECUTION,
                exit_reason,
                delay,
            )
            await self._set_health(item, f"{LONG_RUNNING_EXECUTION} {exit_reason}; restarting in {delay:.0f}s", True)
            await asyncio.sleep(delay)
            item.restarts += 1
            item.state = InstanceState.STARTING
            message = f"{LONG_RUNNING_EXECUTION} restarted (restart {item.restarts}) after it {exit_reason}"
            await self._set_health(item, message, False)

    async def _run_once(self, item: InstanceProcess) -> str:
        """Run the instance's process until it exits; returns why it exited."""
        instance = item.instance
        with self.log_path(instance.name).open("ab") as log_file:
            log_file.write(f"--- {_now()} xsoar-local: starting {LONG_RUNNING_EXECUTION}\n".encode())
            log_file.flush()
            item.process = process = await asyncio.create_subprocess_exec(
                *runner_command(instance.pack.path, instance.integration.id),
                env=runner_env(
                    instance=instance.name,
                    integration=instance.integration.name,
                    params=instance.params,
                    command=LONG_RUNNING_EXECUTION,
                    store_path=self._store_path,
                ),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
            )
        log.info("instance %r: %s started (pid %d)", instance.name, LONG_RUNNING_EXECUTION, process.pid)
        exited = asyncio.ensure_future(process.wait())
        timed_out = False
        if await self._wait_listening(item, exited):
            item.state, item.retry_at = InstanceState.RUNNING, None
            log.info("instance %r: running on port %s", instance.name, instance.listen_port)
        elif not exited.done():
            timed_out = True
            _signal_group(process.pid, signal.SIGTERM)
            await asyncio.wait([exited], timeout=self._stop_timeout)
            _signal_group(process.pid, signal.SIGKILL)
        returncode = await exited
        # Whatever the instance started itself goes with it, so its port is free for the next run.
        _signal_group(process.pid, signal.SIGKILL)
        if timed_out:
            return f"did not listen on port {instance.listen_port} within {self._backoff.startup_timeout:.0f}s"
        return _exit_reason(returncode, self.log_path(instance.name), secret_values(instance.params))

    async def _wait_listening(self, item: InstanceProcess, exited: asyncio.Future[int]) -> bool:
        """Whether the process accepts connections on its listen port before it exits or the startup timeout."""
        port = item.instance.listen_port
        if port is None:
            return not exited.done()
        deadline = time.monotonic() + self._backoff.startup_timeout
        while not exited.done() and time.monotonic() < deadline:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(INSTANCE_HOST, port), timeout=1.0)
            except (OSError, TimeoutError):
                await asyncio.wait([exited], timeout=0.05)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return not exited.done()
        return False

    async def _set_health(self, item: InstanceProcess, message: str, is_error: bool) -> None:
        try:
            await asyncio.to_thread(self._store.set_module_health, item.instance.name, message, is_error)
        except Exception:
            log.exception("instance %r: cannot record module health %r", item.instance.name, message)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _exit_reason(returncode: int, log_path: Path, secrets: list[str]) -> str:
    """Why the process exited, with the last line it wrote; the instance's secrets in that line are masked, as
    the reason is shown by the API and stored as module health."""
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-returncode).name}"
    reason = f"exited with code {returncode}"
    # Masked before it is cut short, so that no part of a secret is left at the cut.
    last_line = mask_secrets(_last_line(log_path), secrets)[:300]
    return f"{reason}: {last_line}" if last_line else reason


def _last_line(path: Path, window: int = 4096) -> str:
    """The last line the process wrote, which for a crash is the exception."""
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - window))
            lines = [line.strip() for line in file.read().decode("utf-8", "replace").splitlines()]
    except OSError:
        return ""
    lines = [line for line in lines if line and not line.startswith("--- ")]
    return lines[-1] if lines else ""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
