"""The soak's legitimate senders: every body shape the integration supports, half through the reroute and half on
the listen ports, from their own loopback addresses, on kept-alive and on new connections.

Paced open-loop at a target rate (a request leaves at its scheduled time whether or not earlier ones were
answered; its latency counts from that time, so a stall shows in full), or closed-loop with N connections for the
capacity probe. Every event carries a marker `<tag>-<seq>-<k>` (in its `bench_id` field, or in its text) that the
exactly-once check finds again in the store. Runs in a process of its own (`run_traffic`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import hmac
import json
import math
import multiprocessing.queues
import queue
import random
import signal
import time
import urllib.parse
from array import array
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.load import CONNECT_TIMEOUT, _Connection
from bench.payloads import ALERT
from bench.soak.checks import Ledger, percentile
from xsoar_local.server import run as run_loop

TOKEN, SIGNED = "token", "signed"  # the two instances legit traffic goes to
DIRECT, REROUTE = "direct", "reroute"
IDLE_RETIRE = 2.0  # seconds: a pooled connection idle longer is closed, not reused (the gateway's idle timeout is 5)
RETRY_WITHIN = 1.0  # seconds: a retry re-sends a delivery acknowledged this recently (within the dedup memory)
CAPTURE_EVERY = 10  # every n-th acknowledged signed delivery is handed to the replay attack
DRAIN_TIMEOUT = 40.0


@dataclass(frozen=True)
class Route:
    host: str
    port: int
    prefix: str  # "" on the listen port, "/instance/execute/<name>" through the reroute


@dataclass(frozen=True)
class TrafficPlan:
    tag: str  # marker prefix
    first_seq: int
    routes: dict[str, dict[str, Route]]  # instance (TOKEN/SIGNED) -> DIRECT/REROUTE -> route
    token_header: str
    token: str
    signing_key: bytes  # the Standard Webhooks key (base64-decoded secret)
    sources: tuple[str, ...]  # the senders' own loopback addresses
    duration: float
    rate: float | None  # requests/s, open loop; None: closed loop on `connections`
    connections: int = 32  # closed loop: requests in flight
    connections_per_sender: int = 10  # per source address and destination (its client's pool)
    warmup: float = 0.0  # requests scheduled before this are left out of the latency and rate figures
    start_at: float = 0.0  # wall-clock time to start at (time.time()); 0: at once
    new_connection_share: float = 0.15
    progress_interval: float = 5.0
    request_timeout: float = 30.0
    max_outstanding: int = 2048
    seed: int = 0


# --- bodies ------------------------------------------------------------------------------------------------------


def marker(tag: str, seq: int, index: int) -> str:
    return f"{tag}-{seq}-{index}"


def message_id(tag: str, seq: int) -> str:
    """A delivery's Standard Webhooks id: unique, and not a marker (the headers go into every incident of the
    request, so a marker there would be found once per event)."""
    return f"msg_{tag}_{seq}"


def event(tag: str, seq: int, index: int, name: str) -> dict[str, Any]:
    """The bench's ~300-byte SIEM alert, with this event's marker (and its own name)."""
    return {**ALERT, "name": f"{ALERT['name']} ({name})", "bench_id": marker(tag, seq, index)}


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@dataclass
class Request:
    instance: str
    path: str  # below the route's prefix, with the query
    content_type: str
    body: bytes
    events: int  # markers of its own it carries
    headers: list[tuple[str, str]] = field(default_factory=list)


def standard_webhooks(key: bytes, message_id: str, body: bytes, timestamp: int | None = None) -> list[tuple[str, str]]:
    moment = str(int(time.time()) if timestamp is None else timestamp)
    signature = hmac.new(key, f"{message_id}.{moment}.".encode() + body, hashlib.sha256).digest()
    return [
        ("webhook-id", message_id),
        ("webhook-timestamp", moment),
        ("webhook-signature", "v1," + base64.b64encode(signature).decode()),
    ]


def _json(plan: TrafficPlan, seq: int) -> Request:
    return Request(TOKEN, "/", "application/json", _compact(event(plan.tag, seq, 0, "object")), 1)


def _array(plan: TrafficPlan, seq: int) -> Request:
    items = [event(plan.tag, seq, k, "array") for k in range(5)]
    return Request(TOKEN, "/", "application/json", _compact(items), 5)


def _ndjson(plan: TrafficPlan, seq: int) -> Request:
    lines = b"".join(_compact(event(plan.tag, seq, k, "ndjson")) + b"\n" for k in range(5))
    return Request(TOKEN, "/", "application/x-ndjson", lines, 5)


def _gzip(plan: TrafficPlan, seq: int) -> Request:
    items = [event(plan.tag, seq, k, "gzip") for k in range(3)]
    request = Request(TOKEN, "/", "application/json", gzip.compress(_compact(items), compresslevel=6), 3)
    request.headers.append(("Content-Encoding", "gzip"))
    return request


def _form(plan: TrafficPlan, seq: int) -> Request:
    fields = [
        ("name", "Form alert"),
        ("severity", "medium"),
        ("bench_id", marker(plan.tag, seq, 0)),
        ("payload", json.dumps({"user": "alice", "action": "login"})),
    ]
    return Request(TOKEN, "/", "application/x-www-form-urlencoded", urllib.parse.urlencode(fields).encode(), 1)


def _text(plan: TrafficPlan, seq: int) -> Request:
    body = f"Disk almost full on db-02 ({marker(plan.tag, seq, 0)})".encode()
    return Request(TOKEN, "/", "text/plain", body, 1)


def _subpath(plan: TrafficPlan, seq: int) -> Request:
    body = _compact(event(plan.tag, seq, 0, "sub-path"))
    return Request(TOKEN, "/alerts/siem?source=soak", "application/json", body, 1)


def _signed(plan: TrafficPlan, seq: int) -> Request:
    body = _compact(event(plan.tag, seq, 0, "signed"))
    headers = standard_webhooks(plan.signing_key, message_id(plan.tag, seq), body)
    return Request(SIGNED, "/", "application/json", body, 1, headers)


def _signed_gzip(plan: TrafficPlan, seq: int) -> Request:
    body = gzip.compress(_compact([event(plan.tag, seq, k, "signed gzip") for k in range(2)]), compresslevel=6)
    headers = standard_webhooks(plan.signing_key, message_id(plan.tag, seq), body)
    return Request(SIGNED, "/", "application/json", body, 2, [*headers, ("Content-Encoding", "gzip")])


RETRY = "retry"  # a sender re-delivering what it already got a 2xx for: answered 200, creates nothing
# shape -> (weight, builder); a retry falls back to `json` when nothing was acknowledged within RETRY_WITHIN.
SHAPES: dict[str, tuple[int, Callable[[TrafficPlan, int], Request]]] = {
    "json": (20, _json),
    "array": (8, _array),
    "ndjson": (8, _ndjson),
    "gzip": (6, _gzip),
    "form": (6, _form),
    "text": (6, _text),
    "sub-path": (8, _subpath),
    RETRY: (4, _json),
    "signed": (24, _signed),
    "signed-gzip": (6, _signed_gzip),
}


# --- sending -----------------------------------------------------------------------------------------------------


class Pool:
    """Each sender's connections per (host, port, source address): at most `limit` at once, as an HTTP client's
    pool has (a request waits for one, and its latency counts from its scheduled time); kept-alive ones retired
    after IDLE_RETIRE seconds idle."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.idle: dict[tuple[str, int, str], list[tuple[_Connection, float]]] = {}
        self.slots: dict[tuple[str, int, str], asyncio.Semaphore] = {}
        self.opened = 0
        self.waited = 0  # requests that found every connection of their sender busy

    async def slot(self, host: str, port: int, source: str) -> None:
        slots = self.slots.get((host, port, source))
        if slots is None:
            slots = self.slots[(host, port, source)] = asyncio.Semaphore(self.limit)
        if slots.locked():
            self.waited += 1
        await slots.acquire()

    def free(self, host: str, port: int, source: str) -> None:
        self.slots[(host, port, source)].release()

    async def connect(self, host: str, port: int, source: str) -> _Connection:
        loop = asyncio.get_running_loop()
        _, connection = await asyncio.wait_for(
            loop.create_connection(_Connection, host, port, local_addr=(source, 0)), CONNECT_TIMEOUT
        )
        self.opened += 1
        return connection

    async def acquire(self, host: str, port: int, source: str) -> _Connection:
        idle = self.idle.get((host, port, source))
        now = time.monotonic()
        while idle:
            connection, since = idle.pop()
            if not connection.closed and now - since < IDLE_RETIRE:
                return connection
            _close(connection)
        return await self.connect(host, port, source)

    def release(self, host: str, port: int, source: str, connection: _Connection) -> None:
        self.idle.setdefault((host, port, source), []).append((connection, time.monotonic()))

    def close(self) -> None:
        for connections in self.idle.values():
            for connection, _ in connections:
                _close(connection)
        self.idle.clear()


