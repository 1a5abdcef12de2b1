import asyncio
import base64
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import demistomock as demisto
import GenericWebhook
import httpx
import pytest
from fastapi.testclient import TestClient
from GenericWebhook import (
    BAD_JSON_MESSAGE,
    DEFAULT_INCIDENT_NAME,
    Metrics,
    RequestMonitor,
    ConfigError,
    SampleBuffer,
    WebhookConfig,
    fetch_samples,
    make_webhook_app,
    run_long_running,
)

TEST_DATA = Path(__file__).parent / "test_data"
PORT_PARAMS = {"longRunningPort": "8000"}


def load(name: str) -> Any:
    return json.loads((TEST_DATA / name).read_text())


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def executor():
    pool = ThreadPoolExecutor(max_workers=1)
    yield pool
    pool.shutdown(wait=True)


@pytest.fixture
def make_client(executor):
    def _make(**params: Any) -> TestClient:
        config = WebhookConfig.from_params({**PORT_PARAMS, **params})
        return TestClient(make_webhook_app(config, executor))

    return _make


def raw_json_of(incident: dict) -> dict:
    return json.loads(incident["rawJSON"])


# ---------------------------------------------------------------- incident creation


def test_single_object_creates_one_incident(make_client, mocker):
    """
    Given an instance with no auth and the incident type param set
    When a JSON object is POSTed to /
    Then one incident is created with the item's name, type and occurred, the raw event with request headers,
         and the response is the JSON list createIncidents returned.
    """
    create = mocker.spy(demisto, "createIncidents")
    event = load("single_event.json")
    response = make_client(incidentType="Default").post("/", json=event, headers={"X-Source": "siem"})

    assert response.status_code == 200
    assert create.call_count == 1
    sent = create.call_args.args[0]
    assert len(sent) == 1
    assert sent[0]["name"] == "Suspicious login"
    assert sent[0]["type"] == "Access"
    assert sent[0]["occurred"] == "2024-05-01T12:00:00Z"
    raw = raw_json_of(sent[0])
    assert raw["user"] == "alice"
    assert raw["headers"]["x-source"] == "siem"
    assert response.json() == create.spy_return
    assert response.json()[0]["id"]


def test_array_creates_one_incident_per_item_in_one_call(make_client, mocker):
    """
    Given an array of three event objects
    When it is POSTed
    Then three incidents are created in one createIncidents call; defaults apply per item.
    """
    create = mocker.spy(demisto, "createIncidents")
    response = make_client(incidentType="Default").post("/", json=load("array_events.json"))

    assert response.status_code == 200
    assert create.call_count == 1
    sent = create.call_args.args[0]
    assert [incident["name"] for incident in sent] == ["Malware found", "Port scan", DEFAULT_INCIDENT_NAME]
    assert [incident["type"] for incident in sent] == ["Default", "Network", "Default"]
    assert raw_json_of(sent[2])["alert_id"] == "A-3"
    assert "rawJson" not in raw_json_of(sent[2])
    assert len(response.json()) == 3


def test_empty_array_creates_nothing(make_client, mocker):
    """
    Given an empty JSON array
    When it is POSTed
    Then the answer is 200 with an empty list and createIncidents is not called.
    """
    create = mocker.spy(demisto, "createIncidents")
    response = make_client().post("/", json=[])
    assert response.status_code == 200
    assert response.json() == []
    assert create.call_count == 0


