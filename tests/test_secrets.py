"""The instance's secrets never leak: the Basic password, the header token, the signing secret and the TLS key.

For each auth mode, with requests that pass and requests that fail, none of them (nor their JSON-escaped,
base64, hex, URL-quoted or latin-1-mojibake forms, nor their ASCII core) appears in the incidents' rawJSON, the
stored samples and integration context, the logs (debug level, every demisto.debug/info/error call and stderr),
module health, the metrics page or any response body or header. Credentials a failing sender sent are not
echoed either.

In-process apps (httpx.ASGITransport) cover the request matrix; real processes (tests/conftest.py `launch`, with
DEMISTO_LOG_LEVEL=debug) cover stderr, module health, the SQLite store, HTTPS and bad configurations.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import importlib
import json
import re
import ssl
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import demistomock
import httpx
import pytest
import trustme

from tests.conftest import LOOPBACK, REPO, Instance, Launcher, wait_for

pytestmark = pytest.mark.timeout(120)

INTEGRATION_DIR = REPO / "Packs" / "GenericWebhook" / "Integrations" / "GenericWebhook"


def webhook_module() -> ModuleType:
    if str(INTEGRATION_DIR) not in sys.path:
        sys.path.insert(0, str(INTEGRATION_DIR))
    return importlib.import_module("GenericWebhook")


webhook = webhook_module()

USERNAME = "hook-user"
PASSWORD = "S3cr3t-Pa55-🔑"
TOKEN_HEADER = "X-Hook-Token"
TOKEN = "T0k3n-H34d3r-🔑"
SIGNING_SECRET = "S1gn1ng-S3cr3t-🔑"
SW_KEY = "St4nd4rd-W3bh00k-K3y-🔑".encode()
SW_SECRET = "whsec_" + base64.b64encode(SW_KEY).decode()
# What failing senders send: never the configured secret, and never to be echoed either.
WRONG_PASSWORD = "Wr0ng-Pa55-🗝"
WRONG_TOKEN = "Wr0ng-T0k3n-🗝"
WRONG_SECRET = "Wr0ng-S1gn-🗝"


# --- the forms a secret can take --------------------------------------------------------------------------------


def secret_forms(secret: str | bytes) -> set[str]:
    """The secret as text, JSON-escaped, latin-1 mojibake (UTF-8 bytes read as latin-1, as header values are),
    base64, hex and URL-quoted, and its longest ASCII run (which survives every escaping)."""
    raw = secret.encode() if isinstance(secret, str) else secret
    text = raw.decode("utf-8", "replace")
    forms = {
        text,
        json.dumps(text)[1:-1],
        raw.decode("latin-1"),
        json.dumps(raw.decode("latin-1"))[1:-1],
        base64.b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        raw.hex(),
        urllib.parse.quote(text),
    }
    core = max(re.findall(rb"[\x21-\x7e]+", raw), key=len).decode()
    assert len(core) >= 8, f"{secret!r} needs a distinctive ASCII part"
    return forms | {core}


def key_forms(private_key_pem: str) -> set[str]:
    """A PEM private key: every base64 line of its body, and the key's PEM label."""
    lines = [line for line in private_key_pem.splitlines() if line and not line.startswith("-----")]
    assert lines
    return {line for line in lines if len(line) >= 16} | {"PRIVATE KEY"}


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def find_leaks(haystack: str, secrets: dict[str, set[str]]) -> list[str]:
    return [f"{name} as {form!r}" for name, forms in secrets.items() for form in forms if form in haystack]


def assert_no_leaks(where: str, haystack: str, secrets: dict[str, set[str]]) -> None:
    leaks = find_leaks(haystack, secrets)
    assert not leaks, f"{where} holds {leaks}:\n{haystack[:3000]}"


# --- signing ----------------------------------------------------------------------------------------------------


def _mac(key: bytes, message: bytes, algorithm: str = "sha256") -> bytes:
    return hmac.new(key, message, getattr(hashlib, algorithm)).digest()


