"""The gateway against DNS rebinding and ambiguous credentials, through real HTTP to a running `xsoar-local up`.

A web page can point a name of its own at 127.0.0.1 and read, as its own origin, what the browser fetches there:
the platform's page and read API answer only to the allowed Host names; the reroute answers to any. The reroute's
404 names no instance the caller may not use, and a request with two of a header the API key is taken from is
refused alike by the read API, the page and the reroute.
"""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import LOOPBACK, Platform, run_cli, start_platform, write_config

from xsoar_local.cli import _exposure_warnings
from xsoar_local.config import ServerConfig
from xsoar_local.hosts import AllowedHosts

pytestmark = pytest.mark.timeout(180)

API_KEY = "test-api-key-5678"
ECHO = {"name": "echo", "integration": "Echo Webhook"}
PRIVATE = {"name": "private", "integration": "Echo Webhook"}
EXTERNAL_BUT_PRIVATE = {"instance.execute.external": "true", "instance.execute.external.private": "false"}
REBOUND = ["attacker.example", "attacker.example:{port}", "ATTACKER.example.", "localhost.attacker.example", "0.0.0.0"]
LOOPBACK_HOSTS = ["localhost", "localhost:{port}", "127.0.0.1", "127.0.0.1:{port}", "[::1]:{port}", "LocalHost."]
OWN_PATHS = ["/incidents", "/instances", "/", "/health", "/nothing/here"]


@pytest.fixture(scope="module")
def open_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """As the default config has it: 127.0.0.1, no API key, no allowed_hosts."""
    config = write_config(tmp_path_factory.mktemp("open"), [ECHO, PRIVATE], config=EXTERNAL_BUT_PRIVATE)
    running = start_platform(config)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def keyed_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    config = write_config(
        tmp_path_factory.mktemp("keyed"), [ECHO, PRIVATE], config=EXTERNAL_BUT_PRIVATE, api_key=API_KEY
    )
    running = start_platform(config)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def marker(open_platform: Platform) -> dict[str, Any]:
    """An incident a sender created, the thing a rebinding page is after."""
    response = open_platform.client.post("/instance/execute/echo", json={"name": "secret-incident-7f3a"})
    assert response.status_code == 200, response.text
    return dict(response.json()[0])


def port_of(platform: Platform) -> int:
    return int(platform.url.rsplit(":", 1)[1])


def get(platform: Platform, path: str, host: str, **kwargs: Any) -> httpx.Response:
    return platform.client.get(path, headers={"Host": host.format(port=port_of(platform))}, **kwargs)


def raw_request(port: int, head: bytes) -> bytes:
    """One request as written, over a fresh loopback connection; the whole answer (the server closes it)."""
    with socket.create_connection((LOOPBACK, port), timeout=30) as sock:
        sock.sendall(head)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("host", REBOUND)
def test_a_rebound_name_reads_neither_the_incidents_nor_the_page(
    open_platform: Platform, marker: dict[str, Any], host: str
) -> None:
    """Given the default config (no API key), when a request comes with a Host the platform does not go by (what a
    browser sends after DNS rebinding), then the page, the read API and /health refuse it: 421 host_not_allowed,
    naming the Host and the fix, and nothing of the incidents."""
    paths = [*OWN_PATHS, f"/incidents/{marker['id']}"]
    for path in paths:
        response = get(open_platform, path, host)

        assert response.status_code == 421, (path, response.text)
        assert response.json()["error"] == "host_not_allowed"
        detail = response.json()["detail"]
        assert repr(host.format(port=port_of(open_platform))) in detail
        assert "fix:" in detail and "server.allowed_hosts" in detail
        assert "secret-incident-7f3a" not in response.text


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_the_loopback_names_still_read_the_incidents_and_the_page(
    open_platform: Platform, marker: dict[str, Any], host: str
) -> None:
    incidents = get(open_platform, "/incidents", host)
    page = get(open_platform, "/", host)
    health = get(open_platform, "/health", host)

    assert incidents.status_code == 200, incidents.text
    assert marker["id"] in [item["id"] for item in incidents.json()]
    assert page.status_code == 200 and "secret-incident-7f3a" in page.text
    assert health.status_code == 200


def test_any_port_in_the_host_is_accepted(open_platform: Platform) -> None:
    """A port forward or tunnel shows the user's port, not the served one (`ssh -L 9000:127.0.0.1:<port>`)."""
    assert get(open_platform, "/incidents", "localhost:9000").status_code == 200


