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
from xsoar_local.ports import Listener, listener
from xsoar_local.runner import runner_command, runner_env
from xsoar_local.store import Store, utc_now

log = logging.getLogger(__name__)

LONG_RUNNING_EXECUTION = "long-running-execution"


class InstanceState(StrEnum):
    STARTING = "starting"  # the process runs but does not listen on its port yet, and has reported no error
    RUNNING = "running"  # the process the platform started is the one listening on the instance's port
    ERROR = "error"  # the process runs but is not serving: it reported an error (module health), e.g. bad params
    DOWN = "down"  # the process exited; it is restarted when the backoff delay is over
    STOPPED = "stopped"


# How often a live instance is looked at: while it starts (so that it serves as soon as it listens), and after.
STARTING_POLL = 0.05
# What the reroute's 503 asks senders to wait for an instance in error.
ERROR_RETRY_AFTER = 30
WATCH_POLL = 0.5


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
    # Why the instance does not serve while its process runs (ERROR, or STARTING with its port held by another).
    problem: str | None = None
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)
    # Set on every change of state: `Supervisor.settled()` waits on it.
    changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def set_state(self, state: InstanceState, problem: str | None = None) -> None:
        if (state, problem) != (self.state, self.problem):
            self.state, self.problem = state, problem
            self.changed.set()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.returncode is None else None

    def retry_after(self) -> int:
        """Seconds a caller should wait before trying the instance again."""
        if self.state == InstanceState.DOWN and self.retry_at is not None:
            return max(1, math.ceil(self.retry_at - time.monotonic()) + 1)
        if self.state == InstanceState.ERROR:
            return ERROR_RETRY_AFTER  # it needs a fix, or the other process to let go of its port
        return 1

    @property
    def settled(self) -> bool:
        """Past starting: serving, in error, or down (and so restarting)."""
        return self.state != InstanceState.STARTING

    def reason(self) -> str:
        """Why the instance does not serve, for the reroute's 503 and the banner."""
        name = repr(self.instance.name)
        if self.state == InstanceState.ERROR:
            return f"instance {name} is in error: {self.problem}"
        if self.state == InstanceState.DOWN:
            restart = f"it restarts in {self.retry_after()}s"
            return f"instance {name} is down: {LONG_RUNNING_EXECUTION} {self.last_exit}; {restart}"
        if self.state == InstanceState.STARTING and self.problem:
            return f"instance {name} is starting: {self.problem}"
        return f"instance {name} is {self.state.value}"

    def describe(self) -> dict[str, Any]:
        return {
            "status": self.state.value,
            "pid": self.pid,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "error": self.last_exit if self.state == InstanceState.DOWN else self.problem,
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

    @property
    def startup_timeout(self) -> float:
        return self._backoff.startup_timeout

    def get(self, name: str) -> InstanceProcess | None:
        return self.processes.get(name)

    def log_path(self, name: str) -> Path:
        return self._log_dir / f"{name}.log"

    async def start(self) -> None:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        for item in self.processes.values():
            item.set_state(InstanceState.STARTING)
            self._tasks.append(asyncio.create_task(self._keep_running(item), name=f"supervise {item.instance.name}"))

    async def settled(self, timeout: float) -> None:
        """Wait until every instance is past starting (serving, in error or down), or `timeout` seconds."""
        deadline = time.monotonic() + timeout
        for item in self.processes.values():
            while not item.settled and (left := deadline - time.monotonic()) > 0:
                item.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(item.changed.wait(), timeout=left)

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
            item.set_state(InstanceState.STOPPED)

    async def _keep_running(self, item: InstanceProcess) -> None:
        failures = 0
        # Recorded before the process starts, so that what the integration reports itself comes after it.
        await self._set_health(item, f"{LONG_RUNNING_EXECUTION} started", False)
        while not self._stopping:
            started = time.monotonic()
            try:
                exit_reason = await self._run_once(item)
            except Exception as exc:  # a failure of the platform's own, not the instance's: restart it all the same
                log.exception("instance %r: supervising it failed", item.instance.name)
                exit_reason = f"was stopped by the platform after an internal error ({type(exc).__name__}: {exc})"
            if self._stopping:
                return
            failures = 1 if time.monotonic() - started >= self._backoff.stable_after else failures + 1
            delay = self._backoff.delay(failures)
            item.last_exit, item.retry_at = exit_reason, time.monotonic() + delay
            item.set_state(InstanceState.DOWN)
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
            item.set_state(InstanceState.STARTING)
            message = f"{LONG_RUNNING_EXECUTION} restarted (restart {item.restarts}) after it {exit_reason}"
            await self._set_health(item, message, False)

    async def _run_once(self, item: InstanceProcess) -> str:
        """Run the instance's process until it exits; returns why it exited."""
        instance = item.instance
        with self.log_path(instance.name).open("ab") as log_file:
            log_file.write(f"--- {_now()} xsoar-local: starting {LONG_RUNNING_EXECUTION}\n".encode())
            log_file.flush()
            item.process = process = await asyncio.create_subprocess_exec(
                *runner_command(instance.pack.path, instance.integration.id, instance.python),
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
        try:
            timed_out = not await self._watch(item, process.pid, exited, utc_now())
        finally:
            if not exited.done():  # timed out, an internal error, or the supervisor is stopping
                if not self._stopping:  # stop() has signalled and waited already
                    _signal_group(process.pid, signal.SIGTERM)
                    await asyncio.wait([exited], timeout=self._stop_timeout)
                _signal_group(process.pid, signal.SIGKILL)
        returncode = await exited
        # Whatever the instance started itself goes with it, so its port is free for the next run.
        _signal_group(process.pid, signal.SIGKILL)
        if timed_out:
            why = f" ({item.problem})" if item.problem else ""
            return f"did not listen on port {instance.listen_port} within {self._backoff.startup_timeout:.0f}s{why}"
        return _exit_reason(returncode, self.log_path(instance.name), secret_values(instance.params))

    async def _watch(self, item: InstanceProcess, pid: int, exited: asyncio.Future[int], since: str) -> bool:
        """Keep the instance's state true while its process runs: RUNNING only while the process the platform
        started (its process group) holds the listen port (for an instance without one: while it reports no error);
        ERROR while it does not and its latest module health, reported since this process started (`since`), is an
        error; else STARTING. Returns False when it stayed STARTING past the startup timeout."""
        name, port = item.instance.name, item.instance.listen_port
        deadline: float | None = time.monotonic() + self._backoff.startup_timeout
        while not exited.done():
            try:
                found, health = await asyncio.to_thread(self._look, port, pid, name)
            except Exception:  # e.g. the store busy for a moment: keep the state, look again
                log.warning("instance %r: cannot check its port and module health", name, exc_info=True)
                await asyncio.wait([exited], timeout=WATCH_POLL)
                continue
            fresh = health is not None and str(health.get("updated") or "") >= since
            error = health.get("message") if health and fresh and health.get("is_error") else None
            problem: str | None = None
            if found is not None and found.ours:
                state = InstanceState.RUNNING  # serving, whatever its module health says since
            elif error:
                state, problem = InstanceState.ERROR, str(error)
                if found is not None and found.listening:
                    problem = f"{problem.rstrip('. ')} (port {port} is held by {found.holder()})"
            elif found is None:
                state = InstanceState.RUNNING  # no listen port: running while it runs and reports no error
            else:
                state = InstanceState.STARTING
                problem = f"port {port} is held by {found.holder()}" if found.listening else None
            if state != item.state:
                _log_state(name, port, state, problem)
            item.set_state(state, problem)
            if state == InstanceState.STARTING:
                deadline = deadline or time.monotonic() + self._backoff.startup_timeout
                if time.monotonic() >= deadline:
                    return False
            else:
                deadline = None
                item.retry_at = None
            await asyncio.wait([exited], timeout=STARTING_POLL if state == InstanceState.STARTING else WATCH_POLL)
        return True

    def _look(self, port: int | None, pid: int, name: str) -> tuple[Listener | None, dict[str, Any] | None]:
        """Who listens on the instance's port (None: it has none) and its module health; runs in a thread."""
        return (listener(port, pid) if port is not None else None), self._store.get_module_health(name)

    async def _set_health(self, item: InstanceProcess, message: str, is_error: bool) -> None:
        try:
            await asyncio.to_thread(self._store.set_module_health, item.instance.name, message, is_error)
        except Exception:
            log.exception("instance %r: cannot record module health %r", item.instance.name, message)


def _log_state(name: str, port: int | None, state: InstanceState, problem: str | None) -> None:
    if state == InstanceState.RUNNING:
        log.info("instance %r: running%s", name, f" on port {port}" if port is not None else "")
    elif problem:
        log.warning("instance %r: %s: %s", name, state.value, problem)


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
