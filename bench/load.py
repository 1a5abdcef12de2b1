"""Load generators on loopback: wrk when it is on PATH, else a Python one (asyncio protocol, keep-alive HTTP/1.1).

Both are closed-loop: each of N connections sends a request, waits for its response, and sends the next.

wrk gives exact counts of complete responses and of non-2xx ones (`summary.requests`, `summary.errors.status`),
but it stops mid-request: up to one request per connection is in flight at the end, answered to nobody.
The Python generator stops sending at the deadline (or after a fixed number of requests) and waits for every
response it is owed, so its counts are exact, and it remembers the ids each answered request carried.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from bench.payloads import BodyKind
from xsoar_local.server import run as run_loop

DRAIN_TIMEOUT = 30.0  # seconds to wait for the last responses after the deadline
CONNECT_TIMEOUT = 5.0

Factory = Callable[[int], tuple[bytes, list[str]]]


@dataclass
class LoadResult:
    tool: str
    connections: int
    seconds: float
    requests: int  # complete responses
    ok: int  # 2xx responses
    non_2xx: int
    transport_errors: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    statuses: dict[str, int] = field(default_factory=dict)
    # Python generator with record=True: (ids, status) per request; status 0 for a transport error.
    outcomes: list[tuple[list[str], int]] = field(default_factory=list, repr=False)
    # wrk: requests possibly received by the server when wrk stopped, never answered (one per connection at most).
    unanswered_at_stop: int = 0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def summary(self) -> dict:
        return {
            "tool": self.tool,
            "connections": self.connections,
            "seconds": round(self.seconds, 3),
            "requests": self.requests,
            "ok_2xx": self.ok,
            "non_2xx": self.non_2xx,
            "transport_errors": self.transport_errors,
            "statuses": self.statuses,
            "requests_per_s": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "mean_ms": round(self.mean_ms, 2),
        }


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


# --- wrk ---------------------------------------------------------------------------------------------------------

_WRK_SCRIPT = """\
local f = assert(io.open(%(body_path)s, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
%(headers)s
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"status_errors\\": %%d, " ..
    "\\"connect\\": %%d, \\"read\\": %%d, \\"write\\": %%d, \\"timeout\\": %%d, " ..
    "\\"p50_us\\": %%d, \\"p99_us\\": %%d, \\"mean_us\\": %%f}\\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal of ASCII text is a valid Lua string literal


def run_wrk(
    url: str, body: bytes, headers: dict[str, str], *, duration: float, connections: int, workdir: Path
) -> LoadResult:
    """Drive `url` with wrk for `duration` seconds (rounded up to whole seconds, as wrk takes them)."""
    workdir.mkdir(parents=True, exist_ok=True)
    body_path = workdir / "body.bin"
    body_path.write_bytes(body)
    lua_headers = "\n".join(f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items())
    script = workdir / "bench.lua"
    script.write_text(_WRK_SCRIPT % {"body_path": _lua_string(str(body_path)), "headers": lua_headers})
    seconds = max(1, math.ceil(duration))
    threads = max(1, min(2, connections))
    command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "10s"]
    command += ["-s", str(script), url]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    line = next((row for row in completed.stdout.splitlines() if row.startswith("BENCH_RESULT ")), None)
    if completed.returncode != 0 or line is None:
        raise RuntimeError(
            f"wrk failed ({completed.returncode}): {completed.stderr.strip() or completed.stdout[-2000:]}"
        )
    data = json.loads(line.removeprefix("BENCH_RESULT "))
    socket_errors = data["connect"] + data["read"] + data["write"] + data["timeout"]
    return LoadResult(
        tool="wrk",
        connections=connections,
        seconds=data["duration_us"] / 1e6,
        requests=data["requests"],
        ok=data["requests"] - data["status_errors"],
        non_2xx=data["status_errors"],
        transport_errors=socket_errors,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        mean_ms=data["mean_us"] / 1000,
        statuses={},
        unanswered_at_stop=connections,
    )


# --- Python generator --------------------------------------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request in flight; parses just enough of a response
    (status, Content-Length or chunked framing) to know where it ends."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self.body_start = -1
        self.status = 0
        self.length = -1
        self.chunked = False
        self.position = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection closed: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        try:
            finished = self._parse()
        except ValueError as error:
            self.waiter.set_exception(ConnectionError(f"bad response: {error}"))
            self.transport.close()  # type: ignore[union-attr]
            return
        if finished is not None:
            self.waiter.set_result(finished)

    def _parse(self) -> int | None:
        """The status once the response is complete (its bytes consumed), else None."""
        buffer = self.buffer
        if self.body_start < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return None
            head = bytes(buffer[:end]).lower()
            self.status = int(head[9:12])
            self.body_start = end + 4
            index = head.find(b"\r\ncontent-length:")
            if index >= 0:
                stop = head.find(b"\r\n", index + 2)
                self.length = int(head[index + 17 : stop if stop >= 0 else None])
            elif b"\r\ntransfer-encoding: chunked" in head:
                self.chunked = True
                self.position = self.body_start
            else:
                self.length = 0
        if not self.chunked:
            end = self.body_start + self.length
            if len(buffer) < end:
                return None
            return self._complete(end)
        while True:
            line_end = buffer.find(b"\r\n", self.position)
            if line_end < 0:
                return None
            size = int(bytes(buffer[self.position : line_end]).split(b";")[0], 16)
            if size == 0:
                end = line_end + 4  # no trailers: "0\r\n\r\n"
                if len(buffer) < end:
                    return None
                return self._complete(end)
            chunk_end = line_end + 2 + size + 2
            if len(buffer) < chunk_end:
                return None
            self.position = chunk_end

    def _complete(self, end: int) -> int:
        status = self.status
        del self.buffer[:end]
        self._reset()
        return status

    def request(self, data: bytes) -> asyncio.Future[int]:
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        self.transport.write(data)  # type: ignore[union-attr]
        return self.waiter


@dataclass
class _Plan:
    url: str
    kind: BodyKind
    tag: str
    headers: dict[str, str]
    connections: int
    duration: float | None  # stop sending after this many seconds ...
    total: int | None  # ... or after this many requests
    record: bool


async def _drive(plan: _Plan) -> dict:
    parts = urlsplit(plan.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = f"POST {target} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {plan.kind.content_type}\r\n"
    head += "".join(f"{key}: {value}\r\n" for key, value in plan.headers.items())
    head_bytes = (head + "Content-Length: ").encode()
    factory = plan.kind.factory(plan.tag)
    loop = asyncio.get_running_loop()

    async def connect() -> _Connection:
        _, connection = await asyncio.wait_for(loop.create_connection(_Connection, host, port), CONNECT_TIMEOUT)
        return connection

    connections = list(await asyncio.gather(*(connect() for _ in range(plan.connections))))
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    outcomes: list[tuple[list[str], int]] = []
    errors = 0
    next_seq = 0
    started = time.perf_counter()
    deadline = started + plan.duration if plan.duration is not None else math.inf
    total = plan.total if plan.total is not None else math.inf

    async def run(index: int) -> None:
        nonlocal errors, next_seq
        connection: _Connection | None = connections[index]
        while next_seq < total and time.perf_counter() < deadline:
            seq, next_seq = next_seq, next_seq + 1
            body, ids = factory(seq)
            try:
                if connection is None or connection.closed:
                    connection = await connect()
                sent = time.perf_counter()
                status = await connection.request(head_bytes + str(len(body)).encode() + b"\r\n\r\n" + body)
            except (TimeoutError, OSError):
                errors += 1
                connection = None
                if plan.record:
                    outcomes.append((ids, 0))
                await asyncio.sleep(0.01)
                continue
            latencies.append(time.perf_counter() - sent)
            statuses[status] += 1
            if plan.record:
                outcomes.append((ids, status))
        if connection is not None and connection.transport is not None:
            connection.transport.close()

    tasks = [asyncio.ensure_future(run(index)) for index in range(plan.connections)]
    budget = (plan.duration or 0) + DRAIN_TIMEOUT + (60 if plan.total is not None else 0)
    done, pending = await asyncio.wait(tasks, timeout=budget)
    for task in pending:  # a server that stopped answering: what is still owed counts as errors
        task.cancel()
        errors += 1
    for task in done:
        task.result()
    seconds = time.perf_counter() - started
    for connection in connections:
        if connection.transport is not None:
            connection.transport.close()
    return {
        "seconds": seconds,
        "latencies": latencies,
        "statuses": dict(statuses),
        "errors": errors,
        "outcomes": outcomes,
    }


def _run_plan(plan: _Plan) -> dict:
    return run_loop(_drive(plan))


def _percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_python(
    url: str,
    kind: BodyKind,
    tag: str,
    headers: dict[str, str],
    *,
    connections: int,
    duration: float | None = None,
    total: int | None = None,
    record: bool = False,
    processes: int = 1,
) -> LoadResult:
    """Drive `url` with `connections` keep-alive connections, bodies of `kind` whose incidents carry ids
    `<tag>...`, for `duration` seconds or `total` requests, then wait for every outstanding response.
    With `processes` > 1 the connections (and the request budget) are split over that many processes."""
    processes = max(1, min(processes, connections))
    plans = []
    for index in range(processes):
        share = connections // processes + (1 if index < connections % processes else 0)
        budget = None if total is None else total // processes + (1 if index < total % processes else 0)
        plans.append(_Plan(url, kind, f"{tag}p{index}", headers, share, duration, budget, record))
    if processes == 1:
        parts = [_run_plan(plans[0])]
    else:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            parts = pool.map(_run_plan, plans)
    latencies = sorted(value for part in parts for value in part["latencies"])
    statuses: Counter[int] = Counter()
    for part in parts:
        statuses.update(part["statuses"])
    ok = sum(count for status, count in statuses.items() if 200 <= status < 300)
    requests = sum(statuses.values())
    return LoadResult(
        tool="python" if processes == 1 else f"python x{processes}",
        connections=connections,
        seconds=max(part["seconds"] for part in parts),
        requests=requests,
        ok=ok,
        non_2xx=requests - ok,
        transport_errors=sum(part["errors"] for part in parts),
        p50_ms=_percentile(latencies, 0.50) * 1000,
        p99_ms=_percentile(latencies, 0.99) * 1000,
        mean_ms=(sum(latencies) / len(latencies) * 1000) if latencies else 0.0,
        statuses={str(status): count for status, count in sorted(statuses.items())},
        outcomes=[outcome for part in parts for outcome in part["outcomes"]],
    )