def _close(connection: _Connection) -> None:
    if connection.transport is not None:
        connection.transport.close()


@dataclass
class Tally:
    """What the senders did: per request the ledger; per interval and in all the statuses and latencies."""

    plan: TrafficPlan
    ledger: Ledger
    started: float  # perf_counter at the schedule's start
    statuses: Counter[str] = field(default_factory=Counter)
    by_shape: dict[str, Counter[str]] = field(default_factory=dict)
    by_route: dict[str, Counter[str]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)  # transport errors by kind
    latencies: array = field(default_factory=lambda: array("f"))  # seconds from schedule to answer, after warm-up
    by_instance: dict[str, array] = field(default_factory=dict)  # the same per instance
    interval: list[float] = field(default_factory=list)
    interval_answers: int = 0
    interval_bad: int = 0
    measured: int = 0  # answers to requests scheduled after the warm-up
    late: int = 0  # requests that left more than 100 ms after their scheduled time
    retries_sent: int = 0
    error_examples: list[str] = field(default_factory=list)

    def record(
        self, seq: int, shape: str, route: str, status: int, scheduled: float, kind: str = "", instance: str = ""
    ) -> None:
        label = str(status) if status else f"error:{kind}"
        self.ledger.statuses[seq - self.ledger.first] = status
        self.statuses[label] += 1
        self.by_shape.setdefault(shape, Counter())[label] += 1
        self.by_route.setdefault(route, Counter())[label] += 1
        now = time.perf_counter()
        if not 200 <= status < 300:
            self.interval_bad += 1
            if len(self.error_examples) < 10:
                self.error_examples.append(f"#{seq} {shape} via {route}: {label}")
        if status:
            self.interval.append(now - scheduled)
            self.interval_answers += 1
        else:
            self.errors[kind] += 1
        if scheduled - self.started >= self.plan.warmup and status:
            self.latencies.append(now - scheduled)
            self.by_instance.setdefault(instance, array("f")).append(now - scheduled)
            self.measured += 1


