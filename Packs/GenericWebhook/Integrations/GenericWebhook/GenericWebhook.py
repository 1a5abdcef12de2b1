import demistomock as demisto  # noqa: F401
from CommonServerPython import *  # noqa: F401

import asyncio
import base64
import binascii
import errno
import hmac
import logging
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

""" CONSTANTS """

DEFAULT_INCIDENT_NAME = "Generic webhook triggered incident"
BAD_JSON_MESSAGE = "Request, and rawJson field if exists must be in JSON format"
AUTH_FAILED_MESSAGE = "Authorization failed."
HEADER_AUTH_PREFIX = "_header:"
SAMPLE_EVENTS_KEY = "sample_events"
MAX_SAMPLES = 20
MAX_SAMPLES_BYTES = 1024 * 1024
RESTART_DELAY_SECONDS = 5
RETRY_AFTER_SECONDS = 5
DEFAULT_BIND_HOST = "0.0.0.0"  # the platform reaches the container on its listen port from outside
BIND_HOST_ENV = "GENERIC_WEBHOOK_BIND_HOST"
# Headers that carry credentials never reach rawJSON, samples or logs.
ALWAYS_HIDDEN_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
REQUEST_HEADERS_KEYS = ("headers", "request_headers")
SEVERITY_WORDS = {
    "unknown": 0,
    "info": 0.5,
    "informational": 0.5,
    "low": 1,
    "medium": 2,
    "high": 3,
    "critical": 4,
}
VALID_SEVERITIES = frozenset({0, 0.5, 1, 2, 3, 4})

""" ERRORS """


class ConfigError(ValueError):
    """The instance configuration is invalid; the message names each problem and its fix."""


