"""One benchmark run: per stack, start every target on its interpreter, interleave the scenarios' timed rounds,
check integrity; then report every stack."""

from __future__ import annotations

import os
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
from bench.stacks import STACK_KEYS, Stack, make_stack
from bench.targets import (
    READY_TIMEOUT,
    REPO,
    Target,
    TargetError,
    find_instance_pid,
    start_bare_app,
    start_gateway,
    start_instance,
    webhook_params,
)

RESULTS = REPO / "bench" / "results" / "latest.json"


@dataclass
class Options:
    duration: float = 8.0  # seconds of load per scenario and stack, split over the rounds
    connections: int = 64
    rounds: int = 4
    warmup: float = 1.0
    integrity_incidents: int = 10_000
    tool: str = "auto"  # auto | wrk | python
    scenarios: tuple[str, ...] = tuple(item.key for item in SCENARIOS)
    stacks: tuple[str, ...] = STACK_KEYS
    image_python: Path | None = None  # default .venv-image/bin/python
    dev_python: Path | None = None  # default .venv/bin/python
    output: Path = RESULTS
    keep: bool = False


def _start(scenario: Scenario, workdir: Path, secret: str, python: str) -> Target:
    name = "bench_" + scenario.key.replace("'", "_samples").replace("-", "_")
    if not scenario.webhook:
        return start_bare_app(workdir, python, mode=scenario.app or "own")
    params = webhook_params(store_samples=bool(scenario.samples), secret=secret)
    if scenario.via == "reroute":
        return start_gateway(workdir, name, params, secret, python)
    return start_instance(workdir, name, params, secret, python)


def _driver_versions() -> dict[str, Any]:
    """The driver's side: the load generator and the commit (each stack's libraries come from its interpreter)."""
    found: dict[str, Any] = {"driver_python": sys.executable}
    if shutil.which("wrk"):
        banner = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False, timeout=5)
        text = banner.stdout or banner.stderr
        found["wrk"] = text.splitlines()[0].strip() if text else ""
    try:
        found["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        found["uncommitted_changes"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        found["commit"] = None
    return found


def _argv0(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def _check_interpreters(stack: Stack, scenario: Scenario, target: Target, into: Measured) -> None:
    """Every server process of the stack runs on its interpreter (the xsoar-local gateway on the driver's)."""
    for role, pid in target.pids.items():
        into.interpreters[role] = found = _argv0(pid)
        wanted = sys.executable if role == "gateway" else stack.python
        if found and Path(found).absolute() != Path(wanted).absolute():
            raise TargetError(f"{stack.key} {scenario.key}: the {role} runs on {found}, not on {wanted}")


def _settings_lines(target: Target) -> list[str]:
    prefix = "bench.bare_app: "
    return [line.removeprefix(prefix) for line in target.log_tail(20_000).splitlines() if line.startswith(prefix)]


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_stack(
    stack: Stack, scenarios: list[Scenario], options: Options, *, use_wrk: bool, round_seconds: float, workdir: Path
) -> tuple[list[Measured], dict[str, Any]]:
    """Every scenario on one stack: start, warm up, interleaved timed rounds, integrity passes, stop."""
    rounds = max(1, options.rounds)
    started_at = time.monotonic()
    meta: dict[str, Any] = {"stack": stack.key, "python": stack.python, "versions": stack.versions}
    meta["loadavg_before"] = _load()
    targets: dict[str, Target] = {}
    results = [Measured(item) for item in scenarios]
    secret = secrets.token_urlsafe(16)
    try:
        _say(f"bench: [{stack.key}] starting {len(scenarios)} targets on {stack.python} in {workdir} ...")
        for item in scenarios:
            folder = workdir / item.key.replace("'", "_samples")
            folder.mkdir()
            targets[item.key] = _start(item, folder, secret, stack.python)
        deadline = time.monotonic() + READY_TIMEOUT
        with httpx.Client(trust_env=False) as client:
            for item, measured in zip(scenarios, results, strict=True):
                target = targets[item.key]
                target.wait_ready(client, deadline)
                if item.via == "reroute":
                    find_instance_pid(target, client)
                _check_interpreters(stack, item, target, measured)
        _say(f"bench: [{stack.key}] all serving after {time.monotonic() - started_at:.1f} s; warming up ...")
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
                    f"bench: [{stack.key}] round {number + 1}/{rounds} {item.key:<8} {result.rps:>9,.0f} req/s  "
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
                _say(
                    f"bench: [{stack.key}] integrity {item.key:<8} {verdict} "
                    f"({measured.integrity['incidents_answered']} ids)"
                )
        for item, measured in zip(scenarios, results, strict=True):
            target = targets[item.key]
            measured.peak_rss_mib = target.peak_rss()
            if not item.webhook:
                measured.settings = _settings_lines(target)
            reason = target.exit_reason()
            if reason:
                raise RuntimeError(f"{stack.key} {item.key}: the target died during the benchmark: {reason}")
    finally:
        for target in reversed(list(targets.values())):
            target.stop()
    meta["loadavg_after"] = _load()
    meta["wall_seconds"] = round(time.monotonic() - started_at, 1)
    return results, meta


def run(options: Options) -> tuple[dict[str, Any], str]:
    use_wrk = {"auto": wrk_available(), "wrk": True, "python": False}[options.tool]
    if use_wrk and not wrk_available():
        raise SystemExit("bench: --tool wrk given but wrk is not on PATH (apt-get install wrk)")
    pythons = {"image": options.image_python, "dev": options.dev_python}
    stacks = [make_stack(key, pythons[key]) for key in options.stacks]  # a missing interpreter fails before any start
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
        "driver": _driver_versions(),
    }
    workdir = Path(tempfile.mkdtemp(prefix="xsoar-bench-"))
    measured: list[tuple[Stack, list[Measured], dict[str, Any]]] = []
    try:
        for stack in stacks:
            folder = workdir / stack.key
            folder.mkdir()
            results, stack_meta = run_stack(
                stack, scenarios, options, use_wrk=use_wrk, round_seconds=round_seconds, workdir=folder
            )
            measured.append((stack, results, stack_meta))
    finally:
        if not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    meta["wall_seconds"] = round(time.monotonic() - started_at, 1)
    built = report.build_all(measured, meta)
    report.write_json(built, options.output)
    return built, report.markdown_all(built, measured)
