"""The attack review's findings (issue 12), each reproduced through real sockets against a real instance process.

Each test starts the integration the platform's way (tests/conftest.py `launch`); `make test` runs them with the
instance on the dev venv (httptools + uvloop) and again on the image's stack (h11 on asyncio). Every test sends the
attack and checks, next to it, that a normal sender's request is still answered as before.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import json
import re
import socket
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest

from tests.conftest import LOOPBACK, Instance, Launcher, wait_for

pytestmark = pytest.mark.timeout(120)

MIB = 1024 * 1024
TOKEN = {"identifier": "_header:X-Token", "password": "right-token"}
TOKEN_HEADER = {"X-Token": "right-token"}


def serving(launch: Launcher, **params: object) -> Instance:
    instance = launch({"credentials": TOKEN, **params})
    with httpx.Client() as client:
        instance.wait_serving(client)
    return instance


def peak_rss(pid: int) -> int:
    """The process's peak resident set size (VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def realistic_deliveries(name: str) -> list[tuple[str, bytes, dict[str, str]]]:
    """One delivery of each body shape the integration takes, each naming its incidents after `name`."""
    event = json.dumps({"name": f"{name} (object)"}).encode()
    ndjson = "".join(json.dumps({"name": f"{name} (line {n})"}) + "\n" for n in (1, 2)).encode()
    return [
        ("object", event, {"Content-Type": "application/json"}),
        ("array", json.dumps([{"name": f"{name} (item {n})"} for n in (1, 2)]).encode(), {}),
        ("ndjson", ndjson, {"Content-Type": "application/x-ndjson"}),
        ("gzip", gzip.compress(event), {"Content-Type": "application/json", "Content-Encoding": "gzip"}),
        (
            "form",
            urllib.parse.urlencode({"name": f"{name} (form)"}).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        ),
        ("text", f"{name} (text)".encode(), {"Content-Type": "text/plain"}),
    ]


def normal_delivery_works(instance: Instance, name: str) -> None:
    """A normal sender's deliveries right after the attack, one of each body shape: 200 and the incidents stored
    (a text/plain body's incident has the default name, so it is counted)."""
    before = len(instance.store.list_incidents())
    for shape, body, headers in realistic_deliveries(name):
        response = httpx.post(
            instance.base_url + f"/{shape}", content=body, headers={**TOKEN_HEADER, **headers}, timeout=30
        )
        assert response.status_code == 200, f"{shape}: {response.text}"
    names = [incident["name"] for incident in instance.store.list_incidents()]
    assert len(names) == before + 8
    assert {f"{name} (object)", f"{name} (item 2)", f"{name} (line 2)", f"{name} (form)"} <= set(names)


# --- finding 5: many gzip members ---


