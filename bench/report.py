"""The results: a markdown table with the ratios and the targets, and the same as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.scenarios import Measured

TARGETS_NOTE = "targets are reported, not enforced"
B_SAMPLES_A = "b'/a"
RATIO_PAIRS = (("floor", "a"), ("b", "a"), ("b'", "a"), ("c", "b"))


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


def build(results: list[Measured], meta: dict[str, Any]) -> dict[str, Any]:
    by_key = {item.scenario.key: item for item in results}
    base = by_key.get("a")
    rows = []
    for item in results:
        rows.append(
            {
                "key": item.scenario.key,
                "title": item.scenario.title,
                "body": item.scenario.kind.name,
                "incidents_per_request": item.scenario.kind.incidents,
                "store_samples": item.scenario.samples,
                "via": item.scenario.via,
                "requests_per_s": round(item.rps, 1),
                "incidents_per_s": round(item.incidents_per_s, 1) if item.scenario.webhook else None,
                "p50_ms": round(item.p50_ms, 2),
                "p99_ms": round(item.p99_ms, 2),
                "p99_worst_round_ms": round(item.p99_worst_ms, 2),
                "ratio_to_a": _round(item.ratio_to(base)) if base else None,
                "ratio_to_a_of_totals": _round(_ratio(item.rps, base.rps)) if base else None,
                "server_cpu_us_per_request": round(item.cpu_us_per_request, 1),
                "server_cpu_seconds": round(sum(item.cpu), 2),
                "peak_rss_mib": {k: None if v is None else round(v, 1) for k, v in item.peak_rss_mib.items()},
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
        )

    def paired(top: str, bottom: str) -> float | None:
        if top not in by_key or bottom not in by_key:
            return None
        return by_key[top].ratio_to(by_key[bottom])

    def cpu_ratio(top: str, bottom: str) -> float | None:
        """Throughput ratio as the CPU cost per request predicts it (bottom's cost over top's)."""
        if top not in by_key or bottom not in by_key:
            return None
        return _ratio(by_key[bottom].cpu_us_per_request, by_key[top].cpu_us_per_request)

    def ratio_set(ratio: Any) -> dict[str, float | None]:
        """floor/a, b/a, b'/a, c/b and the samples cost, by one way of taking a ratio."""
        found = {f"{top}/{bottom}": ratio(top, bottom) for top, bottom in RATIO_PAIRS}
        samples = ratio("b'", "b")
        found["samples_cost"] = None if samples is None else 1 - samples
        return found

    ratios = ratio_set(paired)
    cpu_ratios = ratio_set(cpu_ratio)
    instance_rss = [
        value for item in results for role, value in item.peak_rss_mib.items() if role == "instance" and value
    ]
    targets = []

    def target(name: str, value: float | None, goal: str, met: bool | None) -> None:
        targets.append({"target": name, "value": value, "goal": goal, "met": met})

    def at_least(value: float | None, goal: float) -> bool | None:
        return None if value is None else value >= goal

    target("b / a (samples off)", ratios["b/a"], ">= 0.60", at_least(ratios["b/a"], 0.60))
    target("b' / a (samples on)", ratios["b'/a"], ">= 0.60", at_least(ratios["b'/a"], 0.60))
    cost = ratios["samples_cost"]
    target("samples cost 1 - b'/b", cost, "< 0.10", None if cost is None else cost < 0.10)
    target("c / b (reroute vs direct)", ratios["c/b"], ">= 0.60", at_least(ratios["c/b"], 0.60))
    for key in ("d-json", "d-ndjson"):
        if key in by_key:
            value = by_key[key].incidents_per_s
            target(f"{key} incidents/s", value, ">= 30000", value >= 30_000)
    for key in ("b", "b'"):
        if key in by_key:
            value = by_key[key].p99_ms
            target(f"{key} p99 ms at {meta['connections']} connections", value, "< 50", value < 50)
    peak = max(instance_rss, default=None)
    target("instance peak RSS MiB (max over scenarios)", peak, "< 150", None if peak is None else peak < 150)
    integrity_ok = all(item.integrity.get("ok") for item in results if item.scenario.webhook and item.integrity)
    counts_ok = all(item.count_check == "ok" for item in results if item.scenario.webhook)
    return {
        "meta": meta,
        "scenarios": rows,
        "ratios": {key: _round(value) for key, value in ratios.items()},
        "ratios_from_cpu_per_request": {key: _round(value) for key, value in cpu_ratios.items()},
        "targets": targets,
        "integrity_ok": integrity_ok and counts_ok,
    }


def markdown(report: dict[str, Any], results: list[Measured]) -> str:
    meta = report["meta"]
    lines = [
        f"### Generic Webhook benchmark ({meta['tool']}, {meta['connections']} connections, "
        f"{meta['rounds']} x {meta['round_seconds']:g} s per scenario, interleaved; {meta['cpus']} CPUs, "
        f"load {meta['loadavg_before']} before, {meta['loadavg_after']} after)",
        "",
        "req/s and incidents/s: all rounds' responses over their time; p99: median of the rounds' p99; vs (a): median"
        " of the rounds' req/s ratios to (a) measured in the same round; CPU µs/req: CPU time of the server"
        " process(es) per response (for c, gateway + instance).",
        "",
        "| scenario | body | req/s | incidents/s | p50 ms | p99 ms | peak RSS MiB | vs (a) | CPU µs/req | integrity |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for row, item in zip(report["scenarios"], results, strict=True):
        incidents = "-" if row["incidents_per_s"] is None else f"{row['incidents_per_s']:,.0f}"
        lines.append(
            f"| {row['key']}: {row['title']} | {row['body']} | {row['requests_per_s']:,.0f} | {incidents} | "
            f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {_rss(item)} | {_fmt(row['ratio_to_a'])} | "
            f"{row['server_cpu_us_per_request']:.0f} | "
            f"{_integrity(item)}{'' if item.count_check in ('ok', 'n/a') else '; ' + item.count_check} |"
        )
    ratios, cpu = report["ratios"], report["ratios_from_cpu_per_request"]
    lines += [
        "",
        f"c/b (reroute vs direct) = {_fmt(ratios['c/b'])}; samples-on cost 1 - b'/b = "
        f"{_fmt(ratios['samples_cost'], '{:.1%}')}",
        f"floor/a (the least per-event work any such receiver does, no auth, no incident creation) = "
        f"{_fmt(ratios['floor/a'])}",
        f"The same from server CPU per request (less sensitive to other load): floor/a {_fmt(cpu['floor/a'])}, "
        f"b/a {_fmt(cpu['b/a'])}, "
        f"b'/a {_fmt(cpu[B_SAMPLES_A])}, c/b {_fmt(cpu['c/b'])}, samples cost {_fmt(cpu['samples_cost'], '{:.1%}')}",
        "",
        f"| target ({TARGETS_NOTE}) | value | goal | met |",
        "|---|---:|---|---|",
    ]
    for item in report["targets"]:
        value = item["value"]
        shown = "-" if value is None else (f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}")
        met = {True: "yes", False: "NO", None: "-"}[item["met"]]
        lines.append(f"| {item['target']} | {shown} | {item['goal']} | {met} |")
    lines += [
        "",
        "Integrity: every 2xx-answered incident in the store exactly once: "
        + ("yes" if report["integrity_ok"] else "NO (see the integrity column and the JSON)"),
    ]
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
