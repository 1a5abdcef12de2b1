"""The reroute's upstream pool against scripted HTTP/1.x servers: framing, reuse, stale connections, timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import pytest

from xsoar_local.config import ServerConfig
from xsoar_local.gateway import Reroute
from xsoar_local.supervisor import InstanceState
from xsoar_local.upstream import (
    UpstreamConnectError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamTimeout,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler) -> tuple[asyncio.Server, int, list[int]]:
    """A loopback server running `handler` per connection; the list counts the connections."""
    connections: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], connections


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = dict(line.lower().split(b": ", 1) for line in lines[1:] if line)
    if b"content-length" in headers:
        return head, await reader.readexactly(int(headers[b"content-length"]))
    body = b""
    if headers.get(b"transfer-encoding") == b"chunked":
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")
    return head, body


async def body_of(
    pool: UpstreamPool,
    port: int,
    method: str = "GET",
    body: AsyncIterator[bytes] | None = None,
    length: int | None = None,
) -> tuple[int, bytes]:
    response = await pool.request(port, method, "/", [], body, length)
    try:
        return response.status, b"".join([chunk async for chunk in response.chunks()])
    finally:
        response.close()


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coroutine)


def test_keep_alive_connections_are_reused_and_bodies_framed_both_ways() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head, body = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            answer = head.split(b" ")[0] + b" " + body
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))

    async def scenario() -> None:
        server, port, connections = await serve(echo)
        pool = UpstreamPool(read_timeout=5)
        large = b"y" * 200_000
        assert await body_of(pool, port) == (200, b"GET ")
        assert await body_of(pool, port, "POST", body=chunks(b"small"), length=5) == (200, b"POST small")
        assert await body_of(pool, port, "PUT", body=chunks(large[:1000], large[1000:]), length=None) == (
            200,
            b"PUT " + large,
        )
        assert len(connections) == 1
        await pool.aclose()
        server.close()

    run(scenario())


def test_idle_connections_are_closed_once_expired_without_another_request() -> None:
    """An idle pooled connection is closed at its expiry by the pool itself: an idle gateway holds none (before,
    each stayed open until the next request, half-closed once the instance's keep-alive ended)."""
    ended = asyncio.Event()

    async def answer_then_wait(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await reader.read()  # b"" once the pool closes its side
        ended.set()

    async def scenario() -> None:
        server, port, _ = await serve(answer_then_wait)
        pool = UpstreamPool(read_timeout=5, idle_expiry=0.2)
        assert await body_of(pool, port) == (200, b"ok")
        assert pool.idle_connections() == 1
        await asyncio.wait_for(ended.wait(), 10)
        assert pool.idle_connections() == 0
        await pool.aclose()
        server.close()

    run(scenario())


def test_chunked_close_delimited_and_bodiless_answers() -> None:
    answers = [
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nuntil the end",
    ]

    async def scripted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while answers:
            await read_request(reader)
            answer = answers.pop(0)
            writer.write(answer)
            if answer.startswith(b"HTTP/1.0"):
                return

    async def scenario() -> None:
        server, port, connections = await serve(scripted)
        pool = UpstreamPool(read_timeout=5)
        assert await body_of(pool, port) == (200, b"abcde")
        assert await body_of(pool, port) == (204, b"")
        assert await body_of(pool, port) == (200, b"until the end")
        assert len(connections) == 1
        server.close()

    run(scenario())


def test_a_pooled_connection_the_instance_closed_is_replaced_transparently() -> None:
    async def one_answer_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        # Claims keep-alive, then closes right after, as a server whose keep-alive timeout passed would.
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async def scenario() -> None:
        server, port, connections = await serve(one_answer_per_connection)
        pool = UpstreamPool(read_timeout=5)
        assert await body_of(pool, port) == (200, b"ok")
        # The close has reached the pool: the connection is dropped before the POST could go on it.
        await asyncio.sleep(0.05)
        assert await body_of(pool, port, "POST", body=chunks(b"{}"), length=2) == (200, b"ok")
        assert len(connections) == 2
        server.close()

    run(scenario())


def test_errors_are_typed_for_the_gateway() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")

    async def scenario() -> None:
        pool = UpstreamPool(read_timeout=0.3)
        slow_server, slow_port, _ = await serve(silent)
        with pytest.raises(UpstreamTimeout):
            await body_of(pool, slow_port)
        bad_server, bad_port, _ = await serve(garbage)
        with pytest.raises(UpstreamProtocolError):
            await body_of(pool, bad_port)
        slow_server.close()
        bad_server.close()
        with pytest.raises(UpstreamConnectError):
            await body_of(pool, bad_port)

    run(scenario())


def test_a_failed_new_connection_is_never_retried_and_a_pooled_one_only_when_safe() -> None:
    """Given an instance that reads a request and closes without answering, when the request went on a new
    connection, then it is not sent again; on a pooled connection, a GET is sent again but a POST is not."""
    received: list[bytes] = []

    async def answers_once_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Answers the first request of a connection (unless its path is /drop), then reads the next one and
        # closes without answering.
        head, _ = await read_request(reader)
        received.append(head.split(b" ")[0])
        if b" /drop " in head:
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        head, _ = await read_request(reader)
        received.append(head.split(b" ")[0])

    async def scenario() -> None:
        server, port, connections = await serve(answers_once_per_connection)
        pool = UpstreamPool(read_timeout=5)
        with pytest.raises(UpstreamProtocolError):
            await pool.request(port, "GET", "/drop", [], None, None)
        with pytest.raises(UpstreamProtocolError):
            await pool.request(port, "POST", "/drop", [], chunks(b"{}"), 2)
        assert received == [b"GET", b"POST"]
        assert len(connections) == 2

        received.clear()
        assert await body_of(pool, port) == (200, b"ok")
        assert await body_of(pool, port) == (200, b"ok")
        assert received == [b"GET", b"GET", b"GET"]
        assert len(connections) == 4

        received.clear()
        with pytest.raises(UpstreamProtocolError):
            await pool.request(port, "POST", "/", [], chunks(b"{}"), 2)
        assert received == [b"POST"]
        assert len(connections) == 4
        await pool.aclose()
        server.close()

    run(scenario())


def test_a_slow_upload_does_not_count_against_the_read_timeout() -> None:
    """Given a read timeout of 0.5 s, when the caller takes 1.5 s to upload a large body, then the instance's
    answer after the upload is relayed; a silent instance still times out once the upload is done."""

    async def reads_then_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, body = await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d" % (len(str(len(body))), len(body)))
        await writer.drain()

    async def slow_body() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 100_000
            await asyncio.sleep(0.15)

    async def scenario() -> None:
        server, port, _ = await serve(reads_then_answers)
        pool = UpstreamPool(read_timeout=0.5)
        assert await body_of(pool, port, "POST", body=slow_body(), length=1_000_000) == (200, b"1000000")
        await pool.aclose()
        server.close()

    run(scenario())


@pytest.mark.parametrize("size_line", [b"+5", b"0x5", b" 5", b"5_0", b"-5", b""])
def test_a_malformed_chunk_size_is_a_protocol_error(size_line: bytes) -> None:
    async def bad_chunks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size_line + b"\r\nhello\r\n0\r\n\r\n")
        await writer.drain()

    async def scenario() -> None:
        server, port, _ = await serve(bad_chunks)
        pool = UpstreamPool(read_timeout=5)
        with pytest.raises(UpstreamProtocolError):
            await body_of(pool, port)
        server.close()

    run(scenario())


# The gateway (the reroute's ASGI app) in front of a scripted instance.


class _Instance:
    name = "x"
    supervised = enabled = True

    def __init__(self, port: int) -> None:
        self.listen_port = port


class _Process:
    state = InstanceState.RUNNING

    def retry_after(self) -> int:
        return 1


class _Supervisor:
    def get(self, name: str) -> _Process:
        return _Process()


async def through_gateway(
    port: int, path: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[int, list[tuple[bytes, bytes]], list[dict[str, Any]]]:
    """One GET through the reroute to `path` of the instance on `port`: status, headers, and the body messages
    sent to the caller, each with the loop time it was sent at."""
    server = ServerConfig(config={"instance.execute.external": "true"}, upstream_timeout=5)
    pool = UpstreamPool(read_timeout=5)
    app = Reroute([_Instance(port)], _Supervisor(), server, pool)  # type: ignore[list-item, arg-type]
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/instance/execute/x" + path.decode(),
        "raw_path": b"/instance/execute/x" + path,
        "query_string": b"",
        "headers": [(b"host", b"gw:1"), *(headers or [])],
        "client": ("10.0.0.9", 5000),
        "scheme": "http",
    }
    start: dict[str, Any] = {}
    bodies: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        else:
            bodies.append({**message, "at": asyncio.get_running_loop().time()})

    await app(scope, receive, send)
    await pool.aclose()
    return start["status"], start["headers"], bodies


def test_the_gateway_relays_framing_and_headers_correctly() -> None:
    """Chunked + Content-Length: no Content-Length relayed; 304: no Content-Length; headers the instance names
    in Connection (any case) are dropped; a bad or repeated Content-Length is 502; the caller's own
    X-Forwarded-Host/Proto are replaced by the gateway's, X-Forwarded-For gets the caller added."""
    answers = {
        b"/chunked": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: X-Secret\r\nx-secret: s\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"/304": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nETag: x\r\n\r\n",
        b"/bad-length": b"HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nok",
        b"/two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    }
    seen: list[bytes] = []

    async def scripted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        seen.append(head)
        writer.write(answers[head.split(b" ")[1]])
        await writer.drain()

    async def scenario() -> None:
        server, port, _ = await serve(scripted)
        status, headers, bodies = await through_gateway(
            port,
            b"/chunked",
            [(b"x-forwarded-host", b"evil"), (b"x-forwarded-proto", b"https"), (b"x-forwarded-for", b"1.2.3.4")],
        )
        assert status == 200
        assert b"content-length" not in dict(headers)
        assert b"x-secret" not in dict(headers)
        assert b"".join(item["body"] for item in bodies) == b"hello"
        sent = dict(line.lower().split(b": ", 1) for line in seen[-1].split(b"\r\n")[1:] if line)
        assert sent[b"x-forwarded-host"] == b"gw:1"
        assert sent[b"x-forwarded-proto"] == b"http"
        assert sent[b"x-forwarded-for"] == b"1.2.3.4, 10.0.0.9"
        assert seen[-1].lower().count(b"x-forwarded-") == 3

        status, headers, _ = await through_gateway(port, b"/304")
        assert status == 304
        assert b"content-length" not in dict(headers)
        for path in (b"/bad-length", b"/two-lengths"):
            status, _, _ = await through_gateway(port, path)
            assert status == 502, path
        server.close()

    run(scenario())


def test_the_gateway_relays_each_chunk_as_it_arrives() -> None:
    """Given an instance that sends a chunk, pauses 0.5 s, then sends the rest, when rerouted, then the first
    chunk reaches the caller before the pause ends."""

    async def streaming(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()

    async def scenario() -> None:
        server, port, _ = await serve(streaming)
        status, _, bodies = await through_gateway(port, b"/")
        assert status == 200
        assert b"".join(item["body"] for item in bodies) == b"firstsecond"
        first = next(item for item in bodies if item["body"] == b"first")
        assert bodies[-1]["at"] - first["at"] >= 0.4
        assert bodies[-1]["more_body"] is False
        server.close()

    run(scenario())


@pytest.mark.parametrize("guarded", [False, True], ids=["plain ASGI server", "guarded connection"])
def test_a_stalled_body_is_timed_by_the_gateway_unless_the_connection_guard_times_it(guarded: bool) -> None:
    """Served without the connection guard (another ASGI server), the reroute itself answers 408 naming
    server.body_timeout when a body stalls; under the guard (BODY_GUARD_KEY in the scope) it leaves the deadline to
    the guard, which answers and closes: the reroute then sees the disconnect and sends nothing."""
    from xsoar_local.listener import BODY_GUARD_KEY

    async def never_called(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async def scenario() -> None:
        server, port, _ = await serve(never_called)
        config = ServerConfig(config={"instance.execute.external": "true"}, body_timeout=0.2)
        pool = UpstreamPool(read_timeout=5)
        app = Reroute([_Instance(port)], _Supervisor(), config, pool)  # type: ignore[list-item, arg-type]
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/instance/execute/x",
            "raw_path": b"/instance/execute/x",
            "query_string": b"",
            "headers": [(b"host", b"gw:1"), (b"content-length", b"10")],
            "client": ("10.0.0.9", 5000),
            "scheme": "http",
        }
        if guarded:
            scope[BODY_GUARD_KEY] = "guarded"
        disconnected = asyncio.Event()
        messages = [{"type": "http.request", "body": b"12345", "more_body": True}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            if guarded:  # past server.body_timeout, the guard's deadline passes: it answers 408 and closes
                await asyncio.sleep(3 * config.body_timeout)
                disconnected.set()
                return {"type": "http.disconnect"}
            await asyncio.Event().wait()  # the caller stalls for ever
            raise AssertionError("unreachable")

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await asyncio.wait_for(app(scope, receive, send), 10)
        await pool.aclose()
        server.close()
        if guarded:
            assert disconnected.is_set() and sent == []
        else:
            assert sent[0]["status"] == 408
            assert b"paused for over 0.2 s (server.body_timeout)" in sent[1]["body"]

    run(scenario())
