"""The results: per stack a markdown table with the ratios (and, on the image stack, the targets), and all as JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.scenarios import CEILING, OWN_CEILING, Measured
from bench.stacks import Stack

TARGETS_NOTE = "targets are reported, not enforced"
TARGET_STACK = "image"  # the targets are about what the integration runs on
# (numerator, denominator) of the req/s ratios reported; the targets use those to (a), the stock ceiling.
RATIO_PAIRS = (
    (OWN_CEILING, CEILING),
    ("floor", CEILING),
    ("b", CEILING),
    ("b'", CEILING),
    ("floor", OWN_CEILING),
    ("b", OWN_CEILING),
    ("b'", OWN_CEILING),
    ("b", "floor"),
    ("c", "b"),
)
BATCHED = ("d-json", "d-ndjson")
# Below this share of the stock ceiling, the integration's settings cost throughput by themselves.
OWN_CEILING_WARNING = 0.8


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _fmt(value: float | None, pattern: str = "{:.2f}") -> str:
    return "-" if value is None else pattern.format(value)


def _rss(measured: Measured) -> str:
    parts = [f"{role} {value:.0f}" for role, value in measured.peak_rss_mib.items() if value is not None]
    return " / ".join(parts) or "-"


def _integrity(measured: Measured) -> str:
    if not measured.scenario.webhook:
        return "n/a"
    check = measured.integrity
    if not check:
        return "not run"
    if check["ok"]:
        verdict = f"ok ({check['incidents_answered']} ids"
        if check["non_2xx"] or check["transport_errors"]:
            verdict += f", {check['non_2xx']} non-2xx, {check['transport_errors']} errors"
        return verdict + ")"
    return (
        f"FAIL lost {check['lost']}, dup {check['duplicates']}, refused-but-stored {check['stored_though_refused']},"
        f" count {check['store_count_delta']}/{check['expected_count']}"
    )


def _row(item: Measured, by_key: dict[str, Measured]) -> dict[str, Any]:
    stock, own = by_key.get(CEILING), by_key.get(OWN_CEILING)
    return {
        "key": item.scenario.key,
        "title": item.scenario.title,
        "body": item.scenario.kind.name,
        "incidents_per_request": item.scenario.kind.incidents,
        "store_samples": item.scenario.samples,
        "via": item.scenario.via,
        "app": item.scenario.app,
        "requests_per_s": round(item.rps, 1),
        "incidents_per_s": round(item.incidents_per_s, 1) if item.scenario.webhook else None,
        "p50_ms": round(item.p50_ms, 2),
        "p99_ms": round(item.p99_ms, 2),
        "p99_worst_round_ms": round(item.p99_worst_ms, 2),
        "ratio_to_a": _round(item.ratio_to(stock)) if stock else None,
        "ratio_to_a_own": _round(item.ratio_to(own)) if own else None,
        "ratio_to_a_of_totals": _round(_ratio(item.rps, stock.rps)) if stock else None,
        "server_cpu_us_per_request": round(item.cpu_us_per_request, 1),
        "server_cpu_seconds": round(sum(item.cpu), 2),
        "peak_rss_mib": {k: None if v is None else round(v, 1) for k, v in item.peak_rss_mib.items()},
        "interpreters": item.interpreters,
        "settings": item.settings or None,
        "requests": item.requests,
        "ok_2xx": sum(r.ok for r in item.rounds),
        "non_2xx": sum(r.non_2xx for r in item.rounds),
        "transport_errors": sum(r.transport_errors for r in item.rounds),
        "seconds": round(item.seconds, 2),
        "rounds": [r.summary() for r in item.rounds],
        "count_check": {
            "verdict": item.count_check,
            "store_count_delta": item.stored,
            "expected_min": item.expected_min,
            "expected_max": item.expected_max,
        }
        if item.scenario.webhook
        else None,
        "integrity": item.integrity or None,
    }


def _ratio_set(by_key: dict[str, Measured], ratio: Callable[[str, str], float | None]) -> dict[str, float | None]:
    """The ratios of RATIO_PAIRS, the samples cost and d's incidents/s over b's, by one way of taking a ratio."""

    def guarded(top: str, bottom: str) -> float | None:
        return ratio(top, bottom) if top in by_key and bottom in by_key else None

    found = {f"{top}/{bottom}": guarded(top, bottom) for top, bottom in RATIO_PAIRS}
    samples = guarded("b'", "b")
    found["samples_cost"] = None if samples is None else 1 - samples
    return found


def _targets(by_key: dict[str, Measured], ratios: dict[str, float | None], connections: int) -> list[dict]:
    """Issue 5's targets, against (a), the stock ceiling of the same stack."""
    targets: list[dict] = []

    def target(name: str, value: float | None, goal: str, limit: float, higher_is_better: bool) -> None:
        if value is None:
            met, margin = None, None
        elif higher_is_better:
            met, margin = value >= limit, value / limit - 1
        else:
            met, margin = value < limit, 1 - value / limit
        targets.append({"target": name, "value": value, "goal": goal, "met": met, "margin": _round(margin)})

    target("b / a (samples off)", ratios[f"b/{CEILING}"], ">= 0.75", 0.75, True)
    target("b' / a (samples on)", ratios[f"b'/{CEILING}"], ">= 0.70", 0.70, True)
    target("c / b (reroute vs direct)", ratios["c/b"], ">= 0.60", 0.60, True)
    for key in BATCHED:
        if key in by_key:
            value = ratios.get(f"{key}/b incidents")
            target(f"{key} incidents/s / b's", value, ">= 6", 6.0, True)
    for key in ("b", "b'"):
        if key in by_key:
            target(f"{key} p99 ms at {connections} connections", by_key[key].p99_ms, "< 50", 50.0, False)
    instance_rss = [
        value for item in by_key.values() for role, value in item.peak_rss_mib.items() if role == "instance" and value
    ]
    peak = max(instance_rss, default=None)
    target("instance peak RSS MiB (max over scenarios)", peak, "< 150", 150.0, False)
    return targets


