"""The platform's ASGI app: reroute paths go straight to the gateway, at any Host; everything else to the read API,
only at an allowed Host (xsoar_local/hosts.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.websockets import WebSocketClose

from xsoar_local.api import PlatformView, create_api
from xsoar_local.config import ServerConfig
from xsoar_local.console import add_console
from xsoar_local.gateway import Reroute, error_response, is_reroute
from xsoar_local.hosts import AllowedHosts
from xsoar_local.instances import Instance
from xsoar_local.listener import MAX_HEADER_BYTES, head_size, headers_too_large_app
from xsoar_local.request_log import RequestLog
from xsoar_local.store import Store
from xsoar_local.supervisor import Supervisor
from xsoar_local.upstream import UpstreamPool


class PlatformApp:
    # Rerouted requests are the hot path: they skip the API framework's routing and middleware entirely.
    def __init__(self, reroute: Reroute, api: FastAPI, hosts: AllowedHosts) -> None:
        self.reroute = reroute
        self.api = api
        self.hosts = hosts

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and head_size(scope) > MAX_HEADER_BYTES:  # whole, in one read: see the guard
            await headers_too_large_app(scope, receive, send)
            return
        if scope["type"] == "http" and is_reroute(scope["path"]):
            await self.reroute(scope, receive, send)
            return
        refusal = self.hosts.refusal(scope["headers"]) if scope["type"] in ("http", "websocket") else None
        if refusal is None:
            await self.api(scope, receive, send)
        elif scope["type"] == "websocket":
            await WebSocketClose(code=1008, reason=refusal.error)(scope, receive, send)
        else:
            await error_response(refusal.status, refusal.error, refusal.detail)(scope, receive, send)


def create_app(
    *,
    instances: list[Instance],
    supervisor: Supervisor,
    server: ServerConfig,
    store: Store,
    upstream: UpstreamPool,
    base_url: str,
    config_path: Path | None = None,
    requests: RequestLog | None = None,
) -> PlatformApp:
    view = PlatformView(instances, supervisor, store, base_url, config_path)
    api = create_api(view, server)
    add_console(api, view, server)
    hosts = AllowedHosts.of(server.host, server.allowed_hosts)
    return PlatformApp(Reroute(instances, supervisor, server, upstream, requests), api, hosts)
