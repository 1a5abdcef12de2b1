"""Property and fuzz tests: no request makes the Generic Webhook answer 500, leak a traceback or stop serving.

The property, for every request and every instance configuration (no auth, Basic, header token, each signature
scheme, samples + dedup, small limits + field mapping):

- the status is 2xx or 4xx, or 503/429 (with Retry-After) only; never 500, never an exception out of the app;
- every non-2xx body is JSON `{"error": str, "detail": str}` without traceback text;
- the app keeps serving: a normal request right after gets 200, and nothing logged holds a traceback.

The in-process tests drive the ASGI app directly (the scope uvicorn would build, on a SQLite store as the
platform uses), so they control the raw header bytes; one test fuzzes a real instance process over HTTP.

`make test` runs the default profile: 2,800 generated examples, a sweep of nesting depths and 400 requests to a
real process, in about 40 s. The long run, 36 times as many (100,800 examples), is on demand, on each stack: the
in-process tests on the interpreter that runs pytest, the real process on `--instance-python`:

    HYPOTHESIS_PROFILE=fuzz-long .venv/bin/python -m pytest tests/test_fuzz.py
    HYPOTHESIS_PROFILE=fuzz-long .venv-image/bin/python -m pytest tests/test_fuzz.py \
        --instance-python .venv-image/bin/python

(`FUZZ_PROCESS_REQUESTS=5000` also lengthens the real-process run, and `FUZZ_SEED` changes its requests.)

The bugs these tests found each have a regression test below the properties, named after the behaviour.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import hmac
import importlib
import json
import os
import random
import re
import socket
import sys
import time
import traceback
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import demistomock
import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import note as hypothesis_note
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from tests.conftest import LOOPBACK, REPO, Launcher

INTEGRATION_DIR = REPO / "Packs" / "GenericWebhook" / "Integrations" / "GenericWebhook"

# --- hypothesis profiles ---------------------------------------------------------------------------------------

_HEALTH_CHECKS = [
    HealthCheck.function_scoped_fixture,  # the SQLite store and log capture are shared by a test's examples
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
    HealthCheck.large_base_example,
]
settings.register_profile("fuzz", deadline=None, suppress_health_check=_HEALTH_CHECKS, print_blob=True)
settings.register_profile("fuzz-long", deadline=None, suppress_health_check=_HEALTH_CHECKS, print_blob=True)
PROFILE = "fuzz-long" if os.environ.get("HYPOTHESIS_PROFILE") == "fuzz-long" else "fuzz"
LONG_FACTOR = 36 if PROFILE == "fuzz-long" else 1  # 36 x 2,800 = 100,800 examples


def fuzz_settings(examples: int) -> settings:
    """The profile's settings with this test's share of the examples (the default run totals about 2,800)."""
    return settings(settings.get_profile(PROFILE), max_examples=examples * LONG_FACTOR)


pytestmark = pytest.mark.timeout(300 * LONG_FACTOR)


def webhook_module() -> ModuleType:
    if str(INTEGRATION_DIR) not in sys.path:
        sys.path.insert(0, str(INTEGRATION_DIR))
    return importlib.import_module("GenericWebhook")


webhook = webhook_module()

# --- instance configurations and their credentials ---------------------------------------------------------------

USER = "fuzz-user"
PASSWORD = "fuzz-pässword"
TOKEN_HEADER = "X-Webhook-Token"
TOKEN = "fuzz-token"
SECRET = "fuzz-signing-secret"
SW_KEY = b"fuzz-standard-webhooks-key"
SW_SECRET = "whsec_" + base64.b64encode(SW_KEY).decode()
DELIVERY_HEADER = "X-Delivery-Id"

CONFIGS: dict[str, dict[str, Any]] = {
    "open": {},
    "basic": {"credentials": {"identifier": USER, "password": PASSWORD}},
    "header-token": {"credentials": {"identifier": f"_header:{TOKEN_HEADER}", "password": TOKEN}},
    "generic-hmac": {
        "signature_scheme": "Generic HMAC",
        "signature_secret": SECRET,
        "signature_header": "X-Signature",
        "signature_prefix": "sha256=",
    },
    "generic-hmac-b64": {
        "signature_scheme": "Generic HMAC",
        "signature_secret": SECRET,
        "signature_header": "X-Sig",
        "signature_algorithm": "sha512",
        "signature_encoding": "base64",
    },
    "github": {"signature_scheme": "GitHub", "signature_secret": SECRET},
    "slack": {"signature_scheme": "Slack", "signature_secret": SECRET},
    "stripe": {"signature_scheme": "Stripe", "signature_secret": SECRET},
    "standard-webhooks": {"signature_scheme": "Standard Webhooks", "signature_secret": SW_SECRET},
    "samples-dedup-path": {"store_samples": "true", "dedup_key": "id", "metrics_enabled": "true"},
    "samples-dedup-header": {"store_samples": "true", "dedup_key": f"header:{DELIVERY_HEADER}"},
    "mapped-small-limits": {
        "max_body_mb": "0.01",
        "max_items": "3",
        "name_path": "alert.title",
        "type_path": "kind",
        "occurred_path": "ts",
        "severity_path": "level",
        "severity_map": "low=1,high=3",
        "details_path": "alert",
        "store_samples": "true",
        "dedup_key": "alert.id",
    },
}
SIGNED = [name for name, params in CONFIGS.items() if params.get("signature_scheme")]

# The header names each configuration reads for auth or signatures (what the `garbage` auth mode fills in).
AUTH_HEADERS: dict[str, list[str]] = {
    "open": [],
    "basic": ["authorization"],
    "header-token": [TOKEN_HEADER.lower()],
    "generic-hmac": ["x-signature"],
    "generic-hmac-b64": ["x-sig"],
    "github": ["x-hub-signature-256"],
    "slack": ["x-slack-signature", "x-slack-request-timestamp"],
    "stripe": ["stripe-signature"],
    "standard-webhooks": ["webhook-id", "webhook-timestamp", "webhook-signature", "svix-id", "svix-signature"],
    "samples-dedup-path": [],
    "samples-dedup-header": [DELIVERY_HEADER.lower()],
    "mapped-small-limits": [],
}
AUTH_MODES = ("right", "right", "right", "wrong", "stale", "absent", "garbage")

Headers = list[tuple[bytes, bytes]]


def _hmac(key: bytes, message: bytes, algorithm: str = "sha256") -> bytes:
    return hmac.new(key, message, getattr(hashlib, algorithm)).digest()


def auth_headers(config: str, body: bytes, mode: str = "right", now: float | None = None) -> Headers:
    """The credentials and signature headers a sender configured for `config` sends with `body`.

    `wrong` uses a wrong password/secret, `stale` a timestamp an hour old, `absent` sends nothing."""
    if mode == "absent":
        return []
    params = CONFIGS[config]
    wrong = mode == "wrong"
    now = time.time() if now is None else now
    timestamp = str(int(now - (3600 if mode == "stale" else 0))).encode()
    headers: Headers = []
    if config == "basic":
        password = "not-the-password" if wrong else PASSWORD
        encoded = base64.b64encode(f"{USER}:{password}".encode()).decode()
        headers.append((b"authorization", f"Basic {encoded}".encode()))
    elif config == "header-token":
        headers.append((TOKEN_HEADER.lower().encode(), b"not-the-token" if wrong else TOKEN.encode()))
    scheme = params.get("signature_scheme")
    secret = b"not-the-secret" if wrong else SECRET.encode()
    if scheme == "Generic HMAC":
        algorithm = params.get("signature_algorithm", "sha256")
        digest = _hmac(secret, body, algorithm)
        value = base64.b64encode(digest) if params.get("signature_encoding") == "base64" else digest.hex().encode()
        headers.append(
            (params["signature_header"].lower().encode(), params.get("signature_prefix", "").encode() + value)
        )
    elif scheme == "GitHub":
        headers.append((b"x-hub-signature-256", b"sha256=" + _hmac(secret, body).hex().encode()))
    elif scheme == "Slack":
        signature = _hmac(secret, b"v0:" + timestamp + b":" + body).hex().encode()
        headers += [(b"x-slack-request-timestamp", timestamp), (b"x-slack-signature", b"v0=" + signature)]
    elif scheme == "Stripe":
        signature = _hmac(secret, timestamp + b"." + body).hex().encode()
        headers.append((b"stripe-signature", b"t=" + timestamp + b",v1=" + signature))
    elif scheme == "Standard Webhooks":
        key = b"not-the-key" if wrong else SW_KEY
        message_id = b"msg_" + os.urandom(6).hex().encode()
        signature = base64.b64encode(_hmac(key, message_id + b"." + timestamp + b"." + body))
        headers += [
            (b"webhook-id", message_id),
            (b"webhook-timestamp", timestamp),
            (b"webhook-signature", b"v1," + signature),
        ]
    return headers


# --- an in-process ASGI driver -----------------------------------------------------------------------------------


@dataclass
class Req:
    """One request as uvicorn hands it to the app: lower-case header names, the body in `chunks` pieces."""

    body: bytes = b""
    headers: Headers = field(default_factory=list)
    method: str = "POST"
    path: str = "/"
    query: bytes = b""
    chunks: int = 1
    client: str = "127.0.0.1"
    set_length: bool = True  # add Content-Length as a server would, unless the headers carry one

    def blob(self) -> bytes:
        """Everything the sender controls, to tell echoed input from text the app made up."""
        return b"\n".join([self.method.encode(), self.path.encode("utf-8", "replace"), self.query, self.body])


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    error: BaseException | None = None
    trace: str = ""

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class LogCapture:
    """demisto.debug/info/error calls, as lines (the integration logs through them on its worker thread)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for level in ("debug", "info", "error"):
            monkeypatch.setattr(demistomock, level, self._writer(level))

    def _writer(self, level: str) -> Callable[[Any], None]:
        def write(message: Any) -> None:
            self.lines.append(f"{level.upper()} {message}")

        return write

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


