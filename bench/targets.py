"""The processes under test: start each on free 127.0.0.1 ports, wait until it serves, measure, stop it.

Every process runs in its own session (process group), so stopping it also stops whatever it started; a
Generic Webhook runner also stops by itself when this process dies (the platform's parent-death signal).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from xsoar_local.environments import INSTANCE_PYTHON_VAR
from xsoar_local.packs import find_integration, load_pack
from xsoar_local.params import resolve_params
from xsoar_local.runner import runner_command, runner_env
from xsoar_local.store import Store, open_store

REPO = Path(__file__).resolve().parents[1]
PACK = REPO / "Packs" / "GenericWebhook"
INTEGRATION = "Generic Webhook"
LOOPBACK = "127.0.0.1"
READY_TIMEOUT = 45.0
STOP_TIMEOUT = 5.0
AUTH_HEADER = "Authorization"


class TargetError(RuntimeError):
    pass


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def peak_rss_mib(pid: int | None) -> float | None:
    """VmHWM of a live process, in MiB (None when it is gone)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time a live process has used so far, all threads (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@dataclass
class Target:
    """One scenario's server: its process (the group leader), where to send events and where they are stored."""

    name: str
    url: str  # where events are POSTed
    health_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    store_path: Path | None = None
    instance: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # sent with every event request
    pids: dict[str, int] = field(default_factory=dict)  # role -> pid, for peak RSS
    _store: Store | None = field(default=None, repr=False)

    @property
    def store(self) -> Store:
        if self.store_path is None:
            raise TargetError(f"{self.name} has no store")
        if self._store is None:
            self._store = open_store(self.store_path)
        return self._store

    def count(self) -> int:
        return self.store.count_incidents(self.instance)

    def settled_count(self, quiet: float = 0.3, timeout: float = 15.0) -> int:
        """The store count once it stops changing (requests cut off by the load generator may still land)."""
        deadline = time.monotonic() + timeout
        last = self.count()
        while time.monotonic() < deadline:
            time.sleep(quiet)
            now = self.count()
            if now == last:
                return now
            last = now
        return last

    def log_tail(self, size: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return ""

    def exit_reason(self) -> str:
        code = self.process.poll()
        return "" if code is None else f"{self.name} exited with {code}; log:\n{self.log_tail()}"

    def wait_ready(self, client: httpx.Client, deadline: float) -> None:
        """Poll the health URL until it answers 200; fail when the process exits or the deadline passes."""
        while True:
            try:
                if client.get(self.health_url, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            reason = self.exit_reason()
            if reason:
                raise TargetError(reason)
            if time.monotonic() >= deadline:
                raise TargetError(f"{self.name} did not serve {self.health_url} in time; log:\n{self.log_tail()}")
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids.values())

    def peak_rss(self) -> dict[str, float | None]:
        return {role: peak_rss_mib(pid) for role, pid in self.pids.items()}

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL after a bounded wait; the same for any other group this target owns."""
        if self._store is not None:
            self._store.close()
            self._store = None
        groups = [self.process.pid] + [pid for role, pid in self.pids.items() if pid != self.process.pid]
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(STOP_TIMEOUT + 2)
        deadline = time.monotonic() + STOP_TIMEOUT
        for pgid in groups[1:]:  # the gateway stops its instances itself; wait for that, then make sure
            while _alive(pgid) and _is_ours(pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
        for pgid in groups:
            if pgid == self.process.pid or _is_ours(pgid):
                _signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_TIMEOUT)


def _is_ours(pid: int) -> bool:
    """Whether `pid` is still a process started for the benchmark (an integration runner), not a reused pid."""
    try:
        return b"xsoar_local.runner" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _popen(command: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )


BARE_MODES = {"own": "bare app, own settings", "stock": "bare app, stock uvicorn", "floor": "floor app"}


def start_bare_app(workdir: Path, python: str, *, mode: str = "own") -> Target:
    """A reference app of bench/bare_app.py on `python` (the stack's interpreter): `own` (the bare app on the
    integration's settings), `stock` (the bare app under a default `uvicorn.run`) or `floor`."""
    port = free_port()
    log_path = workdir / f"{mode}-app.log"
    command = [python, "-m", "bench.bare_app", "--port", str(port), "--mode", mode]
    process = _popen(command, log_path)
    base = f"http://{LOOPBACK}:{port}"
    return Target(BARE_MODES[mode], f"{base}/", f"{base}/health", process, log_path, pids={"server": process.pid})


def webhook_params(*, store_samples: bool, secret: str, port: int | None = None) -> dict[str, Any]:
    """A realistic instance: header auth, an incident type, samples on or off."""
    params: dict[str, Any] = {
        "store_samples": store_samples,
        "incidentType": "Unclassified",
        "credentials": {"identifier": f"_header:{AUTH_HEADER}", "password": secret},
    }
    if port is not None:
        params["longRunningPort"] = port
    return params


def start_instance(workdir: Path, name: str, params: dict[str, Any], secret: str, python: str) -> Target:
    """The integration's own process on `python`, started the way the platform starts it, on its own store."""
    port = free_port()
    _, integration = find_integration([load_pack(PACK)], INTEGRATION)
    resolved = resolve_params(name, integration, {**params, "longRunningPort": port})
    store_path = workdir / f"{name}.db"
    open_store(store_path).close()  # the platform creates the store before it starts instances
    env = runner_env(
        instance=name,
        integration=integration.name,
        params=resolved,
        command="long-running-execution",
        store_path=store_path,
    )
    log_path = workdir / f"{name}.log"
    process = _popen(runner_command(PACK, INTEGRATION, python=python), log_path, env)
    base = f"http://{LOOPBACK}:{port}"
    return Target(
        name,
        f"{base}/",
        f"{base}/health",
        process,
        log_path,
        store_path=store_path,
        instance=name,
        headers={AUTH_HEADER: secret},
        pids={"instance": process.pid},
    )


def start_gateway(
    workdir: Path,
    name: str,
    params: dict[str, Any],
    secret: str,
    python: str,
    *,
    others: dict[str, dict[str, Any]] | None = None,
    server: dict[str, Any] | None = None,
) -> Target:
    """`xsoar-local up` (on this interpreter) with one external instance, which runs on `python`
    (XSOAR_LOCAL_INSTANCE_PYTHON); events go through /instance/execute/<name>. `others`: more external instances
    (name -> params) beside it; `server`: more `server:` keys of the config (such as `api_key`). Every instance
    gets a free listen port unless its params name one."""
    data_dir = workdir / "xsoar-local"
    port = free_port()
    instances = {name: params, **(others or {})}
    config = {
        "server": {
            "host": LOOPBACK,
            "port": port,
            "data_dir": str(data_dir),
            **(server or {}),
            "config": {f"instance.execute.external.{key}": "true" for key in instances},
        },
        "packs": [str(PACK)],
        "instances": [
            {
                "name": key,
                "integration": INTEGRATION,
                "enabled": True,
                "params": {"longRunningPort": free_port(), **values},
            }
            for key, values in instances.items()
        ],
    }
    config_path = workdir / "xsoar-local.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log_path = workdir / "xsoar-local.log"
    env = {**os.environ, INSTANCE_PYTHON_VAR: python}
    process = _popen([sys.executable, "-m", "xsoar_local", "up", "--config", str(config_path)], log_path, env)
    base = f"http://{LOOPBACK}:{port}"
    return Target(
        name,
        f"{base}/instance/execute/{name}",
        f"{base}/instance/execute/{name}/health",
        process,
        log_path,
        store_path=data_dir / "xsoar-local.db",
        instance=name,
        headers={AUTH_HEADER: secret},
        pids={"gateway": process.pid},
    )


def find_instance_pid(target: Target, client: httpx.Client, names: tuple[str, ...] = ()) -> None:
    """Record the pid of the gateway's instance process, from `GET /instances` (and of each of `names`, under
    its name)."""
    base = target.url.split("/instance/execute/")[0]
    wanted = {target.instance: "instance", **{name: name for name in names}}
    for item in client.get(f"{base}/instances", timeout=5).json():
        if item.get("name") in wanted and item.get("pid"):
            target.pids[wanted.pop(item["name"])] = int(item["pid"])
    if wanted:
        raise TargetError(f"the gateway does not report a pid for instance {next(iter(wanted))!r}")