def test_all_incident_fields_are_kept(make_client, mocker):
    """
    Given an event carrying severity, labels, details, customFields and dbotMirrorId
    When it is POSTed
    Then the incident carries them (severity words mapped, epoch occurred converted, values as strings).
    """
    create = mocker.spy(demisto, "createIncidents")
    response = make_client().post("/", json=load("all_fields_event.json"))

    assert response.status_code == 200
    incident = create.call_args.args[0][0]
    assert incident["severity"] == 3
    assert incident["occurred"] == "2024-05-01T12:00:00Z"
    assert incident["labels"] == [
        {"type": "reporter", "value": "bob@example.com"},
        {"type": "count", "value": "3"},
    ]
    assert incident["details"] == "User reported a phishing mail"
    assert incident["customFields"] == {"reportedemailfrom": "evil@example.net"}
    assert incident["dbotMirrorId"] == "4242"
    assert raw_json_of(incident)["mail_id"] == "m-1"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 0), (0.5, 0.5), (4, 4), ("2", 2), ("Critical", 4), ("info", 0.5), ("unknown", 0)],
)
def test_severity_values(make_client, mocker, value, expected):
    """
    Given an event with a severity number, numeric string or word
    When it is POSTed
    Then the incident severity is the platform's number.
    """
    create = mocker.spy(demisto, "createIncidents")
    assert make_client().post("/", json={"severity": value}).status_code == 200
    assert create.call_args.args[0][0]["severity"] == expected


def test_raw_json_string_and_raw_json_snake_case(make_client, mocker):
    """
    Given events whose rawJson is a JSON string, or which use raw_json
    When they are POSTed
    Then the decoded object is the incident's rawJSON.
    """
    create = mocker.spy(demisto, "createIncidents")
    body = [load("raw_json_string_event.json"), {"name": "snake", "raw_json": {"k": "v"}}]
    assert make_client().post("/", json=body).status_code == 200
    first, second = create.call_args.args[0]
    assert raw_json_of(first)["score"] == 7
    assert raw_json_of(second)["k"] == "v"


def test_payload_headers_key_is_never_overwritten(make_client, mocker):
    """
    Given an event that has its own `headers` key
    When it is POSTed
    Then its `headers` stay as sent and the request headers go under `request_headers`.
    """
    create = mocker.spy(demisto, "createIncidents")
    make_client().post("/", json=load("own_headers_event.json"), headers={"User-Agent": "mailer/1.0"})
    raw = raw_json_of(create.call_args.args[0][0])
    assert raw["headers"] == {"From": "a@example.com", "Subject": "hi"}
    assert raw["request_headers"]["user-agent"] == "mailer/1.0"


