"""One benchmark run: start every target, interleave the scenarios' timed rounds, check integrity, report."""

from __future__ import annotations

import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench import report
from bench.load import run_python, wrk_available
from bench.scenarios import SCENARIOS, Measured, Scenario, integrity_pass, measure
from bench.targets import (
    READY_TIMEOUT,
    REPO,
    Target,
    find_instance_pid,
    start_bare_app,
    start_gateway,
    start_instance,
    webhook_params,
)

RESULTS = REPO / "bench" / "results" / "latest.json"


@dataclass
class Options:
    duration: float = 8.0  # seconds of load per scenario, split over the rounds
    connections: int = 64
    rounds: int = 4
    warmup: float = 1.0
    integrity_incidents: int = 10_000
    tool: str = "auto"  # auto | wrk | python
    scenarios: tuple[str, ...] = tuple(item.key for item in SCENARIOS)
    output: Path = RESULTS
    keep: bool = False


def _start(scenario: Scenario, workdir: Path, secret: str) -> Target:
    name = "bench_" + scenario.key.replace("'", "_samples").replace("-", "_")
    if not scenario.webhook:
        return start_bare_app(workdir, floor=scenario.key == "floor")
    params = webhook_params(store_samples=bool(scenario.samples), secret=secret)
    if scenario.via == "reroute":
        return start_gateway(workdir, name, params, secret)
    return start_instance(workdir, name, params, secret)


def _versions() -> dict[str, Any]:
    found: dict[str, Any] = {"python": platform.python_version()}
    for module in ("uvicorn", "uvloop", "httptools", "httpx"):
        try:
            found[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            found[module] = None
    if shutil.which("wrk"):
        banner = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False, timeout=5)
        found["wrk"] = (
            (banner.stdout or banner.stderr).splitlines()[0].strip() if (banner.stdout or banner.stderr) else ""
        )
    try:
        found["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        found["commit"] = None
    return found


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(options: Options) -> tuple[dict[str, Any], str]:
    use_wrk = {"auto": wrk_available(), "wrk": True, "python": False}[options.tool]
    if use_wrk and not wrk_available():
        raise SystemExit("bench: --tool wrk given but wrk is not on PATH (apt-get install wrk)")
    scenarios = [item for item in SCENARIOS if item.key in options.scenarios]
    rounds = max(1, options.rounds)
    round_seconds = options.duration / rounds
    if use_wrk:
        round_seconds = max(1.0, round(round_seconds))  # wrk takes whole seconds
    started_at = time.monotonic()
    meta: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "tool": "wrk" if use_wrk else "python",
        "connections": options.connections,
        "rounds": rounds,
        "round_seconds": round_seconds,
        "integrity_tool": "python",
        "integrity_incidents": options.integrity_incidents,
        "cpus": os.cpu_count(),
        "loadavg_before": _load(),
        "versions": _versions(),
    }
    workdir = Path(tempfile.mkdtemp(prefix="xsoar-bench-"))
    targets: dict[str, Target] = {}
    results = [Measured(item) for item in scenarios]
    secret = secrets.token_urlsafe(16)
    try:
        _say(f"bench: starting {len(scenarios)} targets in {workdir} ...")
        for item in scenarios:
            folder = workdir / item.key.replace("'", "_samples")
            folder.mkdir()
            targets[item.key] = _start(item, folder, secret)
        deadline = time.monotonic() + READY_TIMEOUT
        with httpx.Client(trust_env=False) as client:
            for item in scenarios:
                target = targets[item.key]
                target.wait_ready(client, deadline)
                if item.via == "reroute":
                    find_instance_pid(target, client)
        _say(f"bench: all serving after {time.monotonic() - started_at:.1f} s; warming up ...")
        for item in scenarios:
            target = targets[item.key]
            run_python(
                target.url, item.kind, "warm", target.headers, connections=options.connections, duration=options.warmup
            )
        counts: dict[str, int | None] = dict.fromkeys(targets)
        for number in range(rounds):
            order = list(zip(scenarios, results, strict=True))
            if number % 2:
                order.reverse()  # drift from other load on the machine is spread evenly over the scenarios
            for item, measured in order:
                result, counts[item.key] = measure(
                    item,
                    targets[item.key],
                    tag=f"r{number}",
                    duration=round_seconds,
                    connections=options.connections,
                    use_wrk=use_wrk,
                    workdir=workdir / "load",
                    into=measured,
                    before=counts[item.key],
                )
                _say(
                    f"bench: round {number + 1}/{rounds} {item.key:<8} {result.rps:>9,.0f} req/s  "
                    f"p99 {result.p99_ms:6.1f} ms  ({result.requests} responses, {result.non_2xx} non-2xx, "
                    f"{result.transport_errors} errors)"
                )
        for item, measured in zip(scenarios, results, strict=True):
            if item.webhook:
                measured.integrity = integrity_pass(
                    item,
                    targets[item.key],
                    tag=f"check-{secrets.token_hex(4)}-",
                    incidents=options.integrity_incidents,
                    connections=options.connections,
                )
                verdict = "ok" if measured.integrity["ok"] else "FAILED"
                _say(f"bench: integrity {item.key:<8} {verdict} ({measured.integrity['incidents_answered']} ids)")
        for item, measured in zip(scenarios, results, strict=True):
            measured.peak_rss_mib = targets[item.key].peak_rss()
            reason = targets[item.key].exit_reason()
            if reason:
                raise RuntimeError(f"{item.key}: the target died during the benchmark: {reason}")
    finally:
        for target in reversed(list(targets.values())):
            target.stop()
        if not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    meta["loadavg_after"] = _load()
    meta["wall_seconds"] = round(time.monotonic() - started_at, 1)
    built = report.build(results, meta)
    report.write_json(built, options.output)
    return built, report.markdown(built, results)
