import demistomock as demisto  # noqa: F401
from CommonServerPython import *  # noqa: F401

import asyncio
import base64
import binascii
import errno
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import socket
import ssl
import tempfile
import time
import traceback
import zlib
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ListenerApiModule import *  # noqa: F401

""" CONSTANTS """

DEFAULT_INCIDENT_NAME = "Generic webhook triggered incident"
BAD_JSON_MESSAGE = "Request, and rawJson field if exists must be in JSON format"
AUTH_FAILED_MESSAGE = "Authorization failed."
HEADER_AUTH_PREFIX = "_header:"
SAMPLE_EVENTS_KEY = "sample_events"
DEDUP_KEYS_KEY = "dedup_keys"
MAX_SAMPLES = 20
MAX_SAMPLES_BYTES = 1024 * 1024
MAX_DEDUP_KEYS = 10_000
MAX_DEDUP_SUMMARIES = 100_000  # incident summaries kept for all seen keys together
MAX_REPLAY_KEYS = 20_000  # signed messages remembered (in memory) to recognise their replays
# Each param's default, as the YAML's `defaultvalue` writes it (GenericWebhook_test checks that they agree): what
# an absent or empty param means. The platform fills these in when an instance is made; the code needs them for
# instances made before a param existed.
PARAM_DEFAULTS = {
    "trusted_proxies": "127.0.0.0/8, ::1",  # the reroute connects from the same host
    "signature_scheme": "None",
    "signature_algorithm": "sha256",
    "signature_encoding": "hex",
    "timestamp_tolerance": "300",
    "dedup_window": "86400",
    "max_body_mb": "10",
    "max_items": "10000",
    "max_in_flight": "1000",
    "rate_limit_per_minute": "0",
    "batch_max_incidents": "1000",
    "batch_max_wait_ms": "0",  # natural batching: a batch leaves as soon as the worker is free
    "keep_alive_seconds": "120",  # idle keep-alive connections; over the pools of Go (90 s), .NET (60 s)
    "metrics_enabled": "false",
}
MAX_BATCH_INCIDENTS = int(PARAM_DEFAULTS["batch_max_incidents"])
BATCH_MAX_WAIT_MS = float(PARAM_DEFAULTS["batch_max_wait_ms"])
CONTEXT_WRITE_INTERVAL_SECONDS = 1.0
RESTART_DELAY_SECONDS = 5
RETRY_AFTER_SECONDS = 5
OVERLOAD_RETRY_AFTER_SECONDS = 1
INFLATE_STEP_BYTES = 256 * 1024  # output of one inflate step
INFLATE_INPUT_BYTES = 64 * 1024  # input of one inflate step, at most
INFLATE_FIRST_INPUT_BYTES = 64  # input of a gzip member's first inflate step
MAX_JSON_DEPTH = 100
MAX_BUFFERED_BYTES = 256 * 1024 * 1024  # request bodies held at once, across all requests
UNVERIFIED_ADDRESS_SHARE = 8  # one address's unverified requests: 1/8 of max_in_flight and of MAX_BUFFERED_BYTES
UNVERIFIED_MIN_PER_ADDRESS = 16
DEFAULT_TRUSTED_PROXIES = tuple(ipaddress.ip_network(item) for item in PARAM_DEFAULTS["trusted_proxies"].split(", "))
DEFAULT_BIND_HOST = "0.0.0.0"  # the platform reaches the container on its listen port from outside
BIND_HOST_ENV = "GENERIC_WEBHOOK_BIND_HOST"
TEXT_KEY = "text"  # where a text/plain body goes in the raw event
# Headers that carry credentials never reach rawJSON, samples or logs.
ALWAYS_HIDDEN_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
REQUEST_HEADERS_KEYS = ("headers", "request_headers")
NDJSON_TYPES = frozenset(
    {
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "application/x-jsonlines",
        "application/jsonlines",
    }
)
FORM_TYPE = "application/x-www-form-urlencoded"
TEXT_TYPE = "text/plain"
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
SIGNATURE_SCHEMES = ("None", "Generic HMAC", "GitHub", "Slack", "Stripe", "Standard Webhooks")
# Shortest keys accepted: the Standard Webhooks specification's (a 24 to 64 byte key, base64 after `whsec_`), and
# 16 bytes for a generic HMAC secret (below that, a key can be searched for).
STANDARD_WEBHOOKS_MIN_KEY_BYTES = 24
STANDARD_WEBHOOKS_ID_HEADERS = frozenset({"webhook-id", "svix-id"})
TIMESTAMPED_SCHEMES = frozenset({"Slack", "Stripe", "Standard Webhooks"})  # their signatures cover a timestamp
REPLAY_KEY_PREFIX = "s:"
GENERIC_HMAC_MIN_SECRET_BYTES = 16
SIGNATURE_ALGORITHMS = ("sha1", "sha256", "sha512")
SIGNATURE_ENCODINGS = ("hex", "base64")
# ISO-8601 as senders write it (extended or basic format): a date, then optionally a time (any number of fraction
# digits) and a zone. ASCII digits only.
ISO_TIME = re.compile(
    r"(\d{4})-?(\d{2})-?(\d{2})"
    r"(?:[Tt ](\d{2}):?(\d{2})(?::?(\d{2})(?:[.,]\d+)?)?(?:[Zz]|[+-](\d{2}):?(\d{2}))?)?",
    re.ASCII,
)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

""" ERRORS """


class ConfigError(ValueError):
    """The instance configuration is invalid; the message names each problem and its fix."""


class RequestError(Exception):
    """A problem with the caller's request, answered with a 4xx (or 503/429) status and a JSON body."""

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
class SignatureConfig:
    scheme: str
    secret: bytes = field(repr=False)
    header: str = ""  # Generic HMAC only, lower-cased
    algorithm: str = "sha256"
    encoding: str = "hex"
    prefix: str = ""
    tolerance: int = 300


@dataclass(frozen=True)
class FieldMapping:
    """Dotted paths into the raw event that fill incident fields when no mapper is configured."""

    name: tuple | None = None
    type: tuple | None = None
    occurred: tuple | None = None
    severity: tuple | None = None
    details: tuple | None = None
    severity_map: tuple[tuple[str, float], ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.name or self.type or self.occurred or self.severity or self.details)


@dataclass(frozen=True)
class WebhookConfig:
    port: int
    auth_username: str = ""
    auth_password: str = field(default="", repr=False)
    auth_header: str = ""  # set in `_header:<NAME>` mode, lower-cased
    certificate: str = ""
    private_key: str = field(default="", repr=False)
    incident_type: str = ""
    store_samples: bool = False
    signature: SignatureConfig | None = None
    dedup_header: str = ""  # `header:<NAME>` dedup key, lower-cased
    dedup_path: tuple | None = None  # dotted-path dedup key
    dedup_window: int = int(PARAM_DEFAULTS["dedup_window"])
    max_body_bytes: int = int(float(PARAM_DEFAULTS["max_body_mb"]) * 1024 * 1024)
    max_items: int = int(PARAM_DEFAULTS["max_items"])
    max_in_flight: int = int(PARAM_DEFAULTS["max_in_flight"])
    rate_limit_per_minute: int = int(PARAM_DEFAULTS["rate_limit_per_minute"])
    batch_max_incidents: int = MAX_BATCH_INCIDENTS
    batch_max_wait_ms: float = BATCH_MAX_WAIT_MS
    ca_certificate: str = ""
    allowed_networks: tuple = ()
    # peers whose last X-Forwarded-For entry is the caller's address: the reroute, on the same host
    trusted_proxies: tuple = DEFAULT_TRUSTED_PROXIES
    metrics_enabled: bool = False
    keep_alive_seconds: int = int(PARAM_DEFAULTS["keep_alive_seconds"])
    mapping: FieldMapping = field(default_factory=FieldMapping)

    # Cached: read on every request (a frozen dataclass still has an instance __dict__ for them).
    @cached_property
    def auth_mode(self) -> str:
        if self.auth_header:
            return "header"
        return "basic" if self.auth_username else "none"

    @property
    def tls(self) -> bool:
        return bool(self.certificate and self.private_key)

    @property
    def dedup_enabled(self) -> bool:
        """Whether repeats are looked for: a dedup_key is set, or a signature scheme signs a timestamp (then a
        replay of a signed request within its tolerance is recognised)."""
        return self.has_dedup_key or self.replay_window > 0

    @property
    def has_dedup_key(self) -> bool:
        return bool(self.dedup_header or self.dedup_path)

    @property
    def replay_window(self) -> int:
        """How long a signed message can be accepted, so how long its replay key is kept: its timestamp may be up
        to the tolerance ahead of or behind the clock. 0 when no timestamp is signed."""
        if self.signature is None or self.signature.scheme not in TIMESTAMPED_SCHEMES:
            return 0
        return 2 * self.signature.tolerance

    @cached_property
    def hidden_headers(self) -> frozenset[str]:
        return ALWAYS_HIDDEN_HEADERS | {self.auth_header} if self.auth_header else ALWAYS_HIDDEN_HEADERS

    @cached_property
    def mapping_empty(self) -> bool:
        return self.mapping.empty

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "WebhookConfig":
        """Validates the instance params once; raises ConfigError listing every problem found."""
        problems: list[str] = []
        port = _parse_port(params.get("longRunningPort"), problems)
        username, password, auth_header = _parse_credentials(params.get("credentials"), problems)

        certificate = _secret_text(params.get("certificate"))
        private_key = _secret_text(params.get("key"))
        if bool(certificate) != bool(private_key):
            missing = "Private Key" if certificate else "Certificate"
            problems.append(f"HTTPS needs both a Certificate and a Private Key: the {missing} is missing.")
        elif certificate:
            tls_problem = check_tls_pair(certificate, private_key)
            if tls_problem:
                problems.append(tls_problem)
        ca_certificate = _secret_text(params.get("ca_certificate"))
        if ca_certificate:
            if not certificate:
                problems.append(
                    "ca_certificate (mutual TLS) needs HTTPS: set the Certificate and Private Key too, or clear it."
                )
            ca_problem = check_ca_certificate(ca_certificate)
            if ca_problem:
                problems.append(ca_problem)

        signature = _parse_signature(params, problems)
        dedup_header, dedup_path = _parse_dedup_key(params.get("dedup_key"), problems)
        max_body_mb = _number_param(params, "max_body_mb", problems, minimum=0.001, integer=False)
        config = cls(
            port=port or 0,
            auth_username="" if auth_header else username,
            auth_password=password,
            auth_header=auth_header,
            certificate=certificate,
            private_key=private_key,
            incident_type=str(params.get("incidentType") or ""),
            store_samples=_bool_param(params, "store_samples", problems),
            signature=signature,
            dedup_header=dedup_header,
            dedup_path=dedup_path,
            dedup_window=int(_number_param(params, "dedup_window", problems, minimum=1)),
            max_body_bytes=int(max_body_mb * 1024 * 1024),
            max_items=int(_number_param(params, "max_items", problems, minimum=1)),
            max_in_flight=int(_number_param(params, "max_in_flight", problems, minimum=1)),
            rate_limit_per_minute=int(_number_param(params, "rate_limit_per_minute", problems, minimum=0)),
            batch_max_incidents=int(_number_param(params, "batch_max_incidents", problems, minimum=1)),
            batch_max_wait_ms=_number_param(params, "batch_max_wait_ms", problems, minimum=0, integer=False),
            ca_certificate=ca_certificate,
            allowed_networks=_parse_networks(params.get("allowed_cidrs"), problems),
            trusted_proxies=_parse_networks(
                params.get("trusted_proxies", PARAM_DEFAULTS["trusted_proxies"]), problems, "trusted_proxies"
            ),
            metrics_enabled=_bool_param(params, "metrics_enabled", problems),
            keep_alive_seconds=int(_number_param(params, "keep_alive_seconds", problems, minimum=1, maximum=3600)),
            mapping=_parse_mapping(params, problems),
        )
        if problems:
            raise ConfigError(" ".join(problems))
        return config


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