class Senders:
    def __init__(
        self, plan: TrafficPlan, captures: multiprocessing.queues.Queue[Any] | None, tally: Tally, pool: Pool
    ) -> None:
        self.plan = plan
        self.captures = captures
        self.tally = tally
        self.pool = pool
        self.random = random.Random(plan.seed)
        names = list(SHAPES)
        self.shapes = names
        self.weights = [SHAPES[name][0] for name in names]
        self.acknowledged: deque[tuple[float, Request]] = deque(maxlen=64)  # recent 2xx token JSON objects
        self.signed_acknowledged = 0

    def make(self, seq: int) -> tuple[str, Request]:
        shape = self.random.choices(self.shapes, self.weights)[0]
        if shape == RETRY:
            now = time.monotonic()
            if self.acknowledged and now - self.acknowledged[-1][0] < RETRY_WITHIN:
                _, earlier = self.acknowledged[-1]
                self.tally.retries_sent += 1
                return shape, Request(earlier.instance, earlier.path, earlier.content_type, earlier.body, 0)
            shape = "json"
        return shape, SHAPES[shape][1](self.plan, seq)

    async def send(self, seq: int, scheduled: float) -> None:
        shape, request = self.make(seq)
        self.tally.ledger.events[seq - self.tally.ledger.first] = request.events
        route_name = REROUTE if seq % 2 else DIRECT
        route = self.plan.routes[request.instance][route_name]
        source = self.plan.sources[seq % len(self.plan.sources)]
        fresh = self.random.random() < self.plan.new_connection_share
        head = [
            f"POST {route.prefix}{request.path} HTTP/1.1",
            f"Host: {route.host}:{route.port}",
            f"Content-Type: {request.content_type}",
            f"Content-Length: {len(request.body)}",
            "User-Agent: soak-sender/1.0",
        ]
        if request.instance == TOKEN:
            head.append(f"{self.plan.token_header}: {self.plan.token}")
        head += [f"{name}: {value}" for name, value in request.headers]
        if fresh:
            head.append("Connection: close")
        data = ("\r\n".join(head) + "\r\n\r\n").encode() + request.body
        if time.perf_counter() - scheduled > 0.1:
            self.tally.late += 1
        connection: _Connection | None = None
        try:
            await self.pool.slot(route.host, route.port, source)
        except asyncio.CancelledError:
            self.tally.record(seq, shape, route_name, 0, scheduled, "unanswered")
            raise
        try:
            try:
                if fresh:
                    connection = await self.pool.connect(route.host, route.port, source)
                else:
                    connection = await self.pool.acquire(route.host, route.port, source)
                status = await asyncio.wait_for(connection.request(data), self.plan.request_timeout)
            except asyncio.CancelledError:  # still owed when the drain gave up
                self.tally.record(seq, shape, route_name, 0, scheduled, "unanswered")
                raise
            except (TimeoutError, OSError, ConnectionError) as error:
                if connection is not None:
                    _close(connection)
                kind = "timeout" if isinstance(error, TimeoutError) else type(error).__name__
                self.tally.record(seq, shape, route_name, 0, scheduled, kind)
                return
            if fresh or connection.closed:
                _close(connection)
            else:
                self.pool.release(route.host, route.port, source, connection)
        finally:
            self.pool.free(route.host, route.port, source)
        self.tally.record(seq, shape, route_name, status, scheduled, instance=request.instance)
        if 200 <= status < 300:
            self._acknowledged(shape, request, data)

    def _acknowledged(self, shape: str, request: Request, data: bytes) -> None:
        if shape == "json":
            self.acknowledged.append((time.monotonic(), request))
        elif shape == "signed" and self.captures is not None:
            self.signed_acknowledged += 1
            if self.signed_acknowledged % CAPTURE_EVERY == 0:
                with contextlib.suppress(queue.Full):
                    self.captures.put_nowait((time.time(), request.body, request.headers))


