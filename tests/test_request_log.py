"""The requests log's parts: what is redacted, what the store keeps (bounded per instance, on both backends), which
of the incidents an answer lists the request created, the writer's batches, and the curl command of an entry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from xsoar_local import request_log
from xsoar_local.masking import MASK
from xsoar_local.request_log import REDACTED, Recording, Redactor, RequestLog, curl_command, entry_of
from xsoar_local.store import MemoryStore, SqliteStore, Store

PARAMS = {
    "credentials": {"identifier": "_header:X-Webhook-Auth", "password": "hunter2-token-value"},
    "signature_secret": "sig-secret-0123456789",
    "incidentType": "Unclassified",
}
API_KEY = "platform-api-key-42"


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made: Store = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "store.db")
    yield made
    made.close()


def recorded(
    headers: list[tuple[bytes, bytes]],
    body: bytes = b'{"name": "x"}',
    target: str = "/",
    answer: tuple[int, bytes] = (200, b"[]"),
    carriers: frozenset[bytes] = frozenset(),
    instance: str = "hook",
) -> dict[str, Any]:
    recording = Recording(instance, "POST", target, "127.0.0.1", 0.0)
    for start in range(0, len(body), 1000):
        recording.body_chunk(body[start : start + 1000])
    recording.answer_start(answer[0], [(b"content-type", b"application/json")])
    recording.answer_chunk(answer[1])
    return entry_of(recording, Redactor.of(PARAMS, API_KEY), headers, carriers, 0.0123)


def test_no_secret_is_kept_whatever_carries_it() -> None:
    """Headers named like credentials or signatures lose their values; a secret param's value is masked wherever it
    appears (a header of any name, the body, the query); the API key's carriers are not kept at all."""
    entry = recorded(
        [
            (b"content-type", b"application/json"),
            (b"x-webhook-auth", b"hunter2-token-value"),
            (b"x-hub-signature-256", b"sha256=abcdef"),
            (b"stripe-signature", b"t=1,v1=ff"),
            (b"x-gitlab-token", b"glt"),
            (b"x-shopify-hmac-sha256", b"b64"),
            (b"cookie", b"session=1"),
            (b"x-custom", b"Bearer hunter2-token-value"),
            (b"x-api-key", API_KEY.encode()),
            (b"x-note", f"key {API_KEY}".encode()),
        ],
        body=b'{"text": "sig-secret-0123456789 leaked"}',
        target="/events/github?token=abc&state=open&x=hunter2-token-value",
        carriers=frozenset({b"x-api-key"}),
    )
    stored = json.dumps(entry)
    for secret in ("hunter2-token-value", "sig-secret-0123456789", API_KEY, "abcdef", "glt", "session=1", "=abc"):
        assert secret not in stored
    headers = dict(entry["headers"])
    assert "x-api-key" not in headers
    assert headers["content-type"] == "application/json"
    assert {headers[name] for name in ("x-webhook-auth", "x-hub-signature-256", "stripe-signature")} == {REDACTED}
    assert headers["x-custom"] == f"Bearer {MASK}"
    assert entry["target"] == f"/events/github?token={REDACTED}&state=open&x={MASK}"
    assert entry["body"] == f'{{"text": "{MASK} leaked"}}'
    assert entry["api_key_sent"] is True


def test_an_entry_holds_the_answers_error_word_or_its_incident_ids() -> None:
    refused = recorded([], answer=(401, b'{"error": "signature_mismatch", "detail": "X-Hub-Signature-256 differs"}'))
    assert (refused["status"], refused["error"], refused["detail"]) == (401, "signature_mismatch", refused["detail"])
    assert refused["incident_ids"] is None
    created = recorded([], answer=(200, b'[{"id": "7", "name": "a"}, {"id": "8", "name": "b"}]'))
    assert (created["error"], created["incident_ids"]) == (None, ["7", "8"])
    assert created["request_bytes"] == len(b'{"name": "x"}') and created["duration_ms"] == 12.3


def test_a_body_is_kept_up_to_its_bound_and_binary_as_base64() -> None:
    big = recorded([], body=b"a" * (request_log.MAX_BODY_KEPT + 10))
    assert (len(big["body"]), big["request_bytes"], big["body_truncated"]) == (
        request_log.MAX_BODY_KEPT,
        request_log.MAX_BODY_KEPT + 10,
        True,
    )
    binary = recorded([], body=b"\x1f\x8b\x08\x00\xff")
    assert (binary["body_encoding"], binary["body"], binary["body_truncated"]) == ("base64", "H4sIAP8=", False)


def test_an_answer_over_its_read_bound_is_not_parsed() -> None:
    recording = Recording("hook", "POST", "/", "127.0.0.1", 0.0)
    recording.answer_start(200, [(b"content-type", b"application/json; charset=utf-8")])
    recording.answer_chunk(b"[" + b" " * request_log.MAX_ANSWER_READ)
    recording.answer_chunk(b"]")
    assert entry_of(recording, Redactor(), [], frozenset(), 0)["incident_ids"] is None


