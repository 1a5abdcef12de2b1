"""`python -m bench.soak` (= `make soak`): the soak run on one stack; prints the summary table, writes the JSON
report (default bench/results/soak-latest.json); exit 0 when every check passed, 1 naming the failed ones."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from bench.soak.attacks import LEVELS
from bench.soak.checks import parse_duration
from bench.soak.run import RESULTS, Options, run
from bench.soak.summary import markdown
from bench.stacks import STACK_KEYS, StackError
from bench.targets import TargetError


def _stop(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the `finally` that stops every process started


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _warmup(text: str) -> float:
    return 0.0 if text.strip() in ("0", "0s") else _duration(text)


def _rate(text: str) -> float | None:
    if text == "measured":
        return None
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give requests per second above 0, or `measured`")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--duration", type=_duration, default=600.0, help="how long: 90, 90s, 10m, 1h (default 10m)")
    parser.add_argument("--stack", choices=STACK_KEYS, default="image", help="image (.venv-image, default) or dev")
    parser.add_argument("--python", type=Path, help="the stack's interpreter (default its venv)")
    parser.add_argument(
        "--rate",
        type=_rate,
        default=None,
        help="legit requests/s, or `measured` (default): half of a closed-loop capacity probe run first",
    )
    parser.add_argument("--warmup", type=_warmup, help="warm-up (default 10%% of the duration, at most 5m)")
    parser.add_argument("--attacks", choices=LEVELS, default="light", help="attack level (default light)")
    parser.add_argument("--sample-interval", type=float, help="seconds between samples (default duration/60, 1-5)")
    parser.add_argument("--probe-seconds", type=float, help="length of the capacity probe (default 5%%, 5-15 s)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"the JSON report (default {RESULTS})")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder with the store and logs")
    args = parser.parse_args(argv)
    if args.warmup is not None and args.warmup >= args.duration:
        parser.error("--warmup must be shorter than --duration")
    options = Options(
        duration=args.duration,
        stack=args.stack,
        python=args.python,
        rate=args.rate,
        warmup=args.warmup,
        attacks=args.attacks,
        sample_interval=args.sample_interval,
        probe_seconds=args.probe_seconds,
        output=args.output,
        keep=args.keep,
    )
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)
    try:
        report = run(options)
    except (StackError, TargetError, RuntimeError) as error:
        print(f"soak: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("soak: interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    except SystemExit as stop:
        print(f"soak: stopped by a signal (exit {stop.code}); every process it started is stopped", file=sys.stderr)
        raise
    print(markdown(report))
    print(f"\nreport: {options.output}", file=sys.stderr)
    if not report["ok"]:
        print(f"soak: FAILED checks: {', '.join(report['failed'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
