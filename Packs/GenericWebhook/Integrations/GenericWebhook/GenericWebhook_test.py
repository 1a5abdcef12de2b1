import asyncio
import base64
import gzip
import hashlib
import hmac
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import demistomock as demisto
import GenericWebhook
import ListenerApiModule
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
        (b'{"n": NaN}', "invalid_json", BAD_JSON_MESSAGE),
        (b'{"a": ' * 150 + b"1" + b"}" * 150, "too_deep", "deeper than 100"),
        (json.dumps({"rawJson": '{"a":' * 150 + "1" + "}" * 150}).encode(), "invalid_field", "rawJson is nested"),
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


@pytest.mark.parametrize(
    "occurred",
    [
        "2024-05-01T12:00:00Z",
        "2024-05-01T12:00:00.123456789Z",  # nanoseconds, as Go and many SIEMs send
        "2024-05-01T12:00:00.1+02:00",
        "2024-05-01T12:00:00,5Z",
        "2024-05-01T12:00:00+0000",
        "2024-05-01t12:00:00z",
        "2024-05-01 12:00:00",
        "2024-05-01T12:00",
        "2024-05-01",
        "2024-02-29T23:59:59-11:30",
        "20240501T120000Z",
        "2024-05-01T1200",
    ],
)
def test_occurred_in_common_iso_forms_is_kept_as_sent_on_every_python(occurred):
    """
    Given an event whose occurred is ISO-8601 in a common form (RFC 3339, with any number of fraction digits)
    When it becomes an incident
    Then occurred is kept as sent, on Python 3.10 too (whose datetime.fromisoformat refuses most of these).
    """
    assert GenericWebhook._occurred(occurred) == occurred


@pytest.mark.parametrize(
    "occurred",
    [
        "2024-02-30T00:00:00Z",
        "2024-05-01T24:00:00Z",
        "2024-05-01T12:60:00Z",
        "2024-05-01T12:00:00+24:00",
        "05/01/2024",
        "\u0662\u0660\u0662\u0664-\u0660\u0665-\u0660\u0661T12:00:00Z",  # Arabic-Indic digits
        "2024-05-01Z",  # a zone without a time
        "2024-05-01T12:00:00.Z",  # a fraction without digits
        "2024-W18-3",  # week dates: not what senders write, and not the same on every Python
        "2024-05-01T23:59:60Z",  # a leap second: the server's time parser refuses it
    ],
)
def test_occurred_that_is_no_real_time_is_refused(occurred):
    """
    Given an occurred that looks like a time but names none (Feb 30, hour 24, minute 60, offset 24 h) or is not ISO
    When it becomes an incident
    Then ValueError naming occurred (answered 400 invalid_field).
    """
    with pytest.raises(ValueError, match="occurred"):
        GenericWebhook._occurred(occurred)


def test_lone_surrogates_become_one_replacement_character(make_client, mocker):
    """
    Given a name holding a lone surrogate (valid as a JSON escape, not storable as UTF-8)
    When it is POSTed
    Then the incident name has one U+FFFD in its place, and the raw event keeps the escape.
    """
    create = mocker.spy(demisto, "createIncidents")
    response = make_client().post("/", content=b'{"name": "a\\ud800b"}')
    assert response.status_code == 200
    assert create.call_args.args[0][0]["name"] == "a\ufffdb"
    assert "\\ud800" in create.call_args.args[0][0]["rawJSON"]


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
    app = make_webhook_app(config, executor)
    client = TestClient(app)
    headers = {"X-Token": "s3cr3t", "Authorization": "Basic Zm9vOmJhcg=="}
    assert client.post("/", json={"a": 1}, headers=headers).is_success
    app.log_buffer.flush()
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
    mocker.patch.object(GenericWebhook, "CONTEXT_WRITE_INTERVAL_SECONDS", 0)
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


def test_context_writes_are_throttled_and_flushed(mocker):
    """
    Given samples and dedup on, and a 1 s write interval
    When three batches arrive within the interval
    Then the integration context is written once (first batch), and flush() writes the rest.
    """
    config = WebhookConfig.from_params({**PORT_PARAMS, "store_samples": True, "dedup_key": "id"})
    clock = [100.0]
    sink = GenericWebhook.IncidentSink(config, clock=lambda: clock[0])
    writes = mocker.spy(demisto, "setIntegrationContextVersioned")
    for number in range(3):
        sink([GenericWebhook.Unit([{"name": f"e{number}"}], f"p:{number}")])
        clock[0] += 0.1
    assert writes.call_count == 1
    sink.flush()
    assert writes.call_count == 2
    assert [sample["name"] for sample in fetch_samples()] == ["e0", "e1", "e2"]
    assert set(json.loads(demisto.getIntegrationContext()["dedup_keys"])) == {"p:0", "p:1", "p:2"}


def test_pending_samples_are_written_when_traffic_stops(executor, mocker):
    """
    Given store_samples on and a short write interval
    When two requests arrive back to back and then nothing more
    Then both samples are in the integration context shortly after, without another request.
    """
    mocker.patch.object(GenericWebhook, "CONTEXT_WRITE_INTERVAL_SECONDS", 0.2)
    app = make_webhook_app(WebhookConfig.from_params({**PORT_PARAMS, "store_samples": True}), executor)

    async def post_then_wait() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://webhook") as client:
            await client.post("/", json={"name": "first"})
            await client.post("/", json={"name": "second"})
            for _ in range(100):  # bounded: 5 s
                await asyncio.sleep(0.05)
                if len(fetch_samples()) == 2:
                    break

    asyncio.run(post_then_wait())
    assert [sample["name"] for sample in fetch_samples()] == ["first", "second"]


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


def test_created_count_mismatch_gives_nobody_foreign_incidents(executor, mocker):
    """
    Given a server whose createIncidents answers fewer incidents than it was sent (a rule dropped one)
    When two requests are created in one batch
    Then both are answered 200 with an empty list rather than with each other's incidents.
    """
    mocker.patch.object(demisto, "createIncidents", return_value=[{"id": "9", "name": "b"}])
    sink = GenericWebhook.IncidentSink(WebhookConfig.from_params(PORT_PARAMS))
    results = sink([GenericWebhook.Unit([{"name": "a"}]), GenericWebhook.Unit([{"name": "b"}])])
    assert [result.incidents for result in results] == [[], []]


def test_buffered_body_bytes_are_capped_across_requests(make_client, mocker):
    """
    Given a cap on body bytes held at once across requests
    When a request would pass it
    Then it gets 503 overloaded with Retry-After, and the bytes held are released afterwards.
    """
    mocker.patch.object(GenericWebhook, "MAX_BUFFERED_BYTES", 100)
    client = make_client()
    response = client.post("/", content=json.dumps({"name": "x" * 200}).encode())
    assert response.status_code == 503
    assert response.json()["error"] == "overloaded"
    assert response.headers["Retry-After"] == "1"
    assert client.post("/", json={"name": "small"}).status_code == 200


def test_unverified_requests_of_one_address_share_a_bounded_budget():
    """
    Given admission with room for 1,000 requests and 800 body bytes (an address's unverified share: 125 requests,
          100 bytes)
    When one address's unverified requests hold 90 bytes and another of its requests asks for 20 more
    Then that one gets 503 overloaded naming the address, another address is not affected, and bytes and counts
         come back when the requests are verified or closed.
    """
    admission = GenericWebhook.Admission(1000, 0, max_buffered_bytes=800, max_body_bytes=10)
    assert (admission.unverified_per_address, admission.unverified_bytes_per_address) == (125, 100)
    first = admission.enter("203.0.113.9", unverified=True)
    first.hold(90)
    second = admission.enter("203.0.113.9", unverified=True)
    with pytest.raises(GenericWebhook.RequestError) as refused:
        second.hold(20)
    assert (refused.value.status, refused.value.error) == (503, "overloaded")
    assert "203.0.113.9" in refused.value.detail
    other = admission.enter("198.51.100.7", unverified=True)
    other.hold(90)
    first.verified()  # its bytes still count in all, no longer in the address's share
    second.hold(20)
    for ticket in (first, second, other):
        ticket.close()
    assert (admission.in_flight, admission.buffered_bytes, admission._unverified) == (0, 0, {})


def test_one_address_may_hold_only_its_share_of_unverified_requests():
    """
    Given admission with max_in_flight 40 (an address's unverified share: 16)
    When one address enters 17 unverified requests
    Then the 17th gets 503; a verified-from-the-start request (credentials) from it still gets in.
    """
    admission = GenericWebhook.Admission(40, 0)
    tickets = [admission.enter("203.0.113.9", unverified=True) for _ in range(16)]
    with pytest.raises(GenericWebhook.RequestError) as refused:
        admission.enter("203.0.113.9", unverified=True)
    assert refused.value.status == 503
    tickets.append(admission.enter("203.0.113.9"))
    for ticket in tickets:
        ticket.close()
    assert admission.in_flight == 0


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


def test_a_failed_batch_fails_only_its_own_requests(executor):
    """
    Given a batcher whose first createIncidents call fails while two more requests wait
    When the failure comes back and the waiting requests go in the next batch
    Then the first request gets the error, the other two get their own incidents, and each incident was sent once.
    """
    calls: list[list[str]] = []
    release = threading.Event()

    def sink(units):
        names = [incident["name"] for unit in units for incident in unit.incidents]
        calls.append(names)
        if len(calls) == 1:
            release.wait(5)
            raise ValueError("server unavailable")
        return [GenericWebhook.UnitResult([{"id": name, "name": name}]) for name in names]

    batcher = GenericWebhook.IncidentBatcher(sink, executor)

    async def scenario():
        unit = lambda name: [GenericWebhook.Unit([{"name": name}])]  # noqa: E731
        first = asyncio.ensure_future(batcher.submit(unit("a")))
        await asyncio.sleep(0.05)  # `a` is in flight alone
        others = [asyncio.ensure_future(batcher.submit(unit(name))) for name in ("b", "c")]
        await asyncio.sleep(0.05)
        release.set()
        return await asyncio.gather(first, *others, return_exceptions=True)

    first, second, third = asyncio.run(scenario())
    assert isinstance(first, ValueError)
    assert [second[0].incidents[0]["name"], third[0].incidents[0]["name"]] == ["b", "c"]
    assert calls == [["a"], ["b", "c"]]
    assert batcher.last_batch_failed is False


