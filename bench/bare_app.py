"""The ceiling: a bare ASGI app on the integration's uvicorn settings that reads the body and answers a constant
JSON list. `python -m bench.bare_app --port N` serves it on 127.0.0.1:N until SIGTERM.

Same settings as the Generic Webhook listener (`server_config_for`): uvicorn with its default loop and HTTP
implementation (`auto`: uvloop and httptools when installed), no log config, no access log, keep-alive 5 s,
64 KiB header limit.
"""

from __future__ import annotations

import argparse
import json
import socket
from collections.abc import Callable
from typing import Any

import uvicorn

from bench.payloads import ALERT

# What the integration answers for one incident, roughly: the created incident list.
ANSWER = json.dumps(
    [{"id": "1", "name": ALERT["name"], "type": "Unclassified", "severity": 3, "rawJSON": json.dumps(ALERT)}]
).encode()
HEALTH = b'{"status":"ok"}'
# With Content-Length, as the integration answers (no chunked framing).
ANSWER_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]
HEALTH_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(HEALTH)).encode())]


async def app(scope: dict[str, Any], receive: Callable, send: Callable) -> None:
    if scope["type"] != "http":  # lifespan: nothing to set up
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
        return
    more = True
    while more:  # read the whole body, as the integration does
        message = await receive()
        more = message.get("more_body", False)
    health = scope["path"] == "/health"
    await send({"type": "http.response.start", "status": 200, "headers": HEALTH_HEADERS if health else ANSWER_HEADERS})
    await send({"type": "http.response.body", "body": HEALTH if health else ANSWER})


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_app", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    config = uvicorn.Config(
        app, log_config=None, access_log=False, timeout_keep_alive=5, h11_max_incomplete_event_size=64 * 1024
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
