"""The soak's pure parts (bench/soak/checks.py): duration parsing, the RSS growth check, the exactly-once check.

The soak itself (`make soak`) is not part of `make test`; these check how it judges what it measured.
"""

from __future__ import annotations

from array import array

import pytest

from bench.soak.checks import (
    Ledger,
    default_warmup,
    descriptors_settled,
    exactly_once,
    growth_after_warmup,
    parse_duration,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("10m", 600), ("1h", 3600), ("1.5h", 5400), ("1h30m", 5400), ("2m30s", 150)],
)
def test_durations_in_seconds_minutes_and_hours(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "10x", "30m1h", "1h 30m", "-5", "0", "0m"])
def test_what_is_not_a_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_the_default_warmup_is_a_tenth_of_the_run_and_at_most_five_minutes() -> None:
    assert default_warmup(180) == 18
    assert default_warmup(3600) == 300


def samples(values: list[float], start: float = 0.0, step: float = 5.0) -> list[tuple[float, float]]:
    return [(start + index * step, value) for index, value in enumerate(values)]


def test_rss_growth_compares_medians_after_the_warmup() -> None:
    """Warm-up samples do not count, and one spike at either end does not decide it."""
    warm = samples([40, 60, 80], start=-15)
    steady = samples([100, 101, 180, 99, 100] + [102] * 40 + [104, 250, 105, 104, 103])
    growth = growth_after_warmup(warm + steady, warmup_end=0, stop=1e9)

    assert growth.baseline == 100 and growth.end == 104
    assert growth.ratio == pytest.approx(0.04)
    assert growth.within()


def test_rss_growth_of_ten_percent_or_more_fails() -> None:
    growth = growth_after_warmup(samples([100.0] * 20 + [110.0] * 20), warmup_end=0, stop=1e9)

    assert growth.ratio == pytest.approx(0.10)
    assert not growth.within()


def test_samples_after_the_load_stopped_are_left_out() -> None:
    growth = growth_after_warmup(samples([100.0] * 40 + [300.0] * 10), warmup_end=0, stop=39 * 5)

    assert growth.end == 100 and growth.within()


def test_too_few_samples_to_judge_is_not_a_pass() -> None:
    growth = growth_after_warmup(samples([100.0, 100.0, 100.0]), warmup_end=0, stop=1e9)

    assert growth.ratio is None and not growth.within()


def test_descriptors_settle_within_the_slack_beside_the_upstream_pool() -> None:
    assert descriptors_settled(baseline=24, end=28)
    assert not descriptors_settled(baseline=24, end=29)
    assert descriptors_settled(baseline=24, end=124, pooled=100)


def ledger(first: int, events: list[int], statuses: list[int]) -> Ledger:
    return Ledger(first, array("B", events), array("H", statuses))


def test_every_acknowledged_event_stored_once_passes() -> None:
    """Request 10 (3 events) and 11 (1) got 200; 12 is a retry of 11 (no markers of its own), also 200."""
    sent = ledger(10, [3, 1, 0], [200, 200, 200])
    stored = [(10, 0), (10, 1), (10, 2), (11, 0)]

    result = exactly_once(sent, stored)

    assert result.ok
    assert (result.acknowledged, result.stored_once) == (4, 4)


def test_a_lost_and_a_twice_stored_event_are_named() -> None:
    sent = ledger(0, [2, 1], [200, 201])
    result = exactly_once(sent, [(0, 0), (1, 0), (1, 0)])

    assert not result.ok
    assert (result.lost, result.duplicated) == (1, 1)
    assert result.examples == {"lost": ["0-1"], "duplicated": ["1-0"]}


def test_an_event_of_a_refused_request_must_not_be_stored() -> None:
    result = exactly_once(ledger(0, [1, 1], [200, 503]), [(0, 0), (1, 0)])

    assert not result.ok and result.stored_though_refused == 1


def test_an_unanswered_request_may_be_stored_once_but_not_twice() -> None:
    """A transport error leaves the outcome unknown: stored once is fine (and counted), twice is a duplicate."""
    once = exactly_once(ledger(0, [1, 1], [0, 0]), [(0, 0)])
    twice = exactly_once(ledger(0, [1], [0]), [(0, 0), (0, 0)])

    assert once.ok and once.unknown_stored == 1 and once.acknowledged == 0
    assert not twice.ok and twice.duplicated == 1


def test_a_marker_no_request_carried_is_stray() -> None:
    result = exactly_once(ledger(5, [1], [200]), [(5, 0), (5, 1), (4, 0), (6, 0)])

    assert not result.ok and result.stray == 3


def test_ledgers_of_consecutive_phases_join() -> None:
    probe = ledger(0, [1, 2], [200, 200])
    probe.extend(ledger(2, [1], [200]))

    assert exactly_once(probe, [(0, 0), (1, 0), (1, 1), (2, 0)]).ok
    with pytest.raises(ValueError, match="does not follow"):
        probe.extend(ledger(9, [1], [200]))
