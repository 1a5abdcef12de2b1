"""Listener: what a long-running integration that serves HTTP needs around uvicorn's protocols, and no demisto call:
the connection guards (head, body, keep-alive and write deadlines, head and trailer size limits, bounded pipelining,
lingering close; one design for h11 and httptools), the guarded protocol class for uvicorn, and a Server whose TLS
handshake is bounded by the head deadline. xsoar-local's gateway serves with it too.

An integration imports all of it the content repository's way (a star import of this module's name);
`demisto-sdk prepare-content` and `zip-packs`, and xsoar-local for a pack folder, put this code in place of that line.
So: no `from __future__ import annotations`, imports at the top, no private name used by an importer, and no such
import line written in this file, not even in a docstring (demisto-sdk would inline the module into itself).

Memory per connection and every deadline: see ConnectionGuard.
"""

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import weakref
from collections.abc import Callable
from typing import Any

import uvicorn

""" CONSTANTS """

BODY_IDLE_TIMEOUT_SECONDS = 30
BODY_TOTAL_TIMEOUT_SECONDS = 120
HEADER_TIMEOUT_SECONDS = 10
KEEP_ALIVE_SECONDS = 120  # idle keep-alive connections; over the pools of Go (90 s), aiohttp (15 s), .NET (60 s)
KEEP_ALIVE_GRACE_SECONDS = 5  # uvicorn's own keep-alive timer, a backstop behind the guard's
MAX_HEADER_BYTES = 64 * 1024
H11_BUFFER_SLACK = 1024 * 1024  # h11's own head limit sits above ours, so the guard answers 431 first
DEADLINE_CHECK_SECONDS = 0.5  # how often the connections' deadlines are checked
LINGER_IDLE_SECONDS = 5  # lingering close: how long the client may pause while we throw away what it sends
LINGER_TOTAL_SECONDS = 30
LINGER_MAX_BYTES = 64 * 1024 * 1024
WRITE_TIMEOUT_SECONDS = 30  # a client that takes none of its answers for this long is cut off (abort)
WRITE_TIMEOUT_ENV = "GENERIC_WEBHOOK_TEST_WRITE_TIMEOUT_SECONDS"  # tests only: a shorter write deadline
MAX_PIPELINED_REQUESTS = 32  # parsed requests a connection may have waiting behind the one being answered
UNREAD_HOLD_BYTES = 256 * 1024  # answers the client has not taken yet: past this, its connection is not read
CLOSE_TIMEOUT_SECONDS = 10  # a closed connection whose last bytes the client will not take is aborted after this
HEAD_PHASE = "head"  # what a connection is doing (None: nothing it must be timed for, the server's turn)
BODY_PHASE = "body"
IDLE_PHASE = "idle"  # keep-alive, between requests
LINGER_PHASE = "linger"  # answered and closing: reading and throwing away the rest of a request
# In the scope of a request served by the guarded protocol, which enforces the body deadlines itself.
BODY_GUARD_KEY = "generic_webhook_body_guard"
CORK_KEY = "generic_webhook_cork"  # the connection's GuardedTransport: an answer's writes go out as one
BODY_GUARDED = "guarded"
BODY_TIMED_OUT = "timed_out"
BODY_TIMEOUT_DETAIL = (
    f"The body was not sent in time (a pause over {BODY_IDLE_TIMEOUT_SECONDS} s, or over "
    f"{BODY_TOTAL_TIMEOUT_SECONDS} s in all): send the whole body promptly."
)
JSON_HEADERS = [(b"content-type", b"application/json")]


class ConnectionDeadlines:
    """The deadlines of every connection of one event loop, checked by one timer every DEADLINE_CHECK_SECONDS:
    a request costs no timer of its own, only a timestamp (deadlines are enforced to within that interval)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.connections: set[Any] = set()
        self.timer: asyncio.TimerHandle | None = None

    def add(self, connection: Any) -> None:
        self.connections.add(connection)
        if self.timer is None:
            self.timer = self.loop.call_later(DEADLINE_CHECK_SECONDS, self.check)

    def discard(self, connection: Any) -> None:
        self.connections.discard(connection)

    def check(self) -> None:
        self.timer = None
        now = self.loop.time()
        try:
            for connection in list(self.connections):
                try:
                    connection.check_deadline(now)
                except Exception as error:  # one broken connection must not stop the checks of the others
                    self.connections.discard(connection)
                    with contextlib.suppress(Exception):
                        connection.transport.close()
                    logging.getLogger("uvicorn.error").error(f"connection deadline check: {error}")
        finally:
            if self.connections:
                self.timer = self.loop.call_later(DEADLINE_CHECK_SECONDS, self.check)


def closing_response(status_line: bytes, error: str, detail: str) -> bytes:
    body = json.dumps({"error": error, "detail": detail}).encode()
    return (
        status_line + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


BODY_TIMEOUT_RESPONSE = closing_response(b"HTTP/1.1 408 Request Timeout", "request_timeout", BODY_TIMEOUT_DETAIL)
HEADERS_TOO_LARGE_DETAIL = f"The request head is over {MAX_HEADER_BYTES} bytes."
HEADERS_TOO_LARGE_RESPONSE = closing_response(
    b"HTTP/1.1 431 Request Header Fields Too Large", "headers_too_large", HEADERS_TOO_LARGE_DETAIL
)
TRAILERS_TOO_LARGE_RESPONSE = closing_response(
    b"HTTP/1.1 431 Request Header Fields Too Large",
    "headers_too_large",
    f"The trailer section of the chunked body is over {MAX_HEADER_BYTES} bytes.",
)


def head_size(scope: dict) -> int:
    """The bytes of a request head as the client sent it, near enough: target, and each header line."""
    size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    for name, value in scope["headers"]:
        size += len(name) + len(value) + 4
    return size


async def headers_too_large_app(scope: dict, receive: Callable, send: Callable) -> None:
    """Answers a request whose head, complete, is over MAX_HEADER_BYTES: 431, and the connection closes."""
    body = json.dumps({"error": "headers_too_large", "detail": HEADERS_TOO_LARGE_DETAIL}).encode()
    headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 431, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def set_nodelay(transport: Any) -> None:
    """TCP_NODELAY on an accepted connection, whatever the event loop: asyncio sets it only when the listening
    socket was made with proto IPPROTO_TCP; without it, an answer written in two segments waits for the peer's
    delayed ACK (about 40 ms a request on a keep-alive connection)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


