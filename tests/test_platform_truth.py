"""xsoar-local runs each instance in its docker image's environment, and its status tells the truth.

Every test starts `xsoar-local up` in a process of its own, as a user does, and looks from outside: the banner,
`status` (table and --json), the read API, the page, and what the reroute does.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import (
    ECHO_PACK,
    GENERIC_WEBHOOK_PACK,
    LOOPBACK,
    Platform,
    copy_pack,
    free_port,
    run_cli,
    start_platform,
    wait_until,
    write_config,
    xsoar_local_command,
)

from xsoar_local.images import MARKER_NAME

FASTAPI_IMAGE = "demisto/fastapi:0.125.0.10158186"
BANNER_END = "Ctrl-C stops everything."


def echo_pack(folder: Path, image: str | None) -> Path:
    """The Echo test pack with its integration naming `image` (None: naming no image)."""

    def set_image(yml: dict[str, Any]) -> None:
        if image is None:
            yml["script"].pop("dockerimage", None)
        else:
            yml["script"]["dockerimage"] = image

    return copy_pack(ECHO_PACK, folder / "EchoPack", set_image)


def read_banner(platform: Platform, timeout: float = 180.0, until: str = BANNER_END) -> str:
    """What `up` printed on stdout up to the end of its banner, or `until` (read from the pipe's descriptor)."""
    fd = platform.process.stdout.fileno()  # type: ignore[union-attr]
    data = platform.__dict__.setdefault("_stdout_read", [b""])
    deadline = time.monotonic() + timeout
    while until.encode() not in data[0]:
        platform.check_alive()
        assert time.monotonic() < deadline, f"no {until!r} within {timeout}s; so far:\n{data[0].decode()}"
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"stdout closed before {until!r}:\n{data[0].decode()}"
            data[0] += chunk
    return data[0].decode()


def status_json(config: Path) -> dict[str, dict[str, Any]]:
    result = run_cli("status", "--json", "--config", config)
    assert result.returncode == 0, result.stderr
    return {item["name"]: item for item in json.loads(result.stdout)}


def wait_status(platform: Platform, name: str, status: str, timeout: float = 60.0) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        platform.check_alive()
        item = platform.instances()[name]
        return item if item["status"] == status else None

    return wait_until(reached, timeout=timeout, what=f"instance {name!r} {status}")


def probe(platform: Platform, name: str) -> dict[str, Any]:
    response = platform.client.get(f"/instance/execute/{name}/environment")
    assert response.status_code == 200, response.text
    return response.json()


# --- image environments ---------------------------------------------------------------------------------------


def test_an_instance_runs_on_its_images_environment_built_once_and_reused(tmp_path: Path) -> None:
    """
    Given an integration whose YAML names demisto/fastapi:<tag>, and an empty environments dir
    When the platform starts, then starts again
    Then the first start builds the image's virtualenv (with its progress shown) and the second reuses it; the
         instance runs inside it: Python 3.12, no httptools, no uvloop, pydantic 1; status, --json and the page say
         which image and environment.
    """
    environments = tmp_path / "environments"
    pack = echo_pack(tmp_path, FASTAPI_IMAGE)
    config = write_config(tmp_path, [{"name": "img", "integration": "Echo Webhook"}], packs=[pack])
    data = yaml.safe_load(config.read_text())
    data["server"]["environments_dir"] = str(environments)
    config.write_text(yaml.safe_dump(data))
    venv = environments / "demisto-fastapi-0.125"

    first = start_platform(config, timeout=300, wait_for_gateway=False)
    try:
        read_banner(first, until="installing")
        building = run_cli("status", "--config", config)
        banner = read_banner(first)
        inside = probe(first, "img")
        listed = status_json(config)["img"]
        table = run_cli("status", "--config", config)
        page = first.client.get("/").text
    finally:
        first.stop()
    marker = (venv / MARKER_NAME).stat()

    assert building.returncode == 1 and "is building image environments" in building.stderr
    assert f"building {venv} for {FASTAPI_IMAGE}" in banner
    assert f"{venv} ready: Python 3.12" in banner
    assert f"environment: {FASTAPI_IMAGE} replicated (Python 3.12" in banner
    assert Path(inside["prefix"]) == venv
    assert inside["python"].startswith("3.12.")
    assert inside["modules"] == {"httptools": False, "uvloop": False, "pydantic": True}
    assert inside["versions"]["pydantic"].startswith("1.10.")
    assert inside["versions"]["fastapi"] == "0.125.0"
    assert listed["image"] == FASTAPI_IMAGE
    assert listed["environment"]["kind"] == "image"
    assert listed["environment"]["path"] == str(venv)
    assert listed["environment"]["pins_file"] == "demisto-fastapi-0.125.txt"
    assert f"{FASTAPI_IMAGE} (Python 3.12" in table.stdout
    assert FASTAPI_IMAGE in page and "replicated" in page

    second = start_platform(config, timeout=120)
    try:
        again = read_banner(second)
        assert Path(probe(second, "img")["prefix"]) == venv
    finally:
        second.stop()
    assert f"{venv} is up to date for {FASTAPI_IMAGE}" in again
    assert "building" not in again
    assert (venv / MARKER_NAME).stat().st_ino == marker.st_ino  # the venv was not rebuilt


def test_an_unknown_image_warns_and_runs_on_the_platforms_own_environment(tmp_path: Path) -> None:
    pack = echo_pack(tmp_path, "demisto/nosuch:1.0.0.1")
    config = write_config(tmp_path, [{"name": "odd", "integration": "Echo Webhook"}], packs=[pack])

    platform = start_platform(config)
    try:
        banner = read_banner(platform)
        inside = probe(platform, "odd")
        listed = status_json(config)["odd"]
        table = run_cli("status", "--config", config).stdout
    finally:
        _, out, err = platform.stop()

    assert "warning: instance 'odd': image demisto/nosuch:1.0.0.1 is not known to xsoar-local" in err
    assert "it runs on the platform's own environment instead" in err
    assert Path(inside["executable"]).resolve() == Path(sys.executable).resolve()
    assert listed["environment"]["kind"] == "platform"
    assert "not known" in listed["environment"]["reason"]
    assert "environment: the platform's own (Python" in banner and "demisto/nosuch:1.0.0.1 is not known" in banner
    assert "platform's own (Python" in table and "image demisto/nosuch:1.0.0.1 not pinned" in table
    assert out.rstrip().endswith("xsoar-local stopped: the gateway and every instance have ended.")


def test_an_unknown_image_is_refused_when_the_config_says_so(tmp_path: Path) -> None:
    pack = echo_pack(tmp_path, "demisto/nosuch:1.0.0.1")
    config = write_config(
        tmp_path, [{"name": "odd", "integration": "Echo Webhook"}], packs=[pack], unknown_image="error"
    )

    result = run_cli("up", "--config", config, timeout=60)

    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "image demisto/nosuch:1.0.0.1 is not known to xsoar-local" in result.stderr
    assert "server.unknown_image is 'error'" in result.stderr


def test_a_missing_python_is_one_line_naming_the_version_and_the_fix(tmp_path: Path) -> None:
    """Given an image whose pin file names a Python this machine lacks, `up` says so in one line."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "demisto-old.txt").write_text("# image: demisto/old\n# tags: 1.0\n# python: 3.1\npyyaml==6.0.3\n")
    pack = echo_pack(tmp_path, "demisto/old:1.0")
    config = write_config(tmp_path, [{"name": "old", "integration": "Echo Webhook"}], packs=[pack])
    code = (
        "import sys, xsoar_local.images as images; from pathlib import Path;"
        f" images.IMAGES_DIR = Path({str(images)!r});"
        " from xsoar_local.cli import main; sys.argv = ['xsoar-local', 'up', '--config', sys.argv[1]]; main()"
    )

    result = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True, text=True, timeout=60)

    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "Python 3.1 not found (needed by demisto/old:1.0): install it, e.g. `pyenv install 3.1`" in result.stderr


# --- a status that is true -------------------------------------------------------------------------------------


def test_failed_start_up_checks_are_error_everywhere(tmp_path: Path) -> None:
    """
    Given a Generic Webhook instance whose params fail the integration's own checks (GitHub signatures, no secret)
    When the platform starts
    Then the instance is "error" with the integration's message in the banner (no try line), status, --json, the
         API and the page, and a request through the reroute gets 503 naming it; it never says "starting".
    """
    params = {"signature_scheme": "GitHub"}
    config = write_config(
        tmp_path, [{"name": "gh", "integration": "Generic Webhook", "params": params}], packs=[GENERIC_WEBHOOK_PACK]
    )
    platform = start_platform(config, wait_for_instances=False, timeout=300)
    try:
        banner = read_banner(platform)
        item = wait_status(platform, "gh", "error")
        table = run_cli("status", "--config", config)
        listed = status_json(config)["gh"]
        page = platform.client.get("/").text
        refused = platform.client.post("/instance/execute/gh", json={"name": "x"})
    finally:
        platform.stop()

    message = "signature_scheme GitHub needs a signature_secret"
    assert "instance gh (Generic Webhook): error" in banner
    assert message in banner
    assert "try:" not in banner
    assert "error, not listening" in banner
    assert message in item["error"]
    assert listed["status"] == "error" and message in listed["error"]
    assert listed["try"] is None
    row = next(line for line in table.stdout.splitlines() if line.startswith("gh "))
    assert " error " in row and message in row
    assert "status-error" in page and message in page
    assert refused.status_code == 503
    assert refused.json()["error"] == "instance_unavailable"
    assert f"instance 'gh' is in error: An error occurred: {message}" in refused.json()["detail"]
    assert refused.headers["Retry-After"] == "30"  # it needs a fix: no point in retrying every second


def _kill_instance(platform: Platform, name: str) -> int:
    pid = platform.instances()[name]["pid"]
    os.kill(pid, signal.SIGKILL)
    return pid


def _squat(port: int, timeout: float = 30.0) -> socket.socket:
    """Listen on `port` as soon as the killed instance's socket is gone."""
    squatter = socket.socket()

    def bound() -> bool:
        try:
            squatter.bind((LOOPBACK, port))
        except OSError:
            return False
        return True

    wait_until(bound, timeout=timeout, interval=0.01, what=f"port {port} to be free")
    squatter.listen()
    squatter.setblocking(False)
    return squatter


def test_a_port_squatted_during_a_restart_is_error_and_never_forwarded_to(tmp_path: Path) -> None:
    """
    Given a running Generic Webhook instance on a fixed listen port
    When its process dies and another process takes the port before the restart
    Then the instance is "error" (not "running"), naming the port and the other process; the reroute answers 503
         and forwards nothing to the other process; once the port is free again the instance serves again.
    """
    port = free_port()
    params = {"longRunningPort": port}
    config = write_config(
        tmp_path, [{"name": "hook", "integration": "Generic Webhook", "params": params}], packs=[GENERIC_WEBHOOK_PACK]
    )
    platform = start_platform(config, timeout=300)
    try:
        wait_status(platform, "hook", "running")
        _kill_instance(platform, "hook")
        squatter = _squat(port)
        try:
            item = wait_status(platform, "hook", "error")
            refused = platform.client.post("/instance/execute/hook", json={"name": "lost?"})
            listed = status_json(config)["hook"]
            readable, _, _ = select.select([squatter], [], [], 0)
        finally:
            squatter.close()
        serving = wait_status(platform, "hook", "running", timeout=60)
        delivered = platform.client.post("/instance/execute/hook", json={"name": "after"})
    finally:
        platform.stop()

    held = f"(port {port} is held by another process (pid {os.getpid()}"
    assert f"Listen port {port} is already in use" in item["error"]
    assert held in item["error"]
    assert listed["status"] == "error" and held in listed["error"]
    assert refused.status_code == 503, refused.text
    assert held in refused.json()["detail"]
    assert readable == []  # not one connection reached the other process
    assert serving["restarts"] == 1
    assert delivered.status_code == 200, delivered.text


def test_a_restart_loop_shows_its_restarts_and_last_error(tmp_path: Path) -> None:
    """Given an instance whose port another process takes after it died, when every restart fails to bind, then
    status shows "down", the restarts counted and the last error; the reroute gives 503 with that reason."""
    port = free_port()
    config = write_config(
        tmp_path, [{"name": "loop", "integration": "Echo Webhook", "params": {"longRunningPort": port}}]
    )
    platform = start_platform(config, timeout=120)
    try:
        _kill_instance(platform, "loop")
        squatter = _squat(port)
        try:

            def looping() -> dict[str, Any] | None:
                item = platform.instances()["loop"]
                return item if item["restarts"] >= 2 and item["status"] == "down" else None

            item = wait_until(looping, timeout=60, what="two failed restarts")
            table = run_cli("status", "--config", config)
            refused = platform.client.post("/instance/execute/loop", json={})
        finally:
            squatter.close()
    finally:
        platform.stop()

    assert "exited with code 1" in item["error"] and "Address already in use" in item["error"]
    row = next(line for line in table.stdout.splitlines() if line.startswith("loop "))
    assert " down " in row and "exited with code 1" in row
    assert int(row.split()[3]) >= 2
    assert refused.status_code == 503
    assert "instance 'loop' is down: long-running-execution exited with code 1" in refused.json()["detail"]


# --- one platform per data dir ---------------------------------------------------------------------------------


def test_a_second_platform_on_the_same_data_dir_is_refused_also_after_a_sigkill(tmp_path: Path) -> None:
    """
    Given a running platform, and a copy of its config with another gateway port and the same data dir
    When `up` runs on the copy, then after the first platform is killed with SIGKILL
    Then the second is refused at once naming the first (pid, gateway, config) and status still shows the first;
         after the SIGKILL (the lock goes with the process) `up` on the copy starts.
    """
    config = write_config(tmp_path, [{"name": "a", "integration": "Echo Webhook"}])
    data = yaml.safe_load(config.read_text())
    copy = tmp_path / "copy.yaml"
    copy.write_text(yaml.safe_dump({**data, "server": {**data["server"], "port": free_port()}}))
    first = start_platform(config, timeout=120)
    try:
        refused = run_cli("up", "--config", copy, timeout=60)
        status = status_json(copy)  # the copy's status asks the platform that holds the data dir
    finally:
        os.kill(first.process.pid, signal.SIGKILL)  # the platform only: no cleanup of its own runs
        first.process.wait(timeout=30)
        first.client.close()

    assert refused.returncode == 1
    assert refused.stderr.strip().count("\n") == 0
    assert f"is in use by another xsoar-local (pid {first.process.pid}, gateway {first.url}" in refused.stderr
    assert "one platform per data dir" in refused.stderr and "server.data_dir" in refused.stderr
    assert status["a"]["webhook_url"].startswith(first.url)

    second = start_platform(copy, timeout=120)
    try:
        assert second.instances()["a"]["status"] == "running"
    finally:
        second.stop()


# --- the try line -------------------------------------------------------------------------------------------------


def test_every_printed_try_line_works_and_none_is_printed_where_none_can(tmp_path: Path) -> None:
    """
    Given instances with header-token auth, Basic auth, GitHub signatures, and a non-external one behind the API key
    When the platform starts
    Then each banner's try line, run as printed in bash with its $VARIABLES set from the config, gets 200 and
         creates the incident; the secrets are not in the banner; an instance with no curl that can work prints
         the reason instead.
    """
    secrets = {"token": "tok-3x!$a'b", "password": "pw-'quoted'", "signing": "gh-secret-123", "api": "key-9"}
    instances = [
        {
            "name": "token",
            "integration": "Generic Webhook",
            "params": {"credentials": {"identifier": "_header:X-Token", "password": secrets["token"]}},
        },
        {
            "name": "basic",
            "integration": "Generic Webhook",
            "params": {"credentials": {"identifier": "alice", "password": secrets["password"]}},
        },
        {
            "name": "signed",
            "integration": "Generic Webhook",
            "params": {"signature_scheme": "GitHub", "signature_secret": secrets["signing"]},
        },
        {"name": "private", "integration": "Generic Webhook"},
        {
            "name": "walled",
            "integration": "Generic Webhook",
            "params": {"allowed_cidrs": "10.9.8.0/24"},
        },
    ]
    external = {f"instance.execute.external.{name}": "true" for name in ("token", "basic", "signed", "walled")}
    config = write_config(tmp_path, instances, packs=[GENERIC_WEBHOOK_PACK], api_key=secrets["api"], config=external)
    platform = start_platform(config, timeout=300)
    try:
        banner = read_banner(platform)
        lines = {block.split()[0]: block for block in banner.split("  instance ")[1:]}
        env = {
            **os.environ,
            "WEBHOOK_TOKEN": secrets["token"],
            "WEBHOOK_PASSWORD": secrets["password"],
            "WEBHOOK_SIGNING_SECRET": secrets["signing"],
            "XSOAR_LOCAL_API_KEY": secrets["api"],
        }
        ran = {}
        for name in ("token", "basic", "signed", "private"):
            (command,) = [line.split("try: ", 1)[1] for line in lines[name].splitlines() if "try: " in line]
            ran[name] = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=60)
        incidents = platform.client.get("/incidents").json()
    finally:
        platform.stop()

    for name, result in ran.items():
        assert result.returncode == 0, (name, result.stdout, result.stderr)
        assert json.loads(result.stdout)[0]["name"] == "Hello from curl", name
    assert sorted(item["instance"] for item in incidents) == ["basic", "private", "signed", "token"]
    for value in secrets.values():
        assert value not in banner
    assert "$XSOAR_LOCAL_API_KEY: server.api_key in" in lines["private"]
    assert "try:" not in lines["walled"] and "no try line:" in lines["walled"]


