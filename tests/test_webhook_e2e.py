"""End-to-end: the Generic Webhook integration in real subprocesses, run the platform's way, over real HTTP(S).

Every instance listens on a free 127.0.0.1 port and writes to a SQLite store file that these tests read from
their own process (see docs/script-env-contract.md and tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
import yaml

from tests.conftest import LOOPBACK, PACK, REPO, Instance, Launcher, wait_for

pytestmark = pytest.mark.timeout(90)

INTEGRATION_DIR = PACK / "Integrations" / "GenericWebhook"
API_MODULES_DIR = REPO / "Packs" / "ApiModules" / "Scripts"
SDK = REPO / ".venv-sdk" / "bin" / "demisto-sdk"
DEFAULT_INCIDENT_NAME = "Generic webhook triggered incident"
USER_AGENT = "generic-webhook-e2e/1.0"


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(headers={"User-Agent": USER_AGENT}, timeout=10) as http:
        yield http


def raw_json(incident: dict[str, Any]) -> dict[str, Any]:
    return json.loads(incident["rawJSON"])


def incidents_of(instance: Instance) -> list[dict[str, Any]]:
    """The instance's stored incidents, oldest first."""
    return list(reversed(instance.store.list_incidents(instance=instance.name, limit=None)))


def wait_health(
    instance: Instance, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        health = instance.health()
        return health if health is not None and predicate(health) else None

    return wait_for(probe, timeout=timeout, what=what, alive=instance.exit_reason)


# --- 1. plain HTTP, the store seen from the test process ---


def test_long_running_creates_incidents_over_http(launch: Launcher, client: httpx.Client) -> None:
    """
    Given: long-running-execution in a subprocess on a free loopback port, with the SQLite store and an
           Incident type param
    When: an object and then an array of two objects are POSTed over plain HTTP
    Then: both requests get 200 with the list of created incidents; the store (read from the test process) holds
          exactly those incidents with ids, instance name, name, type and rawJSON carrying the request headers;
          module health says `Listening on port N (HTTP).`; the access log line has the user agent
    """
    instance = launch({"incidentType": "Webhook Event"})
    instance.wait_serving(client)

    single = client.post(
        f"{instance.base_url}/",
        json={"name": "Object event", "type": "Phishing", "severity": 2, "source_ip": "10.0.0.1"},
        headers={"X-Source": "e2e"},
    )
    batch = client.post(
        f"{instance.base_url}/",
        json=[{"name": "Array event 1", "value": 1}, {"rawJson": {"alert": "disk full"}}],
    )

    assert single.status_code == 200, single.text
    assert batch.status_code == 200, batch.text
    answered = single.json() + batch.json()
    assert [len(single.json()), len(batch.json())] == [1, 2]
    stored = incidents_of(instance)
    assert stored == answered
    assert len({incident["id"] for incident in stored}) == 3
    assert all(incident["id"] and incident["instance"] == instance.name for incident in stored)
    assert [incident["name"] for incident in stored] == ["Object event", "Array event 1", DEFAULT_INCIDENT_NAME]
    assert [incident["type"] for incident in stored] == ["Phishing", "Webhook Event", "Webhook Event"]
    assert stored[0]["severity"] == 2

    first, second, third = (raw_json(incident) for incident in stored)
    assert first["source_ip"] == "10.0.0.1"
    assert first["headers"]["x-source"] == "e2e"
    assert first["headers"]["user-agent"] == USER_AGENT
    assert first["headers"]["content-type"] == "application/json"
    assert first["headers"]["host"] == f"{LOOPBACK}:{instance.port}"
    assert second["value"] == 1 and second["headers"]["user-agent"] == USER_AGENT
    assert third == {"alert": "disk full", "headers": third["headers"]}

    health = instance.health()
    assert health is not None
    assert (health["message"], health["is_error"]) == (f"Listening on port {instance.port} (HTTP).", False)
    wait_for(
        lambda: any('"POST / HTTP/1.1" 200' in line and USER_AGENT in line for line in instance.stderr().splitlines()),
        timeout=5,
        what="the access log line with the user agent",
    )


# --- 2. auth over real HTTP ---


def test_basic_auth_and_header_token_over_http(launch: Launcher, client: httpx.Client) -> None:
    """
    Given: one instance with Basic auth (non-ASCII password) and one with a `_header:X-Api-Token` token
    When: requests without, with wrong and with the right credentials are POSTed
    Then: the wrong ones get 401 `Authorization failed.` (with a Basic `WWW-Authenticate` challenge in Basic mode
          only) and create nothing; the right ones get 200; neither the Authorization header nor the token
          header nor either secret reaches the stored rawJSON or the process's logs
    """
    password = "pässwörd-e2e"
    token = "t0ken-e2e-8f2c1d"
    basic = launch({"credentials": {"identifier": "admin", "password": password}}, name="basic")
    header = launch({"credentials": {"identifier": "_header:X-Api-Token", "password": token}}, name="header")
    basic.wait_serving(client)
    header.wait_serving(client)
    event = {"name": "Authenticated event"}

    basic_missing = client.post(basic.base_url, json=event)
    basic_wrong = client.post(basic.base_url, json=event, auth=("admin", "wrong"))
    basic_ok = client.post(basic.base_url, json=event, auth=("admin", password))
    header_missing = client.post(header.base_url, json=event)
    header_wrong = client.post(header.base_url, json=event, headers={"X-Api-Token": "nope"})
    header_basic = client.post(header.base_url, json=event, auth=("_header:X-Api-Token", token))
    header_ok = client.post(header.base_url, json=event, headers={"X-Api-Token": token})

    for refused in (basic_missing, basic_wrong):
        assert refused.status_code == 401
        assert refused.json()["detail"] == "Authorization failed."
        assert refused.headers["WWW-Authenticate"].startswith("Basic ")
    for refused in (header_missing, header_wrong, header_basic):
        assert refused.status_code == 401
        assert refused.json()["detail"] == "Authorization failed."
        assert "WWW-Authenticate" not in refused.headers
    assert basic_ok.status_code == 200, basic_ok.text
    assert header_ok.status_code == 200, header_ok.text

    (basic_incident,) = incidents_of(basic)
    (header_incident,) = incidents_of(header)
    assert basic_ok.json() == [basic_incident]
    assert header_ok.json() == [header_incident]
    assert "authorization" not in raw_json(basic_incident)["headers"]
    assert "x-api-token" not in raw_json(header_incident)["headers"]
    assert raw_json(header_incident)["headers"]["user-agent"] == USER_AGENT
    for instance, secret in ((basic, password), (header, token)):
        stored_text = json.dumps(incidents_of(instance), ensure_ascii=False)
        assert secret not in stored_text
        assert secret not in instance.stderr()


# --- 3. samples and fetch-incidents ---


def test_store_samples_then_fetch_incidents_returns_them(launch: Launcher, client: httpx.Client) -> None:
    """
    Given: an instance with store_samples on and a `_header:` token
    When: events A, B and A again are POSTed, then fetch-incidents runs in a second subprocess on the same store
    Then: integration context key `sample_events` holds (within a bounded wait: context writes are batched) a
          JSON list of the two distinct events, A moved to the newest, without the token header; fetch-incidents
          returns exactly those samples
    """
    token = "sample-token-3b7e"
    instance = launch(
        {"store_samples": True, "credentials": {"identifier": "_header:X-Token", "password": token}}, name="samples"
    )
    instance.wait_serving(client)
    for event in ({"name": "A", "n": 1}, {"name": "B", "n": 2}, {"name": "A", "n": 1}):
        answer = client.post(instance.base_url, json=event, headers={"X-Token": token})
        assert answer.status_code == 200, answer.text

    def stored_samples() -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        context, _ = instance.store.get_integration_context(instance.name)
        encoded = context.get("sample_events")
        if not encoded:
            return None
        assert isinstance(encoded, str)  # the original's shape: a JSON-encoded list of incidents
        samples = json.loads(encoded)
        return (context, samples) if [sample["name"] for sample in samples] == ["B", "A"] else None

    # Context writes are batched (at most one per interval), so the last samples land shortly after the answer.
    context, samples = wait_for(
        stored_samples, timeout=10, what="sample_events [B, A] in the integration context", alive=instance.exit_reason
    )
    assert [raw_json(sample)["n"] for sample in samples] == [2, 1]
    assert all("x-token" not in raw_json(sample)["headers"] for sample in samples)
    assert token not in context["sample_events"]
    assert len(incidents_of(instance)) == 3

    fetch = launch(command="fetch-incidents", name="samples", env={"DEMISTO_IS_FETCH_SAMPLES": "true"})
    assert fetch.wait_exit() == 0, fetch.stderr()
    assert fetch.results() == [{"kind": "incidents", "value": samples}]


# --- 4. HTTPS ---


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert(LOOPBACK, "localhost")


def tls_params(cert: trustme.LeafCert) -> dict[str, str]:
    """The certificate and key params as PEM text, as pasted into the instance settings."""
    return {
        "certificate": "".join(blob.bytes().decode() for blob in cert.cert_chain_pems),
        "key": cert.private_key_pem.bytes().decode(),
    }


@pytest.fixture
def tls_client(ca: trustme.CA) -> Iterator[httpx.Client]:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with httpx.Client(verify=context, headers={"User-Agent": USER_AGENT}, timeout=10) as http:
        yield http


def key_material_files(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.suffix in (".pem", ".key")]


def test_https_with_trustme_certificate(
    launch: Launcher, server_cert: trustme.LeafCert, tls_client: httpx.Client, client: httpx.Client
) -> None:
    """
    Given: an instance with a trustme server certificate and key as PEM text, and its own empty TMPDIR
    When: it is serving, and events are POSTed over HTTPS with the CA trusted, and once over plain HTTP
    Then: HTTPS works and stores the incident; module health says HTTPS; no .pem/.key file is left in the
          process's temp dir; plain HTTP to the TLS port fails at once with a transport error (no hang, no
          response) and the instance keeps serving HTTPS
    """
    instance = launch(tls_params(server_cert), name="tls")
    instance.wait_serving(tls_client, scheme="https")
    https_url = f"https://{LOOPBACK}:{instance.port}/"

    answer = tls_client.post(https_url, json={"name": "Over TLS"})

    assert answer.status_code == 200, answer.text
    assert [incident["name"] for incident in incidents_of(instance)] == ["Over TLS"]
    assert answer.json() == incidents_of(instance)
    health = instance.health()
    assert health is not None and not health["is_error"]
    assert health["message"] == f"Listening on port {instance.port} (HTTPS)."
    assert key_material_files(instance.tmpdir) == []

    with pytest.raises(httpx.TransportError) as plain_error:
        client.post(f"http://{LOOPBACK}:{instance.port}/", json={"name": "Plain to TLS"}, timeout=5)
    assert not isinstance(plain_error.value, httpx.TimeoutException), plain_error.value
    again = tls_client.post(https_url, json={"name": "Still serving"})
    assert again.status_code == 200, again.text
    assert [incident["name"] for incident in incidents_of(instance)] == ["Over TLS", "Still serving"]


def _tls11_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 refuses TLS 1.1 above security level 0
    ca.configure_trust(context)
    return context


def _tls11_handshake(context: ssl.SSLContext, port: int) -> None:
    with (
        socket.create_connection((LOOPBACK, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=LOOPBACK) as tls,
    ):
        assert tls.version() == "TLSv1.1"


def _local_openssl_speaks_tls11(ca: trustme.CA, cert: trustme.LeafCert) -> str:
    """'' when a TLS 1.1 handshake works between two local sockets that both allow it, else why not."""
    if not ssl.HAS_TLSv1_1:
        return f"{ssl.OPENSSL_VERSION} was built without TLS 1.1"
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        server_context.minimum_version = ssl.TLSVersion.TLSv1_1
        server_context.set_ciphers("DEFAULT:@SECLEVEL=0")
        cert.configure_cert(server_context)
        client_context = _tls11_context(ca)
    except (ValueError, ssl.SSLError) as error:
        return f"{ssl.OPENSSL_VERSION} cannot be configured for TLS 1.1: {error}"
    with socket.create_server((LOOPBACK, 0)) as listener:
        listener.settimeout(5)

        def accept_one() -> None:
            try:
                connection, _ = listener.accept()
                with server_context.wrap_socket(connection, server_side=True):
                    pass
            except OSError:
                pass

        server = threading.Thread(target=accept_one, daemon=True)
        server.start()
        try:
            _tls11_handshake(client_context, listener.getsockname()[1])
        except (OSError, AssertionError) as error:
            return f"{ssl.OPENSSL_VERSION} does not complete a TLS 1.1 handshake even when both ends allow it: {error}"
        finally:
            server.join(5)
    return ""


def test_https_refuses_tls_1_1_client(
    launch: Launcher, ca: trustme.CA, server_cert: trustme.LeafCert, tls_client: httpx.Client
) -> None:
    """
    Given: an HTTPS instance, and a local OpenSSL able to speak TLS 1.1 at all (checked on a local socket pair)
    When: a client that only speaks TLS 1.1 connects
    Then: the handshake is refused, and TLS 1.2+ clients are still served
    """
    why_not = _local_openssl_speaks_tls11(ca, server_cert)
    if why_not:
        pytest.skip(f"cannot test TLS 1.1 refusal here: {why_not}")
    instance = launch(tls_params(server_cert), name="tls11")
    instance.wait_serving(tls_client, scheme="https")

    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        _tls11_handshake(_tls11_context(ca), instance.port)
    assert instance.wait_serving(tls_client, scheme="https").status_code == 405


# --- 5. port in use, restart loop ---


def test_port_in_use_reports_health_and_recovers(launch: Launcher, client: httpx.Client) -> None:
    """
    Given: a socket of the test already listening on the instance's port
    When: long-running-execution starts, and later the blocking socket is closed
    Then: module health becomes an error naming `Listen port N is already in use` while the process keeps
          running (restart loop); after the port is freed the instance serves within the restart delay and
          health says `Listening on port N (HTTP).`
    """
    blocker = socket.create_server((LOOPBACK, 0))
    port = blocker.getsockname()[1]
    try:
        instance = launch({"longRunningPort": str(port)}, name="busy")
        health = wait_health(instance, lambda h: h["is_error"], timeout=15, what="the port-in-use health error")
        assert f"Listen port {port} is already in use" in health["message"]
        assert instance.process.poll() is None, instance.stderr()
    finally:
        blocker.close()

    instance.wait_serving(client, timeout=15)
    health = wait_health(instance, lambda h: not h["is_error"], timeout=5, what="healthy module health")
    assert health["message"] == f"Listening on port {port} (HTTP)."
    answer = client.post(instance.base_url, json={"name": "After restart"})
    assert answer.status_code == 200, answer.text
    assert [incident["name"] for incident in incidents_of(instance)] == ["After restart"]


# --- 6. the unified script, run the platform's way ---

IMPORT_LINES = re.compile(r"^\s*(import demistomock\b|from CommonServerPython import \*)", re.MULTILINE)


def unified_yaml(out_dir: Path) -> Path:
    """The unified integration YAML: build/unified's when `make pack` made it after the last source change, else a
    fresh `demisto-sdk prepare-content`."""
    built = sorted((REPO / "build" / "unified").glob("integration-*.yml"))
    sources = [*INTEGRATION_DIR.iterdir(), *API_MODULES_DIR.glob("*/*.py")]
    newest_source = max(path.stat().st_mtime for path in sources if path.is_file())
    if built and built[0].stat().st_mtime >= newest_source:
        return Path(shutil.copy(built[0], out_dir / built[0].name))
    if not SDK.exists():
        pytest.skip(f"{SDK.relative_to(REPO)} is missing (run `make test` to create .venv-sdk); no unified script")
    completed = subprocess.run(
        [str(SDK), "prepare-content", "-i", str(INTEGRATION_DIR), "-o", str(out_dir)],
        cwd=REPO,
        env={**os.environ, "DEMISTO_SDK_IGNORE_CONTENT_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    produced = sorted(out_dir.glob("*.yml"))
    assert completed.returncode == 0 and produced, f"prepare-content failed:\n{completed.stdout}\n{completed.stderr}"
    return produced[0]


def test_unified_script_runs_the_platform_way(launch: Launcher, client: httpx.Client, tmp_path: Path) -> None:
    """
    Given: the unified YAML of the integration (prepare-content), alone in a pack folder
    When: its `script.script` is checked, then run by the platform runner as long-running-execution and an event
          is POSTed
    Then: the `import demistomock` and `from CommonServerPython import *` lines are gone (the runner injects those
          names as globals), the script serves, and the store holds the incident and the HTTP health message
    """
    integrations = tmp_path / "unified" / "GenericWebhook" / "Integrations"
    integrations.mkdir(parents=True)
    unified = unified_yaml(integrations)
    script = yaml.safe_load(unified.read_text())["script"]["script"]
    assert "def main()" in script and "register_module_line" in script
    assert IMPORT_LINES.findall(script) == []
    assert IMPORT_LINES.findall((INTEGRATION_DIR / "GenericWebhook.py").read_text())  # the split file has them
    assert "### GENERATED CODE ###: from ListenerApiModule import *" in script  # and the ApiModule is in place
    assert not re.search(r"^\s*from \w+ApiModule import", script, re.MULTILINE)

    instance = launch(pack=integrations.parent, name="unified")
    instance.wait_serving(client)
    answer = client.post(instance.base_url, json={"name": "From the unified script", "kind": "unified"})

    assert answer.status_code == 200, answer.text
    (stored,) = incidents_of(instance)
    assert answer.json() == [stored]
    assert stored["name"] == "From the unified script"
    assert raw_json(stored)["kind"] == "unified"
    assert instance.health()["message"] == f"Listening on port {instance.port} (HTTP)."


# --- 7. test-module ---


def test_test_module_ok_for_a_good_config(launch: Launcher, server_cert: trustme.LeafCert) -> None:
    """
    Given: a complete config (port, Basic credentials, certificate and key)
    When: test-module runs in a subprocess
    Then: it returns `ok` and exits 0
    """
    params = {"credentials": {"identifier": "admin", "password": "secret"}, **tls_params(server_cert)}
    instance = launch(params, command="test-module", name="good")

    assert instance.wait_exit() == 0, instance.stderr()
    assert instance.results() == [{"kind": "results", "value": "ok"}]


@pytest.mark.parametrize(
    ("port", "expected"),
    [
        ("70000", "Listen Port 70000 is out of range"),
        ("http", "Listen Port `http` is not an integer"),
        ("", "Listen Port is required"),
    ],
)
def test_test_module_names_a_bad_port(launch: Launcher, port: str, expected: str) -> None:
    """
    Given: a config whose Listen Port is out of range, not a number, or missing
    When: test-module runs in a subprocess
    Then: it returns one error entry whose text names the port problem, and exits 0 (as the platform expects)
    """
    instance = launch({"longRunningPort": port}, command="test-module", name="bad")

    assert instance.wait_exit() == 0, instance.stderr()
    (entry,) = instance.results()
    assert entry["kind"] == "results"
    assert entry["value"]["Type"] == 4  # entryTypes["error"]
    assert expected in entry["value"]["Contents"]
    assert "test-module" in entry["value"]["Contents"]