# Hypothesis raises the recursion limit while a test runs; requests run under the limit the process has.
RECURSION_LIMIT = sys.getrecursionlimit()
PARSE_LIMIT_SEARCH = 4 * RECURSION_LIMIT  # the JSON parser's own limit is below this on every stack


@contextlib.contextmanager
def production_recursion_limit() -> Iterator[None]:
    current = sys.getrecursionlimit()
    sys.setrecursionlimit(RECURSION_LIMIT)
    try:
        yield
    finally:
        sys.setrecursionlimit(current)


class Harness:
    """The app of one configuration, built as the long-running command builds it, on its own worker thread."""

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self.config = webhook.WebhookConfig.from_params({"longRunningPort": "8000", **CONFIGS[name]})
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"fuzz-{name}")
        self.app = webhook.make_webhook_app(self.config, self.executor)
        self.loop = loop

    def request(self, req: Req) -> Reply:
        with production_recursion_limit():
            reply = self.loop.run_until_complete(asyncio.wait_for(self._call(req), 60))
            self.executor.submit(lambda: None).result(timeout=30)  # the logs of this request are written
        return reply

    def normal_request(self) -> Reply:
        body = json.dumps({"name": "fuzz probe", "alert": {"title": "probe"}}).encode()
        headers = [(b"content-type", b"application/json"), *auth_headers(self.name, body)]
        return self.request(Req(body=body, headers=headers))

    async def _call(self, req: Req) -> Reply:
        headers = [(name.lower(), value) for name, value in req.headers]
        if req.set_length and not any(name == b"content-length" for name, _ in headers):
            headers.append((b"content-length", str(len(req.body)).encode()))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": req.method,
            "scheme": "http",
            "path": req.path,
            "raw_path": req.path.encode("utf-8", "surrogateescape"),
            "query_string": req.query,
            "root_path": "",
            "headers": headers,
            "client": (req.client, 40000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        size = max(1, -(-len(req.body) // max(req.chunks, 1)))
        pieces = [req.body[i : i + size] for i in range(0, len(req.body), size)] or [b""]
        incoming = [{"type": "http.request", "body": piece, "more_body": True} for piece in pieces]
        incoming[-1]["more_body"] = False
        answered = asyncio.Event()
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            if incoming:
                return incoming.pop(0)
            await answered.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                answered.set()

        error: BaseException | None = None
        trace = ""
        try:
            await self.app(scope, receive, send)
        except Exception as exc:  # what uvicorn would log as "Exception in ASGI application"
            error, trace = exc, traceback.format_exc()
        start = next((message for message in sent if message["type"] == "http.response.start"), None)
        status = start["status"] if start else 500
        response_headers = {
            key.decode("latin-1").lower(): value.decode("latin-1") for key, value in (start or {}).get("headers", [])
        }
        body = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
        return Reply(status, response_headers, body, error, trace)

    def close(self) -> None:
        self.executor.shutdown(wait=True)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    for task in asyncio.all_tasks(loop):
        task.cancel()
    loop.run_until_complete(asyncio.sleep(0))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


@pytest.fixture(scope="module")
def harnesses(loop: asyncio.AbstractEventLoop) -> Iterator[dict[str, Harness]]:
    built = {name: Harness(name, loop) for name in CONFIGS}
    yield built
    for harness in built.values():
        harness.close()


@pytest.fixture(autouse=True)
def _flush_samples(harnesses: dict[str, Harness]) -> Iterator[None]:
    """Samples and seen keys wait up to a second before the integration context write: write them before the
    test ends, into this test's store."""
    yield
    for harness in harnesses.values():
        sink = getattr(harness.app, "sink", None)
        if sink is not None:
            harness.executor.submit(sink.flush).result(timeout=30)


@pytest.fixture
def logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LogCapture:
    """Each test runs on its own SQLite store file (as the platform's) with debug logging captured."""
    demistomock.use_store(tmp_path / "store.db")
    monkeypatch.setattr(demistomock, "LOG_LEVEL", "debug")
    capture = LogCapture()
    capture.install(monkeypatch)
    return capture


def note(text: str) -> None:
    """hypothesis.note, also callable from the tests that do not use hypothesis."""
    with contextlib.suppress(InvalidArgument):
        hypothesis_note(text)


# --- the property ------------------------------------------------------------------------------------------------

TRACEBACK_MARKERS = ("Traceback", 'File "')


def check_reply(req: Req, reply: Reply, log_lines: list[str]) -> None:
    """Asserts the property for one answer and the lines logged while it was made."""
    assert reply.error is None, f"the app raised {reply.error!r}:\n{reply.trace}"
    status = reply.status
    assert 200 <= status < 300 or 400 <= status < 500 or status in (429, 503), f"status {status}: {reply.text()}"
    if status in (429, 503):
        assert reply.headers.get("retry-after", "").isdigit(), reply.headers
    # One request at a time on a healthy store: never overloaded, and creation never fails.
    assert status != 503, reply.text()
    if status >= 300 and req.method != "HEAD":
        assert reply.headers.get("content-type", "").startswith("application/json"), reply.headers
        payload = json.loads(reply.body)
        assert isinstance(payload, dict) and set(payload) == {"error", "detail"}, payload
        assert isinstance(payload["error"], str) and isinstance(payload["detail"], str), payload
        sent = req.blob() + b"".join(name + b":" + value for name, value in req.headers)
        for marker in TRACEBACK_MARKERS:
            assert marker not in reply.text() or marker.encode() in sent, reply.text()
    for line in log_lines:
        assert "Traceback" not in line, line


def error_word(reply: Reply) -> str:
    """The `error` of a refusal, "" for a success."""
    return json.loads(reply.body)["error"] if reply.status >= 300 else ""


JSON_HEADERS: Headers = [(b"content-type", b"application/json")]


def exercise(harness: Harness, logs: LogCapture, req: Req) -> Reply:
    """Sends `req`, checks the property, then checks that a normal request still gets 200."""
    note(f"config={harness.name} request={req!r}")
    reply = harness.request(req)
    note(f"reply={reply.status} {reply.body[:500]!r}")
    check_reply(req, reply, logs.take())
    after = harness.normal_request()
    assert after.status == 200, f"a normal request after that got {after.status}: {after.text()}"
    check_reply(Req(), after, logs.take())
    return reply


# --- strategies --------------------------------------------------------------------------------------------------

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
FIELD_NAMES = (
    "name",
    "type",
    "severity",
    "occurred",
    "labels",
    "details",
    "customFields",
    "dbotMirrorId",
    "rawJson",
    "raw_json",
    "headers",
    "request_headers",
    "id",
    "alert",
    "title",
    "kind",
    "ts",
    "level",
    "payload",
    "text",
)
SPECIAL_STRINGS = (
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "critical",
    "0.5",
    "2024-05-01T12:00:00Z",
    "9999-99-99",
    "",
    " ",
    "\u2028",
    "\x00",
    "\ud800",
    "🔥" * 20,
    "{",
    "[]",
    '{"a": 1}',
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**300), max_value=10**300),
    st.integers(min_value=10**300, max_value=10**4200),  # past float range, within int parsing's digit limit
    st.floats(),  # NaN and ±Infinity too: Python's json writes and reads them
    st.text(st.characters(codec=None, exclude_categories=())),  # any code point, lone surrogates included
    st.sampled_from(SPECIAL_STRINGS),
)
json_keys = st.sampled_from(FIELD_NAMES) | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(json_keys, children, max_size=6),
    max_leaves=25,
)
events = st.dictionaries(json_keys, json_values, max_size=8)

