"""Long-running executions under the supervisor: restarts, 503 while down, and a clean stop on Ctrl-C / SIGTERM."""

from __future__ import annotations

import base64
import os
import signal
from pathlib import Path

import httpx
from helpers import start_platform, store_integrity, tagged_processes, wait_until, write_config

from xsoar_local.masking import secret_values
from xsoar_local.supervisor import _exit_reason


def test_a_killed_instance_is_503_then_restarted_and_health_says_so(tmp_path: Path) -> None:
    """Given a running instance, when its process is killed, then callers get 503 with Retry-After until the
    supervisor has restarted it, and /instances and module health say it was restarted."""
    platform = start_platform(write_config(tmp_path, [{"name": "echo", "integration": "Echo Webhook"}]))
    try:
        before = platform.wait_running("echo")
        os.kill(before["pid"], signal.SIGKILL)
        wait_until(lambda: platform.instances()["echo"]["status"] != "running", what="the supervisor to notice")

        refused = httpx.post(f"{platform.url}/instance/execute/echo", json={"name": "while down"})
        assert refused.status_code == 503
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"] == "instance_unavailable"

        after = platform.wait_running("echo", restarts=1)
        assert after["pid"] != before["pid"]
        assert after["last_exit"] == "was killed by SIGKILL"
        assert "restart" in after["module_health"]["message"]
        assert "SIGKILL" in after["module_health"]["message"]
        assert httpx.post(f"{platform.url}/instance/execute/echo", json={"name": "back"}).status_code == 200
    finally:
        platform.stop()


def test_a_crashing_instance_is_down_with_retry_after_and_an_error_health(tmp_path: Path) -> None:
    """Given an instance whose process exits (code 3) soon after starting, when it is down, then callers get 503
    with Retry-After, module health is an error naming the exit, and it keeps being restarted."""
    config = write_config(tmp_path, [{"name": "flaky", "integration": "Echo Webhook", "params": {"crash_after": 0.2}}])
    platform = start_platform(config, wait_for_instances=False)
    try:

        def down() -> dict | None:
            item = platform.instances()["flaky"]
            return item if item["status"] == "down" and item["module_health"]["is_error"] else None

        item = wait_until(down, what="the flaky instance to be down")
        assert item["last_exit"].startswith("exited with code 3")
        assert "exited with code 3" in item["module_health"]["message"]

        refused = httpx.post(f"{platform.url}/instance/execute/flaky", json={})
        assert refused.status_code == 503
        assert int(refused.headers["Retry-After"]) >= 1

        wait_until(lambda: platform.instances()["flaky"]["restarts"] >= 2, what="a second restart")
    finally:
        platform.stop()


def test_ctrl_c_leaves_no_process_and_a_restart_shows_the_same_incidents(tmp_path: Path) -> None:
    """Given a platform whose instance started a process of its own and holds incidents, when Ctrl-C (SIGINT)
    stops it, then no process it started is left, the store is consistent, and after a restart the same
    incidents are there."""
    config = write_config(tmp_path, [{"name": "echo", "integration": "Echo Webhook", "params": {"spawn_child": True}}])
    platform = start_platform(config)
    ids = [
        httpx.post(f"{platform.url}/instance/execute/echo", json={"name": f"event {n}"}).json()[0]["id"]
        for n in range(3)
    ]
    # The platform, the instance and the instance's own child.
    assert len(tagged_processes(platform.tag)) >= 3

    returncode, _, err = platform.stop(signal.SIGINT)

    assert returncode == 0, err
    assert "Traceback" not in err
    wait_until(lambda: not tagged_processes(platform.tag), timeout=5, what="every process to be gone")
    assert store_integrity(platform.store_path) == "ok"

    again = start_platform(config)
    try:
        listed = again.client.get("/incidents").json()
        assert [item["id"] for item in listed] == ids[::-1]
    finally:
        again.stop()


def test_sigterm_stops_everything(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        [
            {"name": "one", "integration": "Echo Webhook", "params": {"spawn_child": True}},
            {"name": "two", "integration": "Echo Webhook"},
        ],
    )
    platform = start_platform(config)

    returncode, _, err = platform.stop(signal.SIGTERM)

    assert returncode == 0, err
    wait_until(lambda: not tagged_processes(platform.tag), timeout=5, what="every process to be gone")


def test_instances_stop_even_when_the_platform_is_killed(tmp_path: Path) -> None:
    """Given a running platform, when it is killed with SIGKILL (no chance to clean up), then its instance
    processes stop too: the kernel signals them when their parent dies."""
    platform = start_platform(write_config(tmp_path, [{"name": "echo", "integration": "Echo Webhook"}]))
    assert platform.instances()["echo"]["pid"] in tagged_processes(platform.tag)

    platform.stop(signal.SIGKILL)

    wait_until(lambda: not tagged_processes(platform.tag), timeout=10, what="the orphaned instance to stop")


def test_the_exit_reason_masks_the_instance_secrets(tmp_path: Path) -> None:
    """Given a crash whose last stderr line holds the instance's password, token and Basic credentials, when the
    exit reason is made (shown as last_exit and stored as module health), then each secret is masked."""
    params = {
        "credentials": {"identifier": "admin", "password": "hunter2-pass"},
        "api_token": "tok-123456",
        "use_secret_header": "true",
        "longRunningPort": 8000,
        "name": "visible",
    }
    basic = base64.b64encode(b"admin:hunter2-pass").decode()
    log_path = tmp_path / "instance.log"
    log_path.write_text(
        "--- starting\nTraceback (most recent call last):\n"
        f"ValueError: login hunter2-pass failed with tok-123456, Basic {basic}, visible on port 8000\n"
    )

    reason = _exit_reason(1, log_path, secret_values(params))

    assert reason == (
        "exited with code 1: ValueError: login <XX_REPLACED> failed with <XX_REPLACED>,"
        " Basic <XX_REPLACED>, visible on port 8000"
    )