def test_batch_waits_for_more_requests_up_to_the_max(executor):
    """
    Given batch_max_wait_ms 200 and batch_max_incidents 3
    When three requests arrive 20 ms apart
    Then they are created in one call, which leaves as soon as the third arrives (well before 200 ms).
    """
    calls: list[int] = []

    def sink(units):
        calls.append(len(units))
        return [GenericWebhook.UnitResult(unit.incidents) for unit in units]

    batcher = GenericWebhook.IncidentBatcher(sink, executor, max_batch=3, max_wait_ms=200)

    async def scenario():
        started = time.monotonic()
        tasks = []
        for name in "abc":
            tasks.append(asyncio.ensure_future(batcher.submit([GenericWebhook.Unit([{"name": name}])])))
            await asyncio.sleep(0.02)
        await asyncio.gather(*tasks)
        return time.monotonic() - started  # ~0.06 s; the full wait would be over 0.2 s

    waited = asyncio.run(scenario())
    assert calls == [3]
    assert waited < 0.15


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
    client.post("/x%0A2026-01-01 INFO forged")
    assert "\n" not in lines[1]
    assert "/x%0A2026-01-01" in lines[1]


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
    real_server = GenericWebhook.GuardedServer

    def capture(config):
        server = real_server(config)
        server.install_signal_handlers = lambda: None  # not the main thread
        servers.append(server)
        return server

    mocker.patch.object(GenericWebhook, "GuardedServer", side_effect=capture)
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


# ================================================================ intake beyond the original (signatures ...)

GITHUB_SECRET = "It's a Secret to Everybody"
GITHUB_VECTOR = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def sign(secret: bytes, message: bytes, algorithm: str = "sha256") -> bytes:
    return hmac.new(secret, message, getattr(hashlib, algorithm)).digest()


def test_github_documented_test_vector(make_client, mocker):
    """
    Given the GitHub scheme with GitHub's documented secret
    When GitHub's documented body `Hello, World!` arrives with the documented signature
    Then it is accepted (as text/plain, kept under `text`), and verify_signature agrees with the vector.
    """
    create = mocker.spy(demisto, "createIncidents")
    client = make_client(signature_scheme="GitHub", signature_secret=GITHUB_SECRET)
    headers = {"X-Hub-Signature-256": f"sha256={GITHUB_VECTOR}", "Content-Type": "text/plain"}
    response = client.post("/", content=b"Hello, World!", headers=headers)
    assert response.status_code == 200
    assert raw_json_of(create.call_args.args[0][0])["text"] == "Hello, World!"
    assert sign(GITHUB_SECRET.encode(), b"Hello, World!").hex() == GITHUB_VECTOR


def now_s() -> str:
    return str(int(time.time()))


def slack_headers(secret: bytes, body: bytes, timestamp: str) -> dict[str, str]:
    signature = sign(secret, b"v0:" + timestamp.encode() + b":" + body).hex()
    return {"X-Slack-Signature": f"v0={signature}", "X-Slack-Request-Timestamp": timestamp}


def stripe_headers(secret: bytes, body: bytes, timestamp: str, extra_v1: str = "") -> dict[str, str]:
    signature = sign(secret, timestamp.encode() + b"." + body).hex()
    v1s = f"v1={extra_v1}," if extra_v1 else ""
    return {"Stripe-Signature": f"t={timestamp},{v1s}v1={signature},v0=ignored"}


WHSEC_KEY = b"standard-webhooks-key-32-bytes!!"
WHSEC = "whsec_" + base64.b64encode(WHSEC_KEY).decode()


