"""The requests log end to end: the default config's Generic Webhook instance and a signed one, sent to as senders
do, then read back through GET /requests, the page and `xsoar-local requests`; an entry's curl command, run by
bash, sends the request again. No secret reaches the store file."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers import Platform, default_config, run_cli, start_platform, wait_until

pytestmark = pytest.mark.timeout(300)

SIGNING_SECRET = "requests-log-signing-secret-0042"


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    config_path = default_config(tmp_path_factory.mktemp("requests-log"))
    config = yaml.safe_load(config_path.read_text())
    signed = {
        "name": "signed",
        "integration": "Generic Webhook",
        "params": {"signature_scheme": "GitHub", "signature_secret": SIGNING_SECRET},
    }
    config["instances"].append(signed)
    config["server"]["config"]["instance.execute.external.signed"] = "true"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    running = start_platform(config_path, timeout=120)
    yield running
    running.stop()


def token(platform: Platform) -> str:
    (instance, *_) = yaml.safe_load(platform.config_path.read_text())["instances"]
    return str(instance["params"]["credentials"]["password"])


def entry_for(platform: Platform, marker: str) -> dict[str, Any]:
    """The newest requests log entry whose body holds `marker` (entries are written a moment after the answer)."""

    def found() -> dict[str, Any] | None:
        entries = platform.client.get("/requests", params={"limit": 100}).json()
        return next((item for item in entries if marker in item["body"]), None)

    return wait_until(found, what=f"a requests log entry with {marker!r}")


def post(platform: Platform, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{platform.url}/instance/execute/{path}", content=body, headers=headers, timeout=30)


def github_signature(body: bytes, secret: str = SIGNING_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_each_outcome_is_logged_with_its_error_word_and_incidents(platform: Platform) -> None:
    """A created event, a wrong token, a bad body and a signature mismatch: four entries that say which is which,
    with the sub-path and query the instance got, and the incident the first one created."""
    auth = {"Authorization": token(platform), "Content-Type": "application/json"}
    created = post(platform, "webhook/events/github?delivery=17", b'{"name": "ok-marker-1"}', auth)
    assert created.status_code == 200, created.text
    wrong = post(platform, "webhook", b'{"name": "wrong-token-marker"}', {**auth, "Authorization": "nope"})
    bad = post(platform, "webhook", b'{"name": "bad-body-marker"', auth)
    body = b'{"name": "mismatch-marker"}'
    mismatch = post(platform, "signed", body, {"X-Hub-Signature-256": github_signature(body, "another-secret")})
    assert [wrong.status_code, bad.status_code, mismatch.status_code] == [401, 400, 401]

    ok_entry = entry_for(platform, "ok-marker-1")
    assert (ok_entry["instance"], ok_entry["method"], ok_entry["target"]) == (
        "webhook",
        "POST",
        "/events/github?delivery=17",
    )
    assert (ok_entry["status"], ok_entry["error"]) == (200, None)
    assert ok_entry["new_incident_ids"] == ok_entry["incident_ids"] == [created.json()[0]["id"]]
    assert ok_entry["client"] == "127.0.0.1" and ok_entry["request_bytes"] == len(b'{"name": "ok-marker-1"}')
    words = {marker: entry_for(platform, marker)["error"] for marker in ("wrong-token", "bad-body", "mismatch")}
    assert words == {"wrong-token": "unauthorized", "bad-body": "invalid_json", "mismatch": "signature_mismatch"}
    assert entry_for(platform, "mismatch")["detail"] == mismatch.json()["detail"]

    page = platform.client.get("/").text
    assert "signature_mismatch" in page and "invalid_json" in page and "/events/github?delivery=17" in page
    listed = run_cli("requests", "--config", platform.config_path, "--instance", "webhook")
    assert listed.returncode == 0, listed.stderr
    assert (
        "unauthorized" in listed.stdout
        and "invalid_json" in listed.stdout
        and "signature_mismatch" not in listed.stdout
    )


def test_no_secret_reaches_the_store(platform: Platform) -> None:
    """The token, the signing secret and the signature values are in no entry; the first two nowhere in the store
    file."""
    body = b'{"name": "signed-marker"}'
    signature = github_signature(body)
    assert post(platform, "signed", body, {"X-Hub-Signature-256": signature}).status_code == 200
    auth = {"Authorization": token(platform)}
    assert post(platform, "webhook?secret=q-secret-1", b'{"name": "token-marker"}', auth).status_code == 200
    entries = [entry_for(platform, "signed-marker"), entry_for(platform, "token-marker")]
    assert dict(entries[0]["headers"])["X-Hub-Signature-256".lower()] == "<redacted>"
    assert dict(entries[1]["headers"])["authorization"] == "<redacted>"
    assert entries[1]["target"] == "/?secret=<redacted>"
    files = list(platform.store_path.parent.glob(platform.store_path.name + "*"))  # the file, -wal, -shm
    stored = b"".join(path.read_bytes() for path in files)
    assert b"token-marker" in stored  # read where the entries are
    for secret in (token(platform), SIGNING_SECRET, "q-secret-1"):
        assert secret.encode() not in stored
    # The signature is in no entry (the incident's rawJSON has the headers the integration does not hide).
    for secret in (token(platform), SIGNING_SECRET, signature.removeprefix("sha256="), "q-secret-1"):
        assert secret not in json.dumps(entries)


def test_an_entrys_curl_command_sends_the_request_again(platform: Platform) -> None:
    """`xsoar-local requests --curl ID`, with $AUTHORIZATION set to the token, creates the event again."""
    marker = "curl-again-marker"
    auth = {"Authorization": token(platform), "Content-Type": "application/json"}
    assert post(platform, "webhook/events/x?y=1", json.dumps({"name": marker}).encode(), auth).status_code == 200
    entry = entry_for(platform, marker)
    shown = platform.client.get(f"/requests/{entry['id']}").json()["curl"]
    assert shown["variables"] == ["AUTHORIZATION"] and "$AUTHORIZATION" in shown["command"]

    printed = run_cli("requests", "--config", platform.config_path, "--curl", str(entry["id"]))
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == shown["command"]
    before = len([item for item in platform.client.get("/incidents").json() if item["name"] == marker])
    sent = subprocess.run(
        ["bash", "-c", printed.stdout],
        env={**os.environ, "AUTHORIZATION": token(platform)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)[0]["name"] == marker
    after = len([item for item in platform.client.get("/incidents").json() if item["name"] == marker])
    assert after == before + 1


def test_an_unknown_entry_is_a_clear_error(platform: Platform, tmp_path: Path) -> None:
    missing = run_cli("requests", "--config", platform.config_path, "--curl", "999999")
    assert missing.returncode != 0 and "no entry '999999' in the requests log" in missing.stderr
    answer = platform.client.get("/requests/999999")
    assert (answer.status_code, answer.json()["error"]) == (404, "unknown_request")