def test_the_reroute_answers_to_any_host(open_platform: Platform) -> None:
    """Senders reach the reroute through tunnels and proxies under public names: no Host is refused there."""
    created = open_platform.client.post(
        "/instance/execute/echo", headers={"Host": "hooks.tunnel.example"}, json={"name": "via tunnel"}
    )
    echoed = get(open_platform, "/instance/execute/echo/echo", "attacker.example")

    assert created.status_code == 200, created.text
    assert created.json()[0]["name"] == "via tunnel"
    assert echoed.status_code == 200
    assert {key.lower(): value for key, value in echoed.json()["headers"].items()}["x-forwarded-host"] == (
        "attacker.example"
    )


def test_two_host_headers_or_a_malformed_one_are_400(open_platform: Platform) -> None:
    port = port_of(open_platform)
    for hosts in ([b"127.0.0.1", b"attacker.example"], [b"localhost:x"]):
        head = b"GET /incidents HTTP/1.1\r\n" + b"".join(b"Host: " + host + b"\r\n" for host in hosts)
        answer = raw_request(port, head + b"Connection: close\r\n\r\n")

        assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
        assert b"secret-incident" not in answer


def test_server_host_and_allowed_hosts_are_answered_and_the_cli_still_works(tmp_path: Path) -> None:
    """Given server.host 127.0.0.2 (not one of the loopback names) and allowed_hosts [xsoar.test], then those names
    are answered (any case, trailing dot, any port), others still refused, and `status` (which asks the gateway
    at server.host) works."""
    config = write_config(tmp_path, [ECHO], host="127.0.0.2", allowed_hosts=["xsoar.test"])
    platform = start_platform(config)
    port = port_of(platform)
    assert platform.url == f"http://127.0.0.2:{port}"
    try:
        with httpx.Client(base_url=platform.url, trust_env=False, timeout=30) as client:
            hosts = (f"127.0.0.2:{port}", "XSOAR.test.", "xsoar.test:1", "other.test")
            *allowed, refused = [client.get("/instances", headers={"Host": host}) for host in hosts]
        status = run_cli("status", "--config", config)
    finally:
        platform.stop()

    assert [item.status_code for item in allowed] == [200, 200, 200]
    assert refused.status_code == 421
    assert status.returncode == 0, status.stderr
    assert any(line.split()[:2] == ["echo", "running"] for line in status.stdout.splitlines())


def test_a_wildcard_server_host_still_needs_the_names_listed() -> None:
    """server.host 0.0.0.0 means remote access, but its names are not known: only the loopback names and the listed
    ones are answered (the CLI and the banner's page URL use 127.0.0.1 then)."""
    wildcard = ServerConfig(host="0.0.0.0")
    listed = AllowedHosts.of("0.0.0.0", ("xsoar.lan",))

    assert wildcard.base_url(8080) == "http://127.0.0.1:8080"
    assert AllowedHosts.of("0.0.0.0", ()).refusal([(b"host", b"127.0.0.1:8080")]) is None
    assert AllowedHosts.of("0.0.0.0", ()).refusal([(b"host", b"0.0.0.0:8080")]) is not None
    assert AllowedHosts.of("::", ()).refusal([(b"host", b"[::]:8080")]) is not None
    assert AllowedHosts.of("0.0.0.0", ()).refusal([(b"host", b"192.168.1.5:8080")]) is not None
    assert listed.refusal([(b"host", b"xsoar.lan:8080")]) is None
    assert AllowedHosts.of("0.0.0.0", ("*",)).refusal([(b"host", b"anything.example")]) is None


@pytest.mark.parametrize(
    ("allowed_hosts", "expected"),
    [
        ("xsoar.lan", "server.allowed_hosts must be a list of host names (fix: allowed_hosts: [xsoar.lan])"),
        (["xsoar.lan:8080"], "'xsoar.lan:8080' is not a host name or IP address (fix: write xsoar.lan alone"),
        (["http://xsoar.lan/"], "(fix: write xsoar.lan alone; the port and scheme are not compared)"),
        (["*.example.com"], 'fix: list each name; "*" alone allows any'),
        (["a b"], "'a b' is not a host name or IP address (fix: e.g. xsoar.lan or 192.168.1.10)"),
        ([8080], "8080 is not a host name or IP address (fix: write the name as text"),
    ],
)
def test_a_wrong_allowed_hosts_is_refused_with_the_fix(tmp_path: Path, allowed_hosts: Any, expected: str) -> None:
    config = write_config(tmp_path, [], allowed_hosts=allowed_hosts)

    result = run_cli("up", "--config", config, timeout=30)

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "server.allowed_hosts" in line and expected in line


