"""The `xsoar-local` command outside a running platform: entry points, `status`, `incidents`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import run_cli, write_config

from xsoar_local import __version__
from xsoar_local.store import open_store


def test_python_dash_m_is_the_same_command() -> None:
    result = subprocess.run([sys.executable, "-m", "xsoar_local", "--version"], capture_output=True, text=True)

    assert result.returncode == 0
    assert result.stdout.strip() == f"xsoar-local, version {__version__}"


def test_every_subcommand_takes_a_config_file() -> None:
    for command in ("up", "status", "incidents", "samples", "test", "install"):
        result = run_cli(command, "--help")
        assert result.returncode == 0
        assert "--config FILE" in result.stdout


def test_status_says_when_the_platform_is_not_running(tmp_path: Path) -> None:
    result = run_cli("status", "--config", write_config(tmp_path, []))

    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0
    assert "xsoar-local is not running for" in result.stderr
    assert "no platform holds its data dir" in result.stderr
    assert "xsoar-local up --config" in result.stderr


def test_incidents_reads_the_store_without_the_platform(tmp_path: Path) -> None:
    """Given incidents in the store, when `incidents` runs while the platform is stopped, then it lists them
    newest first, filtered by instance and limited."""
    config = write_config(tmp_path, [])
    store = open_store(tmp_path / "data" / "xsoar-local.db")
    store.create_incidents("a", [{"name": "one"}, {"name": "two"}])
    store.create_incidents("b", [{"name": "three", "severity": 3}])
    store.close()

    table = run_cli("incidents", "--config", config)
    only_a = run_cli("incidents", "--instance", "a", "--limit", "1", "--config", config)

    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "CREATED", "INSTANCE", "TYPE", "SEVERITY", "NAME"]
    assert [line.split()[-1] for line in lines[1:]] == ["three", "two", "one"]
    assert [line.split()[-1] for line in only_a.stdout.splitlines()[1:]] == ["two"]


def test_an_unexpected_failure_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    config = write_config(tmp_path, [])
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "xsoar-local.db").write_text("this is not a database")

    result = run_cli("incidents", "--config", config)

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "unexpected DatabaseError" in result.stderr


def test_a_usage_error_is_one_line_too(tmp_path: Path) -> None:
    result = run_cli("samples", "--config", write_config(tmp_path, []))

    assert result.returncode == 2
    assert result.stderr.strip() == "Error: Missing argument 'INSTANCE'. (see xsoar-local samples --help)"


def test_control_characters_in_stored_data_never_reach_the_terminal(tmp_path: Path) -> None:
    """Given incidents whose name and type hold terminal escape sequences (a conceal code, a window-title write, a
    C1 CSI, a newline), when `incidents` prints them, then every control character is shown as an escape."""
    config = write_config(tmp_path, [])
    store = open_store(tmp_path / "data" / "xsoar-local.db")
    store.create_incidents("a", [{"name": "x\x1b[8mhidden\x1b]0;pwned\x07", "type": "t\x9b2J\nnext"}])
    store.close()

    table = run_cli("incidents", "--config", config)

    assert table.returncode == 0, table.stderr
    assert not any(char in table.stdout for char in "\x1b\x07\x9b")
    assert len(table.stdout.splitlines()) == 2  # the newline did not start a row of its own
    assert "x\\x1b[8mhidden\\x1b]0;pwned\\x07" in table.stdout
    assert "t\\x9b2J\\nnext" in table.stdout