def _parse_credentials(credentials: Any, problems: list[str]) -> tuple[str, str, str]:
    if not isinstance(credentials, dict):
        credentials = {}
    username = str(credentials.get("identifier") or "")
    password = str(credentials.get("password") or "")
    auth_header = ""
    if not (username or password):
        return "", "", ""
    if not username:
        problems.append("Username is empty but a Password is set: fill in both, or clear both to turn auth off.")
    elif not password:
        problems.append("Password is empty but a Username is set: fill in both, or clear both to turn auth off.")
    if username.startswith(HEADER_AUTH_PREFIX):
        auth_header = username[len(HEADER_AUTH_PREFIX) :].strip().lower()
        if not auth_header:
            problems.append(
                "Username `_header:` has no header name: use `_header:<HEADER-NAME>`, for example "
                "`_header:Authorization`."
            )
        elif not _is_header_token(auth_header):
            problems.append(f"Username `{username}` does not name a valid HTTP header: fix the header name.")
    return username, password, auth_header


def _parse_signature(params: dict[str, Any], problems: list[str]) -> SignatureConfig | None:
    scheme = str(params.get("signature_scheme") or PARAM_DEFAULTS["signature_scheme"]).strip()
    secret = _secret_text(params.get("signature_secret"))
    if scheme not in SIGNATURE_SCHEMES:
        problems.append(f"signature_scheme `{scheme}` is unknown: choose one of {', '.join(SIGNATURE_SCHEMES)}.")
        return None
    if scheme == "None":
        if secret:
            problems.append("signature_secret is set but signature_scheme is None: choose the sender's scheme.")
        return None
    if not secret:
        problems.append(f"signature_scheme {scheme} needs a signature_secret: paste the sender's signing secret.")
    tolerance = int(_number_param(params, "timestamp_tolerance", problems, minimum=1))
    if scheme == "Standard Webhooks":
        key = secret[len("whsec_") :] if secret.startswith("whsec_") else secret
        try:
            secret_bytes = base64.b64decode(key, validate=True) if secret else b""
        except (binascii.Error, ValueError):
            problems.append("signature_secret for Standard Webhooks must be base64, usually starting with `whsec_`.")
            secret_bytes = b""
        else:
            if secret and len(secret_bytes) < STANDARD_WEBHOOKS_MIN_KEY_BYTES:
                problems.append(
                    f"signature_secret for Standard Webhooks decodes to {len(secret_bytes)} bytes; the specification"
                    f" asks for {STANDARD_WEBHOOKS_MIN_KEY_BYTES} to 64: paste the whole `whsec_...` secret."
                )
        return SignatureConfig(scheme, secret_bytes, tolerance=tolerance)
    if scheme != "Generic HMAC":
        return SignatureConfig(scheme, secret.encode("utf-8"), tolerance=tolerance)
    if secret and len(secret.encode("utf-8")) < GENERIC_HMAC_MIN_SECRET_BYTES:
        problems.append(
            f"signature_secret for Generic HMAC must be at least {GENERIC_HMAC_MIN_SECRET_BYTES} bytes: a shorter one"
            " can be guessed; use the sender's full signing secret."
        )

    header = str(params.get("signature_header") or "").strip().lower()
    if not header:
        problems.append("signature_header is required for Generic HMAC: name the header that carries the signature.")
    elif not _is_header_token(header):
        problems.append(f"signature_header `{header}` is not a valid HTTP header name.")
    algorithm = str(params.get("signature_algorithm") or PARAM_DEFAULTS["signature_algorithm"]).strip().lower()
    if algorithm not in SIGNATURE_ALGORITHMS:
        problems.append(f"signature_algorithm `{algorithm}` is unknown: use sha1, sha256 or sha512.")
    encoding = str(params.get("signature_encoding") or PARAM_DEFAULTS["signature_encoding"]).strip().lower()
    if encoding not in SIGNATURE_ENCODINGS:
        problems.append(f"signature_encoding `{encoding}` is unknown: use hex or base64.")
    prefix = str(params.get("signature_prefix") or "")
    return SignatureConfig(scheme, secret.encode("utf-8"), header, algorithm, encoding, prefix, tolerance)


def _parse_dedup_key(value: Any, problems: list[str]) -> tuple[str, tuple | None]:
    text = str(value or "").strip()
    if not text:
        return "", None
    if text.lower().startswith("header:"):
        header = text[len("header:") :].strip().lower()
        if not header or not _is_header_token(header):
            problems.append(f"dedup_key `{text}` does not name a header: use `header:<NAME>`, e.g. header:webhook-id.")
        return header, None
    return "", _parse_path("dedup_key", text, problems)


def _parse_mapping(params: dict[str, Any], problems: list[str]) -> FieldMapping:
    paths = {
        name: _parse_path(f"{name}_path", str(params.get(f"{name}_path") or "").strip(), problems)
        for name in ("name", "type", "occurred", "severity", "details")
    }
    severity_map: list[tuple[str, float]] = []
    for entry in str(params.get("severity_map") or "").split(","):
        if not entry.strip():
            continue
        word, separator, number = entry.partition("=")
        try:
            severity = _severity(number.strip()) if separator and word.strip() else None
        except ValueError:
            severity = None
        if severity is None:
            problems.append(
                f"severity_map entry `{entry.strip()}` is not `<value>=<severity>` with a severity of 0-4 or 0.5, "
                "e.g. low=1,medium=2,high=3,critical=4."
            )
            continue
        severity_map.append((word.strip().lower(), severity))
    return FieldMapping(**paths, severity_map=tuple(severity_map))


def _parse_path(param: str, text: str, problems: list[str]) -> tuple | None:
    """`a.b[0].c` or `a.b.0.c` -> ('a', 'b', '0', 'c'); list indexes are tried as numbers when resolving."""
    if not text:
        return None
    parts = text.replace("[", ".").replace("]", "").split(".")
    if any(not part.strip() for part in parts):
        problems.append(f"{param} `{text}` is not a dotted path such as `alert.title` or `alerts[0].id`.")
        return None
    return tuple(part.strip() for part in parts)


def _number_param(
    params: dict[str, Any],
    name: str,
    problems: list[str],
    minimum: float,
    integer: bool = True,
    maximum: float = math.inf,
) -> float:
    """The number param `name`, or its PARAM_DEFAULTS value when it is absent or empty (or not valid: the problem
    is noted)."""
    default = float(PARAM_DEFAULTS[name])
    value = params.get(name)
    if value is None or str(value).strip() == "":
        return default
    try:
        number = float(str(value).strip())
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or not minimum <= number <= maximum or (integer and number != int(number)):
        kind = "an integer" if integer else "a number"
        bound = f"from {minimum:g} to {maximum:g}" if math.isfinite(maximum) else f"of at least {minimum:g}"
        problems.append(f"{name} `{value}` must be {kind} {bound}.")
        return default
    return number


def _bool_param(params: dict[str, Any], name: str, problems: list[str]) -> bool:
    try:
        return argToBoolean(params.get(name) or PARAM_DEFAULTS.get(name, False))
    except ValueError:
        problems.append(f"{name} `{params.get(name)}` must be true or false.")
        return False


def _secret_text(value: Any) -> str:
    """Long text and encrypted params arrive as a string, or as {'password': ...} on some server versions."""
    if isinstance(value, dict):
        value = value.get("password") or ""
    return str(value or "").strip()


_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _is_header_token(name: str) -> bool:
    return all(c in _TOKEN_CHARS for c in name)


def _parse_networks(value: Any, problems: list[str], param: str = "allowed_cidrs") -> tuple:
    networks = []
    for entry in str(value or "").replace("\n", ",").split(","):
        if not entry.strip():
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            problems.append(
                f"{param} entry `{entry.strip()}` is not an address or CIDR such as 203.0.113.0/24 or 2001:db8::/32."
            )
    return tuple(networks)


def write_private_file(content: str, suffix: str) -> str:
    """Writes content to a new temp file readable only by this user (mkstemp creates it 0600)."""
    fd, path = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "w") as file:
        file.write(content)
    return path


def check_tls_pair(certificate: str, private_key: str) -> str:
    """Returns '' when the certificate and key load as a TLS pair, else what is wrong and how to fix it."""
    if "ENCRYPTED" in private_key.split("\n", 2)[0] or "Proc-Type: 4,ENCRYPTED" in private_key:
        return "The Private Key is encrypted: paste the key without a passphrase (openssl pkey -in key.pem)."
    cert_path = write_private_file(certificate, ".pem")
    key_path = ""
    try:  # the password callback stops OpenSSL from asking on a terminal for an encrypted key's passphrase
        key_path = write_private_file(private_key, ".key")
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path, password=lambda: b"")
    except (ssl.SSLError, OSError) as error:
        if "KEY_VALUES_MISMATCH" in str(error) or "key values mismatch" in str(error):
            return "The Private Key does not match the Certificate: paste the key that belongs to this certificate."
        return (
            f"The Certificate or Private Key could not be loaded ({getattr(error, 'reason', None) or error}): "
            "paste PEM text including the BEGIN/END lines."
        )
    finally:
        for path in (cert_path, key_path):
            if path:
                os.remove(path)
    return ""


def check_ca_certificate(ca_certificate: str) -> str:
    """Returns '' when the CA certificate(s) load, else what is wrong."""
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_verify_locations(cadata=ca_certificate)
    except (ssl.SSLError, ValueError) as error:
        return (
            f"ca_certificate could not be loaded ({error}): paste the PEM text of the CA that signs client "
            "certificates."
        )
    return ""


""" AUTHENTICATION AND SIGNATURES (no demisto calls here) """


def authenticate(config: WebhookConfig, headers: dict[bytes, bytes]) -> None:
    """Raises a 401 RequestError unless the request carries the configured credentials.

    Secrets are compared as UTF-8 bytes in constant time, so non-ASCII secrets work.
    """
    mode = config.auth_mode
    if mode == "none":
        return
    expected_password = config.auth_password.encode("utf-8")
    if mode == "header":
        given = headers.get(config.auth_header.encode("latin-1"), b"")
        if hmac.compare_digest(given, expected_password):
            return
        raise RequestError(401, "unauthorized", AUTH_FAILED_MESSAGE)

    given_user, given_password = _basic_credentials(headers.get(b"authorization"))
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