class RequestError(Exception):
    """A problem with the caller's request, answered with a 4xx status."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers or {}


class PortInUseError(OSError):
    pass


""" CONFIGURATION """


@dataclass(frozen=True)
class WebhookConfig:
    port: int
    auth_username: str = ""
    auth_password: str = ""
    auth_header: str = ""  # set in `_header:<NAME>` mode, lower-cased
    certificate: str = ""
    private_key: str = ""
    incident_type: str = ""
    store_samples: bool = False

    @property
    def auth_mode(self) -> str:
        if self.auth_header:
            return "header"
        return "basic" if self.auth_username else "none"

    @property
    def tls(self) -> bool:
        return bool(self.certificate and self.private_key)

    @property
    def hidden_headers(self) -> frozenset[str]:
        return ALWAYS_HIDDEN_HEADERS | {self.auth_header} if self.auth_header else ALWAYS_HIDDEN_HEADERS

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "WebhookConfig":
        """Validates the instance params once; raises ConfigError listing every problem found."""
        problems: list[str] = []
        port = _parse_port(params.get("longRunningPort"), problems)

        credentials = params.get("credentials") or {}
        if not isinstance(credentials, dict):
            credentials = {}
        username = str(credentials.get("identifier") or "")
        password = str(credentials.get("password") or "")
        auth_header = ""
        if username or password:
            if not username:
                problems.append("Username is empty but a Password is set: fill in both, or clear both to turn auth off.")
            elif not password:
                problems.append(
                    "Password is empty but a Username is set: fill in both, or clear both to turn auth off."
                )
            if username.startswith(HEADER_AUTH_PREFIX):
                auth_header = username[len(HEADER_AUTH_PREFIX) :].strip().lower()
                if not auth_header:
                    problems.append(
                        "Username `_header:` has no header name: use `_header:<HEADER-NAME>`, "
                        "for example `_header:Authorization`."
                    )
                elif not _is_header_token(auth_header):
                    problems.append(f"Username `{username}` does not name a valid HTTP header: fix the header name.")

        certificate = _secret_text(params.get("certificate"))
        private_key = _secret_text(params.get("key"))
        if bool(certificate) != bool(private_key):
            missing = "Private Key" if certificate else "Certificate"
            problems.append(f"HTTPS needs both a Certificate and a Private Key: the {missing} is missing.")
        elif certificate:
            tls_problem = check_tls_pair(certificate, private_key)
            if tls_problem:
                problems.append(tls_problem)

        if problems:
            raise ConfigError(" ".join(problems))
        return cls(
            port=port or 0,
            auth_username="" if auth_header else username,
            auth_password=password,
            auth_header=auth_header,
            certificate=certificate,
            private_key=private_key,
            incident_type=str(params.get("incidentType") or ""),
            store_samples=argToBoolean(params.get("store_samples") or False),
        )


def _parse_port(value: Any, problems: list[str]) -> int | None:
    if value is None or value == "":
        problems.append("Listen Port is required: set it to a free port between 1 and 65535.")
        return None
    try:
        port = int(str(value).strip())
    except ValueError:
        problems.append(f"Listen Port `{value}` is not an integer: set a port between 1 and 65535.")
        return None
    if not 1 <= port <= 65535:
        problems.append(f"Listen Port {port} is out of range: set a port between 1 and 65535.")
        return None
    return port


def _secret_text(value: Any) -> str:
    """Long text and encrypted params arrive as a string, or as {'password': ...} on some server versions."""
    if isinstance(value, dict):
        value = value.get("password") or ""
    return str(value or "").strip()


_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _is_header_token(name: str) -> bool:
    return all(c in _TOKEN_CHARS for c in name)


def write_private_file(content: str, suffix: str) -> str:
    """Writes content to a new temp file readable only by this user (mkstemp creates it 0600)."""
    fd, path = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "w") as file:
        file.write(content)
    return path


def check_tls_pair(certificate: str, private_key: str) -> str:
    """Returns '' when the certificate and key load as a TLS pair, else what is wrong and how to fix it."""
    cert_path = write_private_file(certificate, ".pem")
    key_path = write_private_file(private_key, ".key")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path)
    except ssl.SSLError as error:
        if "KEY_VALUES_MISMATCH" in str(error) or "key values mismatch" in str(error):
            return "The Private Key does not match the Certificate: paste the key that belongs to this certificate."
        return (
            f"The Certificate or Private Key could not be loaded ({error.reason or error}): "
            "paste PEM text including the BEGIN/END lines."
        )
    finally:
        os.remove(cert_path)
        os.remove(key_path)
    return ""


""" REQUEST HANDLING (no demisto calls here) """


def header_value(raw_headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in raw_headers:
        if key.lower() == name:
            return value
    return None


def authenticate(config: WebhookConfig, raw_headers: list[tuple[bytes, bytes]]) -> None:
    """Raises a 401 RequestError unless the request carries the configured credentials.

    Secrets are compared as UTF-8 bytes in constant time, so non-ASCII secrets work.
    """
    mode = config.auth_mode
    if mode == "none":
        return
    expected_password = config.auth_password.encode("utf-8")
    if mode == "header":
        given = header_value(raw_headers, config.auth_header.encode("latin-1")) or b""
        if hmac.compare_digest(given, expected_password):
            return
        raise RequestError(401, "unauthorized", AUTH_FAILED_MESSAGE)

    given_user, given_password = _basic_credentials(header_value(raw_headers, b"authorization"))
    user_ok = hmac.compare_digest(given_user, config.auth_username.encode("utf-8"))
    password_ok = hmac.compare_digest(given_password, expected_password)
    if user_ok and password_ok:
        return
    raise RequestError(
        401,
        "unauthorized",
        AUTH_FAILED_MESSAGE,
        {"WWW-Authenticate": 'Basic realm="Generic Webhook", charset="UTF-8"'},
    )


def _basic_credentials(authorization: bytes | None) -> tuple[bytes, bytes]:
    if not authorization:
        return b"", b""
    scheme, _, encoded = authorization.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return b"", b""
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return b"", b""
    user, _, password = decoded.partition(b":")
    return user, password


def parse_body(body: bytes) -> list[dict[str, Any]]:
    """Parses the request body into a list of event objects, or raises a 400 RequestError naming the problem."""
    if not body.strip():
        raise RequestError(400, "empty_body", "The request body is empty: send a JSON object or an array of objects.")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise RequestError(
            400, "invalid_encoding", f"The request body is not valid UTF-8 (byte {error.start}): send UTF-8 JSON."
        ) from None
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):
        raise RequestError(400, "invalid_json", BAD_JSON_MESSAGE) from None
    if isinstance(payload, dict):
        return [payload]
    if isinstance(payload, list):
        for index, item in enumerate(payload):
            if not isinstance(item, dict):
                raise RequestError(
                    400,
                    "invalid_item",
                    f"Item {index} of the array is {_json_kind(item)}: every item must be a JSON object.",
                )
        return payload
    raise RequestError(
        400, "invalid_body", f"The body is {_json_kind(payload)}: send a JSON object or an array of JSON objects."
    )


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def visible_headers(raw_headers: list[tuple[bytes, bytes]], hidden: frozenset[str]) -> dict[str, str]:
    """The request headers to keep in rawJSON: lower-cased names, credentials removed, repeats joined."""
    headers: dict[str, str] = {}
    for raw_key, raw_value in raw_headers:
        key = raw_key.decode("latin-1").lower()
        if key in hidden:
            continue
        value = raw_value.decode("latin-1")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def build_incidents(
    items: list[dict[str, Any]], headers: dict[str, str], default_type: str
) -> list[dict[str, Any]]:
    """Turns event objects into incident dicts for createIncidents; raises a 400 RequestError naming the bad item."""
    incidents = []
    for index, item in enumerate(items):
        try:
            incidents.append(build_incident(item, headers, default_type))
        except ValueError as error:
            prefix = f"Item {index}: " if len(items) > 1 else ""
            raise RequestError(400, "invalid_field", f"{prefix}{error}") from None
    return incidents


def build_incident(item: dict[str, Any], headers: dict[str, str], default_type: str) -> dict[str, Any]:
    raw = _raw_event(item)
    # Request headers go under `headers`; an event that has its own `headers` keeps it, and the request
    # headers go under `request_headers` instead (neither key is ever overwritten).
    for key in REQUEST_HEADERS_KEYS:
        if key not in raw:
            raw = {**raw, key: headers}
            break

    incident: dict[str, Any] = {
        "name": _text_field(item, "name") or DEFAULT_INCIDENT_NAME,
        "occurred": _occurred(item.get("occurred")),
        "rawJSON": json.dumps(raw),
    }
    incident_type = _text_field(item, "type") or default_type
    if incident_type:
        incident["type"] = incident_type
    if item.get("severity") is not None:
        incident["severity"] = _severity(item["severity"])
    if item.get("labels") is not None:
        incident["labels"] = _labels(item["labels"])
    if item.get("details") is not None:
        details = item["details"]
        incident["details"] = details if isinstance(details, str) else json.dumps(details)
    if item.get("customFields") is not None:
        if not isinstance(item["customFields"], dict):
            raise ValueError(f"customFields must be a JSON object, not {_json_kind(item['customFields'])}.")
        incident["customFields"] = item["customFields"]
    if item.get("dbotMirrorId") is not None:
        incident["dbotMirrorId"] = _text_field(item, "dbotMirrorId")
    return incident


def _raw_event(item: dict[str, Any]) -> dict[str, Any]:
    for key in ("rawJson", "raw_json"):
        value = item.get(key)
        if value is None:
            continue
        if isinstance(value, str):  # a JSON document sent as a string
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):
                raise ValueError(f"{key} is a string that is not JSON: {BAD_JSON_MESSAGE}.") from None
        if not isinstance(value, dict):
            raise ValueError(f"{key} must be a JSON object, not {_json_kind(value)}.")
        return value
    return item


def _text_field(item: dict[str, Any], key: str) -> str:
    value = item.get(key)
    if value is None:
        return ""
    if isinstance(value, dict | list):
        raise ValueError(f"{key} must be a string, not {_json_kind(value)}.")
    return str(value)


def _occurred(value: Any) -> str | None:
    """ISO-8601 text is kept as sent; epoch seconds (or milliseconds) become ISO-8601 UTC; None means now."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("occurred must be an ISO-8601 time or epoch seconds, not a boolean.")
    if isinstance(value, int | float):
        seconds = value / 1000 if abs(value) > 100_000_000_000 else value
        try:
            return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat().replace("+00:00", "Z")
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"occurred {value} is not a valid epoch time.") from None
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"occurred `{value[:64]}` is not an ISO-8601 time such as 2024-05-01T12:00:00Z."
            ) from None
        return value
    raise ValueError(f"occurred must be an ISO-8601 time or epoch seconds, not {_json_kind(value)}.")


