"""One soak run: the platform with three instances on the chosen stack, a capacity probe, the legit senders at the
target rate and the attacks beside them for the duration, a sampler of RSS and descriptors, then the checks."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import secrets
import shutil
import socket
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.report import write_json
from bench.run import _argv0, _driver_versions
from bench.soak import checks
from bench.soak.attacks import LEVELS, AttackPlan, run_attacks, standard_webhooks_secret
from bench.soak.traffic import DIRECT, REROUTE, SIGNED, TOKEN, Route, TrafficPlan, run_traffic
from bench.stacks import Stack, make_stack
from bench.targets import (
    LOOPBACK,
    READY_TIMEOUT,
    REPO,
    Target,
    TargetError,
    cpu_seconds,
    find_instance_pid,
    free_port,
    start_gateway,
)
from xsoar_local.upstream import MAX_IDLE

RESULTS = REPO / "bench" / "results" / "soak-latest.json"
TOKEN_NAME, SIGNED_NAME, LIMITED_NAME = "soak_token", "soak_signed", "soak_limited"
TOKEN_HEADER = "X-Webhook-Token"
SIGNED_MAX_IN_FLIGHT = 256  # one address's share of unverified requests: 256 / 8 = 32
LIMITED_PER_MINUTE = 60
LEGIT_SOURCES = tuple(f"127.0.0.{n}" for n in range(2, 10))
PROBE_CONNECTIONS = 32
SETTLE_TIMEOUT = 45.0  # seconds for descriptors to come back after the traffic stopped
CHILD_GRACE = 120.0  # seconds past the duration a child process may take to report
# Answers that would mean an attack got through (a 2xx where the platform or the listener must refuse).
MUST_REFUSE = (
    "slow-unsigned-bodies",
    "gateway-slow-bodies",
    "gzip-members",
    "ndjson-million",
    "gateway-huge-headers",
    "dns-rebinding",
    "duplicate-api-key",
    "pipelining",
)
EXPECTED = {
    "slow-loris:instance": "closed by the listener within ~10 s (head deadline)",
    "slow-loris:signed-instance": "closed by the listener within ~10 s (head deadline)",
    "slow-loris:gateway": "closed by the gateway within ~10 s (its head deadline, the listener's guards)",
    "slow-unsigned-bodies": "503 past the address's share (32), 408 at the 120 s body deadline",
    "gateway-slow-bodies": "408 at the 120 s body deadline (the gateway's, 4x server.body_timeout, or the instance's)",
    "pipelining": "401 answers; the connection cut off or kept, memory bounded",
    "gzip-members": "400 empty_body",
    "ndjson-million": "413 too_many_items",
    "gateway-huge-headers": "431 from the gateway (its 64 KiB head limit), before the reroute or the read API",
    "forged-forwarded-for": f"at most {LIMITED_PER_MINUTE} 2xx a minute (one bucket), the rest 429",
    "dns-rebinding": "421 host_not_allowed",
    "duplicate-api-key": "400 duplicate_api_key_header",
    "replays": "200 (a duplicate's answer), no new incident",
}


@dataclass
class Options:
    duration: float = 600.0
    stack: str = "image"
    python: Path | None = None  # default: the stack's venv
    rate: float | None = None  # None: measured (half the probe's)
    warmup: float | None = None  # None: checks.default_warmup(duration)
    attacks: str = "light"
    sample_interval: float | None = None  # None: duration / 60, from 1 to 5 s
    probe_seconds: float | None = None  # None: 5% of the duration, 5 to 15 s
    output: Path = RESULTS
    keep: bool = False


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the platform ------------------------------------------------------------------------------------------------


@dataclass
class Platform:
    target: Target
    api_key: str
    token: str
    limited_token: str
    signing_key: bytes
    gateway_port: int
    ports: dict[str, int]  # instance name -> listen port
    tag: str = field(default_factory=lambda: "soak" + secrets.token_hex(4))

    @property
    def base(self) -> str:
        return f"http://{LOOPBACK}:{self.gateway_port}"

    def route(self, name: str, how: str) -> Route:
        if how == DIRECT:
            return Route(LOOPBACK, self.ports[name], "")
        return Route(LOOPBACK, self.gateway_port, f"/instance/execute/{name}")

    def routes(self, name: str) -> dict[str, Route]:
        return {DIRECT: self.route(name, DIRECT), REROUTE: self.route(name, REROUTE)}

    def roles(self) -> dict[str, int]:
        """Process role -> pid: the gateway and each instance, by name."""
        pids = self.target.pids
        return {
            "gateway": pids["gateway"],
            TOKEN_NAME: pids["instance"],
            **{n: pids[n] for n in (SIGNED_NAME, LIMITED_NAME)},
        }


def start_platform(workdir: Path, python: str) -> Platform:
    """`xsoar-local up` with the three instances, external, on loopback, each with a listen port of its own."""
    token, limited_token = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    signing_key = secrets.token_bytes(32)
    ports = {name: free_port() for name in (TOKEN_NAME, SIGNED_NAME, LIMITED_NAME)}
    common = {"incidentType": "Unclassified", "trusted_proxies": LOOPBACK}  # only the reroute's address is a proxy
    token_params = {
        **common,
        "longRunningPort": ports[TOKEN_NAME],
        "credentials": {"identifier": f"_header:{TOKEN_HEADER}", "password": token},
        "store_samples": True,
        "dedup_key": "bench_id",
    }
    signed_params = {
        **common,
        "longRunningPort": ports[SIGNED_NAME],
        "signature_scheme": "Standard Webhooks",
        "signature_secret": standard_webhooks_secret(signing_key),
        "max_in_flight": str(SIGNED_MAX_IN_FLIGHT),
    }
    limited_params = {
        **common,
        "longRunningPort": ports[LIMITED_NAME],
        "credentials": {"identifier": f"_header:{TOKEN_HEADER}", "password": limited_token},
        "rate_limit_per_minute": str(LIMITED_PER_MINUTE),
    }
    api_key = secrets.token_urlsafe(18)
    target = start_gateway(
        workdir,
        TOKEN_NAME,
        token_params,
        token,
        python,
        others={SIGNED_NAME: signed_params, LIMITED_NAME: limited_params},
        server={"api_key": api_key},
    )
    gateway_port = int(target.url.split("/instance/")[0].rsplit(":", 1)[1])
    return Platform(target, api_key, token, limited_token, signing_key, gateway_port, ports)


def wait_serving(platform: Platform, client: httpx.Client) -> None:
    """Until the gateway says every instance is running; then record their pids."""
    deadline = time.monotonic() + READY_TIMEOUT
    platform.target.wait_ready(client, deadline)
    while True:
        states = client.get(f"{platform.base}/health", timeout=5).json().get("instances", {})
        if states and all(state == "running" for state in states.values()):
            break
        reason = platform.target.exit_reason()
        if reason:
            raise TargetError(reason)
        if time.monotonic() > deadline:
            raise TargetError(f"instances not running in time: {states}; log:\n{platform.target.log_tail()}")
        time.sleep(0.2)
    find_instance_pid(platform.target, client, (SIGNED_NAME, LIMITED_NAME))


def check_interpreters(stack: Stack, roles: dict[str, int]) -> dict[str, str]:
    """The gateway on the driver's interpreter, every instance on the stack's."""
    found = {}
    for role, pid in roles.items():
        found[role] = argv0 = _argv0(pid)
        wanted = sys.executable if role == "gateway" else stack.python
        if argv0 and Path(argv0).absolute() != Path(wanted).absolute():
            raise TargetError(f"{stack.key}: the {role} runs on {argv0}, not on {wanted}")
    return found


# --- sampling ----------------------------------------------------------------------------------------------------


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def descriptors(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def tcp_table_size() -> int:
    """Entries of the host's TCP tables (/proc/net/tcp and tcp6, TIME_WAIT included): what a reader of those
    tables, such as the supervisor's port-ownership check, has to go through."""
    total = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table, "rb") as handle:
            total += max(0, handle.read().count(b"\n") - 1)
    return total


_TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


def sockets_of(pid: int) -> list[tuple[int, str, int, str]]:
    """The TCP sockets `pid` holds: (local port, remote address, remote port, state)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for name in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{name}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    found = []
    with contextlib.suppress(OSError), open(f"/proc/{pid}/net/tcp", encoding="ascii") as table:
        next(table)
        for line in table:
            parts = line.split()
            if parts[9] not in inodes:
                continue
            local, remote = parts[1].split(":"), parts[2].split(":")
            address = socket.inet_ntoa(int(remote[0], 16).to_bytes(4, "little"))
            found.append((int(local[1], 16), address, int(remote[1], 16), _TCP_STATES.get(parts[3], parts[3])))
    return found  # IPv4 only: every socket of the soak is on 127.0.0.x


def descriptor_kinds(pid: int) -> dict[str, int]:
    """What a process's descriptors are: TCP sockets by state, other sockets, pipes, the store's files
    (database, -wal, -shm: three per SQLite connection), logs, other files, anonymous inodes."""
    kinds: Counter[str] = Counter()
    states = {}
    for line in _tcp_lines():
        parts = line.split()
        states[parts[9]] = _TCP_STATES.get(parts[3], parts[3])
    with contextlib.suppress(OSError):
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue
            if link.startswith("socket:["):
                state = states.get(link[8:-1])
                kinds[f"tcp {state}" if state else "other socket"] += 1
            elif link.startswith(("pipe:", "anon_inode:")):
                kinds[link.split(":")[0] if link.startswith("pipe:") else link] += 1
            elif link.endswith((".db", ".db-wal", ".db-shm")):
                kinds["store file"] += 1
            elif link.endswith(".log"):
                kinds["log"] += 1
            else:
                kinds["other file"] += 1
    return dict(sorted(kinds.items()))


def _tcp_lines() -> list[str]:
    lines: list[str] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as handle:
            lines += handle.read().splitlines()[1:]
    return lines


def pooled_sockets(role: str, pid: int, ports: dict[str, int]) -> tuple[int, dict[str, int]]:
    """The gateway's upstream keep-alive pool as seen from `pid`: for the gateway its connections to an instance's
    listen port, for an instance the connections the gateway (127.0.0.1) holds to it. Returns the count and
    their TCP states."""
    states: Counter[str] = Counter()
    for local_port, address, remote_port, state in sockets_of(pid):
        if address != LOOPBACK:
            continue
        gateway_side = role == "gateway" and remote_port in ports.values()
        instance_side = role in ports and local_port == ports[role] and state != "LISTEN"
        if gateway_side or instance_side:
            states[state] += 1
    return sum(states.values()), dict(states)


class Sampler(threading.Thread):
    """Every `interval` seconds: RSS and descriptors of each process, the instances' status from the gateway,
    and the legit senders' latest progress; a line on stderr every 30 s."""

    def __init__(self, platform: Platform, interval: float, progress: Any) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.platform = platform
        self.roles = platform.roles()
        self.interval = interval
        self.progress_queue = progress
        self.zero = time.time()  # the main phase's start once it is known: sample times are relative to it
        self.phase = "idle"  # idle | probe | soak | settle
        self.samples: list[dict[str, Any]] = []
        self.progress: list[dict[str, Any]] = []
        self.instances: dict[str, dict[str, Any]] = {}  # name -> first and last status seen
        self.problems: list[str] = []
        self.stopping = threading.Event()
        self.client = httpx.Client(headers={"X-API-Key": platform.api_key}, trust_env=False, timeout=10)

    def run(self) -> None:
        last_line = 0.0
        while not self.stopping.is_set():
            started = time.monotonic()
            self.sample()
            if time.monotonic() - last_line >= 30:
                last_line = time.monotonic()
                _say(self.line())
            self.stopping.wait(max(0.0, self.interval - (time.monotonic() - started)))
        self.client.close()

    def sample(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"at": time.time(), "phase": self.phase}
        for role, pid in self.roles.items():
            entry[role] = {
                "rss_mib": _round(rss_mib(pid)),
                "fds": descriptors(pid),
                "cpu_s": round(cpu_seconds(pid), 2),
            }
        entry["tcp_sockets"] = tcp_table_size()
        for name, size in self._context_sizes().items():
            if name in entry:
                entry[name]["context_bytes"] = size
        self._drain_progress()
        self._instances()
        self.samples.append(entry)
        return entry

    def _context_sizes(self) -> dict[str, int]:
        """The size of each instance's integration context (its samples and remembered delivery keys, bounded),
        which it rewrites whole at most once a second."""
        path = self.platform.target.store_path
        try:
            connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            try:
                rows = connection.execute("SELECT instance, length(context) FROM integration_context").fetchall()
            finally:
                connection.close()
        except sqlite3.Error:
            return {}
        return {name: int(size) for name, size in rows}

    def _drain_progress(self) -> None:
        while True:
            try:
                item = self.progress_queue.get_nowait()
            except Exception:  # queue.Empty, or a queue closed at shutdown
                return
            self.progress.append(item)

    def _instances(self) -> None:
        try:
            listed = self.client.get(f"{self.platform.base}/instances").json()
        except (httpx.HTTPError, ValueError) as error:
            self.problems.append(f"GET /instances failed: {error!r}")
            return
        for item in listed:
            seen = {key: item.get(key) for key in ("status", "pid", "restarts")}
            record = self.instances.setdefault(item.get("name"), {"first": seen})
            record["last"] = seen
            if seen["status"] != "running":
                record["not_running_seen"] = record.get("not_running_seen", 0) + 1

    def line(self) -> str:
        entry = self.samples[-1] if self.samples else {}
        legit = self.progress[-1] if self.progress and self.phase == "soak" else {}
        parts = [f"soak: {self.phase:<6} t={entry.get('at', self.zero) - self.zero:6.0f}s"]
        if legit:
            parts.append(
                f"legit {legit['answers_per_s']:7.1f}/s p50 {legit['p50_ms']:.0f} p99 {legit['p99_ms']:.0f} ms"
            )
        for role in self.roles:
            values = entry.get(role) or {}
            parts.append(f"{role} {values.get('rss_mib') or 0:.0f} MiB/{values.get('fds') or 0} fd")
        return "  ".join(parts)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=self.interval + 15)

    def timeline(self) -> list[dict[str, Any]]:
        """The samples with `t`: seconds since the main phase started (negative before it)."""
        return [
            {"t": round(item["at"] - self.zero, 2), **{k: v for k, v in item.items() if k != "at"}}
            for item in self.samples
        ]

    def progress_timeline(self) -> list[dict[str, Any]]:
        return [
            {"t": round(item["at"] - self.zero, 2), **{k: v for k, v in item.items() if k != "at"}}
            for item in self.progress
        ]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# --- child processes ---------------------------------------------------------------------------------------------


