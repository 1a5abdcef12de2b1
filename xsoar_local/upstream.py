"""Keep-alive HTTP/1.1 connections from the gateway to the instances' listen ports.

The reroute needs one thing from an HTTP client: send a request to 127.0.0.1:<port> and stream the response
back, reusing connections. This does exactly that over asyncio streams, which costs a fraction of a general
client per request (the reroute's throughput is a stated goal). Request bodies up to `SMALL_BODY` go out in
the same write as the head; larger ones stream while the response is awaited, so an instance that answers
early (401, 413) is not stuck behind an upload it will never read.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field

from xsoar_local.ports import INSTANCE_HOST

SMALL_BODY = 64 * 1024
READ_SIZE = 64 * 1024
MAX_HEAD = 64 * 1024
MAX_IDLE = 100

# Methods whose request may go again after a pooled connection failed without any answer (RFC 9110 9.2.2).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")

Headers = list[tuple[bytes, bytes]]


class UpstreamError(Exception):
    """The instance could not be reached, or broke the exchange."""


class UpstreamConnectError(UpstreamError):
    """Nothing accepts connections on the listen port."""


class UpstreamTimeout(UpstreamError):
    """The instance did not answer within the read timeout."""


class UpstreamProtocolError(UpstreamError):
    """The instance closed the connection or answered with something that is not HTTP/1.x."""


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = field(default_factory=time.monotonic)

    def close(self) -> None:
        self.writer.close()


class UpstreamResponse:
    """Status and headers of an instance's answer; `chunks()` streams its body, then the connection is reused."""

    def __init__(
        self,
        pool: UpstreamPool,
        port: int,
        connection: _Connection,
        head: _Head,
    ) -> None:
        self.status = head.status
        self.headers = head.headers
        self._pool = pool
        self._port = port
        self._connection: _Connection | None = connection
        self._framing = head.framing
        self._reusable = head.keep_alive
        # The body's length when the head gives it (Content-Length, or none for HEAD, 204 and 304).
        self.length = None if head.framing in ("chunked", "close") else int(head.framing)

    async def chunks(self) -> AsyncIterator[bytes]:
        connection = self._connection
        assert connection is not None, "the body was read already"
        body = _BodyReader(connection.reader, self._pool.read_timeout)
        if self._framing == "chunked":
            parts = body.dechunked()
        elif self._framing == "close":
            parts = body.until_closed()
        else:
            parts = body.exactly(int(self._framing))
        async for chunk in parts:
            yield chunk
        self._connection = None
        self._pool.release(self._port, connection, reusable=self._reusable)

    def close(self) -> None:
        """Drop the connection if the body was not read to its end (it cannot carry another request)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class UpstreamPool:
    def __init__(self, *, read_timeout: float, connect_timeout: float = 5.0, idle_expiry: float = 2.0) -> None:
        self.read_timeout = read_timeout
        self._connect_timeout = connect_timeout
        # Idle connections are dropped before the instance's own keep-alive timeout (uvicorn: 5 s) can close
        # one under a request.
        self._idle_expiry = idle_expiry
        self._idle: dict[int, list[_Connection]] = {}
        self._sweep: asyncio.TimerHandle | None = None  # closes expired idle connections while any are pooled

    async def request(
        self,
        port: int,
        method: str,
        target: str,
        headers: Headers,
        body: AsyncIterator[bytes] | None,
        content_length: int | None,
    ) -> UpstreamResponse:
        """Send a request; returns once the response head is in. `headers` must not hold hop-by-hop headers."""
        framing_header = (
            [(b"content-length", str(content_length).encode())]
            if content_length is not None
            else [(b"transfer-encoding", b"chunked")]
            if body is not None
            else []
        )
        head = _request_head(method, target, [(b"host", f"{INSTANCE_HOST}:{port}".encode()), *headers, *framing_header])
        first = b""
        if body is not None and content_length is not None and content_length <= SMALL_BODY:
            first = b"".join([chunk async for chunk in body])
            body = None
        # A pooled connection the instance closed meanwhile fails before any byte of an answer: then the request
        # goes again, once, on a new connection, if it can and may (nothing of a streamed body consumed, and an
        # idempotent method or no body). A new connection that fails so is never retried: the instance may
        # have acted on the request.
        may_repeat = body is None and (method in IDEMPOTENT_METHODS or not first)
        for attempt in range(2):
            connection, reused = await self._acquire(port, fresh=attempt > 0)
            try:
                return await self._exchange(port, connection, method, head + first, body, content_length is None)
            except _StaleConnection:
                connection.close()
                if attempt or not reused or not may_repeat:
                    raise UpstreamProtocolError("the instance closed the connection without answering") from None
            except BaseException:
                connection.close()
                raise
        raise AssertionError("unreachable")

    def release(self, port: int, connection: _Connection, *, reusable: bool) -> None:
        idle = self._idle.setdefault(port, [])
        if not reusable or len(idle) >= MAX_IDLE or connection.writer.is_closing() or connection.reader.at_eof():
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(self._idle_expiry, self._close_expired)

    def idle_connections(self) -> int:
        return sum(len(connections) for connections in self._idle.values())

    def _close_expired(self) -> None:
        """Expired idle connections are closed even when no request comes to take them (else an idle gateway
        holds them, half-closed once the instance's keep-alive ends, for ever)."""
        self._sweep = None
        now = time.monotonic()
        for port, connections in list(self._idle.items()):
            kept = [item for item in connections if now - item.idle_since < self._idle_expiry]
            for connection in connections:
                if connection not in kept:
                    connection.close()
            if kept:
                self._idle[port] = kept
            else:
                del self._idle[port]
        if self._idle:
            self._sweep = asyncio.get_running_loop().call_later(self._idle_expiry, self._close_expired)

    async def aclose(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    async def _acquire(self, port: int, *, fresh: bool) -> tuple[_Connection, bool]:
        """A connection to `port`, and whether it comes from the pool (was used before)."""
        idle = self._idle.get(port)
        now = time.monotonic()
        while idle and not fresh:
            connection = idle.pop()
            if now - connection.idle_since < self._idle_expiry and not connection.reader.at_eof():
                return connection, True
            connection.close()
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(INSTANCE_HOST, port, limit=MAX_HEAD)
        except (OSError, TimeoutError) as exc:
            raise UpstreamConnectError(f"cannot connect to port {port}: {exc}") from exc
        return _Connection(reader, writer), False

    async def _exchange(
        self,
        port: int,
        connection: _Connection,
        method: str,
        first: bytes,
        body: AsyncIterator[bytes] | None,
        chunked: bool,
    ) -> UpstreamResponse:
        # A write on a connection the instance has closed does not fail; the read of the answer does.
        connection.writer.write(first)
        if body is None:
            head = await self._read_head(connection.reader, method, self.read_timeout)
        else:
            head = await self._read_head_while_uploading(connection, method, body, chunked)
        return UpstreamResponse(self, port, connection, head)

    async def _read_head_while_uploading(
        self, connection: _Connection, method: str, body: AsyncIterator[bytes], chunked: bool
    ) -> _Head:
        # The read timeout counts from the last progress of the upload, so a slow caller's long upload is not
        # taken for a silent instance: it is an idle timeout until the body is sent, then the usual one.
        progress = _Progress()
        upload = asyncio.ensure_future(_send_body(connection.writer, body, chunked, progress))
        answer = asyncio.ensure_future(self._read_head(connection.reader, method, None))
        try:
            while not answer.done():
                remaining = progress.last + self.read_timeout - time.monotonic()
                if remaining <= 0:
                    raise UpstreamTimeout(f"no answer within {self.read_timeout:g}s")
                waiting: set[asyncio.Future[object]] = {answer} if upload.done() else {upload, answer}
                done, _ = await asyncio.wait(waiting, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if upload in done and upload.exception() is not None:
                    raise upload.exception()  # type: ignore[misc]
            head = answer.result()
            if not upload.done():
                # The instance answered before it had the whole body: this connection cannot carry another request.
                head.keep_alive = False
            return head
        finally:
            upload.cancel()
            answer.cancel()

    async def _read_head(self, reader: asyncio.StreamReader, method: str, timeout: float | None) -> _Head:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        raw = await reader.readuntil(b"\r\n\r\n")
                    except asyncio.IncompleteReadError as exc:
                        if not exc.partial:
                            raise _StaleConnection from exc
                        raise UpstreamProtocolError("the instance closed the connection mid-answer") from exc
                    status, headers, http10 = _parse_head(raw)
                    if not 100 <= status < 200:
                        break
                    if status == 101:
                        raise UpstreamProtocolError("the instance switched protocols, which the reroute cannot carry")
        except TimeoutError:
            raise UpstreamTimeout(f"no answer within {self.read_timeout:g}s") from None
        except asyncio.LimitOverrunError as exc:
            raise UpstreamProtocolError(f"response head larger than {MAX_HEAD} bytes") from exc
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise _StaleConnection from exc
        except OSError as exc:
            raise UpstreamProtocolError(f"reading the answer failed: {exc}") from exc
        connection_tokens = header_tokens(headers, b"connection")
        keep_alive = b"keep-alive" in connection_tokens if http10 else b"close" not in connection_tokens
        lengths = [value for key, value in headers if key == b"content-length"]
        if any(key == b"transfer-encoding" for key, _ in headers) or status in (204, 304):
            # Transfer-Encoding overrides a Content-Length (RFC 9112 6.3), and 204/304 have no body to measure;
            # the header is not passed on, as it would not describe the body the caller gets.
            headers = [(key, value) for key, value in headers if key != b"content-length"]
            lengths = []
        elif len(lengths) > 1 or (lengths and not lengths[0].isdigit()):
            raise UpstreamProtocolError(f"unusable Content-Length in the answer: {b', '.join(lengths)[:80]!r}")
        if method == "HEAD" or status in (204, 304):
            framing = "0"
        elif b"chunked" in header_tokens(headers, b"transfer-encoding"):
            framing = "chunked"
        elif lengths:
            framing = str(int(lengths[0]))
        else:
            framing, keep_alive = "close", False
        return _Head(status, headers, framing, keep_alive)


@dataclass
class _Head:
    status: int
    headers: Headers
    # How the body ends: "chunked", "close" (at end of stream) or its length in bytes.
    framing: str
    keep_alive: bool


class _StaleConnection(Exception):
    """The connection failed before any byte of an answer arrived."""


def _request_head(method: str, target: str, headers: Headers) -> bytes:
    lines = [f"{method} {target} HTTP/1.1".encode("latin-1")]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


class _Progress:
    """When an upload last made progress (monotonic time)."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def mark(self) -> None:
        self.last = time.monotonic()


async def _send_body(
    writer: asyncio.StreamWriter, body: AsyncIterator[bytes], chunked: bool, progress: _Progress
) -> None:
    # An instance that stops reading has answered already, or will be found out when its answer is read.
    with contextlib.suppress(OSError):
        async for chunk in body:
            progress.mark()
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            await writer.drain()
            progress.mark()
        if chunked:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    progress.mark()


def _parse_head(raw: bytes) -> tuple[int, Headers, bool]:
    status_line, *lines = raw[:-4].split(b"\r\n")
    version, _, rest = status_line.partition(b" ")
    code = rest[:3]
    if not version.startswith(b"HTTP/1.") or not code.isdigit():
        raise UpstreamProtocolError(f"not an HTTP/1.x answer: {status_line[:80]!r}")
    headers = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise UpstreamProtocolError(f"malformed response header: {line[:80]!r}")
        headers.append((name.lower(), value.strip()))
    return int(code), headers, version == b"HTTP/1.0"


def header_tokens(headers: Headers, name: bytes) -> set[bytes]:
    """The lower-cased comma-separated tokens of every `name` header (`name` lower-case, as the keys are)."""
    return {token.strip().lower() for key, value in headers if key == name for token in value.split(b",")}


class _BodyReader:
    """A response body by its framing; each read has the read timeout, also between the chunks the caller sends."""

    def __init__(self, reader: asyncio.StreamReader, timeout: float) -> None:
        self._reader = reader
        self._timeout = timeout

    async def exactly(self, length: int) -> AsyncIterator[bytes]:
        left = length
        while left:
            chunk = await self._read(self._reader.read(min(left, READ_SIZE)))
            if not chunk:
                raise UpstreamProtocolError(f"response body ended {left} bytes early")
            left -= len(chunk)
            yield chunk

    async def until_closed(self) -> AsyncIterator[bytes]:
        while chunk := await self._read(self._reader.read(READ_SIZE)):
            yield chunk

    async def dechunked(self) -> AsyncIterator[bytes]:
        while True:
            size_line = await self._read(self._reader.readuntil(b"\r\n"))
            digits = size_line[:-2].split(b";", 1)[0].rstrip(b" \t")
            if not _CHUNK_SIZE.fullmatch(digits):
                raise UpstreamProtocolError(f"bad chunk size line {size_line[:40]!r}")
            size = int(digits, 16)
            if size == 0:
                # Trailers, if any, end with an empty line; they are not passed on.
                while await self._read(self._reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return
            async for chunk in self.exactly(size):
                yield chunk
            await self._read(self._reader.readexactly(2))

    async def _read(self, read: Awaitable[bytes]) -> bytes:
        try:
            async with asyncio.timeout(self._timeout):
                return await read
        except TimeoutError:
            raise UpstreamTimeout("the instance stopped sending its response body") from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise UpstreamProtocolError(f"response body broken off: {exc!r}") from exc
