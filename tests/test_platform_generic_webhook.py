"""End to end with the real pack: the default config serving Packs/GenericWebhook, from the folder and the zip."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from helpers import (
    GENERIC_WEBHOOK_PACK,
    Platform,
    build_pack_zip,
    default_config,
    run_cli,
    start_platform,
    wait_until,
)


def secret(config: Path) -> str:
    (instance,) = yaml.safe_load(config.read_text())["instances"]
    return instance["params"]["credentials"]["password"]


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    running = start_platform(default_config(tmp_path_factory.mktemp("generic-webhook")))
    yield running
    running.stop()


def test_a_post_through_the_reroute_creates_an_incident_everyone_shows(platform: Platform) -> None:
    """Given the default config, when an event is POSTed to /instance/execute/webhook with the secret header,
    then the response is the created incident list, and GET /incidents, the CLI and the page show it."""
    token = {"Authorization": secret(platform.config_path)}

    response = httpx.post(f"{platform.url}/instance/execute/webhook", headers=token, json={"name": "Generic event"})

    assert response.status_code == 200, response.text
    (created,) = response.json()
    assert created["name"] == "Generic event"
    assert created["id"] in [item["id"] for item in platform.client.get("/incidents").json()]
    cli = run_cli("incidents", "--json", "--config", platform.config_path)
    assert created["id"] in [item["id"] for item in json.loads(cli.stdout)]
    assert "Generic event" in platform.client.get("/").text


def test_a_sub_path_with_a_query_string_is_served(platform: Platform) -> None:
    token = {"Authorization": secret(platform.config_path)}

    response = httpx.post(
        f"{platform.url}/instance/execute/webhook/alerts/v2?source=ci", headers=token, json={"name": "Sub-path event"}
    )

    assert response.status_code == 200, response.text
    assert response.json()[0]["name"] == "Sub-path event"


def test_the_integration_answers_for_its_own_authentication(platform: Platform) -> None:
    response = httpx.post(f"{platform.url}/instance/execute/webhook", json={"name": "no secret"})

    assert response.status_code == 401


def test_samples_and_test_commands(platform: Platform) -> None:
    """Given store_samples on (the default config) and an event posted, when `samples` runs fetch-incidents,
    then the event is among the samples (the integration saves them at most once a second); `test` says ok."""
    token = {"Authorization": secret(platform.config_path)}
    posted = httpx.post(f"{platform.url}/instance/execute/webhook", headers=token, json={"name": "Sample for mapping"})
    assert posted.status_code == 200

    def sample_names() -> list[str]:
        samples = run_cli("samples", "webhook", "--config", platform.config_path)
        assert samples.returncode == 0, samples.stderr
        names = [item["name"] for item in json.loads(samples.stdout)]
        return names if "Sample for mapping" in names else []

    wait_until(sample_names, timeout=10, interval=0.5, what="the sample to be saved")
    tested = run_cli("test", "webhook", "--config", platform.config_path)
    assert (tested.returncode, tested.stdout.strip()) == (0, "ok"), tested.stderr


def test_the_zip_installs_and_serves_the_same_way(tmp_path: Path) -> None:
    """Given the pack as demisto-sdk zip-packs makes it, when installed over the folder, then it serves alike."""
    config = default_config(tmp_path)
    pack_zip = build_pack_zip(GENERIC_WEBHOOK_PACK, tmp_path / "GenericWebhook.zip")

    installed = run_cli("install", pack_zip, "--config", config)

    assert installed.returncode == 0, installed.stderr
    assert yaml.safe_load(config.read_text())["packs"] == [".xsoar-local/packs/GenericWebhook"]
    platform = start_platform(config)
    try:
        response = httpx.post(
            f"{platform.url}/instance/execute/webhook/from/zip?x=1",
            headers={"Authorization": secret(config)},
            json={"name": "Zip event"},
        )
        assert response.status_code == 200, response.text
        assert response.json()[0]["name"] == "Zip event"
    finally:
        platform.stop()


def test_the_secret_never_reaches_the_platforms_pages_api_or_logs(platform: Platform) -> None:
    """
    Given the default config (header-token auth with a random password) and samples on
    When authorized and unauthorized requests go through the reroute, and samples are fetched
    Then the password appears nowhere in the page, the read API, an incident's page view, the error bodies,
         the samples, or the instance log.
    """
    password = secret(platform.config_path)
    url = f"{platform.url}/instance/execute/webhook"
    ok = httpx.post(url, headers={"Authorization": password}, json={"name": "Secret check"})
    refused = httpx.post(url, headers={"Authorization": password + "x"}, json={"name": "Wrong token"})
    assert ok.status_code == 200 and refused.status_code == 401
    incident_id = ok.json()[0]["id"]
    samples = run_cli("samples", "webhook", "--config", platform.config_path)

    seen = [ok.text, refused.text, samples.stdout, samples.stderr]
    for path in ("/", "/instances", "/incidents", f"/incidents/{incident_id}", "/health"):
        seen.append(platform.client.get(path).text)
    log_dir = platform.config_path.parent / platform.config["server"]["data_dir"] / "logs"
    seen += [log.read_text(errors="replace") for log in log_dir.glob("*.log")]
    leaks = [text[:200] for text in seen if password in text]
    assert not leaks, leaks
