"""Start xsoar-local the way a user does (`xsoar-local up --config <file>`) and talk to it over loopback HTTP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from xsoar_local.api_modules import inline_api_modules, modules_folder
from xsoar_local.config import ServerConfig, write_default_config

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
ECHO_PACK = DATA / "packs" / "EchoWebhook"
GENERIC_WEBHOOK_PACK = REPO / "Packs" / "GenericWebhook"
LOOPBACK = "127.0.0.1"

# The image environments of every test platform: built once (by the first test that needs one), reused by the rest
# and by later runs; `make clean` removes them with build/.
TEST_ENVIRONMENTS = Path(os.environ.get("XSOAR_LOCAL_TEST_ENVIRONMENTS") or REPO / "build" / "test-environments")

# Every process a test platform starts inherits this variable, so a test can find any process left behind.
TAG_VARIABLE = "XSOAR_LOCAL_TEST_TAG"


def xsoar_local_command() -> list[str]:
    script = Path(sys.executable).parent / "xsoar-local"
    return [str(script)] if script.exists() else [sys.executable, "-m", "xsoar_local"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")


def write_config(
    folder: Path,
    instances: list[dict[str, Any]],
    *,
    packs: list[str | Path] | None = None,
    port: int | None = None,
    name: str = "xsoar-local.yaml",
    **server: Any,
) -> Path:
    """A config file for `instances`; every instance is external unless `config=` says otherwise."""
    server.setdefault("config", {"instance.execute.external": "true"})
    server.setdefault("environments_dir", str(TEST_ENVIRONMENTS))
    config = {
        "server": {"host": LOOPBACK, "port": port or free_port(), "data_dir": "data", **server},
        "packs": [str(pack) for pack in (packs if packs is not None else [ECHO_PACK])],
        "instances": instances,
    }
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def run_cli(*args: str | Path, timeout: float = 60.0, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*xsoar_local_command(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


@dataclass
class Platform:
    """A running `xsoar-local up` and an HTTP client for its gateway."""

    config_path: Path
    process: subprocess.Popen[str]
    url: str
    tag: str
    api_key: str | None = None
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        headers = {"X-API-Key": self.api_key} if self.api_key else {}
        self.client = httpx.Client(base_url=self.url, timeout=30.0, headers=headers, trust_env=False)

    @property
    def config(self) -> dict[str, Any]:
        return yaml.safe_load(self.config_path.read_text(encoding="utf-8"))

    @property
    def store_path(self) -> Path:
        return self.config_path.parent / self.config["server"]["data_dir"] / "xsoar-local.db"

    def instances(self) -> dict[str, dict[str, Any]]:
        response = self.client.get("/instances")
        assert response.status_code == 200, response.text
        return {item["name"]: item for item in response.json()}

    def wait_running(self, name: str, *, restarts: int = 0, timeout: float = 30.0) -> dict[str, Any]:
        def running() -> dict[str, Any] | None:
            self.check_alive()
            item = self.instances()[name]
            return item if item["status"] == "running" and item["restarts"] >= restarts else None

        return wait_until(running, timeout=timeout, what=f"instance {name!r} running after {restarts} restart(s)")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            out, err = self.process.communicate()
            raise AssertionError(f"xsoar-local up exited with {self.process.returncode}:\n{out}\n{err}")

    def stop(self, sig: signal.Signals = signal.SIGINT, timeout: float = 30.0) -> tuple[int, str, str]:
        """Signal the platform's process group, as Ctrl-C in its terminal would; returns its exit and output."""
        self.client.close()
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
            raise AssertionError(f"xsoar-local up did not stop within {timeout}s after {sig.name}:\n{err}") from None
        return self.process.returncode, out, err