def test_post_on_sub_path_and_405_for_other_methods(make_client):
    """
    Given the instance behind the reroute, which forwards sub-paths
    When events are POSTed to a sub-path with a query string, and a GET is sent
    Then the POST creates an incident and the GET gets 405 with a JSON error.
    """
    client = make_client()
    assert client.post("/alerts/siem?source=x", json={"name": "sub"}).status_code == 200
    response = client.get("/")
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"
    assert client.put("/alerts", json={}).status_code == 405


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("body", "error", "detail_part"),
    [
        (b"", "empty_body", "empty"),
        (b"   \n", "empty_body", "empty"),
        (b"{not json", "invalid_json", BAD_JSON_MESSAGE),
        (b'{"a": 1', "invalid_json", BAD_JSON_MESSAGE),
        (b"42", "invalid_body", "a number"),
        (b'"text"', "invalid_body", "a string"),
        (b"null", "invalid_body", "null"),
        (b"true", "invalid_body", "a boolean"),
        (b'[{"a": 1}, 3]', "invalid_item", "Item 1"),
        (b'[["nested"]]', "invalid_item", "Item 0"),
        (b'{"rawJson": [1, 2]}', "invalid_field", "rawJson must be a JSON object"),
        (b'{"rawJson": "not json"}', "invalid_field", BAD_JSON_MESSAGE),
        (b'{"raw_json": 5}', "invalid_field", "raw_json must be a JSON object"),
        (b'\xff\xfe{"a": 1}', "invalid_encoding", "UTF-8"),
        (b'{"name": "caf\xe9"}', "invalid_encoding", "UTF-8"),
        (b'{"severity": "urgent"}', "invalid_field", "severity"),
        (b'{"severity": 7}', "invalid_field", "severity"),
        (b'{"labels": "x"}', "invalid_field", "labels"),
        (b'{"labels": [1]}', "invalid_field", "labels[0]"),
        (b'{"customFields": []}', "invalid_field", "customFields"),
        (b'{"occurred": "yesterday"}', "invalid_field", "occurred"),
        (b'{"occurred": true}', "invalid_field", "occurred"),
        (b'{"occurred": 1e300}', "invalid_field", "occurred"),
        (b'{"name": {"a": 1}}', "invalid_field", "name must be a string"),
        (b'[{}, {"type": []}]', "invalid_field", "Item 1: type"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid_json", BAD_JSON_MESSAGE),
        (b'{"n": ' + b"9" * 5000 + b"}", "invalid_json", BAD_JSON_MESSAGE),
    ],
)
def test_bad_bodies_get_400_naming_the_problem(make_client, mocker, body, error, detail_part):
    """
    Given a body that is not a JSON object or an array of objects, or carries a bad field
    When it is POSTed
    Then the answer is 400 with a JSON error naming the problem, and nothing is created.
    """
    create = mocker.spy(demisto, "createIncidents")
    response = make_client().post("/", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == error
    assert detail_part in response.json()["detail"]
    assert create.call_count == 0


def test_utf8_bom_and_non_ascii_text_are_accepted(make_client, mocker):
    """
    Given a UTF-8 body with a byte-order mark and non-ASCII text
    When it is POSTed
    Then the incident is created with the text intact.
    """
    create = mocker.spy(demisto, "createIncidents")
    body = "\ufeff" + json.dumps({"name": "Überwachung ✓"}, ensure_ascii=False)
    assert make_client().post("/", content=body.encode()).status_code == 200
    assert create.call_args.args[0][0]["name"] == "Überwachung ✓"


# ---------------------------------------------------------------- auth


def test_basic_auth_accepts_the_right_credentials(make_client):
    """
    Given Basic auth configured
    When a request carries the right username and password
    Then the incident is created.
    """
    client = make_client(credentials={"identifier": "user", "password": "pa:ss"})
    assert client.post("/", json={}, headers={"Authorization": basic("user", "pa:ss")}).status_code == 200


@pytest.mark.parametrize(
    "authorization",
    [None, basic("user", "wrong"), basic("other", "pa:ss"), "Basic !!notbase64", "Bearer pa:ss", "Basic "],
)
def test_basic_auth_rejects_with_401_and_challenge(make_client, mocker, authorization):
    """
    Given Basic auth configured
    When a request has no, wrong or malformed credentials
    Then the answer is 401 `Authorization failed.` with a WWW-Authenticate challenge, and nothing is created.
    """
    create = mocker.spy(demisto, "createIncidents")
    client = make_client(credentials={"identifier": "user", "password": "pa:ss"})
    headers = {"Authorization": authorization} if authorization else {}
    response = client.post("/", json={}, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized", "detail": "Authorization failed."}
    assert response.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert create.call_count == 0


def test_auth_is_checked_before_the_body_is_read(make_client):
    """
    Given Basic auth configured
    When an unauthenticated caller sends a body that is not JSON
    Then the answer is 401, not 400: the body is not parsed for unauthenticated callers.
    """
    client = make_client(credentials={"identifier": "user", "password": "secret"})
    assert client.post("/", content=b"{broken").status_code == 401


def test_non_ascii_secrets_work(make_client):
    """
    Given a username and password with non-ASCII characters
    When a request sends them UTF-8 encoded in Basic auth
    Then it is accepted (the original answered 500).
    """
    client = make_client(credentials={"identifier": "jürgen", "password": "pässwörd✓"})
    assert client.post("/", json={}, headers={"Authorization": basic("jürgen", "pässwörd✓")}).status_code == 200
    assert client.post("/", json={}, headers={"Authorization": basic("jürgen", "passwort")}).status_code == 401


def test_header_token_auth_and_secret_header_never_stored(make_client, mocker):
    """
    Given `_header:X-Api-Token` auth
    When requests carry the right token, a wrong one, or none
    Then only the right token creates an incident, with no WWW-Authenticate on failures, and neither the
         token header nor Authorization reach rawJSON.
    """
    create = mocker.spy(demisto, "createIncidents")
    client = make_client(credentials={"identifier": "_header:X-Api-Token", "password": "t0ken-ü"})
    token = "t0ken-ü".encode()
    ok = client.post("/", json={"name": "a"}, headers=[(b"x-api-token", token), (b"authorization", b"Bearer q")])
    assert ok.status_code == 200
    raw = raw_json_of(create.call_args.args[0][0])
    assert "x-api-token" not in raw["headers"]
    assert "authorization" not in raw["headers"]
    assert "t0ken" not in json.dumps(raw)

    for headers in ({"X-Api-Token": "nope"}, {}):
        response = client.post("/", json={}, headers=headers)
        assert response.status_code == 401
        assert "WWW-Authenticate" not in response.headers
    assert create.call_count == 1


def test_secrets_never_reach_samples_or_logs(executor, mocker):
    """
    Given header-token auth with samples stored
    When an authorized request arrives
    Then neither the token nor Authorization appear in the stored samples or the log lines.
    """
    logged: list[str] = []
    mocker.patch.object(demisto, "info", side_effect=logged.append)
    config = WebhookConfig.from_params(
        {**PORT_PARAMS, "store_samples": True, "credentials": {"identifier": "_header:X-Token", "password": "s3cr3t"}}
    )
    client = TestClient(make_webhook_app(config, executor))
    headers = {"X-Token": "s3cr3t", "Authorization": "Basic Zm9vOmJhcg=="}
    assert client.post("/", json={"a": 1}, headers=headers).is_success
    executor.submit(lambda: None).result()
    assert "s3cr3t" not in json.dumps(demisto.getIntegrationContext())
    assert "Zm9vOmJhcg" not in json.dumps(demisto.getIntegrationContext())
    assert logged and not any("s3cr3t" in line or "Zm9vOmJhcg" in line for line in logged)


# ---------------------------------------------------------------- samples


def test_samples_are_stored_once_per_request_without_duplicates(make_client, mocker):
    """
    Given store_samples on
    When A and B arrive in one request, then C, then A again
    Then the samples are [B, C, A] (no duplicates), in the original's shape (a JSON string under
         `sample_events`), written at most once per request, and fetch-incidents returns them.
    """
    writes = mocker.spy(demisto, "setIntegrationContextVersioned")
    client = make_client(store_samples="true")
    client.post("/", json=[{"name": "A"}, {"name": "B"}])
    client.post("/", json={"name": "C"})
    client.post("/", json={"name": "A"})
    assert writes.call_count <= 3

    context = demisto.getIntegrationContext()
    assert isinstance(context["sample_events"], str)
    names = [sample["name"] for sample in json.loads(context["sample_events"])]
    assert names == ["B", "C", "A"]
    assert [sample["name"] for sample in fetch_samples()] == ["B", "C", "A"]


def test_repeated_identical_event_does_not_rewrite_the_context(make_client, mocker):
    """
    Given store_samples on and one event already stored
    When the identical event arrives again as the newest
    Then the integration context is not written again.
    """
    client = make_client(store_samples=True)
    client.post("/", json={"name": "same"}, headers={"User-Agent": "x"})
    writes = mocker.spy(demisto, "setIntegrationContextVersioned")
    client.post("/", json={"name": "same"}, headers={"User-Agent": "x"})
    assert writes.call_count == 0


def test_samples_keep_the_last_20(make_client):
    """
    Given store_samples on
    When 25 distinct events arrive
    Then only the last 20 are kept, oldest first.
    """
    client = make_client(store_samples=True)
    client.post("/", json=[{"name": f"e{i}"} for i in range(25)])
    assert [sample["name"] for sample in fetch_samples()] == [f"e{i}" for i in range(5, 25)]


def test_samples_are_bounded_in_bytes():
    """
    Given a sample bound of 1 MiB
    When events of 300 KiB arrive, and one of 2 MiB
    Then the oldest are trimmed so the stored JSON stays within 1 MiB, and the 2 MiB event is not kept.
    """
    buffer = SampleBuffer()
    buffer.add([{"name": f"big{i}", "rawJSON": "x" * 300_000} for i in range(5)])
    buffer.add([{"name": "huge", "rawJSON": "y" * 2_000_000}])
    assert [sample["name"] for sample in buffer.samples] == ["big2", "big3", "big4"]
    assert len(json.dumps(buffer.samples)) <= 1024 * 1024


def test_samples_not_stored_when_off(make_client):
    """
    Given store_samples off
    When an event arrives
    Then no sample is stored.
    """
    make_client(store_samples=False).post("/", json={"name": "x"})
    assert fetch_samples() == []


def test_existing_samples_in_context_are_kept(make_client):
    """
    Given samples stored by an earlier run (the original's format)
    When a new event arrives
    Then it is added after them.
    """
    demisto.setIntegrationContext({"sample_events": json.dumps([{"name": "old", "rawJSON": "{}"}])})
    make_client(store_samples=True).post("/", json={"name": "new"})
    assert [sample["name"] for sample in fetch_samples()] == ["old", "new"]


# ---------------------------------------------------------------- failure and concurrency


def test_create_incidents_failure_answers_503_with_retry_after(make_client, mocker):
    """
    Given createIncidents raises (the server is unavailable)
    When an event arrives
    Then the answer is 503 with Retry-After, never 2xx, and the failure is logged.
    """
    mocker.patch.object(demisto, "createIncidents", side_effect=ValueError("server unavailable"))
    errors = mocker.patch.object(demisto, "error")
    response = make_client().post("/", json={"name": "x"})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.json()["error"] == "incident_creation_failed"
    assert any("server unavailable" in call.args[0] for call in errors.call_args_list)


def test_concurrent_requests_are_not_serialized(executor, mocker):
    """
    Given createIncidents takes 0.5 s per call (a blocking round trip to the server)
    When 20 requests arrive at once
    Then all succeed in about one or two call times (batched off the event loop), not 20 x 0.5 s,
         and each request gets its own incidents back.
    """
    real_create = demisto.createIncidents

    def slow_create(incidents, *args, **kwargs):
        time.sleep(0.5)
        return real_create(incidents, *args, **kwargs)

    create = mocker.patch.object(demisto, "createIncidents", side_effect=slow_create)
    app = make_webhook_app(WebhookConfig.from_params(PORT_PARAMS), executor)

    async def send_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://webhook") as client:
            return await asyncio.gather(*(client.post("/", json={"name": f"r{i}"}) for i in range(20)))

    started = time.monotonic()
    responses = asyncio.run(send_all())
    elapsed = time.monotonic() - started

    assert all(response.status_code == 200 for response in responses)
    assert [response.json()[0]["name"] for response in responses] == [f"r{i}" for i in range(20)]
    assert create.call_count <= 3
    assert elapsed < 2.5


# ---------------------------------------------------------------- access log


def test_access_log_has_user_agent_and_no_credentials():
    """
    Given the access-log middleware
    When a request with a user agent and an Authorization header is served
    Then one line with method, path, status and user agent is written, without the credentials.
    """
    lines: list[str] = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    client = TestClient(RequestMonitor(app, lines.append, Metrics()))
    client.post("/hook", headers={"User-Agent": "curl/8.5", "Authorization": "Basic c2VjcmV0"})
    assert len(lines) == 1
    assert '"POST /hook HTTP/1.1" 201' in lines[0]
    assert '"curl/8.5"' in lines[0]
    assert "c2VjcmV0" not in lines[0]


# ---------------------------------------------------------------- test-module


def test_test_module_ok():
    """
    Given a valid configuration
    When test-module runs
    Then it answers ok.
    """
    assert GenericWebhook.test_module({**PORT_PARAMS, "credentials": {"identifier": "u", "password": "p"}}) == "ok"


@pytest.mark.parametrize(
    ("params", "message_part"),
    [
        ({}, "Listen Port is required"),
        ({"longRunningPort": "abc"}, "is not an integer"),
        ({"longRunningPort": "0"}, "out of range"),
        ({"longRunningPort": 70000}, "out of range"),
        ({**PORT_PARAMS, "credentials": {"identifier": "_header:", "password": "x"}}, "has no header name"),
        ({**PORT_PARAMS, "credentials": {"identifier": "_header:Bad Header", "password": "x"}}, "valid HTTP header"),
        ({**PORT_PARAMS, "credentials": {"identifier": "user", "password": ""}}, "Password is empty"),
        ({**PORT_PARAMS, "credentials": {"identifier": "", "password": "pw"}}, "Username is empty"),
        ({**PORT_PARAMS, "certificate": "-----BEGIN CERTIFICATE-----"}, "the Private Key is missing"),
        ({**PORT_PARAMS, "key": "-----BEGIN PRIVATE KEY-----"}, "the Certificate is missing"),
        ({**PORT_PARAMS, "certificate": "garbage", "key": "garbage"}, "could not be loaded"),
    ],
)
def test_test_module_names_the_problem(params, message_part):
    """
    Given a configuration with a mistake
    When test-module runs
    Then it fails with a message naming the param and the fix.
    """
    with pytest.raises(ConfigError, match=message_part):
        GenericWebhook.test_module(params)


def test_test_module_checks_the_tls_pair(tmp_path):
    """
    Given a certificate with its own key, and the same certificate with another key
    When test-module runs
    Then the pair passes and the mismatch is named.
    """
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    other = ca.issue_cert("other")
    params = {**PORT_PARAMS, "certificate": cert.cert_chain_pems[0].bytes().decode()}
    assert GenericWebhook.test_module({**params, "key": cert.private_key_pem.bytes().decode()}) == "ok"
    with pytest.raises(ConfigError, match="does not match"):
        GenericWebhook.test_module({**params, "key": other.private_key_pem.bytes().decode()})


# ---------------------------------------------------------------- long-running-execution


class StopLoop(Exception):
    pass


def test_port_in_use_is_reported_in_module_health(mocker):
    """
    Given the listen port is taken by another process
    When long-running-execution starts
    Then module health says the port is in use (not a traceback), and it waits before trying again.
    """
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    mocker.patch.dict("os.environ", {"GENERIC_WEBHOOK_BIND_HOST": "127.0.0.1"})
    health = mocker.patch.object(demisto, "updateModuleHealth")
    mocker.patch.object(GenericWebhook.time, "sleep", side_effect=StopLoop)
    try:
        with pytest.raises(StopLoop):
            run_long_running({"longRunningPort": str(port)})
    finally:
        blocker.close()
    message, is_error = health.call_args.args
    assert message == (
        f"An error occurred: Listen port {port} is already in use: choose another Listen Port for this "
        "instance, or stop what is using it."
    )
    assert is_error is True


def test_config_error_is_reported_in_module_health(mocker):
    """
    Given a configuration with a half-filled credential
    When long-running-execution starts
    Then module health names the problem and nothing listens.
    """
    health = mocker.patch.object(demisto, "updateModuleHealth")
    mocker.patch.object(GenericWebhook.time, "sleep", side_effect=StopLoop)
    with pytest.raises(StopLoop):
        run_long_running({**PORT_PARAMS, "credentials": {"identifier": "user", "password": ""}})
    assert "Password is empty" in health.call_args.args[0]


def test_long_running_serves_and_stops(mocker):
    """
    Given a free loopback port
    When long-running-execution runs in a thread and a POST arrives
    Then the incident is created, module health says it listens, and the server stops when asked.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mocker.patch.dict("os.environ", {"GENERIC_WEBHOOK_BIND_HOST": "127.0.0.1"})
    servers: list = []
    real_server = GenericWebhook.uvicorn.Server

    def capture(config):
        server = real_server(config)
        server.install_signal_handlers = lambda: None  # not the main thread
        servers.append(server)
        return server

    mocker.patch.object(GenericWebhook.uvicorn, "Server", side_effect=capture)
    thread = threading.Thread(target=run_long_running, args=({"longRunningPort": port},), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    response = None
    while time.monotonic() < deadline:
        try:
            response = httpx.post(f"http://127.0.0.1:{port}/", json={"name": "live"}, timeout=2)
            break
        except httpx.TransportError:
            time.sleep(0.05)
    assert response is not None and response.status_code == 200
    assert response.json()[0]["name"] == "live"
    servers[0].should_exit = True
    thread.join(timeout=10)
    assert not thread.is_alive()
    health = demisto.get_store().get_module_health(demisto.integrationInstance())
    assert health["message"] == f"Listening on port {port} (HTTP)."
    assert health["is_error"] is False
