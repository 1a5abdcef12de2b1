"""The `xsoar-local` command: run the platform, look at what it holds, and run an instance's commands."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import httpx

from xsoar_local import __version__
from xsoar_local.commands import fetch_samples, run_test_module
from xsoar_local.config import (
    DEFAULT_CONFIG_FILE,
    REPOSITORY_PACK,
    PlatformConfig,
    ServerConfig,
    add_pack,
    load_config,
    write_default_config,
)
from xsoar_local.environments import prepare_environments
from xsoar_local.errors import XsoarLocalError
from xsoar_local.hosts import ANY_HOST, is_wildcard
from xsoar_local.install import install_pack
from xsoar_local.instances import Instance, check_listen_ports, resolve_instance, resolve_instances
from xsoar_local.lock import DataDirLock, read_holder
from xsoar_local.request_log import curl_command
from xsoar_local.store import Store, open_store
from xsoar_local.supervisor import InstanceState, Supervisor
from xsoar_local.try_line import try_line, why_no_try_line

DEBUG_VARIABLE = "XSOAR_LOCAL_DEBUG"
# What `up` records in the data dir lock while it builds image environments, and once it serves.
BUILDING, SERVING = "building environments", "serving"


class _Cli(click.Group):
    """Reports every error as one line on stderr and a non-zero exit code, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except XsoarLocalError as exc:
            raise click.ClickException(_one_line(str(exc))) from None
        except Exception as exc:
            if os.environ.get(DEBUG_VARIABLE):
                raise
            raise click.ClickException(
                f"unexpected {type(exc).__name__}: {_one_line(str(exc))} (set {DEBUG_VARIABLE}=1 for the traceback)"
            ) from None


def _config_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=DEFAULT_CONFIG_FILE,
        show_default=True,
        help="The platform's config file (`up` creates a default serving Packs/GenericWebhook when it is missing).",
    )(command)


@click.group(cls=_Cli)
@click.version_option(__version__, prog_name="xsoar-local")
def cli() -> None:
    """A small XSOAR-like platform: install content packs and run their long-running integrations."""


@cli.command()
@_config_option
def up(config_path: Path) -> None:
    """Start the gateway and every enabled long-running instance, in the foreground; Ctrl-C stops them all."""
    # Imported here: the web stack takes longer to import than the other subcommands take to run.
    from xsoar_local.server import base_url, bind_gateway, is_loopback, run, serve

    config = _load(config_path, create=True)
    with DataDirLock(config.server.lock_path) as lock:
        lock.acquire(config=str(config.path.resolve()))
        instances = resolve_instances(config)
        check_listen_ports(config, instances)
        sock = bind_gateway(config.server)
        url = base_url(config.server, sock)
        lock.update(url=url, phase=BUILDING)
        # Each image's environment is built here on first use (its progress on stdout), before anything starts.
        ready = iter(prepare_environments([item for item in instances if item.supervised], config.server, warn=_warn))
        instances = [next(ready) if item.supervised else item for item in instances]
        lock.update(phase=SERVING)
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("xsoar_local").setLevel(logging.INFO)
        for warning in _exposure_warnings(config.server, is_loopback(config.server.host)):
            logging.getLogger("xsoar_local").warning("%s", warning)

        def started(supervisor: Supervisor) -> None:
            click.echo(f"xsoar-local {__version__}: gateway on {url} (store {config.server.store_path})")
            for instance in instances:
                click.echo(_instance_banner(instance, config, url, supervisor))
            command, quoted = command_name(), _quoted(config)
            click.echo(f"page: {url}/   status: {command} status --config {quoted}")
            click.echo(f"incidents: {command} incidents --config {quoted}")
            click.echo("Ctrl-C stops everything.")

        run(serve(config, instances, sock, on_started=started))
    click.echo("xsoar-local stopped: the gateway and every instance have ended.")


