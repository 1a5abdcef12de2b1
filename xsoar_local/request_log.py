"""The requests log: what each instance was sent through the reroute, and what came of it.

One entry per rerouted request to a configured instance (a refusal by the gateway included): when, the method, the
sub-path and query the instance got, the status, the error word and detail the answer named, the body's size, how
long it took, the caller's address, and the incidents the answer listed. The headers and the first
MAX_BODY_KEPT bytes of the body are kept too, so an entry can be sent again as a curl command; never a secret:
the values of headers that carry credentials or signatures are not stored, nor the instance's secret params nor
the platform's API key wherever they appear.

Entries are written to the store in batches off the event loop (the reroute never waits for SQLite), and each
instance keeps its newest `server.requests_kept` (oldest first out).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import shlex
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from xsoar_local.config import DEFAULT_REQUESTS_KEPT
from xsoar_local.masking import MASK, mask_secrets, secret_values
from xsoar_local.store import Store, utc_now

log = logging.getLogger(__name__)

MAX_BODY_KEPT = 16 * 1024  # bytes of a request body kept with its entry
MAX_ANSWER_READ = 256 * 1024  # bytes of a JSON answer read for its error word or incident ids
MAX_DETAIL_CHARS = 2000
MAX_PENDING = 20_000  # entries waiting for the store; past this, new ones are counted as dropped
FLUSH_INTERVAL_SECONDS = 0.25
REDACTED = "<redacted>"

# Header names whose values are credentials or signatures in senders' own conventions (Authorization, Cookie,
# X-Hub-Signature-256, Stripe-Signature, X-Gitlab-Token, X-Shopify-Hmac-Sha256, X-API-Key, ...).
_SECRET_NAME = re.compile(r"auth|cookie|signature|token|secret|api-?key|apikey|api_key|password|credential|hmac", re.I)
# Headers curl writes itself, or that describe the connection the request came on: not in a curl command.
_NOT_IN_CURL = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "expect", "te", "trailer"}
    | {"upgrade", "accept-encoding", "user-agent", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"}
)
API_KEY_VARIABLE = "XSOAR_LOCAL_API_KEY"


def is_secret_header(name: str) -> bool:
    return _SECRET_NAME.search(name) is not None


@dataclass
class Redactor:
    """What must not be stored from one instance's requests: its secret params and the platform's API key."""

    secrets: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, params: dict[str, Any], api_key: str | None) -> Redactor:
        found = secret_values(params)
        if api_key:
            found.append(api_key)
        return cls(sorted(set(found), key=len, reverse=True))

    def text(self, text: str) -> str:
        return mask_secrets(text, self.secrets)

    def headers(self, raw: list[tuple[bytes, bytes]], carriers: frozenset[bytes]) -> list[list[str]]:
        """The headers the instance got (the API key's carriers are not passed on), secret values redacted."""
        kept = []
        for key, value in raw:
            if key in carriers:
                continue
            name = key.decode("latin-1")
            kept.append([name, REDACTED if is_secret_header(name) else self.text(value.decode("latin-1"))])
        return kept

    def target(self, target: str) -> str:
        """The path and query, with the values of query params named like secrets (or holding one) redacted."""
        path, _, query = target.partition("?")
        if not query:
            return self.text(path)
        parts = []
        for item in query.split("&"):
            name, equals, _value = item.partition("=")
            parts.append(f"{name}={REDACTED}" if equals and is_secret_header(name) else item)
        return self.text(path) + "?" + self.text("&".join(parts))


@dataclass
class Recording:
    """One rerouted request, filled in as it goes through the gateway."""

    instance: str
    method: str
    target: str
    client: str
    started: float  # the loop's clock
    time: str = field(default_factory=utc_now)
    status: int = 0
    error: str | None = None
    detail: str | None = None
    request_bytes: int = 0
    body_head: list[bytes] = field(default_factory=list)
    body_kept: int = 0
    answer_json: bool = False
    answer_head: list[bytes] = field(default_factory=list)
    answer_read: int = 0
    answer_whole: bool = True

    def body_chunk(self, chunk: bytes) -> None:
        self.request_bytes += len(chunk)
        if self.body_kept < MAX_BODY_KEPT:
            part = chunk[: MAX_BODY_KEPT - self.body_kept]
            self.body_head.append(part)
            self.body_kept += len(part)

    def answer_start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        for key, value in headers:
            if key.lower() == b"content-type":
                self.answer_json = value.split(b";")[0].strip().lower() == b"application/json"

    def answer_chunk(self, chunk: bytes) -> None:
        if not self.answer_json or not self.answer_whole:
            return
        if self.answer_read + len(chunk) > MAX_ANSWER_READ:
            self.answer_whole = False
            self.answer_head = []
            return
        self.answer_head.append(chunk)
        self.answer_read += len(chunk)

    def refused(self, status: int, error: str, detail: str) -> None:
        self.status, self.error, self.detail = status, error, detail


def _answer(recording: Recording) -> tuple[str | None, str | None, list[str] | None]:
    """The error word and detail, or the incident ids, that a JSON answer holds."""
    if recording.error is not None:
        return recording.error, recording.detail, None
    if not recording.answer_json or not recording.answer_whole:
        return None, None, None
    try:
        answer = json.loads(b"".join(recording.answer_head))
    except ValueError:
        return None, None, None
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        detail = answer.get("detail")
        return answer["error"], detail if isinstance(detail, str) else None, None
    if isinstance(answer, list) and all(isinstance(item, dict) for item in answer):
        return None, None, [str(item["id"]) for item in answer if "id" in item]
    return None, None, None


def entry_of(
    recording: Recording,
    redactor: Redactor,
    headers: list[tuple[bytes, bytes]],
    carriers: frozenset[bytes],
    duration: float,
) -> dict[str, Any]:
    """The stored form of one request: nothing in it holds a secret."""
    error, detail, incident_ids = _answer(recording)
    body = b"".join(recording.body_head)
    try:
        body_text, encoding = redactor.text(body.decode("utf-8")), "utf-8"
    except UnicodeDecodeError:
        body_text, encoding = base64.b64encode(body).decode("ascii"), "base64"
    return {
        "time": recording.time,
        "instance": recording.instance,
        "method": recording.method,
        "target": redactor.target(recording.target),
        "status": recording.status,
        "error": error,
        "detail": None if detail is None else redactor.text(detail)[:MAX_DETAIL_CHARS],
        "request_bytes": recording.request_bytes,
        "duration_ms": round(duration * 1000, 1),
        "client": recording.client,
        "incident_ids": incident_ids,
        "api_key_sent": bool(carriers),
        "headers": redactor.headers(headers, carriers),
        "body": body_text,
        "body_encoding": encoding,
        "body_truncated": recording.request_bytes > len(body),
    }


class RequestLog:
    """Takes entries on the event loop and writes them to the store in batches, in a worker thread."""

    def __init__(self, store: Store, kept: int = DEFAULT_REQUESTS_KEPT) -> None:
        self.store = store
        self.kept = kept
        self.pending: list[dict[str, Any]] = []
        self.dropped = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def enabled(self) -> bool:
        return self.kept > 0

    def add(self, entry: dict[str, Any]) -> None:
        if not self.enabled or self._closing:
            return
        if len(self.pending) >= MAX_PENDING:
            self.dropped += 1
            return
        self.pending.append(entry)
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="request-log")
        if len(self.pending) == 1:
            assert self._wake is not None
            self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._closing:
                await asyncio.sleep(FLUSH_INTERVAL_SECONDS)  # gather a batch: one transaction for many requests
            await self._flush()
            if self._closing:
                return

    async def _flush(self) -> None:
        batch, self.pending = self.pending, []
        if not batch:
            return
        try:
            await asyncio.to_thread(self.store.add_requests, batch, self.kept)
        except Exception:  # the log must never take the reroute down
            log.exception("could not write %d entries to the requests log", len(batch))

    async def aclose(self) -> None:
        """Writes what is pending and stops; later entries are not taken."""
        self._closing = True
        if self._task is None:
            return
        assert self._wake is not None
        self._wake.set()
        await self._task


