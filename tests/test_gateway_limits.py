"""The gateway's limits on its callers (issue 12, finding 2), through real sockets to a running `xsoar-local up`:
the integration's connection guards (ListenerApiModule) serve the gateway too. Before them, a head could be sent
for ever, a 40 MiB header value grew the gateway by 40 MB, and a caller that pipelined requests and read no answer
held its connection, and the answers, for ever."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from helpers import Platform, start_platform, write_config

from xsoar_local.config import load_config

pytestmark = pytest.mark.timeout(120)

WRITE_TIMEOUT_ENV = "GENERIC_WEBHOOK_TEST_WRITE_TIMEOUT_SECONDS"  # ListenerApiModule's, for tests only
HEAD_TIMEOUT_SECONDS = 10  # ListenerApiModule.HEADER_TIMEOUT_SECONDS
MAX_HEADER_BYTES = 64 * 1024  # ListenerApiModule.MAX_HEADER_BYTES


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    config = write_config(
        tmp_path_factory.mktemp("gateway-limits"),
        [{"name": "echo", "integration": "Echo Webhook"}],
        body_timeout=1,
    )
    before = os.environ.get(WRITE_TIMEOUT_ENV)
    os.environ[WRITE_TIMEOUT_ENV] = "1"  # the platform process reads it when it starts
    try:
        running = start_platform(config)
    finally:
        if before is None:
            del os.environ[WRITE_TIMEOUT_ENV]
        else:
            os.environ[WRITE_TIMEOUT_ENV] = before
    yield running
    running.stop()


def connect(platform: Platform) -> socket.socket:
    url = urlsplit(platform.url)
    return socket.create_connection((url.hostname, url.port), timeout=30)


def rss(pid: int) -> int:
    """Resident memory of process `pid`, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def read_answer(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


@pytest.mark.parametrize("announced", [100, 200_000], ids=["small body, read whole first", "streamed body"])
def test_a_trickled_reroute_body_gets_408_and_the_connection_closes(platform: Platform, announced: int) -> None:
    """
    Given a platform with server.body_timeout 1 s
    When a caller announces a body (small: the gateway reads it whole before going upstream; large: streamed)
         to the reroute, sends 10 bytes of it and then nothing
    Then it gets 408 request_timeout naming server.body_timeout and the connection closes (it was held for as long
         as the caller liked, and with it an upstream connection); a normal delivery right after is answered.
    """
    url = urlsplit(platform.url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(
            (
                f"POST /instance/execute/echo HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {announced}\r\n\r\n" + '{"name": "'
            ).encode()
        )
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert b"request_timeout" in answer and b"server.body_timeout" in answer
    response = httpx.post(platform.url + "/instance/execute/echo", json={"name": "after a slow body"}, timeout=30)
    assert response.status_code == 200, response.text


def test_body_timeout_must_be_a_positive_number(tmp_path) -> None:
    """
    Given server.body_timeout 0
    When the config is loaded
    Then the problem names the key and the fix.
    """
    path = write_config(tmp_path, [], body_timeout=0)
    with pytest.raises(Exception) as refused:
        load_config(path)
    assert "server.body_timeout must be a number of seconds above 0, got 0 (fix: body_timeout: 30)" in str(
        refused.value
    )


def test_a_head_that_never_ends_is_closed_at_the_head_deadline(platform: Platform) -> None:
    """
    Given the gateway
    When a caller sends a request line and one header, then a header byte now and then (slow loris), never the end
    Then the connection is closed by the head deadline (10 s from the accept), not held for as long as it likes.
    """
    with connect(platform) as sock:
        accepted = time.monotonic()
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        sock.settimeout(1)
        closed = False
        while not closed and time.monotonic() - accepted < 3 * HEAD_TIMEOUT_SECONDS:
            try:
                sock.sendall(b"a")
                closed = sock.recv(65536) == b""
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
    assert closed, f"still open after {3 * HEAD_TIMEOUT_SECONDS} s"
    assert time.monotonic() - accepted >= HEAD_TIMEOUT_SECONDS - 1


@pytest.mark.parametrize("path", ["/health", "/instance/execute/echo"], ids=["api", "reroute"])
def test_a_40_mib_header_gets_431_and_the_gateway_does_not_grow(platform: Platform, path: str) -> None:
    """
    Given the gateway
    When a caller streams a 40 MiB header value, and another sends a whole head of 100 KB in one piece
    Then the first gets 431 headers_too_large once past the 64 KiB limit (the gateway's memory grows by far less
         than the 40 MiB it was sent; unguarded it grew by 40 MB), and the second gets 431 too.
    """
    before = rss(platform.process.pid)
    with connect(platform) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nX-Big: ".encode())
        piece = b"a" * (1024 * 1024)
        for _ in range(40):
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
        answer = read_answer_or_reset(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:300]
    assert b"headers_too_large" in answer
    assert rss(platform.process.pid) - before < 16 * 1024 * 1024
    with connect(platform) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nX-Pad: {'a' * 100_000}\r\n\r\n".encode())
        answer = read_answer_or_reset(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:300]


def read_answer_or_reset(sock: socket.socket) -> bytes:
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except ConnectionResetError:
        pass
    return answer


def test_a_caller_that_pipelines_and_never_reads_is_cut_off_at_the_write_deadline(platform: Platform) -> None:
    """
    Given the gateway, its write deadline shortened to 1 s for the test (30 s by default)
    When a caller pipelines requests to the reroute as fast as it can and reads none of the answers
    Then the gateway stops reading it once answers pile up, and cuts the connection off at the write deadline; its
         memory does not grow with what the caller sent (unguarded: about 43 MB per connection, held for ever).
    """
    before = rss(platform.process.pid)
    request = b"GET /instance/execute/echo/ping HTTP/1.1\r\nHost: localhost\r\n\r\n"
    with connect(platform) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(0.2)
        started = time.monotonic()
        cut = False
        while not cut and time.monotonic() - started < 60:
            try:
                sock.sendall(request * 512)
            except TimeoutError:
                continue  # the gateway stopped reading us: our send buffer is full
            except (BrokenPipeError, ConnectionResetError):
                cut = True
    assert cut, "the connection was still open after 60 s"
    assert rss(platform.process.pid) - before < 32 * 1024 * 1024


def test_pipelined_requests_through_the_reroute_are_all_answered_in_order(platform: Platform) -> None:
    """
    Given the gateway's pipelining bound
    When a caller that reads its answers pipelines 100 events to the reroute in one write
    Then each gets its answer, in order (the bound holds the reading back, it loses nothing).
    """
    requests = b"".join(
        b"POST /instance/execute/echo HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
        for body in (f'{{"name": "pipelined {number:03d}"}}'.encode() for number in range(100))
    )
    with connect(platform) as sock:
        sock.sendall(requests + b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answers = read_answer_or_reset(sock)
    assert answers.count(b"HTTP/1.1 200 ") == 101, answers[-500:]
    names = [int(part[:3]) for part in answers.split(b"pipelined ")[1:]]  # each answer names its event twice
    assert list(dict.fromkeys(names)) == list(range(100))
