"""The read API (`/incidents`, `/requests`, `/instances`, `/health`) and the page at `/`, rendered from the store.

When `server.api_key` is set, everything here but `/health` needs it, as the incidents hold what senders posted.
Whatever the key, all of it answers only to the allowed Host names (xsoar_local/hosts.py; checked in app.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from xsoar_local import __version__
from xsoar_local.auth import DuplicateApiKeyHeader, api_key_carriers
from xsoar_local.config import ServerConfig
from xsoar_local.gateway import error_response
from xsoar_local.instances import Instance
from xsoar_local.request_log import curl_command
from xsoar_local.store import IncidentQuery, Store, normalize_since
from xsoar_local.supervisor import Supervisor
from xsoar_local.try_line import try_line, why_no_try_line

log = logging.getLogger(__name__)

MAX_LIMIT = 1000
MAX_SEARCH_CHARS = 500
# The platform's severity words (XSOAR's incident severities).
SEVERITY_WORDS = {"unknown": 0.0, "informational": 0.5, "low": 1.0, "medium": 2.0, "high": 3.0, "critical": 4.0}


class ApiError(Exception):
    """An answer of the read API or the page that names the cause: `error_response` renders it."""

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

    def request(self, entry: dict[str, Any]) -> dict[str, Any]:
        """A requests log entry as the API shows it: with the curl command that sends it again."""
        curl = curl_command(entry, self.base_url)
        return {**entry, "curl": {"command": curl.command, "variables": list(curl.variables), "note": curl.note}}

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


def authorized(server: ServerConfig) -> list[Any]:
    """The dependency of every route that shows stored data: the API key, when the server has one."""

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

    return [Depends(require_api_key)]


def create_api(view: PlatformView, server: ServerConfig) -> FastAPI:
    api = FastAPI(title="xsoar-local", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    keyed = authorized(server)

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

    @api.get("/instances", dependencies=keyed)
    def instances() -> list[dict[str, Any]]:
        return [view.instance(item, server) for item in view.instances]

    @api.get("/incidents", dependencies=keyed)
    def incidents(response: Response, query: Annotated[IncidentQuery, Depends(incident_query)]) -> list[dict[str, Any]]:
        total, found = view.store.find_incidents(query)
        response.headers["X-Total-Count"] = str(total)
        return found

    @api.get("/incidents/{incident_id}", dependencies=keyed)
    def incident(incident_id: str) -> dict[str, Any]:
        return _incident(incident_id)

    @api.get("/incidents/{incident_id}/request", dependencies=keyed)
    def incident_request(incident_id: str) -> dict[str, Any]:
        found = view.store.request_of_incident(_incident(incident_id))
        if found is None:
            raise ApiError(
                404,
                "unknown_request",
                f"the requests log no longer has (or never had) the request that created incident {incident_id!r}",
            )
        return view.request(found)

    def _incident(incident_id: str) -> dict[str, Any]:
        found = view.store.get_incident(incident_id)
        if found is None:
            raise ApiError(404, "unknown_incident", f"no incident with id {incident_id!r}")
        return found

    @api.get("/requests", dependencies=keyed)
    def requests(
        instance: str | None = None,
        before: Annotated[int | None, Query(ge=1, description="only entries with a smaller id (the next page)")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    ) -> list[dict[str, Any]]:
        found = view.store.list_requests(instance=instance, before=before, limit=limit)
        return [view.request(item) for item in found]

    @api.get("/requests/{request_id}", dependencies=keyed)
    def request(request_id: str) -> dict[str, Any]:
        found = view.store.get_request(request_id)
        if found is None:
            raise ApiError(404, "unknown_request", f"no entry with id {request_id!r} in the requests log")
        return view.request(found)

    return api


def incident_query(
    instance: str | None = None,
    incident_type: Annotated[str | None, Query(alias="type")] = None,
    severity: Annotated[str | None, Query(description="a number or a word: Unknown, Low, ... Critical")] = None,
    q: Annotated[str, Query(max_length=MAX_SEARCH_CHARS, description="words of the name or rawJSON")] = "",
    sort: Annotated[Literal["created", "occurred", "severity"], Query()] = "created",
    order: Annotated[Literal["desc", "asc"], Query()] = "desc",
    since: Annotated[str | None, Query(description="ISO-8601 time; incidents created since then")] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
) -> IncidentQuery:
    """The incidents `GET /incidents` and the page ask for, from the query string."""
    return IncidentQuery(
        instance=instance or None,
        type=incident_type or None,
        severity=_checked_severity(severity),
        since=_checked_since(since),
        text=q,
        sort=sort,
        descending=order == "desc",
        offset=offset,
        limit=limit,
    )


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


def _checked_severity(severity: str | None) -> float | None:
    if severity is None or severity == "":
        return None
    word = SEVERITY_WORDS.get(severity.strip().lower())
    if word is not None:
        return word
    try:
        return float(severity)
    except ValueError:
        words = ", ".join(word.capitalize() for word in SEVERITY_WORDS)
        raise ApiError(
            400, "invalid_request", f"severity: {severity!r} is neither a number nor one of {words}"
        ) from None
