"""Runs `make <step>` for each step in turn, each one's full output in a log, and ends with a summary.

`make test` calls it: `python3 scripts/run_steps.py --make make lint validate pack ...`. A step's line is printed
when it starts (naming the venvs its prerequisites build first, which can take minutes); when a step fails, the
last lines of its log (the whole log under CI) and the log's path; then the steps after it are not run (`make -k
test`, i.e. --keep-going, runs them anyway). The summary gives each step's result and wall time, and for steps
that ran pytest its summary line. Exit status 0 when every step passed, else 1 (130 when interrupted).

Standard library only.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# pytest's last line, with -q or without (then between "=" signs): "540 passed, 2 skipped in 180.10s (0:03:00)".
PYTEST_SUMMARY = re.compile(
    r"^=*\s*((?:\d+ [a-z]+(?:, )?)+|no tests ran)( in \d+(?:\.\d+)?s)(?: \(\d+:\d\d:\d\d\))?\s*=*$"
)
MUST_REMAKE = re.compile(r"Must remake target [`']([^']+)'")
HEARTBEAT_S = 60.0  # without a terminal (CI, a pipe): a "still running" line this often


@dataclass
class Step:
    name: str
    log: Path
    result: str = "not run"  # "ok", "FAILED", "interrupted" or "not run"
    seconds: float | None = None
    pytest: str = ""


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def is_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def say(text: str = "") -> None:
    print(text, flush=True)


def builds_first(make: list[str], step: str) -> list[str]:
    """The file targets `make <step>` would remake before the step (its venvs), from a dry run (`make -n`)."""
    try:
        dry = subprocess.run(
            [*make, "--no-print-directory", "-n", "--debug=b", step],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    targets: list[str] = []
    for target in MUST_REMAKE.findall(dry.stdout):
        name = target.removesuffix("/.installed")  # a venv's marker: name the venv
        if target != step and name not in targets:
            targets.append(name)
    return targets


def pytest_summary(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        match = PYTEST_SUMMARY.match(ANSI.sub("", line).strip())
        if match:
            return (match.group(1) + match.group(2)).strip()
    return ""


def tail(log: Path, count: int) -> list[str]:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError as exc:
        return [f"(cannot read {log}: {exc})"]
    return lines if count <= 0 else lines[-count:]


def run_step(make: list[str], step: Step, label: str) -> int:
    """Runs `make <step>` with its output in step.log; prints the step's line, and on a terminal its elapsed time."""
    first = builds_first(make, step.name)
    note = f" (first builds {', '.join(first)}: can take a few minutes)" if first else ""
    command = [*make, "--no-print-directory", step.name]
    live = sys.stdout.isatty()
    line = f"{label} {step.name}{note}: log {step.log}"
    if live:
        print(line, end="", flush=True)
    else:
        say(line)
    start = time.monotonic()
    with step.log.open("w") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            next_beat = start + HEARTBEAT_S
            while True:
                try:
                    status = process.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    now = time.monotonic()
                    if live:
                        print(f"\r{line} ... {duration(now - start)}", end="", flush=True)
                    elif now >= next_beat:
                        say(f"    {step.name}: still running ({duration(now - start)})")
                        next_beat = now + HEARTBEAT_S
        except KeyboardInterrupt:
            process.wait()  # make got the same SIGINT (same process group) and stops its recipe
            status = 130
        step.seconds = time.monotonic() - start
        log.write(f"\n# exit status {status} after {duration(step.seconds)}\n")
    if live:
        print(f"\r\x1b[K{line}", flush=True)  # the final line without the counter; the summary has the times
    step.pytest = pytest_summary(step.log)
    return status


def summary(steps: list[Step]) -> list[str]:
    name_width = max(len(step.name) for step in steps)
    result_width = max(len(step.result) for step in steps)
    lines = []
    for step in steps:
        took = duration(step.seconds) if step.seconds is not None else "-"
        extra = step.pytest
        if step.result != "ok" and step.seconds is not None:
            extra = f"{extra}  (log {step.log})" if extra else f"log {step.log}"
        lines.append(f"  {step.name:<{name_width}}  {step.result:<{result_width}}  {took:>6}  {extra}".rstrip())
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("steps", nargs="+", metavar="STEP", help="make targets, run in this order")
    parser.add_argument("--make", default=os.environ.get("MAKE", "make"), help="the make command (default: make)")
    parser.add_argument("--log-dir", type=Path, default=Path("build/logs"), help="default: build/logs")
    parser.add_argument("--tail", type=int, default=60, help="log lines shown for a failed step (default: 60)")
    parser.add_argument("--keep-going", action="store_true", help="run the remaining steps after a failure too")
    args = parser.parse_args(argv)

    make = shlex.split(args.make)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    steps = [Step(name, args.log_dir / f"{name}.log") for name in args.steps]
    for step in steps:
        step.log.unlink(missing_ok=True)  # no log of an earlier run left beside this run's
    ci = is_ci()
    say(f"Running {len(steps)} steps, each one's full output in {args.log_dir}/<step>.log")
    started = time.monotonic()
    interrupted = False
    for number, step in enumerate(steps, 1):
        try:
            status = run_step(make, step, f"[{number}/{len(steps)}]")
        except KeyboardInterrupt:  # outside the step's process (its dry run, its log)
            say()
            status = 130
        if status == 0:
            step.result = "ok"
            continue
        step.result = "interrupted" if status == 130 else "FAILED"
        if status == 130:
            interrupted = True
            break
        lines = tail(step.log, 0 if ci else args.tail)
        shown = "full log" if ci else f"last {len(lines)} lines"
        say(f"---- {step.name} FAILED (exit status {status}); {shown} of {step.log}:")
        for text in lines:
            say(f"  {text}")
        say(f"---- end of {step.log}; run the step alone with `make {step.name}`")
        if not args.keep_going:
            break

    say()
    say(f"Summary ({duration(time.monotonic() - started)}, logs in {args.log_dir}/):")
    for text in summary(steps):
        say(text)
    failed = [step.name for step in steps if step.result in ("FAILED", "interrupted")]
    not_run = [step.name for step in steps if step.result == "not run"]
    if not failed:
        say(f"All {len(steps)} steps passed.")
        return 0
    verdict = f"{'Interrupted' if interrupted else 'FAILED'}: {', '.join(failed)}"
    say(f"{verdict}; not run: {', '.join(not_run)}." if not_run else f"{verdict}.")
    return 130 if interrupted else 1


if __name__ == "__main__":
    sys.exit(main())
