"""End-to-end checks of the intake limits and duplicate protection on a real instance process."""

from __future__ import annotations

import contextlib
import gzip
import json
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import LOOPBACK, Instance, Launcher

MIB = 1024 * 1024


def peak_rss(pid: int) -> int:
    """The process's peak resident set size (VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def post_raw(port: int, head: bytes, body_chunks, *, timeout: float = 30) -> tuple[int, bytes]:
    """Sends a request over a raw socket, stops sending as soon as the server answers or closes,
    and returns the status code and response body."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        received = b""
        for chunk in body_chunks:
            with contextlib.suppress(BlockingIOError):
                received += sock.recv(65536)
            if received:
                break
            try:
                sock.setblocking(True)
                sock.sendall(chunk)
                sock.setblocking(False)
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.setblocking(True)
        sock.settimeout(timeout)
        while b"\r\n\r\n" not in received or len(received) < received.find(b"\r\n\r\n") + 4 + _length(received):
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            received += data
    head_end = received.find(b"\r\n\r\n")
    status = int(received.split(b" ", 2)[1])
    return status, received[head_end + 4 :]


def _length(received: bytes) -> int:
    for line in received.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def serving(launch: Launcher, **params) -> Instance:
    instance = launch(params)
    with httpx.Client() as client:
        instance.wait_serving(client)
    return instance


def test_oversized_bodies_get_413_with_bounded_memory(launch: Launcher):
    """
    Given an instance with the default 10 MiB body limit
    When a 100 MiB body is announced with Content-Length, a 100 MiB body is streamed chunked (no
         Content-Length), and a gzip body that inflates to 1 GiB is sent
    Then each gets 413 with a JSON reason, and the process's peak memory grows by less than 20 MiB.
    """
    instance = serving(launch)
    baseline = peak_rss(instance.process.pid)
    chunk = b"x" * MIB

    announced = (
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {100 * MIB}\r\n\r\n".encode()
    )
    status, body = post_raw(instance.port, announced, (chunk for _ in range(100)))
    assert status == 413
    assert json.loads(body)["error"] == "payload_too_large"

    chunked_head = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    status, body = post_raw(instance.port, chunked_head, (framed for _ in range(100)))
    assert status == 413
    assert json.loads(body)["error"] == "payload_too_large"

    bomb = gzip.compress(b"\0" * (1024 * MIB), compresslevel=9)
    assert len(bomb) < 2 * MIB
    with httpx.Client() as client:
        response = client.post(instance.base_url, content=bomb, headers={"Content-Encoding": "gzip"}, timeout=30)
    assert response.status_code == 413
    assert "decompressed" in response.json()["detail"]

    growth = peak_rss(instance.process.pid) - baseline
    print(f"peak RSS growth: {growth / MIB:.1f} MiB")
    assert growth < 20 * MIB, f"peak RSS grew by {growth / MIB:.1f} MiB"
    assert instance.store.count_incidents() == 0


def test_repeated_delivery_creates_one_incident_across_a_restart(launch: Launcher):
    """
    Given an instance with dedup_key header:webhook-id
    When a delivery arrives, the instance process is stopped and started again, and the delivery is repeated
    Then the store holds one incident, and the repeat answers 200 with the incident created the first time.
    """
    params = {"dedup_key": "header:webhook-id", "dedup_window": "3600"}
    first = serving(launch, **params)
    headers = {"webhook-id": "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"}
    with httpx.Client() as client:
        created = client.post(first.base_url, json={"name": "delivered once"}, headers=headers).json()
    first.stop()

    second = serving(launch, **{**params, "longRunningPort": first.params["longRunningPort"]})
    with httpx.Client() as client:
        repeat = client.post(second.base_url, json={"name": "delivered once"}, headers=headers)
    assert repeat.status_code == 200
    assert [incident["id"] for incident in repeat.json()] == [incident["id"] for incident in created]
    assert second.store.count_incidents() == 1


