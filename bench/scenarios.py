"""The scenarios of one benchmark run and how each is measured and checked."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.load import LoadResult, run_python, run_wrk
from bench.payloads import ARRAY_100, NDJSON_100, SINGLE, BodyKind
from bench.targets import Target


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    kind: BodyKind
    webhook: bool  # False for the reference apps (the ceilings and the floor), which store nothing
    samples: bool | None = None  # store_samples of the instance
    via: str = "direct"  # "direct" (listen port) or "reroute" (xsoar-local gateway)
    app: str | None = None  # reference apps: the mode of bench/bare_app.py (stock, own, floor)


CEILING = "a"  # the stock ceiling: the targets are ratios to it
OWN_CEILING = "a-own"  # the ceiling on the integration's own settings

SCENARIOS = (
    Scenario(CEILING, "bare app, stock uvicorn.run (ceiling)", SINGLE, webhook=False, app="stock"),
    Scenario(OWN_CEILING, "bare app, integration's settings (ceiling)", SINGLE, webhook=False, app="own"),
    Scenario("floor", "a-own + parse, rawJSON, JSON answer", SINGLE, webhook=False, app="floor"),
    Scenario("b", "webhook, direct, samples off", SINGLE, webhook=True, samples=False),
    Scenario("b'", "webhook, direct, samples on", SINGLE, webhook=True, samples=True),
    Scenario("c", "webhook via reroute, samples off", SINGLE, webhook=True, samples=False, via="reroute"),
    Scenario("d-json", "webhook, direct, JSON array x100, samples on", ARRAY_100, webhook=True, samples=True),
    Scenario("d-ndjson", "webhook, direct, NDJSON x100, samples on", NDJSON_100, webhook=True, samples=True),
)


@dataclass
class Measured:
    """What the rounds of one scenario added up to."""

    scenario: Scenario
    rounds: list[LoadResult] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # server CPU seconds per round (all processes of the target)
    stored: int = 0  # incidents the store gained during the rounds
    expected_min: int = 0  # 2xx responses x incidents per request
    expected_max: int = 0  # ... plus what wrk may have sent but not waited for
    integrity: dict = field(default_factory=dict)
    peak_rss_mib: dict[str, float | None] = field(default_factory=dict)
    interpreters: dict[str, str] = field(default_factory=dict)  # role -> argv[0] of its process
    settings: list[str] = field(default_factory=list)  # what a reference app reported about its settings

    @property
    def requests(self) -> int:
        return sum(item.requests for item in self.rounds)

    @property
    def seconds(self) -> float:
        return sum(item.seconds for item in self.rounds)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def incidents_per_s(self) -> float:
        return sum(item.ok for item in self.rounds) * self.scenario.kind.incidents / self.seconds if self.seconds else 0

    @property
    def p50_ms(self) -> float:
        """Request-weighted mean of the rounds' medians."""
        weight = sum(item.requests for item in self.rounds)
        return sum(item.p50_ms * item.requests for item in self.rounds) / weight if weight else 0.0

    @property
    def p99_ms(self) -> float:
        """The median of the rounds' 99th percentiles (a burst of other load on the machine hits one round)."""
        return statistics.median(item.p99_ms for item in self.rounds) if self.rounds else 0.0

    @property
    def p99_worst_ms(self) -> float:
        return max((item.p99_ms for item in self.rounds), default=0.0)

    @property
    def cpu_us_per_request(self) -> float:
        """Server CPU time per answered request: throughput that other load on the machine cannot skew much."""
        return sum(self.cpu) / self.requests * 1e6 if self.requests else 0.0

    def ratio_to(self, other: Measured) -> float | None:
        """Median over rounds of this scenario's req/s over `other`'s in the same round (measured seconds apart)."""
        pairs = [mine.rps / theirs.rps for mine, theirs in zip(self.rounds, other.rounds, strict=False) if theirs.rps]
        return statistics.median(pairs) if pairs else None

    def incidents_ratio_to(self, other: Measured) -> float | None:
        """The same for incidents/s (2xx responses x incidents per request)."""
        mine_per, theirs_per = self.scenario.kind.incidents, other.scenario.kind.incidents
        pairs = [
            (mine.ok * mine_per / mine.seconds) / (theirs.ok * theirs_per / theirs.seconds)
            for mine, theirs in zip(self.rounds, other.rounds, strict=False)
            if mine.seconds and theirs.seconds and theirs.ok
        ]
        return statistics.median(pairs) if pairs else None

    @property
    def count_check(self) -> str:
        if not self.scenario.webhook:
            return "n/a"
        if self.expected_min <= self.stored <= self.expected_max:
            return "ok"
        if self.stored < self.expected_min:
            return f"LOSS: {self.expected_min - self.stored} fewer incidents stored than 2xx-answered"
        return f"EXTRA: {self.stored - self.expected_max} more incidents stored than requests sent could hold"