def signature_headers(scheme: str, body: bytes, secret: str | bytes, *, age: int = 0) -> dict[str, bytes]:
    key = secret.encode() if isinstance(secret, str) else secret
    timestamp = str(int(time.time()) - age).encode()
    if scheme == "Generic HMAC":
        return {"X-Signature": b"sha256=" + _mac(key, body).hex().encode()}
    if scheme == "GitHub":
        return {"X-Hub-Signature-256": b"sha256=" + _mac(key, body).hex().encode()}
    if scheme == "Slack":
        signature = _mac(key, b"v0:" + timestamp + b":" + body).hex().encode()
        return {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": b"v0=" + signature}
    if scheme == "Stripe":
        return {"Stripe-Signature": b"t=" + timestamp + b",v1=" + _mac(key, timestamp + b"." + body).hex().encode()}
    message_id = b"msg_secrets_" + str(time.monotonic_ns()).encode()
    signature = base64.b64encode(_mac(key, message_id + b"." + timestamp + b"." + body))
    return {"webhook-id": message_id, "webhook-timestamp": timestamp, "webhook-signature": b"v1," + signature}


SIGNATURE_HEADER = {
    "Generic HMAC": "X-Signature",
    "GitHub": "X-Hub-Signature-256",
    "Slack": "X-Slack-Signature",
    "Stripe": "Stripe-Signature",
    "Standard Webhooks": "webhook-signature",
}


# --- TLS material -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls() -> dict[str, Any]:
    ca = trustme.CA(organization_name="Secrets test CA")
    leaf = ca.issue_cert(LOOPBACK, "localhost")
    other = ca.issue_cert("other.test")
    return {
        "ca": ca,
        "certificate": "".join(blob.bytes().decode() for blob in leaf.cert_chain_pems),
        "key": leaf.private_key_pem.bytes().decode(),
        "other_key": other.private_key_pem.bytes().decode(),
    }


# --- auth modes and their requests ------------------------------------------------------------------------------


@dataclass
class Attempt:
    """One request: what it sends, and whether it must be accepted."""

    label: str
    headers: dict[str, bytes]
    ok: bool
    body: bytes = b""
    path: str = "/"
    sent_secrets: list[str] = field(default_factory=list)  # credentials a failing sender sent, never echoed


@dataclass
class Mode:
    name: str
    params: dict[str, Any]
    secrets: dict[str, set[str]]
    attempts: Callable[[bytes], list[Attempt]]


def event_body(label: str) -> bytes:
    return json.dumps({"name": f"secrets test {label}", "marker": "visible-marker", "id": label}).encode()


def basic_attempts(body: bytes) -> list[Attempt]:
    return [
        Attempt("right credentials", {"Authorization": basic(USERNAME, PASSWORD)}, ok=True),
        Attempt("no credentials", {}, ok=False),
        Attempt(
            "wrong password", {"Authorization": basic(USERNAME, WRONG_PASSWORD)}, False, sent_secrets=[WRONG_PASSWORD]
        ),
        Attempt("right password, wrong user", {"Authorization": basic("intruder", PASSWORD)}, ok=False),
        Attempt("password as a bearer token", {"Authorization": b"Bearer " + PASSWORD.encode()}, ok=False),
        Attempt("password in another header", {"X-Api-Key": PASSWORD.encode()}, ok=False),
        Attempt("malformed basic", {"Authorization": b"Basic !!" + PASSWORD.encode()}, ok=False),
        Attempt("credentials in the query", {}, ok=False, path=f"/?password={urllib.parse.quote(PASSWORD)}"),
    ]


def header_attempts(body: bytes) -> list[Attempt]:
    return [
        Attempt("right token", {TOKEN_HEADER: TOKEN.encode()}, ok=True),
        Attempt("right token, query copy", {TOKEN_HEADER: TOKEN.encode()}, ok=True, path=f"/in?token={TOKEN}"),
        Attempt("lower-case header name", {TOKEN_HEADER.lower(): TOKEN.encode()}, ok=True),
        Attempt("no token", {}, ok=False),
        Attempt("wrong token", {TOKEN_HEADER: WRONG_TOKEN.encode()}, ok=False, sent_secrets=[WRONG_TOKEN]),
        Attempt("token with spaces", {TOKEN_HEADER: b"  " + TOKEN.encode() + b" x"}, ok=False),
        Attempt("token as a bearer token", {"Authorization": b"Bearer " + TOKEN.encode()}, ok=False),
        Attempt("token in another header", {"X-Other-Token": TOKEN.encode()}, ok=False),
    ]


def signature_attempts(scheme: str, secret: str | bytes, wrong: str | bytes) -> Callable[[bytes], list[Attempt]]:
    def attempts(body: bytes) -> list[Attempt]:
        name = SIGNATURE_HEADER[scheme]
        as_signature = secret if isinstance(secret, bytes) else secret.encode()
        return [
            Attempt("right signature", signature_headers(scheme, body, secret), ok=True),
            Attempt("no signature", {}, ok=False),
            Attempt("wrong secret", signature_headers(scheme, body, wrong), ok=False),
            Attempt(
                "stale timestamp",
                signature_headers(scheme, body, secret, age=3600),
                ok=scheme in ("GitHub", "Generic HMAC"),
            ),
            Attempt(
                "the secret itself as the signature",
                {**signature_headers(scheme, body, secret), name: b"sha256=" + as_signature},
                ok=False,
            ),
        ]

    return attempts


def modes(tls: dict[str, Any]) -> list[Mode]:
    password = {"password": secret_forms(PASSWORD), "basic credentials": {basic(USERNAME, PASSWORD).decode()[6:]}}
    key = {"TLS private key": key_forms(tls["key"])}
    found = [
        Mode("basic", {"credentials": {"identifier": USERNAME, "password": PASSWORD}}, password, basic_attempts),
        Mode(
            "header token",
            {"credentials": {"identifier": f"_header:{TOKEN_HEADER}", "password": TOKEN}},
            {"header token": secret_forms(TOKEN)},
            header_attempts,
        ),
        Mode(
            "basic over TLS",
            {
                "credentials": {"identifier": USERNAME, "password": PASSWORD},
                "certificate": tls["certificate"],
                "key": tls["key"],
            },
            password | key,
            basic_attempts,
        ),
    ]
    for scheme in ("Generic HMAC", "GitHub", "Slack", "Stripe", "Standard Webhooks"):
        standard = scheme == "Standard Webhooks"
        secret: str | bytes = SW_KEY if standard else SIGNING_SECRET
        params = {"signature_scheme": scheme, "signature_secret": SW_SECRET if standard else SIGNING_SECRET}
        if scheme == "Generic HMAC":
            params |= {"signature_header": "X-Signature", "signature_prefix": "sha256="}
        secrets = {"signing secret": secret_forms(SIGNING_SECRET)}
        if standard:
            secrets = {"signing key": secret_forms(SW_KEY), "whsec secret": {SW_SECRET, SW_SECRET[6:]}}
        wrong = WRONG_SECRET.encode() if standard else WRONG_SECRET
        found.append(Mode(f"{scheme} signature", params, secrets, signature_attempts(scheme, secret, wrong)))
    return found


MODE_NAMES = [
    "basic",
    "header token",
    "basic over TLS",
    "Generic HMAC signature",
    "GitHub signature",
    "Slack signature",
    "Stripe signature",
    "Standard Webhooks signature",
]
EXTRA_PARAMS = {"store_samples": "true", "metrics_enabled": "true", "dedup_key": "header:X-Delivery-Id"}


# --- in-process -------------------------------------------------------------------------------------------------


class Logs:
    """Every demisto.debug/info/error call (the integration's logs, masked or not)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.lines: list[str] = []
        monkeypatch.setattr(demistomock, "LOG_LEVEL", "debug")
        for level in ("debug", "info", "error"):
            monkeypatch.setattr(demistomock, level, self._writer(level))

    def _writer(self, level: str) -> Callable[[Any], None]:
        return lambda message: self.lines.append(f"{level.upper()} {message}")

    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Logs:
    return Logs(monkeypatch)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=1)
    yield pool
    pool.shutdown(wait=True)


def run_requests(app: Any, executor: ThreadPoolExecutor, attempts: list[Attempt]) -> list[httpx.Response]:
    async def send_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://webhook.test") as client:
            responses = []
            for number, attempt in enumerate(attempts):
                headers = {"Content-Type": "application/json", "X-Delivery-Id": f"d-{number}", **attempt.headers}
                responses.append(await client.post(attempt.path, content=attempt.body, headers=headers))
            responses.append(await client.get("/metrics", headers=attempts[0].headers))
            responses.append(await client.get("/health"))
            return responses

    responses = asyncio.run(send_all())
    # What waits on a timer (access-log lines, samples and seen keys) is written now.
    for pending in (getattr(app, "log_buffer", None), getattr(app, "sink", None)):
        if pending is not None:
            executor.submit(pending.flush).result(timeout=30)
    executor.submit(lambda: None).result(timeout=30)
    return responses


def response_text(response: httpx.Response) -> str:
    headers = "\n".join(f"{name}: {value}" for name, value in response.headers.multi_items())
    return f"{response.status_code}\n{headers}\n{response.content.decode('utf-8', 'replace')}"


def stored_text(instance: str = "local") -> str:
    """Everything the instance stored on the platform: incidents, integration context, module health."""
    store = demistomock.get_store()
    parts = [
        json.dumps(store.list_incidents(limit=None)),
        json.dumps(store.get_integration_context(instance)[0]),
        json.dumps(store.get_module_health(instance)),
        json.dumps(webhook.fetch_samples()),
        json.dumps([demistomock.RESULTS, demistomock.INCIDENTS], default=str),
    ]
    return "\n".join(parts)


@pytest.mark.parametrize("mode_name", MODE_NAMES)
def test_secrets_never_leak_in_process(mode_name, tls, logs, executor, capsys):
    """
    Given an instance in one auth mode (with samples, dedup and metrics on)
    When events are sent with the right credentials and with every kind of wrong ones (missing, wrong, the secret
         in the wrong place, stale or malformed signatures), then /metrics and /health are read
    Then the right ones create incidents and the wrong ones get 401, and the secret is nowhere: not in rawJSON,
         samples, the integration context, any response body or header, nor any log line at debug level;
         credentials a failing sender sent are not echoed in responses or logs either.
    """
    mode = next(mode for mode in modes(tls) if mode.name == mode_name)
    config = webhook.WebhookConfig.from_params({"longRunningPort": "8000", **EXTRA_PARAMS, **mode.params})
    app = webhook.make_webhook_app(config, executor)
    attempts = []
    for label in [attempt.label for attempt in mode.attempts(b"")]:
        body = event_body(label)  # each attempt signs its own body
        attempt = next(attempt for attempt in mode.attempts(body) if attempt.label == label)
        attempt.body = body
        attempts.append(attempt)
    responses = run_requests(app, executor, attempts)

    for attempt, response in zip(attempts, responses, strict=False):
        expected = 200 if attempt.ok else 401
        assert response.status_code == expected, f"{attempt.label}: {response.status_code} {response.text}"
        if not attempt.ok:
            assert set(response.json()) == {"error", "detail"}
    metrics, health = responses[-2:]
    assert metrics.status_code == 200 and "generic_webhook_requests_total" in metrics.text
    assert health.json() == {"status": "ok"}

    stored = stored_text()
    log_text = logs.text()
    captured = capsys.readouterr()
    # The places searched do hold what the requests sent, so the search below is not vacuous.
    accepted = [attempt for attempt in attempts if attempt.ok]
    assert stored.count("visible-marker") >= len(accepted), stored[:2000]
    assert all(f"secrets test {attempt.label}" in stored for attempt in accepted)
    assert all(f"secrets test {attempt.label}" not in stored for attempt in attempts if not attempt.ok)
    assert webhook.fetch_samples(), "store_samples is on: the samples must be there to be searched"
    assert log_text.count('"POST /') == len(attempts), log_text

    assert_no_leaks("the stored incidents, samples and context", stored, mode.secrets)
    assert_no_leaks("the logs", log_text + captured.out + captured.err, mode.secrets)
    for attempt, response in zip(attempts, responses, strict=False):
        assert_no_leaks(f"the answer to {attempt.label!r}", response_text(response), mode.secrets)
        echoed = {"sent credentials": set().union(*(secret_forms(s) for s in attempt.sent_secrets))}
        assert_no_leaks(f"the answer to {attempt.label!r}", response_text(response), echoed)
        assert_no_leaks(f"the logs after {attempt.label!r}", log_text, echoed)
    assert_no_leaks("/metrics", response_text(metrics), mode.secrets)


def all_secrets(tls: dict[str, Any]) -> dict[str, set[str]]:
    return {
        "password": secret_forms(PASSWORD),
        "header token": secret_forms(TOKEN),
        "signing secret": secret_forms(SIGNING_SECRET),
        "signing key": secret_forms(SW_KEY) | {SW_SECRET, SW_SECRET[6:]},
        "TLS private key": key_forms(tls["key"]),
        "other TLS private key": key_forms(tls["other_key"]),
    }


def bad_configs(tls: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cert, key, other_key = tls["certificate"], tls["key"], tls["other_key"]
    return {
        "key of another certificate": {"certificate": cert, "key": other_key},
        "key without certificate": {"key": key},
        "certificate without key": {"certificate": cert, "credentials": {"identifier": USERNAME, "password": PASSWORD}},
        "garbage key": {
            "certificate": cert,
            "key": f"-----BEGIN PRIVATE KEY-----\n{PASSWORD}\n-----END PRIVATE KEY-----",
        },
        "key pasted as certificate": {"certificate": key, "key": key},
        "bad header name": {"credentials": {"identifier": "_header:Bad Header", "password": TOKEN}},
        "password without user": {"credentials": {"identifier": "", "password": PASSWORD}},
        "header name only": {"credentials": {"identifier": "_header:", "password": TOKEN}},
        "secret without scheme": {"signature_secret": SIGNING_SECRET},
        "unknown scheme": {"signature_scheme": "Nope", "signature_secret": SIGNING_SECRET},
        "non-base64 whsec": {"signature_scheme": "Standard Webhooks", "signature_secret": f"whsec_{SIGNING_SECRET}"},
        "generic without header": {"signature_scheme": "Generic HMAC", "signature_secret": SIGNING_SECRET},
        "ca without tls": {"ca_certificate": key, "credentials": {"identifier": USERNAME, "password": PASSWORD}},
    }


BAD_CONFIGS = [
    "key of another certificate",
    "key without certificate",
    "certificate without key",
    "garbage key",
    "key pasted as certificate",
    "bad header name",
    "password without user",
    "header name only",
    "secret without scheme",
    "unknown scheme",
    "non-base64 whsec",
    "generic without header",
    "ca without tls",
]


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_config_errors_never_show_secrets(case, tls, logs, monkeypatch):
    """
    Given an invalid configuration holding secrets (a key that does not match, garbage PEM, bad header names...)
    When test-module checks it, and the long-running command starts with it and reports it
    Then the error says what is wrong without any secret: not in the message, the logs, nor module health.
    """
    params = {"longRunningPort": "8000", **bad_configs(tls)[case]}
    with pytest.raises(webhook.ConfigError) as raised:
        webhook.test_module(params)
    message = str(raised.value)
    assert message
    secrets = all_secrets(tls)
    assert_no_leaks("the configuration error", message, secrets)

    class Stop(Exception):
        pass

    def stop(seconds: float) -> None:
        raise Stop

    monkeypatch.setattr(webhook.time, "sleep", stop)
    with pytest.raises(Stop):
        webhook.run_long_running(params)
    health = demistomock.get_store().get_module_health("local")
    assert health is not None and health["is_error"]
    assert_no_leaks("module health", json.dumps(health), secrets)
    assert_no_leaks("the logs", logs.text(), secrets)


# --- real processes, debug logging ------------------------------------------------------------------------------


def process_haystacks(instance: Instance, responses: list[httpx.Response]) -> dict[str, str]:
    """Everything a real instance left behind: stderr, what it stored, its answers, its results and temp files."""
    store = instance.store
    temp_files = {
        str(path): path.read_bytes().decode("latin-1") for path in instance.tmpdir.rglob("*") if path.is_file()
    }
    return {
        "stderr (debug level)": instance.stderr(),
        "stored incidents": json.dumps(store.list_incidents(instance=instance.name, limit=None)),
        "integration context (samples, seen keys)": json.dumps(store.get_integration_context(instance.name)[0]),
        "module health": json.dumps(instance.health()),
        "results file": json.dumps(instance.results()),
        "responses": "\n".join(response_text(response) for response in responses),
        "temp files": json.dumps(temp_files),
    }


def check_process(
    instance: Instance, responses: list[httpx.Response], secrets: dict[str, set[str]], accepted: int
) -> dict[str, str]:
    instance.stop()  # SIGTERM: pending samples and seen keys are written, the process exits
    haystacks = process_haystacks(instance, responses)
    assert haystacks["stored incidents"].count("visible-marker") == accepted, haystacks["stored incidents"][:2000]
    assert "visible-marker" in haystacks["integration context (samples, seen keys)"]
    assert " DEBUG " in haystacks["stderr (debug level)"] and '"POST / HTTP/1.1"' in haystacks["stderr (debug level)"]
    for where, text in haystacks.items():
        assert_no_leaks(where, text, secrets)
    return haystacks


def test_secrets_never_leak_from_a_real_process_over_https(launch: Launcher, tls):
    """
    Given a real instance over HTTPS (certificate + key params) with Basic auth and GitHub signatures, samples,
          dedup and metrics, logging at debug level
    When senders with the right credentials and with wrong ones (wrong password, the password of another user,
         a wrong or missing signature) POST events, read /metrics, and one speaks plain HTTP to the TLS port
    Then the right ones create incidents, the others get 401; then, stopped, the instance left the password, the
         signing secret and the TLS key nowhere: stderr, stored incidents, samples, module health, answers, results,
         or a file in its temp folder (the key files live only while the TLS context loads)
    """
    instance = launch(
        {
            "credentials": {"identifier": USERNAME, "password": PASSWORD},
            "certificate": tls["certificate"],
            "key": tls["key"],
            "signature_scheme": "GitHub",
            "signature_secret": SIGNING_SECRET,
            **EXTRA_PARAMS,
        }
    )
    context = ssl.create_default_context()
    tls["ca"].configure_trust(context)
    url = f"https://{LOOPBACK}:{instance.port}/"
    right = {"Authorization": basic(USERNAME, PASSWORD)}
    cases = [
        ("right", right, True),
        ("wrong password", {"Authorization": basic(USERNAME, WRONG_PASSWORD)}, False),
        ("another user", {"Authorization": basic("intruder", PASSWORD)}, False),
        ("no credentials", {}, False),
        ("no signature", right, False),
        ("wrong signature", right, False),
        ("right again", right, True),
    ]
    responses = []
    with httpx.Client(verify=context, timeout=10) as client:
        instance.wait_serving(client, scheme="https")
        for number, (label, headers, ok) in enumerate(cases):
            body = event_body(label)
            signed = {} if label == "no signature" else signature_headers("GitHub", body, SIGNING_SECRET)
            if label == "wrong signature":
                signed = signature_headers("GitHub", body, WRONG_SECRET)
            response = client.post(url, content=body, headers={**headers, **signed, "X-Delivery-Id": f"d-{number}"})
            assert response.status_code == (200 if ok else 401), f"{label}: {response.text}"
            responses.append(response)
        responses.append(client.get(url + "metrics", headers=right))
        assert responses[-1].status_code == 200
    with httpx.Client(timeout=5) as plain, pytest.raises(httpx.TransportError):
        plain.post(f"http://{LOOPBACK}:{instance.port}/", json={"name": "plain"}, headers=right)
    secrets = {
        "password": secret_forms(PASSWORD),
        "basic credentials": {basic(USERNAME, PASSWORD).decode()[6:]},
        "signing secret": secret_forms(SIGNING_SECRET),
        "TLS private key": key_forms(tls["key"]),
        "wrong password sent": secret_forms(WRONG_PASSWORD),
    }
    haystacks = check_process(instance, responses, secrets, accepted=2)
    assert "(HTTPS)" in haystacks["module health"]


def test_secrets_never_leak_from_a_real_process_with_header_token(launch: Launcher):
    """
    Given a real instance with a header token and Standard Webhooks signatures, samples and metrics, at debug level
    When events are sent with the right token and signature, with a wrong token, the token in the wrong header or
         in the query string, and a wrong signature
    Then only the right one is accepted, and after it stops the token and the signing key are nowhere it left
         anything (stderr, store, samples, module health, answers, temp files)
    """
    instance = launch(
        {
            "credentials": {"identifier": f"_header:{TOKEN_HEADER}", "password": TOKEN},
            "signature_scheme": "Standard Webhooks",
            "signature_secret": SW_SECRET,
            **EXTRA_PARAMS,
        }
    )
    right = {TOKEN_HEADER: TOKEN.encode()}
    cases = [
        ("right", right, "/", True),
        ("right, token also in the query", right, f"/hooks?token={urllib.parse.quote(TOKEN)}", True),
        ("wrong token", {TOKEN_HEADER: WRONG_TOKEN.encode()}, "/", False),
        ("token in another header", {"X-Api-Key": TOKEN.encode()}, "/", False),
        ("token only in the query", {}, f"/?token={urllib.parse.quote(TOKEN)}", False),
        ("wrong signature", right, "/", False),
    ]
    responses = []
    with httpx.Client(timeout=10) as client:
        instance.wait_serving(client)
        for number, (label, headers, path, ok) in enumerate(cases):
            body = event_body(label)
            key = WRONG_SECRET.encode() if label == "wrong signature" else SW_KEY
            signed = signature_headers("Standard Webhooks", body, key)
            response = client.post(
                instance.base_url + path, content=body, headers={**headers, **signed, "X-Delivery-Id": f"d-{number}"}
            )
            assert response.status_code == (200 if ok else 401), f"{label}: {response.text}"
            responses.append(response)
        responses.append(client.get(instance.base_url + "/metrics", headers=right))
        assert responses[-1].status_code == 200
    secrets = {
        "header token": secret_forms(TOKEN),
        "signing key": secret_forms(SW_KEY) | {SW_SECRET, SW_SECRET[6:]},
        "wrong token sent": secret_forms(WRONG_TOKEN),
    }
    check_process(instance, responses, secrets, accepted=2)


def test_secrets_never_leak_when_a_real_process_cannot_start(launch: Launcher, tls):
    """
    Given a real instance whose TLS key does not match its certificate, with a password and a signing secret set
    When the long-running command starts with it, at debug level
    Then module health reports the mismatch, and neither health nor stderr holds any secret or key
    """
    instance = launch(
        {
            "credentials": {"identifier": USERNAME, "password": PASSWORD},
            "certificate": tls["certificate"],
            "key": tls["other_key"],
            "signature_scheme": "Slack",
            "signature_secret": SIGNING_SECRET,
        }
    )

    def reported() -> dict[str, Any] | None:
        health = instance.health()
        return health if health and health["is_error"] else None

    health = wait_for(reported, timeout=20, what="module health error", alive=instance.exit_reason)
    assert "does not match" in health["message"], health
    instance.stop()
    secrets = {
        "password": secret_forms(PASSWORD),
        "signing secret": secret_forms(SIGNING_SECRET),
        "TLS private key": key_forms(tls["other_key"]),
    }
    for where, text in process_haystacks(instance, []).items():
        assert_no_leaks(where, text, secrets)
