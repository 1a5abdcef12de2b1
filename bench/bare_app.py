"""The reference apps of the benchmark. `python -m bench.bare_app --port N [--mode own|floor|stock]` serves one on
127.0.0.1:N until SIGTERM, on the interpreter it is started with (the stack under test).

- own (scenario a-own, a ceiling): reads the body and answers a constant JSON list, served on the Generic Webhook
  listener's own uvicorn settings: the listen socket from the integration's `bind_listen_socket`, the
  `uvicorn.Config` from its `server_config_for` (its HTTP protocol, no log config, no access log, keep-alive,
  head limit). Whatever those settings cost, defects included, this ceiling carries too.
- stock (scenario a, the ceiling the targets are measured against): the same app as stock uvicorn serves it,
  `uvicorn.run(app, host=..., port=...)` with default settings except logging: `log_level="warning"` and
  `access_log=False` (the integration batches its access log; a line per request here would only fill the log).
  uvicorn binds the socket itself (asyncio's `create_server`).
- floor (scenario floor): the own-settings app that also does the least any receiver that answers like the
  Generic Webhook must do per event, and nothing else: parse the JSON body, serialize the event with the request
  headers into rawJSON, and answer the incident as JSON. No auth, no incident creation, no logging: what is left
  between it and (b) is the integration's own work.

Only the standard library, uvicorn and (for own and floor) the integration are imported, so that it runs on the
image replica (`.venv-image`) as well as on the dev venv.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from bench.payloads import ALERT

REPO = Path(__file__).resolve().parents[1]
INTEGRATION_DIR = REPO / "Packs" / "GenericWebhook" / "Integrations" / "GenericWebhook"
SCRIPT_ENV_DIR = REPO / "xsoar_local" / "script_env"
HOST = "127.0.0.1"
BIND_HOST_VAR = "GENERIC_WEBHOOK_BIND_HOST"  # where bind_listen_socket binds (xsoar-local sets it the same)

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
        loop = type(asyncio.get_running_loop())
        print(f"bench.bare_app: loop {loop.__module__}.{loop.__qualname__}", flush=True)
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


def _protocol_name(http: Any) -> str:
    return http if isinstance(http, str) else getattr(http, "__name__", repr(http))


def serve_own(port: int, asgi_app: Callable) -> None:
    """`asgi_app` on the integration's own settings: its listen socket and its uvicorn.Config."""
    sys.path[:0] = [str(SCRIPT_ENV_DIR), str(INTEGRATION_DIR)]
    import GenericWebhook  # the integration, for its socket and uvicorn settings

    os.environ.setdefault(BIND_HOST_VAR, HOST)
    sock = GenericWebhook.bind_listen_socket(port)
    settings = GenericWebhook.WebhookConfig.from_params({"longRunningPort": port})
    config = GenericWebhook.server_config_for(settings, asgi_app)
    # One line for the benchmark's record: what the shared settings gave this interpreter.
    print(
        f"bench.bare_app: listen_proto={sock.proto} "
        f"http={_protocol_name(getattr(config, 'http_protocol_class', config.http))}",
        flush=True,
    )
    uvicorn.Server(config).run(sockets=[sock])


def serve_stock(port: int) -> None:
    """The bare app as stock uvicorn serves it (default settings; logging quieted, see the module docstring)."""
    print("bench.bare_app: stock uvicorn.run", flush=True)
    uvicorn.run(app, host=HOST, port=port, log_level="warning", access_log=False)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_app", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--mode",
        choices=["own", "floor", "stock"],
        default="own",
        help="own: bare app on the integration's settings; floor: the floor app on them; stock: uvicorn.run",
    )
    args = parser.parse_args()
    if args.mode == "stock":
        serve_stock(args.port)
    else:
        serve_own(args.port, floor_app if args.mode == "floor" else app)


if __name__ == "__main__":
    main()
