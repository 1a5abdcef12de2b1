"""The reference apps, on the Generic Webhook listener's own uvicorn settings (`server_config_for` of the
integration: the guarded httptools protocol with uvloop where installed, no log config, no access log,
keep-alive 5 s, 64 KiB head limit). `python -m bench.bare_app --port N [--floor]` serves one on 127.0.0.1:N
until SIGTERM.

- bare (the ceiling, scenario a): reads the body and answers a constant JSON list.
- floor (scenario floor): also does the least any receiver that answers like the Generic Webhook must do per
  event, and nothing else: parse the JSON body, serialize the event with the request headers into rawJSON, and
  answer the incident as JSON. No auth, no incident creation, no logging: what is left between it and (b) is the
  integration's own work.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Callable
from typing import Any

import uvicorn

from bench.payloads import ALERT
from bench.targets import PACK, REPO

sys.path[:0] = [str(REPO / "xsoar_local" / "script_env"), str(PACK / "Integrations" / "GenericWebhook")]
import GenericWebhook  # noqa: E402  (the integration, for its uvicorn settings)

# What the integration answers for one incident, roughly: the created incident list.
ANSWER = json.dumps(
    [{"id": "1", "name": ALERT["name"], "type": "Unclassified", "severity": 3, "rawJSON": json.dumps(ALERT)}]
).encode()
HEALTH = b'{"status":"ok"}'
# With Content-Length, as the integration answers (no chunked framing).
ANSWER_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]
HEALTH_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(HEALTH)).encode())]


async def _lifespan(receive: Callable, send: Callable) -> None:
    message = await receive()
    if message["type"] == "lifespan.startup":
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})


async def _read_body(receive: Callable) -> bytes:
    chunks = []
    more = True
    while more:  # read the whole body, as the integration does
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def app(scope: dict[str, Any], receive: Callable, send: Callable) -> None:
    if scope["type"] != "http":  # lifespan: nothing to set up
        await _lifespan(receive, send)
        return
    await _read_body(receive)
    health = scope["path"] == "/health"
    await send({"type": "http.response.start", "status": 200, "headers": HEALTH_HEADERS if health else ANSWER_HEADERS})
    await send({"type": "http.response.body", "body": HEALTH if health else ANSWER})


async def floor_app(scope: dict[str, Any], receive: Callable, send: Callable) -> None:
    if scope["type"] != "http":
        await _lifespan(receive, send)
        return
    body = await _read_body(receive)
    if scope["path"] == "/health":
        await send({"type": "http.response.start", "status": 200, "headers": HEALTH_HEADERS})
        await send({"type": "http.response.body", "body": HEALTH})
        return
    event = json.loads(body)
    headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
    incident = {
        "id": "1",
        "name": event.get("name"),
        "type": event.get("type"),
        "occurred": event.get("occurred"),
        "rawJSON": json.dumps({**event, "headers": headers}),
    }
    answer = json.dumps([incident]).encode()
    headers_out = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers_out})
    await send({"type": "http.response.body", "body": answer})


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_app", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--floor", action="store_true", help="serve the floor app instead of the bare one")
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    settings = GenericWebhook.WebhookConfig.from_params({"longRunningPort": args.port})
    config = GenericWebhook.server_config_for(settings, floor_app if args.floor else app)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
