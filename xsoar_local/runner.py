"""Run one command of an integration in this process, the way the platform runs its script.

`python -m xsoar_local.runner <pack> <integration>` with the environment of `runner_env()`: the script text is
executed with `demisto` (our demistomock) and every CommonServerPython name as globals and `__name__ ==
"builtins"` (as on the real platform), so both the split `.py` (whose imports resolve through `script_env/` on
`sys.path`) and the unified script (whose import lines were stripped) run unchanged. Parameters, command and
store path travel as environment variables, per docs/script-env-contract.md.
"""

from __future__ import annotations

import argparse
import builtins
import ctypes
import importlib
import json
import linecache
import os
import signal
import sys
from pathlib import Path
from typing import Any

from xsoar_local.errors import XsoarLocalError
from xsoar_local.packs import find_integration, load_pack
from xsoar_local.params import LISTEN_PORT_PARAM

SCRIPT_ENV_DIR = Path(__file__).resolve().parent / "script_env"
# The directory holding the xsoar_local package (the repository root of a checkout or editable install): first on
# a runner's PYTHONPATH, so that `-m xsoar_local.runner` imports this package on any interpreter (one without it
# installed, such as .venv-image's) and from any cwd.
PACKAGE_ROOT = Path(__file__).resolve().parent.parent

# Set by the platform for the processes it starts; a runner whose parent is gone stops (no orphans).
PARENT_PID_VAR = "XSOAR_LOCAL_PARENT_PID"

# Module attributes that describe CommonServerPython itself rather than names the script may use.
_MODULE_ATTRIBUTES = {"__name__", "__file__", "__doc__", "__spec__", "__loader__", "__package__", "__cached__"}
_MODULE_ATTRIBUTES |= {"__builtins__", "__path__"}


def runner_command(pack_path: Path, integration_id: str, python: str | None = None) -> list[str]:
    """The command line of a runner process. `python` is the interpreter of the environment the script runs in
    (the instance's environment, `xsoar_local.environments`); by default this one.
    The runner itself needs only the standard library and PyYAML there; `runner_env()` puts this package on its
    PYTHONPATH."""
    return [
        python or sys.executable,
        "-m",
        "xsoar_local.runner",
        str(pack_path),
        integration_id,
    ]


def runner_env(
    *,
    instance: str,
    integration: str,
    params: dict[str, Any],
    command: str,
    store_path: Path | None,
    results_file: Path | None = None,
    fetch_samples: bool = False,
) -> dict[str, str]:
    """The environment of a runner process: this one's, with the script-environment variables replaced and this
    package's root first on PYTHONPATH."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("DEMISTO_") and key not in ("XSOAR_LOCAL_STORE", PARENT_PID_VAR)
    }
    env.update(
        DEMISTO_PARAMS=json.dumps(_as_served(params)),
        DEMISTO_COMMAND=command,
        DEMISTO_INSTANCE_NAME=instance,
        DEMISTO_INTEGRATION_NAME=integration,
        DEMISTO_IS_FETCH_SAMPLES="true" if fetch_samples else "false",
        PYTHONUNBUFFERED="1",
        # The Generic Webhook listener binds here; the platform's gateway is the way in from outside.
        GENERIC_WEBHOOK_BIND_HOST="127.0.0.1",
        PYTHONPATH=_python_path(env.get("PYTHONPATH", "")),
        **{PARENT_PID_VAR: str(os.getpid())},
    )
    if store_path is not None:
        env["XSOAR_LOCAL_STORE"] = str(store_path)
    if results_file is not None:
        env["DEMISTO_RESULTS_FILE"] = str(results_file)
    return env


def _python_path(existing: str) -> str:
    """PACKAGE_ROOT, then the entries of `existing` (without PACKAGE_ROOT again)."""
    root = str(PACKAGE_ROOT)
    return os.pathsep.join([root, *(entry for entry in existing.split(os.pathsep) if entry and entry != root)])


def _as_served(params: dict[str, Any]) -> dict[str, Any]:
    """Params as the real server hands them to the script: the listen port, a type-0 (short text) param, as text."""
    port = params.get(LISTEN_PORT_PARAM)
    if isinstance(port, int) and not isinstance(port, bool):
        return {**params, LISTEN_PORT_PARAM: str(port)}
    return params


def script_globals(script_path: str) -> dict[str, Any]:
    """What the platform puts in scope of an integration script: CommonServerPython and `demisto`."""
    if str(SCRIPT_ENV_DIR) not in sys.path:
        sys.path.insert(0, str(SCRIPT_ENV_DIR))
    demisto = importlib.import_module("demistomock")
    namespace: dict[str, Any] = {}
    for module_name in ("CommonServerPython", "CommonServerUserPython"):
        module = importlib.import_module(module_name)
        namespace.update((key, value) for key, value in vars(module).items() if key not in _MODULE_ATTRIBUTES)
    # The real platform runs scripts with `__name__ == "builtins"`; scripts guard main() with
    # `if __name__ in ("__main__", "__builtin__", "builtins")`.
    namespace.update(demisto=demisto, __name__="builtins", __file__=script_path, __builtins__=builtins)
    return namespace


def run_script(script: str, script_path: str) -> None:
    # Tracebacks show the script's lines, also for a unified YAML whose script has no file of its own.
    linecache.cache[script_path] = (len(script), None, script.splitlines(keepends=True), script_path)
    code = compile(script, script_path, "exec")
    sys.argv = [script_path]
    exec(code, script_globals(script_path))


def _stop_with_parent() -> None:
    """Have the kernel stop this process when the platform dies, even by SIGKILL (Linux only)."""
    parent = os.environ.get(PARENT_PID_VAR)
    if sys.platform != "linux" or not parent:
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if str(os.getppid()) != parent:
        sys.exit("xsoar-local runner: the platform process is gone")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xsoar_local.runner", description=__doc__.splitlines()[0])
    parser.add_argument("pack", type=Path, help="pack folder or zip")
    parser.add_argument("integration", help="integration id, name or display")
    args = parser.parse_args(argv)
    _stop_with_parent()
    try:
        _, integration = find_integration([load_pack(args.pack)], args.integration)
    except XsoarLocalError as exc:
        sys.exit(f"xsoar-local runner: {exc}")
    run_script(integration.script, integration.script_path)


if __name__ == "__main__":
    main()