async def _traffic(plan: TrafficPlan, progress: multiprocessing.queues.Queue[Any] | None, captures: Any) -> dict:
    if plan.start_at:
        await asyncio.sleep(max(0.0, plan.start_at - time.time()))
    ledger = Ledger(plan.first_seq)
    tally = Tally(plan, ledger, time.perf_counter())
    pool = Pool(plan.connections_per_sender)
    senders = Senders(plan, captures, tally, pool)
    outstanding: set[asyncio.Task[None]] = set()
    slots = asyncio.Semaphore(plan.max_outstanding)
    seq = plan.first_seq
    started = tally.started
    deadline = started + plan.duration
    reporter = asyncio.ensure_future(_report(plan, tally, progress, outstanding))

    def issue(scheduled: float) -> asyncio.Task[None]:
        nonlocal seq
        ledger.events.append(0)
        ledger.statuses.append(0)
        task = asyncio.ensure_future(senders.send(seq, scheduled))
        seq += 1
        outstanding.add(task)
        task.add_done_callback(lambda done: (outstanding.discard(done), slots.release()))
        return task

    if plan.rate is not None:
        period = 1.0 / plan.rate
        number = 0
        while True:
            scheduled = started + number * period
            if scheduled >= deadline:
                break
            wait = scheduled - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            await slots.acquire()  # at the bound, the schedule falls behind: that lateness is in the latencies
            issue(scheduled)
            number += 1
    else:

        async def closed_loop() -> None:
            while time.perf_counter() < deadline:
                await slots.acquire()
                await issue(time.perf_counter())

        workers = [asyncio.ensure_future(closed_loop()) for _ in range(plan.connections)]
        await asyncio.gather(*workers, return_exceptions=True)
    sending_seconds = time.perf_counter() - started
    if outstanding:
        await asyncio.wait(set(outstanding), timeout=DRAIN_TIMEOUT)
    for task in list(outstanding):  # owed answers that never came: errors a sender would see
        task.cancel()
    await asyncio.sleep(0)
    reporter.cancel()
    pool.close()
    latencies = sorted(tally.latencies)
    measured_seconds = max(1e-9, min(sending_seconds, plan.duration) - plan.warmup)
    answered = sum(count for label, count in tally.statuses.items() if not label.startswith("error"))
    return {
        "ledger": (ledger.first, ledger.events, ledger.statuses),
        "requests": len(ledger.events),
        "answered": answered,
        "seconds": round(sending_seconds, 3),
        "requests_per_s": round(len(ledger.events) / sending_seconds, 1) if sending_seconds else 0.0,
        "answered_per_s_after_warmup": round(tally.measured / measured_seconds, 1),
        "statuses": dict(tally.statuses),
        "by_shape": {key: dict(value) for key, value in sorted(tally.by_shape.items())},
        "by_route": {key: dict(value) for key, value in sorted(tally.by_route.items())},
        "transport_errors": dict(tally.errors),
        "error_examples": tally.error_examples,
        "events_sent": sum(ledger.events),
        "retries_sent": tally.retries_sent,
        "late_over_100ms": tally.late,
        "connections_opened": pool.opened,
        "waited_for_a_connection": pool.waited,
        "latency_ms": _latency_summary(latencies),
        "latency_ms_by_instance": {
            key: _latency_summary(sorted(values)) for key, values in sorted(tally.by_instance.items())
        },
    }


