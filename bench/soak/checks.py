"""The soak's pure parts: duration parsing, the robust RSS growth check, the descriptor check and the exactly-once
check of the legit events against what the store holds. No I/O here (tests/test_soak_checks.py covers them)."""

from __future__ import annotations

import re
import statistics
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

_NUMBER = r"(\d+(?:\.\d+)?)"
_DURATION = re.compile(rf"(?:{_NUMBER}h)?(?:{_NUMBER}m)?(?:{_NUMBER}s)?")
_BARE = re.compile(_NUMBER)
MAX_WARMUP = 300.0
WARMUP_SHARE = 0.10
RSS_GROWTH_LIMIT = 0.10


def parse_duration(text: str) -> float:
    """Seconds from `90` (seconds), `90s`, `10m`, `1h`, `1.5h`, `1h30m` or `2m30s` (units in that order).
    Raises ValueError for anything else, or for zero."""
    spelled = text.strip().lower()
    if _BARE.fullmatch(spelled):
        total = float(spelled)
    else:
        match = _DURATION.fullmatch(spelled)
        if not spelled or match is None:
            raise ValueError(f"{text!r} is not a duration (fix: e.g. 90, 90s, 10m, 1h or 1h30m)")
        hours, minutes, seconds = (float(part) if part else 0.0 for part in match.groups())
        total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ValueError(f"{text!r}: the duration must be above zero")
    return total


def default_warmup(duration: float) -> float:
    """10% of the duration, at most 5 minutes."""
    return min(duration * WARMUP_SHARE, MAX_WARMUP)


def sample_window(count: int) -> int:
    """How many samples each end of the RSS comparison takes: a tenth of the post-warm-up samples, 3 to 12."""
    return max(3, min(12, count // 10))


@dataclass(frozen=True)
class Growth:
    baseline: float | None  # median of the samples right after warm-up
    end: float | None  # median of the last samples
    samples: int  # post-warm-up samples it is made from
    window: int

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.end is None or self.baseline <= 0:
            return None
        return self.end / self.baseline - 1

    def within(self, limit: float = RSS_GROWTH_LIMIT) -> bool:
        """False also when there were too few samples to judge (at least two windows' worth are needed)."""
        ratio = self.ratio
        return ratio is not None and ratio < limit


def growth_after_warmup(samples: Sequence[tuple[float, float]], warmup_end: float, stop: float) -> Growth:
    """`samples` are (seconds since the start, value). The baseline is the median of the first samples taken at or
    after `warmup_end`, the end the median of the last ones taken before `stop` (the load's end): a median, so one
    sample caught mid-batch or mid-collection does not decide it."""
    after = [value for moment, value in samples if warmup_end <= moment <= stop]
    window = sample_window(len(after))
    if len(after) < 2 * window:
        return Growth(None, None, len(after), window)
    return Growth(statistics.median(after[:window]), statistics.median(after[-window:]), len(after), window)


def descriptor_slack(baseline: int) -> int:
    """How far above its idle baseline a process's descriptor count may end: 10% of it, at least 4."""
    return max(4, baseline // 10)


def descriptors_settled(baseline: int, end: int, pooled: int = 0) -> bool:
    """Back near the baseline: the count at the end, less the sockets of the gateway's upstream keep-alive pool
    (bounded by design, checked against their bound on their own), within the slack."""
    return end - pooled <= baseline + descriptor_slack(baseline)


# --- the legit events: one ledger entry per request, in sequence order ---


@dataclass
class Ledger:
    """What each legit request carried and got: `events[i]` markers `<tag>-<first+i>-<k>` (k < events[i]; 0 for
    a deliberate retry, which carries an earlier request's markers) and `statuses[i]` (0: no answer, a transport
    error). Compact arrays: a one-hour soak sends millions of requests."""

    first: int = 0
    events: array = field(default_factory=lambda: array("B"))
    statuses: array = field(default_factory=lambda: array("H"))

    def extend(self, other: Ledger) -> None:
        if other.first != self.first + len(self.events):
            raise ValueError(f"ledger starting at {other.first} does not follow one ending at {self.end}")
        self.events.extend(other.events)
        self.statuses.extend(other.statuses)

    @property
    def end(self) -> int:
        return self.first + len(self.events)

    def offsets(self) -> array:
        """offsets[i]: the index of request i's first marker in a flat list of every marker sent."""
        found, total = array("Q"), 0
        for count in self.events:
            found.append(total)
            total += count
        found.append(total)
        return found


@dataclass(frozen=True)
class OnceResult:
    acknowledged: int  # markers whose request got a 2xx
    stored_once: int  # ... and are in the store exactly once
    lost: int  # acknowledged, not stored
    duplicated: int  # stored more than once (any request, answered or not)
    stored_though_refused: int  # stored although the request got a non-2xx
    unknown_stored: int  # of requests without an answer (transport error): stored once (either is fine)
    stray: int  # markers in the store that no request of this run carried
    examples: dict[str, list[str]]  # a few markers of each failure

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.stored_though_refused or self.stray)

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "acknowledged": self.acknowledged,
            "stored_once": self.stored_once,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "stored_though_refused": self.stored_though_refused,
            "unknown_outcome_stored": self.unknown_stored,
            "stray": self.stray,
            "examples": self.examples,
        }


def exactly_once(ledger: Ledger, found: Iterable[tuple[int, int]], *, examples: int = 5) -> OnceResult:
    """Every marker of a 2xx-answered request stored exactly once; none of a refused one; none stored twice.
    `found` yields (request number, marker index) once per stored incident that holds the marker."""
    offsets = ledger.offsets()
    counts = bytearray(offsets[-1])
    stray = 0
    shown: dict[str, list[str]] = {"lost": [], "duplicated": [], "stored_though_refused": [], "stray": []}
    for seq, index in found:
        position = seq - ledger.first
        if not 0 <= position < len(ledger.events) or not 0 <= index < ledger.events[position]:
            stray += 1
            if len(shown["stray"]) < examples:
                shown["stray"].append(f"{seq}-{index}")
            continue
        flat = offsets[position] + index
        counts[flat] = min(255, counts[flat] + 1)
    acknowledged = stored_once = lost = duplicated = refused = unknown = 0
    for position, status in enumerate(ledger.statuses):
        start, stop = offsets[position], offsets[position + 1]
        for index, count in enumerate(counts[start:stop]):
            label = f"{ledger.first + position}-{index}"
            if count > 1:
                duplicated += 1
                _note(shown["duplicated"], label, examples)
            if 200 <= status < 300:
                acknowledged += 1
                if count == 1:
                    stored_once += 1
                elif count == 0:
                    lost += 1
                    _note(shown["lost"], label, examples)
            elif status == 0:
                unknown += count == 1
            elif count:
                refused += 1
                _note(shown["stored_though_refused"], label, examples)
    return OnceResult(
        acknowledged,
        stored_once,
        lost,
        duplicated,
        refused,
        unknown,
        stray,
        {key: value for key, value in shown.items() if value},
    )


def _note(into: list[str], label: str, limit: int) -> None:
    if len(into) < limit:
        into.append(label)


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The value at `fraction` of an ascending sequence (0 when empty)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
