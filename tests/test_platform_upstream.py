"""The reroute's upstream pool against scripted HTTP/1.x servers: framing, reuse, stale connections, timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import pytest

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