class Children:
    """The sender and attack processes: each reports once through its queue; all stopped however the run ends."""

    def __init__(self) -> None:
        self.context = multiprocessing.get_context("spawn")
        self.processes: list[multiprocessing.process.BaseProcess] = []

    def queue(self, size: int = 0) -> Any:
        return self.context.Queue(size)

    def start(self, target: Any, *args: Any) -> Any:
        results = self.context.Queue()
        process = self.context.Process(target=target, args=(*args, results), daemon=True)
        process.start()
        self.processes.append(process)
        return process, results

    def result(self, process: Any, results: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return results.get(timeout=1.0)
            except Exception:  # queue.Empty
                if not process.is_alive():
                    raise RuntimeError(f"the {what} process exited with {process.exitcode} without a report") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the {what} process did not report within {timeout:.0f} s") from None

    def stop(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)


# --- the store ---------------------------------------------------------------------------------------------------


def stored_markers(
    store_path: Path, tag: str, instances: tuple[str, ...], unmarked: Counter[str]
) -> Iterator[tuple[int, int]]:
    """(request number, marker index) for every legit marker in the stored incidents of `instances`, once per
    incident that holds it; incidents there without any marker are counted in `unmarked` by instance."""
    pattern = re.compile(re.escape(tag) + r"-(\d+)-(\d+)")
    connection = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=30)
    try:
        marks = ",".join("?" * len(instances))
        rows = connection.execute(f"SELECT instance, data FROM incidents WHERE instance IN ({marks})", instances)
        for instance, data in rows:
            found = {(int(seq), int(index)) for seq, index in pattern.findall(data)}
            if not found:
                unmarked[instance] += 1
            yield from found
    finally:
        connection.close()


