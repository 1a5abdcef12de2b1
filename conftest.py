"""Puts the script environment (demistomock, CommonServerPython) on sys.path, as the platform does."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "xsoar_local" / "script_env"))

import demistomock


@pytest.fixture(autouse=True)
def _reset_demistomock() -> None:
    """Every test starts with a fresh in-memory store and nothing recorded."""
    demistomock.reset()