def test_the_404_names_no_instance_a_caller_may_not_use(open_platform: Platform, keyed_platform: Platform) -> None:
    """The unknown-instance 404 of the reroute never names a non-external instance; to a caller without the API
    key it names none (the reroute is what tunnels expose), with the key the external ones."""
    anonymous = [
        httpx.post(f"{platform.url}/instance/execute/nosuch", json={}, trust_env=False)
        for platform in (open_platform, keyed_platform)
    ]
    keyed = keyed_platform.client.post("/instance/execute/nosuch", json={})

    for response in [*anonymous, keyed]:
        assert (response.status_code, response.json()["error"]) == (404, "unknown_instance")
        assert "'nosuch'" in response.json()["detail"]
        assert "private" not in response.json()["detail"]
    assert all("echo" not in response.json()["detail"] for response in anonymous)
    assert "status" in anonymous[0].json()["detail"]
    assert "(external instances: echo)" in keyed.json()["detail"]


DUPLICATES = [
    [("X-API-Key", API_KEY), ("X-API-Key", "wrong")],
    [("X-API-Key", "wrong"), ("X-API-Key", API_KEY)],
    [("Authorization", API_KEY), ("Authorization", "Basic b3RoZXI6Y3JlZHM=")],
    [("Authorization", "Basic b3RoZXI6Y3JlZHM="), ("Authorization", API_KEY)],
]


@pytest.mark.parametrize("headers", DUPLICATES)
@pytest.mark.parametrize("path", ["/incidents", "/", "/instance/execute/private/echo", "/instance/execute/echo/echo"])
def test_two_api_key_headers_are_refused_alike_everywhere(
    keyed_platform: Platform, path: str, headers: list[tuple[str, str]]
) -> None:
    """Given server.api_key, when a request has X-API-Key (or Authorization) twice, the key in one of them, then
    the read API, the page and the reroute (non-external or external instance) all refuse it with the same 400:
    before, the read API believed the first and the reroute the last, and a key could reach an instance."""
    with httpx.Client(base_url=keyed_platform.url, trust_env=False, timeout=30) as client:
        response = client.get(path, headers=headers)

    assert response.status_code == 400, response.text
    assert response.json()["error"] == "duplicate_api_key_header"
    assert f"more than one {headers[0][0]} header" in response.json()["detail"]
    assert API_KEY not in response.text


@pytest.mark.parametrize("path", ["/incidents", "/", "/instance/execute/private/echo"])
def test_one_api_key_header_still_works_beside_the_instances_own(keyed_platform: Platform, path: str) -> None:
    instance_basic = "Basic " + base64.b64encode(b"sender:instance-password").decode()
    with httpx.Client(base_url=keyed_platform.url, trust_env=False, timeout=30) as client:
        alone = client.get(path, headers={"X-API-Key": API_KEY})
        beside = client.get(path, headers={"X-API-Key": API_KEY, "Authorization": instance_basic})
        wrong = client.get(path, headers={"X-API-Key": "wrong"})

    assert (alone.status_code, beside.status_code, wrong.status_code) == (200, 200, 401)
    if path.startswith("/instance/"):
        forwarded = {key.lower(): value for key, value in beside.json()["headers"].items()}
        assert forwarded["authorization"] == instance_basic
        assert "x-api-key" not in forwarded


def test_the_key_in_two_headers_reaches_the_instance_in_neither(keyed_platform: Platform) -> None:
    """Given the key both in X-API-Key and as the Basic password, then the instance gets neither header."""
    basic = "Basic " + base64.b64encode(f"anyone:{API_KEY}".encode()).decode()
    with httpx.Client(base_url=keyed_platform.url, trust_env=False, timeout=30) as client:
        response = client.get("/instance/execute/echo/echo", headers={"X-API-Key": API_KEY, "Authorization": basic})

    assert response.status_code == 200
    forwarded = {key.lower() for key in response.json()["headers"]}
    assert not forwarded & {"x-api-key", "authorization"}
    assert base64.b64encode(f"anyone:{API_KEY}".encode()).decode() not in response.text


def test_up_warns_when_the_page_is_open_to_any_host_without_a_key_or_a_wildcard_lists_no_name() -> None:
    (any_host,) = _exposure_warnings(ServerConfig(allowed_hosts=("*",)), loopback=True)
    wildcard = _exposure_warnings(ServerConfig(host="0.0.0.0", api_key="k"), loopback=False)
    listed = _exposure_warnings(ServerConfig(host="0.0.0.0", api_key="k", allowed_hosts=("xsoar.lan",)), False)

    assert "DNS rebinding" in any_host and "fix:" in any_host
    assert len(wildcard) == 1 and "server.allowed_hosts" in wildcard[0]
    assert listed == []
    assert _exposure_warnings(ServerConfig(allowed_hosts=("*",), api_key="k"), loopback=True) == []