def standard_headers(key: bytes, body: bytes, timestamp: str, msg_id: str = "msg_1", rotate: bool = False) -> dict:
    signature = base64.b64encode(sign(key, f"{msg_id}.{timestamp}.".encode() + body)).decode()
    old = base64.b64encode(sign(b"old-key", b"x")).decode()
    value = f"v1,{old} v1,{signature}" if rotate else f"v1,{signature}"
    return {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": value}


BODY = b'{"name": "signed event"}'
STALE = str(int(time.time()) - 3600)


@pytest.mark.parametrize(
    ("params", "good_headers", "bad_cases"),
    [
        (
            {"signature_scheme": "Slack", "signature_secret": "slack-secret"},
            lambda: slack_headers(b"slack-secret", BODY, now_s()),
            [
                (lambda: slack_headers(b"slack-secret", BODY, STALE), "signature_stale"),
                (lambda: slack_headers(b"wrong", BODY, now_s()), "signature_mismatch"),
                (lambda: {"X-Slack-Request-Timestamp": now_s()}, "signature_missing"),
                (
                    lambda: {**slack_headers(b"slack-secret", BODY, now_s()), "X-Slack-Signature": "abc"},
                    "signature_malformed",
                ),
                (
                    lambda: {**slack_headers(b"slack-secret", BODY, now_s()), "X-Slack-Request-Timestamp": "soon"},
                    "signature_malformed",
                ),
            ],
        ),
        (
            {"signature_scheme": "Stripe", "signature_secret": "whsec_stripe"},
            lambda: stripe_headers(b"whsec_stripe", BODY, now_s(), extra_v1="00" * 32),
            [
                (lambda: stripe_headers(b"whsec_stripe", BODY, STALE), "signature_stale"),
                (lambda: stripe_headers(b"wrong", BODY, now_s()), "signature_mismatch"),
                (lambda: {}, "signature_missing"),
                (lambda: {"Stripe-Signature": "garbage"}, "signature_malformed"),
                (lambda: {"Stripe-Signature": f"t={now_s()},v1=zz"}, "signature_malformed"),
            ],
        ),
        (
            {"signature_scheme": "Standard Webhooks", "signature_secret": WHSEC},
            lambda: standard_headers(WHSEC_KEY, BODY, now_s(), rotate=True),
            [
                (lambda: standard_headers(WHSEC_KEY, BODY, STALE), "signature_stale"),
                (lambda: standard_headers(b"wrong-key", BODY, now_s()), "signature_mismatch"),
                (lambda: {"webhook-id": "m", "webhook-timestamp": now_s()}, "signature_missing"),
                (
                    lambda: {**standard_headers(WHSEC_KEY, BODY, now_s()), "webhook-signature": "v2,abc"},
                    "signature_malformed",
                ),
                (
                    lambda: {**standard_headers(WHSEC_KEY, BODY, now_s()), "webhook-signature": "v1,***"},
                    "signature_malformed",
                ),
            ],
        ),
        (
            {"signature_scheme": "GitHub", "signature_secret": GITHUB_SECRET},
            lambda: {"X-Hub-Signature-256": "sha256=" + sign(GITHUB_SECRET.encode(), BODY).hex()},
            [
                (lambda: {"X-Hub-Signature-256": "sha256=" + sign(b"wrong", BODY).hex()}, "signature_mismatch"),
                (lambda: {}, "signature_missing"),
                (lambda: {"X-Hub-Signature-256": sign(GITHUB_SECRET.encode(), BODY).hex()}, "signature_malformed"),
                (lambda: {"X-Hub-Signature-256": "sha256=not-hex"}, "signature_malformed"),
            ],
        ),
        (
            {
                "signature_scheme": "Generic HMAC",
                "signature_secret": "generic-hmac-secret",
                "signature_header": "X-Signature",
                "signature_algorithm": "sha512",
                "signature_encoding": "base64",
                "signature_prefix": "sha512=",
            },
            lambda: {
                "X-Signature": "sha512=" + base64.b64encode(sign(b"generic-hmac-secret", BODY, "sha512")).decode()
            },
            [
                (
                    lambda: {"X-Signature": "sha512=" + base64.b64encode(sign(b"x", BODY, "sha512")).decode()},
                    "signature_mismatch",
                ),
                (lambda: {}, "signature_missing"),
                (
                    lambda: {"X-Signature": base64.b64encode(sign(b"generic", BODY, "sha512")).decode()},
                    "signature_malformed",
                ),
                (lambda: {"X-Signature": "sha512=@@@"}, "signature_malformed"),
            ],
        ),
    ],
    ids=["slack", "stripe", "standard-webhooks", "github", "generic-hmac"],
)
def test_signature_schemes(make_client, mocker, params, good_headers, bad_cases):
    """
    Given a signature scheme and its secret
    When a correctly signed request arrives, and requests with a stale timestamp, a wrong secret, a missing
         header or a malformed header
    Then the signed one creates an incident and each bad one gets 401 with the reason, creating nothing and
         never echoing the expected signature.
    """
    client = make_client(**params)
    assert client.post("/", content=BODY, headers=good_headers()).status_code == 200
    create = mocker.spy(demisto, "createIncidents")
    for headers, reason in bad_cases:
        response = client.post("/", content=BODY, headers=headers())
        assert response.status_code == 401, (reason, response.text)
        assert response.json()["error"] == reason
        assert "expected" not in response.json()["detail"].lower()
    assert create.call_count == 0


def test_signature_covers_the_exact_bytes(make_client):
    """
    Given the GitHub scheme
    When the body is re-serialized differently from what was signed (one space added)
    Then the signature no longer matches.
    """
    client = make_client(signature_scheme="GitHub", signature_secret="s")
    signature = "sha256=" + sign(b"s", b'{"a":1}').hex()
    assert client.post("/", content=b'{"a":1}', headers={"X-Hub-Signature-256": signature}).status_code == 200
    assert client.post("/", content=b'{"a": 1}', headers={"X-Hub-Signature-256": signature}).status_code == 401


def test_signature_and_basic_auth_together(make_client):
    """
    Given Basic auth and the GitHub scheme both configured
    When a request is signed but not authenticated, or authenticated but not signed
    Then both are refused; only a request passing both checks is accepted.
    """
    client = make_client(
        credentials={"identifier": "u", "password": "p"}, signature_scheme="GitHub", signature_secret="s"
    )
    signed = {"X-Hub-Signature-256": "sha256=" + sign(b"s", BODY).hex()}
    assert client.post("/", content=BODY, headers=signed).json()["error"] == "unauthorized"
    assert client.post("/", content=BODY, headers={"Authorization": basic("u", "p")}).json()["error"] == (
        "signature_missing"
    )
    assert client.post("/", content=BODY, headers={**signed, "Authorization": basic("u", "p")}).status_code == 200


# ---------------------------------------------------------------- duplicates


def test_repeated_delivery_by_header_creates_one_incident_across_a_restart(executor, mocker):
    """
    Given dedup_key header:X-GitHub-Delivery
    When a delivery arrives, is repeated, then the instance restarts (a new app on the same integration
         context) and the delivery is repeated again
    Then one incident exists, and each repeat answers 200 with the incidents created the first time.
    """
    params = {**PORT_PARAMS, "dedup_key": "header:X-GitHub-Delivery"}
    create = mocker.spy(demisto, "createIncidents")
    headers = {"X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958"}
    first = TestClient(make_webhook_app(WebhookConfig.from_params(params), executor))
    created = first.post("/", json=[{"name": "a"}, {"name": "b"}], headers=headers).json()
    repeat = first.post("/", json=[{"name": "a"}, {"name": "b"}], headers=headers)
    restarted = TestClient(make_webhook_app(WebhookConfig.from_params(params), executor))
    after_restart = restarted.post("/", json=[{"name": "a"}, {"name": "b"}], headers=headers)
    other = restarted.post("/", json={"name": "c"}, headers={"X-GitHub-Delivery": "another"})

    assert create.call_count == 2
    assert [incident["id"] for incident in repeat.json()] == [incident["id"] for incident in created]
    assert after_restart.status_code == 200
    assert [incident["id"] for incident in after_restart.json()] == [incident["id"] for incident in created]
    assert other.json()[0]["name"] == "c"
    assert len(demisto.get_store().list_incidents()) == 3


def test_dedup_by_body_path_per_event_and_within_one_batch(make_client, mocker):
    """
    Given dedup_key event.id (a body path)
    When one array holds two events with the same id and one without, then a later request repeats the id
    Then the id creates one incident, the event without an id is always created, and the repeat creates nothing.
    """
    create = mocker.spy(demisto, "createIncidents")
    client = make_client(dedup_key="event.id")
    body = [{"name": "x", "event": {"id": 7}}, {"name": "x again", "event": {"id": 7}}, {"name": "no id"}]
    first = client.post("/", json=body).json()
    assert len(create.call_args.args[0]) == 2  # the repeat inside the batch is not sent
    assert [incident["name"] for incident in first] == ["x", "x", "no id"]
    assert first[0]["id"] == first[1]["id"]
    second = client.post("/", json={"name": "late", "event": {"id": 7}}).json()
    assert second[0]["id"] == first[0]["id"]
    assert create.call_count == 1


def test_dedup_window_expires(executor, mocker):
    """
    Given dedup_window of 60 s
    When the same delivery comes again after 61 s
    Then it is created again.
    """
    config = WebhookConfig.from_params({**PORT_PARAMS, "dedup_key": "header:webhook-id", "dedup_window": "60"})
    clock = [1000.0]
    sink = GenericWebhook.IncidentSink(config, clock=lambda: clock[0])
    unit = lambda: [GenericWebhook.Unit([{"name": "n"}], "h:1")]  # noqa: E731
    assert not sink(unit())[0].duplicate
    clock[0] += 30
    assert sink(unit())[0].duplicate
    clock[0] += 61
    assert not sink(unit())[0].duplicate


def test_seen_keys_are_bounded():
    """
    Given a bound of 3 seen keys
    When 5 keys are recorded
    Then only the newest 3 remain.
    """
    seen = GenericWebhook.SeenDeliveries({}, window=1000, max_keys=3)
    for number in range(5):
        seen.record(f"k{number}", [{"id": str(number)}], now=float(number))
    seen.expire(now=5.0)
    assert list(seen.entries) == ["k2", "k3", "k4"]


def test_seen_summaries_are_bounded_in_all():
    """
    Given a bound of 5 incident summaries over all seen keys
    When keys with 3, 2 and 4 incidents are recorded
    Then the oldest keys go until at most 5 summaries remain.
    """
    seen = GenericWebhook.SeenDeliveries({}, window=1000, max_summaries=5)
    for number, count in enumerate((3, 2, 4)):
        seen.record(f"k{number}", [{"id": str(n)} for n in range(count)], now=float(number))
    seen.expire(now=3.0)
    assert list(seen.entries) == ["k2"]
    assert seen.summaries == 4


def test_replay_keys_last_twice_the_timestamp_tolerance_in_memory_only(mocker):
    """
    Given a Slack-verifying instance (tolerance 300 s) with no dedup_key, and a clock
    When the same signed message's unit comes at t=0, t=600 and t=601
    Then it is created at t=0, a duplicate at t=600 (its timestamp could still be accepted), created again at t=601
         (stale by then, so never accepted as a request); nothing is written to the integration context for it.
    """
    config = WebhookConfig.from_params({**PORT_PARAMS, "signature_scheme": "Slack", "signature_secret": "x" * 32})
    assert (config.replay_window, config.dedup_enabled, config.has_dedup_key) == (600, True, False)
    clock = [0.0]
    sink = GenericWebhook.IncidentSink(config, clock=lambda: clock[0])
    write = mocker.spy(GenericWebhook, "set_to_integration_context_with_retries")
    read = mocker.spy(GenericWebhook, "get_integration_context")
    signed = GenericWebhook.Signed(b"v0:1:{}", timestamped=True)
    duplicates = []
    for now in (0.0, 600.0, 601.0):
        clock[0] = now
        (result,) = sink([GenericWebhook.Unit([{"name": "n"}], None, signed.replay_key())])
        duplicates.append(result.duplicate)
    sink.flush()
    assert duplicates == [False, True, False]
    assert (write.call_count, read.call_count) == (0, 0)


@pytest.mark.parametrize("scheme", ["GitHub", "Generic HMAC"])
def test_identical_bodies_signed_without_a_timestamp_are_separate_events(make_client, mocker, scheme):
    """
    Given an instance verifying a scheme whose signature covers no timestamp (GitHub, Generic HMAC), no dedup_key
    When the same signed body arrives twice (a heartbeat sender does that)
    Then both are created: without a timestamp the same body may be a new event, so there is no replay key.
    """
    create = mocker.spy(demisto, "createIncidents")
    secret = "a-signing-secret-of-32-bytes-xyz"
    params = {"signature_scheme": scheme, "signature_secret": secret}
    if scheme == "Generic HMAC":
        params["signature_header"] = "X-Signature"
    client = make_client(**params)
    body = b'{"name": "heartbeat"}'
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    header = {"X-Hub-Signature-256": f"sha256={digest}"} if scheme == "GitHub" else {"X-Signature": digest}
    for _ in range(2):
        assert client.post("/", content=body, headers={"Content-Type": "application/json", **header}).status_code == 200
    assert create.call_count == 2
    assert not WebhookConfig.from_params({**PORT_PARAMS, **params}).dedup_enabled


def test_dedup_keys_of_an_anonymous_instance_are_per_client_address():
    """
    Given an instance without credentials or signature, and one with a token
    When their dedup scope is asked for a client address
    Then the anonymous one scopes keys to the address; with a token every request shares the instance's keys.
    """
    anonymous = WebhookConfig.from_params({**PORT_PARAMS, "dedup_key": "id"})
    token = WebhookConfig.from_params(
        {**PORT_PARAMS, "dedup_key": "id", "credentials": {"identifier": "_header:X-Token", "password": "t"}}
    )
    assert GenericWebhook.dedup_scope(anonymous, "203.0.113.9") == "a:203.0.113.9|"
    assert GenericWebhook.dedup_scope(token, "203.0.113.9") == ""


# ---------------------------------------------------------------- limits, encodings, formats


def test_body_over_the_limit_gets_413_with_and_without_content_length(make_client, mocker):
    """
    Given max_body_mb 1
    When a 2 MiB body arrives with Content-Length, and streamed without it
    Then both get 413 payload_too_large and nothing is created.
    """
    create = mocker.spy(demisto, "createIncidents")
    client = make_client(max_body_mb="1")
    big = b'{"a": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    response = client.post("/", content=big)
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"

    def chunks():
        for _ in range(40):
            yield b"x" * 65536

    streamed = client.post("/", content=chunks())
    assert streamed.status_code == 413
    assert create.call_count == 0


def test_gzip_and_deflate_bodies(make_client, mocker):
    """
    Given gzip, zlib-deflate and raw-deflate bodies
    When they are POSTed with the matching Content-Encoding
    Then each creates its incident; an unknown encoding gets 415 and broken gzip gets 400.
    """
    create = mocker.spy(demisto, "createIncidents")
    client = make_client()
    body = json.dumps({"name": "compressed"}).encode()
    raw_deflate = zlib.compressobj(wbits=-15)
    for encoded, encoding in [
        (gzip.compress(body), "gzip"),
        (zlib.compress(body), "deflate"),
        (raw_deflate.compress(body) + raw_deflate.flush(), "deflate"),
    ]:
        response = client.post("/", content=encoded, headers={"Content-Encoding": encoding})
        assert response.status_code == 200, encoding
    assert [call.args[0][0]["name"] for call in create.call_args_list] == ["compressed"] * 3
    unsupported = client.post("/", content=body, headers={"Content-Encoding": "br"})
    assert unsupported.status_code == 415
    assert unsupported.json()["error"] == "unsupported_encoding"
    broken = client.post("/", content=gzip.compress(body)[:-8] + b"garbage!", headers={"Content-Encoding": "gzip"})
    assert broken.status_code == 400
    truncated = client.post("/", content=gzip.compress(body)[:15], headers={"Content-Encoding": "gzip"})
    assert truncated.status_code == 400


def test_concatenated_gzip_members_are_all_read(make_client, mocker):
    """
    Given an NDJSON body made of two gzip members (as log shippers send)
    When it is POSTed with Content-Encoding gzip
    Then both events are created; garbage after a deflate stream is refused.
    """
    create = mocker.spy(demisto, "createIncidents")
    client = make_client()
    body = gzip.compress(b'{"name": "first"}\n') + gzip.compress(b'{"name": "second"}\n')
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/x-ndjson"}
    assert client.post("/", content=body, headers=headers).status_code == 200
    assert [incident["name"] for incident in create.call_args.args[0]] == ["first", "second"]
    trailing = client.post("/", content=zlib.compress(b'{"a": 1}') + b"junk", headers={"Content-Encoding": "deflate"})
    assert trailing.status_code == 400
    assert trailing.json()["error"] == "invalid_encoding"


def test_gzip_bomb_is_refused_without_inflating_it(make_client):
    """
    Given max_body_mb 1
    When a 100 KB gzip body that inflates to 100 MiB arrives
    Then it gets 413 for the decompressed body.
    """
    bomb = gzip.compress(b"\0" * (100 * 1024 * 1024), compresslevel=9)
    response = make_client(max_body_mb="1").post("/", content=bomb, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert "decompressed" in response.json()["detail"]


def test_many_gzip_members_cost_linear_input(mocker):
    """
    Given a body of 20,000 empty gzip members (about 400 KB)
    When it is decoded
    Then zlib is handed a few bytes per input byte (linear: a member's first step is 64 bytes), not the rest of
         the body once per member (quadratic: that took 40 s for 4 MiB, on the event loop); it decodes to nothing.
    """
    member = gzip.compress(b"")
    body = member * 20_000
    fed = []
    real = zlib.decompressobj

    class Counting:
        def __init__(self, wbits):
            self.inflater = real(wbits)

        def decompress(self, data, max_length=0):
            fed.append(len(data))
            return self.inflater.decompress(data, max_length)

        def __getattr__(self, name):
            return getattr(self.inflater, name)

    mocker.patch.object(GenericWebhook.zlib, "decompressobj", Counting)
    assert GenericWebhook.decode_content(body, "gzip", WebhookConfig.from_params(PORT_PARAMS)) == b""
    assert sum(fed) <= 4 * len(body), f"{sum(fed):,} bytes handed to zlib for a {len(body):,}-byte body"


def test_gzip_members_across_input_steps_decode_whole(mocker):
    """
    Given gzip members of mixed sizes whose boundaries fall inside and across the inflater's input steps
    When they are decoded
    Then the output is every member's content in order.
    """
    mocker.patch.object(GenericWebhook, "INFLATE_INPUT_BYTES", 7)
    mocker.patch.object(GenericWebhook, "INFLATE_FIRST_INPUT_BYTES", 2)
    mocker.patch.object(GenericWebhook, "INFLATE_STEP_BYTES", 5)
    parts = [b"", b"a", os.urandom(300), b"x" * 5000, b"", b'{"n": 1}\n']
    body = b"".join(gzip.compress(part) for part in parts)
    assert GenericWebhook.decode_content(body, "gzip", WebhookConfig.from_params(PORT_PARAMS)) == b"".join(parts)
    raw = zlib.compressobj(wbits=-15)
    deflated = raw.compress(b"y" * 4000) + raw.flush()
    assert GenericWebhook.decode_content(deflated, "deflate", WebhookConfig.from_params(PORT_PARAMS)) == b"y" * 4000


@pytest.mark.parametrize(
    ("body", "content_type"),
    [("{}\n" * 350_000, "application/x-ndjson"), ("[" + ",".join(["{}"] * 350_000) + "]", "application/json")],
    ids=["ndjson", "array"],
)
def test_max_items_is_enforced_while_parsing(body, content_type):
    """
    Given max_items 10 and a 1 MiB body of 350,000 empty objects (NDJSON or a JSON array)
    When it is parsed
    Then it is refused with 413 too_many_items before the events are built: the parse takes less memory
         than a few copies of the body (building them took 140 times the body: 1.4 GiB for 10 MiB).
    """
    import tracemalloc

    raw = body.encode()
    tracemalloc.start()
    try:
        with pytest.raises(GenericWebhook.RequestError) as refused:
            GenericWebhook.parse_events(raw, content_type, max_items=10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (refused.value.status, refused.value.error) == (413, "too_many_items")
    assert "max_items (10)" in refused.value.detail
    assert peak < 4 * len(raw), f"peak {peak:,} bytes for a {len(raw):,}-byte body"


@pytest.mark.parametrize(
    "text",
    ["[]", " [ ] ", "[{}]", '[{"a": [1, 2]}, {"b": "]"}]', "\n[\t{} ,{}\r]\n", "[1, 2, 3]", "[[], {}]"],
)
def test_array_read_item_by_item_equals_json_loads(text):
    """
    Given a JSON array
    When it is read item by item (as one with more commas than max_items is)
    Then the result is what json.loads gives.
    """
    assert GenericWebhook._load_array(text, 100) == json.loads(text)


@pytest.mark.parametrize("text", ["[", "[1,]", "[1 2]", "[,1]", "[1]x", "[1]]", "[NaN]", '["\x01"]', "[1,,2]", "[{]"])
def test_array_read_item_by_item_refuses_what_json_loads_refuses(text):
    """
    Given a broken JSON array
    When it is read item by item
    Then it is refused (ValueError, which the caller answers as invalid_json), as json.loads refuses it.
    """
    with pytest.raises(ValueError):
        json.loads(text, parse_constant=GenericWebhook._reject_constant)
    with pytest.raises(ValueError):
        GenericWebhook._load_array(text, 100)


def test_ndjson_of_1000_lines_is_one_create_call(make_client, mocker):
    """
    Given an NDJSON body of 1,000 lines
    When it is POSTed as application/x-ndjson
    Then 1,000 incidents are created in one createIncidents call.
    """
    create = mocker.spy(demisto, "createIncidents")
    body = "\n".join(json.dumps({"name": f"line {n}"}) for n in range(1, 1001)) + "\n"
    response = make_client().post("/", content=body, headers={"Content-Type": "application/x-ndjson"})
    assert response.status_code == 200
    assert create.call_count == 1
    assert len(create.call_args.args[0]) == 1000
    assert len(response.json()) == 1000


@pytest.mark.parametrize(
    "bad_line",
    ['{"name": "broken"', "[1, 2]", '{"severity": "extreme"}', '{"a": 1}, {"b": 2}', "7", '{"x":1},{"y":[1'],
)
def test_ndjson_bad_line_57_rejects_everything(make_client, mocker, bad_line):
    """
    Given a 100-line NDJSON body whose line 57 is broken JSON, not an object, or has a bad field
    When it is POSTed as application/jsonl
    Then the answer is 400 naming line 57 and nothing is created.
    """
    create = mocker.spy(demisto, "createIncidents")
    lines = [json.dumps({"name": f"line {n}"}) for n in range(1, 101)]
    lines[56] = bad_line
    response = make_client().post("/", content="\n".join(lines), headers={"Content-Type": "application/jsonl"})
    assert response.status_code == 400
    assert "Line 57" in response.json()["detail"]
    assert create.call_count == 0


def test_ndjson_value_spilling_into_the_next_line_is_refused(make_client):
    """
    Given NDJSON whose first line is not a JSON value on its own but completes with the second line
    When it is POSTed
    Then it gets 400 naming line 1 (the one-parse fast path must not accept it).
    """
    body = '{"x":1},{"y":[1\n2]}'
    response = make_client().post("/", content=body, headers={"Content-Type": "application/x-ndjson"})
    assert response.status_code == 400
    assert "Line 1" in response.json()["detail"]


def test_max_items(make_client, mocker):
    """
    Given max_items 10
    When an array of 11 events arrives
    Then it gets 413 too_many_items and nothing is created.
    """
    create = mocker.spy(demisto, "createIncidents")
    response = make_client(max_items="10").post("/", json=[{"n": n} for n in range(11)])
    assert response.status_code == 413
    assert response.json()["error"] == "too_many_items"
    assert create.call_count == 0


def test_form_and_text_bodies(make_client, mocker):
    """
    Given a form-urlencoded body with a JSON-valued field and a repeated field, and text/plain bodies
    When they are POSTed
    Then the form fields become the raw event (JSON parsed, repeats as a list), plain text is kept under
         `text`, and a JSON body sent as text/plain is still parsed as JSON.
    """
    create = mocker.spy(demisto, "createIncidents")
    client = make_client()
    form = "name=Form+alert&payload=%7B%22type%22%3A%22block_actions%22%7D&tag=a&tag=b"
    client.post("/", content=form, headers={"Content-Type": "application/x-www-form-urlencoded"})
    incident = create.call_args.args[0][0]
    raw = raw_json_of(incident)
    assert incident["name"] == "Form alert"
    assert raw["payload"] == {"type": "block_actions"}
    assert raw["tag"] == ["a", "b"]
    client.post("/", content="disk almost full", headers={"Content-Type": "text/plain; charset=utf-8"})
    assert raw_json_of(create.call_args.args[0][0])["text"] == "disk almost full"
    client.post("/", content='{"name": "json as text"}', headers={"Content-Type": "text/plain"})
    assert create.call_args.args[0][0]["name"] == "json as text"
    client.post("/", content="{not json", headers={"Content-Type": "text/plain"})
    assert raw_json_of(create.call_args.args[0][0])["text"] == "{not json"


def test_curl_default_form_label_on_json_is_parsed_as_json(make_client, mocker):
    """
    Given `curl -d '{...}'`, which labels a JSON body application/x-www-form-urlencoded
    When it is POSTed
    Then the body is parsed as JSON (as the original did), and broken JSON gets the JSON error.
    """
    create = mocker.spy(demisto, "createIncidents")
    client = make_client()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert client.post("/", content='[{"name": "curl json"}]', headers=form).status_code == 200
    assert create.call_args.args[0][0]["name"] == "curl json"
    assert raw_json_of(create.call_args.args[0][0]) == {"name": "curl json", "headers": mocker.ANY}
    broken = client.post("/", content='{"name": "curl', headers=form)
    assert broken.status_code == 400
    assert broken.json()["detail"] == BAD_JSON_MESSAGE


# ---------------------------------------------------------------- field mapping


def test_field_mapping_paths(make_client, mocker):
    """
    Given paths for name, type, occurred, severity (with a value map) and details
    When a sender's own event shape arrives
    Then the incident takes its fields from those paths; a missing path falls back to the defaults.
    """
    create = mocker.spy(demisto, "createIncidents")
    client = make_client(
        name_path="alert.title",
        type_path="alert.kind",
        occurred_path="alerts[0].at",
        severity_path="alert.level",
        severity_map="low=1,medium=2,high=3,critical=4,sev-p1=4",
        details_path="alert.description",
    )
    event = {
        "alert": {"title": "Beaconing", "kind": "Network", "level": "SEV-P1", "description": "C2 traffic"},
        "alerts": [{"at": "2024-05-01T10:00:00Z"}],
    }
    client.post("/", json=[event, {"alert": {"level": "2"}}])
    mapped, fallback = create.call_args.args[0]
    assert (mapped["name"], mapped["type"], mapped["occurred"]) == ("Beaconing", "Network", "2024-05-01T10:00:00Z")
    assert (mapped["severity"], mapped["details"]) == (4, "C2 traffic")
    assert fallback["name"] == DEFAULT_INCIDENT_NAME
    assert fallback["severity"] == 2
    assert "type" not in fallback


@pytest.mark.parametrize(
    "event",
    [{}, {"a": 1}, {"headers": {"x": 1}}, {"headers": 1, "request_headers": 2}, {"nested": {"q": [1, '\u00e9"']}}],
)
def test_raw_json_with_headers_is_the_event_plus_headers(event):
    """
    Given events with and without their own headers keys
    When the request headers are spliced into their rawJSON
    Then the result parses to the event plus the headers under the first free key, nothing overwritten.
    """
    headers = {"user-agent": "x", "x-q": '"quoted"'}
    raw = json.loads(GenericWebhook.raw_json_with_headers(event, json.dumps(headers)))
    free = next((key for key in ("headers", "request_headers") if key not in event), None)
    assert raw == ({**event, free: headers} if free else event)


def test_field_mapping_reads_the_raw_event():
    """
    Given a name path and an item carrying rawJson
    When the incident is built
    Then the path is resolved inside rawJson.
    """
    config = WebhookConfig.from_params({**PORT_PARAMS, "name_path": "data.0.title"})
    incident = GenericWebhook.build_incident({"rawJson": {"data": [{"title": "inside"}]}}, "{}", config)
    assert incident["name"] == "inside"


# ---------------------------------------------------------------- backpressure, failure, health, metrics


def test_rate_limit_per_client_gets_429_with_retry_after(make_client):
    """
    Given rate_limit_per_minute 3
    When one client sends 4 requests within a minute
    Then the 4th gets 429 rate_limited with Retry-After.
    """
    client = make_client(rate_limit_per_minute="3")
    statuses = [client.post("/", json={}).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    response = client.post("/", json={})
    assert response.json()["error"] == "rate_limited"
    assert 1 <= int(response.headers["Retry-After"]) <= 60


def test_in_flight_cap_gets_503_with_retry_after(executor, mocker):
    """
    Given max_in_flight 2 and a slow createIncidents
    When 5 requests arrive at once
    Then 2 are served and 3 get 503 overloaded with Retry-After.
    """
    real_create = demisto.createIncidents
    mocker.patch.object(demisto, "createIncidents", side_effect=lambda i, *a, **k: (time.sleep(0.3), real_create(i))[1])
    app = make_webhook_app(WebhookConfig.from_params({**PORT_PARAMS, "max_in_flight": "2"}), executor)

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://webhook") as client:
            return await asyncio.gather(*(client.post("/", json={"n": n}) for n in range(5)))

    responses = asyncio.run(send_all())
    assert sorted(response.status_code for response in responses) == [200, 200, 503, 503, 503]
    for response in responses:
        if response.status_code == 503:
            assert response.json()["error"] == "overloaded"
            assert response.headers["Retry-After"] == "1"


def test_health_turns_503_when_creation_fails_and_back(make_client, mocker):
    """
    Given a serving instance
    When createIncidents fails, and later succeeds again
    Then /health (no auth needed) answers 200, then 503 with Retry-After, then 200 again.
    """
    client = make_client(credentials={"identifier": "u", "password": "hunter2-secret"})
    auth = {"Authorization": basic("u", "hunter2-secret")}
    assert client.get("/health").json() == {"status": "ok"}
    failing = mocker.patch.object(demisto, "createIncidents", side_effect=ValueError("down"))
    assert client.post("/", json={}, headers=auth).status_code == 503
    health = client.get("/health")
    assert health.status_code == 503
    assert health.headers["Retry-After"]
    assert "hunter2" not in health.text
    failing.side_effect = None
    failing.return_value = [{"id": "1"}]
    assert client.post("/", json={}, headers=auth).status_code == 200
    assert client.get("/health").status_code == 200


def test_post_to_health_or_metrics_says_they_answer_get(make_client):
    """
    Given a serving instance
    When /health or /metrics is sent a POST
    Then the 405 says those paths answer GET and HEAD (not "Only POST is accepted"), with Allow: GET, HEAD.
    """
    client = make_client()
    for path in ("/health", "/metrics"):
        response = client.post(path, json={})
        assert response.status_code == 405
        assert response.headers["Allow"] == "GET, HEAD"
        assert response.json()["detail"].startswith(f"{path} answers GET and HEAD only")
    other = client.get("/events")
    assert (other.status_code, other.json()["detail"]) == (405, "Only POST is accepted: send events with POST.")


def test_metrics_parse_and_match_what_was_sent(make_client):
    """
    Given metrics_enabled with Basic auth and dedup on a header
    When 2 good requests (3 incidents), 1 duplicate, 2 auth failures, 1 bad body are sent
    Then /metrics needs auth, parses with the Prometheus text parser, and its counters match.
    """
    parser = pytest.importorskip("prometheus_client.parser")
    client = make_client(
        metrics_enabled=True, credentials={"identifier": "u", "password": "p"}, dedup_key="header:X-Id"
    )
    auth = {"Authorization": basic("u", "p")}
    sent_bytes = 0
    for body, extra in [([{"a": 1}, {"a": 2}], {"X-Id": "1"}), ({"a": 3}, {"X-Id": "2"}), ({"a": 3}, {"X-Id": "2"})]:
        content = json.dumps(body).encode()
        sent_bytes += len(content)
        assert client.post("/", content=content, headers={**auth, **extra}).status_code == 200
    client.post("/", json={}, headers={"Authorization": basic("u", "x")})
    client.post("/", json={})
    client.post("/", content=b"{bad", headers=auth)
    sent_bytes += 4
    assert client.get("/metrics").status_code == 401
    text = client.get("/metrics", headers=auth).text

    values = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert values[("generic_webhook_requests_total", (("status", "200"),))] == 3
    assert values[("generic_webhook_requests_total", (("status", "401"),))] == 3  # incl. the anonymous /metrics
    assert values[("generic_webhook_requests_total", (("status", "400"),))] == 1
    assert values[("generic_webhook_incidents_created_total", ())] == 3
    assert values[("generic_webhook_duplicates_total", ())] == 1
    assert values[("generic_webhook_auth_failures_total", ())] == 3
    assert values[("generic_webhook_received_bytes_total", ())] == sent_bytes
    assert values[("generic_webhook_request_duration_seconds_count", ())] == 7
    assert values[("generic_webhook_request_duration_seconds_bucket", (("le", "+Inf"),))] == 7


def test_metrics_off_by_default(make_client):
    """
    Given metrics_enabled off
    When /metrics is requested
    Then it is 404 naming the param.
    """
    response = make_client().get("/metrics")
    assert response.status_code == 404
    assert "metrics_enabled" in response.json()["detail"]


@pytest.mark.parametrize(
    ("params", "message_part"),
    [
        ({"signature_scheme": "Bitbucket"}, "signature_scheme `Bitbucket` is unknown"),
        ({"signature_scheme": "GitHub"}, "needs a signature_secret"),
        ({"signature_secret": "s"}, "signature_scheme is None"),
        ({"signature_scheme": "Generic HMAC", "signature_secret": "s"}, "signature_header is required"),
        (
            {
                "signature_scheme": "Generic HMAC",
                "signature_secret": "s",
                "signature_header": "X-S",
                "signature_algorithm": "md5",
            },
            "signature_algorithm `md5`",
        ),
        (
            {
                "signature_scheme": "Generic HMAC",
                "signature_secret": "s",
                "signature_header": "X-S",
                "signature_encoding": "base32",
            },
            "signature_encoding `base32`",
        ),
        ({"signature_scheme": "Standard Webhooks", "signature_secret": "whsec_***"}, "must be base64"),
        # An empty or short key (issue: `whsec_` gave an empty HMAC key, `whsec_AA==` a 1-byte one).
        ({"signature_scheme": "Standard Webhooks", "signature_secret": "whsec_"}, "decodes to 0 bytes"),
        ({"signature_scheme": "Standard Webhooks", "signature_secret": "whsec_AA=="}, "decodes to 1 bytes"),
        (
            {
                "signature_scheme": "Standard Webhooks",
                "signature_secret": "whsec_" + base64.b64encode(bytes(23)).decode(),
            },
            "asks for 24 to 64",
        ),
        (
            {"signature_scheme": "Generic HMAC", "signature_secret": "fifteen-bytes!!", "signature_header": "X-S"},
            "signature_secret for Generic HMAC must be at least 16 bytes",
        ),
        ({"signature_scheme": "Slack", "signature_secret": "s", "timestamp_tolerance": "0"}, "timestamp_tolerance"),
        ({"dedup_key": "header:"}, "does not name a header"),
        ({"dedup_key": "a..b"}, "dedup_key `a..b`"),
        ({"dedup_key": "id", "dedup_window": "-5"}, "dedup_window"),
        ({"max_body_mb": "0"}, "max_body_mb"),
        ({"max_body_mb": "lots"}, "max_body_mb"),
        ({"max_items": "1.5"}, "max_items"),
        ({"trusted_proxies": "127.0.0.1, reroute.local"}, "trusted_proxies entry `reroute.local`"),
        ({"max_in_flight": "0"}, "max_in_flight"),
        ({"keep_alive_seconds": "0"}, "keep_alive_seconds `0` must be an integer from 1 to 3600"),
        ({"keep_alive_seconds": "5000"}, "keep_alive_seconds `5000` must be an integer from 1 to 3600"),
        ({"keep_alive_seconds": "soon"}, "keep_alive_seconds `soon`"),
        ({"rate_limit_per_minute": "-1"}, "rate_limit_per_minute"),
        ({"metrics_enabled": "maybe"}, "metrics_enabled"),
        ({"name_path": "a."}, "name_path"),
        ({"severity_map": "low=1,high"}, "severity_map entry `high`"),
        ({"severity_map": "low=9"}, "severity_map entry `low=9`"),
    ],
)
def test_test_module_rejects_bad_intake_params(params, message_part):
    """
    Given a bad value or combination of the intake params
    When test-module runs
    Then it fails with a message naming the param.
    """
    with pytest.raises(ConfigError, match=re.escape(message_part)):
        GenericWebhook.test_module({**PORT_PARAMS, **params})


# ---------------------------------------------------------------- connection deadlines (head and body)


@pytest.fixture
def short_deadlines(monkeypatch):
    """Head 1 s, body pause 0.6 s, body in all 1.5 s, checked every 0.1 s."""
    monkeypatch.setattr(ListenerApiModule, "HEADER_TIMEOUT_SECONDS", 1.0)
    monkeypatch.setattr(ListenerApiModule, "BODY_IDLE_TIMEOUT_SECONDS", 0.6)
    monkeypatch.setattr(ListenerApiModule, "BODY_TOTAL_TIMEOUT_SECONDS", 1.5)
    monkeypatch.setattr(ListenerApiModule, "DEADLINE_CHECK_SECONDS", 0.1)


class Live(tuple):
    """(port, log lines) of a served app, with the uvicorn server as `.server`."""

    server: Any = None


@pytest.fixture(params=GenericWebhook.http_protocols())
def serve_live(request, executor, mocker):
    """serve_live(**params) serves the app with the integration's uvicorn settings (the guarded protocol: both
    h11 and httptools where this environment has both, h11 only on the image's stack) on a loopback port, in a
    thread; returns Live((port, log lines)); every server is stopped afterwards."""
    logged: list[str] = []
    mocker.patch.object(demisto, "info", side_effect=lambda text: logged.extend(str(text).split("\n")))
    started = []

    def start(**params: Any) -> Live:
        config = WebhookConfig.from_params({**PORT_PARAMS, "metrics_enabled": True, **params})
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server_config = GenericWebhook.server_config_for(config, make_webhook_app(config, executor), request.param)
        assert not isinstance(server_config.http, str), "the guarded protocol is not in use"
        server = GenericWebhook.GuardedServer(server_config)
        server.install_signal_handlers = lambda: None  # not the main thread
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        started.append((server, thread, sock))
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.started
        live = Live((sock.getsockname()[1], logged))
        live.server = server
        return live

    yield start
    for server, thread, sock in started:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def live_server(serve_live):
    """The app served with its default params (see serve_live)."""
    return serve_live()


def read_until_closed(
    sock: socket.socket, limit: float, *, tick: Any = None, interval: float = 0.05
) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection (or `limit` seconds pass), and when it closed.
    With `tick`, it is called before each wait of `interval` seconds (to keep sending); a refused send ends it."""
    started = time.monotonic()
    received = b""
    sock.settimeout(interval)
    while time.monotonic() - started < limit:
        if tick is not None:
            try:
                tick()
            except (BrokenPipeError, ConnectionResetError):
                break
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received, time.monotonic() - started


def read_response(sock: socket.socket, timeout: float = 5) -> bytes:
    """One whole response with a Content-Length body (head and body, however many reads it takes)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"closed before the whole body: {data!r}"
        body += chunk
    return head + b"\r\n\r\n" + body


def test_a_body_that_stops_gets_408_from_the_connection(short_deadlines, live_server, mocker):
    """
    Given the guarded protocol, with a body pause limit of 0.6 s
    When a client sends the head and part of the body, then nothing more
    Then it gets a 408 JSON answer and the connection closes soon after the limit; no incident is created, and the
         access log records 408 for the request.
    """
    port, logged = live_server
    create = mocker.patch.object(demisto, "createIncidents", return_value=[])
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        answer, took = read_until_closed(client, limit=5)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "request_timeout"
    assert 0.5 < took < 2.0
    create.assert_not_called()
    deadline = time.monotonic() + 3
    while not any('"POST / HTTP/1.1" 408' in line for line in logged) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any('"POST / HTTP/1.1" 408' in line for line in logged), logged


def test_a_slow_steady_body_is_cut_at_the_total_limit_not_before(short_deadlines, live_server, mocker):
    """
    Given a body pause limit of 0.6 s and a total body limit of 1.5 s
    When a client sends its body one byte every 0.3 s (never pausing too long)
    Then the connection stays open past the pause limit, and answers 408 and closes at about the total limit.
    """
    port, _ = live_server
    mocker.patch.object(demisto, "createIncidents", return_value=[])
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n")
        answer, took = read_until_closed(client, limit=4, tick=lambda: client.sendall(b" "), interval=0.3)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert 1.3 < took < 2.5


def test_an_idle_connection_and_a_slow_head_are_closed_and_requests_on_time_are_served(short_deadlines, live_server):
    """
    Given a request head limit of 1 s
    When one connection sends nothing, one sends a head line every 0.4 s, and a keep-alive client sends two
         prompt requests 1.2 s apart
    Then the first two are closed without an answer soon after 1 s, and the keep-alive client is served both times
         (its head deadline starts with each request, not with the connection).
    """
    port, _ = live_server
    with (
        socket.create_connection(("127.0.0.1", port)) as idle,
        socket.create_connection(("127.0.0.1", port)) as slow,
        httpx.Client(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        assert client.post("/", json={"name": "first"}).status_code == 200
        started = time.monotonic()
        slow.sendall(b"POST / HTTP/1.1\r\n")
        slow.settimeout(0.4)
        closed_at = None
        while time.monotonic() - started < 4 and closed_at is None:
            try:
                slow.sendall(b"X-Slow: 1\r\n")
                if slow.recv(1) == b"":
                    closed_at = time.monotonic() - started
            except TimeoutError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.monotonic() - started
        assert closed_at is not None and 0.9 < closed_at < 2.0
        answer, _ = read_until_closed(idle, limit=2)
        assert answer == b""
        time.sleep(max(0.0, 1.2 - (time.monotonic() - started)))
        assert client.post("/", json={"name": "second"}).status_code == 200


def test_read_body_times_out_by_itself_without_the_guarded_protocol(monkeypatch):
    """
    Given a scope from a server without the guarded protocol (no body guard key) and a body pause limit of 0.1 s
    When the client sends part of the body and then nothing
    Then read_body raises 408 request_timeout on its own.
    """
    monkeypatch.setattr(GenericWebhook, "BODY_IDLE_TIMEOUT_SECONDS", 0.1)
    messages = [{"type": "http.request", "body": b"{", "more_body": True}]

    async def receive():
        if messages:
            return messages.pop()
        await asyncio.sleep(10)

    config = WebhookConfig.from_params(PORT_PARAMS)

    async def scenario():
        return await GenericWebhook.read_body({"type": "http"}, receive, {}, config, lambda size: None)

    with pytest.raises(GenericWebhook.RequestError) as raised:
        asyncio.run(asyncio.wait_for(scenario(), 5))
    assert raised.value.status == 408


def test_the_access_log_reaches_the_server_in_one_call_per_flush(executor, mocker):
    """
    Given the access log's buffer
    When three lines are written on the event loop
    Then the worker writes them in one call, one line each, in order, ending with a newline (which the real
         IntegrationLogger needs before it passes text on).
    """
    written: list[str] = []
    buffer = GenericWebhook.LogBuffer(executor, written.append, interval=0.01)

    async def scenario():
        for number in range(3):
            buffer(f"line {number}")
        await asyncio.sleep(0.1)

    asyncio.run(scenario())
    executor.submit(lambda: None).result(5)
    assert written == ["line 0\nline 1\nline 2\n"]


def test_a_late_pipelined_request_does_not_cost_the_answer_of_the_one_before_it(short_deadlines, live_server, mocker):
    """
    Given a body pause limit of 0.6 s and a first request whose incident takes 1.5 s to create
    When a second request is pipelined behind it with part of its body, and the rest never comes
    Then the first is still answered 200 with its incident (closing at 0.6 s would lose that answer, and the
         sender would retry and duplicate it), and only then the second gets 408 and the connection closes.
    """
    port, _ = live_server

    def create(incidents, *args, **kwargs):
        if incidents[0]["name"] == "slow":
            time.sleep(1.5)
        return [{**incident, "id": incident["name"]} for incident in incidents]

    create_mock = mocker.patch.object(demisto, "createIncidents", side_effect=create)
    first = b'{"name": "slow"}'
    lines = [b"POST / HTTP/1.1", b"Host: t", b"Content-Type: application/json", b"Content-Length: %d", b"", b""]
    head = b"\r\n".join(lines)
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(head % len(first) + first + head % 100 + b'{"name": "late"')
        answer, took = read_until_closed(client, limit=6)
    statuses = re.findall(rb"HTTP/1.1 (\d{3})", answer)
    assert statuses == [b"200", b"408"], answer[:500]
    assert b'"id": "slow"' in answer
    assert 1.4 < took < 4
    assert create_mock.call_count == 1


def test_stray_bytes_after_a_response_do_not_keep_the_connection_open(short_deadlines, live_server):
    """
    Given a head deadline of 1 s
    When a client gets an answer and then sends only a CRLF (which starts no request, but cancels uvicorn's
         keep-alive timer)
    Then the connection is closed about 1 s later, not held open for good.
    """
    port, _ = live_server
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(client).startswith(b"HTTP/1.1 200")
        client.sendall(b"\r\n")
        answer, took = read_until_closed(client, limit=4)
    # httptools skips the CRLF and the head deadline closes the connection; h11 calls it a bad request at once
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400 "), answer
    assert took < 2.5


def test_a_complete_head_over_the_limit_in_one_read_gets_431(live_server):
    """
    Given the 64 KiB head limit
    When a request with a 100 KB header arrives in one piece (so no read ends inside the head)
    Then it is answered 431 headers_too_large and the connection closes.
    """
    port, _ = live_server
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"a" * 100_000 + b"\r\nContent-Length: 2\r\n\r\n{}")
        answer, _ = read_until_closed(client, limit=5)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "headers_too_large"


def test_a_websocket_upgrade_is_answered_as_plain_http(live_server):
    """
    Given the listener (which has no WebSocket routes)
    When a client asks to upgrade to WebSocket
    Then it gets an ordinary HTTP answer (405: only POST), not a 101 switch to another protocol.
    """
    port, _ = live_server
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(
            b"GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        client.settimeout(3)
        answer = client.recv(65536)
    assert answer.startswith(b"HTTP/1.1 405 "), answer[:200]


def test_access_log_escapes_control_characters_and_quotes_in_the_user_agent():
    """
    Given a user agent with a quote, a NEL (0x85, a line break to str.splitlines) and an escape character
    When the access-log line is written
    Then they appear escaped, on one line, and the quoted field stays well-formed.
    """
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "raw_path": b"/",
        "headers": [(b"user-agent", b'evil" \x85next \x1b[31m')],
        "client": ("127.0.0.1", 5000),
    }
    line = GenericWebhook.access_log_line(scope, 200, 0.001)
    assert len(line.splitlines()) == 1
    assert line.endswith(r'"evil\" \x85next \x1b[31m"')


def test_the_access_log_line_of_a_refused_request_names_its_error_word():
    scope = {"type": "http", "method": "POST", "path": "/", "raw_path": b"/", "headers": [], "client": ("::1", 1)}
    assert GenericWebhook.access_log_line(scope, 401, 0.002, "signature_mismatch").endswith(
        '401 2.0ms "-" error=signature_mismatch'
    )
    assert "error=" not in GenericWebhook.access_log_line(scope, 200, 0.002)


# ---------------------------------------------------------------- TCP_NODELAY, early answers, keep-alive

SMALL_LIMIT = {"max_body_mb": "0.01"}  # 10 KiB


def server_sockets(live: Live) -> list[socket.socket]:
    """The server side of every open connection of a served app."""
    return [connection.transport.get_extra_info("socket") for connection in list(live.server.server_state.connections)]


def test_accepted_connections_have_tcp_nodelay(live_server):
    """
    Given the guarded protocol on a listening socket made with proto 0 (asyncio then leaves Nagle on)
    When a client connects and is served
    Then the server's side of the connection has TCP_NODELAY set, so no answer waits for a delayed ACK.
    """
    port, _ = live_server
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(client).startswith(b"HTTP/1.1 200")
        (server_side,) = server_sockets(live_server)
        assert server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_the_listen_socket_is_made_for_tcp(monkeypatch):
    """
    Given the listen socket the integration binds
    Then it is created with proto IPPROTO_TCP (asyncio checks it before it sets TCP_NODELAY on accepted sockets).
    """
    variable = GenericWebhook.BIND_HOST_ENV
    monkeypatch.setenv(variable, "127.0.0.1")
    sock = GenericWebhook.bind_listen_socket(0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def write_first(port: int, request: bytes) -> bytes:
    """A sender that writes the whole request before it reads anything (as urllib and many SDKs do)."""
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(request)  # a reset here (server closed while we write) fails the test
        answer, _ = read_until_closed(client, limit=10)
    return answer


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param(b"Connection: close\r\nContent-Length: %d\r\n", id="connection-close"),
        pytest.param(b"Content-Length: %d\r\n", id="keep-alive"),
        pytest.param(b"Transfer-Encoding: chunked\r\n", id="chunked"),
    ],
)
def test_an_over_limit_body_written_first_gets_its_413(serve_live, mocker, framing):
    """
    Given a body limit of 10 KiB
    When a sender writes a 16 MiB body in full before reading (Connection: close, keep-alive, chunked)
    Then it reads the 413 payload_too_large answer (not a reset), which says `connection: close`; nothing is created.
    """
    port, _ = serve_live(**SMALL_LIMIT)
    create = mocker.patch.object(demisto, "createIncidents", return_value=[])
    body = b'{"name": "' + b"x" * (16 * 1024 * 1024) + b'"}'
    if b"chunked" in framing:
        payload = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:65536], body[65536:])) + b"0\r\n\r\n"
        head = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n" + framing + b"\r\n"
    else:
        payload = body
        head = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n" + framing % len(body) + b"\r\n"
    answer = write_first(port, head + payload)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert b"connection: close" in answer.lower()
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "payload_too_large"
    create.assert_not_called()


def test_a_401_before_the_body_reaches_a_write_first_sender(serve_live):
    """
    Given header-token auth
    When a sender with the wrong token writes a 16 MiB body in full, over HTTP/1.0, before reading
    Then it reads the 401.
    """
    port, _ = serve_live(credentials={"identifier": "_header:X-Token", "password": "right"})
    body = b'{"name": "' + b"x" * (16 * 1024 * 1024) + b'"}'
    head = b"POST / HTTP/1.0\r\nHost: t\r\nX-Token: wrong\r\nContent-Length: %d\r\n\r\n" % len(body)
    answer = write_first(port, head + body)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:300]


