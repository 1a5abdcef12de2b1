"""The soak's summary table (markdown), from its JSON report."""

from __future__ import annotations

from typing import Any


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{label}: {count:,}" for label, count in sorted(counts.items())) or "-"


def _notes(notes: dict[str, Any]) -> str:
    """`closed_s: (10.0, 10.4)` as `closed after 10.0-10.4 s`."""
    parts = []
    for key, value in notes.items():
        if key.endswith("_s") and isinstance(value, list | tuple) and len(value) == 2:
            low, high = value
            parts.append(f"{key[:-2]} after {low}{'' if low == high else f'-{high}'} s")
        else:
            parts.append(f"{key} {value}")
    return ", ".join(parts) or "-"


def _number(value: float | None, pattern: str = "{:.0f}") -> str:
    return "-" if value is None else pattern.format(value)


def _check_detail(name: str, check: dict[str, Any]) -> str:
    if name == "exactly_once":
        text = f"{check['stored_once']:,} of {check['acknowledged']:,} acknowledged events stored once"
        bad = {key: check[key] for key in ("lost", "duplicated", "stored_though_refused", "stray") if check[key]}
        return text + (f"; {bad}, e.g. {check['examples']}" if bad else "")
    if name == "no_sender_errors":
        bad = check["not_2xx_or_errors"]
        return f"all {sum(check['statuses'].values()):,} answered 2xx" if not bad else f"{bad}; {check['examples']}"
    if name == "rss_growth":
        parts = [
            f"{role} {_number(item['growth'] and item['growth'] * 100, '{:+.1f}')}%"
            for role, item in check["processes"].items()
        ]
        return f"limit +{check['limit'] * 100:.0f}%: " + ", ".join(parts)
    if name == "descriptors":
        parts = []
        for role, item in check["processes"].items():
            text = f"{role} {item['idle']}->{item['end']}"
            if item["pooled_upstream"]:
                text += f" ({item['pooled_upstream']} pooled)"
            if not item["ok"]:
                before, after = item.get("kinds_idle", {}), item.get("kinds_end", {})
                grown = {kind: after[kind] - before.get(kind, 0) for kind in after if after[kind] > before.get(kind, 0)}
                text += f" [more than idle: {_counts(grown)}]"
            parts.append(text)
        return f"after {check['settle_seconds']} s: " + ", ".join(parts)
    if name == "ports_released":
        return "still bound: " + ", ".join(map(str, check["still_bound"])) if check["still_bound"] else "all free"
    problems = check.get("problems") or []
    return "; ".join(problems) if problems else "-"


def markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    legit = report["legit"]
    probe = report.get("probe")
    verdict = "PASSED" if report["ok"] else "FAILED: " + ", ".join(report["failed"])
    versions = meta["versions"]
    lines = [
        f"## Soak on the {meta['stack']} stack: {verdict}",
        "",
        f"Python {versions.get('python')}, uvicorn {versions.get('uvicorn')}, h11 {versions.get('h11')}, "
        f"httptools {versions.get('httptools')}, uvloop {versions.get('uvloop')}; {meta['cpus']} CPUs, load "
        f"{meta['loadavg_before']} before, {meta['loadavg_after']} after. {meta['duration_s']:.0f} s, warm-up "
        f"{meta['warmup_s']:.0f} s, attacks {meta['attacks']}, a sample every {meta['sample_interval_s']:.0f} s.",
        "",
    ]
    if probe:
        lines.append(
            f"- Capacity probe (closed loop, 32 connections, {probe['seconds']:.0f} s): "
            f"{probe['answered_per_s_after_warmup']:,.0f} req/s, p99 {probe['latency_ms']['p99']:.0f} ms; "
            f"target rate {meta['target_rate']:,.0f} req/s (half)."
        )
    else:
        lines.append(f"- Target rate {meta['target_rate']:,.0f} req/s (given).")
    latency = legit["latency_ms"]
    lines += [
        f"- Legit: {legit['requests']:,} requests ({legit['events_sent']:,} events, {legit['retries_sent']:,} "
        f"deliberate retries) sent at {legit['requests_per_s']:,.1f}/s, {legit['answered_per_s_after_warmup']:,.1f}/s "
        f"answered after warm-up; {legit['connections_opened']:,} connections opened; latency from the scheduled time "
        f"p50 {latency['p50']:.1f} / p90 {latency['p90']:.1f} / p99 {latency['p99']:.1f} / max {latency['max']:.0f} ms "
        + "("
        + ", ".join(
            f"{name} p50 {item['p50']:.1f} p99 {item['p99']:.1f}"
            for name, item in legit["latency_ms_by_instance"].items()
        )
        + f"); {legit['late_over_100ms']:,} left over 100 ms late.",
        f"- Legit statuses: {_counts(legit['statuses'])}; by route: "
        + "; ".join(f"{route} {_counts(counts)}" for route, counts in legit["by_route"].items()),
        f"- Host TCP table during the soak (TIME_WAIT included): median {report['host_tcp_sockets'].get('median')}, "
        f"max {report['host_tcp_sockets'].get('max')} entries.",
        "",
        "| process | CPU % | RSS idle | after warm-up | end | peak | growth | fds idle | fds peak | fds end (pooled) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    memory = report["checks"]["rss_growth"]["processes"]
    descriptors = report["checks"]["descriptors"]["processes"]
    for role, item in memory.items():
        fds = descriptors[role]
        peak_fds = max((sample[role]["fds"] or 0 for sample in report["samples"] if role in sample), default=0)
        pooled = f" ({fds['pooled_upstream']}: {_counts(fds['pooled_states'])})" if fds["pooled_upstream"] else ""
        growth = item["growth"]
        cpu = report["cpu_percent_of_a_core"].get(role)
        lines.append(
            f"| {role} | {_number(cpu)} | {_number(item['idle_mib'], '{:.1f}')} | "
            f"{_number(item['after_warmup_mib'], '{:.1f}')} | "
            f"{_number(item['end_mib'], '{:.1f}')} | {_number(item['peak_mib'], '{:.1f}')} | "
            f"{_number(growth and growth * 100, '{:+.1f}')}% | {fds['idle']} | {peak_fds} | {fds['end']}{pooled} |"
        )
    attacks = report.get("attacks") or {}
    if attacks.get("counts"):
        lines += ["", "| attack | expected | outcomes (count) | notes |", "|---|---|---|---|"]
        for name, counts in attacks["counts"].items():
            notes = attacks.get("notes", {}).get(name, {})
            lines.append(f"| {name} | {attacks['expected'].get(name, '')} | {_counts(counts)} | {_notes(notes)} |")
    lines += ["", "| check | result | detail |", "|---|---|---|"]
    for name, check in report["checks"].items():
        lines.append(f"| {name} | {'ok' if check['ok'] else 'FAILED'} | {_check_detail(name, check)} |")
    if report.get("observations"):
        lines += ["", "Observations:", *(f"- {note}" for note in report["observations"])]
    return "\n".join(lines)