def test_a_body_of_many_gzip_members_is_decoded_in_linear_time(launch: Launcher) -> None:
    """
    Given an instance with a 40 MiB body limit
    When 32 MiB of empty gzip members (1.7 million of them) is posted
    Then it is answered 400 empty_body within the client's 60 s (linear: about 3 s; the quadratic decoder took
         3 s for 2 MiB, 48 s for 8 MiB and some 13 minutes for this), and a normal delivery right after is created.
    """
    instance = serving(launch, max_body_mb="40")
    member = gzip.compress(b"")
    body = member * (32 * MIB // len(member))
    headers = {**TOKEN_HEADER, "Content-Encoding": "gzip", "Content-Type": "application/json"}
    response = httpx.post(instance.base_url + "/", content=body, headers=headers, timeout=60)
    assert (response.status_code, response.json()["error"]) == (400, "empty_body")
    normal_delivery_works(instance, "after many members")


# --- finding 6: max_items during the parse ---


@pytest.mark.parametrize("shape", ["ndjson", "array"])
def test_max_items_refuses_a_huge_batch_before_building_it(launch: Launcher, shape: str) -> None:
    """
    Given an instance with the default limits (max_items 10,000; 10 MiB decompressed)
    When a small gzip body that inflates to 9.7 MiB of empty objects (3.4 million of them) is posted, as NDJSON
         lines or as one JSON array
    Then it is answered 413 too_many_items and the instance's peak memory grows by less than 100 MiB (building
         the objects first took 1.4 GiB and 12 s on the event loop); a normal delivery right after is created.
    """
    instance = serving(launch)
    count = 3_400_000
    if shape == "ndjson":
        text, content_type = b"{}\n" * count, "application/x-ndjson"
    else:
        text, content_type = b"[" + b"{}," * (count - 1) + b"{}]", "application/json"
    body = gzip.compress(text, compresslevel=9)
    assert len(body) < 100_000
    before = peak_rss(instance.process.pid)
    headers = {**TOKEN_HEADER, "Content-Encoding": "gzip", "Content-Type": content_type}
    response = httpx.post(instance.base_url + "/", content=body, headers=headers, timeout=60)
    assert (response.status_code, response.json()["error"]) == (413, "too_many_items")
    growth = peak_rss(instance.process.pid) - before
    assert growth < 100 * MIB, f"peak RSS grew by {growth / MIB:.0f} MiB"
    normal_delivery_works(instance, f"after a huge {shape}")


# --- finding 4: X-Forwarded-For ---


def raw_post(port: int, headers: list[tuple[str, str]], *, source: str = LOOPBACK) -> tuple[int, dict]:
    """One POST over a raw socket from `source` (a loopback address), with exactly these header lines."""
    body = b'{"name": "forwarded"}'
    lines = ["POST / HTTP/1.1", f"Host: {LOOPBACK}", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    with socket.create_connection((LOOPBACK, port), timeout=30, source_address=(source, 0)) as sock:
        sock.sendall(("\r\n".join([*lines, "Connection: close", "", ""])).encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


def test_the_last_forwarded_for_line_is_the_one_the_proxy_added(launch: Launcher) -> None:
    """
    Given an instance allowing only 10.0.0.0/8, reached from loopback (the reroute's address)
    When a request carries two X-Forwarded-For lines, the caller's own `10.9.8.7` and then the one a proxy added
    Then the address checked is the last line's last entry, 198.51.100.7: 403 forbidden (only the first line was
         read, so the caller's own line got it in); a one-line header inside the list still gets in.
    """
    instance = serving(launch, allowed_cidrs="10.0.0.0/8")
    token = ("X-Token", "right-token")
    two_lines = [token, ("X-Forwarded-For", "10.9.8.7"), ("X-Forwarded-For", "198.51.100.7")]
    assert raw_post(instance.port, two_lines) == (
        403,
        {"error": "forbidden", "detail": "Address 198.51.100.7 is not in allowed_cidrs."},
    )
    assert raw_post(instance.port, [token, ("X-Forwarded-For", "198.51.100.7, 10.9.8.7")])[0] == 200


def test_forwarded_for_is_believed_only_from_the_trusted_proxies(launch: Launcher) -> None:
    """
    Given an instance with rate_limit_per_minute 2 and trusted_proxies 127.0.0.1 (the reroute's address only)
    When a caller on another address (127.0.0.2, as a local tunnel that passes headers on) sends requests each
         with a different forged X-Forwarded-For
    Then they share the caller's own bucket: the third gets 429 rate_limited (every loopback peer was believed,
         so each forged address had a bucket of its own); requests from 127.0.0.1 are still counted by their
         X-Forwarded-For entry, one bucket per sender.
    """
    instance = serving(launch, rate_limit_per_minute="2", trusted_proxies="127.0.0.1")
    token = ("X-Token", "right-token")
    forged = [
        raw_post(instance.port, [token, ("X-Forwarded-For", f"10.0.0.{n}")], source="127.0.0.2") for n in (1, 2, 3)
    ]
    assert [status for status, _ in forged] == [200, 200, 429]
    assert forged[2][1]["error"] == "rate_limited"
    senders = [raw_post(instance.port, [token, ("X-Forwarded-For", f"10.0.1.{n}")]) for n in (1, 2, 3)]
    assert [status for status, _ in senders] == [200, 200, 200]


def test_an_empty_trusted_proxies_believes_no_forwarded_for(launch: Launcher) -> None:
    """
    Given an instance allowing only 10.0.0.0/8 with trusted_proxies empty
    When a loopback caller sends X-Forwarded-For 10.9.8.7
    Then the address checked is the socket peer: 403 naming 127.0.0.1.
    """
    instance = serving(launch, allowed_cidrs="10.0.0.0/8", trusted_proxies="")
    status, answer = raw_post(instance.port, [("X-Token", "right-token"), ("X-Forwarded-For", "10.9.8.7")])
    assert (status, answer["detail"]) == (403, "Address 127.0.0.1 is not in allowed_cidrs.")


# --- findings 3 and 10: duplicate detection ---

SW_KEY = bytes(range(32))
SW_SECRET = "whsec_" + base64.b64encode(SW_KEY).decode()
SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


def standard_webhooks_headers(body: bytes, family: str = "webhook") -> dict[str, str]:
    message_id, timestamp = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", str(int(time.time()))
    signature = hmac.new(SW_KEY, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {
        f"{family}-id": message_id,
        f"{family}-timestamp": timestamp,
        f"{family}-signature": "v1," + base64.b64encode(signature).decode(),
    }


def slack_headers(body: bytes) -> dict[str, str]:
    timestamp = str(int(time.time()))
    signature = hmac.new(SLACK_SECRET.encode(), f"v0:{timestamp}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": f"v0={signature}"}


def post(instance: Instance, body: bytes, headers: dict[str, str]) -> httpx.Response:
    response = httpx.post(instance.base_url + "/", content=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response


def ids(response: httpx.Response) -> list[str]:
    """The incident ids an answer names (a duplicate is answered with a summary of what the first one created)."""
    return [incident["id"] for incident in response.json()]


def stored_names(instance: Instance) -> list[str]:
    return sorted(incident["name"] for incident in instance.store.list_incidents())


def test_a_standard_webhooks_replay_under_the_other_header_family_is_a_duplicate(launch: Launcher) -> None:
    """
    Given an instance verifying Standard Webhooks with dedup_key header:webhook-id
    When a signed delivery (webhook-* headers) is captured and re-sent within the tolerance with its headers
         renamed to svix-* (which the signature check also accepts)
    Then the replay is recognised as the same delivery: one incident, and the replay's answer is the first one's
         (the key was read from the absent webhook-id header, so every replay was a new incident).
    """
    instance = launch(
        {"signature_scheme": "Standard Webhooks", "signature_secret": SW_SECRET, "dedup_key": "header:webhook-id"}
    )
    with httpx.Client() as client:
        instance.wait_serving(client)
    body = json.dumps({"name": "sw delivery", "type": "invoice.paid"}).encode()
    headers = {"Content-Type": "application/json", **standard_webhooks_headers(body)}
    first = post(instance, body, headers)
    renamed = {key.replace("webhook-", "svix-"): value for key, value in headers.items()}
    replay = post(instance, body, renamed)
    assert ids(replay) == ids(first)
    assert stored_names(instance) == ["sw delivery"]


def test_a_slack_form_replayed_as_text_plain_is_a_duplicate(launch: Launcher) -> None:
    """
    Given an instance verifying Slack signatures with dedup_key payload.id
    When a signed form body (`payload=<json>`) is re-sent within the tolerance as text/plain (Content-Type is
         not signed, and a text body has no `payload.id`)
    Then it is recognised as a replay of the signed message: one incident (it was created again). A new signed
         delivery of the same event is still recognised by its key, and a different event is created.
    """
    instance = launch({"signature_scheme": "Slack", "signature_secret": SLACK_SECRET, "dedup_key": "payload.id"})
    with httpx.Client() as client:
        instance.wait_serving(client)
    body = b"payload=" + urllib.parse.quote(json.dumps({"id": "A1", "type": "block_actions"})).encode()
    form = {"Content-Type": "application/x-www-form-urlencoded", **slack_headers(body)}
    first = post(instance, body, form)
    replay = post(instance, body, {**form, "Content-Type": "text/plain"})
    assert ids(replay) == ids(first)
    assert len(instance.store.list_incidents()) == 1
    other = b"payload=" + urllib.parse.quote(json.dumps({"id": "A2", "type": "block_actions"})).encode()
    post(instance, other, {"Content-Type": "application/x-www-form-urlencoded", **slack_headers(other)})
    assert len(instance.store.list_incidents()) == 2


def test_a_signed_request_replayed_within_the_tolerance_is_a_duplicate_without_a_dedup_key(launch: Launcher) -> None:
    """
    Given an instance verifying Stripe signatures, with no dedup_key
    When a signed delivery is re-sent as captured (within the timestamp tolerance)
    Then the replay creates nothing and gets the first answer; a new delivery of the same body, signed anew with
         another timestamp, is a new event.
    """
    secret = "whsec_stripe_test_signing_secret"
    instance = launch({"signature_scheme": "Stripe", "signature_secret": secret})
    with httpx.Client() as client:
        instance.wait_serving(client)
    body = json.dumps({"id": "evt_1", "name": "stripe event"}).encode()

    def stripe_headers(timestamp: int) -> dict[str, str]:
        signature = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
        return {"Content-Type": "application/json", "Stripe-Signature": f"t={timestamp},v1={signature}"}

    now = int(time.time())
    first = post(instance, body, stripe_headers(now))
    assert ids(post(instance, body, stripe_headers(now))) == ids(first)
    assert len(instance.store.list_incidents()) == 1
    post(instance, body, stripe_headers(now - 1))
    assert len(instance.store.list_incidents()) == 2


def test_an_anonymous_instance_keeps_each_senders_dedup_keys_apart(launch: Launcher) -> None:
    """
    Given an instance with no credentials and no signature, dedup_key id, reached through the reroute (loopback,
          the caller's address in X-Forwarded-For)
    When sender A posts {id: evt-1} and then sender B, on another address, posts its own {id: evt-1}
    Then B's event is created and B's answer holds B's incident only (B got A's incident id, name and severity,
         and B's event was suppressed); A's own retry is still a duplicate answered with A's incident.
    """
    instance = launch({"dedup_key": "id"})
    with httpx.Client() as client:
        instance.wait_serving(client)

    def send(address: str, name: str) -> httpx.Response:
        event = json.dumps({"id": "evt-1", "name": name, "severity": 4}).encode()
        return post(instance, event, {"Content-Type": "application/json", "X-Forwarded-For": address})

    first = send("203.0.113.1", "A's event")
    other = send("198.51.100.2", "B's event")
    assert [incident["name"] for incident in other.json()] == ["B's event"]
    assert other.json()[0]["id"] != first.json()[0]["id"]
    assert ids(send("203.0.113.1", "A's retry")) == ids(first)
    assert stored_names(instance) == ["A's event", "B's event"]


def test_senders_sharing_a_token_are_one_principal_for_dedup(launch: Launcher) -> None:
    """
    Given an instance with a header token and dedup_key id
    When two addresses that both hold the token post the same id
    Then the second is a duplicate of the first (the model: one token, one principal), as documented.
    """
    instance = serving(launch, dedup_key="id")
    event = json.dumps({"id": "evt-1", "name": "first"}).encode()
    first = post(
        instance, event, {**TOKEN_HEADER, "Content-Type": "application/json", "X-Forwarded-For": "203.0.113.1"}
    )
    second = post(
        instance, event, {**TOKEN_HEADER, "Content-Type": "application/json", "X-Forwarded-For": "198.51.100.2"}
    )
    assert ids(second) == ids(first)
    assert stored_names(instance) == ["first"]


# --- finding 7: unsigned slow bodies from one address ---


def in_flight(instance: Instance) -> int:
    metrics = httpx.get(instance.base_url + "/metrics", timeout=30).text
    found = re.search(r"^\w*in_flight_requests (\d+)", metrics, re.MULTILINE)
    assert found, metrics
    return int(found.group(1))


def answered(sock: socket.socket) -> bool:
    """Whether the server has written something on (or closed) this connection, without waiting."""
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    finally:
        sock.setblocking(True)
    return True


def test_slow_unsigned_bodies_from_one_address_cannot_fill_max_in_flight(launch: Launcher) -> None:
    """
    Given a signature-only instance (GitHub) with max_in_flight 40: a body is read before it can be verified
    When one address (127.0.0.2) opens 40 requests announcing 100 KB bodies and trickles nothing more
    Then at most 16 of them are admitted (one address's share of unverified requests) and the rest get 503
         overloaded at once; a signed delivery from another address is created (all 40 were admitted, and the
         real sender got 503 until their body deadlines passed).
    """
    secret = "github-webhook-secret-0123456789"
    instance = launch(
        {"signature_scheme": "GitHub", "signature_secret": secret, "max_in_flight": "40", "metrics_enabled": "true"}
    )
    with httpx.Client() as client:
        instance.wait_serving(client)
    head = (
        f"POST / HTTP/1.1\r\nHost: {LOOPBACK}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n"
        'X-Hub-Signature-256: sha256=00\r\n\r\n{"name": "'
    ).encode()
    attackers = []
    try:
        for _ in range(40):
            sock = socket.create_connection((LOOPBACK, instance.port), timeout=30, source_address=("127.0.0.2", 0))
            attackers.append(sock)
            sock.sendall(head)

        def settled() -> tuple[int, int] | None:
            refused = sum(answered(sock) for sock in attackers)
            admitted = in_flight(instance)
            return (admitted, refused) if admitted + refused == len(attackers) else None

        admitted, refused = wait_for(settled, timeout=30, what="every attack request admitted or refused")
        assert (admitted, refused) == (16, 24)
        assert b" 503 " in attackers[-1].recv(65536).split(b"\r\n", 1)[0] + b" "
        body = json.dumps({"name": "signed delivery"}).encode()
        signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        transport = httpx.HTTPTransport(local_address="127.0.0.3")
        with httpx.Client(transport=transport) as sender:
            response = sender.post(
                instance.base_url + "/",
                content=body,
                headers={"Content-Type": "application/json", "X-Hub-Signature-256": f"sha256={signature}"},
                timeout=30,
            )
        assert response.status_code == 200, response.text
        assert "signed delivery" in stored_names(instance)
    finally:
        for sock in attackers:
            sock.close()