def _exposure_warnings(server: ServerConfig, loopback: bool) -> list[str]:
    """What `up` warns about how the page and read API are exposed."""
    warnings = []
    if not loopback and not server.api_key:
        warnings.append(
            f"server.host {server.host} is reachable from other machines and no server.api_key is set:"
            " anyone who can reach it can read the incidents"
        )
    if ANY_HOST in server.allowed_hosts and not server.api_key:
        warnings.append(
            'server.allowed_hosts has "*" and no server.api_key is set: any web site the user visits can read the'
            " incidents through DNS rebinding (fix: list the host names instead, or set server.api_key)"
        )
    elif is_wildcard(server.host) and not server.allowed_hosts:
        warnings.append(
            f"server.host {server.host} accepts connections from other machines, but the page and read API answer"
            " only to localhost, 127.0.0.1 and ::1 (the reroute to any name); fix: list the names others use in"
            " server.allowed_hosts"
        )
    return warnings


def _warn(message: str) -> None:
    click.echo(message, err=True)


@cli.command()
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print GET /instances as JSON.")
def status(config_path: Path, as_json: bool) -> None:
    """Show each instance's status, environment, listen port, restarts and module health, from the running platform."""
    config = _load(config_path)
    holder = read_holder(config.server.lock_path)
    if holder is None:
        raise XsoarLocalError(
            f"xsoar-local is not running for {config.path} (no platform holds its data dir {config.server.data_dir};"
            f" fix: start it with {command_name()} up --config {_quoted(config)})"
        )
    if holder.get("phase") == BUILDING:
        raise XsoarLocalError(
            f"the xsoar-local holding {config.server.data_dir} (pid {holder.get('pid')}) is building image"
            " environments before it starts its instances (the first start of an image takes a while): try again"
        )
    # The platform that holds the data dir, wherever its gateway is (the config may say port 0, or have changed).
    url = str(holder.get("url") or config.server.base_url())
    headers = {"X-API-Key": config.server.api_key} if config.server.api_key else {}
    try:
        response = httpx.get(f"{url}/instances", headers=headers, timeout=5.0, trust_env=False)
    except httpx.HTTPError:
        raise XsoarLocalError(
            f"the xsoar-local holding {config.server.data_dir} (pid {holder.get('pid')}) does not answer at {url}"
        ) from None
    if response.status_code != 200:
        raise XsoarLocalError(f"{url}/instances answered {response.status_code}: {response.text}")
    instances = response.json()
    if as_json:
        click.echo(json.dumps(instances, indent=2))
        return
    rows = [
        [
            item["name"],
            item["status"],
            str(item["port"] or ""),
            str(item["restarts"]),
            _environment_cell(item.get("image"), item.get("environment")),
            item.get("error") or (item["module_health"] or {}).get("message", ""),
            item["webhook_url"] or "",
        ]
        for item in instances
    ]
    headers_row = ["INSTANCE", "STATUS", "PORT", "RESTARTS", "ENVIRONMENT", "ERROR / MODULE HEALTH", "WEBHOOK URL"]
    click.echo(_table(headers_row, rows))


def _environment_cell(image: str | None, environment: dict[str, Any] | None) -> str:
    if not environment:
        return ""
    python = f"Python {environment.get('python_version')}"
    if environment.get("kind") == "image":
        return f"{image} ({python})"
    if environment.get("kind") == "override":
        return f"{environment.get('python')} ({python}, XSOAR_LOCAL_INSTANCE_PYTHON)"
    return f"platform's own ({python}; image {image or 'none'} not pinned)"


