"""The banner's `try:` line: one bash command that gets a 200 from an instance, whatever its auth needs.

It sends the header token, Basic auth or signature the instance checks, and the API key when the instance is not
external. Secrets appear in it only as `$VARIABLE`s; `TryLine.variables` says where each value is. Where no single
command can work, there is no line (`why_no_try_line` says why).
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from xsoar_local.config import ServerConfig
from xsoar_local.instances import Instance

BODY = json.dumps({"name": "Hello from curl", "severity": 1})
TOKEN = "WEBHOOK_TOKEN"
PASSWORD = "WEBHOOK_PASSWORD"
SIGNING_SECRET = "WEBHOOK_SIGNING_SECRET"
API_KEY = "XSOAR_LOCAL_API_KEY"

HEADER_AUTH_PREFIX = "_header:"
# Where the gateway takes the API key from, in the order it looks (xsoar_local/auth.py); it does not pass it on.
_API_KEY_HEADERS = ("X-API-Key", "Authorization")
# Headers the gateway does not pass on to the instance (xsoar_local/gateway.py).
_NOT_FORWARDED = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer"}
    | {"transfer-encoding", "upgrade", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "host"}
    | {"content-length"}
)
# Text that stays itself inside bash double quotes (no expansion, no history expansion when pasted).
_PLAIN = re.compile(r'[^$`"\\!]*')

_TIMESTAMP = "TS=$(date +%s)"
_PRINTF_BODY = 'printf %s "$BODY"'
_HMAC_KEY = f'-hmac "${SIGNING_SECRET}"'
# Standard Webhooks keys are base64 (after `whsec_`): the HMAC key is the decoded bytes, given to openssl as hex.
_BASE64_HMAC_KEY = (
    f'-mac HMAC -macopt "hexkey:$(printf %s "${{{SIGNING_SECRET}#whsec_}}"'
    " | openssl base64 -d -A | od -An -v -tx1 | tr -d ' \\n')\""
)
_ALGORITHMS = ("sha1", "sha256", "sha512")
_ENCODINGS = ("hex", "base64")


@dataclass(frozen=True)
class TryLine:
    command: str  # one bash command line; secrets appear only as "$VARIABLE" placeholders
    variables: tuple[tuple[str, str], ...]  # (VARIABLE, where its value is)
    note: str = ""  # what else to know about running it, or ""


@dataclass(frozen=True)
class _Header:
    name: str
    text: str  # the start of the value, as it is
    expansion: str  # the rest, expanded by bash: "$WEBHOOK_TOKEN", "t=$TS,v1=$SIG"
    purpose: str
    written_by_curl: bool = False  # Basic auth: `curl -u` writes it


def try_line(instance: Instance, server: ServerConfig, webhook_url: str, config_path: Path) -> TryLine | None:
    """The curl command that creates an incident through `webhook_url`, or None when no single command can."""
    built = _build(instance, server, webhook_url, config_path)
    return built if isinstance(built, TryLine) else None


def why_no_try_line(instance: Instance, server: ServerConfig, webhook_url: str, config_path: Path) -> str | None:
    """Why `try_line` is None (a short phrase), or None when there is a line."""
    built = _build(instance, server, webhook_url, config_path)
    return built if isinstance(built, str) else None


def _build(instance: Instance, server: ServerConfig, webhook_url: str, config_path: Path) -> TryLine | str:
    if not instance.supervised:
        return f"the instance is {instance.unserved_reason}"
    params = instance.params
    if _text(params.get("certificate")) and _text(params.get("key")):
        return "the instance serves HTTPS itself (params certificate and key), and the gateway reroutes in plain HTTP"
    where = f"of instance {instance.name!r} in {config_path.resolve()}"
    headers: list[_Header] = []
    options: list[str] = []
    variables: list[tuple[str, str]] = []

    credentials = params.get("credentials")
    identifier = str(credentials.get("identifier") or "") if isinstance(credentials, dict) else ""
    if identifier.startswith(HEADER_AUTH_PREFIX):
        name = identifier.removeprefix(HEADER_AUTH_PREFIX).strip()
        headers.append(_Header(name, "", f"${TOKEN}", "the token (params.credentials)"))
        variables.append((TOKEN, f"params.credentials.password {where}"))
    elif identifier:
        if ":" in identifier:
            return "the Basic auth username has a ':', which HTTP Basic auth cannot carry"
        headers.append(_Header("Authorization", "", "", "Basic auth (params.credentials)", written_by_curl=True))
        options += ["-u", _word(f"{identifier}:", f"${PASSWORD}")]
        variables.append((PASSWORD, f"params.credentials.password {where}"))

    signature = _signature(params)
    if isinstance(signature, str):
        return signature
    setup, signature_headers = signature
    headers += signature_headers
    if signature_headers:
        variables.append((SIGNING_SECRET, f"params.signature_secret {where}"))

    if not server.is_external(instance.name):
        if not server.api_key:
            return (
                "the instance is not external and no server.api_key is set, so the gateway refuses every request"
                f" (set instance.execute.external.{instance.name}: 'true' under server.config, or server.api_key)"
            )
        taken = {header.name.lower() for header in headers}
        free = next((name for name in _API_KEY_HEADERS if name.lower() not in taken), None)
        if free is None:
            return "the instance needs both headers the gateway takes the API key from (X-API-Key and Authorization)"
        headers.append(_Header(free, "", f"${API_KEY}", "the API key"))
        variables.append((API_KEY, f"server.api_key in {config_path.resolve()}"))

    problem = _header_problem(headers) or _address_problem(params.get("allowed_cidrs"), webhook_url)
    if problem:
        return problem
    if not any(header.name.lower() == "content-type" for header in headers):
        headers.insert(0, _Header("Content-Type", "application/json", "", "the body"))
    data = ["--data-binary", '"$BODY"'] if setup else ["-d", shlex.quote(BODY)]
    curl = ["curl", "-sS", "--fail-with-body", "-X", "POST", shlex.quote(webhook_url), *options]
    if any(char in webhook_url for char in "[]{}"):  # an IPv6 address: not a curl URL pattern
        curl.insert(1, "--globoff")
    for header in headers:
        if not header.written_by_curl:
            curl += ["-H", _word(f"{header.name}: {header.text}", header.expansion)]
    command = "; ".join([*setup, " ".join([*curl, *data])])
    return TryLine(command, tuple(variables), _note(params, webhook_url))


def _signature(params: dict[str, Any]) -> tuple[list[str], list[_Header]] | str:
    """The bash assignments that compute the signature (after `BODY=...`), and the headers that carry it."""
    scheme = str(params.get("signature_scheme") or "None").strip()
    purpose = f"the {scheme} signature"
    if scheme == "None":
        return [], []
    if scheme == "GitHub":
        setup = [_sign(_PRINTF_BODY, "sha256", "hex", _HMAC_KEY)]
        headers = [_Header("X-Hub-Signature-256", "sha256=", "$SIG", purpose)]
    elif scheme == "Slack":
        setup = [_TIMESTAMP, _sign('printf \'v0:%s:%s\' "$TS" "$BODY"', "sha256", "hex", _HMAC_KEY)]
        headers = [
            _Header("X-Slack-Request-Timestamp", "", "$TS", purpose),
            _Header("X-Slack-Signature", "v0=", "$SIG", purpose),
        ]
    elif scheme == "Stripe":
        setup = [_TIMESTAMP, _sign('printf %s.%s "$TS" "$BODY"', "sha256", "hex", _HMAC_KEY)]
        headers = [_Header("Stripe-Signature", "", "t=$TS,v1=$SIG", purpose)]
    elif scheme == "Standard Webhooks":
        setup = [_TIMESTAMP, _sign('printf msg_%s.%s.%s "$TS" "$TS" "$BODY"', "sha256", "base64", _BASE64_HMAC_KEY)]
        headers = [
            _Header("webhook-id", "msg_", "$TS", purpose),
            _Header("webhook-timestamp", "", "$TS", purpose),
            _Header("webhook-signature", "v1,", "$SIG", purpose),
        ]
    elif scheme == "Generic HMAC":
        header = str(params.get("signature_header") or "").strip()
        algorithm = str(params.get("signature_algorithm") or "sha256").strip().lower()
        encoding = str(params.get("signature_encoding") or "hex").strip().lower()
        if not header or algorithm not in _ALGORITHMS or encoding not in _ENCODINGS:
            return "the Generic HMAC params (signature_header, signature_algorithm, signature_encoding) are not valid"
        setup = [_sign(_PRINTF_BODY, algorithm, encoding, _HMAC_KEY)]
        headers = [_Header(header, str(params.get("signature_prefix") or ""), "$SIG", purpose)]
    else:
        return f"signature_scheme {scheme!r} is not one a curl line can sign"
    return [f"BODY={shlex.quote(BODY)}", *setup], headers


def _sign(message: str, algorithm: str, encoding: str, key: str) -> str:
    """`SIG=`: the HMAC of what the `message` command writes, in hex or base64."""
    output = "-binary | openssl base64 -A" if encoding == "base64" else "| awk '{print $NF}'"
    return f"SIG=$({message} | openssl dgst -{algorithm} {key} {output})"


def _header_problem(headers: list[_Header]) -> str | None:
    seen: dict[str, str] = {}
    for header in headers:
        name = header.name.lower()
        if name in _NOT_FORWARDED:
            return f"{header.purpose} goes in the {header.name} header, which the gateway does not pass on"
        if name in seen and seen[name] != header.purpose:
            return f"{seen[name]} and {header.purpose} both need the {header.name} header"
        seen[name] = header.purpose
    return None


def _address_problem(allowed_cidrs: Any, webhook_url: str) -> str | None:
    networks = _networks(allowed_cidrs)
    callers = _callers(webhook_url)
    if not networks or callers is None:
        return None
    if any(caller.version == net.version and caller in net for caller in callers for net in networks):
        return None
    return f"allowed_cidrs does not include {callers[0]}, the address a curl on this machine comes from"


def _note(params: dict[str, Any], webhook_url: str) -> str:
    notes = []
    if _networks(params.get("allowed_cidrs")) and _callers(webhook_url) is None:
        notes.append("run it from an address in the instance's allowed_cidrs")
    if str(params.get("dedup_key") or "").strip():
        notes.append("a repeat the instance's dedup_key recognises answers 200 without a new incident")
    return "; ".join(notes)


def _networks(value: Any) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for entry in str(value or "").replace("\n", ",").split(","):
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            continue
    return networks


def _callers(webhook_url: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address] | None:
    """The address(es) a curl on this machine comes from to `webhook_url`, or None when that is not known."""
    host = urlsplit(webhook_url).hostname or ""
    if host == "localhost":
        return [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if address.is_loopback:  # the kernel answers any loopback address from the first one
        return [ipaddress.ip_address("127.0.0.1" if address.version == 4 else "::1")]
    return [address]


def _word(text: str, expansion: str) -> str:
    """One bash word: `text` as it is, then `expansion` (like "$SIG") expanded."""
    if not expansion:
        return shlex.quote(text)
    if _PLAIN.fullmatch(text):
        return f'"{text}{expansion}"'
    return f'{shlex.quote(text)}"{expansion}"'


def _text(value: Any) -> str:
    """A long-text or encrypted param's text (some servers hand it over as {"password": ...})."""
    if isinstance(value, dict):
        value = value.get("password")
    return str(value or "").strip()