def _latency_summary(ordered: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(ordered, 0.50) * 1000, 2),
        "p90": round(percentile(ordered, 0.90) * 1000, 2),
        "p99": round(percentile(ordered, 0.99) * 1000, 2),
        "max": round((ordered[-1] if ordered else 0.0) * 1000, 2),
        "mean": round(math.fsum(ordered) / len(ordered) * 1000, 2) if ordered else 0.0,
    }


async def _report(
    plan: TrafficPlan, tally: Tally, progress: multiprocessing.queues.Queue[Any] | None, outstanding: set
) -> None:
    """Every progress_interval: the interval's answers/s, latency and non-2xx, to the driver's sampler."""
    if progress is None:
        return
    last = time.perf_counter()
    while True:
        await asyncio.sleep(plan.progress_interval)
        now = time.perf_counter()
        window = sorted(tally.interval)
        entry = {
            "at": time.time(),
            "answers_per_s": round(tally.interval_answers / (now - last), 1),
            "p50_ms": round(percentile(window, 0.5) * 1000, 2),
            "p99_ms": round(percentile(window, 0.99) * 1000, 2),
            "not_2xx": tally.interval_bad,
            "outstanding": len(outstanding),
        }
        tally.interval.clear()
        tally.interval_answers = tally.interval_bad = 0
        last = now
        with contextlib.suppress(queue.Full):
            progress.put_nowait(entry)


def run_traffic(
    plan: TrafficPlan,
    progress: multiprocessing.queues.Queue[Any] | None,
    captures: multiprocessing.queues.Queue[Any] | None,
    results: multiprocessing.queues.Queue[Any],
) -> None:
    """The sender process: Ctrl-C is the driver's to handle (it stops this process). What is left in the
    progress and capture queues when it ends is not waited for (nobody may read it any more)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for side_queue in (progress, captures):
        if side_queue is not None:
            side_queue.cancel_join_thread()
    results.put(run_loop(_traffic(plan, progress, captures)))