try:  # Linux (the image's): how much of what a socket sent its peer has not taken yet
    from fcntl import ioctl
    from termios import TIOCOUTQ
except ImportError:  # pragma: no cover - elsewhere only the transport's own buffer is seen
    ioctl = None
    TIOCOUTQ = 0
TCP_INFO = getattr(socket, "TCP_INFO", None)
TCP_INFO_BYTES_ACKED = 120  # where Linux's struct tcp_info has tcpi_bytes_acked (a u64, since Linux 4.1)


def unsent_bytes(sock: Any) -> int:
    """The bytes in a TCP socket's send queue (SIOCOUTQ): written by us, not yet acknowledged by the peer, so not
    yet in its receive buffer. They stay when the client reads none of its answers. 0 where it cannot be asked."""
    if ioctl is None or sock is None:
        return 0
    try:
        fd = sock.fileno()
        return memoryview(ioctl(fd, TIOCOUTQ, b"\0\0\0\0")).cast("i")[0] if fd >= 0 else 0
    except (OSError, ValueError):
        return 0


def acked_bytes(sock: Any) -> int | None:
    """The bytes the peer of a TCP socket has acknowledged so far (taken into its receive buffer), or None where
    that cannot be asked (not Linux)."""
    if TCP_INFO is None or sock is None:
        return None
    end = TCP_INFO_BYTES_ACKED + 8
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, end)
    except (OSError, ValueError, TypeError):
        return None
    return memoryview(info)[TCP_INFO_BYTES_ACKED:end].cast("Q")[0] if len(info) >= end else None