def build(stack: Stack, results: list[Measured], meta: dict[str, Any], connections: int) -> dict[str, Any]:
    """One stack's results; its ratios are to the ceilings of the same stack, measured in the same rounds."""
    by_key = {item.scenario.key: item for item in results}

    def paired(top: str, bottom: str) -> float | None:
        return by_key[top].ratio_to(by_key[bottom])

    def cpu_ratio(top: str, bottom: str) -> float | None:
        """Throughput ratio as the CPU cost per request predicts it (bottom's cost over top's)."""
        return _ratio(by_key[bottom].cpu_us_per_request, by_key[top].cpu_us_per_request)

    ratios = _ratio_set(by_key, paired)
    cpu_ratios = _ratio_set(by_key, cpu_ratio)
    for key in BATCHED:
        if key in by_key and "b" in by_key:
            ratios[f"{key}/b incidents"] = by_key[key].incidents_ratio_to(by_key["b"])
    integrity_ok = all(item.integrity.get("ok") for item in results if item.scenario.webhook and item.integrity)
    counts_ok = all(item.count_check == "ok" for item in results if item.scenario.webhook)
    return {
        "stack": stack.key,
        "title": stack.title,
        "python": stack.python,
        "versions": stack.versions,
        "meta": meta,
        "scenarios": [_row(item, by_key) for item in results],
        "ratios": {key: _round(value) for key, value in ratios.items()},
        "ratios_from_cpu_per_request": {key: _round(value) for key, value in cpu_ratios.items()},
        "targets_apply": stack.key == TARGET_STACK,
        "targets": _targets(by_key, ratios, connections),
        "integrity_ok": integrity_ok and counts_ok,
    }


def build_all(measured: list[tuple[Stack, list[Measured], dict[str, Any]]], meta: dict[str, Any]) -> dict[str, Any]:
    stacks = {stack.key: build(stack, results, extra, meta["connections"]) for stack, results, extra in measured}
    return {"meta": meta, "stacks": stacks, "integrity_ok": all(item["integrity_ok"] for item in stacks.values())}


def _versions(versions: dict[str, Any]) -> str:
    names = ("python", "uvicorn", "h11", "httptools", "uvloop", "fastapi", "pydantic")
    return ", ".join(f"{name} {versions.get(name) or '-'}" for name in names)


