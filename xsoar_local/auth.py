"""The platform's API key: who may call a non-external instance's reroute and read incidents."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping

API_KEY_HEADERS = ("x-api-key", "authorization")


def api_key_header(headers: Mapping[str, str], api_key: str | None) -> str | None:
    """The header (lower-case name) that carries the valid API key, or None when none does or no key is set.

    Accepted: `X-API-Key: <key>`, `Authorization: <key>`, or HTTP Basic with the key as password (for browsers).
    Header values arrive as their bytes decoded as latin-1 (ASGI); they are compared as bytes with the key's
    UTF-8 encoding, so a non-ASCII key works when the caller sends it UTF-8 encoded.
    """
    if not api_key:
        return None
    expected = api_key.encode("utf-8")
    for name in API_KEY_HEADERS:
        value = headers.get(name)
        if value is None:
            continue
        try:
            raw = value.encode("latin-1")
        except UnicodeEncodeError:
            continue
        presented = _basic_password(raw) if name == "authorization" else None
        if hmac.compare_digest(presented or raw, expected):
            return name
    return None


def _basic_password(value: bytes) -> bytes | None:
    scheme, _, token = value.partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded.partition(b":")[2]