@dataclass(frozen=True)
class CurlCommand:
    command: str | None  # None: no command can repeat the request (`note` says why)
    variables: tuple[str, ...]  # $VARIABLES that stand for the redacted values
    note: str


def _variable(name: str) -> str:
    return re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_") or "VALUE"


def curl_command(entry: dict[str, Any], base_url: str) -> CurlCommand:
    """A bash command that sends the request again, through the reroute; redacted values as $VARIABLES."""
    if entry.get("body_truncated"):
        size = entry.get("request_bytes", 0)
        return CurlCommand(None, (), f"the body was {size:,} bytes; only its first {MAX_BODY_KEPT:,} were kept")
    instance = quote(entry["instance"], safe="")
    url = f"{base_url}/instance/execute/{instance}{entry['target'] if entry['target'] != '/' else ''}"
    parts = ["curl", "-sS", "-X", entry["method"], shlex.quote(url)]
    variables: list[str] = []
    for name, value in entry.get("headers", []):
        if name.lower() in _NOT_IN_CURL:
            continue
        if value == REDACTED:
            variable = _variable(name)
            variables.append(variable)
            parts += ["-H", shlex.quote(f"{name}: ") + f'"${variable}"']
        else:
            parts += ["-H", shlex.quote(f"{name}: {value}")]
    if entry.get("api_key_sent"):
        variables.append(API_KEY_VARIABLE)
        parts += ["-H", f'"X-API-Key: ${API_KEY_VARIABLE}"']
    masked = MASK in entry.get("body", "") or MASK in json.dumps(entry.get("headers", []))
    body = entry.get("body", "")
    prefix = ""
    if entry.get("body_encoding") == "base64":
        prefix = f"printf %s {shlex.quote(body)} | base64 -d | "
        parts += ["--data-binary", "@-"]
    elif body or entry.get("request_bytes"):
        parts += ["--data-binary", shlex.quote(body)]
    notes = []
    if variables:
        notes.append("set " + ", ".join(f"${item}" for item in dict.fromkeys(variables)) + " first (redacted here)")
    if masked:
        notes.append(f"a secret param's value was masked as {MASK}")
    if any(is_secret_header(name) and "signature" in name.lower() for name, _ in entry.get("headers", [])):
        notes.append("a signature covering a timestamp is refused as stale once its tolerance is past")
    return CurlCommand(prefix + " ".join(parts), tuple(dict.fromkeys(variables)), "; ".join(notes))
