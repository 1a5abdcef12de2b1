"""The console: the page at `/`, rendered on the server from the store, and the parts of it that its script fetches
again every few seconds to keep it live (`/console/...`; an unchanged part is answered 304 by its ETag).

One renderer: the page and its parts are the same Jinja templates (templates/), so the page works without script
and what the script shows is escaped the same way.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from xsoar_local import __version__
from xsoar_local.api import MAX_LIMIT, SEVERITY_WORDS, ApiError, PlatformView, authorized, incident_query
from xsoar_local.config import ServerConfig
from xsoar_local.store import IncidentQuery

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)
REFRESH_SECONDS = 2
REQUESTS_SHOWN = 50
_WORDS = {value: word.capitalize() for word, value in SEVERITY_WORDS.items()}


def severity_word(value: Any) -> str:
    """The platform's word for a severity (0.5 Informational, 1 Low, ... 4 Critical), or the value as it is."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _WORDS.get(float(value), str(value))
    return str(value)


def pretty_json(raw: Any) -> str:
    """rawJSON indented, its keys in the sender's order; text that is not JSON as it is."""
    if raw is None:
        return ""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return raw
    return json.dumps(raw, indent=2, ensure_ascii=False)


TEMPLATES.filters["severity_word"] = severity_word
TEMPLATES.filters["pretty_json"] = pretty_json


def _pages(query: IncidentQuery, total: int) -> dict[str, Any]:
    return {
        "first": query.offset + 1 if total else 0,
        "last": min(query.offset + query.limit, total),
        "previous": max(query.offset - query.limit, 0) if query.offset else None,
        "next": query.offset + query.limit if query.offset + query.limit < total else None,
    }


def _part(request: Request, template: str, **context: Any) -> Response:
    html = TEMPLATES.get_template(template).render(**context)
    tag = '"' + hashlib.sha256(html.encode()).hexdigest()[:32] + '"'
    headers = {"ETag": tag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == tag:
        return Response(status_code=304, headers=headers)
    return HTMLResponse(html, headers=headers)


def add_console(api: FastAPI, view: PlatformView, server: ServerConfig) -> None:
    keyed = authorized(server)

    def instances() -> list[dict[str, Any]]:
        return [view.instance(item, server) for item in view.instances]

    def incidents(query: IncidentQuery) -> dict[str, Any]:
        total, found = view.store.find_incidents(query)
        return {"incidents": found, "total": total, "query": query, "pages": _pages(query, total)}

    def requests(instance: str | None) -> list[dict[str, Any]]:
        return [view.request(item) for item in view.store.list_requests(instance=instance, limit=REQUESTS_SHOWN)]

    def detail(incident_id: str) -> dict[str, Any]:
        found = view.store.get_incident(incident_id)
        if found is None:
            raise ApiError(404, "unknown_incident", f"no incident with id {incident_id!r}")
        source = view.store.request_of_incident(found)
        return {"incident": found, "source": view.request(source) if source is not None else None}

    @api.get("/", response_class=HTMLResponse, dependencies=keyed)
    def page(
        request: Request,
        query: Annotated[IncidentQuery, Depends(incident_query)],
        incident: Annotated[str | None, Query(description="the incident shown in detail")] = None,
    ) -> Response:
        return _part(
            request,
            "index.html",
            instances=instances(),
            requests=requests(query.instance),
            detail=detail(incident) if incident else None,
            sorts=("created", "occurred", "severity"),
            severities=list(_WORDS.items()),
            limits=(25, 50, 100, 500, MAX_LIMIT),
            refresh_seconds=REFRESH_SECONDS,
            version=__version__,
            **incidents(query),
        )

    @api.get("/console/instances", response_class=HTMLResponse, dependencies=keyed)
    def instances_part(request: Request) -> Response:
        return _part(request, "_instances.html", instances=instances())

    @api.get("/console/incidents", response_class=HTMLResponse, dependencies=keyed)
    def incidents_part(request: Request, query: Annotated[IncidentQuery, Depends(incident_query)]) -> Response:
        return _part(request, "_incidents.html", **incidents(query))

    @api.get("/console/requests", response_class=HTMLResponse, dependencies=keyed)
    def requests_part(request: Request, instance: str | None = None) -> Response:
        return _part(request, "_requests.html", requests=requests(instance or None))

    @api.get("/console/incidents/{incident_id}", response_class=HTMLResponse, dependencies=keyed)
    def detail_part(request: Request, incident_id: str) -> Response:
        return _part(request, "_incident.html", **detail(incident_id))
