"""Request bodies: a realistic ~300-byte SIEM alert, alone, as a JSON array and as NDJSON.

Every incident carries a `bench_id` that the integrity pass finds again in the incident's rawJSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

JSON_TYPE = "application/json"
NDJSON_TYPE = "application/x-ndjson"
ID_MARK = "@ID@"

ALERT = {
    "name": "Suspicious sign-in from a new country",
    "type": "Unclassified",
    "severity": "high",
    "occurred": "2024-05-01T12:00:00Z",
    "details": "alice@example.com signed in from RO, 2 h after a sign-in from DE.",
    "rule": {"id": "R-1042", "name": "impossible-travel"},
    "user": "alice@example.com",
    "src_ip": "203.0.113.7",
    "bench_id": ID_MARK,
}


def alert_json() -> str:
    return json.dumps(ALERT, separators=(",", ":"))


@dataclass(frozen=True)
class BodyKind:
    """One shape of request body: how many incidents it holds and how it is encoded."""

    name: str
    content_type: str
    incidents: int

    def template(self) -> tuple[bytes, ...]:
        """The body split at each id mark: body = parts[0] + id_0 + parts[1] + id_1 + ... + parts[-1]."""
        one = alert_json()
        if self.incidents == 1 and self.content_type == JSON_TYPE:
            text = one
        elif self.content_type == NDJSON_TYPE:
            text = "\n".join([one] * self.incidents) + "\n"
        else:
            text = "[" + ",".join([one] * self.incidents) + "]"
        return tuple(part.encode() for part in text.split(ID_MARK))

    def fixed_body(self, tag: str = "fixed") -> bytes:
        """One body with the same id in every incident (for wrk, which sends the same body every time)."""
        return tag.encode().join(self.template())

    def factory(self, tag: str) -> Callable[[int], tuple[bytes, list[str]]]:
        """seq -> (body, ids): bodies whose incidents have ids `<tag>-<seq>-<k>`, unique across the run."""
        parts = self.template()
        count = len(parts) - 1

        def make(seq: int) -> tuple[bytes, list[str]]:
            ids = [f"{tag}-{seq}-{k}" for k in range(count)]
            chunks = [parts[0]]
            for k in range(count):
                chunks.append(ids[k].encode())
                chunks.append(parts[k + 1])
            return b"".join(chunks), ids

        return make


SINGLE = BodyKind("single JSON", JSON_TYPE, 1)
ARRAY_100 = BodyKind("JSON array x100", JSON_TYPE, 100)
NDJSON_100 = BodyKind("NDJSON x100", NDJSON_TYPE, 100)
