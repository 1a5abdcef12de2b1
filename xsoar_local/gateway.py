"""The server reroute: `/instance/execute/<name>[/<path>][?query]` to `http://127.0.0.1:<listen port>/<path>[?query]`.

A plain ASGI app, so a request passes through nothing but this: find the instance, check the caller may use it,
check it is up, then stream the request to it and its response back, neither body held in memory whole. The
multi-tenant form `/acc_<account>/instance/execute/<name>` reaches the same instance.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from fastapi.responses import JSONResponse

from xsoar_local.auth import DuplicateApiKeyHeader, api_key_carriers
from xsoar_local.config import ServerConfig
from xsoar_local.instances import Instance
from xsoar_local.listener import BODY_GUARD_KEY
from xsoar_local.request_log import Recording, Redactor, RequestLog, entry_of
from xsoar_local.supervisor import InstanceProcess, InstanceState, Supervisor
from xsoar_local.upstream import (
    Headers,
    UpstreamConnectError,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
    header_tokens,
)

log = logging.getLogger(__name__)

BODY_TOTAL_FACTOR = 4  # a rerouted body may take this many times server.body_timeout in all
REROUTE_PATH = re.compile(r"^(?:/acc_[^/]+)?/instance/execute/(?P<name>[^/]+)(?P<rest>/.*)?$")

# Headers that describe one connection, not the message; a proxy must not pass them on (RFC 9110 7.6.1).
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"proxy-connection"}
    | {b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
# Not passed on either: the upstream pool sets the Host and the body's framing (Content-Length or chunked),
# X-Forwarded-For is passed on with the caller's address added, and the gateway sets X-Forwarded-Host and
# X-Forwarded-Proto itself (a caller's own would be believed by the instance).
_X_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto"})
_NOT_FORWARDED = _HOP_BY_HOP | _X_FORWARDED | {b"host", b"content-length"}

Scope = dict[str, Any]


def error_response(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


@dataclass(frozen=True)
class Refusal:
    """An answer the gateway gives itself, instead of the instance's."""

    status: int
    error: str
    detail: str
    headers: dict[str, str] | None = field(default=None)

    def response(self) -> JSONResponse:
        return error_response(self.status, self.error, self.detail, self.headers)


def upstream_pool(server: ServerConfig) -> UpstreamPool:
    """One pool of keep-alive connections to the instances, for every rerouted request."""
    return UpstreamPool(read_timeout=server.upstream_timeout)


def is_reroute(path: str) -> bool:
    return REROUTE_PATH.match(path) is not None