class GuardedTransport:
    """The transport uvicorn's protocol is given: the connection's own, except that close() goes to the guard,
    which may linger (see ConnectionGuard.close_connection) and stops passing data on, and that uvicorn cannot
    resume reading while the guard holds it (ConnectionGuard._sync_reading). Hot methods are the real transport's
    bound methods, so a request costs no extra call.

    cork() ... uncork() around an answer's messages makes it one write (one send() and one TCP segment instead of
    one for the head and one for the body); the app finds this object in the scope under CORK_KEY."""

    def __init__(self, transport: asyncio.Transport, guard: "ConnectionGuard") -> None:
        self.transport = transport
        self.guard = guard
        self.write = transport.write
        self.writelines = transport.writelines
        self.get_extra_info = transport.get_extra_info
        self.get_write_buffer_size = transport.get_write_buffer_size
        self.held: list[bytes] | None = None

    def cork(self) -> None:
        if self.held is None:
            self.held = []
            self.write = self.held.append

    def uncork(self) -> None:
        held = self.held
        if held is None:
            return
        self.held = None
        self.write = self.transport.write
        if held:
            self.transport.write(b"".join(held))

    def is_closing(self) -> bool:
        return self.guard.closing or self.transport.is_closing()

    def close(self) -> None:
        self.guard.close_connection()

    def pause_reading(self) -> None:
        if not self.guard.closing:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        guard = self.guard
        if not guard.closing and not guard.read_held:
            self.transport.resume_reading()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class ConnectionGuard:
    """The guards uvicorn's HTTP protocols lack, mixed into both (h11 and httptools: see guarded_http_protocol),
    one design for both, enforced by the connection itself on the deadlines timer of its event loop:
    - TCP_NODELAY on the connection;
    - the request head (request line and headers) must arrive within HEADER_TIMEOUT_SECONDS and fit in
      MAX_HEADER_BYTES: idle and slow-loris connections are closed, endless heads are refused with 431 (a complete
      head over the limit gets its 431 from the app: see head_size). The first head's deadline counts from the
      accept, so with TLS the handshake is inside it (GuardedServer bounds the handshake by it too);
    - the body must not pause for over `body_idle_seconds` nor take over `body_total_seconds` in all
      (BODY_IDLE_TIMEOUT_SECONDS and BODY_TOTAL_TIMEOUT_SECONDS unless guarded_http_protocol is told otherwise):
      the connection answers 408 and closes, and the app's pending receive() sees the disconnect (the scope's
      BODY_GUARD_KEY says so, and the app's body reader then needs no timer of its own); chunked trailers never
      reach the request's headers, and a trailer section over MAX_HEADER_BYTES is refused with 431 (on h11, which keeps
      trailers apart, by h11's own limit: MAX_HEADER_BYTES + H11_BUFFER_SLACK, uvicorn's 400);
    - an idle keep-alive connection is closed after `keep_alive_seconds` (the Keep-Alive hint the app sends),
      also when stray bytes or the rest of an unread body made uvicorn drop its own keep-alive timer;
    - lingering close: when the connection closes while the client may still be sending a request (an answer
      given before the body was read: 413, 401, 503, 431, 408), the write side is shut down after the answer and
      what the client still sends is read and thrown away, up to LINGER_MAX_BYTES and LINGER_IDLE_SECONDS /
      LINGER_TOTAL_SECONDS, so the client reads the answer instead of a connection reset; no lingering once the
      server is stopping;
    - pipelining is bounded: the socket is not read while requests are queued behind the one being answered (at
      most MAX_PIPELINED_REQUESTS of them parsed, the rest of the read kept as bytes), nor while the client has
      left over UNREAD_HOLD_BYTES of its answers untaken (in our buffer or the kernel's send queue);
    - write deadline: a client that has taken nothing of its answers for `write_timeout_seconds`
      (WRITE_TIMEOUT_SECONDS) is cut off (abort), however many requests it queued and whatever the phase; one that
      leaves the last bytes of a closed connection unread for CLOSE_TIMEOUT_SECONDS too.
    While the server itself has stopped reading (the app has not taken the body yet, or a hold above), or an
    earlier request on the connection is still being answered (pipelining), no head or body deadline runs out:
    the client cannot be late then, and closing would lose the earlier answer; a late pipelined request gets its
    408 after that answer. Only the write deadline runs then.

    Memory per connection, then, beyond the app's own (a body up to max_body_mb): one socket read (256 KiB on
    asyncio and uvloop) not yet parsed, the heads of at most MAX_PIPELINED_REQUESTS + 1 parsed requests from
    that read, a head or trailer section up to MAX_HEADER_BYTES (plus at most one read before it is refused),
    and answers up to the transport's high-water mark (64 KiB) plus one answer; the kernel holds at most about
    UNREAD_HOLD_BYTES more of untaken answers, for at most the write deadline.

    A protocol class adapts it by calling `_track_*` from its parser's events (see the two subclasses)."""

    keep_alive_seconds: float = KEEP_ALIVE_SECONDS
    write_timeout_seconds: float = WRITE_TIMEOUT_SECONDS
    body_idle_seconds: float = BODY_IDLE_TIMEOUT_SECONDS
    body_total_seconds: float = BODY_TOTAL_TIMEOUT_SECONDS
    body_timeout_response: bytes = BODY_TIMEOUT_RESPONSE
    deadlines_of: Any = None  # event loop -> ConnectionDeadlines, one mapping per class guarded_http_protocol makes
    running_cycle: Any = None  # the request being answered, where the protocol queues others behind it

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        # The event loop makes the protocol when it accepts the connection, before any TLS handshake.
        self.accepted_at = self.loop.time()  # type: ignore[attr-defined]

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        set_nodelay(transport)
        self.sock = transport.get_extra_info("socket")
        self.real_transport = transport
        self.guarded_transport = GuardedTransport(transport, self)
        self.closing = False
        self.stopping = False
        self.lost = False
        self.close_deadline: float | None = None
        self.head_refused = False  # an endless head waits for the answer before it, then gets its 431
        self.refusal = HEADERS_TOO_LARGE_RESPONSE
        self.refused_cycle: Any = None
        self.message_began = False
        self.linger_bytes = 0
        self.linger_end = 0.0
        self.head_bytes = 0
        self.phase: str | None = HEAD_PHASE
        self.body_deadline = 0.0
        self.read_held = False  # the guard keeps the socket from being read (the two holds below)
        self.held_for_pipeline = False
        self.held_for_unread = False
        self.unread_probe = False  # answers went out since the kernel's send queue was last seen empty
        self.unread_since: float | None = None  # since when the client has taken nothing of its answers
        self.unread_bytes = 0
        self.acked = 0  # what the client had taken of all we sent, at the last check
        super().connection_made(self.guarded_transport)  # type: ignore[misc]
        loop = self.loop  # type: ignore[attr-defined]
        self.deadline = getattr(self, "accepted_at", loop.time()) + HEADER_TIMEOUT_SECONDS
        deadlines = self.deadlines_of.get(loop)
        if deadlines is None:
            deadlines = self.deadlines_of[loop] = ConnectionDeadlines(loop)
        self.deadlines = deadlines
        deadlines.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.phase = None
        self.deadlines.discard(self)
        self._disconnect_cycles()  # every pending request, the one being answered too, sees the disconnect
        super().connection_lost(exc)  # type: ignore[misc]

    def shutdown(self) -> None:
        self.stopping = True  # the server is stopping: no lingering, nothing to wait for
        if self.closing:
            self.phase = None
            self.real_transport.close()
            return
        super().shutdown()  # type: ignore[misc]

    def pause_writing(self) -> None:
        # The transport's buffer is over its high-water mark: the client is not taking its answers (fast enough).
        self.unread_probe = True
        if self.unread_since is None:
            self.unread_since = self.loop.time()  # type: ignore[attr-defined]
        super().pause_writing()  # type: ignore[misc]

    def resume_writing(self) -> None:
        self.unread_since = None  # it took some; the next check starts the clock again if answers are left
        super().resume_writing()  # type: ignore[misc]

    # ---- what the adapters call
    def _track_head(self, size: int) -> None:
        """`size` more bytes of a request head arrived (the phase is already HEAD_PHASE)."""
        self.head_bytes += size
        if self.head_bytes > MAX_HEADER_BYTES:
            self._over_limit(HEADERS_TOO_LARGE_RESPONSE)

    def _over_limit(self, refusal: bytes, cycle: Any = None) -> None:
        """A head (or the trailer section of request `cycle`) is over MAX_HEADER_BYTES: refused with `refusal`."""
        self.refusal = refusal
        self.refused_cycle = cycle
        if self._earlier_answer_pending():
            # An earlier request on this connection is still being answered: its answer goes first.
            self.head_refused = True
            self.real_transport.pause_reading()
            return
        self._refuse_head()

    def _refuse_head(self) -> None:
        self.head_refused = False
        self.guarded_transport.uncork()  # what an answer has written so far goes first
        self.real_transport.write(self.refusal)
        self.close_connection()

    def _earlier_answer_pending(self) -> bool:
        """A request before the one being refused is still being answered."""
        refused = self.refused_cycle
        return any(cycle is not refused for cycle in self._pending_cycles())

    def _after_response(self) -> None:
        """An answer is complete: an endless head that waited behind it is refused now."""
        self.unread_probe = True  # the next check sees whether the client takes it
        if self.head_refused and not self.closing and not self._earlier_answer_pending():
            self._refuse_head()

    def _track_head_begins(self, size: int = 0) -> None:
        self.phase = HEAD_PHASE
        self.head_bytes = size
        self.deadline = self.loop.time() + HEADER_TIMEOUT_SECONDS  # type: ignore[attr-defined]

    def _track_body_begins(self, scope: dict) -> None:
        scope[BODY_GUARD_KEY] = BODY_GUARDED
        scope[CORK_KEY] = self.guarded_transport
        self.phase = BODY_PHASE
        now = self.loop.time()  # type: ignore[attr-defined]
        self.body_deadline = now + self.body_total_seconds
        self.deadline = min(now + self.body_idle_seconds, self.body_deadline)

    def _track_body_data(self) -> None:
        self.deadline = min(self.loop.time() + self.body_idle_seconds, self.body_deadline)  # type: ignore

    def _track_idle(self) -> None:
        """Between requests: nothing is owed to either side."""
        self.phase = IDLE_PHASE
        self.deadline = self.loop.time() + self.keep_alive_seconds  # type: ignore[attr-defined]

    # ---- holding the socket's reading
    def _sync_reading(self) -> None:
        """Reads from the socket or not, as the holds say; a pause of uvicorn's own (flow control) stays."""
        held = self.held_for_pipeline or self.held_for_unread
        if held == self.read_held or self.closing:
            return
        self.read_held = held
        if held:
            self.real_transport.pause_reading()
        elif not self.head_refused and not getattr(getattr(self, "flow", None), "read_paused", False):
            self.real_transport.resume_reading()

    def _unread_bytes(self) -> int:
        """What the client has not taken of its answers yet: in the transport's buffer and the kernel's."""
        return self.real_transport.get_write_buffer_size() + unsent_bytes(self.sock)

    def _resume_parsing(self) -> None:
        """The client took enough of its answers: requests already read may be parsed again (see httptools')."""

    # ---- closing
    def _pending_cycles(self) -> list[Any]:
        """The requests of this connection not answered yet: the one being answered and those queued behind it."""
        cycles = [self.running_cycle, getattr(self, "cycle", None)]
        cycles.extend(queued for queued, _ in getattr(self, "pipeline", ()))
        return [cycle for cycle in cycles if cycle is not None and not getattr(cycle, "response_complete", True)]

    def _disconnect_cycles(self) -> None:
        for cycle in self._pending_cycles():
            cycle.disconnected = True
            cycle.message_event.set()

    def close_connection(self) -> None:
        """uvicorn (or a guard) closes the connection. If the client may still be sending a request, linger."""
        self.guarded_transport.uncork()  # what the answer wrote so far goes first
        if self.stopping and not self.lost:
            self.closing = True
            self.phase = None
            self.real_transport.close()
            return
        if self.closing or self.lost:
            if self.lost or self.phase != LINGER_PHASE:
                self.real_transport.close()
            return
        self.closing = True
        transport = self.real_transport
        if self.phase not in (HEAD_PHASE, BODY_PHASE) or transport.is_closing():
            self.phase = None
            transport.close()
            return
        self.phase = LINGER_PHASE
        # For the app, the connection is gone now (uvicorn would say so when the transport is lost): a request
        # still being handled sees the disconnect, and its answer is not sent after the one that closed.
        self._disconnect_cycles()
        now = self.loop.time()  # type: ignore[attr-defined]
        self.linger_end = now + LINGER_TOTAL_SECONDS
        self.deadline = now + LINGER_IDLE_SECONDS
        if transport.can_write_eof():
            transport.write_eof()  # after what is buffered: the answer, then FIN
        transport.resume_reading()

    def _cut_off(self) -> None:
        """Aborts the connection (no lingering, what is buffered is dropped): nothing would get through."""
        self.phase = None
        self.closing = True
        self._disconnect_cycles()  # a request waiting to write its answer gives up instead of writing to it
        self.real_transport.abort()

    def _linger_received(self, data: bytes) -> None:
        self.linger_bytes += len(data)
        if self.linger_bytes > LINGER_MAX_BYTES:
            self.phase = None
            self.real_transport.close()
        else:
            self.deadline = min(self.loop.time() + LINGER_IDLE_SECONDS, self.linger_end)  # type: ignore

    def eof_received(self) -> bool | None:
        if self.phase == LINGER_PHASE:
            self.phase = None
            return False  # the client is done: the transport closes
        return super().eof_received()  # type: ignore[misc]

    # ---- the periodic check
    def _reading_paused(self) -> bool:
        return self.read_held or bool(getattr(getattr(self, "flow", None), "read_paused", False))

    def _queued(self) -> bool:
        return False

    def _check_unread(self, now: float) -> bool:
        """The write deadline, and the hold on reading while over UNREAD_HOLD_BYTES of answers are untaken. The
        deadline runs from when untaken answers were first seen, and starts again only when the client takes some
        (the kernel's count of bytes it acknowledged goes up; without it, when less is untaken than before). True:
        the connection was cut off."""
        unread = self._unread_bytes()
        acked = acked_bytes(self.sock)
        took = unread < self.unread_bytes if acked is None else acked > self.acked
        self.acked = acked or 0
        if not unread:
            self.unread_probe = False
            self.unread_since = None
        else:
            if self.unread_since is None or took:
                self.unread_since = now
            if now - self.unread_since >= self.write_timeout_seconds:
                self._cut_off()
                return True
        self.unread_bytes = unread
        held = unread > UNREAD_HOLD_BYTES
        if held != self.held_for_unread:
            self.held_for_unread = held
            self._sync_reading()
            if not held:
                self._resume_parsing()
        return False

    def check_deadline(self, now: float) -> None:
        if self.lost:
            self.deadlines.discard(self)
            return
        if self.real_transport.is_closing():
            # Closed, with bytes still buffered for a client that does not read them: not for ever.
            if self.close_deadline is None:
                self.close_deadline = now + CLOSE_TIMEOUT_SECONDS
            elif now >= self.close_deadline:
                self.real_transport.abort()
            return
        if self.unread_probe and self._check_unread(now):
            return
        phase = self.phase
        if phase is None or now < self.deadline:
            return
        if phase in (LINGER_PHASE, IDLE_PHASE):
            self.phase = None
            self.real_transport.close()
            return
        if self._reading_paused() or self._queued():
            # The server is not reading (the client cannot be late), or an earlier request on this connection
            # is still being answered: closing now would lose that answer. Decided once it is sent.
            self.deadline = max(self.deadline, now + DEADLINE_CHECK_SECONDS)
            self.body_deadline = max(self.body_deadline, now + DEADLINE_CHECK_SECONDS)
            return
        if phase == BODY_PHASE:
            scope = getattr(self, "scope", None)
            if scope is not None:
                scope[BODY_GUARD_KEY] = BODY_TIMED_OUT
            cycle = getattr(self, "cycle", None)
            # Only as the answer to this very request: nothing queued before it, nothing of its answer sent.
            if cycle is not None and not getattr(cycle, "response_started", True):
                self.guarded_transport.uncork()
                self.real_transport.write(self.body_timeout_response)
                self.close_connection()
                return
        self.phase = None
        self.closing = True
        self.real_transport.close()


