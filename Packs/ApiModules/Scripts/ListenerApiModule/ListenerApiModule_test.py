"""ListenerApiModule on its own: the guards around a bare ASGI app that knows nothing of them (no demisto, no
Generic Webhook), over real loopback sockets, on every HTTP implementation this environment has (h11 only on the
demisto/fastapi image's stack). The integration's own tests cover the guards behind its app."""

import asyncio
import json
import socket
import threading
import time
from typing import Any

import pytest
import uvicorn

import ListenerApiModule
from ListenerApiModule import *  # noqa: F403


@pytest.fixture
def short_deadlines(monkeypatch):
    """Head 1 s, body pause 0.6 s, body in all 1.5 s, write 1 s, checked every 0.1 s."""
    monkeypatch.setattr(ListenerApiModule, "HEADER_TIMEOUT_SECONDS", 1.0)
    monkeypatch.setattr(ListenerApiModule, "BODY_IDLE_TIMEOUT_SECONDS", 0.6)
    monkeypatch.setattr(ListenerApiModule, "BODY_TOTAL_TIMEOUT_SECONDS", 1.5)
    monkeypatch.setattr(ListenerApiModule, "DEADLINE_CHECK_SECONDS", 0.1)


async def echo_app(scope: dict, receive: Any, send: Any) -> None:
    """Reads the whole body and answers its length; a head over the limit gets the module's 431."""
    if scope["type"] != "http":
        return
    if head_size(scope) > MAX_HEADER_BYTES:
        await headers_too_large_app(scope, receive, send)
        return
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = json.dumps({"size": size}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(params=http_protocols())
def serve(request):
    """serve(**protocol_kwargs) serves echo_app with guarded_http_protocol on a loopback port, in a thread, and
    returns the port; every server is stopped afterwards."""
    started = []

    def start(**kwargs: Any) -> int:
        protocol = guarded_http_protocol(request.param, **kwargs)
        assert not isinstance(protocol, str), "uvicorn's internals differ from the checked ones: unguarded"
        config = uvicorn.Config(
            echo_app,
            http=protocol,
            log_level="warning",
            lifespan="off",
            h11_max_incomplete_event_size=MAX_HEADER_BYTES + H11_BUFFER_SLACK,
        )
        server = GuardedServer(config)
        server.install_signal_handlers = lambda: None  # not the main thread
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        started.append((server, thread, sock))
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.01)
        assert server.started
        return sock.getsockname()[1]

    yield start
    for server, thread, sock in started:
        server.should_exit = True
        thread.join(10)
        sock.close()


def read_until_closed(sock: socket.socket, limit: float) -> bytes:
    """What the server sends until it closes the connection; fails if it is still open after `limit` seconds."""
    sock.settimeout(0.1)
    received = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"still open after {limit} s; got {received[:200]!r}")


def test_a_request_on_time_is_served(serve):
    port = serve()
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        answer = read_until_closed(client, 10)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"size": 5}')


def test_a_slow_head_is_closed_at_the_head_deadline(short_deadlines, serve):
    """A slow-loris head (a byte now and then, never finished) is closed once the head deadline passes."""
    port = serve()
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")
        started = time.monotonic()
        answer = read_until_closed(client, 10)
    assert time.monotonic() - started >= 0.5  # not before the deadline (1 s from the accept, checked every 0.1 s)
    assert b"200" not in answer


def test_a_paused_body_gets_the_408_it_was_given(short_deadlines, serve):
    """The body deadlines and the 408's detail are the caller's when it gives them."""
    port = serve(body_idle=0.3, body_total=5, body_timeout_detail="Send it faster: this gateway waits 0.3 s.")
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhal")
        answer = read_until_closed(client, 10)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body) == {"error": "request_timeout", "detail": "Send it faster: this gateway waits 0.3 s."}


def test_an_endless_head_gets_431_and_a_whole_one_over_the_limit_too(serve):
    port = serve()
    # Never ends: the guard refuses it. Over two socket reads of 256 KiB, as the read in which a message begins is
    # not counted on httptools (it may hold the end of the message before; the head is bounded by one read then).
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 600_000)
        assert read_until_closed(client, 10).startswith(b"HTTP/1.1 431")
    big = b"X-Big: " + b"a" * (MAX_HEADER_BYTES // 2) + b"\r\n"
    with socket.create_connection(("127.0.0.1", port)) as client:  # complete in one read: the app refuses it
        client.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n" + big * 3 + b"\r\n")
        assert read_until_closed(client, 10).startswith(b"HTTP/1.1 431")


def test_a_client_that_never_reads_its_answers_is_cut_off(short_deadlines, serve):
    """Pipelined requests whose answers are never taken: the connection is cut off at the write deadline
    instead of being held (and its answers kept in memory) for ever."""
    port = serve(write_timeout=1)
    request = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}"
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.settimeout(0.05)
        deadline = time.monotonic() + 20
        cut = False
        while time.monotonic() < deadline and not cut:
            try:
                client.sendall(request * 256)
            except TimeoutError:
                continue  # our send buffer is full: the server has stopped reading us
            except (BrokenPipeError, ConnectionResetError):
                cut = True
        if not cut:  # the server may have aborted while we were not sending: the next read tells
            try:
                client.settimeout(5)
                while client.recv(1 << 20):
                    pass
                cut = True
            except ConnectionResetError:
                cut = True
            except TimeoutError:
                pass
    assert cut, "the connection was still open after 20 s"