# --- the checks --------------------------------------------------------------------------------------------------


def _series(samples: list[dict[str, Any]], role: str, key: str) -> list[tuple[float, float]]:
    return [(item["t"], item[role][key]) for item in samples if item.get(role, {}).get(key) is not None]


def memory_check(samples: list[dict[str, Any]], roles: list[str], warmup: float, duration: float) -> dict[str, Any]:
    per = {}
    for role in roles:
        series = _series(samples, role, "rss_mib")
        growth = checks.growth_after_warmup(series, warmup, duration)
        idle = [item[role]["rss_mib"] for item in samples if item["phase"] == "idle" and item[role]["rss_mib"]]
        per[role] = {
            "idle_mib": _round(statistics.median(idle)) if idle else None,
            "after_warmup_mib": _round(growth.baseline),
            "end_mib": _round(growth.end),
            "peak_mib": _round(max((value for _, value in series), default=0.0)),
            "growth": None if growth.ratio is None else round(growth.ratio, 4),
            "samples": growth.samples,
            "window": growth.window,
            "ok": growth.within(),
        }
        context = [value for moment, value in _series(samples, role, "context_bytes") if warmup <= moment <= duration]
        if context:  # bounded state still filling after the warm-up shows here
            per[role]["context_bytes_after_warmup"] = context[0]
            per[role]["context_bytes_end"] = context[-1]
    return {"ok": all(item["ok"] for item in per.values()), "limit": checks.RSS_GROWTH_LIMIT, "processes": per}