CONTENT_TYPES = (
    "application/json",
    "application/json; charset=utf-8",
    "application/JSON;charset=ISO-8859-1",
    "application/x-ndjson",
    "application/ndjson; charset=utf-8",
    "application/jsonl",
    "application/x-jsonlines",
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=utf-8",
    "text/plain",
    "Text/Plain ; charset=utf-8",
    "text/html",
    "multipart/form-data; boundary=xyz",
    "application/xml",
    "*/*",
    ";",
    "",
)
content_types = st.one_of(
    st.sampled_from(CONTENT_TYPES),
    st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=40),
)
CONTENT_ENCODINGS = ("", "identity", "gzip", "x-gzip", "GZIP", " gzip ", "deflate", "br", "compress", "gzip, br", "*")
content_encodings = st.one_of(
    st.sampled_from(CONTENT_ENCODINGS),
    st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=20),
)
header_names = st.one_of(
    st.sampled_from(
        [
            "content-type",
            "content-encoding",
            "content-length",
            "authorization",
            "x-webhook-token",
            "x-hub-signature-256",
            "x-slack-signature",
            "x-slack-request-timestamp",
            "stripe-signature",
            "webhook-id",
            "webhook-timestamp",
            "webhook-signature",
            "svix-id",
            "svix-timestamp",
            "svix-signature",
            "x-signature",
            "x-sig",
            "x-delivery-id",
            "x-forwarded-for",
            "user-agent",
            "host",
            "cookie",
            "transfer-encoding",
            "expect",
            "headers",
        ]
    ),
    st.text(TOKEN_CHARS, min_size=1, max_size=30),
)
# Header values as an HTTP/1.1 server passes them on: any byte but CR, LF and NUL.
header_values = st.one_of(
    st.binary(max_size=80).map(lambda value: bytes(b for b in value if b not in b"\r\n\x00")),
    st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=80).map(lambda value: value.encode("latin-1")),
    st.sampled_from([b"", b" ", b"0", b"-1", b"\xb2", b"1" * 400, b"sha256=", b"v0=", b"t=,v1=", b"v1,", b"Basic "]),
)
header_lists = st.lists(st.tuples(header_names.map(str.encode), header_values), max_size=12)
paths = st.one_of(
    st.sampled_from(["/", "/alerts", "/alerts/siem", "/health", "/metrics", "//", "/%2e%2e/", "/a b"]),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=40).map(lambda text: "/" + text),
)
queries = st.one_of(st.just(b""), st.binary(max_size=40).map(lambda value: value.replace(b"#", b"")))
auth_modes = st.sampled_from(AUTH_MODES)


def content_type_header(content_type: str | None) -> Headers:
    return [] if content_type is None else [(b"content-type", content_type.encode("latin-1"))]


def encoding_header(encoding: str) -> Headers:
    return [(b"content-encoding", encoding.encode("latin-1"))] if encoding else []


def with_auth(config: str, body: bytes, mode: str, data: st.DataObject) -> Headers:
    if mode == "garbage":
        return [(name.encode(), data.draw(header_values, label=name)) for name in AUTH_HEADERS[config]]
    return auth_headers(config, body, mode)


def compress(body: bytes, method: str) -> tuple[bytes, str]:
    if method == "gzip":
        return gzip.compress(body), "gzip"
    if method == "zlib":
        return zlib.compress(body), "deflate"
    if method == "raw-deflate":
        packer = zlib.compressobj(wbits=-15)
        return packer.compress(body) + packer.flush(), "deflate"
    return body, ""


