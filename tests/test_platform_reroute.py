"""The gateway's reroute and read API, through real HTTP to a running `xsoar-local up` (Echo Webhook test pack)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from helpers import Platform, run_cli, start_platform, write_config

from xsoar_local.api import PlatformView, create_api
from xsoar_local.auth import api_key_carriers
from xsoar_local.config import ServerConfig
from xsoar_local.store import MemoryStore

API_KEY = "test-api-key-1234"


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    config = write_config(
        tmp_path_factory.mktemp("reroute"),
        [
            {"name": "echo", "integration": "Echo Webhook", "params": {"store_samples": True}},
            {"name": "private", "integration": "Echo Webhook"},
            {"name": "off", "integration": "Echo Webhook", "enabled": False},
            {"name": "guarded", "integration": "Echo Webhook", "params": {"token": "t0k3n"}},
        ],
        api_key=API_KEY,
        upstream_timeout=1,
        config={"instance.execute.external": True, "instance.execute.external.private": "false"},
    )
    running = start_platform(config)
    yield running
    running.stop()


@pytest.fixture
def caller(platform: Platform) -> Iterator[httpx.Client]:
    """A sender of webhook events: no API key."""
    with httpx.Client(base_url=platform.url, timeout=30.0, trust_env=False) as client:
        yield client


def test_post_creates_an_incident_that_the_api_cli_and_page_show(platform: Platform, caller: httpx.Client) -> None:
    """Given a running echo instance, when an event is POSTed to /instance/execute/echo,
    then the response is the created incident list, and GET /incidents, the CLI and the page show it."""
    response = caller.post("/instance/execute/echo", json={"name": "Disk full on db-1", "severity": 2})

    assert response.status_code == 200
    (created,) = response.json()
    assert created["name"] == "Disk full on db-1"
    assert created["instance"] == "echo"

    listed = platform.client.get("/incidents", params={"instance": "echo"}).json()
    assert created["id"] in [item["id"] for item in listed]
    assert platform.client.get(f"/incidents/{created['id']}").json()["name"] == "Disk full on db-1"

    cli = run_cli("incidents", "--json", "--instance", "echo", "--config", platform.config_path)
    assert cli.returncode == 0, cli.stderr
    assert created["id"] in [item["id"] for item in json.loads(cli.stdout)]

    page = platform.client.get("/")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert "Disk full on db-1" in page.text
    assert f'id="incident-{created["id"]}"' in page.text
    assert "rawJSON" in page.text


def test_sub_path_and_query_string_reach_the_instance(platform: Platform, caller: httpx.Client) -> None:
    """Given a sub-path and a query string, when POSTed through the reroute, then the instance sees both as sent."""
    response = caller.post("/instance/execute/echo/alerts/v1?source=siem&q=a%20b", json={"name": "sub-path event"})

    assert response.status_code == 200
    raw = json.loads(response.json()[0]["rawJSON"])
    assert raw["path"] == "/alerts/v1"
    assert raw["query"] == "source=siem&q=a%20b"
    stored = platform.client.get("/incidents", params={"limit": 1}).json()[0]
    assert stored["name"] == "sub-path event"


def test_account_route_reaches_the_same_instance(caller: httpx.Client) -> None:
    """Given the multi-tenant form, when called, then it reaches the instance of that name."""
    response = caller.get("/acc_tenant1/instance/execute/echo/echo?x=1")

    assert response.status_code == 200
    assert response.json()["path"] == "/echo"
    assert response.json()["query"] == "x=1"


def test_headers_are_forwarded_with_x_forwarded_and_nothing_added(caller: httpx.Client) -> None:
    """Given a request with its own headers, when rerouted, then they arrive unchanged, hop-by-hop headers are
    dropped, X-Forwarded-* are added, and the gateway adds no headers of its own."""
    response = caller.get(
        "/instance/execute/echo/echo",
        headers={"X-Custom": "kept", "Accept-Encoding": "identity", "User-Agent": "sender/1.0", "TE": "trailers"},
    )

    headers = {key.lower(): value for key, value in response.json()["headers"].items()}
    assert headers["x-custom"] == "kept"
    assert headers["accept-encoding"] == "identity"
    assert headers["user-agent"] == "sender/1.0"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"].startswith("127.0.0.1:")
    assert "te" not in headers


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "OPTIONS"])
def test_every_method_is_rerouted(caller: httpx.Client, method: str) -> None:
    response = caller.request(method, "/instance/execute/echo/anything", content=b"{}")

    assert response.status_code == 200
    assert response.json()["method"] == method


def test_large_bodies_stream_both_ways(caller: httpx.Client) -> None:
    """Given a 24 MiB upload sent in chunks and a 24 MiB chunked download, when rerouted, then both arrive whole."""
    chunk = bytes(range(256)) * 4096
    digest = hashlib.sha256(chunk * 24).hexdigest()

    upload = caller.post("/instance/execute/echo/upload", content=iter([chunk] * 24))
    assert upload.json() == {"size": len(chunk) * 24, "sha256": digest}

    received = 0
    with caller.stream("GET", "/instance/execute/echo/stream", params={"size": 24 * 1024 * 1024}) as download:
        assert download.status_code == 200
        for part in download.iter_raw():
            received += len(part)
    assert received == 24 * 1024 * 1024


def test_an_instance_that_answers_before_reading_a_large_body_is_relayed(caller: httpx.Client) -> None:
    """Given an instance that refuses a request before reading its body, when a 16 MiB body is streamed to it,
    then its answer comes back at once, and the next request on the instance is served normally."""
    chunk = b"x" * 65536

    refused = caller.post("/instance/execute/guarded/upload", content=iter([chunk] * 256))
    accepted = caller.post("/instance/execute/guarded", headers={"X-Token": "t0k3n"}, json={"name": "after"})

    assert refused.status_code == 401
    assert refused.json() == {"error": "bad token"}
    assert accepted.status_code == 200


def test_unknown_and_disabled_instances_are_404(caller: httpx.Client) -> None:
    unknown = caller.post("/instance/execute/nosuch", json={})
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "unknown_instance"
    assert "nosuch" in unknown.json()["detail"]

    disabled = caller.post("/instance/execute/off", json={})
    assert disabled.status_code == 404
    assert "disabled" in disabled.json()["detail"]


def test_other_paths_get_json_errors_too(platform: Platform) -> None:
    for method, path, status in [("GET", "/instance/execute/", 404), ("GET", "/nothing/here", 404), ("POST", "/", 405)]:
        response = platform.client.request(method, path)
        assert response.status_code == status
        assert set(response.json()) == {"error", "detail"}


def test_a_non_external_instance_needs_the_api_key(caller: httpx.Client) -> None:
    """Given instance.execute.external.private is false, when called without the API key, then 401; with it, 200,
    and the key itself is not passed on to the instance."""
    refused = caller.post("/instance/execute/private", json={"name": "x"})
    assert refused.status_code == 401
    assert set(refused.json()) == {"error", "detail"}
    assert "X-API-Key" in refused.json()["detail"]
    assert caller.post("/instance/execute/private", headers={"X-API-Key": "wrong"}, json={}).status_code == 401

    allowed = caller.get("/instance/execute/private/echo", headers={"X-API-Key": API_KEY})
    assert allowed.status_code == 200
    assert "x-api-key" not in {key.lower() for key in allowed.json()["headers"]}
    assert caller.post("/instance/execute/private", headers={"Authorization": API_KEY}, json={}).status_code == 200


def test_the_platforms_api_key_never_reaches_an_external_instance(platform: Platform, caller: httpx.Client) -> None:
    """Given an external instance that stores what it is sent, when a caller sends the platform's API key anyway
    (X-API-Key, or as Authorization), then the instance never sees it, so no incident or sample holds it; another
    X-API-Key value (the instance's own business) passes through."""
    echoed = caller.get("/instance/execute/echo/echo", headers={"X-API-Key": API_KEY}).json()["headers"]
    created = caller.post("/instance/execute/echo", headers={"Authorization": API_KEY}, json={"name": "key?"})
    other = caller.get("/instance/execute/echo/echo", headers={"X-API-Key": "the-instance-s-own"}).json()["headers"]

    assert "x-api-key" not in {key.lower() for key in echoed}
    assert created.status_code == 200
    assert API_KEY not in created.text
    incident = platform.client.get(f"/incidents/{created.json()[0]['id']}").json()
    assert API_KEY not in json.dumps(incident)
    assert {key.lower(): value for key, value in other.items()}["x-api-key"] == "the-instance-s-own"


def test_the_read_api_needs_the_api_key_but_health_does_not(caller: httpx.Client) -> None:
    assert caller.get("/incidents").status_code == 401
    assert caller.get("/instances").status_code == 401
    page = caller.get("/")
    assert page.status_code == 401
    assert page.headers["www-authenticate"].startswith("Basic")
    assert caller.get("/", auth=("anyone", API_KEY)).status_code == 200
    assert caller.get("/health").status_code == 200


def test_incident_filters_and_errors(platform: Platform, caller: httpx.Client) -> None:
    first = caller.post("/instance/execute/echo", json={"name": "first"}).json()[0]
    second = caller.post("/instance/execute/echo", json={"name": "second"}).json()[0]

    newest = platform.client.get("/incidents", params={"limit": 1}).json()
    assert [item["id"] for item in newest] == [second["id"]]
    since = platform.client.get("/incidents", params={"since": first["created"]}).json()
    assert {first["id"], second["id"]} <= {item["id"] for item in since}
    assert platform.client.get("/incidents", params={"since": "2999-01-01T00:00:00Z"}).json() == []

    bad_since = platform.client.get("/incidents", params={"since": "yesterday"})
    assert bad_since.status_code == 400
    assert bad_since.json()["error"] == "invalid_request"
    bad_limit = platform.client.get("/incidents", params={"limit": 0})
    assert bad_limit.status_code == 400
    assert "limit" in bad_limit.json()["detail"]
    missing = platform.client.get("/incidents/999999")
    assert missing.status_code == 404
    assert missing.json()["error"] == "unknown_incident"
    for incident_id in ("99999999999999999999", "1_0", f"0{first['id']}", f"+{first['id']}", "-1"):
        response = platform.client.get(f"/incidents/{incident_id}")
        assert (response.status_code, response.json()["error"]) == (404, "unknown_incident"), incident_id
    for since in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        response = platform.client.get("/incidents", params={"since": since})
        assert (response.status_code, response.json()["error"]) == (400, "invalid_request"), since
        assert "since" in response.json()["detail"]


def test_an_upstream_timeout_is_504(caller: httpx.Client) -> None:
    """Given server.upstream_timeout 1, when the instance takes 3 s to answer, then the caller gets 504."""
    response = caller.get("/instance/execute/echo/slow", params={"seconds": 3})

    assert response.status_code == 504
    assert response.json()["error"] == "upstream_timeout"


def test_the_page_escapes_what_senders_post(platform: Platform, caller: httpx.Client) -> None:
    caller.post("/instance/execute/echo", json={"name": "<script>alert(1)</script>"})

    page = platform.client.get("/").text

    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_instances_show_status_port_and_webhook_url(platform: Platform) -> None:
    instances = platform.instances()

    echo = instances["echo"]
    assert echo["status"] == "running"
    assert isinstance(echo["port"], int)
    assert echo["external"] is True
    assert echo["webhook_url"] == f"{platform.url}/instance/execute/echo"
    assert instances["private"]["external"] is False
    assert instances["off"]["status"] == "disabled"
    page = platform.client.get("/").text
    assert f"{platform.url}/instance/execute/echo" in page


def test_status_command_shows_the_running_instances(platform: Platform) -> None:
    result = run_cli("status", "--config", platform.config_path)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["INSTANCE", "STATUS", "PORT"]
    assert any(line.split()[:2] == ["echo", "running"] for line in lines)
    assert any(line.split()[:2] == ["off", "disabled"] for line in lines)


def test_a_non_ascii_api_key_is_accepted_as_utf_8_in_every_header() -> None:
    """Header values reach the app latin-1-decoded (ASGI); a UTF-8 key sent as its UTF-8 bytes must match."""
    key = "schlüssel-ключ"
    on_the_wire = key.encode("utf-8")
    basic = b"Basic " + base64.b64encode(f"anyone:{key}".encode())

    assert api_key_carriers([(b"x-api-key", on_the_wire)], key) == {b"x-api-key"}
    assert api_key_carriers([(b"authorization", on_the_wire)], key) == {b"authorization"}
    assert api_key_carriers([(b"authorization", basic)], key) == {b"authorization"}
    assert api_key_carriers([(b"x-api-key", on_the_wire[:-1])], key) == set()
    assert api_key_carriers([(b"x-api-key", b"plain")], "plain") == {b"x-api-key"}


def test_an_unexpected_api_failure_is_a_500_without_the_exception_text(caplog: pytest.LogCaptureFixture) -> None:
    class FailingStore(MemoryStore):
        def find_incidents(self, *_: Any, **__: Any) -> tuple[int, list[dict[str, Any]]]:
            raise RuntimeError("secret detail /home/me/.xsoar-local")

    class NoSupervisor:
        processes: dict[str, Any] = {}

    app = create_api(PlatformView([], NoSupervisor(), FailingStore(), "http://x"), ServerConfig())  # type: ignore[arg-type]
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/incidents")

    assert response.status_code == 500
    assert response.json()["error"] == "internal_error"
    assert "secret" not in response.text
    assert "RuntimeError" not in response.text
    assert "secret detail" in caplog.text