def cpu_percent(samples: list[dict[str, Any]], roles: list[str], start: float, stop: float) -> dict[str, float]:
    """Each process's CPU use between the first and the last sample of [start, stop], in % of one core."""
    within = [item for item in samples if start <= item["t"] <= stop]
    if len(within) < 2:
        return {}
    first, last = within[0], within[-1]
    seconds = last["t"] - first["t"]
    return {role: round((last[role]["cpu_s"] - first[role]["cpu_s"]) / seconds * 100, 1) for role in roles}


def tcp_sockets(samples: list[dict[str, Any]], start: float, stop: float) -> dict[str, int]:
    values = [item["tcp_sockets"] for item in samples if start <= item["t"] <= stop]
    return {"median": int(statistics.median(values)), "max": max(values)} if values else {}


def settle_descriptors(
    roles: dict[str, int],
    baseline: dict[str, int],
    kinds: dict[str, dict[str, int]],
    ports: dict[str, int],
    timeout: float,
) -> dict[str, Any]:
    """Poll until every process is back near its idle descriptor count (the upstream pool aside), or `timeout`."""
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    while True:
        per = {}
        for role, pid in roles.items():
            end = descriptors(pid) or 0
            pooled, states = pooled_sockets(role, pid, ports)
            bound = MAX_IDLE * (len(ports) if role == "gateway" else 1)
            per[role] = {
                "idle": baseline[role],
                "end": end,
                "kinds_idle": kinds[role],
                "kinds_end": descriptor_kinds(pid),
                "pooled_upstream": pooled,
                "pooled_states": states,
                "pool_bound": bound,
                "slack": checks.descriptor_slack(baseline[role]),
                "ok": checks.descriptors_settled(baseline[role], end, pooled) and pooled <= bound,
            }
        if all(item["ok"] for item in per.values()) or time.monotonic() > deadline:
            return {
                "ok": all(item["ok"] for item in per.values()),
                "settle_seconds": round(time.monotonic() - started, 1),
                "processes": per,
            }
        time.sleep(1.0)


def sender_errors(*phases: dict[str, Any]) -> dict[str, Any]:
    statuses: Counter[str] = Counter()
    examples: list[str] = []
    for phase in phases:
        statuses.update(phase["statuses"])
        examples += phase["error_examples"]
    bad = {label: count for label, count in statuses.items() if not label.isdigit() or not 200 <= int(label) < 300}
    return {"ok": not bad, "statuses": dict(statuses), "not_2xx_or_errors": bad, "examples": examples[:10]}