class TrailerFields:
    """Where httptools' protocol puts the fields that follow a request's head (a chunked body's trailers): uvicorn
    appends every field the parser reports to the request's headers, trailers too, which would let a field that
    front proxies and WAFs never check (say an auth token or X-Forwarded-For) count as a header. Counted, never
    kept: a trailer section over MAX_HEADER_BYTES is refused."""

    __slots__ = ("guard",)

    def __init__(self, guard: "ConnectionGuard") -> None:
        self.guard = guard

    def append(self, field: tuple[bytes, bytes]) -> None:
        self.guard.trailer_bytes += len(field[0]) + len(field[1]) + 4  # type: ignore[attr-defined]

    def __iter__(self) -> Any:
        return iter(())


# uvicorn versions whose protocol classes the adapters below were checked against (the attributes and methods they
# use: conn, cycle, scope, flow, pipeline, url, headers; data_received, handle_events, on_response_complete,
# _start_asgi_task and the httptools parser callbacks). The image's is first. Another version still gets the guards
# when those names are there, and plain uvicorn (with a warning in the log) when they are not.
UVICORN_CHECKED = ("0.49.0", "0.54.0", "0.55.0")
H11_NEEDED = ("connection_made", "connection_lost", "data_received", "handle_events", "on_response_complete")
HTTPTOOLS_NEEDED = (
    "connection_made",
    "connection_lost",
    "data_received",
    "on_message_begin",
    "on_headers_complete",
    "on_body",
    "on_message_complete",
    "on_response_complete",
)
HEAD_END = b"\r\n\r\n"  # how every request head ends (llhttp and h11 take no bare LF there)
MIN_REQUEST_BYTES = len(b"GET / HTTP/1.1" + HEAD_END)  # a read shorter than that many of them is fed at once