def measure(
    scenario: Scenario,
    target: Target,
    *,
    tag: str,
    duration: float,
    connections: int,
    use_wrk: bool,
    workdir: Path,
    into: Measured | None = None,
    before: int | None = None,
) -> tuple[LoadResult, int]:
    """One timed load run and the store count after it (`before`: the count before it, when known).
    With `into`, the result, the server CPU time and the store's count check are added there."""
    kind = scenario.kind
    if scenario.webhook and before is None:
        before = target.settled_count()
    cpu_before = target.cpu_seconds()
    if use_wrk:
        headers = {"Content-Type": kind.content_type, **target.headers}
        result = run_wrk(
            target.url, kind.fixed_body(tag), headers, duration=duration, connections=connections, workdir=workdir
        )
    else:
        result = run_python(target.url, kind, tag, target.headers, connections=connections, duration=duration)
    after = target.settled_count() if scenario.webhook else 0  # also lets the cut-off requests finish
    cpu = target.cpu_seconds() - cpu_before
    if into is not None:
        into.rounds.append(result)
        into.cpu.append(cpu)
        if scenario.webhook:
            into.stored += after - (before or 0)
            into.expected_min += result.ok * kind.incidents
            into.expected_max += (result.ok + result.unanswered_at_stop) * kind.incidents
    return result, after


def integrity_pass(scenario: Scenario, target: Target, *, tag: str, incidents: int, connections: int) -> dict:
    """A fixed number of requests under the same concurrency, every incident with its own id, every response
    waited for; then each 2xx-answered id must be in the store exactly once, and nothing else of this pass."""
    kind = scenario.kind
    requests = max(connections, math.ceil(incidents / kind.incidents))
    before = target.settled_count()
    since = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    result = run_python(target.url, kind, tag, target.headers, connections=connections, total=requests, record=True)
    stored = target.settled_count() - before
    seen: Counter[str] = Counter()
    for incident in target.store.list_incidents(instance=target.instance, since=since, limit=None):
        bench_id = json.loads(incident.get("rawJSON") or "{}").get("bench_id", "")
        if isinstance(bench_id, str) and bench_id.startswith(tag):
            seen[bench_id] += 1
    answered = {item for ids, status in result.outcomes if 200 <= status < 300 for item in ids}
    refused = {item for ids, status in result.outcomes if status and not 200 <= status < 300 for item in ids}
    unknown = {item for ids, status in result.outcomes if status == 0 for item in ids}
    lost = len(answered - seen.keys())
    duplicates = sum(count - 1 for count in seen.values() if count > 1)
    stored_refused = len(refused & seen.keys())
    expected = result.ok * kind.incidents
    ok = lost == 0 and duplicates == 0 and stored_refused == 0 and stored == expected
    return {
        "ok": ok,
        "requests": result.requests,
        "answered_2xx": result.ok,
        "non_2xx": result.non_2xx,
        "transport_errors": result.transport_errors,
        "statuses": result.statuses,
        "incidents_answered": len(answered),
        "store_count_delta": stored,
        "expected_count": expected,
        "lost": lost,
        "duplicates": duplicates,
        "stored_though_refused": stored_refused,
        "unknown_outcome_stored": len(unknown & seen.keys()),
        "requests_per_s": round(result.rps, 1),
        "p99_ms": round(result.p99_ms, 2),
    }
