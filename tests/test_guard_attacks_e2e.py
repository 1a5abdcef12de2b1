"""Attacks on the listener's connection guards through real sockets, against a real instance (issue 12: slow
reads with pipelining, chunked trailers, idle TLS connections, pipelined bursts), and the senders that must keep
working next to them: pipelining clients that read their answers, slow readers within the deadline, TLS clients.

Each test starts the integration the platform's way (tests/conftest.py `launch`); `make test` runs them with the
instance on the dev venv (httptools + uvloop) and again on the image's stack (h11 on asyncio). The write deadline
(30 s) is shortened for these tests through the instance's test-only environment variable.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import trustme

from tests.conftest import LOOPBACK, Instance, Launcher
from tests.test_tls_and_abuse import assert_no_traceback, client_context, open_tls, read_to_close, status_of, tls_params

pytestmark = pytest.mark.timeout(120)

WRITE_TIMEOUT_ENV = "GENERIC_WEBHOOK_TEST_WRITE_TIMEOUT_SECONDS"  # the integration's test-only override
WRITE_TIMEOUT = 2.0  # seconds: the write deadline of these tests' instances
HEAD_DEADLINE = 10.0  # HEADER_TIMEOUT_SECONDS
MIB = 1024 * 1024
TOKEN = {"identifier": "_header:X-Token", "password": "right-token"}
UNAUTHENTICATED = b"POST / HTTP/1.1\r\nHost: a\r\n\r\n"  # answered 401 on a keep-alive connection
STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")


def serving(launch: Launcher, params: dict | None = None, **env: str) -> Instance:
    instance = launch({"credentials": TOKEN, **(params or {})}, env={WRITE_TIMEOUT_ENV: str(WRITE_TIMEOUT), **env})
    with httpx.Client() as client:
        instance.wait_serving(client)
    return instance


def event_post(name: str) -> bytes:
    body = json.dumps({"name": name}).encode()
    return (
        b"POST / HTTP/1.1\r\nHost: a\r\nX-Token: right-token\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def memory(pid: int, key: str) -> int:
    """VmRSS or VmHWM (the peak) of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} for {pid}")