@pytest.mark.parametrize("lines", [1000])
def test_ndjson_batch_through_a_real_process(launch: Launcher, lines: int):
    """
    Given a running instance
    When an NDJSON body of 1,000 lines arrives gzip-compressed
    Then 1,000 incidents are stored and returned.
    """
    instance = serving(launch)
    body = "\n".join(json.dumps({"name": f"event {n}"}) for n in range(lines)).encode()
    headers = {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}
    with httpx.Client() as client:
        response = client.post(instance.base_url, content=gzip.compress(body), headers=headers, timeout=30)
    assert response.status_code == 200
    assert len(response.json()) == lines
    assert instance.store.count_incidents() == lines


def test_idle_and_slow_head_connections_are_closed(launch: Launcher):
    """
    Given a running instance (request head deadline 10 s)
    When 20 connections send nothing and 5 send a request head one header line every 2 s
    Then the server closes all of them within the deadline (plus slack), and a normal request is served
         meanwhile.
    """
    instance = serving(launch)
    idle = [socket.create_connection((LOOPBACK, instance.port), timeout=20) for _ in range(20)]
    slow = [socket.create_connection((LOOPBACK, instance.port), timeout=20) for _ in range(5)]
    for sock in slow:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\n")
    try:
        with httpx.Client() as client:
            assert client.post(instance.base_url, json={"name": "normal"}, timeout=5).status_code == 200
        deadline = time.monotonic() + 16
        open_socks = idle + slow
        while open_socks and time.monotonic() < deadline:
            still_open = []
            for sock in open_socks:
                sock.settimeout(0.05)
                try:
                    if sock in slow:
                        sock.sendall(b"X-Slow: 1\r\n")
                    if sock.recv(1) == b"":
                        continue  # closed by the server
                except (TimeoutError, BlockingIOError):
                    pass
                except (ConnectionResetError, BrokenPipeError):
                    continue
                still_open.append(sock)
            open_socks = still_open
            time.sleep(0.5)
        assert not open_socks, f"{len(open_socks)} connections still open after the head deadline"
    finally:
        for sock in idle + slow:
            sock.close()


def test_sigterm_writes_pending_samples_and_seen_keys(launch: Launcher):
    """
    Given an instance with samples and a dedup header, whose context writes are at most once a second
    When two deliveries arrive within that second and the process gets SIGTERM (how docker stops it)
    Then both seen keys (scoped to the caller's address: the instance has no credentials) and both samples are
         in the integration context after it exits.
    """
    instance = serving(launch, dedup_key="header:X-Id", store_samples="true")
    with httpx.Client() as client:
        for number in (1, 2):
            headers = {"X-Id": f"id-{number}"}
            response = client.post(instance.base_url, json={"name": f"event {number}"}, headers=headers)
            assert response.status_code == 200
    instance.process.send_signal(signal.SIGTERM)
    instance.wait_exit(timeout=20)
    context, _ = instance.store.get_integration_context(instance.name)
    assert set(json.loads(context["dedup_keys"])) == {"a:127.0.0.1|h:id-1", "a:127.0.0.1|h:id-2"}
    assert [sample["name"] for sample in json.loads(context["sample_events"])] == ["event 1", "event 2"]


def test_pipelined_body_does_not_count_against_the_next_head(launch: Launcher):
    """
    Given a connection that pipelines a 200 KB POST and the start of a second request in the same write
    When the server reads them
    Then the first request is answered 200 (the body bytes are not counted as the second request's head).
    """
    instance = serving(launch)
    body = json.dumps({"name": "big", "pad": "x" * 200_000}).encode()
    first = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n" + (
        f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    with socket.create_connection((LOOPBACK, instance.port), timeout=10) as sock:
        sock.sendall(first + body[:130_000])
        sock.sendall(body[130_000:] + b"POST / HTTP/1.1\r\nHost: t\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