def attack_check(attacks: dict[str, Any], duration: float, unmarked: Counter[str]) -> dict[str, Any]:
    """No attack got a 2xx where it must be refused; the forged X-Forwarded-For stayed in one rate-limit bucket;
    no incident without a marker (an attack's body) on the legit instances."""
    problems = []
    counts = attacks.get("counts", {})
    for name in MUST_REFUSE:
        accepted = sum(n for outcome, n in counts.get(name, {}).items() if re.search(r"(^|:)2\d\d$", outcome))
        if accepted:
            problems.append(f"{name}: {accepted} answered 2xx")
    forged = counts.get("forged-forwarded-for", {})
    accepted = sum(n for outcome, n in forged.items() if outcome.startswith("2"))
    allowed = LIMITED_PER_MINUTE * (int(duration // 60) + 2)  # fixed windows: a partial one at each end
    if accepted > allowed:
        problems.append(f"forged-forwarded-for: {accepted} accepted, more than one bucket allows ({allowed})")
    if unmarked:
        problems.append(f"incidents without a legit marker on the legit instances: {dict(unmarked)}")
    if attacks.get("loop_failures"):
        problems.append(f"attack loops failed: {attacks['loop_failures']}")
    return {"ok": not problems, "problems": problems}


def processes_check(sampler: Sampler, target: Target) -> dict[str, Any]:
    problems = [] if target.process.poll() is None else [f"the gateway exited with {target.process.returncode}"]
    for name, record in sampler.instances.items():
        first, last = record["first"], record.get("last", record["first"])
        if first["pid"] != last["pid"] or (last["restarts"] or 0) > (first["restarts"] or 0):
            problems.append(f"{name} restarted (pid {first['pid']} -> {last['pid']}, restarts {last['restarts']})")
        if record.get("not_running_seen"):
            problems.append(f"{name} was not running in {record['not_running_seen']} samples")
    return {"ok": not problems, "problems": problems, "instances": sampler.instances}


def ports_released(ports: list[int]) -> dict[str, Any]:
    busy = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                busy.append(port)
    return {"ok": not busy, "ports": ports, "still_bound": busy}


# --- the run -----------------------------------------------------------------------------------------------------


@dataclass
class Phases:
    """What the traffic of a run came to: the probe's and the soak's senders, the attacks."""

    rate: float
    probe: dict[str, Any] | None
    legit: dict[str, Any]
    attacks: dict[str, Any]


def run(options: Options) -> dict[str, Any]:
    if options.attacks not in LEVELS:
        raise ValueError(f"--attacks must be one of {', '.join(LEVELS)}")
    stack = make_stack(options.stack, options.python)
    warmup = checks.default_warmup(options.duration) if options.warmup is None else options.warmup
    interval = options.sample_interval or min(5.0, max(1.0, options.duration / 60))
    workdir = Path(tempfile.mkdtemp(prefix="xsoar-soak-"))
    children = Children()
    platform: Platform | None = None
    sampler: Sampler | None = None
    report: dict[str, Any] = {"meta": _meta(stack, options, warmup, interval)}
    ports: list[int] = []
    try:
        _say(f"soak: [{stack.key}] starting the platform with 3 instances on {stack.python} in {workdir} ...")
        platform = start_platform(workdir, stack.python)
        ports = [platform.gateway_port, *platform.ports.values()]
        with httpx.Client(headers={"X-API-Key": platform.api_key}, trust_env=False) as client:
            wait_serving(platform, client)
        roles = platform.roles()
        report["meta"].update(
            interpreters=check_interpreters(stack, roles),
            pids=roles,
            ports={"gateway": platform.gateway_port, **platform.ports},
        )
        progress, captures = children.queue(10_000), children.queue(200)
        sampler = Sampler(platform, interval, progress)
        sampler.start()
        time.sleep(min(5.0, 3 * interval))  # idle samples first
        baseline = {role: descriptors(pid) or 0 for role, pid in roles.items()}
        kinds = {role: descriptor_kinds(pid) for role, pid in roles.items()}
        report["meta"]["descriptors_idle"] = baseline
        phases = _traffic(stack, options, platform, sampler, children, (progress, captures), warmup, interval)
        report["meta"]["target_rate"] = phases.rate
        sampler.phase = "settle"
        _say(f"soak: [{stack.key}] traffic over; waiting for descriptors to settle ...")
        fds = settle_descriptors(roles, baseline, kinds, platform.ports, SETTLE_TIMEOUT)
        sampler.stop()
        _say(f"soak: [{stack.key}] checking the store ...")
        report.update(_judge(platform, sampler, phases, fds, list(roles), warmup, options.duration))
    finally:
        children.stop()
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        if platform is not None:
            platform.target.stop()
        if not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            _say(f"soak: kept {workdir}")
    report["checks"]["ports_released"] = ports_released(ports)
    report["meta"]["loadavg_after"] = _loadavg()
    report["observations"] = observations(report)
    report["failed"] = [name for name, check in report["checks"].items() if not check["ok"]]
    report["ok"] = not report["failed"]
    write_json(report, options.output)
    return report


def _loadavg() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def _meta(stack: Stack, options: Options, warmup: float, interval: float) -> dict[str, Any]:
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "stack": stack.key,
        "python": stack.python,
        "versions": stack.versions,
        "driver": _driver_versions(),
        "cpus": os.cpu_count(),
        "duration_s": options.duration,
        "warmup_s": warmup,
        "sample_interval_s": interval,
        "attacks": options.attacks,
        "loadavg_before": _loadavg(),
    }


def _traffic(
    stack: Stack,
    options: Options,
    platform: Platform,
    sampler: Sampler,
    children: Children,
    queues: tuple[Any, Any],
    warmup: float,
    interval: float,
) -> Phases:
    """The capacity probe (unless a rate is given), then the senders at the target rate with the attacks."""
    progress, captures = queues
    common: dict[str, Any] = {
        "tag": platform.tag,
        "routes": {TOKEN: platform.routes(TOKEN_NAME), SIGNED: platform.routes(SIGNED_NAME)},
        "token_header": TOKEN_HEADER,
        "token": platform.token,
        "signing_key": platform.signing_key,
        "sources": LEGIT_SOURCES,
    }
    probe = None
    rate = options.rate
    if rate is None:
        seconds = options.probe_seconds or min(15.0, max(5.0, options.duration * 0.05))
        _say(f"soak: [{stack.key}] capacity probe: closed loop, {PROBE_CONNECTIONS} connections, {seconds:.0f} s")
        plan = TrafficPlan(**common, first_seq=0, duration=seconds, rate=None, connections=PROBE_CONNECTIONS, warmup=1)
        sampler.phase = "probe"
        process, results = children.start(run_traffic, plan, None, None)
        probe = children.result(process, results, seconds + CHILD_GRACE, "probe")
        process.join(10)
        rate = round(probe["answered_per_s_after_warmup"] / 2, 1)
        _say(
            f"soak: [{stack.key}] probe: {probe['answered_per_s_after_warmup']:,.0f} req/s closed-loop "
            f"(p99 {probe['latency_ms']['p99']:.0f} ms); target {rate:,.0f} req/s"
        )
    duration = options.duration
    start_at = time.time() + 4.0  # both child processes start their clocks together
    sampler.zero, sampler.phase = start_at, "soak"
    _say(
        f"soak: [{stack.key}] {duration:.0f} s at {rate:,.0f} req/s (warm-up {warmup:.0f} s), "
        f"attacks {options.attacks} ..."
    )
    plan = TrafficPlan(
        **common,
        first_seq=probe["requests"] if probe else 0,
        duration=duration,
        rate=rate,
        warmup=warmup,
        start_at=start_at,
        progress_interval=interval,
        seed=int.from_bytes(secrets.token_bytes(4), "big"),
    )
    legit_process, legit_results = children.start(run_traffic, plan, progress, captures)
    attacking = None
    if options.attacks != "off":
        attacking = children.start(run_attacks, _attack_plan(platform, options.attacks, duration, start_at), captures)
    legit = children.result(legit_process, legit_results, duration + CHILD_GRACE + 10, "sender")
    attacks: dict[str, Any] = {"level": "off", "counts": {}}
    if attacking is not None:
        attacks = children.result(*attacking, CHILD_GRACE, "attack")
    children.stop()
    return Phases(rate, probe, legit, attacks)


def _attack_plan(platform: Platform, level: str, duration: float, start_at: float) -> AttackPlan:
    return AttackPlan(
        level=level,
        duration=duration,
        start_at=start_at,
        gateway=Route(LOOPBACK, platform.gateway_port, ""),
        api_key=platform.api_key,
        token=platform.routes(TOKEN_NAME),
        signed=platform.routes(SIGNED_NAME),
        limited=platform.routes(LIMITED_NAME),
        token_header=TOKEN_HEADER,
        token_value=platform.token,
        limited_token=platform.limited_token,
        limited_per_minute=LIMITED_PER_MINUTE,
    )


def _judge(
    platform: Platform,
    sampler: Sampler,
    phases: Phases,
    fds: dict[str, Any],
    roles: list[str],
    warmup: float,
    duration: float,
) -> dict[str, Any]:
    """The checks, and what the report keeps of the traffic and the samples."""
    ledger = _ledger(phases.probe, phases.legit)
    unmarked: Counter[str] = Counter()
    store_path = platform.target.store_path
    assert store_path is not None
    found = stored_markers(store_path, platform.tag, (TOKEN_NAME, SIGNED_NAME), unmarked)
    once = checks.exactly_once(ledger, found)  # consumes `found`, which counts `unmarked`
    senders = [phases.legit] if phases.probe is None else [phases.probe, phases.legit]
    timeline = sampler.timeline()
    return {
        "checks": {
            "exactly_once": once.summary(),
            "no_sender_errors": sender_errors(*senders),
            "rss_growth": memory_check(timeline, roles, warmup, duration),
            "descriptors": fds,
            "processes_stayed_up": processes_check(sampler, platform.target),
            "attacks_refused": attack_check(phases.attacks, duration, unmarked),
        },
        "probe": phases.probe and {key: value for key, value in phases.probe.items() if key != "ledger"},
        "legit": {key: value for key, value in phases.legit.items() if key != "ledger"},
        "attacks": {**phases.attacks, "expected": EXPECTED},
        "cpu_percent_of_a_core": cpu_percent(timeline, roles, 0.0, duration),
        "host_tcp_sockets": tcp_sockets(timeline, 0.0, duration),
        "samples": timeline,
        "progress": sampler.progress_timeline(),
        "sampler_problems": sampler.problems[:20],
    }


def observations(report: dict[str, Any]) -> list[str]:
    """What the numbers suggest beyond pass/fail, for the reader of the summary."""
    notes = []
    for role, item in report["checks"]["rss_growth"]["processes"].items():
        before, after = item.get("context_bytes_after_warmup"), item.get("context_bytes_end")
        if not item["ok"] and before and after and after > before * 1.1:
            notes.append(
                f"{role}: its integration context (samples and remembered delivery keys, bounded at 10,000 keys) "
                f"grew from {before:,} to {after:,} bytes after the warm-up, so part of its RSS growth is that bounded "
                "state still filling; a longer --warmup separates it from a leak"
            )
    counts = report.get("attacks", {}).get("counts", {})
    if counts.get("slow-loris:gateway", {}).get("held-45s"):
        notes.append(
            "slow-loris:gateway: the gateway kept unfinished request heads open until the attacker gave up "
            f"({counts['slow-loris:gateway']['held-45s']} held 45 s): it has no head deadline of its own"
        )
    sockets = report.get("host_tcp_sockets", {})
    if sockets.get("max", 0) > 5000:
        notes.append(
            f"the host's TCP table held up to {sockets['max']:,} entries (TIME_WAIT of closed connections); the "
            "supervisor reads all of it for each instance twice a second, which costs the gateway CPU in proportion"
        )
    return notes


def _ledger(probe: dict[str, Any] | None, legit: dict[str, Any]) -> checks.Ledger:
    parts = [part["ledger"] for part in (probe, legit) if part is not None]
    first, events, statuses = parts[0]
    ledger = checks.Ledger(first, events, statuses)
    for first, events, statuses in parts[1:]:
        ledger.extend(checks.Ledger(first, events, statuses))
    return ledger