def _signature_error(error: str, detail: str) -> RequestError:
    return RequestError(401, error, detail)


def _required_header(headers: dict[bytes, bytes], name: str) -> bytes:
    value = headers.get(name.lower().encode("latin-1"))
    if value is None or not value.strip():
        raise _signature_error("signature_missing", f"The {name} header is missing: the request must be signed.")
    return value.strip()


def _check_timestamp(raw: bytes, name: str, tolerance: int, now: float) -> None:
    try:
        timestamp = int(raw) if len(raw) <= 20 else None
    except ValueError:
        timestamp = None
    if timestamp is None:
        raise _signature_error("signature_malformed", f"The {name} timestamp is not a Unix time in seconds.")
    if abs(now - timestamp) > tolerance:
        raise _signature_error(
            "signature_stale",
            f"The {name} timestamp is more than {tolerance} s away from the server's clock: the request is "
            "refused as a replay. Check the sender's clock, or timestamp_tolerance.",
        )


def _hmac(secret: bytes, message: bytes, algorithm: str = "sha256") -> bytes:
    return hmac.new(secret, message, getattr(hashlib, algorithm)).digest()


def _any_matches(expected: bytes, candidates: list[bytes]) -> bool:
    matched = False
    for candidate in candidates:  # compare with every candidate: the time taken does not reveal which matched
        matched |= hmac.compare_digest(expected, candidate)
    return matched


def _mismatch(header: str) -> RequestError:
    return _signature_error(
        "signature_mismatch", f"The {header} signature does not match the body: check signature_secret."
    )