class Reroute:
    """The ASGI app behind every `/instance/execute/...` path."""

    def __init__(
        self,
        instances: list[Instance],
        supervisor: Supervisor,
        server: ServerConfig,
        upstream: UpstreamPool,
        requests: RequestLog | None = None,
    ) -> None:
        self._instances = {item.name: item for item in instances}
        self._external = {item.name: server.is_external(item.name) for item in instances}
        self._supervisor = supervisor
        self._server = server
        self._upstream = upstream
        self._requests = requests if requests is not None and requests.enabled else None
        self._redactors = (
            {item.name: Redactor.of(item.params, server.api_key) for item in instances} if self._requests else {}
        )

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        raw_path = scope.get("raw_path") or scope["path"].encode()
        match = REROUTE_PATH.match(raw_path.decode("latin-1"))
        if match is None:
            await error_response(404, "not_found", f"no route for {scope['path']}")(scope, receive, send)
            return
        name = unquote(match["name"])
        refusal, carriers = self._admit(name, scope["headers"])
        target = match["rest"] or "/"
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        recording = None
        if self._requests is not None and name in self._instances:  # an unknown name has no log to go in
            client = scope["client"][0] if scope.get("client") else ""
            recording = Recording(name, scope["method"], target, client, asyncio.get_running_loop().time())
        try:
            if refusal is not None:
                await self._refuse(refusal, recording, scope, receive, send)
            else:
                await self._forward(scope, receive, send, self._instances[name], target, carriers, recording)
        finally:
            if recording is not None and self._requests is not None:
                duration = asyncio.get_running_loop().time() - recording.started
                self._requests.add(entry_of(recording, self._redactors[name], scope["headers"], carriers, duration))

    @staticmethod
    async def _refuse(refusal: Refusal, recording: Recording | None, scope: Scope, receive: Any, send: Any) -> None:
        if recording is not None:
            recording.refused(refusal.status, refusal.error, refusal.detail)
        await refusal.response()(scope, receive, send)

    def _admit(self, name: str, headers: Headers) -> tuple[Refusal | None, frozenset[bytes]]:
        """The refusal for a request the instance must not get, or None and the headers that held the API key."""
        # The headers carrying the platform's API key never reach the instance, external or not: there they would
        # end up in incidents, samples and the page.
        try:
            carriers = api_key_carriers(headers, self._server.api_key)
        except DuplicateApiKeyHeader as exc:
            return Refusal(400, exc.error, exc.detail), frozenset()
        instance = self._instances.get(name)
        if instance is None:
            return Refusal(404, "unknown_instance", self._unknown_detail(name, bool(carriers))), carriers
        if not instance.supervised:
            return Refusal(404, "instance_not_served", f"instance {name!r} is {instance.unserved_reason}"), carriers
        if not self._external[name] and not carriers:
            return Refusal(401, "unauthorized", self._unauthorized_detail(name)), carriers
        process = self._supervisor.get(name)
        if process is None or process.state != InstanceState.RUNNING:
            # Never forwarded: a port the instance does not hold may be another process's.
            reason = process.reason() if process is not None else f"instance {name!r} is stopped"
            return _unavailable(reason, process), carriers
        return None, carriers

    def _unknown_detail(self, name: str, authenticated: bool) -> str:
        # The reroute is what tunnels expose under public names: its 404 names instances only to a caller with the
        # API key, and then only the external ones (a non-external instance's name is never shown here).
        if not authenticated:
            return f"no instance named {name!r}; fix: check the name in the URL (`xsoar-local status` lists them)"
        external = ", ".join(sorted(item for item, external in self._external.items() if external)) or "none"
        return f"no instance named {name!r} (external instances: {external})"

    def _unauthorized_detail(self, name: str) -> str:
        external_key = f"instance.execute.external.{name}"
        if not self._server.api_key:
            return (
                f"instance {name!r} is not external and no server.api_key is set;"
                f" fix: set {external_key}: 'true' under server.config, or set server.api_key and send it"
            )
        return (
            f"instance {name!r} is not external; fix: send the API key in the X-API-Key header"
            f" (or Authorization), or set {external_key}: 'true' under server.config"
        )

    async def _forward(
        self,
        scope: Scope,
        receive: Any,
        send: Any,
        instance: Instance,
        target: str,
        carriers: frozenset[bytes],
        recording: Recording | None,
    ) -> None:
        headers, content_length, streamed = _forwarded_headers(scope, drop=carriers)
        if content_length == -1:
            refusal = Refusal(400, "invalid_request", "Content-Length is not a number")
            await self._refuse(refusal, recording, scope, receive, send)
            return
        has_body = streamed or bool(content_length)
        assert instance.listen_port is not None
        try:
            upstream = await self._upstream.request(
                instance.listen_port,
                scope["method"],
                target,
                headers,
                _body(receive, None if BODY_GUARD_KEY in scope else self._server.body_timeout, recording)
                if has_body
                else None,
                None if streamed else content_length,
            )
        except _ClientGone:
            if recording is not None:
                recording.refused(499, "client_disconnected", "the caller disconnected before its body was read whole")
            return
        except _ClientTooSlow as slow:
            refusal = Refusal(408, "request_timeout", str(slow), {"Connection": "close"})
            await self._refuse(refusal, recording, scope, receive, send)
            return
        except UpstreamError as exc:
            await self._refuse(self._upstream_failed(instance, exc), recording, scope, receive, send)
            return
        try:
            await _relay(upstream, send, recording)
        except UpstreamError as exc:
            # The status line is gone already: all that is left is to end the connection early.
            log.warning("reroute to instance %r broke off while streaming the response: %s", instance.name, exc)
        finally:
            upstream.close()

    def _upstream_failed(self, instance: Instance, exc: UpstreamError) -> Refusal:
        process = self._supervisor.get(instance.name)
        if isinstance(exc, UpstreamTimeout):
            detail = f"instance {instance.name!r} did not answer within {self._server.upstream_timeout:g}s"
            return Refusal(504, "upstream_timeout", detail)
        if isinstance(exc, UpstreamConnectError):
            detail = f"instance {instance.name!r} does not accept connections on port {instance.listen_port}: {exc}"
            return _unavailable(detail, process)
        detail = f"instance {instance.name!r} did not answer properly: {exc}"
        if process is None or process.state != InstanceState.RUNNING:
            # Most likely the process died under the request; the supervisor restarts it.
            return _unavailable(detail, process)
        log.warning("reroute to instance %r failed: %s", instance.name, exc)
        return Refusal(502, "bad_upstream_response", detail)