def _value(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _settings_note(report: dict[str, Any]) -> list[str]:
    """What the reference apps said about their settings, and a warning when the integration's cost throughput."""
    lines = []
    for row in report["scenarios"]:
        if row["settings"]:
            lines.append(f"{row['key']}: {'; '.join(row['settings'])}")
    share = report["ratios"].get(f"{OWN_CEILING}/{CEILING}")
    if share is not None and share < OWN_CEILING_WARNING:
        own = next((row for row in report["scenarios"] if row["key"] == OWN_CEILING), None)
        said = " ".join(own["settings"] or []) if own else ""
        why = ""
        if "listen_proto=0" in said and "uvloop" not in said:
            why = (
                " Its listen socket has proto 0, so asyncio leaves Nagle on for every accepted connection"
                " (TCP_NODELAY is set only when the listening socket's proto is IPPROTO_TCP): a response written"
                " in two segments waits for the peer's delayed ACK."
            )
        lines.append(
            f"WARNING: {OWN_CEILING}, the bare app on the integration's own settings, serves only {share:.2f} of the"
            f" stock ceiling on this stack: the shared settings cost that much by themselves.{why}"
        )
    return lines


def markdown(report: dict[str, Any], results: list[Measured], meta: dict[str, Any]) -> str:
    extra = report["meta"]
    lines = [
        f"### {report['title']}",
        "",
        f"{_versions(report['versions'])}; {meta['tool']}, {meta['connections']} connections, "
        f"{meta['rounds']} x {meta['round_seconds']:g} s per scenario, interleaved; {meta['cpus']} CPUs, "
        f"load {extra['loadavg_before']} before, {extra['loadavg_after']} after; {extra['wall_seconds']:g} s",
        "",
        "| scenario | body | req/s | incidents/s | p50 ms | p99 ms | peak RSS MiB | vs a | vs a-own | CPU µs/req "
        "| integrity |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for row, item in zip(report["scenarios"], results, strict=True):
        incidents = "-" if row["incidents_per_s"] is None else f"{row['incidents_per_s']:,.0f}"
        lines.append(
            f"| {row['key']}: {row['title']} | {row['body']} | {row['requests_per_s']:,.0f} | {incidents} | "
            f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {_rss(item)} | {_fmt(row['ratio_to_a'])} | "
            f"{_fmt(row['ratio_to_a_own'])} | {row['server_cpu_us_per_request']:.0f} | "
            f"{_integrity(item)}{'' if item.count_check in ('ok', 'n/a') else '; ' + item.count_check} |"
        )
    ratios, cpu = report["ratios"], report["ratios_from_cpu_per_request"]

    def some(found: dict[str, float | None], keys: tuple[str, ...]) -> str:
        return ", ".join(f"{key} {_fmt(found.get(key))}" for key in keys)

    stock_keys = (f"{OWN_CEILING}/{CEILING}", f"floor/{CEILING}", f"b/{CEILING}", f"b'/{CEILING}")
    own_keys = (f"floor/{OWN_CEILING}", f"b/{OWN_CEILING}", f"b'/{OWN_CEILING}")
    lines += [
        "",
        f"Against a (stock ceiling): {some(ratios, stock_keys)}. Against a-own (integration's settings): "
        f"{some(ratios, own_keys)}. b/floor {_fmt(ratios.get('b/floor'))} (no target); c/b {_fmt(ratios['c/b'])};"
        f" samples cost 1 - b'/b {_fmt(ratios['samples_cost'], '{:.1%}')}; "
        + ", ".join(f"{key}/b incidents/s {_fmt(ratios.get(f'{key}/b incidents'), '{:.1f}')}x" for key in BATCHED),
        f"From server CPU per request (less sensitive to other load): {some(cpu, stock_keys)}, "
        f"{some(cpu, own_keys)}, b/floor {_fmt(cpu.get('b/floor'))}, c/b {_fmt(cpu['c/b'])}",
    ]
    notes = _settings_note(report)
    if notes:
        lines += ["", *notes]
    if report["targets_apply"]:
        lines += [
            "",
            f"| target, against a = stock ceiling ({TARGETS_NOTE}) | value | goal | met | margin |",
            "|---|---:|---|---|---:|",
        ]
        for item in report["targets"]:
            met = {True: "yes", False: "NO", None: "-"}[item["met"]]
            lines.append(
                f"| {item['target']} | {_value(item['value'])} | {item['goal']} | {met} | "
                f"{_fmt(item['margin'], '{:+.0%}')} |"
            )
    else:
        lines += ["", f"(The targets apply to the {TARGET_STACK} stack; none are checked here.)"]
    lines += [
        "",
        "Integrity: every 2xx-answered incident in the store exactly once: "
        + ("yes" if report["integrity_ok"] else "NO (see the integrity column and the JSON)"),
    ]
    return "\n".join(lines)


def markdown_all(built: dict[str, Any], measured: list[tuple[Stack, list[Measured], dict[str, Any]]]) -> str:
    meta = built["meta"]
    driver = meta["driver"]
    commit = driver.get("commit") or "?"
    if driver.get("uncommitted_changes"):
        commit += " + uncommitted"
    lines = [
        f"## Generic Webhook benchmark ({meta['when']}, commit {commit}; {meta['wall_seconds']:g} s)",
        "",
        "req/s and incidents/s: all rounds' responses over their time; p99: median of the rounds' p99; vs a, vs a-own:"
        " median of the rounds' req/s ratios to the stack's stock ceiling (a) and to its ceiling on the integration's"
        " settings (a-own), measured in the same round; CPU µs/req: CPU time of the server process(es) per response"
        " (for c, gateway + instance).",
    ]
    for stack, results, _ in measured:
        lines += ["", markdown(built["stacks"][stack.key], results, meta)]
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