def _guarded_h11(keep_alive: float, write_timeout: float) -> Any:
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    if not all(callable(getattr(H11Protocol, name, None)) for name in H11_NEEDED):
        return None
    idle, send_body, done = h11.IDLE, h11.SEND_BODY, h11.DONE

    class GuardedH11Protocol(ConnectionGuard, H11Protocol):
        """h11's events come from its state machine (`conn.their_state`, h11's public API), read after every
        chunk of data and after every answer (when uvicorn lets h11 parse what was pipelined behind it). h11
        parses one request at a time and keeps what follows it as bytes; h11 keeps trailers apart from the
        headers (uvicorn drops them)."""

        keep_alive_seconds = keep_alive
        write_timeout_seconds = write_timeout
        deadlines_of = weakref.WeakKeyDictionary()
        current_cycle: Any = None

        def data_received(self, data: bytes) -> None:
            phase = self.phase
            if phase == LINGER_PHASE:
                self._linger_received(data)
                return
            H11Protocol.data_received(self, data)
            if self.closing:
                return
            state = self.conn.their_state
            if state is idle:
                if phase == HEAD_PHASE:  # the whole chunk was more of the head
                    self._track_head(len(data))
                else:  # after an answer (or the rest of a body): a head is on its way, or stray bytes came
                    self._track_head_begins()
                    self._track_head(len(self.conn.trailing_data[0]))
            elif state is send_body:
                if self.cycle is not self.current_cycle:
                    self.current_cycle = self.cycle
                    self._track_body_begins(self.scope)
                else:
                    self._track_body_data()
            else:  # the request is in (DONE, MUST_CLOSE): the server's turn
                self._request_received()
            self._hold_pipelined()

        def _hold_pipelined(self) -> None:
            """No more reading while bytes wait behind a request h11 has whole (uvicorn then pauses reading, but
            resumes it on every answer and every receive(), so h11's buffer would grow by a read each time)."""
            held = self.flow.read_paused and self.conn.their_state is done
            if held != self.held_for_pipeline:
                self.held_for_pipeline = held
                self._sync_reading()

        def _request_received(self) -> None:
            if self.cycle is not self.current_cycle:  # head and whole body in one go
                self.current_cycle = self.cycle
                scope = self.scope
                scope[BODY_GUARD_KEY] = BODY_GUARDED
                scope[CORK_KEY] = self.guarded_transport
            self.phase = None

        def on_response_complete(self) -> None:
            H11Protocol.on_response_complete(self)
            if self.closing:
                return
            self._after_response()
            if self.closing:
                return
            state = self.conn.their_state
            if state is idle:
                buffered = len(self.conn.trailing_data[0])  # the start of a pipelined head, if any
                if buffered:
                    self._track_head_begins()
                    self._track_head(buffered)
                else:
                    self._track_idle()
            elif state is send_body:
                if self.cycle is not self.current_cycle:  # a pipelined request, parsed just now
                    self.current_cycle = self.cycle
                    self._track_body_begins(self.scope)
                # else: answered before its body was read (the app said `connection: close`, or it is read
                # and thrown away by uvicorn): the body deadlines go on
            else:
                self._request_received()
            if not self.closing:
                self._hold_pipelined()

    return GuardedH11Protocol