def _from_hex(value: bytes, header: str) -> bytes:
    try:
        return bytes.fromhex(value.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise _signature_error("signature_malformed", f"The {header} signature is not hexadecimal.") from None


@dataclass(frozen=True)
class Signed:
    """What a verified signature covered: the signed message (timestamp and body, as the scheme joins them) and,
    for Standard Webhooks, the signed message id. Duplicate detection takes its keys from these, never from
    headers the signature does not cover."""

    message: bytes = field(repr=False)
    timestamped: bool
    message_id: str | None = None

    def replay_key(self) -> str | None:
        """For a scheme that signs a timestamp: the same signed message again is a replay, whatever its unsigned
        headers say (renamed header family, another Content-Type). Without a timestamp, the same body may be a
        new event (a heartbeat), so there is no replay key."""
        return f"{REPLAY_KEY_PREFIX}{hashlib.sha256(self.message).hexdigest()}" if self.timestamped else None


def verify_signature(signature: SignatureConfig, headers: dict[bytes, bytes], body: bytes, now: float) -> Signed:
    """Checks the sender's signature over the exact body bytes received; raises a 401 RequestError naming
    the check that failed (missing header, bad format, stale timestamp, mismatch). Returns what was signed."""
    scheme = signature.scheme
    secret = signature.secret
    if scheme == "GitHub":
        name = "X-Hub-Signature-256"
        value = _required_header(headers, name)
        if not value.startswith(b"sha256="):
            raise _signature_error("signature_malformed", f"The {name} header must start with `sha256=`.")
        if not hmac.compare_digest(_hmac(secret, body), _from_hex(value[7:], name)):
            raise _mismatch(name)
        return Signed(body, timestamped=False)
    if scheme == "Slack":
        name = "X-Slack-Signature"
        value = _required_header(headers, name)
        timestamp = _required_header(headers, "X-Slack-Request-Timestamp")
        if not value.startswith(b"v0="):
            raise _signature_error("signature_malformed", f"The {name} header must start with `v0=`.")
        _check_timestamp(timestamp, "X-Slack-Request-Timestamp", signature.tolerance, now)
        message = b"v0:" + timestamp + b":" + body
        if not hmac.compare_digest(_hmac(secret, message), _from_hex(value[3:], name)):
            raise _mismatch(name)
        return Signed(message, timestamped=True)
    if scheme == "Stripe":
        name = "Stripe-Signature"
        parts = [part.strip().partition(b"=") for part in _required_header(headers, name).split(b",")]
        timestamps = [value for key, _, value in parts if key == b"t"]
        signatures = [_from_hex(value, name) for key, _, value in parts if key == b"v1"]
        if len(timestamps) != 1 or not signatures:
            raise _signature_error("signature_malformed", f"The {name} header must be `t=<time>,v1=<signature>`.")
        _check_timestamp(timestamps[0], name, signature.tolerance, now)
        message = timestamps[0] + b"." + body
        if not _any_matches(_hmac(secret, message), signatures):
            raise _mismatch(name)
        return Signed(message, timestamped=True)
    if scheme == "Standard Webhooks":
        prefix = "svix" if b"svix-signature" in headers and b"webhook-signature" not in headers else "webhook"
        name = f"{prefix}-signature"
        message_id = _required_header(headers, f"{prefix}-id")
        timestamp = _required_header(headers, f"{prefix}-timestamp")
        value = _required_header(headers, name)
        _check_timestamp(timestamp, f"{prefix}-timestamp", signature.tolerance, now)
        candidates = []
        for item in value.split():
            version, _, encoded = item.partition(b",")
            if version == b"v1":
                try:
                    candidates.append(base64.b64decode(encoded, validate=True))
                except (binascii.Error, ValueError):
                    raise _signature_error("signature_malformed", f"A v1 signature in {name} is not base64.") from None
        if not candidates:
            raise _signature_error("signature_malformed", f"The {name} header has no `v1,<base64>` signature.")
        message = message_id + b"." + timestamp + b"." + body
        if not _any_matches(_hmac(secret, message), candidates):
            raise _mismatch(name)
        return Signed(message, timestamped=True, message_id=message_id.decode("latin-1"))
    if scheme == "Generic HMAC":
        name = signature.header
        value = _required_header(headers, name)
        prefix = signature.prefix.encode("utf-8")
        if prefix and not value.startswith(prefix):
            raise _signature_error("signature_malformed", f"The {name} header must start with `{signature.prefix}`.")
        value = value[len(prefix) :]
        if signature.encoding == "hex":
            given = _from_hex(value, name)
        else:
            try:
                given = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise _signature_error("signature_malformed", f"The {name} signature is not base64.") from None
        if not hmac.compare_digest(_hmac(secret, body, signature.algorithm), given):
            raise _mismatch(name)
        return Signed(body, timestamped=False)
    raise ConfigError(f"signature_scheme `{scheme}` is unknown.")  # from_params refuses it first


""" BODY DECODING AND PARSING (no demisto calls here) """


def too_large(config: WebhookConfig, what: str) -> RequestError:
    limit = config.max_body_bytes / (1024 * 1024)
    return RequestError(
        413,
        "payload_too_large",
        f"The {what} is larger than the limit of {limit:g} MiB: send smaller batches, or raise max_body_mb.",
    )


def decode_content(body: bytes, content_encoding: str, config: WebhookConfig) -> bytes:
    """Undoes Content-Encoding gzip or deflate (zlib or raw) without inflating past the body limit."""
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        wbits = 31
    elif encoding == "deflate":
        looks_zlib = len(body) >= 2 and body[0] & 0x0F == 8 and ((body[0] << 8) | body[1]) % 31 == 0
        wbits = 15 if looks_zlib else -15
    else:
        raise RequestError(
            415,
            "unsupported_encoding",
            f"Content-Encoding `{content_encoding[:40]}` is not supported: send gzip, deflate or no encoding.",
        )
    pieces: list[bytes] = []
    size = 0

    def take(piece: bytes) -> None:
        nonlocal size
        size += len(piece)
        if size > config.max_body_bytes:
            raise too_large(config, "decompressed body")
        pieces.append(piece)

    # zlib copies what a call leaves over (unconsumed_tail, unused_data): each call is handed a slice that starts
    # small for every gzip member and doubles, so the copies stay linear in the body, however many members
    view = memoryview(body)
    position = 0  # the first body byte no inflater has consumed
    step = INFLATE_FIRST_INPUT_BYTES
    inflater = zlib.decompressobj(wbits)
    try:
        while position < len(body):
            given = view[position : position + step]
            # small output steps: a bomb is refused after at most max_body_bytes of output, never more
            take(inflater.decompress(given, INFLATE_STEP_BYTES))
            position += len(given) - len(inflater.unconsumed_tail) - len(inflater.unused_data)
            step = min(2 * step, INFLATE_INPUT_BYTES)
            if inflater.eof and position < len(body):  # one gzip member after another: log shippers do that
                if wbits != 31:
                    raise RequestError(400, "invalid_encoding", f"The {encoding} body has data after its end.")
                inflater = zlib.decompressobj(wbits)
                step = INFLATE_FIRST_INPUT_BYTES
        while not inflater.eof:  # all input given: what the inflater still holds, in the same small steps
            piece = inflater.decompress(b"", INFLATE_STEP_BYTES)
            take(piece)
            if len(piece) < INFLATE_STEP_BYTES:
                break
        if not inflater.eof:
            raise RequestError(400, "invalid_encoding", f"The {encoding} body is truncated.")
    except zlib.error:
        raise RequestError(400, "invalid_encoding", f"The body is not valid {encoding} data.") from None
    return b"".join(pieces)


def _decode_text(body: bytes) -> str:
    try:  # BOM stripped by hand: no codec lookup (an import) on the request path
        return (body[3:] if body.startswith(b"\xef\xbb\xbf") else body).decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestError(
            400, "invalid_encoding", f"The request body is not valid UTF-8 (byte {error.start}): send UTF-8."
        ) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_STRICT_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
JSON_WHITESPACE = " \t\n\r"  # JSON's own: what json.loads skips around values
_JSON_SPACE = re.compile(f"[{JSON_WHITESPACE}]*")


def _loads(text: str) -> Any:
    """Strict JSON: NaN and Infinity (which Python accepts) are refused, as they would not serialize back."""
    return _STRICT_DECODER.decode(text)


def _load_json(text: str, max_items: int) -> Any:
    """The body's JSON value. A top-level array that could hold more than `max_items` values (more commas than
    that) is read one item at a time and refused at item max_items + 1, before the rest is built."""
    try:
        if text.count(",") < max_items or not text.lstrip(JSON_WHITESPACE).startswith("["):
            return _loads(text)
        return _load_array(text, max_items)
    except (ValueError, RecursionError):
        raise RequestError(400, "invalid_json", BAD_JSON_MESSAGE) from None


def _load_array(text: str, max_items: int) -> list[Any]:
    """A JSON array (text starting with `[` after whitespace), item by item with the strict decoder: ValueError
    for anything json.loads would refuse, 413 too_many_items at item max_items + 1."""
    skip = _JSON_SPACE.match
    index = skip(text, skip(text).end() + 1).end()
    items: list[Any] = []
    if text.startswith("]", index):
        index += 1
    else:
        while True:
            value, index = _STRICT_DECODER.raw_decode(text, index)
            items.append(value)
            if len(items) > max_items:
                raise too_many_items(max_items)
            index = skip(text, index).end()
            if text.startswith(",", index):
                index = skip(text, index + 1).end()
            elif text.startswith("]", index):
                index += 1
                break
            else:
                raise ValueError(f"expected , or ] at {index}")
    if skip(text, index).end() != len(text):
        raise ValueError(f"extra data at {index}")
    return items


def too_many_items(max_items: int, count: int | None = None) -> RequestError:
    holds = f"{count} events, more than" if count is not None else "more events than"
    return RequestError(
        413,
        "too_many_items",
        f"The request holds {holds} max_items ({max_items}): send smaller batches, or raise max_items.",
    )


def check_depth(text: str, items: list[dict[str, Any]], always: bool = False) -> None:
    """Refuses events nested deeper than MAX_JSON_DEPTH (400): they could not be serialized back safely."""
    if not always and text.count("{") + text.count("[") <= MAX_JSON_DEPTH:
        return  # too few brackets to be that deep: no walk needed
    if too_deep(items, start=0):
        raise RequestError(
            400, "too_deep", f"The body is nested deeper than {MAX_JSON_DEPTH} levels: flatten the events."
        )


def too_deep(value: Any, start: int = 1) -> bool:
    """Whether a parsed JSON value nests deeper than MAX_JSON_DEPTH (`start` is the level of `value` itself)."""
    stack: list[tuple[Any, int]] = [(value, start)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return True
        if isinstance(value, dict):
            stack.extend((child, depth + 1) for child in value.values() if isinstance(child, dict | list))
        elif isinstance(value, list):
            stack.extend((child, depth + 1) for child in value if isinstance(child, dict | list))
    return False


def parse_events(
    body: bytes, content_type: str, max_items: int = WebhookConfig.max_items
) -> tuple[list[dict[str, Any]], list[str]]:
    """The body's events and a label per event. More than `max_items` events: 413 too_many_items, found while
    parsing (an array or NDJSON body is not built past item max_items + 1)."""
    text = _decode_text(body) if body.strip() else ""
    media_type = content_type.partition(";")[0].strip().lower()
    items, labels = _parse_text(text, media_type, max_items)
    if len(items) > max_items:
        raise too_many_items(max_items, len(items))
    # form fields may hold percent-encoded JSON, whose brackets the quick count cannot see
    check_depth(text, items, always=media_type == FORM_TYPE)
    return items, labels


def _parse_text(text: str, media_type: str, max_items: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Parses the body into event objects and a label per event for error messages ('' for a lone object).

    JSON object or array (any Content-Type not listed below, as the original), NDJSON (one object per line),
    form-urlencoded (one object of the fields), text/plain (the text under `text`, unless it is JSON).
    """
    if not text:
        raise RequestError(400, "empty_body", "The request body is empty: send a JSON object or an array of objects.")
    if media_type in NDJSON_TYPES:
        return _parse_ndjson(text, max_items)
    if media_type in (FORM_TYPE, TEXT_TYPE):
        # `curl -d '{...}'` sends JSON labelled as a form, and some senders label JSON text/plain: a body that
        # parses as JSON is taken as JSON, as the original did for every Content-Type.
        # A form body starting with { or [ must then be valid JSON; plain text that is not JSON stays text.
        payload = None
        if text.lstrip().startswith(("{", "[")):
            try:
                payload = _load_json(text, max_items)
            except RequestError:
                if media_type == FORM_TYPE:
                    raise
        if payload is None:
            return [_parse_form(text) if media_type == FORM_TYPE else {TEXT_KEY: text}], [""]
    else:
        payload = _load_json(text, max_items)
    if isinstance(payload, dict):
        return [payload], [""]
    if isinstance(payload, list):
        for index, item in enumerate(payload):
            if not isinstance(item, dict):
                raise RequestError(
                    400,
                    "invalid_item",
                    f"Item {index} of the array is {_json_kind(item)}: every item must be a JSON object.",
                )
        return payload, [f"Item {index}" for index in range(len(payload))]
    raise RequestError(
        400, "invalid_body", f"The body is {_json_kind(payload)}: send a JSON object or an array of JSON objects."
    )


def _parse_ndjson(text: str, max_items: int) -> tuple[list[dict[str, Any]], list[str]]:
    if text.count("\n") >= max_items and _more_lines_than(text, max_items):
        raise too_many_items(max_items)
    # split on "\n" only, not splitlines(): U+2028 and friends may sit inside a JSON string
    numbered = [(number, line) for number, line in enumerate(text.split("\n"), start=1) if line.strip()]
    if not numbered:
        raise RequestError(400, "empty_body", "The NDJSON body has no lines: send one JSON object per line.")
    try:  # fast path: one parse; each line wrapped in its own [...] must come back as a list of one value,
        # which a value spilling over into the next line cannot do
        wrapped = _loads("[[" + "],[".join(line for _, line in numbered) + "]]")
    except (ValueError, RecursionError):
        wrapped = None
    one_each = wrapped is not None and len(wrapped) == len(numbered)
    if one_each and all(isinstance(value, list) and len(value) == 1 for value in wrapped):  # type: ignore[union-attr]
        items = [value[0] for value in wrapped]
    else:
        items = [_ndjson_line(number, line) for number, line in numbered]  # finds the line that is wrong
    labels = [f"Line {number}" for number, _ in numbered]
    for item, label in zip(items, labels, strict=True):
        if not isinstance(item, dict):
            raise RequestError(400, "invalid_item", f"{label} is {_json_kind(item)}: every line must be a JSON object.")
    return items, labels


def _more_lines_than(text: str, limit: int) -> bool:
    """Whether the text has more than `limit` non-blank lines, found without splitting all of it."""
    count = 0
    start = 0
    while start <= len(text):
        end = text.find("\n", start)
        if end < 0:
            end = len(text)
        if text[start:end].strip():
            count += 1
            if count > limit:
                return True
        start = end + 1
    return False


def _ndjson_line(number: int, line: str) -> Any:
    try:
        return _loads(line)
    except (ValueError, RecursionError):
        raise RequestError(400, "invalid_json", f"Line {number} is not valid JSON: {BAD_JSON_MESSAGE}.") from None


def _parse_form(text: str) -> dict[str, Any]:
    """Form fields become the event; a repeated field becomes a list; a field holding a JSON object or array
    (such as Slack's `payload`) is parsed."""
    fields: dict[str, list[Any]] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        parsed: Any = value
        if value[:1] in ("{", "["):
            try:
                parsed = _loads(value)
            except (ValueError, RecursionError):
                parsed = value
        fields.setdefault(key, []).append(parsed)
    return {key: values[0] if len(values) == 1 else values for key, values in fields.items()}


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


def resolve_path(event: Any, path: tuple) -> Any:
    """The value at a dotted path, or None; list indexes may be negative."""
    value = event
    for part in path:
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list):
            try:
                value = value[int(part)]
            except (ValueError, IndexError):
                return None
        else:
            return None
        if value is None:
            return None
    return value


""" INCIDENT BUILDING (no demisto calls here) """


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
    items: list[dict[str, Any]], labels: list[str], headers: dict[str, str], config: WebhookConfig
) -> list[dict[str, Any]]:
    """Turns event objects into incident dicts for createIncidents; raises a 400 RequestError naming the bad item."""
    incidents = []
    headers_json = json.dumps(headers)  # once per request, spliced into every event's rawJSON
    for item, label in zip(items, labels, strict=True):
        try:
            incidents.append(build_incident(item, headers_json, config))
        except ValueError as error:
            raise RequestError(400, "invalid_field", f"{label}: {error}" if label else str(error)) from None
    return incidents


def build_incident(item: dict[str, Any], headers_json: str, config: WebhookConfig) -> dict[str, Any]:
    event = _raw_event(item)
    mapped = {} if config.mapping_empty else _mapped_fields(event, config.mapping)
    incident: dict[str, Any] = {
        "name": mapped.get("name") or _text_field(item, "name") or DEFAULT_INCIDENT_NAME,
        "occurred": mapped.get("occurred") or _occurred(item.get("occurred")),
        "rawJSON": raw_json_with_headers(event, headers_json),
    }
    incident_type = mapped.get("type") or _text_field(item, "type") or config.incident_type
    if incident_type:
        incident["type"] = incident_type
    if "severity" in mapped:
        incident["severity"] = mapped["severity"]
    elif item.get("severity") is not None:
        incident["severity"] = _severity(item["severity"])
    if item.get("labels") is not None:
        incident["labels"] = _labels(item["labels"])
    details = mapped.get("details", item.get("details"))
    if details is not None:
        incident["details"] = clean_text(details) if isinstance(details, str) else json.dumps(details)
    if item.get("customFields") is not None:
        if not isinstance(item["customFields"], dict):
            raise ValueError(f"customFields must be a JSON object, not {_json_kind(item['customFields'])}.")
        incident["customFields"] = item["customFields"]
    if item.get("dbotMirrorId") is not None:
        incident["dbotMirrorId"] = _text_field(item, "dbotMirrorId")
    return incident


def raw_json_with_headers(event: dict[str, Any], headers_json: str) -> str:
    """The event as JSON with the request headers added as the last key: under `headers`, or under
    `request_headers` when the event has its own `headers` (neither key is ever overwritten)."""
    text = json.dumps(event)
    for key in REQUEST_HEADERS_KEYS:
        if key not in event:
            return f'{text[:-1]}{", " if event else ""}"{key}": {headers_json}}}'
    return text


def _mapped_fields(event: dict[str, Any], mapping: FieldMapping) -> dict[str, Any]:
    """Fields found at the configured paths. A missing or unusable value falls back to the usual source."""
    mapped: dict[str, Any] = {}
    for name in ("name", "type", "details"):
        path = getattr(mapping, name)
        value = resolve_path(event, path) if path else None
        if value is None or value == "":
            continue
        if name == "details":
            mapped[name] = value
        else:
            mapped[name] = clean_text(json.dumps(value) if isinstance(value, dict | list) else str(value))
    if mapping.occurred:
        try:
            occurred = _occurred(resolve_path(event, mapping.occurred))
        except ValueError:
            occurred = None
        if occurred:
            mapped["occurred"] = occurred
    if mapping.severity:
        value = resolve_path(event, mapping.severity)
        word = str(value).strip().lower() if value is not None else ""
        severity = dict(mapping.severity_map).get(word)
        if severity is None and value is not None:
            try:
                severity = _severity(value)
            except ValueError:
                severity = None
        if severity is not None:
            mapped["severity"] = severity
    return mapped


def _raw_event(item: dict[str, Any]) -> dict[str, Any]:
    for key in ("rawJson", "raw_json"):
        value = item.get(key)
        if value is None:
            continue
        if isinstance(value, str):  # a JSON document sent as a string
            try:
                value = _loads(value)
            except (ValueError, RecursionError):
                raise ValueError(f"{key} is a string that is not JSON: {BAD_JSON_MESSAGE}.") from None
            if too_deep(value):
                raise ValueError(f"{key} is nested deeper than {MAX_JSON_DEPTH} levels: flatten it.")
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
    return clean_text(str(value))


def clean_text(text: str) -> str:
    """Text the server can store: lone surrogates (valid in JSON escapes, not in UTF-8) become U+FFFD."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # through UTF-16, each lone surrogate becomes exactly one U+FFFD
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def _occurred(value: Any) -> str | None:
    """ISO-8601 text is kept as sent; epoch seconds (or milliseconds) become ISO-8601 UTC; None means now."""
    if isinstance(value, str) and value:  # the usual case first
        if not is_iso_time(value):
            raise ValueError(f"occurred `{value[:64]}` is not an ISO-8601 time such as 2024-05-01T12:00:00Z.")
        return value
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("occurred must be an ISO-8601 time or epoch seconds, not a boolean.")
    if isinstance(value, int | float):
        try:
            seconds = value / 1000 if abs(value) > 100_000_000_000 else value
            return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat().replace("+00:00", "Z")
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"occurred {value} is not a valid epoch time.") from None
    raise ValueError(f"occurred must be an ISO-8601 time or epoch seconds, not {_json_kind(value)}.")


def is_iso_time(text: str) -> bool:
    """Whether `text` is an ISO-8601 time that names a real moment, checked the same on every Python (3.10's
    datetime.fromisoformat refuses most of what senders write): RFC 3339 with any number of fraction digits, `,`
    or `.` before them, `+hhmm` offsets, a space for `T`, the basic format (20240501T120000Z) or a date alone.
    Week and ordinal dates, and leap seconds (which the server's time parser refuses), are not accepted."""
    match = ISO_TIME.fullmatch(text)
    if match is None:
        return False
    year, month, day, hour, minute, second, offset_hours, offset_minutes = map(int, match.groups("0"))
    try:
        datetime(year, month, day, hour, minute, second)
    except ValueError:  # Feb 30, hour 24, minute 60, ...
        return False
    return offset_hours < 24 and offset_minutes < 60


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
    raise ValueError(f"severity `{str(value)[:32]}` is not valid: use 0-4, 0.5, or one of {', '.join(SEVERITY_WORDS)}.")


def _labels(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise ValueError(f"labels must be an array of {{type, value}} objects, not {_json_kind(value)}.")
    labels = []
    for position, label in enumerate(value):
        if not isinstance(label, dict) or "type" not in label:
            raise ValueError(f"labels[{position}] must be an object with `type` and `value`.")
        value = "" if label.get("value") is None else str(label["value"])
        labels.append({"type": clean_text(str(label["type"])), "value": clean_text(value)})
    return labels


@dataclass
class Unit:
    """Incidents that are created together or recognised together as a repeat of an earlier delivery."""

    incidents: list[dict[str, Any]]
    key: str | None = None  # the dedup_key's value
    replay_key: str | None = None  # the signed message's (timestamped schemes), with the unit's place in it

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys under which this unit is a repeat: seen under either, it is not created again."""
        return tuple(key for key in (self.key, self.replay_key) if key is not None)


def delivery_units(
    incidents: list[dict[str, Any]],
    items: list[dict[str, Any]],
    headers: dict[bytes, bytes],
    config: WebhookConfig,
    signed: Signed | None = None,
    scope: str = "",
) -> list[Unit]:
    """A header dedup key covers the whole request; a body-path key covers each event on its own. A request
    signed with a timestamp also has a replay key per unit. Every key is prefixed with `scope`: the principal
    whose keys these are (see dedup_scope)."""
    replay = signed.replay_key() if signed is not None else None
    if config.dedup_header:
        return [
            Unit(
                incidents,
                _scoped(scope, "h:", _dedup_header_value(config, headers, signed)),
                _scoped(scope, "", replay),
            )
        ]
    if config.dedup_path:
        units = []
        for position, (incident, item) in enumerate(zip(incidents, items, strict=True)):
            value = resolve_path(_raw_event(item), config.dedup_path)
            if value is None:
                value = resolve_path(item, config.dedup_path)
            key = None if value is None or isinstance(value, dict | list) else str(value)
            replay_key = f"{replay}#{position}" if replay else None
            units.append(Unit([incident], _scoped(scope, "p:", key), _scoped(scope, "", replay_key)))
        return units
    return [Unit(incidents, None, _scoped(scope, "", replay))]


def _scoped(scope: str, kind: str, value: str | None) -> str | None:
    return None if value is None else f"{scope}{kind}{value}"


def _dedup_header_value(config: WebhookConfig, headers: dict[bytes, bytes], signed: Signed | None) -> str | None:
    """The dedup header's value; for Standard Webhooks' id header (`webhook-id` or `svix-id`, either family),
    the message id the signature covered, never an unsigned header of the other family."""
    if signed is not None and signed.message_id is not None and config.dedup_header in STANDARD_WEBHOOKS_ID_HEADERS:
        return signed.message_id
    value = headers.get(config.dedup_header.encode("latin-1"))
    return value.decode("latin-1") if value else None


def dedup_scope(config: WebhookConfig, address: str) -> str:
    """Whose dedup keys a request's are. With credentials or a signature, every request that passes them is the
    same principal (senders sharing a token are one): keys are the instance's. Without either, anyone can post,
    so each client address has keys of its own: no caller can suppress another address's events by posting their
    ids first, nor read what another address's delivery created by re-sending its id."""
    if config.auth_mode != "none" or config.signature is not None or config.ca_certificate:
        return ""
    return f"a:{address}|"


""" SAMPLES AND SEEN DELIVERIES """


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
    samples = _context_json(context, SAMPLE_EVENTS_KEY, [])
    return [sample for sample in samples if isinstance(sample, dict)] if isinstance(samples, list) else []


def _context_json(context: dict[str, Any], key: str, default: Any) -> Any:
    stored = context.get(key)
    if stored is None:
        return default
    try:
        return json.loads(stored) if isinstance(stored, str) else stored
    except ValueError:
        return default


SUMMARY_FIELDS = ("id", "name", "type", "severity", "occurred", "created")


class SeenDeliveries:
    """Dedup keys seen within the window, each with a summary of the incidents it created (oldest first).
    Bounded: at most max_keys keys and max_summaries incident summaries in all (the oldest keys go first)."""

    def __init__(
        self, stored: Any, window: int, max_keys: int = MAX_DEDUP_KEYS, max_summaries: int = MAX_DEDUP_SUMMARIES
    ) -> None:
        self.window = window
        self.max_keys = max_keys
        self.max_summaries = max_summaries
        self.summaries = 0
        self.entries: OrderedDict[str, tuple[float, list[dict[str, Any]]]] = OrderedDict()
        if isinstance(stored, dict):
            for key, entry in sorted(stored.items(), key=lambda item: _seen_time(item[1])):
                if isinstance(entry, dict) and isinstance(entry.get("incidents"), list):
                    self.entries[key] = (_seen_time(entry), entry["incidents"])
                    self.summaries += len(entry["incidents"])

    def expire(self, now: float) -> bool:
        changed = False
        while self.entries:
            key, (seen, incidents) = next(iter(self.entries.items()))
            within = len(self.entries) <= self.max_keys and self.summaries <= self.max_summaries
            if now - seen <= self.window and within:
                break
            del self.entries[key]
            self.summaries -= len(incidents)
            changed = True
        return changed

    def get(self, key: str, now: float) -> list[dict[str, Any]] | None:
        entry = self.entries.get(key)
        return entry[1] if entry is not None and now - entry[0] <= self.window else None

    def record(self, key: str, created: list[dict[str, Any]], now: float) -> None:
        summary = [{name: incident[name] for name in SUMMARY_FIELDS if name in incident} for incident in created]
        previous = self.entries.get(key)
        self.summaries += len(summary) - (len(previous[1]) if previous else 0)
        self.entries[key] = (now, summary)
        self.entries.move_to_end(key)

    def to_context(self) -> dict[str, Any]:
        return {key: {"t": seen, "incidents": incidents} for key, (seen, incidents) in self.entries.items()}


def _seen_time(entry: Any) -> float:
    try:
        return float(entry.get("t", 0))
    except (AttributeError, TypeError, ValueError):
        return 0.0


""" INCIDENT CREATION """


@dataclass
class UnitResult:
    incidents: list[dict[str, Any]]
    duplicate: bool = False


class IncidentSink:
    """What one batch does on the worker thread: drop repeats, create the rest in one createIncidents call,
    then remember samples and seen keys. Those are written to the integration context in one write, at most
    once per CONTEXT_WRITE_INTERVAL_SECONDS (a batch never waits for more than one write) and at shutdown."""

    def __init__(self, config: WebhookConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.samples: SampleBuffer | None = None
        self.seen: SeenDeliveries | None = None  # dedup keys, kept in the integration context
        # replay keys: one per signed request, short-lived; in memory only, so they never crowd out dedup keys
        self.replays: SeenDeliveries | None = None
        if config.replay_window:
            self.replays = SeenDeliveries({}, config.replay_window, MAX_REPLAY_KEYS, MAX_REPLAY_KEYS)
        self.pending_samples: list[dict[str, Any]] = []
        self.seen_changed = False
        self.last_write = -math.inf

    def __call__(self, units: list[Unit]) -> list[UnitResult]:
        if self.config.dedup_enabled or self.config.store_samples:
            self._load_state()
        now = self.clock()
        results: list[UnitResult | None] = [None] * len(units)
        creating: dict[str, int] = {}  # dedup key -> unit that creates it in this batch
        to_create: list[int] = []
        repeats: dict[int, int] = {}  # unit -> the unit of this batch that creates what it repeats
        for position, unit in enumerate(units):
            keys = [key for key in unit.keys if self._store_of(key) is not None]
            earlier = next((found for key in keys if (found := self._store_of(key).get(key, now)) is not None), None)  # type: ignore[union-attr]
            if earlier is not None:
                results[position] = UnitResult(earlier, duplicate=True)
                continue
            first = next((creating[key] for key in keys if key in creating), None)
            if first is not None:
                repeats[position] = first  # answered below with what that unit created
                continue
            for key in keys:
                creating[key] = position
            to_create.append(position)

        incidents = [incident for position in to_create for incident in units[position].incidents]
        created = (demisto.createIncidents(incidents) or []) if incidents else []
        if len(created) != len(incidents):
            # The server created them but did not answer one incident per incident sent (a pre-process rule
            # may drop some): nothing can be matched to its request, so each request gets an empty list.
            demisto.debug(f"Generic Webhook: createIncidents answered {len(created)} for {len(incidents)} sent")
            created = [{}] * len(incidents)
        offset = 0
        for position in to_create:
            count = len(units[position].incidents)
            results[position] = UnitResult([item for item in created[offset : offset + count] if item])
            offset += count
        for position, first in repeats.items():
            results[position] = UnitResult(results[first].incidents, duplicate=True)  # type: ignore[union-attr]
        try:
            self._remember(units, results, incidents, now)
        except Exception as error:  # the incidents exist: this must not turn the answer into a failure
            demisto.error(f"Generic Webhook: could not record samples or seen delivery keys: {error}")
        return results  # type: ignore[return-value]

    def _store_of(self, key: str) -> SeenDeliveries | None:
        return self.replays if key.startswith(REPLAY_KEY_PREFIX) else self.seen

    def _load_state(self) -> None:
        if self.samples is not None or self.seen is not None:
            return
        if not (self.config.store_samples or self.config.has_dedup_key):
            return  # replay keys only: nothing is kept in the integration context
        context = get_integration_context()
        if self.config.store_samples:
            self.samples = SampleBuffer(load_samples(context))
        if self.config.has_dedup_key:
            self.seen = SeenDeliveries(_context_json(context, DEDUP_KEYS_KEY, {}), self.config.dedup_window)

    def _remember(
        self, units: list[Unit], results: list[UnitResult | None], sent: list[dict[str, Any]], now: float
    ) -> None:
        if self.replays is not None:
            self.replays.expire(now)
        if self.seen is not None:
            self.seen_changed |= self.seen.expire(now)
        for unit, result in zip(units, results, strict=True):
            if result is not None and not result.duplicate:
                for key in unit.keys:
                    store = self._store_of(key)
                    if store is not None:
                        store.record(key, result.incidents, now)
                        self.seen_changed |= store is self.seen
        if self.samples is not None and sent:  # samples are the incidents as sent, in the original's shape
            self.pending_samples = (self.pending_samples + sent)[-self.samples.max_count :]
        if now - self.last_write >= CONTEXT_WRITE_INTERVAL_SECONDS:
            self.flush()

    @property
    def dirty(self) -> bool:
        """Changes wait for the next write (the batcher schedules it when no batch comes to do it)."""
        return bool(self.pending_samples) or self.seen_changed

    def flush(self) -> None:
        """Writes what changed to the integration context. The incidents exist already: a failure here is
        logged and does not fail any request."""
        update: dict[str, Any] = {}
        pending, self.pending_samples = self.pending_samples, []
        try:
            if self.seen is not None and self.seen_changed:
                update[DEDUP_KEYS_KEY] = self.seen.to_context()
            if self.samples is not None and pending and self.samples.add(pending):
                update[SAMPLE_EVENTS_KEY] = self.samples.samples
        except Exception as error:  # a sample that cannot be kept is dropped, not retried forever
            demisto.error(f"Generic Webhook: could not prepare samples or seen delivery keys: {error}")
        self.seen_changed = False
        self.last_write = self.clock()
        if not update:
            return
        try:
            set_to_integration_context_with_retries(update)
        except Exception as error:
            demisto.error(f"Generic Webhook: could not save samples or seen delivery keys: {error}")


class IncidentBatcher:
    """Creates the incidents of concurrent requests together, on one worker thread.

    Each demisto call is a blocking round trip to the server, so none runs on the event loop. While one
    createIncidents call is in flight, new requests wait and are then created in one call; every request
    is answered with its own results, or with the error of the batch it was in.
    """

    def __init__(
        self,
        sink: Callable[[list[Unit]], list[UnitResult]],
        executor: ThreadPoolExecutor,
        max_batch: int = MAX_BATCH_INCIDENTS,
        max_wait_ms: float = 0,
    ) -> None:
        self._sink = sink
        self._executor = executor
        self._max_batch = max_batch
        self._max_wait = max_wait_ms / 1000
        self._waiting: list[tuple[list[Unit], asyncio.Future]] = []
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self._flush_timer: asyncio.TimerHandle | None = None
        self.last_batch_failed = False

    async def submit(self, units: list[Unit]) -> list[UnitResult]:
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            self._wakeup = asyncio.Event()
            self._waiting = [(waiting, future) for waiting, future in self._waiting if future.get_loop() is loop]
            self._worker = loop.create_task(self._run(self._wakeup))
        future: asyncio.Future = loop.create_future()
        self._waiting.append((units, future))
        self._wakeup.set()
        return await future

    async def _run(self, wakeup: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await wakeup.wait()
            wakeup.clear()
            if self._max_wait and self._waiting_incidents() < self._max_batch:
                # let a few more requests join the batch: one round trip to the server for all of them
                deadline = loop.time() + self._max_wait
                while self._waiting_incidents() < self._max_batch and loop.time() < deadline:
                    try:
                        await asyncio.wait_for(wakeup.wait(), deadline - loop.time())
                    except asyncio.TimeoutError:
                        break
                    wakeup.clear()
            while self._waiting:
                batch = self._take_batch()
                units = [unit for request_units, _ in batch for unit in request_units]
                try:
                    results = await loop.run_in_executor(self._executor, self._sink, units)
                except Exception as error:
                    self.last_batch_failed = True
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                self.last_batch_failed = False
                self._schedule_flush(loop)
                position = 0
                for request_units, future in batch:
                    if not future.done():
                        future.set_result(results[position : position + len(request_units)])
                    position += len(request_units)

    def _schedule_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """When a batch left changes unwritten and traffic stops, write them after the interval anyway."""
        flush = getattr(self._sink, "flush", None)
        if flush is None or not getattr(self._sink, "dirty", False) or self._flush_timer is not None:
            return

        def run_flush() -> None:
            self._flush_timer = None
            loop.run_in_executor(self._executor, flush)

        self._flush_timer = loop.call_later(CONTEXT_WRITE_INTERVAL_SECONDS, run_flush)

    def _waiting_incidents(self) -> int:
        return sum(len(unit.incidents) for units, _ in self._waiting for unit in units)

    def _take_batch(self) -> list[tuple[list[Unit], asyncio.Future]]:
        count = 0
        taken = 0
        for units, _ in self._waiting:
            size = sum(len(unit.incidents) for unit in units)
            if taken and count + size > self._max_batch:
                break
            count += size
            taken += 1
        batch, self._waiting = self._waiting[:taken], self._waiting[taken:]
        return batch


""" ADMISSION, METRICS """


class Admission:
    """The in-flight cap (503) and the optional per-client rate limit (429), both with Retry-After; and the
    share of them that requests not yet authenticated may take from one client address.

    An instance without credentials or mutual TLS reads a body before it knows who sent it (a signature is checked
    on the body, and an instance without one never knows): such a request is *unverified* until its signature
    matches. One client address may hold at most `unverified_per_address` unverified requests and
    `unverified_bytes_per_address` of their body bytes at once (1/8 of each budget; at least 16 requests and one
    body of max_body_mb), so slow unsigned bodies from one address cannot
    fill max_in_flight or the memory budget for every other sender."""

    def __init__(
        self,
        max_in_flight: int,
        rate_limit_per_minute: int,
        clock: Callable[[], float] = time.monotonic,
        max_buffered_bytes: int | None = None,
        max_body_bytes: int = 0,
    ):
        self.max_in_flight = max_in_flight
        self.rate_limit = rate_limit_per_minute
        self.clock = clock
        self.max_buffered_bytes = MAX_BUFFERED_BYTES if max_buffered_bytes is None else max_buffered_bytes
        self.unverified_per_address = max(UNVERIFIED_MIN_PER_ADDRESS, max_in_flight // UNVERIFIED_ADDRESS_SHARE)
        # one whole body of the largest size allowed always fits
        self.unverified_bytes_per_address = max(self.max_buffered_bytes // UNVERIFIED_ADDRESS_SHARE, max_body_bytes)
        self.in_flight = 0
        self.buffered_bytes = 0
        self._window_start = 0.0
        self._counts: dict[str, int] = {}
        self._unverified: dict[str, list[int]] = {}  # address -> [requests, body bytes] of unverified requests

    def enter(self, client: str, unverified: bool = False) -> "Ticket":
        if self.in_flight >= self.max_in_flight:
            raise overloaded(f"More than {self.max_in_flight} requests are in progress: retry shortly (max_in_flight).")
        if unverified and self._unverified.get(client, (0,))[0] >= self.unverified_per_address:
            raise overloaded(
                f"{self.unverified_per_address} requests from {client} are already being received and not yet "
                "authenticated: retry shortly."
            )
        if self.rate_limit:
            now = self.clock()
            if now - self._window_start >= 60:
                self._window_start = now
                self._counts.clear()  # one fixed window a minute keeps memory bounded by the clients of a minute
            count = self._counts.get(client, 0) + 1
            self._counts[client] = count
            if count > self.rate_limit:
                retry_after = max(1, math.ceil(60 - (now - self._window_start)))
                raise RequestError(
                    429,
                    "rate_limited",
                    f"More than {self.rate_limit} requests a minute from {client}: retry after {retry_after} s.",
                    {"Retry-After": str(retry_after)},
                )
        self.in_flight += 1
        if unverified:
            self._unverified.setdefault(client, [0, 0])[0] += 1
        return Ticket(self, client, unverified)


@dataclass
class Ticket:
    """One admitted request: the body bytes it holds, and whether it still counts as unverified."""

    admission: Admission
    client: str
    unverified: bool
    held: int = 0

    def hold(self, size: int) -> None:
        """Counts body bytes held in memory: over the budget of all requests, or an address's unverified share,
        503 for this one."""
        admission = self.admission
        if admission.buffered_bytes + size > admission.max_buffered_bytes:
            raise overloaded("Too much request data is being received at once: retry shortly.")
        if self.unverified:
            share = admission._unverified[self.client]
            if share[1] + size > admission.unverified_bytes_per_address:
                raise overloaded(
                    f"Too much data not yet authenticated is being received from {self.client}: retry shortly."
                )
            share[1] += size
        admission.buffered_bytes += size
        self.held += size

    def verified(self) -> None:
        """The signature matched: the request leaves its address's unverified share."""
        if self.unverified:
            self._leave_share()
            self.unverified = False

    def close(self) -> None:
        self.admission.buffered_bytes -= self.held
        self.admission.in_flight -= 1
        if self.unverified:
            self._leave_share()

    def _leave_share(self) -> None:
        shares = self.admission._unverified
        share = shares[self.client]
        share[0] -= 1
        share[1] -= self.held
        if share[0] == 0:
            del shares[self.client]  # bounded by the addresses with requests in progress


def overloaded(detail: str) -> RequestError:
    return RequestError(503, "overloaded", detail, {"Retry-After": str(OVERLOAD_RETRY_AFTER_SECONDS)})


class Metrics:
    """Counters and a latency histogram, updated on the event loop thread, rendered as Prometheus text."""

    def __init__(self) -> None:
        self.requests: dict[int, int] = {}
        self.incidents_created = 0
        self.bytes_received = 0
        self.auth_failures = 0
        self.signature_failures: dict[str, int] = {}
        self.duplicates = 0
        self.bucket_counts = [0] * len(LATENCY_BUCKETS)
        self.latency_sum = 0.0
        self.latency_count = 0

    def observe(self, status: int, seconds: float) -> None:
        self.requests[status] = self.requests.get(status, 0) + 1
        self.latency_sum += seconds
        self.latency_count += 1
        for position, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.bucket_counts[position] += 1
                break

    def count_error(self, error: RequestError) -> None:
        if error.error == "unauthorized":
            self.auth_failures += 1
        elif error.error.startswith("signature_"):
            reason = error.error[len("signature_") :]
            self.signature_failures[reason] = self.signature_failures.get(reason, 0) + 1

    def render(self, in_flight: int) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP generic_webhook_{name} {help_text}")
            lines.append(f"# TYPE generic_webhook_{name} {kind}")
            lines.extend(f"generic_webhook_{name}{labels} {value:g}" for labels, value in samples)

        metric(
            "requests_total",
            "counter",
            "Requests answered, by HTTP status.",
            [(f'{{status="{status}"}}', count) for status, count in sorted(self.requests.items())],
        )
        metric("incidents_created_total", "counter", "Incidents created.", [("", self.incidents_created)])
        metric("received_bytes_total", "counter", "Request body bytes received.", [("", self.bytes_received)])
        metric(
            "auth_failures_total", "counter", "Requests refused by Basic or header auth.", [("", self.auth_failures)]
        )
        metric(
            "signature_failures_total",
            "counter",
            "Requests refused by signature verification, by reason.",
            [(f'{{reason="{reason}"}}', count) for reason, count in sorted(self.signature_failures.items())],
        )
        metric(
            "duplicates_total",
            "counter",
            "Deliveries recognised as repeats and not created again.",
            [("", self.duplicates)],
        )
        metric("in_flight_requests", "gauge", "Webhook requests being processed.", [("", in_flight)])
        cumulative = 0
        samples = []
        for bound, count in zip(LATENCY_BUCKETS, self.bucket_counts, strict=True):
            cumulative += count
            samples.append((f'_bucket{{le="{bound:g}"}}', cumulative))
        samples += [
            ('_bucket{le="+Inf"}', self.latency_count),
            ("_sum", self.latency_sum),
            ("_count", self.latency_count),
        ]
        metric("request_duration_seconds", "histogram", "Time to answer a request.", samples)
        return "\n".join(lines) + "\n"


""" HTTP APPLICATION """

CONNECTION_CLOSE = (b"connection", b"close")
BODY_READ_KEY = "generic_webhook_body_read"  # in the scope once read_body has the whole body


def error_response(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


async def read_body(
    scope: dict, receive: Callable, headers: dict[bytes, bytes], config: WebhookConfig, hold: Callable[[int], None]
) -> bytes:
    """Reads the body, refusing it with 413 as soon as it passes the limit, with or without Content-Length,
    and with 408 when the client stops sending mid-body. `hold` accounts for every chunk kept in memory.

    Under the guarded protocol the connection times the body (no timer per request here); otherwise each
    receive() is timed here."""
    length = headers.get(b"content-length", b"")
    if length.isdigit() and int(length) > config.max_body_bytes:
        raise too_large(config, "body")
    guarded = BODY_GUARD_KEY in scope
    chunks = []
    size = 0
    more_body = True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BODY_TOTAL_TIMEOUT_SECONDS
    while more_body:
        if guarded:
            message = await receive()
        else:
            try:
                async with body_timeout(min(BODY_IDLE_TIMEOUT_SECONDS, max(deadline - loop.time(), 0))):
                    message = await receive()
            except asyncio.TimeoutError:
                raise RequestError(408, "request_timeout", BODY_TIMEOUT_DETAIL) from None
        if message["type"] == "http.disconnect":
            if scope.get(BODY_GUARD_KEY) == BODY_TIMED_OUT:  # the connection answered 408 and closed
                raise RequestError(408, "request_timeout", BODY_TIMEOUT_DETAIL)
            raise RequestError(400, "client_disconnected", "The client went away before sending the whole body.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > config.max_body_bytes:
            raise too_large(config, "body")
        hold(len(chunk))
        chunks.append(chunk)
        more_body = message.get("more_body", False)
    scope[BODY_READ_KEY] = True
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def carries_body(scope: dict) -> bool:
    """Whether the request has a body (Content-Length other than 0, or Transfer-Encoding)."""
    for name, value in scope["headers"]:
        if (name == b"content-length" and value.strip() != b"0") or name == b"transfer-encoding":
            return True
    return False


class _TimeoutShim:
    """asyncio.timeout for Python < 3.11: cancels the current task when the deadline passes."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        assert task is not None

        def expire() -> None:
            self.expired = True
            task.cancel()

        self.handle = asyncio.get_running_loop().call_later(self.seconds, expire)

    async def __aexit__(self, kind: Any, error: Any, traceback_: Any) -> bool:
        self.handle.cancel()
        if self.expired and kind is asyncio.CancelledError:
            raise asyncio.TimeoutError
        return False


body_timeout = getattr(asyncio, "timeout", _TimeoutShim)


def client_address(scope: dict, trusted_proxies: tuple = DEFAULT_TRUSTED_PROXIES) -> str:
    """The caller's address: the socket peer, or, when the peer is a trusted proxy (by default the platform's
    reroute, which connects from loopback on the same host), the last X-Forwarded-For entry: the one that proxy
    added. Only that one hop is believed, never an entry further left, which the caller could have written.
    Several X-Forwarded-For lines count as one list (RFC 9110), so the last entry is the last line's."""
    peer = (scope.get("client") or ("",))[0]
    try:
        peer_ip = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    peer_ip = getattr(peer_ip, "ipv4_mapped", None) or peer_ip
    peer = str(peer_ip)
    if not in_networks(peer_ip, trusted_proxies):
        return peer
    forwarded = None
    for key, value in scope["headers"]:
        if key == b"x-forwarded-for":
            forwarded = value
    if forwarded is None:
        return peer
    try:
        address = ipaddress.ip_address(forwarded.decode("latin-1").rsplit(",", 1)[-1].strip())
    except ValueError:
        return peer
    return str(getattr(address, "ipv4_mapped", None) or address)


def in_networks(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: tuple) -> bool:
    return any(ip.version == network.version and ip in network for network in networks)


def check_allowed(config: WebhookConfig, address: str) -> None:
    if not config.allowed_networks:
        return
    try:
        ip = ipaddress.ip_address(address)
        ip = getattr(ip, "ipv4_mapped", None) or ip
    except ValueError:
        ip = None
    if ip is None or not in_networks(ip, config.allowed_networks):
        raise RequestError(403, "forbidden", f"Address {address} is not in allowed_cidrs.")


class WebhookIntake:
    """The ASGI app. POSTs (events) take a lean path of plain ASGI, one way through:
    admit -> auth -> read -> verify -> decode -> parse -> build -> create -> respond.
    Everything else (GET /health, GET /metrics, 405s) goes to a small FastAPI app."""

    def __init__(
        self,
        config: WebhookConfig,
        batcher: IncidentBatcher,
        metrics: Metrics,
        log_error: Callable[[str], None],
        log_access: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.batcher = batcher
        self.metrics = metrics
        self.log_error = log_error
        self.log_access = log_access
        self.clock = clock
        self.admission = Admission(
            config.max_in_flight, config.rate_limit_per_minute, max_body_bytes=config.max_body_bytes
        )
        # Without credentials or mutual TLS, a body is read before anything says who sent it.
        self.reads_unverified = config.auth_mode == "none" and not config.ca_certificate
        anonymous_dedup = config.dedup_enabled and dedup_scope(config, "") != ""  # keys per client address
        self.needs_address = bool(
            config.allowed_networks or config.rate_limit_per_minute or anonymous_dedup or self.reads_unverified
        )
        self.keep_alive_header = (b"keep-alive", f"timeout={config.keep_alive_seconds}".encode())
        self.other_routes = RequestMonitor(self._other_routes(), log_access, metrics, self.keep_alive_header)
        self.head_too_large = RequestMonitor(headers_too_large_app, log_access, metrics, self.keep_alive_header)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] in ("/health", "/metrics"):
            await self.other_routes(scope, receive, send)
            return
        if head_size(scope) > MAX_HEADER_BYTES:  # a complete head over the limit (an endless one: the guard)
            await self.head_too_large(scope, receive, send)
            return
        # The events path is monitored here rather than through RequestMonitor: the status is known, so no
        # wrapped `send` is needed.
        started = time.monotonic()
        status, error = 500, "internal_error"
        try:
            status, extra_headers, body, error = await self.handle(scope, receive)
            if BODY_READ_KEY in scope or not carries_body(scope):
                connection = self.keep_alive_header
            else:  # answered before the body was read: the connection closes (lingering: the client reads this)
                connection = CONNECTION_CLOSE
            headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode()), connection, *extra_headers]
            cork = scope.get(CORK_KEY)  # absent without the guarded protocol (tests' ASGI clients)
            if cork is not None:
                cork.cork()
            try:
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
            finally:
                if cork is not None:
                    cork.uncork()
        finally:
            elapsed = time.monotonic() - started
            self.metrics.observe(status, elapsed)
            self.log_access(access_log_line(scope, status, elapsed, error))

    async def handle(self, scope: dict, receive: Callable) -> tuple[int, list[tuple[bytes, bytes]], bytes, str]:
        """The status, extra headers, body and error word ("" for a success) of the answer to one POST."""
        try:
            address = client_address(scope, self.config.trusted_proxies) if self.needs_address else ""
            check_allowed(self.config, address)
            ticket = self.admission.enter(address, unverified=self.reads_unverified)
        except RequestError as error:
            return self._error(error)
        try:
            created = await self.receive_events(scope, receive, ticket, address)
        except RequestError as error:
            self.metrics.count_error(error)
            return self._error(error)
        except Exception as error:  # a bug of ours: answer JSON, log the traceback, keep serving
            self.log_error(f"Generic Webhook: unexpected error: {error}\n{traceback.format_exc()}")
            return self._error(RequestError(500, "internal_error", "The request could not be processed."))
        finally:
            ticket.close()
        return 200, [], json.dumps(created).encode(), ""

    @staticmethod
    def _error(error: RequestError) -> tuple[int, list[tuple[bytes, bytes]], bytes, str]:
        headers = [(key.lower().encode("latin-1"), value.encode("latin-1")) for key, value in error.headers.items()]
        body = json.dumps({"error": error.error, "detail": error.detail}).encode()
        return error.status, headers, body, error.error

    async def receive_events(
        self, scope: dict, receive: Callable, ticket: Ticket, address: str
    ) -> list[dict[str, Any]]:
        config = self.config
        raw_headers = scope["headers"]
        headers = dict(raw_headers)
        authenticate(config, headers)
        body = await read_body(scope, receive, headers, config, ticket.hold)
        self.metrics.bytes_received += len(body)
        signed = None
        if config.signature is not None:
            signed = verify_signature(config.signature, headers, body, self.clock())
            ticket.verified()
        body = decode_content(body, headers.get(b"content-encoding", b"").decode("latin-1"), config)
        items, labels = parse_events(body, headers.get(b"content-type", b"").decode("latin-1"), config.max_items)
        incidents = build_incidents(items, labels, visible_headers(raw_headers, config.hidden_headers), config)
        if not incidents:
            return []
        try:
            units = delivery_units(incidents, items, headers, config, signed, dedup_scope(config, address))
            results = await self.batcher.submit(units)
        except Exception as error:
            self.log_error(f"Generic Webhook: createIncidents failed, answered 503 so the sender retries: {error}")
            raise RequestError(
                503,
                "incident_creation_failed",
                "The incidents could not be created; nothing was stored. Retry later.",
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None
        created: list[dict[str, Any]] = []
        for result in results:
            created.extend(result.incidents)
            if result.duplicate:
                self.metrics.duplicates += 1
            else:
                self.metrics.incidents_created += len(result.incidents)
        return created

    def _other_routes(self) -> FastAPI:
        config, metrics, batcher, admission = self.config, self.metrics, self.batcher, self.admission
        app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

        @app.exception_handler(StarletteHTTPException)
        async def http_error(request: Request, error: StarletteHTTPException) -> Response:
            if error.status_code == 405:
                path = request.scope["path"]  # not request.url: it decodes the query, which may be any bytes
                if path in ("/health", "/metrics"):
                    detail = f"{path} answers GET and HEAD only; send events with POST to another path."
                    return error_response(405, "method_not_allowed", detail, {"Allow": "GET, HEAD"})
                return error_response(405, "method_not_allowed", "Only POST is accepted: send events with POST.")
            return error_response(error.status_code, "not_found", "Send events with POST to / or any sub-path.")

        @app.api_route("/health", methods=["GET", "HEAD"])
        async def health() -> Response:
            if batcher.last_batch_failed:
                return error_response(
                    503, "unhealthy", "The last incidents could not be created.", {"Retry-After": "5"}
                )
            return JSONResponse({"status": "ok"})

        @app.get("/metrics")
        async def metrics_page(request: Request) -> Response:
            if not config.metrics_enabled:
                return error_response(404, "not_found", "Metrics are off: turn on metrics_enabled to serve them.")
            try:
                check_allowed(config, client_address(request.scope, config.trusted_proxies))
                authenticate(config, dict(request.scope["headers"]))
            except RequestError as error:
                metrics.count_error(error)
                return error_response(error.status, error.error, error.detail, error.headers)
            body = metrics.render(admission.in_flight)
            return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

        @app.api_route("/{path:path}", methods=["GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"])
        async def not_post() -> Response:
            return error_response(
                405, "method_not_allowed", "Only POST is accepted: send events with POST.", {"Allow": "POST"}
            )

        return app


def access_log_line(scope: dict, status: int, elapsed: float, error: str = "") -> str:
    """One access-log line: client, request line (raw path), status, latency, user agent, and the error word of a
    refused request (`error=signature_mismatch`), so a wrong token, a bad signature and a bad body can be told
    apart in the instance log."""
    client = scope.get("client") or ("-", 0)
    agent = "-"
    for key, value in scope["headers"]:
        if key == b"user-agent":
            agent = value.decode("latin-1")
            if not agent.isprintable() or '"' in agent:  # control characters (NEL too) and quotes, escaped
                agent = agent.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    # the raw (still percent-encoded) path: a decoded %0A could forge log lines
    path = (scope.get("raw_path") or scope["path"].encode("unicode_escape")).decode("latin-1")
    request_line = f"{scope['method']} {path} HTTP/{scope.get('http_version', '1.1')}"
    line = f'{client[0]}:{client[1]} - "{request_line}" {status} {elapsed * 1000:.1f}ms "{agent}"'
    return f"{line} error={error}" if error else line


class RequestMonitor:
    """Writes one access-log line per request, with the user agent, and feeds the status and latency metrics.
    Says how the connection goes on: the Keep-Alive hint, or `connection: close` when the request has a body
    (these routes never read one: the connection then closes, lingering, so the client still reads the answer)."""

    def __init__(
        self,
        app: Any,
        write: Callable[[str], None],
        metrics: Metrics,
        keep_alive: tuple[bytes, bytes] = (b"keep-alive", f"timeout={KEEP_ALIVE_SECONDS}".encode()),
    ) -> None:
        self.app = app
        self.write = write
        self.metrics = metrics
        self.keep_alive = keep_alive

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        connection = CONNECTION_CLOSE if carries_body(scope) else self.keep_alive

        async def send_with_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                if not any(name == b"connection" for name, _ in headers):
                    headers.append(connection)
                message = {**message, "headers": headers}
            await send(message)

        started = time.monotonic()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            elapsed = time.monotonic() - started
            self.metrics.observe(status, elapsed)
            self.write(access_log_line(scope, status, elapsed))


class LogBuffer:
    """Collects log lines on the event loop and hands them to the demisto worker thread in batches,
    so logging never blocks the event loop nor costs a thread hand-off or a server round trip per line."""

    def __init__(self, executor: ThreadPoolExecutor, write: Callable[[str], Any], interval: float = 0.05) -> None:
        self.executor = executor
        self.write = write
        self.interval = interval
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        if len(self.lines) > 1:
            return  # a flush is already on its way
        try:
            asyncio.get_running_loop().call_later(self.interval, self._submit)
        except RuntimeError:  # not on the event loop (start-up, shutdown): hand over now
            self._submit()

    def _submit(self) -> None:
        try:
            self.executor.submit(self.flush)
        except RuntimeError:  # the executor is shutting down: write directly
            self.flush()

    def flush(self) -> None:
        """One demisto call for all lines waiting, not one per line. Ends with a newline: IntegrationLogger, as
        a stream, holds text back until it sees one."""
        lines, self.lines = self.lines, []
        if lines:
            self.write("\n".join(lines) + "\n")


class DemistoLogHandler(logging.Handler):
    """Hands uvicorn's log records to the demisto worker thread, so logging never blocks the event loop."""

    def __init__(self, write: Callable[[str], None]) -> None:
        super().__init__()
        self.write = write

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + "".join(traceback.format_exception(*record.exc_info))
            self.write(f"uvicorn {record.levelname}: {message}")
        except Exception:
            self.handleError(record)


""" LONG-RUNNING SERVER """


def bind_listen_socket(port: int) -> socket.socket:
    host = os.environ.get(BIND_HOST_ENV) or DEFAULT_BIND_HOST
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only for such a listening socket
    # (the guard sets it too, whatever the loop).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
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


def make_webhook_app(config: WebhookConfig, executor: ThreadPoolExecutor) -> "WebhookApp":
    """Wires the app to the platform: every demisto call (incidents, context, logs) runs on `executor`."""
    integration_logger = IntegrationLogger()
    integration_logger.set_buffering(False)
    # IntegrationLogger masks every param whose name holds "key"; dedup_key names a header or path, not a secret,
    # and masking a short value such as `id` would garble every log line.
    not_secret = str(demisto.params().get("dedup_key") or "")
    replace_strs = getattr(integration_logger, "replace_strs", None)
    if not_secret and isinstance(replace_strs, list):
        integration_logger.replace_strs = [text for text in replace_strs if text != not_secret]
    log_info = LogBuffer(executor, integration_logger.write)

    def log_error(line: str) -> None:
        executor.submit(demisto.error, line)

    uvicorn_logger = logging.getLogger("uvicorn")
    uvicorn_logger.handlers = [DemistoLogHandler(log_info)]
    uvicorn_logger.setLevel(logging.INFO)
    uvicorn_logger.propagate = False

    metrics = Metrics()
    sink = IncidentSink(config)
    batcher = IncidentBatcher(sink, executor, config.batch_max_incidents, config.batch_max_wait_ms)
    return WebhookApp(WebhookIntake(config, batcher, metrics, log_error, log_info), executor, log_info, sink)


class WebhookApp:
    """The ASGI app uvicorn serves. On lifespan shutdown it writes what is still buffered (access-log lines,
    samples, seen delivery keys) on the demisto worker thread: uvicorn runs that before it lets a SIGTERM end
    the process, which a `finally` after `Server.run` would not see."""

    def __init__(self, app: Any, executor: ThreadPoolExecutor, log_buffer: LogBuffer, sink: IncidentSink) -> None:
        self.app = app
        self.executor = executor
        self.log_buffer = log_buffer
        self.sink = sink

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.flush()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def flush(self) -> None:
        loop = asyncio.get_running_loop()
        for flush in (self.log_buffer.flush, self.sink.flush):
            try:
                await loop.run_in_executor(self.executor, flush)
            except Exception as error:  # shutting down: log and go on
                await loop.run_in_executor(self.executor, demisto.error, f"Generic Webhook: flush failed: {error}")


def server_config_for(config: WebhookConfig, app: Any, http: str | None = None) -> uvicorn.Config:
    """uvicorn settings; with TLS, the certificate and key live in 0600 temp files only while the context loads.
    `http`: "h11" or "httptools" (default: the fastest this environment has; the image has only h11)."""
    protocol = guarded_http_protocol(http, config.keep_alive_seconds, write_timeout_seconds())
    backstop_idle_seconds = config.keep_alive_seconds + KEEP_ALIVE_GRACE_SECONDS  # uvicorn's timer, behind ours
    if isinstance(protocol, str):
        logging.getLogger("uvicorn.error").warning(
            f"Generic Webhook: uvicorn {uvicorn.__version__} differs from the versions the connection guards were "
            f"checked against ({', '.join(UVICORN_CHECKED)}): serving with its plain {protocol} protocol, without "
            "head and body deadlines or lingering close."
        )
    cert_path = write_private_file(config.certificate, ".pem") if config.tls else ""
    key_path = write_private_file(config.private_key, ".key") if config.tls else ""
    try:
        server_config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            http=protocol,
            ws="none",  # no WebSocket routes: an upgrade request is served as plain HTTP
            ssl_certfile=cert_path or None,
            ssl_keyfile=key_path or None,
            timeout_keep_alive=backstop_idle_seconds,
            # The caller's address is the integration's own business (client_address): uvicorn's X-Forwarded-For
            # rewriting would let a forged header stand in for a loopback peer.
            proxy_headers=False,
            server_header=False,  # no `server: uvicorn`: nothing to tell a scanner
            h11_max_incomplete_event_size=MAX_HEADER_BYTES + H11_BUFFER_SLACK,
        )
        server_config.load()
    finally:
        for path in (cert_path, key_path):
            if path:
                os.remove(path)
    if server_config.ssl is not None:
        server_config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        if config.ca_certificate:  # mutual TLS: only clients with a certificate signed by this CA get in
            server_config.ssl.load_verify_locations(cadata=config.ca_certificate)
            server_config.ssl.verify_mode = ssl.CERT_REQUIRED
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
        GuardedServer(server_config).run(sockets=[sock])  # buffered state is flushed on lifespan shutdown
    finally:
        sock.close()
        # A demisto call that hangs must not keep the restart loop from going on.
        executor.shutdown(wait=False, cancel_futures=True)


""" COMMANDS """


def test_module(params: dict[str, Any]) -> str:
    """Checks the configuration (port, TLS pair, credentials, signatures, limits, mapping) and says what is wrong."""
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