def established(instance: Instance) -> int:
    """The instance's established TCP connections on its listen port (its sockets in /proc/net/tcp)."""
    inodes = set()
    for fd in Path(f"/proc/{instance.process.pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = fd.readlink().name
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text(encoding="ascii").splitlines()[1:]:
                fields = line.split()
                port = int(fields[1].rsplit(":", 1)[1], 16)
                if fields[3] == "01" and port == instance.port and fields[9] in inodes:
                    count += 1
    return count


def wait_until(probe, timeout: float, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def prompt_post(instance: Instance, name: str) -> float:
    started = time.monotonic()
    answer = httpx.post(instance.base_url, json={"name": name}, headers={"X-Token": "right-token"}, timeout=5)
    assert answer.status_code == 200, answer.text
    return time.monotonic() - started


def read_answers(sock: socket.socket, count: int, timeout: float) -> list[bytes]:
    """Statuses of `count` answers read from `sock` (fewer if it closes or `timeout` passes)."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while len(STATUS.findall(data)) < count:
            chunk = sock.recv(262144)
            if not chunk:
                break
            data += chunk
    return STATUS.findall(data)


# --- 1. slow reads with pipelining ---


def test_pipelining_clients_that_never_read_are_cut_off_at_the_write_deadline_with_bounded_memory(
    launch: Launcher,
) -> None:
    """
    Given: an instance with a write deadline of 2 s and header-token auth
    When: 12 connections without credentials each pipeline 256 KiB of requests (about 9,000 each, answered 401 on
          keep-alive) and never read an answer
    Then: the server cuts all 12 off within a few seconds of the write deadline (it used to hold them until the
          keep-alive timeout, 120 s), its peak RSS grows by less than 40 MiB (it used to be ~20 MiB per connection
          on httptools: every request of a read parsed and queued), a normal request is served promptly all along,
          and no traceback is logged
    """
    instance = serving(launch)
    prompt_post(instance, "warm-up")
    peak_before = memory(instance.process.pid, "VmHWM")
    payload = UNAUTHENTICATED * (256 * 1024 // len(UNAUTHENTICATED))
    with contextlib.ExitStack() as stack:
        socks = []
        for _ in range(12):
            sock = stack.enter_context(socket.create_connection((LOOPBACK, instance.port), timeout=5))
            sock.setblocking(False)
            socks.append(sock)
        sent = dict.fromkeys(socks, 0)
        started = time.monotonic()
        while any(count < len(payload) for count in sent.values()) and time.monotonic() - started < 10:
            for sock in socks:
                with contextlib.suppress(BlockingIOError, ConnectionResetError, BrokenPipeError):
                    sent[sock] += sock.send(payload[sent[sock] : sent[sock] + 65536])
            time.sleep(0.01)
        assert wait_until(lambda: established(instance) >= 12, 5), "the 12 connections are not all up"
        assert prompt_post(instance, "next to the non-readers") < 2
        closed_at = wait_until(lambda: established(instance) == 0 and time.monotonic() - started, WRITE_TIMEOUT + 8)
        still_open = established(instance)
    assert not still_open, f"{still_open} non-reading connections still held {time.monotonic() - started:.0f} s on"
    growth = memory(instance.process.pid, "VmHWM") - peak_before
    assert growth < 40 * MIB, f"peak RSS grew by {growth / MIB:.0f} MiB"
    assert closed_at > WRITE_TIMEOUT - 0.5, f"cut off after {closed_at:.1f} s, before the write deadline"
    assert prompt_post(instance, "after the non-readers") < 2
    assert_no_traceback(instance)


def test_a_pipelined_burst_read_after_sending_is_all_answered(launch: Launcher) -> None:
    """
    Given: an instance with header-token auth
    When: a client writes 200 pipelined event POSTs in one write and only then reads; then 1,000 more (about
          112 KiB, several reads' worth of heads, far over the 64 KiB head limit in all); then 1,500 pipelined
          unauthenticated requests (over 64 KiB of heads in one write)
    Then: every request is answered in order (no false 431, no reset), 200 for each event, and all 1,200 incidents
          are stored once
    """
    instance = serving(launch)
    for count, prefix in ((200, "burst"), (1000, "big burst")):
        with socket.create_connection((LOOPBACK, instance.port), timeout=10) as sock:
            sock.sendall(b"".join(event_post(f"{prefix} {number}") for number in range(count)))
            statuses = read_answers(sock, count, timeout=20)
        assert Counter(statuses) == {b"200": count}, Counter(statuses)
    with socket.create_connection((LOOPBACK, instance.port), timeout=10) as sock:
        sock.sendall(UNAUTHENTICATED * 1500)
        statuses = read_answers(sock, 1500, timeout=20)
    assert Counter(statuses) == {b"401": 1500}, Counter(statuses)
    names = Counter(incident["name"] for incident in instance.store.list_incidents(instance=instance.name, limit=None))
    assert len(names) == 1200 and set(names.values()) == {1}


def test_a_slow_reader_within_the_write_deadline_gets_every_answer(launch: Launcher) -> None:
    """
    Given: an instance with a write deadline of 2 s
    When: a client with a small receive buffer pipelines 3,000 health checks (their answers, about 450 KB, are
          more than the buffers hold and than the server lets wait before it stops reading), reads nothing for
          1.5 s, then reads at most 16 KiB every 0.1 s, for over twice the write deadline in all
    Then: it gets all 3,000 answers (200) and the connection is not cut off: the deadline runs only while the
          client takes nothing
    """
    instance = serving(launch)
    request = b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n"
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.connect((LOOPBACK, instance.port))
    with sock:
        started = time.monotonic()
        sock.sendall(request * 3000)
        time.sleep(1.5)
        sock.settimeout(5)
        data = b""
        while data.count(b"HTTP/1.1 ") < 3000 and time.monotonic() - started < 60:
            chunk = sock.recv(16384)
            assert chunk, f"closed after {data.count(b'HTTP/1.1 ')} answers"
            data += chunk
            time.sleep(0.1)
        took = time.monotonic() - started
    assert Counter(STATUS.findall(data)) == {b"200": 3000}
    assert took > 2 * WRITE_TIMEOUT, f"read in {took:.1f} s: too fast to show the deadline waits for a slow reader"


# --- 2. chunked trailers ---


def chunked_event(head_extra: bytes, trailers: bytes) -> bytes:
    body = b'{"name": "chunked"}'
    return (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        + head_extra
        + b"\r\n%x\r\n%s\r\n0\r\n" % (len(body), body)
        + trailers
        + b"\r\n"
    )


def answer_to(instance: Instance, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection((LOOPBACK, instance.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer or not re.search(rb"\r\n\r\n[\[{].*[\]}]$", answer, re.S):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return status_of(answer), answer.partition(b"\r\n\r\n")[2]


def test_chunked_trailers_are_never_taken_as_request_headers(launch: Launcher) -> None:
    """
    Given: an instance with header-token auth, allowed_cidrs 10.0.0.0/8 and loopback as trusted proxy (default)
    When: a chunked POST carries the auth token, or X-Forwarded-For with an allowed address, only in its trailer
          section (which front proxies and WAFs do not check)
    Then: the token does not count (401) and the address does not either (403: the loopback peer is checked);
          with them in the head instead both are accepted, and a trailer field never shows in the stored headers
    """
    instance = serving(launch, {"allowed_cidrs": "10.0.0.0/8"})
    forwarded = b"X-Forwarded-For: 10.1.1.1\r\n"
    token = b"X-Token: right-token\r\n"
    assert answer_to(instance, chunked_event(forwarded, token))[0] == 401
    assert answer_to(instance, chunked_event(token, forwarded))[0] == 403
    status, body = answer_to(instance, chunked_event(forwarded + token, b"X-Trailer-Only: seen\r\n"))
    assert status == 200, body
    (incident,) = json.loads(body)
    assert "x-trailer-only" not in json.loads(incident["rawJSON"])["headers"]


def test_an_endless_trailer_section_is_refused_and_memory_stays_bounded(launch: Launcher) -> None:
    """
    Given: an instance (head limit 64 KiB)
    When: a chunked POST ends its last chunk and then sends one trailer line that never ends, up to 32 MiB (and,
          on another connection, trailer lines without end)
    Then: the server answers (431, or h11's 400) long before 32 MiB have gone out, its peak RSS grows by less than
          40 MiB, and it keeps serving
    """
    instance = serving(launch, {"credentials": ""})
    peak_before = memory(instance.process.pid, "VmHWM")
    start = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    for filler in (b"a" * 65536, b"X-More: a\r\n" * 5958):
        answer = b""
        sent = 0
        with socket.create_connection((LOOPBACK, instance.port), timeout=5) as sock:
            sock.sendall(start + b"2\r\n{}\r\n0\r\nX-Endless: ")
            with contextlib.suppress(OSError):
                while sent < 32 * MIB and not answer:
                    sock.sendall(filler)
                    sent += len(filler)
                    if select.select([sock], [], [], 0.005)[0]:
                        answer = sock.recv(65536) or b"(closed)"
        # (what the kernels' buffers take at once counts as sent: a few MiB on loopback)
        assert sent < 12 * MIB, f"{sent / MIB:.0f} MiB of trailers went out without an answer"
        assert status_of(answer) in (400, 431), answer[:200]
    growth = memory(instance.process.pid, "VmHWM") - peak_before
    assert growth < 40 * MIB, f"peak RSS grew by {growth / MIB:.0f} MiB"
    prompt = httpx.post(instance.base_url, json={"name": "after"}, timeout=5)
    assert prompt.status_code == 200


# --- 3. TLS ---


@pytest.fixture(scope="module")
def server_ca() -> trustme.CA:
    return trustme.CA(organization_name="Webhook guard tests")


@pytest.fixture(scope="module")
def server_cert(server_ca: trustme.CA) -> trustme.LeafCert:
    return server_ca.issue_cert(LOOPBACK, "localhost")


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(0.01)
    try:
        return sock.recv(1) == b""
    except (TimeoutError, BlockingIOError):
        return False
    except OSError:
        return True


def test_with_tls_a_connection_that_never_finishes_its_handshake_gets_the_head_deadline(
    launch: Launcher, server_ca: trustme.CA, server_cert: trustme.LeafCert
) -> None:
    """
    Given: an HTTPS instance (head deadline 10 s)
    When: 3 TCP connections send nothing, 3 send the start of a ClientHello and stop, 1 completes the handshake
          and sends nothing, while TLS clients post events, one on a connection kept alive across the wait
    Then: all 7 are closed by the server at the head deadline (10 s from the accept; it used to be 60 s, asyncio's
          and uvloop's handshake timeout, for the first 6), and every TLS post is answered 200
    """
    instance = launch(tls_params(server_cert), env={WRITE_TIMEOUT_ENV: str(WRITE_TIMEOUT)})
    context = client_context(server_ca)
    with httpx.Client(verify=context, timeout=5) as tls_client:
        instance.wait_serving(tls_client, scheme="https")
    url = f"https://{LOOPBACK}:{instance.port}/"
    with contextlib.ExitStack() as stack, httpx.Client(verify=context, timeout=5) as pooled:
        assert pooled.post(url, json={"name": "before"}).status_code == 200
        started = time.monotonic()
        idle = [stack.enter_context(socket.create_connection((LOOPBACK, instance.port))) for _ in range(3)]
        partial = [stack.enter_context(socket.create_connection((LOOPBACK, instance.port))) for _ in range(3)]
        for sock in partial:
            sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello's first bytes
        quiet = stack.enter_context(open_tls(instance.port, context))
        waiting: list[socket.socket] = [*idle, *partial, quiet]
        closed_after: list[float] = []
        while waiting and time.monotonic() - started < HEAD_DEADLINE + 5:
            for sock in list(waiting):
                if closed_by_server(sock):
                    waiting.remove(sock)
                    closed_after.append(time.monotonic() - started)
            time.sleep(0.2)
        with open_tls(instance.port, context) as fresh:
            fresh.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            assert status_of(read_to_close(fresh)) == 200
        assert pooled.post(url, json={"name": "after"}).status_code == 200  # a new pooled connection if need be
    assert not waiting, f"{len(waiting)} connections still open {time.monotonic() - started:.0f} s after the accept"
    assert min(closed_after) > HEAD_DEADLINE - 1, sorted(closed_after)
    assert_no_traceback(instance)