def test_each_instance_keeps_its_newest_entries(store: Store) -> None:
    store.add_requests([recorded([], instance="busy") for _ in range(7)], kept=5)
    store.add_requests([recorded([], instance="quiet")], kept=5)
    store.add_requests([recorded([], instance="busy") for _ in range(2)], kept=5)
    busy = store.list_requests(instance="busy", limit=100)
    assert [item["id"] for item in busy] == [10, 9, 7, 6, 5]  # newest first; 1-4 went out, oldest first
    assert store.count_requests("quiet") == 1 and store.count_requests() == 6
    assert [item["id"] for item in store.list_requests(instance="busy", before=7, limit=2)] == [6, 5]
    assert store.get_request(9)["instance"] == "busy"  # type: ignore[index]
    assert store.get_request(1) is None and store.get_request("x") is None
    with pytest.raises(ValueError, match="at least 1"):
        store.add_requests([recorded([])], kept=0)


def test_only_incidents_the_request_created_count_as_new(store: Store) -> None:
    """A duplicate delivery is answered with the incident an earlier request created: listed, not new."""
    (earlier,) = store.create_incidents("hook", [{"name": "first delivery"}])
    entry = recorded([], answer=(200, json.dumps([earlier]).encode()))  # started after `earlier` was created
    (fresh,) = store.create_incidents("hook", [{"name": "this delivery"}])
    both = recorded([], answer=(200, json.dumps([earlier, fresh]).encode()))
    both["time"] = entry["time"]
    other = recorded([], answer=(200, json.dumps([fresh]).encode()), instance="elsewhere")
    other["time"] = entry["time"]
    store.add_requests([entry, both, other], kept=10)
    new = {item["id"]: item["new_incident_ids"] for item in store.list_requests(limit=10)}
    assert new == {1: [], 2: [fresh["id"]], 3: []}


def test_the_log_writes_in_batches_and_at_close(store: Store) -> None:
    async def scenario() -> None:
        log = RequestLog(store, kept=100)
        for _ in range(3):
            log.add(recorded([]))
        await asyncio.sleep(request_log.FLUSH_INTERVAL_SECONDS * 4)
        assert store.count_requests() == 3
        log.add(recorded([]))
        await log.aclose()  # before the flush interval is over
        assert store.count_requests() == 4
        log.add(recorded([]))  # after close: not taken
        assert log.pending == []

    asyncio.run(scenario())


def test_past_its_pending_bound_the_log_counts_what_it_drops(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(request_log, "MAX_PENDING", 2)

    async def scenario() -> None:
        log = RequestLog(store, kept=100)
        for _ in range(5):
            log.add(recorded([]))
        assert (len(log.pending), log.dropped) == (2, 3)
        await log.aclose()

    asyncio.run(scenario())
    assert store.count_requests() == 2


def test_a_log_keeping_nothing_is_off(store: Store) -> None:
    log = RequestLog(store, kept=0)
    log.add(recorded([]))  # no running loop needed: nothing is taken
    assert not log.enabled and log.pending == []


def test_the_curl_command_puts_variables_where_values_were_redacted() -> None:
    entry = recorded(
        [
            (b"host", b"127.0.0.1:8080"),
            (b"user-agent", b"GitHub-Hookshot/1"),
            (b"content-type", b"application/json"),
            (b"x-hub-signature-256", b"sha256=abc"),
            (b"x-github-event", b"push"),
            (b"x-api-key", API_KEY.encode()),
        ],
        body=b'{"it\'s": 1}',
        target="/events/github?x=1",
        carriers=frozenset({b"x-api-key"}),
    )
    curl = curl_command(entry, "http://127.0.0.1:8080")
    assert curl.command == (
        "curl -sS -X POST 'http://127.0.0.1:8080/instance/execute/hook/events/github?x=1'"
        " -H 'content-type: application/json' -H 'x-hub-signature-256: '\"$X_HUB_SIGNATURE_256\""
        " -H 'x-github-event: push' -H \"X-API-Key: $XSOAR_LOCAL_API_KEY\""
        " --data-binary '{\"it'\"'\"'s\": 1}'"
    )
    assert curl.variables == ("X_HUB_SIGNATURE_256", "XSOAR_LOCAL_API_KEY")
    assert "stale" in curl.note


def test_a_truncated_body_has_no_curl_command() -> None:
    curl = curl_command(recorded([], body=b"a" * (request_log.MAX_BODY_KEPT + 1)), "http://127.0.0.1:8080")
    assert curl.command is None and f"first {request_log.MAX_BODY_KEPT:,}" in curl.note
