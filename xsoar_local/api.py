"""The read API (`/incidents`, `/instances`, `/health`) and the page at `/`, server-rendered from the store.

When `server.api_key` is set, everything here but `/health` needs it, as the incidents hold what senders posted.
Whatever the key, all of it answers only to the allowed Host names (xsoar_local/hosts.py; checked in app.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from xsoar_local import __version__
from xsoar_local.auth import DuplicateApiKeyHeader, api_key_carriers
from xsoar_local.config import ServerConfig
from xsoar_local.gateway import error_response
from xsoar_local.instances import Instance
from xsoar_local.store import Store, normalize_since
from xsoar_local.supervisor import Supervisor
from xsoar_local.try_line import try_line, why_no_try_line

log = logging.getLogger(__name__)

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)

MAX_LIMIT = 1000


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


class PlatformView:
    """What the read API shows about the running platform, in the shape `/instances` returns."""

    def __init__(
        self,
        instances: list[Instance],
        supervisor: Supervisor,
        store: Store,
        base_url: str,
        config_path: Path | None = None,
    ) -> None:
        self.instances = instances
        self.supervisor = supervisor
        self.store = store
        self.base_url = base_url
        self.config_path = config_path

    def instance(self, instance: Instance, server: ServerConfig) -> dict[str, Any]:
        process = self.supervisor.get(instance.name)
        if process is not None:
            live = process.describe()
        else:
            live = {"status": instance.unserved_reason, "pid": None, "restarts": 0, "last_exit": None, "error": None}
        environment = instance.environment
        webhook_url = f"{self.base_url}{instance.webhook_path()}" if instance.supervised else None
        return {
            "name": instance.name,
            "integration": instance.integration.id,
            "pack": instance.integration.pack_id,
            # The docker image the integration names, and what it runs on here (the image replicated, or not).
            "image": instance.integration.docker_image,
            "environment": environment.describe() if environment is not None else None,
            "enabled": instance.enabled,
            "long_running": instance.long_running,
            "external": server.is_external(instance.name),
            **live,
            "port": instance.listen_port,
            "module_health": self.store.get_module_health(instance.name),
            "webhook_url": webhook_url,
            "log_file": str(self.supervisor.log_path(instance.name)) if process is not None else None,
            # A command that reaches the instance as it is configured, secrets as $VARIABLES; only while it serves.
            "try": self._try(instance, server, webhook_url) if live["status"] == "running" and webhook_url else None,
        }

    def _try(self, instance: Instance, server: ServerConfig, webhook_url: str) -> dict[str, Any]:
        config_path = self.config_path or Path("xsoar-local.yaml")
        line = try_line(instance, server, webhook_url, config_path)
        if line is None:
            return {
                "command": None,
                "variables": {},
                "note": why_no_try_line(instance, server, webhook_url, config_path),
            }
        return {"command": line.command, "variables": dict(line.variables), "note": line.note or None}


def create_api(view: PlatformView, server: ServerConfig) -> FastAPI:
    api = FastAPI(title="xsoar-local", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)

    def require_api_key(request: Request) -> None:
        try:
            carriers = api_key_carriers(request.headers.raw, server.api_key)
        except DuplicateApiKeyHeader as exc:
            raise ApiError(400, exc.error, exc.detail) from None
        if server.api_key and not carriers:
            raise ApiError(
                401,
                "unauthorized",
                "this server has an API key; fix: send it in the X-API-Key header (or Authorization)",
                headers={"WWW-Authenticate": 'Basic realm="xsoar-local", charset="UTF-8"'},
            )

    authorized = [Depends(require_api_key)]

    @api.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.detail, headers=exc.headers)

    @api.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'][1:])}: {error['msg']}" for error in exc.errors()
        )
        return error_response(400, "invalid_request", problems)

    @api.exception_handler(404)
    async def _no_route(request: Request, _: Exception) -> JSONResponse:
        return error_response(404, "not_found", f"no route for {request.url.path}")

    @api.exception_handler(405)
    async def _wrong_method(request: Request, _: Exception) -> JSONResponse:
        return error_response(405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path}")

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The exception's text can hold anything (paths, stored data): it goes to the platform log only.
        log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal_error", "the request failed; see the platform log")

    @api.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "instances": {name: process.state.value for name, process in view.supervisor.processes.items()},
        }

    @api.get("/instances", dependencies=authorized)
    def instances() -> list[dict[str, Any]]:
        return [view.instance(item, server) for item in view.instances]

    @api.get("/incidents", dependencies=authorized)
    def incidents(
        instance: str | None = None,
        since: Annotated[str | None, Query(description="ISO-8601 time; incidents created since then")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    ) -> list[dict[str, Any]]:
        return view.store.list_incidents(instance=instance, since=_checked_since(since), limit=limit)

    @api.get("/incidents/{incident_id}", dependencies=authorized)
    def incident(incident_id: str) -> dict[str, Any]:
        found = view.store.get_incident(incident_id)
        if found is None:
            raise ApiError(404, "unknown_incident", f"no incident with id {incident_id!r}")
        return found

    @api.get("/", response_class=HTMLResponse, dependencies=authorized)
    def page(instance: str | None = None, limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50) -> HTMLResponse:
        found = view.store.list_incidents(instance=instance, limit=limit)
        html = TEMPLATES.get_template("index.html").render(
            instances=[view.instance(item, server) for item in view.instances],
            incidents=[{**item, "raw_json_pretty": _pretty_raw_json(item.get("rawJSON"))} for item in found],
            instance_filter=instance,
            version=__version__,
        )
        return HTMLResponse(html)

    return api


def _checked_since(since: str | None) -> str | None:
    if not since:
        return None
    try:
        normalize_since(since)
    except ValueError:
        raise ApiError(
            400,
            "invalid_request",
            f"since: {since!r} is not an ISO-8601 time in range (fix: e.g. 2024-05-01T12:00:00Z)",
        ) from None
    return since


def _pretty_raw_json(raw: Any) -> str:
    if raw is None:
        return ""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return raw
    return json.dumps(raw, indent=2, ensure_ascii=False, sort_keys=True)