def test_urllib_reads_the_413_for_an_over_limit_body(serve_live):
    """
    Given a body limit of 10 KiB
    When Python's urllib (which writes the whole body, with Connection: close, before it reads) posts 4 MiB
    Then urllib raises HTTPError 413 with the JSON answer, not a connection reset or broken pipe.
    """
    import urllib.error
    import urllib.request

    port, _ = serve_live(**SMALL_LIMIT)
    body = json.dumps({"name": "x" * (4 * 1024 * 1024)}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/", data=body, headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=20)
    assert raised.value.code == 413
    assert json.loads(raised.value.read())["error"] == "payload_too_large"


def test_an_endless_head_gets_431_and_the_connection_closes(live_server):
    """
    Given the 64 KiB head limit
    When a client sends header lines in 8 KiB pieces and never ends the head
    Then it gets 431 headers_too_large once over the limit, and the connection closes.
    """
    port, _ = live_server
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"POST / HTTP/1.1\r\nHost: t\r\n")
        answer = b""
        for number in range(40):
            try:
                client.sendall(b"X-Pad-%d: %s\r\n" % (number, b"a" * 8192))
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.01)
        more, _ = read_until_closed(client, limit=5)
        answer += more
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


def test_expect_100_continue_gets_the_early_answer_without_sending_the_body(serve_live, tmp_path):
    """
    Given header-token auth and a 10 KiB body limit
    When curl posts a 1 MiB file with `Expect: 100-continue` with a wrong token, or over the limit, and one with the
         right token under the limit
    Then curl gets 401 and 413 without having uploaded a byte of the body (the answer comes before any 100
         Continue), and the good one is created (200, after 100 Continue).
    """
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    port, _ = serve_live(credentials={"identifier": "_header:X-Token", "password": "right"}, **SMALL_LIMIT)
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"name": "x" * 1024 * 1024}))
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"name": "ok"}))

    def post(path: Path, token: str) -> tuple[int, int]:
        result = subprocess.run(
            [curl, "-sS", "-o", os.devnull, "-w", "%{http_code} %{size_upload}", "--expect100-timeout", "30",
             "-H", "Expect: 100-continue", "-H", "Content-Type: application/json", "-H", f"X-Token: {token}",
             "--data-binary", f"@{path}", f"http://127.0.0.1:{port}/"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        code, uploaded = result.stdout.split()
        return int(code), int(float(uploaded))

    assert post(big, "wrong") == (401, 0)
    assert post(big, "right") == (413, 0)
    code, uploaded = post(small, "right")
    assert code == 200 and uploaded == small.stat().st_size


def test_answers_carry_the_keep_alive_hint_and_an_idle_connection_closes_after_it(serve_live):
    """
    Given keep_alive_seconds 1
    When a client is answered (events and health) and then stays idle
    Then each answer says `keep-alive: timeout=1`, and the connection is closed about 1 s after the last answer,
         without a word.
    """
    port, _ = serve_live(keep_alive_seconds="1")
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
        assert b"\r\nkeep-alive: timeout=1\r\n" in read_response(client).lower()
        client.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        assert b"\r\nkeep-alive: timeout=1\r\n" in read_response(client).lower()
        answer, took = read_until_closed(client, limit=6)
    assert answer == b""
    assert 0.8 < took < 4


def test_a_keep_alive_connection_that_stalls_after_an_early_413_is_closed(serve_live, monkeypatch):
    """
    Given a 10 KiB body limit and a linger pause limit of 0.5 s
    When a keep-alive client announces a 100 KB body, sends 20 KB of it and then nothing
    Then it gets its 413 and the connection closes soon after (on h11 such a connection used to stay open for good).
    """
    monkeypatch.setattr(ListenerApiModule, "LINGER_IDLE_SECONDS", 0.5)
    monkeypatch.setattr(ListenerApiModule, "DEADLINE_CHECK_SECONDS", 0.1)
    port, _ = serve_live(**SMALL_LIMIT)
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b" " * 20_000)
        answer, took = read_until_closed(client, limit=6)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert took < 4


def test_lingering_is_bounded_in_bytes(serve_live, monkeypatch):
    """
    Given a linger limit of 1 MiB
    When a client keeps sending after its 413 (a body far over what it announced)
    Then the server stops reading and closes (the client's writes fail) instead of reading for ever.
    """
    monkeypatch.setattr(ListenerApiModule, "LINGER_MAX_BYTES", 1024 * 1024)
    port, _ = serve_live(**SMALL_LIMIT)
    sent = 0
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 999999999\r\n\r\n")
        client.settimeout(5)
        chunk = b" " * 65536
        with pytest.raises((BrokenPipeError, ConnectionResetError, TimeoutError)):
            while sent < 64 * 1024 * 1024:
                client.sendall(chunk)
                sent += len(chunk)
    assert sent < 32 * 1024 * 1024


def test_the_answer_to_an_event_leaves_in_one_write(live_server, mocker):
    """
    Given the served app
    When an event is posted
    Then the connection's transport gets the whole answer (head and body) in one write: one send() and one TCP
         segment, not two (with TCP_NODELAY, two writes are two segments for both ends to handle).
    """
    port, _ = live_server
    mocker.patch.object(demisto, "createIncidents", return_value=[{"id": "1", "name": "x"}])
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")  # the connection exists on the server now
        read_response(client)
        (connection,) = list(live_server.server.server_state.connections)
        real = connection.real_transport
        writes: list[bytes] = []

        class Counting:
            def write(self, data: bytes) -> None:
                writes.append(data)
                real.write(data)

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

        connection.guarded_transport.transport = Counting()
        client.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
        answer = read_response(client)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert writes == [answer]


def test_a_server_that_stops_does_not_wait_for_connections_that_sent_nothing(serve_live, monkeypatch):
    """
    Given linger limits of 30 s pause / 60 s in all, and a connection that sent nothing and one that sent half a head
    When the server is told to stop
    Then it stops within 10 s: connections with nothing answered are closed at once, not lingered on.
    """
    monkeypatch.setattr(ListenerApiModule, "LINGER_IDLE_SECONDS", 30)
    monkeypatch.setattr(ListenerApiModule, "LINGER_TOTAL_SECONDS", 60)
    live = serve_live()
    port, _ = live
    with socket.create_connection(("127.0.0.1", port)), socket.create_connection(("127.0.0.1", port)) as half:
        half.sendall(b"POST / HTTP/1.1\r\nHost: t\r\n")
        deadline = time.monotonic() + 5
        while len(live.server.server_state.connections) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        live.server.should_exit = True
        deadline = time.monotonic() + 10
        while live.server.started and time.monotonic() < deadline and live.server.server_state.connections:
            time.sleep(0.05)
        assert not live.server.server_state.connections


def test_a_client_that_never_reads_its_answers_is_cut_off(serve_live, monkeypatch):
    """
    Given a write deadline of 1 s (checked every 0.1 s)
    When a client with a tiny receive buffer pipelines requests for a while and never reads an answer
    Then the server aborts the connection once its writes have been stuck for the deadline, instead of holding it.
    """
    monkeypatch.setattr(ListenerApiModule, "WRITE_TIMEOUT_SECONDS", 1)
    monkeypatch.setattr(ListenerApiModule, "DEADLINE_CHECK_SECONDS", 0.1)
    live = serve_live()
    port, _ = live
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port))
    client.settimeout(0.2)
    request = b"GET /health HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"p" * 2000 + b"\r\n\r\n"
    ended = False
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline and not ended:
            try:
                client.sendall(request * 8)
            except (BrokenPipeError, ConnectionResetError):
                ended = True
            except TimeoutError:  # our own send buffer is full too: wait for the server to give up
                time.sleep(0.1)
            if not live.server.server_state.connections:
                ended = True
    finally:
        client.close()
    assert ended, "the connection was still held after 20 s"