def _guarded_httptools(keep_alive: float, write_timeout: float) -> Any:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    if not all(callable(getattr(HttpToolsProtocol, name, None)) for name in HTTPTOOLS_NEEDED):
        return None

    class GuardedHttpToolsProtocol(ConnectionGuard, HttpToolsProtocol):
        """httptools' events are its parser callbacks; uvicorn queues pipelined requests in `pipeline`. The parser
        takes whatever it is given at once, every request in it, so it is given a read in pieces, each ending after
        a request head, no more heads at a time than the pipeline has room for (`_feed_from`)."""

        keep_alive_seconds = keep_alive
        write_timeout_seconds = write_timeout
        deadlines_of = weakref.WeakKeyDictionary()
        stash: bytes | None = None  # a read not all given to the parser yet: the rest is stash[stash_at:]
        stash_at = 0
        body_seen = 0  # body bytes of the current request so far
        body_length: int | None = None  # its Content-Length (-1: chunked, or not known); None: not looked up
        trailer_bytes = 0  # the trailer fields of the current request
        stalled_bytes = 0  # bytes of its body phase in pieces without body bytes: chunk framing, trailers

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            self.trailer_fields = TrailerFields(self)
            ConnectionGuard.connection_made(self, transport)

        def connection_lost(self, exc: Exception | None) -> None:
            self.stash = None
            ConnectionGuard.connection_lost(self, exc)

        def data_received(self, data: bytes) -> None:
            if self.phase == LINGER_PHASE:
                self._linger_received(data)
                return
            if self.stash is not None:  # read while held (TLS records already decrypted): after the stash
                self.stash = self.stash[self.stash_at :] + data
                self.stash_at = 0
            elif self.pipeline or len(data) >= MAX_PIPELINED_REQUESTS * MIN_REQUEST_BYTES:
                self._feed_from(data, 0)
            else:  # too short to hold more heads than the pipeline has room for
                self._feed(data)
                if self.pipeline and not self.closing:
                    self.held_for_pipeline = True
                    self._sync_reading()

        def _feed_from(self, data: bytes, start: int) -> None:
            """Gives data[start:] to the parser, but no more request heads than the pipeline has room for: the
            rest is kept (`stash`), and the socket is not read, while requests are queued. A piece ends after the
            next head (looked for past what is left of the current request's Content-Length body), unless what
            follows that head is too short to hold more heads than there is room for; a CRLFCRLF in a chunked
            body only makes a piece end early."""
            end = len(data)
            while start < end and not self.closing:
                room = MAX_PIPELINED_REQUESTS - len(self.pipeline)
                if room <= 0:
                    break
                stop = start + self._body_left()
                if stop < end:
                    found = data.find(HEAD_END, stop)
                    stop = found + 4
                    if found < 0 or end - stop < (room - 1) * MIN_REQUEST_BYTES:
                        stop = end
                else:
                    stop = end
                self._feed(data if start == 0 and stop == end else data[start:stop])
                start = stop
            if start < end and not self.closing:
                self.stash, self.stash_at = data, start
            else:
                self.stash = None
            held = self.stash is not None or bool(self.pipeline)
            if held != self.held_for_pipeline:
                self.held_for_pipeline = held
                self._sync_reading()

        def _feed(self, data: bytes) -> None:
            phase = self.phase
            # Count only data that arrives while a head is being read: with pipelining, a chunk that starts in
            # the previous request's body is not the next head's (that head is counted from its next chunk, and
            # as a whole when it is complete, by the app: see head_size).
            # A chunk in which a message began holds bytes of another message too: not counted either.
            counts = phase == HEAD_PHASE
            self.message_began = False
            seen = self.body_seen
            HttpToolsProtocol.data_received(self, data)
            if self.closing:
                return
            was_body, phase = phase == BODY_PHASE, self.phase
            if phase == BODY_PHASE:  # each chunk of the body moves the idle deadline on
                self._track_body_data()
                if was_body and not self.message_began:
                    self.stalled_bytes = 0 if self.body_seen != seen else self.stalled_bytes + len(data)
                if self.stalled_bytes > MAX_HEADER_BYTES or self.trailer_bytes > MAX_HEADER_BYTES:
                    self._over_limit(TRAILERS_TOO_LARGE_RESPONSE, self.cycle)
            elif phase == HEAD_PHASE:
                if counts and not self.message_began:
                    self._track_head(len(data))
            elif self._idle():
                # Bytes that start no request (say a stray CRLF) made uvicorn drop its keep-alive timer: the
                # connection now waits for a head, and gets the head deadline.
                self._track_head_begins()

        def _body_left(self) -> int:
            """The bytes still to come of the current request's Content-Length body (0 when not in one)."""
            if self.phase != BODY_PHASE:
                return 0
            length = self.body_length
            if length is None:
                length = self.body_length = -1
                for name, value in self.scope["headers"]:
                    if name == b"transfer-encoding":
                        length = self.body_length = -1
                        break
                    if name == b"content-length" and length < 0 and value.isdigit():
                        length = self.body_length = int(value)
            return max(length - self.body_seen, 0)

        def _resume_parsing(self) -> None:
            if self.stash is not None and not self.closing and not self.real_transport.is_closing():
                self._feed_from(self.stash, self.stash_at)

        def _queued(self) -> bool:
            if self.pipeline or self.stash is not None:
                return True
            # A head being read behind a request that is still being answered (not in `pipeline` until whole).
            cycle = getattr(self, "cycle", None)
            return self.phase == HEAD_PHASE and cycle is not None and not getattr(cycle, "response_complete", True)

        def _idle(self) -> bool:
            cycle = getattr(self, "cycle", None)
            return (cycle is None or getattr(cycle, "response_complete", False)) and not self._queued()

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            self.running_cycle = cycle
            HttpToolsProtocol._start_asgi_task(self, cycle, app)  # type: ignore[attr-defined]

        def on_message_begin(self) -> None:
            HttpToolsProtocol.on_message_begin(self)
            self.message_began = True
            if self.phase != HEAD_PHASE:  # the next request on a keep-alive connection
                self._track_head_begins()

        def on_headers_complete(self) -> None:
            HttpToolsProtocol.on_headers_complete(self)
            # What the parser reports from now on until the next request are trailers: not the request's headers.
            self.headers = self.trailer_fields  # type: ignore[assignment]
            self.trailer_bytes = self.stalled_bytes = self.body_seen = 0
            self.body_length = None
            if not self.closing:
                self._track_body_begins(self.scope)

        def on_body(self, body: bytes) -> None:
            self.body_seen += len(body)
            HttpToolsProtocol.on_body(self, body)

        def on_message_complete(self) -> None:
            HttpToolsProtocol.on_message_complete(self)
            if not self.closing:
                self.phase = None

        def on_response_complete(self) -> None:
            HttpToolsProtocol.on_response_complete(self)
            self._after_response()
            if self.closing:
                return
            if self.stash is not None:
                # Heavy pipelining: parse more of what was read once half the queue is answered (a batch at a
                # time), only while the client takes its answers, and not once the server is stopping.
                if len(self.pipeline) > MAX_PIPELINED_REQUESTS // 2 or self.stopping:
                    pass
                elif self.real_transport.is_closing():
                    return
                elif self._unread_bytes() > UNREAD_HOLD_BYTES:
                    self.held_for_unread = True
                    self._sync_reading()
                else:
                    self._feed_from(self.stash, self.stash_at)
            elif self.held_for_pipeline and not self.pipeline:
                self.held_for_pipeline = False
                self._sync_reading()
            if not self.closing and self.phase is None and self._idle():
                self._track_idle()

        def handle_websocket_upgrade(self) -> None:
            self.phase = None
            self.deadlines.discard(self)  # the connection goes to another protocol
            HttpToolsProtocol.handle_websocket_upgrade(self)

    return GuardedHttpToolsProtocol