def test_pipelined_requests_that_are_read_are_all_answered(serve):
    port = serve()
    request = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}"
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(request * 99 + request.replace(b"Host: t", b"Host: t\r\nConnection: close"))
        answers = read_until_closed(client, 20)
    assert answers.count(b"HTTP/1.1 200") == 100


def test_the_body_deadlines_are_the_modules_constants_when_the_class_is_made(monkeypatch):
    monkeypatch.setattr(ListenerApiModule, "BODY_IDLE_TIMEOUT_SECONDS", 7)
    protocol = guarded_http_protocol("h11")
    assert (protocol.body_idle_seconds, protocol.body_total_seconds) == (7, BODY_TOTAL_TIMEOUT_SECONDS)
    assert protocol.body_timeout_response == BODY_TIMEOUT_RESPONSE
    given = guarded_http_protocol("h11", body_idle=1, body_total=2, body_timeout_detail="late")
    assert (given.body_idle_seconds, given.body_total_seconds) == (1, 2)
    assert given.body_timeout_response.endswith(b'{"error": "request_timeout", "detail": "late"}')
    assert protocol.body_idle_seconds == 7  # each call makes its own class


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", WRITE_TIMEOUT_SECONDS),
        ("2.5", 2.5),
        ("0", WRITE_TIMEOUT_SECONDS),
        ("-1", WRITE_TIMEOUT_SECONDS),
        ("inf", WRITE_TIMEOUT_SECONDS),
        ("nan", WRITE_TIMEOUT_SECONDS),
        ("soon", WRITE_TIMEOUT_SECONDS),
    ],
)
def test_the_write_deadline_comes_from_the_test_variable_only_when_positive(monkeypatch, value, expected):
    monkeypatch.setenv(WRITE_TIMEOUT_ENV, value)
    assert write_timeout_seconds() == expected


def test_a_closing_response_is_one_whole_http_answer():
    answer = closing_response(b"HTTP/1.1 408 Request Timeout", "request_timeout", "late: send it \u00e9 faster")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"\r\nconnection: close\r\n" in head + b"\r\n"
    assert int(head.split(b"content-length: ")[1]) == len(body)
    assert json.loads(body)["detail"] == "late: send it \u00e9 faster"


def test_head_size_counts_the_target_and_each_header_line():
    scope = {"raw_path": b"/a", "query_string": b"b=1", "headers": [(b"host", b"t"), (b"x", b"yy")]}
    assert head_size(scope) == 2 + 3 + (4 + 1 + 4) + (1 + 2 + 4)


def test_deadline_checks_go_on_when_one_connection_fails():
    """
    Given two connections, the first of which raises when checked
    When the periodic check runs
    Then the second is still checked, the failing one is dropped and closed, and the check is scheduled again.
    """

    class Broken:
        def __init__(self):
            self.transport = transport = type("T", (), {"closed": False})()
            transport.close = lambda: setattr(transport, "closed", True)

        def check_deadline(self, now):
            raise RuntimeError("boom")

    class Fine:
        checked = 0

        def check_deadline(self, now):
            Fine.checked += 1

    async def scenario():
        deadlines = ConnectionDeadlines(asyncio.get_running_loop())
        broken, fine = Broken(), Fine()
        deadlines.add(broken)
        deadlines.add(fine)
        deadlines.check()
        return deadlines, broken

    deadlines, broken = asyncio.run(scenario())
    assert Fine.checked == 1
    assert broken not in deadlines.connections and broken.transport.closed
    assert deadlines.timer is not None


class RecordingTransport:
    """Just enough of an asyncio transport to see what is written and when it closes."""

    def __init__(self):
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def writelines(self, lines) -> None:
        self.writes.extend(lines)

    def get_extra_info(self, name, default=None):
        return default

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closed


def test_a_corked_answer_is_one_write():
    """
    Given the transport uvicorn's protocol writes to, corked for an answer
    When the head, the body and an empty end are written, then it is uncorked
    Then the connection gets one write with all of it, and later writes go straight through.
    """

    class Guard:
        closing = False

    real = RecordingTransport()
    transport = GuardedTransport(real, Guard())
    transport.cork()
    for part in (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n", b"[]", b""):
        transport.write(part)
    assert real.writes == []
    transport.uncork()
    assert real.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]"]
    transport.write(b"later")
    assert real.writes[-1] == b"later"