def _severity(value: Any) -> float | int:
    number: Any = value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in SEVERITY_WORDS:
            return SEVERITY_WORDS[word]
        try:
            number = float(word)
        except ValueError:
            number = None
    if not isinstance(number, bool) and isinstance(number, int | float) and number in VALID_SEVERITIES:
        return 0.5 if number == 0.5 else int(number)
    raise ValueError(
        f"severity `{str(value)[:32]}` is not valid: use 0-4, 0.5, or one of {', '.join(SEVERITY_WORDS)}."
    )


def _labels(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise ValueError(f"labels must be an array of {{type, value}} objects, not {_json_kind(value)}.")
    labels = []
    for position, label in enumerate(value):
        if not isinstance(label, dict) or "type" not in label:
            raise ValueError(f"labels[{position}] must be an object with `type` and `value`.")
        labels.append({"type": str(label["type"]), "value": "" if label.get("value") is None else str(label["value"])})
    return labels


""" SAMPLES """


@dataclass
class SampleBuffer:
    """The last MAX_SAMPLES distinct events for the mapping wizard, at most max_bytes of JSON in all.

    Two incidents are the same event when they differ only in the request headers; the newer one replaces
    the older. The oldest samples are trimmed first to stay within the byte bound; an incident bigger than
    the bound alone is not kept.
    """

    samples: list[dict[str, Any]] = field(default_factory=list)
    max_count: int = MAX_SAMPLES
    max_bytes: int = MAX_SAMPLES_BYTES
    _keys: list[str] = field(default_factory=list, repr=False)
    _sizes: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        samples, self.samples = self.samples, []
        self.add(samples)

    def add(self, incidents: list[dict[str, Any]]) -> bool:
        """Adds incidents; returns True when the stored samples changed."""
        changed = False
        for incident in incidents[-self.max_count :]:  # older ones of a big batch would be trimmed anyway
            size = len(json.dumps(incident))
            if size > self.max_bytes:
                continue
            key = sample_key(incident)
            if self._keys and self._keys[-1] == key and self.samples[-1] == incident:
                continue  # the very same sample is already the newest
            if key in self._keys:
                position = self._keys.index(key)
                del self._keys[position], self.samples[position], self._sizes[position]
            self._keys.append(key)
            self.samples.append(incident)
            self._sizes.append(size)
            changed = True
        while len(self.samples) > self.max_count or sum(self._sizes) > self.max_bytes:
            del self._keys[0], self.samples[0], self._sizes[0]
        return changed


def sample_key(incident: dict[str, Any]) -> str:
    """What makes an event distinct for the samples: every field, with the request headers left out."""
    try:
        raw = json.loads(incident.get("rawJSON") or "{}")
    except ValueError:
        raw = incident.get("rawJSON")
    if isinstance(raw, dict):
        header_key = "request_headers" if "request_headers" in raw else "headers"
        raw = {key: value for key, value in raw.items() if key != header_key}
    fields = {key: value for key, value in incident.items() if key != "rawJSON"}
    return json.dumps([fields, raw], sort_keys=True)


def load_samples(context: dict[str, Any]) -> list[dict[str, Any]]:
    """Reads `sample_events` from the integration context in the original's shape: a JSON list of incidents."""
    stored = context.get(SAMPLE_EVENTS_KEY) or "[]"
    try:
        samples = json.loads(stored) if isinstance(stored, str) else stored
    except ValueError:
        return []
    return [sample for sample in samples if isinstance(sample, dict)] if isinstance(samples, list) else []


""" INCIDENT CREATION """

CreateBatch = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


class IncidentBatcher:
    """Creates the incidents of concurrent requests together, on one worker thread.

    Each demisto call is a blocking round trip to the server, so none runs on the event loop. While one
    createIncidents call is in flight, new requests wait and are then created in one call; every request
    is answered with its own slice of the result, or with the error of the batch it was in.
    """

    def __init__(self, create_batch: CreateBatch, executor: ThreadPoolExecutor, max_batch: int = 1000) -> None:
        self._create_batch = create_batch
        self._executor = executor
        self._max_batch = max_batch
        self._waiting: list[tuple[list[dict[str, Any]], asyncio.Future]] = []
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task | None = None

    async def submit(self, incidents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            self._wakeup = asyncio.Event()
            self._waiting = [(waiting, future) for waiting, future in self._waiting if future.get_loop() is loop]
            self._worker = loop.create_task(self._run(self._wakeup))
        future: asyncio.Future = loop.create_future()
        self._waiting.append((incidents, future))
        self._wakeup.set()
        return await future

    async def _run(self, wakeup: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await wakeup.wait()
            wakeup.clear()
            while self._waiting:
                batch = self._take_batch()
                incidents = [incident for request_incidents, _ in batch for incident in request_incidents]
                try:
                    created = await loop.run_in_executor(self._executor, self._create_batch, incidents)
                except Exception as error:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                position = 0
                for request_incidents, future in batch:
                    if not future.done():
                        future.set_result(created[position : position + len(request_incidents)])
                    position += len(request_incidents)

    def _take_batch(self) -> list[tuple[list[dict[str, Any]], asyncio.Future]]:
        count = 0
        taken = 0
        for incidents, _ in self._waiting:
            if taken and count + len(incidents) > self._max_batch:
                break
            count += len(incidents)
            taken += 1
        batch, self._waiting = self._waiting[:taken], self._waiting[taken:]
        return batch


class IncidentSink:
    """What one batch does on the worker thread: create the incidents, then store samples (one context write)."""

    def __init__(self, store_samples: bool) -> None:
        self.store_samples = store_samples
        self.samples: SampleBuffer | None = None

    def __call__(self, incidents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        created = demisto.createIncidents(incidents) or []
        if self.store_samples:
            try:
                self._store_samples(incidents)
            except Exception as error:  # the incidents exist: a sample failure must not fail the request
                demisto.error(f"Generic Webhook: could not store sample events: {error}")
        return created

    def _store_samples(self, incidents: list[dict[str, Any]]) -> None:
        if self.samples is None:
            self.samples = SampleBuffer(load_samples(get_integration_context()))
        if self.samples.add(incidents):
            set_to_integration_context_with_retries({SAMPLE_EVENTS_KEY: self.samples.samples})


""" HTTP APPLICATION """


def error_response(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def create_app(
    config: WebhookConfig,
    create_incidents: Callable[[list[dict[str, Any]]], Awaitable[list[dict[str, Any]]]],
    log_error: Callable[[str], None],
) -> FastAPI:
    """The webhook app: auth -> read body -> parse -> build incidents -> create -> respond."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        word = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        detail = "Only POST is accepted: send events with POST." if error.status_code == 405 else str(error.detail)
        return error_response(error.status_code, word, detail, getattr(error, "headers", None))

    @app.post("/{path:path}")
    async def handle_webhook(request: Request) -> Response:
        try:
            raw_headers = request.scope["headers"]
            authenticate(config, raw_headers)
            items = parse_body(await request.body())
            incidents = build_incidents(
                items, visible_headers(raw_headers, config.hidden_headers), config.incident_type
            )
        except RequestError as error:
            return error_response(error.status, error.error, error.detail, error.headers)
        if not incidents:
            return JSONResponse([])
        try:
            created = await create_incidents(incidents)
        except Exception as error:
            log_error(f"Generic Webhook: createIncidents failed, answered 503 so the sender retries: {error}")
            return error_response(
                503,
                "incident_creation_failed",
                "The incidents could not be created; nothing was stored. Retry later.",
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        return JSONResponse(created)

    return app


class AccessLogMiddleware:
    """Writes one access-log line per request, with the user agent, without blocking the event loop."""

    def __init__(self, app: Any, write: Callable[[str], None]) -> None:
        self.app = app
        self.write = write

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def send_with_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        started = time.monotonic()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            client = scope.get("client") or ("-", 0)
            agent = (header_value(scope["headers"], b"user-agent") or b"-").decode("latin-1")
            self.write(
                f'{client[0]}:{client[1]} - "{scope["method"]} {scope["path"]} HTTP/{scope.get("http_version", "1.1")}" '
                f'{status[0]} {(time.monotonic() - started) * 1000:.1f}ms "{agent}"'
            )


class DemistoLogHandler(logging.Handler):
    """Hands uvicorn's log records to the demisto worker thread, so logging never blocks the event loop."""

    def __init__(self, write: Callable[[str], None]) -> None:
        super().__init__()
        self.write = write

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write(f"uvicorn {record.levelname}: {record.getMessage()}")
        except Exception:
            self.handleError(record)


""" LONG-RUNNING SERVER """


def bind_listen_socket(port: int) -> socket.socket:
    host = os.environ.get(BIND_HOST_ENV) or DEFAULT_BIND_HOST
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise PortInUseError(
                errno.EADDRINUSE,
                f"Listen port {port} is already in use: choose another Listen Port for this instance, "
                "or stop what is using it.",
            ) from None
        raise
    sock.set_inheritable(True)
    return sock


def make_webhook_app(config: WebhookConfig, executor: ThreadPoolExecutor) -> AccessLogMiddleware:
    """Wires the app to the platform: every demisto call (incidents, context, logs) runs on `executor`."""
    integration_logger = IntegrationLogger()
    integration_logger.set_buffering(False)

    def log_info(line: str) -> None:
        executor.submit(integration_logger.write, line)

    def log_error(line: str) -> None:
        executor.submit(demisto.error, line)

    uvicorn_logger = logging.getLogger("uvicorn")
    uvicorn_logger.handlers = [DemistoLogHandler(log_info)]
    uvicorn_logger.setLevel(logging.INFO)
    uvicorn_logger.propagate = False

    batcher = IncidentBatcher(IncidentSink(config.store_samples), executor)
    return AccessLogMiddleware(create_app(config, batcher.submit, log_error), log_info)


def server_config_for(config: WebhookConfig, app: Any) -> uvicorn.Config:
    """uvicorn settings; with TLS, the certificate and key live in 0600 temp files only while the context loads."""
    cert_path = write_private_file(config.certificate, ".pem") if config.tls else ""
    key_path = write_private_file(config.private_key, ".key") if config.tls else ""
    try:
        server_config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            ssl_certfile=cert_path or None,
            ssl_keyfile=key_path or None,
            timeout_keep_alive=30,
        )
        server_config.load()
    finally:
        for path in (cert_path, key_path):
            if path:
                os.remove(path)
    if server_config.ssl is not None:
        server_config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
    return server_config


def serve(config: WebhookConfig) -> None:
    """Serves the webhook until the process is told to stop. Raises on start-up problems."""
    sock = bind_listen_socket(config.port)
    # One worker thread: the platform's channel is one serial pipe, and no demisto call may block the event loop.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="demisto")
    try:
        server_config = server_config_for(config, make_webhook_app(config, executor))
        scheme = "HTTPS" if config.tls else "HTTP"
        executor.submit(demisto.updateModuleHealth, f"Listening on port {config.port} ({scheme}).", False)
        uvicorn.Server(server_config).run(sockets=[sock])
    finally:
        sock.close()
        executor.shutdown(wait=True)


""" COMMANDS """


def test_module(params: dict[str, Any]) -> str:
    """Checks the configuration (port, TLS pair, credentials) and says what is wrong."""
    WebhookConfig.from_params(params)
    return "ok"


def fetch_samples() -> list[dict[str, Any]]:
    """The stored sample events, for the mapping wizard's fetch-incidents."""
    return load_samples(get_integration_context())


def run_long_running(params: dict[str, Any], restart_delay: float = RESTART_DELAY_SECONDS) -> None:
    """Serves forever; on a problem reports module health, waits and starts again."""
    while True:
        try:
            serve(WebhookConfig.from_params(params))
            return  # uvicorn returned: the process was asked to stop
        except (ConfigError, PortInUseError) as error:
            message = str(error) if isinstance(error, ConfigError) else error.strerror
            demisto.error(f"Generic Webhook: {message}")
            demisto.updateModuleHealth(f"An error occurred: {message}", True)
        except Exception as error:
            demisto.error(f"Generic Webhook: the server stopped: {error}\n{traceback.format_exc()}")
            demisto.updateModuleHealth(f"An error occurred: {error}", True)
        time.sleep(restart_delay)


""" MAIN """


def main() -> None:  # pragma: no cover - dispatch only
    params = demisto.params()
    command = demisto.command()
    demisto.debug(f"Command being called is {command}")
    try:
        if command == "test-module":
            return_results(test_module(params))
        elif command == "fetch-incidents":
            demisto.incidents(fetch_samples())
        elif command == "long-running-execution":
            run_long_running(params)
        else:
            raise NotImplementedError(f"Command {command} is not implemented.")
    except Exception as error:
        return_error(f"Failed to execute {command} command. Error: {error}")


""" ENTRY POINT """

if __name__ in ("__main__", "__builtin__", "builtins"):
    main()