def _unavailable(detail: str, process: InstanceProcess | None) -> Refusal:
    retry_after = process.retry_after() if process is not None else 1
    return Refusal(503, "instance_unavailable", detail, headers={"Retry-After": str(retry_after)})


class _ClientGone(Exception):
    """The caller disconnected before its request body was read whole."""


class _ClientTooSlow(Exception):
    """The caller paused its request body too long, or took too long in all (its detail says which)."""


async def _body(receive: Any, idle: float | None, recording: Recording | None = None) -> AsyncIterator[bytes]:
    """The request body as it arrives, chunk by chunk: a pause over `idle` seconds, or over BODY_TOTAL_FACTOR times
    that in all, ends it with _ClientTooSlow, so a caller cannot hold a connection and an upstream one with a body
    it trickles (a small body is read whole before anything goes upstream). `idle` None: the connection's guard
    keeps those deadlines itself (it answers 408 and closes; the pending receive() sees the disconnect)."""
    loop = asyncio.get_running_loop()
    deadline = 0.0 if idle is None else loop.time() + BODY_TOTAL_FACTOR * idle
    while True:
        message = await (receive() if idle is None else _receive_in_time(receive, idle, deadline - loop.time()))
        if message["type"] == "http.disconnect":
            raise _ClientGone
        if message.get("body"):
            if recording is not None:
                recording.body_chunk(message["body"])
            yield message["body"]
        if not message.get("more_body", False):
            return


async def _receive_in_time(receive: Any, idle: float, left: float) -> Any:
    try:
        async with asyncio.timeout(max(min(idle, left), 0)):
            return await receive()
    except TimeoutError:
        if left <= idle:
            detail = f"the request body took over {BODY_TOTAL_FACTOR * idle:g} s in all"
        else:
            detail = f"the request body paused for over {idle:g} s"
        raise _ClientTooSlow(f"{detail} (server.body_timeout); send it without pauses") from None


async def _relay(upstream: UpstreamResponse, send: Any, recording: Recording | None) -> None:
    headers = _response_headers(upstream)
    if recording is not None:
        recording.answer_start(upstream.status, headers)
    await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
    # Each chunk goes out as it arrives (a streaming answer is not delayed); when the Content-Length says a
    # chunk is the last one, it goes out marked as the end (one write fewer per response).
    left, ended = upstream.length, False
    async for chunk in upstream.chunks():
        if left is not None:
            left -= len(chunk)
        ended = left == 0
        if recording is not None:
            recording.answer_chunk(chunk)
        await send({"type": "http.response.body", "body": chunk, "more_body": not ended})
    if not ended:
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _forwarded_headers(scope: Scope, drop: frozenset[bytes]) -> tuple[Headers, int | None, bool]:
    """The caller's headers less hop-by-hop ones and the API key, plus X-Forwarded-*; also the body's
    Content-Length (None if not given, -1 if not a number) and whether it comes chunked."""
    raw: Headers = scope["headers"]
    values = dict(raw)
    skip = _NOT_FORWARDED | header_tokens(raw, b"connection") | drop
    headers = [(key, value) for key, value in raw if key not in skip]
    client = scope["client"][0].encode("latin-1") if scope.get("client") else b""
    previous = b", ".join(value for key, value in raw if key == b"x-forwarded-for")
    headers.append((b"x-forwarded-for", previous + b", " + client if previous else client))
    headers.append((b"x-forwarded-proto", scope.get("scheme", "http").encode("latin-1")))
    if b"host" in values:
        headers.append((b"x-forwarded-host", values[b"host"]))
    length = values.get(b"content-length")
    content_length = None if length is None else int(length) if length.strip().isdigit() else -1
    return headers, content_length, b"transfer-encoding" in values


def _response_headers(upstream: UpstreamResponse) -> Headers:
    skip = _HOP_BY_HOP | header_tokens(upstream.headers, b"connection")
    return [(key, value) for key, value in upstream.headers if key not in skip]