def test_the_banner_names_a_command_that_works_from_here(tmp_path: Path) -> None:
    config = write_config(tmp_path, [{"name": "a", "integration": "Echo Webhook"}])
    platform = start_platform(config, timeout=120)
    try:
        banner = read_banner(platform)
    finally:
        platform.stop()

    status_line = next(line for line in banner.splitlines() if " status: " in line)
    command = status_line.split(" status: ", 1)[1].split(" status --config ")[0]
    assert command == " ".join(xsoar_local_command()) or Path(command).resolve() == Path(xsoar_local_command()[0])
    help_result = subprocess.run([*command.split(), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert help_result.returncode == 0, help_result.stderr


def test_incidents_of_an_unknown_instance_is_an_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, [{"name": "known", "integration": "Echo Webhook"}])

    result = run_cli("incidents", "--instance", "nope", "--config", config)

    assert result.returncode == 1
    assert "no instance named 'nope'" in result.stderr and "(instances: known)" in result.stderr


@pytest.mark.parametrize("path", ["/health", "/instances"])
def test_gateway_error_words_are_snake_case_like_the_integrations(tmp_path: Path, path: str) -> None:
    config = write_config(tmp_path, [{"name": "known", "integration": "Echo Webhook"}])
    platform = start_platform(config, timeout=120)
    try:
        wrong_method = platform.client.post(path, json={})
        unknown = platform.client.post("/instance/execute/nope", json={})
    finally:
        platform.stop()

    assert (wrong_method.status_code, wrong_method.json()["error"]) == (405, "method_not_allowed")
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_instance")