def http_protocols() -> tuple[str, ...]:
    """The HTTP implementations this environment has, fastest first: httptools only where it is installed
    (not in the demisto/fastapi image, which serves with h11)."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return ("h11",)
    return ("httptools", "h11")


def write_timeout_seconds() -> float:
    """The write deadline: WRITE_TIMEOUT_SECONDS, or, for tests only, the seconds in the environment variable
    WRITE_TIMEOUT_ENV (read when the server starts, so that a test need not wait 30 s for it)."""
    try:
        seconds = float(os.environ.get(WRITE_TIMEOUT_ENV, ""))
    except ValueError:
        return WRITE_TIMEOUT_SECONDS
    return seconds if 0 < seconds < math.inf else WRITE_TIMEOUT_SECONDS


def guarded_http_protocol(
    kind: str | None = None,
    keep_alive: float = KEEP_ALIVE_SECONDS,
    write_timeout: float = WRITE_TIMEOUT_SECONDS,
    body_idle: float | None = None,
    body_total: float | None = None,
    body_timeout_detail: str = "",
) -> Any:
    """uvicorn's `http` protocol class for `kind` ("h11" or "httptools"; by default the fastest there is) with
    the ConnectionGuard mixed in. The body deadlines are BODY_IDLE_TIMEOUT_SECONDS and BODY_TOTAL_TIMEOUT_SECONDS
    (as they are when this is called) unless given; `body_timeout_detail` is what the 408 of a late body says. A
    uvicorn whose internals differ from the checked ones: the plain protocol, which serves unguarded rather than
    not at all (the caller logs it)."""
    kind = kind or http_protocols()[0]
    make = _guarded_httptools if kind == "httptools" else _guarded_h11
    protocol = make(keep_alive, write_timeout)
    if protocol is None:
        return kind
    protocol.body_idle_seconds = BODY_IDLE_TIMEOUT_SECONDS if body_idle is None else body_idle
    protocol.body_total_seconds = BODY_TOTAL_TIMEOUT_SECONDS if body_total is None else body_total
    if body_timeout_detail:
        protocol.body_timeout_response = closing_response(
            b"HTTP/1.1 408 Request Timeout", "request_timeout", body_timeout_detail
        )
    return protocol


class GuardedServer(uvicorn.Server):
    """uvicorn's Server, with the TLS handshake bounded by the head deadline: uvicorn makes its listeners with the
    event loop's create_server and no ssl_handshake_timeout, and asyncio's and uvloop's default is 60 s, so a
    connection that never finishes (or never starts) its handshake was held that long. Only the integration's
    listeners are made here, so the loop's create_server says so just while this server starts."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if self.config.ssl is None:
            await super().startup(sockets)
            return
        loop = asyncio.get_running_loop()
        create_server = loop.create_server

        async def create_tls_server(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("ssl_handshake_timeout", HEADER_TIMEOUT_SECONDS)
            return await create_server(*args, **kwargs)

        loop.create_server = create_tls_server  # type: ignore[method-assign]
        try:
            await super().startup(sockets)
        finally:
            loop.create_server = create_server  # type: ignore[method-assign]
