"""The platform's ASGI app: reroute paths go straight to the gateway, everything else to the read API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI

from xsoar_local.api import PlatformView, create_api
from xsoar_local.config import ServerConfig
from xsoar_local.gateway import Reroute, is_reroute
from xsoar_local.instances import Instance
from xsoar_local.store import Store
from xsoar_local.supervisor import Supervisor
from xsoar_local.upstream import UpstreamPool


class PlatformApp:
    # Rerouted requests are the hot path: they skip the API framework's routing and middleware entirely.
    def __init__(self, reroute: Reroute, api: FastAPI) -> None:
        self.reroute = reroute
        self.api = api

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and is_reroute(scope["path"]):
            await self.reroute(scope, receive, send)
        else:
            await self.api(scope, receive, send)


def create_app(
    *,
    instances: list[Instance],
    supervisor: Supervisor,
    server: ServerConfig,
    store: Store,
    upstream: UpstreamPool,
    base_url: str,
    config_path: Path | None = None,
) -> PlatformApp:
    api = create_api(PlatformView(instances, supervisor, store, base_url, config_path), server)
    return PlatformApp(Reroute(instances, supervisor, server, upstream), api)