def start_platform(
    config_path: Path, *, wait_for_instances: bool = True, wait_for_gateway: bool = True, timeout: float = 30.0
) -> Platform:
    """`xsoar-local up --config <config_path>`, returned once /health answers and (by default) says every
    instance is running; an instance that goes down instead fails the test with the end of its log. With
    `wait_for_gateway=False`, returned at once."""
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    tag = uuid.uuid4().hex
    process = subprocess.Popen(
        [*xsoar_local_command(), "up", "--config", str(config_path)],
        cwd=config_path.parent,
        env={**os.environ, TAG_VARIABLE: tag},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Its own process group, like a command started in a terminal.
        start_new_session=True,
    )
    platform = Platform(
        config_path=config_path,
        process=process,
        # Where the CLI reaches it too: server.host, or 127.0.0.1 for a wildcard.
        url=ServerConfig(host=config["server"].get("host", LOOPBACK)).base_url(config["server"]["port"]),
        tag=tag,
        api_key=config["server"].get("api_key"),
    )

    def ready() -> bool:
        platform.check_alive()
        try:
            health = platform.client.get("/health")
        except httpx.TransportError:
            return False
        if health.status_code != 200:
            return False
        states = health.json()["instances"]
        if not wait_for_instances:
            return True
        down = [name for name, state in states.items() if state == "down"]
        if down:
            log = (config_path.parent / config["server"]["data_dir"] / "logs" / f"{down[0]}.log").read_text()
            raise AssertionError(f"instance {down[0]!r} went down while starting; its log ends with:\n{log[-3000:]}")
        return all(state == "running" for state in states.values())

    if not wait_for_gateway:
        return platform
    try:
        wait_until(ready, timeout=timeout, what="xsoar-local to be ready")
    except BaseException:
        platform.stop(signal.SIGTERM)
        raise
    return platform


def tagged_processes(tag: str) -> list[int]:
    """Processes whose environment holds the tag: anything a test platform started, at any depth."""
    found = []
    needle = f"{TAG_VARIABLE}={tag}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def store_integrity(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def unified_script(script: str, integration_id: str) -> str:
    """The script as `demisto-sdk prepare-content` embeds it: import lines stripped, module lines registered."""
    dropped = ("import demistomock as demisto", "from CommonServerPython import", "from CommonServerUserPython import")
    kept = [line for line in script.splitlines() if not line.startswith(dropped)]
    return "\n".join(
        [
            f"register_module_line('{integration_id}', 'start', __line__())",
            *kept,
            f"register_module_line('{integration_id}', 'end', __line__())",
            "",
        ]
    )


def build_pack_zip(pack: Path, destination: Path) -> Path:
    """A zip shaped like `demisto-sdk zip-packs` output: pack metadata, and each integration as one unified YAML
    (its ApiModules in place)."""
    metadata = json.loads((pack / "pack_metadata.json").read_text(encoding="utf-8"))
    with zipfile.ZipFile(destination, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("pack_metadata.json", (pack / "pack_metadata.json").read_text(encoding="utf-8"))
        archive.writestr("metadata.json", json.dumps({**metadata, "id": pack.name}))
        for folder in sorted((pack / "Integrations").iterdir()):
            yml = yaml.safe_load((folder / f"{folder.name}.yml").read_text(encoding="utf-8"))
            script_path = folder / f"{folder.name}.py"
            script = inline_api_modules(script_path.read_text(encoding="utf-8"), str(script_path), modules_folder(pack))
            yml["script"]["script"] = unified_script(script, yml["commonfields"]["id"])
            archive.writestr(f"Integrations/integration-{folder.name}.yml", yaml.safe_dump(yml, sort_keys=False))
    return destination


def copy_pack(pack: Path, destination: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of a one-integration pack, with its integration YAML changed by `edit`."""
    shutil.copytree(pack, destination, ignore=shutil.ignore_patterns("__pycache__"))
    (folder,) = (destination / "Integrations").iterdir()
    yml_path = folder / f"{folder.name}.yml"
    yml = yaml.safe_load(yml_path.read_text(encoding="utf-8"))
    edit(yml)
    yml_path.write_text(yaml.safe_dump(yml, sort_keys=False), encoding="utf-8")
    return destination


def default_config(folder: Path) -> Path:
    """The config a first run writes, beside a copy of the pack it names (and of the ApiModules it imports, in the
    content layout); only the gateway port is changed."""
    for pack in (GENERIC_WEBHOOK_PACK, GENERIC_WEBHOOK_PACK.parent / "ApiModules"):
        shutil.copytree(pack, folder / "Packs" / pack.name, ignore=shutil.ignore_patterns("__pycache__"))
    config = folder / "xsoar-local.yaml"
    assert write_default_config(config, pack=folder / "Packs" / "GenericWebhook")
    text = config.read_text().replace("port: 8080", f"port: {free_port()}")
    # The image environment the other tests share (built once).
    text = text.replace("  config:", f"  environments_dir: {TEST_ENVIRONMENTS}\n  config:", 1)
    config.write_text(text)
    return config
