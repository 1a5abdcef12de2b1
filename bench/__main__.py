"""`python -m bench` (= `make bench`): run every scenario on each stack (the image replica first, then the dev venv),
print a table per stack, write bench/results/latest.json."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from bench.run import RESULTS, Options, run
from bench.scenarios import SCENARIOS
from bench.stacks import STACK_KEYS, StackError
from bench.targets import TargetError


def _stop(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the `finally` that stops every process started


def main(argv: list[str] | None = None) -> int:
    keys = [item.key for item in SCENARIOS]
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--duration", type=float, help="seconds of load per scenario and stack (default 8)")
    parser.add_argument("--connections", type=int, default=64, help="concurrent connections (default 64)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per scenario (default 4)")
    parser.add_argument("--quick", action="store_true", help="short run: 3 s per scenario in 3 rounds, smaller checks")
    parser.add_argument(
        "--tool",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="load generator (default: wrk when on PATH, else python)",
    )
    parser.add_argument("--scenarios", default=",".join(keys), help=f"comma-separated subset of {','.join(keys)}")
    parser.add_argument(
        "--stacks",
        default=",".join(STACK_KEYS),
        help="comma-separated stacks, measured in this order: image (.venv-image, h11 + asyncio), dev (.venv)",
    )
    parser.add_argument(
        "--image-python", type=Path, help="interpreter of the image stack (default .venv-image/bin/python)"
    )
    parser.add_argument("--dev-python", type=Path, help="interpreter of the dev stack (default .venv/bin/python)")
    parser.add_argument("--integrity-incidents", type=int, help="incidents sent in each integrity pass (10000)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder with stores and logs")
    args = parser.parse_args(argv)
    chosen = tuple(key.strip() for key in args.scenarios.split(",") if key.strip())
    unknown = [key for key in chosen if key not in keys]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)} (choose from {', '.join(keys)})")
    stacks = tuple(key.strip() for key in args.stacks.split(",") if key.strip())
    if not stacks or any(key not in STACK_KEYS for key in stacks):
        parser.error(f"--stacks: choose from {', '.join(STACK_KEYS)}")
    if args.connections < 1:
        parser.error("--connections must be at least 1")
    options = Options(
        duration=args.duration or (3.0 if args.quick else 8.0),
        connections=args.connections,
        rounds=args.rounds or (3 if args.quick else 4),
        warmup=0.5 if args.quick else 1.0,
        integrity_incidents=args.integrity_incidents or (2_000 if args.quick else 10_000),
        tool=args.tool,
        scenarios=chosen,
        stacks=stacks,
        image_python=args.image_python,
        dev_python=args.dev_python,
        output=args.output,
        keep=args.keep,
    )
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)
    try:
        built, table = run(options)
    except (StackError, TargetError, RuntimeError) as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    print(table)
    print(f"\nresults: {options.output}", file=sys.stderr)
    return 0 if built["integrity_ok"] else 2


if __name__ == "__main__":
    sys.exit(main())