def test_a_pipelined_head_that_starts_in_the_same_read_is_not_counted_with_the_body_before_it(live_server, mocker):
    """
    Given the 64 KiB head limit
    When a 100 KB event and the first bytes of a second request arrive in one write, and the rest of the second later
    Then both are answered 200 (the first request's body is not the second's head).
    """
    port, _ = live_server
    mocker.patch.object(demisto, "createIncidents", side_effect=lambda incidents, **kw: [{"id": "1"}])
    event = json.dumps({"name": "big", "details": "d" * 100_000}).encode()
    first = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(event)
    second = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(first + event + second[:20])
        assert read_response(client, timeout=10).startswith(b"HTTP/1.1 200 ")
        client.sendall(second[20:])
        assert read_response(client, timeout=10).startswith(b"HTTP/1.1 200 ")


def test_an_endless_head_behind_a_request_being_answered_gets_its_431_after_that_answer(
    short_deadlines, live_server, mocker, request
):
    """
    Given a first request whose incident takes 1 s to create, and a head deadline of 1 s
    When an endless head (over 64 KiB, never ended) is pipelined behind it
    Then the first is answered 200 with its incident, and only then the connection ends: with a 431 (h11, which
         counts the buffered head), or at the head deadline (httptools, when the head began in the same read as
         the end of the request before it: those bytes are not counted)."""
    port, _ = live_server

    def create(incidents, *args, **kwargs):
        time.sleep(1)
        return [{"id": "slow"}]

    mocker.patch.object(demisto, "createIncidents", side_effect=create)
    first = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(first + b"POST / HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"a" * 70_000)
        answer, _ = read_until_closed(client, limit=8)
    statuses = re.findall(rb"HTTP/1.1 (\d{3})", answer)
    kind = request.node.callspec.params["serve_live"]
    expected = [[b"200", b"431"]] if kind == "h11" else [[b"200", b"431"], [b"200"]]
    assert statuses in expected, answer[:400]
    assert b'"id": "slow"' in answer


# ---------------------------------------------------------------- defaults: the YAML's, in one place


def yaml_defaults() -> dict[str, str]:
    import yaml

    integration = yaml.safe_load((Path(__file__).parent / "GenericWebhook.yml").read_text())
    return {
        item["name"]: str(item["defaultvalue"])
        for item in integration["configuration"]
        if "defaultvalue" in item and item["name"] != "longRunning"  # the platform's, not read by the code
    }


def test_the_codes_param_defaults_are_the_yamls():
    """
    Given the integration YAML's `defaultvalue`s
    Then PARAM_DEFAULTS holds exactly those, and an instance without those params (one made before a param existed)
         gets the same config as one with every default filled in, which is also the config's own field defaults.
    """
    defaults = yaml_defaults()
    assert defaults == GenericWebhook.PARAM_DEFAULTS
    absent = WebhookConfig.from_params(PORT_PARAMS)
    filled = WebhookConfig.from_params({**PORT_PARAMS, **defaults})
    assert absent == filled == WebhookConfig(port=int(PORT_PARAMS["longRunningPort"]))


@pytest.mark.parametrize("name", sorted(yaml_defaults()))
def test_a_change_of_a_yaml_default_would_show(name, monkeypatch):
    """Each default is read from PARAM_DEFAULTS where it is used (a literal left in the code would not move)."""
    defaults = yaml_defaults()
    changed = {
        "trusted_proxies": "10.0.0.0/8",
        "signature_scheme": "Nonsense",
        "signature_algorithm": "md5",
        "signature_encoding": "base32",
        "metrics_enabled": "true",
    }.get(name, "7")
    monkeypatch.setitem(GenericWebhook.PARAM_DEFAULTS, name, changed)
    params = {**PORT_PARAMS, "signature_scheme": "Generic HMAC", "signature_secret": "s" * 32}
    if name == "signature_scheme":
        params = dict(PORT_PARAMS)
    try:
        moved = WebhookConfig.from_params(params)
    except ConfigError:
        return  # the changed default was read (and refused)
    monkeypatch.setitem(GenericWebhook.PARAM_DEFAULTS, name, defaults[name])
    assert moved != WebhookConfig.from_params(params)
