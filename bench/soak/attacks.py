"""The security review's findings (issue 12) as attacks running beside the soak's legit traffic.

Each attack is its own bounded loop (a fixed pace and a fixed number of connections per level, everything it opens
closed by the time the run ends), from its own loopback address, apart from the legit senders'. Its answers are
counted by outcome: an HTTP status, or `closed` (the server closed the connection without an answer), `held-45s` /
`held-150s` (the attacker gave up first: the server would have held it longer), `open-at-run-end`, `reset`,
`timeout`. Answers to attacks are errors by design; they are never counted as a sender's. Runs in a process of
its own (`run_attacks`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import multiprocessing.queues
import queue
import random
import re
import signal
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bench.soak.traffic import Route
from xsoar_local.server import run as run_loop

LEVELS = ("off", "light", "full")
REBIND_HOST = "rebind.attacker.example"
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


@dataclass(frozen=True)
class Level:
    """How hard each attack pushes: concurrent connections, pauses between rounds and sizes."""

    loris_connections: int  # slow-loris heads held open at once, per target
    slow_unsigned: int  # slow unsigned bodies at once to the signature-only instance (its share: 32)
    gateway_slow_bodies: int  # slow bodies at once through the gateway
    pipeline_every: float  # seconds between pipelining connections
    pipeline_requests: int
    gzip_every: float
    gzip_members_bytes: int
    ndjson_every: float
    ndjson_lines: int
    huge_every: float
    huge_bytes: int
    forged_per_s: float
    rebind_per_s: float
    duplicate_key_per_s: float
    replays_per_s: float


LIGHT = Level(4, 40, 8, 60.0, 20000, 10.0, 1 << 20, 10.0, 2_000_000, 5.0, 1 << 20, 2.0, 1.0, 1.0, 2.0)
FULL = Level(32, 100, 32, 15.0, 20000, 2.0, 8 << 20, 2.0, 3_000_000, 1.0, 8 << 20, 10.0, 5.0, 5.0, 10.0)


@dataclass(frozen=True)
class AttackPlan:
    level: str  # light | full
    duration: float
    start_at: float  # wall-clock start (time.time())
    gateway: Route  # the gateway (prefix "")
    api_key: str
    token: dict[str, Route]  # the header-token instance: direct / reroute
    signed: dict[str, Route]  # the signature-only instance
    limited: dict[str, Route]  # the rate-limited instance the forged X-Forwarded-For goes to
    token_header: str
    token_value: str
    limited_token: str
    limited_per_minute: int
    first_source: int = 101  # 127.0.0.<n>: one address per attack from here on


@dataclass
class Outcomes:
    counts: dict[str, Counter[str]] = field(default_factory=dict)
    notes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, attack: str, outcome: str, count: int = 1) -> None:
        self.counts.setdefault(attack, Counter())[outcome] += count

    def note(self, attack: str, key: str, value: Any) -> None:
        self.notes.setdefault(attack, {})[key] = value


class Attacks:
    def __init__(self, plan: AttackPlan, captures: multiprocessing.queues.Queue[Any] | None) -> None:
        self.plan = plan
        self.level = LIGHT if plan.level == "light" else FULL
        self.captures = captures
        self.outcomes = Outcomes()
        self.stop_at = 0.0
        self.sources: dict[str, str] = {}
        self.writers: set[asyncio.StreamWriter] = set()
        self._million_body = b""

    def source(self, attack: str) -> str:
        if attack not in self.sources:
            self.sources[attack] = f"127.0.0.{self.plan.first_source + len(self.sources)}"
        return self.sources[attack]

    def left(self) -> float:
        return self.stop_at - time.monotonic()

    async def open(
        self, route: Route, attack: str, *, receive_buffer: int | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection from the attack's own address; with `receive_buffer`, a client that takes in at most about
        that many bytes it does not read (kernel buffer and stream buffer alike)."""
        if receive_buffer is None:
            connecting = asyncio.open_connection(
                route.host, route.port, local_addr=(self.source(attack), 0), limit=1 << 20
            )
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.bind((self.source(attack), 0))
            sock.setblocking(False)
            try:
                await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (route.host, route.port)), 5)
            except BaseException:
                sock.close()
                raise
            connecting = asyncio.open_connection(sock=sock, limit=receive_buffer)
        reader, writer = await asyncio.wait_for(connecting, 5)
        self.writers.add(writer)
        return reader, writer

    def close(self, writer: asyncio.StreamWriter) -> None:
        self.writers.discard(writer)
        writer.close()

    async def answer(self, reader: asyncio.StreamReader, timeout: float) -> str:
        """The status of the first answer on the connection, or how it ended without one."""
        try:
            line = await asyncio.wait_for(reader.readline(), timeout)
        except TimeoutError:
            return "timeout"
        except (ConnectionError, OSError):
            return "reset"
        except ValueError:
            return "unreadable"
        found = _STATUS.match(line)
        return found.group(1).decode() if found else ("closed" if not line else "not-http")

    async def exchange(self, attack: str, route: Route, data: bytes, *, timeout: float = 30.0) -> str:
        """One request as written, on a new connection; its status (the connection is closed after it)."""
        try:
            reader, writer = await self.open(route, attack)
        except (OSError, TimeoutError):
            return "connect-failed"
        try:
            writer.write(data)
            with contextlib.suppress(ConnectionError, OSError):
                await asyncio.wait_for(writer.drain(), timeout)
            return await self.answer(reader, timeout)
        except TimeoutError:
            return "timeout"
        finally:
            self.close(writer)

    async def paced(self, attack: str, per_s: float, once: Callable[[int], Awaitable[str]]) -> None:
        """`once(n)` at `per_s`, one at a time (a slow answer slows the attack down, never piles it up)."""
        number = 0
        while self.left() > 1:
            started = time.monotonic()
            self.outcomes.add(attack, await once(number))
            number += 1
            await asyncio.sleep(max(0.0, 1 / per_s - (time.monotonic() - started)))

    async def every(self, attack: str, seconds: float, once: Callable[[int], Awaitable[None]]) -> None:
        number = 0
        while self.left() > 1:
            started = time.monotonic()
            await once(number)
            number += 1
            await asyncio.sleep(max(0.0, min(seconds - (time.monotonic() - started), self.left() - 1)))

    async def held(self, attack: str, connections: int, hold: Callable[[], Awaitable[str]]) -> None:
        """`connections` copies of `hold` at once, each started again a second after it ends."""

        async def one() -> None:
            while self.left() > 2:
                self.outcomes.add(attack, await hold())
                await asyncio.sleep(1.0)

        await asyncio.gather(*(one() for _ in range(connections)))

    # --- the attacks ---

    async def slow_loris(self, attack: str, route: Route) -> str:
        """A head trickled one short header line every 2 s, never finished; held up to 45 s (the head deadline of
        the integration is 10 s)."""
        try:
            reader, writer = await self.open(route, attack)
        except (OSError, TimeoutError):
            return "connect-failed"
        started = time.monotonic()
        try:
            writer.write(f"POST {route.prefix or '/'} HTTP/1.1\r\nHost: {route.host}\r\n".encode())
            limit = min(45.0, self.left() - 1)
            while time.monotonic() - started < limit:
                try:
                    data = await asyncio.wait_for(reader.read(512), 2.0)
                except TimeoutError:
                    writer.write(b"X-Slow: 1\r\n")
                    continue
                except (ConnectionError, OSError):
                    return self._lasted(attack, "reset", time.monotonic() - started)
                found = _STATUS.match(data)
                return self._lasted(attack, found.group(1).decode() if found else "closed", time.monotonic() - started)
            outcome = "held-45s" if limit >= 45.0 else "open-at-run-end"
            return self._lasted(attack, outcome, time.monotonic() - started)
        finally:
            self.close(writer)

    def _lasted(self, attack: str, outcome: str, seconds: float) -> str:
        """Note the shortest and longest time a connection with this outcome stayed open; returns the outcome."""
        notes = self.outcomes.notes.setdefault(attack, {})
        low, high = notes.get(f"{outcome}_s", (seconds, seconds))
        notes[f"{outcome}_s"] = (round(min(low, seconds), 1), round(max(high, seconds), 1))
        return outcome

    async def slow_body(self, attack: str, route: Route, headers: str) -> str:
        """A 100 kB body announced and then trickled 100 bytes every 10 s (no 30 s gap, so only the 120 s total
        deadline ends it); held up to 150 s."""
        try:
            reader, writer = await self.open(route, attack)
        except (OSError, TimeoutError):
            return "connect-failed"
        started = time.monotonic()
        try:
            writer.write(
                (
                    f"POST {route.prefix or '/'} HTTP/1.1\r\nHost: {route.host}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: 100000\r\n{headers}\r\n"
                ).encode()
                + b'{"name": "'
            )
            limit = min(150.0, self.left() - 1)
            while time.monotonic() - started < limit:
                outcome = await self.answer(reader, 10.0)
                if outcome != "timeout":
                    return self._lasted(attack, outcome, time.monotonic() - started)
                writer.write(b"a" * 100)
            outcome = "held-150s" if limit >= 150.0 else "open-at-run-end"
            return self._lasted(attack, outcome, time.monotonic() - started)
        finally:
            self.close(writer)

    async def pipelining(self, number: int) -> None:
        """Many unsigned requests written back to back on one connection by a client that takes in little it does
        not read (a 4 KiB receive buffer), no answer read for 35 s: the listener stops answering when its send
        buffer is full and cuts off a client that takes none of its answers for 30 s. Then what arrived is counted."""
        route = self.plan.signed["direct"]
        body = b'{"name": "pipelined"}'
        one = (
            f"POST / HTTP/1.1\r\nHost: {route.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        try:
            reader, writer = await self.open(route, "pipelining", receive_buffer=4096)
        except (OSError, TimeoutError):
            self.outcomes.add("pipelining", "connect-failed")
            return
        try:
            writer.write(one * self.level.pipeline_requests)
            await asyncio.sleep(min(35.0, max(0.0, self.left() - 2)))
            statuses: Counter[str] = Counter()
            ended = "open"
            received = b""
            while True:
                try:
                    chunk = await asyncio.wait_for(reader.read(1 << 20), 2.0)
                except TimeoutError:
                    break
                except (ConnectionError, OSError):
                    ended = "reset"
                    break
                if not chunk:
                    ended = "closed"
                    break
                received += chunk
            statuses.update(found.decode() for found in _STATUS.findall(received))
            for status, count in statuses.items():
                self.outcomes.add("pipelining", status, count)
            self.outcomes.add("pipelining", f"connection-{ended}")
        finally:
            self.close(writer)

    def _post(self, route: Route, body: bytes, headers: dict[str, str], path: str = "/") -> bytes:
        lines = [f"POST {route.prefix}{path} HTTP/1.1", f"Host: {route.host}:{route.port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines += [f"Content-Length: {len(body)}", "Connection: close"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def _either(self, routes: dict[str, Route], number: int) -> Route:
        return routes["reroute" if number % 2 else "direct"]

    async def gzip_members(self, number: int) -> None:
        """A body of empty gzip members (what a shipper concatenating members sends, to the extreme): 400."""
        member = gzip.compress(b"")
        body = member * (self.level.gzip_members_bytes // len(member))
        headers = {
            self.plan.token_header: self.plan.token_value,
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        }
        route = self._either(self.plan.token, number)
        self.outcomes.add("gzip-members", await self.exchange("gzip-members", route, self._post(route, body, headers)))

    async def ndjson_million(self, number: int) -> None:
        """A small gzip body that inflates to millions of `{}` NDJSON lines: 413 too_many_items."""
        body = self._million_body
        headers = {
            self.plan.token_header: self.plan.token_value,
            "Content-Type": "application/x-ndjson",
            "Content-Encoding": "gzip",
        }
        route = self._either(self.plan.token, number)
        outcome = await self.exchange("ndjson-million", route, self._post(route, body, headers))
        self.outcomes.add("ndjson-million", outcome)

    async def forged_forwarded_for(self, number: int) -> str:
        """From a loopback address that is not the trusted proxy (127.0.0.1), each request with another forged
        X-Forwarded-For, to an instance with rate_limit_per_minute: all share the caller's bucket (429 past it)."""
        route = self._either(self.plan.limited, number)
        forged = f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"
        headers = {
            self.plan.token_header: self.plan.limited_token,
            "Content-Type": "application/json",
            "X-Forwarded-For": forged,
        }
        body = json.dumps({"name": "forged forwarded-for", "n": number}).encode()
        return await self.exchange("forged-forwarded-for", route, self._post(route, body, headers))

    async def replays(self) -> None:
        """Captured signed deliveries (handed over by the legit senders) sent again from another address: once with
        the headers renamed svix-* for webhook-*, once as text/plain. Each is answered as a duplicate (200) and must
        create nothing: the legit exactly-once check sees an extra incident as a duplicate of the original."""
        number = 0
        while self.left() > 1:
            try:
                captured = self.captures.get_nowait() if self.captures is not None else None
            except queue.Empty:
                captured = None
            if captured is None:
                await asyncio.sleep(0.2)
                continue
            with contextlib.suppress(queue.Empty):
                while True:  # the newest capture only: replay keys are bounded (10,000), replay what is recent
                    captured = self.captures.get_nowait()  # type: ignore[union-attr]
            when, body, headers = captured
            if time.time() - when > 2.0:
                continue
            renamed = {name.replace("webhook-", "svix-"): value for name, value in headers}
            retyped = {**dict(headers), "Content-Type": "text/plain"}
            for variant, extra in (("svix-headers", renamed), ("text-plain", retyped)):
                route = self._either(self.plan.signed, number)
                data = self._post(route, body, {"Content-Type": "application/json", **extra})
                self.outcomes.add("replays", f"{variant}:{await self.exchange('replays', route, data)}")
                number += 1
            await asyncio.sleep(2 / self.level.replays_per_s)

    async def huge_headers(self, number: int) -> None:
        """A head of `huge_bytes` header lines to the gateway: to the reroute (the instance answers 431 over
        64 KiB) or to the read API."""
        pad = b"X-Pad: " + b"a" * 8000 + b"\r\n"
        rerouted = number % 2 == 1
        path, method = (self.plan.token["reroute"].prefix, "POST") if rerouted else ("/incidents", "GET")
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.plan.gateway.host}:{self.plan.gateway.port}\r\n".encode()
        data = head + pad * (self.level.huge_bytes // len(pad)) + b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
        outcome = await self.exchange("gateway-huge-headers", self.plan.gateway, data)
        self.outcomes.add("gateway-huge-headers", f"{'reroute' if rerouted else 'read-api'}:{outcome}")

    async def rebinding(self, number: int) -> str:
        """The read API and the page asked under a name that is not the platform's (DNS rebinding): 421."""
        path = ("/incidents", "/instances", "/", "/health", "/incidents/1")[number % 5]
        data = (
            f"GET {path} HTTP/1.1\r\nHost: {REBIND_HOST}:{self.plan.gateway.port}\r\n"
            f"X-API-Key: {self.plan.api_key}\r\nConnection: close\r\n\r\n"
        ).encode()
        return await self.exchange("dns-rebinding", self.plan.gateway, data)

    async def duplicate_api_key(self, number: int) -> str:
        """Two X-API-Key headers, the right key in one of them, to the read API or the reroute: 400."""
        keys = [self.plan.api_key, "wrong-key"] if number % 2 else ["wrong-key", self.plan.api_key]
        target = "/incidents" if number % 3 else self.plan.token["reroute"].prefix
        method = "GET" if number % 3 else "POST"
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.plan.gateway.host}:{self.plan.gateway.port}"]
        lines += [f"X-API-Key: {key}" for key in keys]
        lines += ["Content-Type: application/json", "Content-Length: 2", "Connection: close"]
        data = ("\r\n".join(lines) + "\r\n\r\n{}").encode()
        return await self.exchange("duplicate-api-key", self.plan.gateway, data)

    async def run(self) -> dict[str, Any]:
        if self.plan.start_at:
            await asyncio.sleep(max(0.0, self.plan.start_at - time.time()))
        self.stop_at = time.monotonic() + self.plan.duration
        level = self.level
        self._million_body = gzip.compress(b"{}\n" * level.ndjson_lines, compresslevel=9)
        signed_route = self.plan.signed
        unsigned = "webhook-id: msg_forged\r\nwebhook-timestamp: {now}\r\nwebhook-signature: v1,AAAA\r\n"

        def unsigned_headers() -> str:
            return unsigned.format(now=int(time.time()))

        loops = [
            self.held(
                "slow-loris:instance",
                level.loris_connections,
                lambda: self.slow_loris("slow-loris:instance", self.plan.token["direct"]),
            ),
            self.held(
                "slow-loris:signed-instance",
                level.loris_connections,
                lambda: self.slow_loris("slow-loris:signed-instance", signed_route["direct"]),
            ),
            self.held(
                "slow-loris:gateway",
                level.loris_connections,
                lambda: self.slow_loris("slow-loris:gateway", self.plan.gateway),
            ),
            self.held(
                "slow-unsigned-bodies",
                level.slow_unsigned,
                lambda: self.slow_body("slow-unsigned-bodies", signed_route["direct"], unsigned_headers()),
            ),
            self.held(
                "gateway-slow-bodies",
                level.gateway_slow_bodies,
                lambda: self.slow_body("gateway-slow-bodies", signed_route["reroute"], unsigned_headers()),
            ),
            self.every("pipelining", level.pipeline_every, self.pipelining),
            self.every("gzip-members", level.gzip_every, self.gzip_members),
            self.every("ndjson-million", level.ndjson_every, self.ndjson_million),
            self.every("gateway-huge-headers", level.huge_every, self.huge_headers),
            self.paced("forged-forwarded-for", level.forged_per_s, self.forged_forwarded_for),
            self.paced("dns-rebinding", level.rebind_per_s, self.rebinding),
            self.paced("duplicate-api-key", level.duplicate_key_per_s, self.duplicate_api_key),
            self.replays(),
        ]
        tasks = [asyncio.ensure_future(loop) for loop in loops]
        done, pending = await asyncio.wait(tasks, timeout=self.plan.duration + 60)
        for task in pending:
            task.cancel()
        failures = [repr(task.exception()) for task in done if not task.cancelled() and task.exception()]
        for writer in list(self.writers):
            self.close(writer)
        await asyncio.sleep(0.1)
        return {
            "level": self.plan.level,
            "sources": self.sources,
            "counts": {name: dict(sorted(counts.items())) for name, counts in sorted(self.outcomes.counts.items())},
            "notes": self.outcomes.notes,
            "loop_failures": failures,
            "unfinished_loops": len(pending),
        }


def run_attacks(
    plan: AttackPlan,
    captures: multiprocessing.queues.Queue[Any] | None,
    results: multiprocessing.queues.Queue[Any],
) -> None:
    """The attack process: Ctrl-C is the driver's to handle (it stops this process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    results.put(run_loop(Attacks(plan, captures).run()))


def standard_webhooks_secret(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode()