def serialize(value: Any, shape: str, ensure_ascii: bool) -> tuple[bytes, str]:
    """A JSON value as one of the body shapes the webhook takes, with the matching Content-Type."""

    def dumps(item: Any) -> bytes:
        return json.dumps(item, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")

    if shape == "ndjson":
        items = value if isinstance(value, list) else [value]
        return b"\n".join(dumps(item) for item in items) + b"\n", "application/x-ndjson"
    if shape == "form":
        text = json.dumps(value, ensure_ascii=True)
        quoted = "".join(c if c.isalnum() else "%" + "%".join(f"{b:02X}" for b in c.encode()) for c in text)
        return b"source=fuzz&payload=" + quoted.encode(), "application/x-www-form-urlencoded"
    if shape == "text":
        return dumps(value), "text/plain"
    if shape == "array":
        return dumps(value if isinstance(value, list) else [value]), "application/json"
    return dumps(value), "application/json"


# --- in-process properties ---------------------------------------------------------------------------------------


@fuzz_settings(500)
@given(
    config=st.sampled_from(list(CONFIGS)),
    body=st.one_of(
        st.binary(max_size=3000), st.sampled_from([b"", b" ", b"\x00", b"{", b"[", b"null", b"\xef\xbb\xbf"])
    ),
    content_type=st.none() | content_types,
    encoding=st.sampled_from(["", "", "gzip", "deflate", "identity"]),
    mode=auth_modes,
    chunks=st.integers(1, 5),
    data=st.data(),
)
def test_arbitrary_bytes(harnesses, logs, config, body, content_type, encoding, mode, chunks, data):
    """Any body bytes, with any Content-Type and the configuration's credentials (right, wrong, stale, garbage)."""
    harness = harnesses[config]
    headers = content_type_header(content_type) + encoding_header(encoding) + with_auth(config, body, mode, data)
    exercise(harness, logs, Req(body=body, headers=headers, chunks=chunks))


@fuzz_settings(600)
@given(
    config=st.sampled_from(list(CONFIGS)),
    value=json_values | st.lists(events, max_size=5) | events,
    shape=st.sampled_from(["json", "json", "array", "ndjson", "form", "text"]),
    ensure_ascii=st.booleans(),
    method=st.sampled_from(["none", "none", "gzip", "zlib", "raw-deflate"]),
    mode=st.sampled_from(["right", "right", "right", "wrong"]),
    data=st.data(),
)
def test_arbitrary_json(harnesses, logs, config, value, shape, ensure_ascii, method, mode, data):
    """Any JSON value (nested, unicode, lone surrogates, huge ints, NaN/Infinity, field names the webhook reads)
    in every body shape, optionally compressed."""
    harness = harnesses[config]
    body, content_type = serialize(value, shape, ensure_ascii)
    body, encoding = compress(body, method)
    headers = content_type_header(content_type) + encoding_header(encoding) + with_auth(config, body, mode, data)
    if config == "samples-dedup-header":
        headers.append((DELIVERY_HEADER.lower().encode(), data.draw(st.sampled_from([b"d-1", b"d-2", b""]))))
    exercise(harness, logs, Req(body=body, headers=headers))


@fuzz_settings(350)
@given(
    config=st.sampled_from(list(CONFIGS)),
    event=events,
    content_type=st.none() | content_types,
    encoding=content_encodings,
    extra=header_lists,
    mode=auth_modes,
    client=st.sampled_from(["127.0.0.1", "::1", "203.0.113.9", "not-an-ip", ""]),
    data=st.data(),
)
def test_random_headers(harnesses, logs, config, event, content_type, encoding, extra, mode, client, data):
    """Random header sets: any names and values (repeats, Content-Length lies, X-Forwarded-For, odd encodings)."""
    harness = harnesses[config]
    body = json.dumps(event).encode()
    if encoding.strip().lower() in ("gzip", "x-gzip"):
        body = gzip.compress(body)
    headers = content_type_header(content_type) + encoding_header(encoding) + with_auth(config, body, mode, data)
    position = data.draw(st.integers(0, len(headers)))
    headers[position:position] = extra
    exercise(harness, logs, Req(body=body, headers=headers, client=client))


def _bomb(size: int) -> bytes:
    return gzip.compress(b"0" * size, compresslevel=9)


BOMBS = {64 * 1024: _bomb(64 * 1024), 11 * 1024 * 1024: _bomb(11 * 1024 * 1024)}  # inflated size -> gzip


@fuzz_settings(300)
@given(
    config=st.sampled_from(["open", "basic", "github", "samples-dedup-path", "mapped-small-limits"]),
    payload=st.one_of(events.map(lambda event: json.dumps(event).encode()), st.binary(max_size=500)),
    method=st.sampled_from(["gzip", "zlib", "raw-deflate"]),
    damage=st.sampled_from(
        ["none", "truncate", "flip", "append", "prepend", "twice", "members", "empty", "header-only", "bomb"]
    ),
    label=st.sampled_from(["right", "right", "swapped", "x-gzip"]),
    data=st.data(),
)
def test_compressed_and_broken_bodies(harnesses, logs, config, payload, method, damage, label, data):
    """gzip and deflate bodies, whole or damaged (truncated, a byte flipped, garbage around, double-compressed,
    several gzip members, bombs), labelled right or wrong."""
    harness = harnesses[config]
    body, encoding = compress(payload, method)
    if damage == "truncate":
        body = body[: data.draw(st.integers(0, max(len(body) - 1, 0)))]
    elif damage == "flip" and body:
        position = data.draw(st.integers(0, len(body) - 1))
        body = body[:position] + bytes([body[position] ^ data.draw(st.integers(1, 255))]) + body[position + 1 :]
    elif damage == "append":
        body += data.draw(st.binary(min_size=1, max_size=20))
    elif damage == "prepend":
        body = data.draw(st.binary(min_size=1, max_size=20)) + body
    elif damage == "twice":
        body = compress(body, method)[0]
    elif damage == "members":
        body += gzip.compress(payload)
    elif damage == "empty":
        body = b""
    elif damage == "header-only":
        body = body[:10]
    elif damage == "bomb":
        inflated = data.draw(st.sampled_from(sorted(BOMBS)))
        body, encoding = BOMBS[inflated], "gzip"
    if label == "swapped":
        encoding = "deflate" if encoding == "gzip" else "gzip"
    elif label == "x-gzip" and encoding == "gzip":
        encoding = "x-gzip"
    headers = [(b"content-type", b"application/json"), *encoding_header(encoding), *auth_headers(config, body)]
    reply = exercise(harness, logs, Req(body=body, headers=headers, chunks=data.draw(st.integers(1, 3))))
    if damage == "bomb" and label != "swapped" and inflated > harness.config.max_body_bytes:
        assert reply.status == 413, reply.text()


def nested(depth: int, kind: str) -> str:
    if kind == "arrays":
        return "[" * depth + "]" * depth
    if kind == "objects":
        return '{"a":' * depth + "1" + "}" * depth
    return '{"a":[' * (depth // 2) + "0" + "]}" * (depth // 2)


NESTING_PLACES = (
    "top",
    "array-item",
    "customFields",
    "details",
    "rawJson",
    "rawJson-string",
    "labels",
    "alert",
    "level",
    "ndjson",
    "form",
    "text",
)


# The levels nested_body() adds around the JSON it nests, counting the event's own object (1 where not listed).
WRAPPER_LEVELS = {"top": 0, "array-item": 0, "text": 0, "labels": 3}


def nested_body(depth: int, kind: str, place: str) -> tuple[bytes, str]:
    """JSON nested `depth` levels at `place`: at top level, in a field the webhook reads, in an NDJSON line, in
    a form field (parsed as JSON, as Slack's `payload`), in a text/plain body."""
    inner = nested(depth, kind)
    if place == "form":
        return b"source=x&payload=" + inner.replace("{", "%7B").replace("}", "%7D").encode(), webhook.FORM_TYPE
    if place == "text":
        return inner.encode(), "text/plain"
    if place == "top":
        text = inner
    elif place == "array-item":
        text = f"[{inner}]"
    elif place == "labels":
        text = f'{{"labels": [{{"type": "t", "value": {inner}}}]}}'
    elif place == "ndjson":
        return f'{{"a": 1}}\n{{"x": {inner}}}\n'.encode(), "application/x-ndjson"
    elif place == "rawJson-string":
        text = json.dumps({"rawJson": inner})
    else:
        text = f'{{"{place}": {inner}}}'
    return text.encode(), "application/json"


@fuzz_settings(150)
@given(
    config=st.sampled_from(["open", "samples-dedup-path", "mapped-small-limits", "github"]),
    depth=st.sampled_from([1, 10, 100, 500, 5_000, 100_000]).map(lambda depth: ("levels", depth))
    | st.integers(-5, 150).map(lambda offset: ("under the recursion limit by", offset)),
    kind=st.sampled_from(["arrays", "objects", "mixed"]),
    place=st.sampled_from([*NESTING_PLACES, "gzip"]),
)
def test_deeply_nested_json(harnesses, logs, config, depth, kind, place):
    """Nesting from a few levels to 100,000, also just under the recursion limit (negative `depth` draws are
    offsets from it), at top level or in the fields the webhook reads, in JSON, NDJSON, form, text and gzip."""
    how, number = depth
    depth = number if how == "levels" else RECURSION_LIMIT - number
    harness = harnesses[config]
    body, content_type = nested_body(depth, kind, "top" if place == "gzip" else place)
    encoding = ""
    if place == "gzip":
        body, encoding = gzip.compress(body), "gzip"
    headers = [(b"content-type", content_type.encode()), *encoding_header(encoding), *auth_headers(config, body)]
    exercise(harness, logs, Req(body=body, headers=headers))


def parse_limit(harness: Harness) -> int:
    """The smallest nesting depth the app refuses as invalid JSON (the parser ran out of stack), by bisection.
    Python 3.11's parser stops at the interpreter's recursion limit; 3.12's (the image's) at its C recursion
    limit, a few hundred levels further."""
    low, high = 1, PARSE_LIMIT_SEARCH
    while low < high:
        middle = (low + high) // 2
        body, _ = nested_body(middle, "objects", "top")
        reply = harness.request(Req(body=body, headers=[(b"content-type", b"application/json")]))
        if b"invalid_json" in reply.body:
            high = middle
        else:
            low = middle + 1
    return low


def test_nesting_depth_boundary_sweep(harnesses, logs):
    """
    Given the webhook's depth limit (MAX_JSON_DEPTH) and the depth its JSON parser gives up at (set by the stack)
    When events nested at every depth around each are POSTed, in each field the webhook reads
    Then the property holds at each depth; within the limit the event is stored (200), past it the answer is 400
         too_deep (or invalid_json where the parser gives up; a form field or text/plain body the parser gives
         up on is kept as text), in every configuration that reads, maps or stores those fields.
    """
    limit = parse_limit(harnesses["open"])
    assert webhook.MAX_JSON_DEPTH < limit < PARSE_LIMIT_SEARCH, limit
    logs.take()
    around_max = range(webhook.MAX_JSON_DEPTH - 4, webhook.MAX_JSON_DEPTH + 4)
    for config in ("open", "mapped-small-limits"):  # the latter maps, samples and dedups
        harness = harnesses[config]
        for place in NESTING_PLACES:
            for depth in [*around_max, *range(limit - 60, limit + 4)]:
                body, content_type = nested_body(depth, "objects", place)
                req = Req(body=body, headers=[(b"content-type", content_type.encode())])
                reply = harness.request(req)
                check_reply(req, reply, logs.take())
                answer = (reply.status, error_word(reply))
                if place == "rawJson-string" or reply.status == 413:
                    continue  # a rawJson string is outside the depth limit (the property holds)
                if depth + WRAPPER_LEVELS.get(place, 1) <= webhook.MAX_JSON_DEPTH:
                    assert answer == (200, ""), f"{config} {place} {depth}: {reply.text()}"
                elif place in ("form", "text") and depth >= limit - 5 and answer == (200, ""):
                    pass  # not JSON to the parser: the text is the event
                else:
                    assert answer in ((400, "too_deep"), (400, "invalid_json")), f"{config} {place} {depth}: {answer}"
        assert harness.normal_request().status == 200


def _utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


INVALID_UTF8 = (b"\xff", b"\xfe", b"\xc3\x28", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82")


@fuzz_settings(200)
@given(
    config=st.sampled_from(["open", "header-token", "stripe", "samples-dedup-path"]),
    event=events,
    bad=st.sampled_from(INVALID_UTF8) | st.binary(min_size=1, max_size=4).filter(lambda value: not _utf8(value)),
    where=st.floats(0, 1),
    content_type=st.sampled_from(["application/json", "application/x-ndjson", webhook.FORM_TYPE, "text/plain", ""]),
    bom=st.sampled_from([b"", b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"]),
)
def test_invalid_utf8(harnesses, logs, config, event, bad, where, content_type, bom):
    """Invalid UTF-8 anywhere in an otherwise valid body (and UTF-8/UTF-16 byte-order marks) gets a 4xx."""
    harness = harnesses[config]
    text = json.dumps(event).encode()
    cut = int(len(text) * where)
    body = bom + text[:cut] + bad + text[cut:]
    headers = [(b"content-type", content_type.encode()), *auth_headers(config, body)]
    reply = exercise(harness, logs, Req(body=body, headers=headers))
    if not _utf8(body):
        assert 400 <= reply.status < 500, reply.text()


timestamps = st.one_of(
    st.integers(-(10**20), 10**20).map(lambda number: str(number).encode()),
    st.sampled_from([b"", b" ", b"now", b"1e9", b"1_700_000_000", b"\xb9", b"+1", b"0x10", b"1" + b"0" * 400]),
    st.just(None),
).map(lambda value: str(int(time.time())).encode() if value is None else value)
hexes = st.one_of(st.binary(max_size=64).map(lambda value: value.hex().encode()), header_values)
b64s = st.one_of(st.binary(max_size=64).map(base64.b64encode), header_values)


@fuzz_settings(350)
@given(config=st.sampled_from(SIGNED), event=events, data=st.data())
def test_random_signature_headers(harnesses, logs, config, event, data):
    """Random signature headers of each scheme: prefixes, hex/base64 or not, timestamps of any size and form,
    several signatures, the svix- names, or the right signature of a different body."""
    harness = harnesses[config]
    body = json.dumps(event).encode()
    draw = data.draw
    if config in ("generic-hmac", "generic-hmac-b64"):
        name = CONFIGS[config]["signature_header"].lower().encode()
        headers = [(name, draw(st.sampled_from([b"", b"sha256="])) + draw(hexes | b64s))]
    elif config == "github":
        headers = [(b"x-hub-signature-256", draw(st.sampled_from([b"sha256=", b"sha1=", b""])) + draw(hexes))]
    elif config == "slack":
        headers = [
            (b"x-slack-signature", draw(st.sampled_from([b"v0=", b"v1=", b""])) + draw(hexes)),
            (b"x-slack-request-timestamp", draw(timestamps)),
        ]
    elif config == "stripe":
        parts = draw(
            st.lists(
                st.one_of(
                    timestamps.map(lambda value: b"t=" + value),
                    hexes.map(lambda value: b"v1=" + value),
                    hexes.map(lambda value: b"v0=" + value),
                    header_values,
                ),
                max_size=5,
            )
        )
        headers = [(b"stripe-signature", b",".join(parts))]
    else:
        prefix = draw(st.sampled_from([b"webhook-", b"svix-"]))
        signatures = draw(st.lists(st.one_of(b64s.map(lambda value: b"v1," + value), header_values), max_size=4))
        headers = [
            (prefix + b"id", draw(header_values)),
            (prefix + b"timestamp", draw(timestamps)),
            (prefix + b"signature", b" ".join(signatures)),
        ]
    if draw(st.booleans()):
        headers = [pair for pair in headers if draw(st.booleans(), label=f"keep {pair[0]!r}")] + auth_headers(
            config, b"another body"
        )
    headers.append((b"content-type", b"application/json"))
    reply = exercise(harness, logs, Req(body=body, headers=headers))
    assert reply.status in (401, 429), reply.text()


@fuzz_settings(150)
@given(
    config=st.sampled_from(["open", "basic", "samples-dedup-path"]),
    method=st.sampled_from(["GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "POST"])
    | st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=10),
    path=paths,
    query=queries,
    body=st.binary(max_size=100),
    mode=auth_modes,
    data=st.data(),
)
def test_methods_paths_and_queries(harnesses, logs, config, method, path, query, body, mode, data):
    """Any method on any path with any query string, including /health and /metrics."""
    harness = harnesses[config]
    headers = with_auth(config, body, mode, data)
    exercise(harness, logs, Req(body=body, headers=headers, method=method, path=path, query=query))


# Keys the webhook reads: events without them are stored whatever they hold.
RESERVED_KEYS = frozenset(
    {"name", "type", "severity", "occurred", "labels", "details", "customFields", "dbotMirrorId", "rawJson"}
    | {"raw_json", "headers", "request_headers"}
)
LINE_BREAKS = "\u2028\u2029\x85"  # line breaks to str.splitlines() that json.dumps leaves raw in strings


@fuzz_settings(200)
@given(
    items=st.lists(
        st.dictionaries(
            st.text(max_size=10).filter(lambda key: key not in RESERVED_KEYS),
            st.recursive(
                st.none()
                | st.booleans()
                | st.integers(-(10**400), 10**400)
                | st.floats(allow_nan=False, allow_infinity=False)
                | st.text(st.characters(codec=None, exclude_categories=())),
                lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children),
                max_leaves=15,
            ),
            max_size=6,
        ),
        min_size=1,
        max_size=6,
    ),
    shape=st.sampled_from(["array", "ndjson"]),
    ensure_ascii=st.booleans(),
    method=st.sampled_from(["none", "gzip", "raw-deflate"]),
)
def test_valid_events_are_stored_as_sent(harnesses, logs, items, shape, ensure_ascii, method):
    """
    Given events that are JSON objects of any content (no incident fields, so nothing can be refused)
    When they are POSTed as an array or as NDJSON, compressed or not
    Then the answer is 200 with one incident per event, and each rawJSON holds the event exactly as sent.
    """
    assume(ensure_ascii or not _has_surrogates(items))
    harness = harnesses["open"]
    body, content_type = serialize(items, shape, ensure_ascii)
    body, encoding = compress(body, method)
    req = Req(body=body, headers=[(b"content-type", content_type.encode()), *encoding_header(encoding)])
    reply = exercise(harness, logs, req)
    assert reply.status == 200, reply.text()
    created = json.loads(reply.body)
    assert len(created) == len(items)
    for incident, item in zip(created, items, strict=True):
        raw = json.loads(incident["rawJSON"])
        assert set(raw) == {*item, "headers"}
        assert {key: value for key, value in raw.items() if key != "headers"} == item


def _has_surrogates(value: Any) -> bool:
    text = json.dumps(value, ensure_ascii=True)
    return re.search(r"\\ud[89a-f]", text) is not None


# --- regressions: the bugs the properties found, each pinned by the answer it now gets ----------------------------


@pytest.mark.parametrize("config", ["slack", "stripe", "standard-webhooks"])
def test_huge_signature_timestamp_is_malformed_not_500(harnesses, logs, config):
    """
    Given a Slack, Stripe or Standard Webhooks instance
    When the signature timestamp is an integer beyond float range (1 followed by 400 zeros)
    Then the answer is 401 signature_malformed (it was an OverflowError: 500).
    """
    huge = b"1" + b"0" * 400
    headers = {
        "slack": [(b"x-slack-signature", b"v0=00"), (b"x-slack-request-timestamp", huge)],
        "stripe": [(b"stripe-signature", b"t=" + huge + b",v1=00")],
        "standard-webhooks": [(b"webhook-id", b"m"), (b"webhook-timestamp", huge), (b"webhook-signature", b"v1,AA==")],
    }[config]
    reply = exercise(harnesses[config], logs, Req(body=b"{}", headers=[*JSON_HEADERS, *headers]))
    assert (reply.status, error_word(reply)) == (401, "signature_malformed"), reply.text()


@pytest.mark.parametrize("config", ["open", "mapped-small-limits"])
def test_huge_occurred_is_invalid_field_not_500(harnesses, logs, config):
    """
    Given an instance reading `occurred` (or mapping it from `ts` with occurred_path)
    When the event's time is an integer too big for a float after dividing by 1000 (1 followed by 312 zeros)
    Then the answer is 400 invalid_field (it was an OverflowError: 500).
    """
    body = json.dumps({"occurred": 10**312, "ts": 10**312}).encode()
    reply = exercise(harnesses[config], logs, Req(body=body, headers=JSON_HEADERS))
    assert (reply.status, error_word(reply)) == (400, "invalid_field"), reply.text()


@pytest.mark.parametrize("field_name", ["name", "type"])
def test_lone_surrogate_in_name_or_type_is_stored_replaced(harnesses, logs, field_name):
    """
    Given an event whose name or type holds a lone surrogate escape (valid JSON, not encodable as UTF-8)
    When it is POSTed
    Then it is stored (200) with U+FFFD in its place and the text around kept (the store refused it: 503 and
         /health 503, for the whole batch).
    """
    body = f'{{"{field_name}": "before\\ud800after"}}'.encode()
    reply = exercise(harnesses["open"], logs, Req(body=body, headers=JSON_HEADERS))
    assert reply.status == 200, reply.text()
    stored = json.loads(reply.body)[0][field_name]
    assert stored.startswith("before\ufffd") and stored.endswith("\ufffdafter"), ascii(stored)
    assert set(stored.removeprefix("before").removesuffix("after")) == {"\ufffd"}, ascii(stored)
    assert json.loads(json.loads(reply.body)[0]["rawJSON"])[field_name] == "before\ud800after"


@pytest.mark.parametrize("place", [place for place in NESTING_PLACES if place != "rawJson-string"])
def test_nesting_deeper_than_the_limit_is_too_deep(harnesses, logs, place):
    """
    Given JSON nested at the depth limit (MAX_JSON_DEPTH levels, counting the event's own object) and one deeper,
         at top level, in each field the webhook reads, in an NDJSON line, in a form field, in a text/plain body
    When each is POSTed
    Then the first is stored (200) and the deeper gets 400 too_deep, whatever the body format: also JSON in a form
         field right at the depth the parser gives up at (was parsed, then failed to serialize back: 500).
    """
    harness = harnesses["open"]
    limit = webhook.MAX_JSON_DEPTH - WRAPPER_LEVELS.get(place, 1)
    for depth, expected in ((limit, (200, "")), (limit + 1, (400, "too_deep"))):
        body, content_type = nested_body(depth, "objects", place)
        reply = exercise(harness, logs, Req(body=body, headers=[(b"content-type", content_type.encode())]))
        assert (reply.status, error_word(reply)) == expected, f"depth {depth}: {reply.text()}"


def test_form_field_json_at_the_parser_limit_is_too_deep(harnesses, logs):
    """
    Given a form body whose `payload` field holds JSON nested from 60 levels under the depth the parser gives up
         at to just under it (where the old code parsed it, then could not serialize it back: 500)
    When each is POSTed
    Then each gets 400 too_deep.
    """
    harness = harnesses["open"]
    limit = parse_limit(harness)
    logs.take()
    for kind in ("objects", "arrays"):
        for depth in range(limit - 60, limit - 3):
            body, content_type = nested_body(depth, kind, "form")
            req = Req(body=body, headers=[(b"content-type", content_type.encode())])
            reply = harness.request(req)
            check_reply(req, reply, logs.take())
            assert (reply.status, error_word(reply)) == (400, "too_deep"), f"{kind} {depth}: {reply.text()}"
    assert harness.normal_request().status == 200


def test_sample_failure_does_not_fail_requests(loop, logs, monkeypatch):
    """
    Given an instance storing samples, whose sample bookkeeping raises for one event
    When that event and two more are POSTed one after the other
    Then all three get 200 (the failure failed the batch after its incidents were created: 503 and a duplicating
         retry, and every later batch until the failing sample aged out).
    """
    harness = Harness("samples-dedup-path", loop)  # its own: the failure stays in the instance
    original = webhook.sample_key

    def sample_key(incident: dict[str, Any]) -> str:
        if incident.get("name") == "cannot be sampled":
            raise RuntimeError("sample bookkeeping failed")
        return original(incident)

    monkeypatch.setattr(webhook, "sample_key", sample_key)
    try:
        names = ["cannot be sampled", "next 1", "next 2"]
        replies = [
            harness.request(Req(body=json.dumps({"name": name}).encode(), headers=JSON_HEADERS)) for name in names
        ]
        harness.executor.submit(harness.app.sink.flush).result(timeout=30)
    finally:
        harness.close()
    assert [reply.status for reply in replies] == [200, 200, 200], [reply.text() for reply in replies]


@pytest.mark.parametrize("char", list(LINE_BREAKS), ids=["U+2028", "U+2029", "U+0085"])
def test_ndjson_keeps_unicode_line_breaks_inside_strings(harnesses, logs, char):
    """
    Given an NDJSON line whose string holds U+2028, U+2029 or U+0085 raw (as JSON.stringify writes them)
    When it is POSTed
    Then it is one event, stored as sent (200): NDJSON lines end at "\\n" only (it was split there: 400).
    """
    body = json.dumps({"text": f"a{char}b"}, ensure_ascii=False).encode() + b"\n" + b'{"text": "c"}\n'
    reply = exercise(harnesses["open"], logs, Req(body=body, headers=[(b"content-type", b"application/x-ndjson")]))
    assert reply.status == 200, reply.text()
    raws = [json.loads(incident["rawJSON"]) for incident in json.loads(reply.body)]
    assert [raw["text"] for raw in raws] == [f"a{char}b", "c"]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("shape", ["json", "ndjson", "rawJson-string"])
def test_nan_and_infinity_are_invalid_json(harnesses, logs, constant, shape):
    """
    Given a body holding NaN or ±Infinity (which Python's json reads, but no JSON parser has to)
    When it is POSTed as JSON, as an NDJSON line or inside a rawJson string
    Then the answer is 400 (invalid_json for the body, invalid_field for rawJson), not an event that cannot be
         serialized back as JSON.
    """
    if shape == "rawJson-string":
        body, content_type, expected = (
            json.dumps({"rawJson": f'{{"x": {constant}}}'}),
            "application/json",
            "invalid_field",
        )
    else:
        body = f'{{"x": {constant}}}' if shape == "json" else f'{{"a": 1}}\n{{"x": {constant}}}\n'
        content_type = "application/json" if shape == "json" else "application/x-ndjson"
        expected = "invalid_json"
    reply = exercise(
        harnesses["open"], logs, Req(body=body.encode(), headers=[(b"content-type", content_type.encode())])
    )
    assert (reply.status, error_word(reply)) == (400, expected), reply.text()


def test_dedup_key_value_does_not_garble_log_lines(loop, logs, monkeypatch):
    """
    Given an instance whose dedup_key is `id` (a param whose name holds "key", which the logger masks as a secret)
    When an event is POSTed to /incidents
    Then the access-log line reads `"POST /incidents HTTP/1.1" 200`: `id` is not masked out of it (it read
         `/inc<XX_REPLACED>ents`, and every line holding "id" was garbled the same way).
    """
    assert CONFIGS["samples-dedup-path"]["dedup_key"] == "id"
    # The instance's params as the platform passes them: the integration's logger reads its secrets from them.
    monkeypatch.setattr(demistomock, "_PARAMS", {"longRunningPort": "8000", **CONFIGS["samples-dedup-path"]})
    harness = Harness("samples-dedup-path", loop)
    try:
        body = json.dumps({"id": "evt-1", "name": "identified incident"}).encode()
        reply = harness.request(Req(body=body, headers=JSON_HEADERS, path="/incidents"))
        harness.executor.submit(harness.app.log_buffer.flush).result(timeout=30)  # the buffered access-log line
        harness.executor.submit(harness.app.sink.flush).result(timeout=30)
    finally:
        harness.close()
    assert reply.status == 200, reply.text()
    lines = logs.take()
    assert any('"POST /incidents HTTP/1.1" 200 ' in line for line in lines), lines
    assert not any("<XX_REPLACED>" in line for line in lines), lines


# --- a real instance process over HTTP ---------------------------------------------------------------------------

PROCESS_TOKEN = "fuzz-process-token"
PROCESS_REQUESTS = int(os.environ.get("FUZZ_PROCESS_REQUESTS") or 400 * LONG_FACTOR)
PROCESS_SEED = int(os.environ.get("FUZZ_SEED") or 20240501)


class RandomRequests:
    """Seeded random raw requests, with what broke the webhook before: lone surrogates (in name and type too),
    numbers past float range (in occurred too), NaN and Infinity, raw U+2028/U+2029/U+0085 in NDJSON strings,
    nesting around MAX_JSON_DEPTH and the parser's limit, also in a form field. (Huge signature timestamps need a
    signature scheme, which this instance has not: the in-process tests send them.)"""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        rng = self.rng
        self.code_points: list[Callable[[], int]] = [
            lambda: rng.randint(32, 126),
            lambda: rng.randint(32, 126),
            lambda: rng.randint(160, 0xD7FF),
            lambda: 0x1F511,
            lambda: rng.randint(0xD800, 0xDFFF),  # a lone surrogate
            lambda: rng.choice([0x2028, 0x2029, 0x85]),  # line breaks to str.splitlines(), not to NDJSON
        ]

    def dumps(self, value: Any) -> bytes:
        """JSON as senders write it: \\u escapes or raw UTF-8 (lone surrogates then make it invalid UTF-8)."""
        return json.dumps(value, ensure_ascii=self.rng.random() < 0.5).encode("utf-8", "surrogatepass")

    def event(self) -> dict[str, Any]:
        rng = self.rng
        keys = [
            rng.choice(FIELD_NAMES) if rng.random() < 0.25 else rng.choice(["x", "ÿ", "🔑", "msg"]) for _ in range(6)
        ]
        event = {key: self.json_value(1) for key in keys[: rng.randint(0, 6)]}
        if rng.random() < 0.1:
            event["occurred"] = rng.choice([10**312, -(10**312), 10**20, 1.7e308, 2**63, -1])
        return event

    def json_value(self, depth: int = 0) -> Any:
        rng = self.rng
        roll = rng.random()
        if depth > 3 or roll < 0.5:
            return rng.choice(
                [
                    None,
                    True,
                    rng.randint(-(10**30), 10**30),
                    rng.choice([10**312, -(10**400), float("nan"), float("inf"), float("-inf")]),
                    rng.uniform(-1e300, 1e300),
                    "".join(chr(rng.choice(self.code_points)()) for _ in range(rng.randint(0, 20))),
                    rng.choice(["critical", "0.5", "2024-05-01T12:00:00Z", "not a date", "", "{", "🔑"]),
                ]
            )
        if roll < 0.75:
            return [self.json_value(depth + 1) for _ in range(rng.randint(0, 4))]
        keys = [*FIELD_NAMES, "x", "ÿ", "🔑"]
        return {rng.choice(keys): self.json_value(depth + 1) for _ in range(rng.randint(0, 5))}

    def mutate(self, body: bytes) -> bytes:
        rng = self.rng
        data = bytearray(body)
        for _ in range(rng.randint(1, 4)):
            action = rng.choice(["flip", "insert", "delete", "truncate"])
            position = rng.randint(0, len(data))
            if action == "flip" and position < len(data):
                data[position] ^= rng.randint(1, 255)
            elif action == "insert":
                data[position:position] = rng.randbytes(rng.randint(1, 8))
            elif action == "delete":
                del data[position : position + rng.randint(1, 8)]
            else:
                del data[position:]
        return bytes(data)

    def body(self) -> tuple[bytes, str]:
        rng = self.rng
        kind = rng.choice(["json", "json", "array", "ndjson", "form", "text", "bytes", "mutated", "deep", "utf8"])
        if kind in ("json", "array", "mutated"):
            value = self.event() if rng.random() < 0.7 else self.json_value()
            if kind == "array":
                value = [self.event() if rng.random() < 0.8 else self.json_value() for _ in range(rng.randint(0, 4))]
            body = self.dumps(value)
            return (self.mutate(body) if kind == "mutated" else body), "application/json"
        if kind == "ndjson":
            lines = [
                self.dumps(self.event() if rng.random() < 0.8 else self.json_value()) for _ in range(rng.randint(0, 5))
            ]
            return b"\n".join(lines), "application/x-ndjson"
        if kind == "form":
            return b"a=1&payload=" + json.dumps(self.json_value()).encode().replace(b"&", b"%26"), webhook.FORM_TYPE
        if kind == "text":
            return rng.randbytes(rng.randint(0, 200)).decode("latin-1").encode(), "text/plain"
        if kind == "bytes":
            return rng.randbytes(rng.randint(0, 2000)), rng.choice(CONTENT_TYPES)
        if kind == "deep":
            limit = webhook.MAX_JSON_DEPTH
            depth = rng.choice([limit - 1, limit, limit + 1, 500, rng.randint(940, 1000), 5_000, 100_000])
            text = nested(depth, rng.choice(["arrays", "objects", "mixed"]))
            if rng.random() < 0.3:  # JSON in a form field, as Slack's `payload`
                return b"a=1&payload=" + text.replace("{", "%7B").replace("}", "%7D").encode(), webhook.FORM_TYPE
            return text.encode(), "application/json"
        return b'{"name": "' + rng.choice(INVALID_UTF8) + b'"}', "application/json"

    def request(self) -> tuple[str, str, bytes, dict[str, bytes]]:
        rng = self.rng
        body, content_type = self.body()
        headers: dict[str, bytes] = {
            "content-type": rng.choice([content_type, content_type, rng.choice(CONTENT_TYPES)]).encode()
        }
        roll = rng.random()
        if roll < 0.25:
            body = gzip.compress(body)
            headers["content-encoding"] = b"gzip"
        elif roll < 0.35:
            body = self.mutate(gzip.compress(body))
            headers["content-encoding"] = rng.choice([b"gzip", b"deflate"])
        elif roll < 0.4:
            headers["content-encoding"] = rng.choice([b"br", b"identity", b"gzip", b"\xe9t\xe9"])
        token = rng.random()
        if token < 0.7:
            headers[TOKEN_HEADER.lower()] = PROCESS_TOKEN.encode()
        elif token < 0.85:
            headers[TOKEN_HEADER.lower()] = rng.randbytes(rng.randint(0, 30))
        for _ in range(rng.randint(0, 4)):
            name = "".join(rng.choice(TOKEN_CHARS) for _ in range(rng.randint(1, 20)))
            headers[name] = rng.randbytes(rng.randint(0, 40))
        headers = {name: bytes(b for b in value if b >= 0x20 and b != 0x7F).strip() for name, value in headers.items()}
        method = "POST" if rng.random() < 0.9 else rng.choice(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
        path = rng.choice(["/", "/", "/", "/alerts", "/incidents", "/a/b/c", "/%ff", "/?x=1", "/é"])
        if rng.random() < 0.05:
            path = rng.choice(["/health", "/metrics"])
        return method, path, body, headers


RAW_GARBAGE = (
    b"GARBAGE\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n{}",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n{}",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
    b'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"truncated":',
    b"POST / HTTP/9.9\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",  # a TLS ClientHello to the plain-HTTP port
    b"POST /\x00 HTTP/1.1\r\n\r\n",
    b"",
)


def _raw_exchange(port: int, data: bytes) -> None:
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass


def test_real_process_survives_random_requests(launch: Launcher):
    """
    Given a real instance process (header token, samples, dedup, metrics, 1 MiB body limit, debug logging)
    When a few hundred seeded random requests (bytes, JSON, NDJSON, forms, broken gzip, 100k-deep nesting, invalid
         UTF-8, lone surrogates, huge numbers, random headers and methods, right and wrong tokens) and malformed raw
         HTTP are sent to it
    Then every answer holds the property, the process still answers a normal request with 200, /health is ok,
         and its stderr has no traceback, no unhandled ASGI exception, no 500 and no masked text in the access log
         (dedup_key `id` is no secret).
    """
    instance = launch(
        {
            "credentials": {"identifier": f"_header:{TOKEN_HEADER}", "password": PROCESS_TOKEN},
            "store_samples": "true",
            "dedup_key": "id",
            "metrics_enabled": "true",
            "max_body_mb": "1",
        }
    )
    generator = RandomRequests(PROCESS_SEED)
    statuses: dict[int, int] = {}
    logged_paths: set[str] = set()
    with httpx.Client(timeout=30) as client:
        instance.wait_serving(client)
        for number in range(PROCESS_REQUESTS):
            method, path, body, headers = generator.request()
            req = Req(body=body, headers=[(k.encode(), v) for k, v in headers.items()], method=method, path=path)
            try:
                response = client.request(method, instance.base_url + path, content=body, headers=headers)
            except httpx.LocalProtocolError:
                continue  # a header httpx itself refuses to send
            reply = Reply(response.status_code, dict(response.headers), response.content)
            try:
                check_reply(req, reply, [])
            except AssertionError as error:
                raise AssertionError(f"request {number} ({method} {path} {headers!r}) -> {reply}") from error
            statuses[reply.status] = statuses.get(reply.status, 0) + 1
            logged_paths.add(f"{method} {httpx.URL(instance.base_url + path).path}")
            if number % 50 == 0 and instance.exit_reason():
                pytest.fail(instance.exit_reason())
        for data in RAW_GARBAGE:
            _raw_exchange(instance.port, data)

        probe = client.post(
            instance.base_url, json={"name": "after the fuzz"}, headers={TOKEN_HEADER: PROCESS_TOKEN}, timeout=10
        )
        assert probe.status_code == 200, probe.text
        assert client.get(instance.base_url + "/health").json() == {"status": "ok"}
    assert instance.exit_reason() == ""
    assert statuses.get(200, 0) > PROCESS_REQUESTS // 20, statuses  # the fuzz reached incident creation
    stderr = instance.stderr()
    assert "Traceback" not in stderr
    assert "Exception in ASGI application" not in stderr
    # dedup_key `id` is not masked as a secret: the access log keeps "/incidents" (and every path) intact.
    access = [line for line in stderr.splitlines() if ' HTTP/1.1" ' in line]
    assert not [line for line in access if "<XX_REPLACED>" in line], access[:20]
    assert "POST /incidents" not in logged_paths or '"POST /incidents HTTP/1.1"' in stderr, logged_paths
    assert not re.search(r'HTTP/1\.1" 5\d\d ', stderr), [line for line in stderr.splitlines() if '" 5' in line]
    health = instance.health()
    assert health is not None and not health["is_error"], health
