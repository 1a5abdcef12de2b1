"""Fixtures for the end-to-end tests: free loopback ports, integration subprocesses, bounded waits."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from xsoar_local.runner import runner_command, runner_env
from xsoar_local.store import Store, open_store

REPO = Path(__file__).resolve().parents[1]
PACK = REPO / "Packs" / "GenericWebhook"
INTEGRATION_ID = "Generic Webhook"
LOOPBACK = "127.0.0.1"

T = TypeVar("T")

# Tests that start the integration in a process of its own (they use `launch`): `-m instance_process
# --instance-python .venv-image/bin/python` runs them with those processes on the integration's docker image
# replicated (`make .venv-image`), the harness staying on this interpreter.
INSTANCE_PROCESS_MARK = "instance_process"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--instance-python",
        metavar="PATH",
        default=None,
        help="interpreter for the integration processes that `launch` starts (default: XSOAR_LOCAL_INSTANCE_PYTHON, "
        "else this one), e.g. .venv-image/bin/python",
    )


def pytest_configure(config: pytest.Config) -> None:
    python = config.getoption("instance_python")
    if python and not (Path(python).is_file() and os.access(python, os.X_OK)):
        raise pytest.UsageError(f"--instance-python {python}: no such interpreter (for .venv-image: make .venv-image)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "launch" in getattr(item, "fixturenames", ()):
            item.add_marker(INSTANCE_PROCESS_MARK)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    alive: Callable[[], str] | None = None,
) -> T:
    """Poll `probe` until it returns something other than None/False, for at most `timeout` seconds.

    `alive` returns '' while the thing waited on can still succeed, else why it cannot (the test fails at once).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if alive is not None:
            reason = alive()
            if reason:
                pytest.fail(f"gave up waiting for {what}: {reason}")
        if time.monotonic() >= deadline:
            pytest.fail(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(interval)


@dataclass
class Instance:
    """One integration process and what it was started with."""

    name: str
    command: str
    port: int
    params: dict[str, Any]
    store_path: Path
    results_path: Path
    stderr_path: Path
    tmpdir: Path
    process: subprocess.Popen[bytes]
    _store: Store | None = field(default=None, repr=False)

    @property
    def store(self) -> Store:
        """The instance's SQLite store, opened from the test process."""
        if self._store is None:
            self._store = open_store(self.store_path)
        return self._store

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def exit_reason(self) -> str:
        """'' while the process runs, else its exit code and the end of its stderr."""
        code = self.process.poll()
        if code is None:
            return ""
        return f"process exited with {code}; stderr:\n{self.stderr()[-3000:]}"

    def health(self) -> dict[str, Any] | None:
        return self.store.get_module_health(self.name)

    def results(self) -> list[dict[str, Any]]:
        """The JSON lines demisto.results()/demisto.incidents() wrote to DEMISTO_RESULTS_FILE."""
        if not self.results_path.exists():
            return []
        return [json.loads(line) for line in self.results_path.read_text().splitlines() if line.strip()]

    def wait_serving(self, client: httpx.Client, *, scheme: str = "http", timeout: float = 15) -> httpx.Response:
        """Poll `GET /` until the listener answers with any HTTP status (the webhook answers GET with 405)."""

        def probe() -> httpx.Response | None:
            try:
                return client.get(f"{scheme}://{LOOPBACK}:{self.port}/", timeout=2)
            except httpx.TransportError:
                return None

        return wait_for(probe, timeout=timeout, what=f"{scheme.upper()} on port {self.port}", alive=self.exit_reason)

    def wait_exit(self, timeout: float = 20) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.command} did not finish within {timeout:.0f} s; stderr:\n{self.stderr()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM to the process group (uvicorn shuts down gracefully), SIGKILL if it is still there after 5 s."""
        try:
            if self.process.poll() is None:
                _signal_group(self.process, signal.SIGTERM)
                try:
                    self.process.wait(5)
                except subprocess.TimeoutExpired:
                    _signal_group(self.process, signal.SIGKILL)
                    self.process.wait(5)
            else:
                _signal_group(self.process, signal.SIGKILL)  # anything the script left behind in its group
        finally:
            if self._store is not None:
                self._store.close()
                self._store = None


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)  # start_new_session=True: the group id is the process id


Launcher = Callable[..., Instance]


@pytest.fixture(scope="session")
def instance_python(pytestconfig: pytest.Config) -> str | None:
    """The interpreter of `--instance-python` (absolute: the processes start with the repository as cwd), or None."""
    python = pytestconfig.getoption("instance_python")
    return os.path.abspath(python) if python else None


@pytest.fixture
def launch(tmp_path: Path, instance_python: str | None) -> Iterator[Launcher]:
    """Start integration processes on the store file `tmp_path/store.db`; every one is stopped at teardown.

    launch(params, command=..., name=..., pack=..., env=...) -> Instance runs the integration the platform's
    way (`python -m xsoar_local.runner <pack> "Generic Webhook"`), from the split pack folder unless `pack`
    names another (for example one holding the unified YAML); `params["longRunningPort"]` defaults to a free
    loopback port. Each process gets its own fresh TMPDIR, and runs on `--instance-python` when given.
    """
    started: list[Instance] = []
    store_path = tmp_path / "store.db"
    # The platform creates the store before it starts instances. (Two processes creating a fresh store file at
    # the same moment can fail with `database is locked` while switching it to WAL: see the e2e report.)
    open_store(store_path).close()

    def start(
        params: dict[str, Any] | None = None,
        *,
        command: str = "long-running-execution",
        name: str = "webhook",
        pack: Path = PACK,
        env: dict[str, str] | None = None,
    ) -> Instance:
        params = dict(params or {})
        params.setdefault("longRunningPort", str(free_port()))
        work = tmp_path / f"{name}-{command}-{len(started)}"
        proc_tmp = work / "tmp"
        proc_tmp.mkdir(parents=True)
        results_path = work / "results.jsonl"
        stderr_path = work / "stderr.log"
        process_env = runner_env(
            instance=name,
            integration=INTEGRATION_ID,
            params=params,
            command=command,
            store_path=store_path,
            results_file=results_path,
        )
        process_env.update(TMPDIR=str(proc_tmp), DEMISTO_LOG_LEVEL="debug", **(env or {}))
        with stderr_path.open("wb") as stderr:
            process = subprocess.Popen(
                runner_command(pack, INTEGRATION_ID, instance_python),
                cwd=REPO,
                env=process_env,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,
            )
        port = int(params["longRunningPort"]) if str(params["longRunningPort"]).isdigit() else 0
        instance = Instance(
            name=name,
            command=command,
            port=port,
            params=params,
            store_path=store_path,
            results_path=results_path,
            stderr_path=stderr_path,
            tmpdir=proc_tmp,
            process=process,
        )
        started.append(instance)
        return instance

    yield start
    for instance in reversed(started):
        instance.stop()