@cli.command()
@_config_option
@click.option("--instance", help="Only the incidents of this instance.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="How many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print the incidents as a JSON list.")
def incidents(config_path: Path, instance: str | None, limit: int, as_json: bool) -> None:
    """List the newest incidents in the store (the platform does not need to be running)."""
    config = _load(config_path)
    found: list[dict[str, Any]] = []
    configured = {item.name for item in config.instances}
    with _existing_store(config) as store:
        # An instance no longer in the config still has its incidents listed; a name known to neither is a typo.
        if (
            instance is not None
            and instance not in configured
            and (store is None or not store.count_incidents(instance))
        ):
            names = ", ".join(sorted(configured)) or "none"
            raise XsoarLocalError(
                f"no instance named {instance!r} in {config.path}, and no incidents of one in the store"
                f" (instances: {names})"
            )
        if store is not None:
            found = store.list_incidents(instance=instance, limit=limit)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo("no incidents", err=True)
        return
    rows = [
        [str(item["id"]), item["created"], item["instance"], str(item["type"]), str(item["severity"]), item["name"]]
        for item in found
    ]
    click.echo(_table(["ID", "CREATED", "INSTANCE", "TYPE", "SEVERITY", "NAME"], rows))


@cli.command()
@_config_option
@click.option("--instance", help="Only the requests sent to this instance.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="How many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as a JSON list.")
@click.option("--curl", "curl_id", metavar="ID", help="Print the curl command that sends entry ID again.")
def requests(config_path: Path, instance: str | None, limit: int, as_json: bool, curl_id: str | None) -> None:
    """List the newest requests sent through the reroute, with what came of each (from the store)."""
    config = _load(config_path)
    with _existing_store(config) as store:
        if curl_id is not None:
            entry = store.get_request(curl_id) if store is not None else None
            if entry is None:
                raise XsoarLocalError(f"no entry {curl_id!r} in the requests log (`xsoar-local requests` lists them)")
            curl = curl_command(entry, config.server.base_url())
            if curl.command is None:
                raise XsoarLocalError(f"entry {curl_id} cannot be sent again: {curl.note}")
            click.echo(curl.command)
            if curl.note:
                click.echo(f"# {curl.note}", err=True)
            return
        found = store.list_requests(instance=instance, limit=limit) if store is not None else []
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo("no requests" + (f" to {instance}" if instance else ""), err=True)
        return
    rows = [
        [
            str(item["id"]),
            item["time"],
            item["instance"],
            f"{item['method']} {item['target']}",
            str(item["status"]),
            item.get("error") or "",
            str(item["request_bytes"]),
            f"{item['duration_ms']:g}",
            item["client"],
            " ".join(item.get("new_incident_ids") or ()),
        ]
        for item in found
    ]
    headers = ["ID", "TIME", "INSTANCE", "REQUEST", "STATUS", "ERROR", "BYTES", "MS", "CLIENT", "CREATED"]
    click.echo(_table(headers, rows))


@cli.command()
@_config_option
@click.argument("instance")
@click.option("--timeout", type=click.FloatRange(min=1), default=60, show_default=True, help="Seconds to wait.")
def samples(config_path: Path, instance: str, timeout: float) -> None:
    """Run fetch-incidents for INSTANCE, as the mapping wizard does, and print the sample incidents as JSON."""
    config = _load(config_path)
    found = fetch_samples(_prepared(config, instance), store_path=config.server.store_path, timeout=timeout)
    click.echo(json.dumps(found, indent=2))


@cli.command()
@_config_option
@click.argument("instance")
@click.option("--timeout", type=click.FloatRange(min=1), default=60, show_default=True, help="Seconds to wait.")
def test(config_path: Path, instance: str, timeout: float) -> None:
    """Run test-module for INSTANCE (the Test button) and print ok, or the problem it reports."""
    config = _load(config_path)
    failure = run_test_module(_prepared(config, instance), store_path=config.server.store_path, timeout=timeout)
    if failure is not None:
        raise XsoarLocalError(f"instance {instance!r}: test-module failed: {failure}")
    click.echo("ok")


@cli.command()
@_config_option
@click.argument("pack", type=click.Path(exists=True, path_type=Path))
def install(config_path: Path, pack: Path) -> None:
    """Install a pack folder or a demisto-sdk pack zip, and add it to the config's packs list."""
    config = _load(config_path)
    installed = install_pack(pack, config.server.packs_dir)
    entry = _config_relative(config, installed.path)
    add_pack(config.path, entry, installed.id)
    integrations = ", ".join(item.id for item in installed.integrations)
    click.echo(f"installed pack {installed.id} ({integrations}) in {installed.path}; packs in {config.path}: + {entry}")
    click.echo("a running xsoar-local serves it after a restart", err=True)


def main() -> None:
    try:
        status = cli.main(prog_name="xsoar-local", standalone_mode=False)
    except click.UsageError as exc:
        # One line, like every other error; the command's --help has the details.
        command = exc.ctx.command_path if exc.ctx else "xsoar-local"
        click.echo(f"Error: {_one_line(exc.format_message())} (see {command} --help)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    sys.exit(status if isinstance(status, int) else 0)


def _load(config_path: Path, *, create: bool = False) -> PlatformConfig:
    """The config at `config_path`; only `up` (`create`) writes the default when the file is missing."""
    if not config_path.exists():
        if not create:
            raise XsoarLocalError(
                f"config file {config_path} does not exist (fix: pass --config with the path of yours, or run"
                f" `{command_name()} up --config {shlex.quote(str(config_path))}` once to create a default)"
            )
        if write_default_config(config_path):
            what = f"a default config serving {REPOSITORY_PACK} as instance 'webhook'"
        else:
            what = f"a config without packs ({REPOSITORY_PACK} does not exist; add one with `install`)"
        click.echo(f"created {config_path}: {what}", err=True)
    return load_config(config_path)


@contextlib.contextmanager
def _existing_store(config: PlatformConfig) -> Iterator[Store | None]:
    """The config's store, or None when none was made yet (reading commands create no store); closed after."""
    store = open_store(config.server.store_path) if config.server.store_path.exists() else None
    try:
        yield store
    finally:
        if store is not None:
            store.close()


def _prepared(config: PlatformConfig, name: str) -> Instance:
    """One instance with its environment, for a command run on demand (built on first use, progress on stderr)."""
    instance = resolve_instance(config, name)
    return prepare_environments([instance], config.server, progress=_warn, warn=_warn, announce_reuse=False)[0]


def command_name() -> str:
    """How to run this command again from here: `xsoar-local` when that is what PATH finds, else its path."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    on_path = shutil.which("xsoar-local")
    if script is None or script.name != "xsoar-local" or not script.exists():
        return f"{shlex.quote(sys.executable)} -m xsoar_local"
    if on_path and Path(on_path).resolve() == script.resolve():
        return "xsoar-local"
    with contextlib.suppress(ValueError):
        return shlex.quote(str(script.resolve().relative_to(Path.cwd().resolve())))
    return shlex.quote(str(script.resolve()))


def _config_relative(config: PlatformConfig, path: Path) -> str:
    base = config.path.resolve().parent
    resolved = path.resolve()
    return resolved.relative_to(base).as_posix() if resolved.is_relative_to(base) else str(resolved)


def _instance_banner(instance: Instance, config: PlatformConfig, url: str, supervisor: Supervisor) -> str:
    head = f"  instance {instance.name} ({instance.integration.id})"
    if not instance.supervised:
        return f"{head}: {instance.unserved_reason}"
    process = supervisor.get(instance.name)
    state = process.state if process is not None else InstanceState.STOPPED
    port = f"listen port {instance.listen_port}" if state == InstanceState.RUNNING else "not listening"
    lines = [
        f"{head}: {state.value}, {port}, log {supervisor.log_path(instance.name)}",
        f"    environment: {instance.environment.label if instance.environment else PLATFORM_OWN}",
    ]
    if state != InstanceState.RUNNING:
        status = f"{command_name()} status --config {_quoted(config)}"
        lines.append(f"    {process.reason() if process is not None else state.value}")
        if state == InstanceState.ERROR:
            lines.append(f"    fix the cause, then restart xsoar-local; status: {status}")
        else:
            lines.append(f"    the platform keeps restarting it; status: {status}")
        return "\n".join(lines)
    webhook = f"{url}{instance.webhook_path()}"
    lines.append(f"    webhook URL: {webhook}")
    line = try_line(instance, config.server, webhook, config.path.resolve())
    if line is not None:
        lines.append(f"    try: {line.command}")
        lines += [f"      ${name}: {where}" for name, where in line.variables]
        if line.note:
            lines.append(f"      {line.note}")
    else:
        why = why_no_try_line(instance, config.server, webhook, config.path.resolve())
        lines.append(f"    no try line: {why}")
    return "\n".join(lines)


PLATFORM_OWN = "the platform's own"


def _quoted(config: PlatformConfig) -> str:
    return shlex.quote(str(config.path))


# Control characters (C0, DEL, C1): in a table they would reach the operator's terminal as escape sequences.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def visible(text: str) -> str:
    """`text` with every control character shown as an escape (`\x1b`, `\n`), so stored data (what senders posted)
    cannot drive the terminal: no colours, no hidden rows, no window-title writes."""
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    rows = [[visible(str(cell)) for cell in row] for row in rows]
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())
