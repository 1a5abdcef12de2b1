"""The `xsoar-local` command: run the platform, look at what it holds, and run an instance's commands."""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import httpx

from xsoar_local import __version__
from xsoar_local.commands import fetch_samples, run_test_module
from xsoar_local.config import DEFAULT_CONFIG_FILE, PlatformConfig, add_pack, load_config, write_default_config
from xsoar_local.errors import XsoarLocalError
from xsoar_local.install import install_pack
from xsoar_local.instances import Instance, check_listen_ports, resolve_instance, resolve_instances
from xsoar_local.store import open_store
from xsoar_local.supervisor import Supervisor

DEBUG_VARIABLE = "XSOAR_LOCAL_DEBUG"


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
        help="The platform's config file; created with a default (serving Packs/GenericWebhook) when missing.",
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

    config = _load(config_path)
    instances = resolve_instances(config)
    check_listen_ports(config, instances)
    sock = bind_gateway(config.server)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("xsoar_local").setLevel(logging.INFO)
    if not is_loopback(config.server.host) and not config.server.api_key:
        logging.getLogger("xsoar_local").warning(
            "server.host %s is reachable from other machines and no server.api_key is set:"
            " anyone who can reach it can read the incidents",
            config.server.host,
        )
    url = base_url(config.server, sock)

    def started(supervisor: Supervisor) -> None:
        click.echo(f"xsoar-local {__version__}: gateway on {url} (store {config.server.store_path})")
        for instance in instances:
            click.echo(_instance_banner(instance, config, url, supervisor))
        click.echo(f"page: {url}/   incidents: xsoar-local incidents --config {shlex.quote(str(config.path))}")
        click.echo("Ctrl-C stops everything.")

    run(serve(config, instances, sock, on_started=started))


@cli.command()
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print GET /instances as JSON.")
def status(config_path: Path, as_json: bool) -> None:
    """Show each instance's status, listen port, restarts and module health, from the running platform."""
    config = _load(config_path)
    url = config.server.base_url()
    headers = {"X-API-Key": config.server.api_key} if config.server.api_key else {}
    try:
        response = httpx.get(f"{url}/instances", headers=headers, timeout=5.0, trust_env=False)
    except httpx.HTTPError:
        raise XsoarLocalError(
            f"xsoar-local is not running at {url} (fix: start it with xsoar-local up --config {config.path})"
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
            (item["module_health"] or {}).get("message", ""),
            item["webhook_url"] or "",
        ]
        for item in instances
    ]
    click.echo(_table(["INSTANCE", "STATUS", "PORT", "RESTARTS", "MODULE HEALTH", "WEBHOOK URL"], rows))


@cli.command()
@_config_option
@click.option("--instance", help="Only the incidents of this instance.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="How many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print the incidents as a JSON list.")
def incidents(config_path: Path, instance: str | None, limit: int, as_json: bool) -> None:
    """List the newest incidents in the store (the platform does not need to be running)."""
    config = _load(config_path)
    found: list[dict[str, Any]] = []
    if config.server.store_path.exists():
        store = open_store(config.server.store_path)
        try:
            found = store.list_incidents(instance=instance, limit=limit)
        finally:
            store.close()
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
@click.argument("instance")
@click.option("--timeout", type=click.FloatRange(min=1), default=60, show_default=True, help="Seconds to wait.")
def samples(config_path: Path, instance: str, timeout: float) -> None:
    """Run fetch-incidents for INSTANCE, as the mapping wizard does, and print the sample incidents as JSON."""
    config = _load(config_path)
    found = fetch_samples(resolve_instance(config, instance), store_path=config.server.store_path, timeout=timeout)
    click.echo(json.dumps(found, indent=2))


@cli.command()
@_config_option
@click.argument("instance")
@click.option("--timeout", type=click.FloatRange(min=1), default=60, show_default=True, help="Seconds to wait.")
def test(config_path: Path, instance: str, timeout: float) -> None:
    """Run test-module for INSTANCE (the Test button) and print ok, or the problem it reports."""
    config = _load(config_path)
    failure = run_test_module(resolve_instance(config, instance), store_path=config.server.store_path, timeout=timeout)
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


def _load(config_path: Path) -> PlatformConfig:
    if not config_path.exists():
        write_default_config(config_path)
        click.echo(
            f"created {config_path}: a default config serving Packs/GenericWebhook as instance 'webhook'", err=True
        )
    return load_config(config_path)


def _config_relative(config: PlatformConfig, path: Path) -> str:
    base = config.path.resolve().parent
    resolved = path.resolve()
    return resolved.relative_to(base).as_posix() if resolved.is_relative_to(base) else str(resolved)


def _instance_banner(instance: Instance, config: PlatformConfig, url: str, supervisor: Supervisor) -> str:
    if not instance.supervised:
        return f"  instance {instance.name} ({instance.integration.id}): {instance.unserved_reason}"
    webhook = f"{url}{instance.webhook_path()}"
    lines = [
        f"  instance {instance.name} ({instance.integration.id}): listen port {instance.listen_port},"
        f" log {supervisor.log_path(instance.name)}",
        f"    webhook URL: {webhook}",
        f"    try: {_curl_line(instance, config, webhook)}",
    ]
    return "\n".join(lines)


def _curl_line(instance: Instance, config: PlatformConfig, webhook: str) -> str:
    parts = ["curl", "-X", "POST", webhook, "-H", "Content-Type: application/json"]
    credentials = instance.params.get("credentials")
    if isinstance(credentials, dict) and credentials.get("identifier"):
        identifier, password = credentials["identifier"], credentials.get("password", "")
        if identifier.startswith("_header:"):
            parts += ["-H", f"{identifier.removeprefix('_header:')}: {password}"]
        else:
            parts += ["-u", f"{identifier}:{password}"]
    if not config.server.is_external(instance.name) and config.server.api_key:
        parts += ["-H", f"X-API-Key: {config.server.api_key}"]
    parts += ["-d", json.dumps({"name": "Hello from curl", "severity": 1})]
    return shlex.join(parts)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())
