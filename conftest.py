"""Puts the script environment (demistomock, CommonServerPython) on sys.path, as the platform does, and the
ApiModules."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "xsoar_local" / "script_env"))
# The ApiModules, importable as the content repository's tests import them (`from <Name>ApiModule import *`).
for module_folder in sorted((Path(__file__).resolve().parent / "Packs" / "ApiModules" / "Scripts").glob("*ApiModule")):
    sys.path.insert(0, str(module_folder))

import demistomock  # noqa: E402 (after the sys.path lines above)


@pytest.fixture(autouse=True)
def _reset_demistomock() -> None:
    """Every test starts with a fresh in-memory store and nothing recorded."""
    demistomock.reset()
