"""The platform's API key: who may call a non-external instance's reroute and read incidents.

One rule for the read API, the page and the reroute (`api_key_carriers`): with server.api_key set, X-API-Key and
Authorization may each come once; a second one is refused (400), as a client and a proxy adding one each would
otherwise each be believed by one side. The two headers may differ: an instance that uses Authorization for its own
auth gets its callers' Authorization while the key travels in X-API-Key. Every header that carries the key is
removed at the reroute.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Iterable

API_KEY_HEADERS = (b"x-api-key", b"authorization")
_SPELLED = {b"x-api-key": "X-API-Key", b"authorization": "Authorization"}


class DuplicateApiKeyHeader(Exception):
    """A request with more than one of a header the API key is taken from."""

    error = "duplicate_api_key_header"

    def __init__(self, name: bytes) -> None:
        spelled = _SPELLED[name]
        super().__init__(
            f"the request has more than one {spelled} header, a header this server takes its API key from;"
            f" fix: send {spelled} once (the API key in X-API-Key, an instance's own credentials in Authorization)"
        )
        self.detail = str(self)


def api_key_carriers(headers: Iterable[tuple[bytes, bytes]], api_key: str | None) -> frozenset[bytes]:
    """The (lower-case) names of the headers that carry the valid API key: empty when none does or no key is set.

    `headers` are the request's ASGI headers, every line of them. Accepted: `X-API-Key: <key>`,
    `Authorization: <key>`, or HTTP Basic with the key as password (for browsers). Values are compared as bytes with
    the key's UTF-8 encoding, so a non-ASCII key works when the caller sends it UTF-8 encoded.
    Raises DuplicateApiKeyHeader when a key is set and X-API-Key or Authorization comes more than once.
    """
    if not api_key:
        return frozenset()
    expected = api_key.encode("utf-8")
    values: dict[bytes, bytes] = {}
    for key, value in headers:
        name = key.lower()
        if name in API_KEY_HEADERS:
            if name in values:
                raise DuplicateApiKeyHeader(name)
            values[name] = value
    carriers = set()
    for name, raw in values.items():
        presented = _basic_password(raw) if name == b"authorization" else None
        # Both compared, whatever the first gave: the time taken does not tell which header held the key.
        if hmac.compare_digest(presented or raw, expected):
            carriers.add(name)
    return frozenset(carriers)


def _basic_password(value: bytes) -> bytes | None:
    scheme, _, token = value.partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded.partition(b":")[2]
