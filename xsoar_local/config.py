"""The platform's config file: server settings, packs and instances, checked once when it is loaded.

Relative paths in the file (packs, `server.data_dir`) are relative to the folder of the file, so the platform
behaves the same from any working directory.
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import json
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xsoar_local import bounds, safe_yaml
from xsoar_local.errors import ConfigError
from xsoar_local.hosts import ANY_HOST, canonical_host, host_of

DEFAULT_CONFIG_FILE = "xsoar-local.yaml"
DEFAULT_REQUESTS_KEPT = 1000  # requests log entries kept per instance (server.requests_kept)
MAX_REQUESTS_KEPT = 100_000

# The Generic Webhook pack of this repository (a checkout, or an editable install of it).
REPOSITORY_PACK = Path(__file__).resolve().parent.parent / "Packs" / "GenericWebhook"

# What a first `xsoar-local up` writes: serve the Generic Webhook pack of this repository as instance `webhook`.
DEFAULT_CONFIG = """\
# xsoar-local configuration, created by the first `xsoar-local up`. Edit freely; `up` checks it before starting.
server:
  host: 127.0.0.1
  port: 8080
  data_dir: .xsoar-local            # SQLite store, instance logs, installed packs, image environments
  # api_key: <secret>               # needed for /instance/execute/<name> of a non-external instance, and then
  #                                 # also for the read API and the page (header `Authorization` or `X-API-Key`)
  # allowed_hosts: [xsoar.lan]      # Host names the page and read API answer to besides localhost, 127.0.0.1,
  #                                 # ::1 and host (any port); "*" = any, unsafe without api_key (the reroute
  #                                 # answers to every name)
  # unknown_image: warn             # an integration whose docker image has no pin file: warn (run it on the
  #                                 # platform's own Python) or error (`up` refuses to start)
  # requests_kept: 1000             # requests log entries kept per instance (`xsoar-local requests`); 0 = off
  config:                           # server configuration keys, as in the real server
    instance.execute.external.webhook: "true"
packs:
  - {pack}
instances:
  - name: webhook
    integration: Generic Webhook
    enabled: true
    params:
      # longRunningPort: 8000       # left out: a free port is assigned at every start
      store_samples: true
      incidentType: Unclassified
      credentials:                  # callers must send the header `Authorization: <password>`
        identifier: _header:Authorization
        password: "{password}"
"""

# The same without a pack, where this installation has no Packs/GenericWebhook beside it.
EMPTY_CONFIG = """\
# xsoar-local configuration, created by the first `xsoar-local up`. Edit freely; `up` checks it before starting.
# No pack was found to serve ({pack} does not exist): install one with
#   xsoar-local install <pack folder or zip> --config <this file>
# and add an instance of its integration under `instances`.
server:
  host: 127.0.0.1
  port: 8080
  data_dir: .xsoar-local            # SQLite store, instance logs, installed packs, image environments
packs: []
instances: []
"""

_TOP_LEVEL_KEYS = ("server", "packs", "instances")
_SERVER_KEYS = (
    "host",
    "port",
    "data_dir",
    "api_key",
    "allowed_hosts",
    "config",
    "upstream_timeout",
    "body_timeout",
    "requests_kept",
    "environments_dir",
    "unknown_image",
)
UNKNOWN_IMAGE_CHOICES = ("warn", "error")
_INSTANCE_KEYS = ("name", "integration", "enabled", "params")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path(".xsoar-local")
    api_key: str | None = None
    # Host names the read API and the page answer to besides the loopback names and `host` (canonical, see
    # xsoar_local/hosts.py); "*" for any. The reroute answers to every name.
    allowed_hosts: tuple[str, ...] = ()
    # Server configuration keys (`instance.execute.external...`), values as strings like the real server's.
    config: dict[str, str] = field(default_factory=dict)
    # Seconds to wait for an instance to start answering a rerouted request before giving up with 504.
    upstream_timeout: float = 60.0
    # Seconds a rerouted request's body may pause before the caller gets 408 (and four times this in all).
    body_timeout: float = 30.0
    # Entries of the requests log each instance keeps, newest first (xsoar_local/request_log.py); 0 turns it off.
    requests_kept: int = DEFAULT_REQUESTS_KEPT
    # Where the virtualenvs replicating the integrations' docker images are kept (None: <data_dir>/environments).
    environments_dir_setting: Path | None = None
    # What to do with an instance whose integration's docker image has no pin file: warn and run it on the
    # platform's own interpreter, or refuse to start it.
    unknown_image: str = "warn"

    @property
    def environments_dir(self) -> Path:
        return self.environments_dir_setting or self.data_dir / "environments"

    @property
    def lock_path(self) -> Path:
        return self.data_dir / "xsoar-local.lock"

    @property
    def store_path(self) -> Path:
        return self.data_dir / "xsoar-local.db"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def packs_dir(self) -> Path:
        return self.data_dir / "packs"

    def base_url(self, port: int | None = None) -> str:
        """The URL a local client reaches the gateway at (an unspecified bind address means loopback)."""
        host = self.host
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(host).is_unspecified:
                host = "127.0.0.1"
        if not host:
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port if port is None else port}"

    def is_external(self, instance: str) -> bool:
        """Whether `/instance/execute/<instance>` is open without the API key, per the server configuration keys."""
        own = self.config.get(f"instance.execute.external.{instance}", "").strip().lower()
        if own:
            return own == "true"
        return self.config.get("instance.execute.external", "").strip().lower() == "true"


@dataclass(frozen=True)
class InstanceConfig:
    name: str
    integration: str
    enabled: bool = True
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PlatformConfig:
    path: Path
    server: ServerConfig
    packs: tuple[Path, ...]
    instances: tuple[InstanceConfig, ...]

    def instance(self, name: str) -> InstanceConfig:
        found = next((item for item in self.instances if item.name == name), None)
        if found is None:
            known = ", ".join(item.name for item in self.instances) or "none"
            raise ConfigError(f"no instance named {name!r} (instances: {known})")
        return found


def write_default_config(path: Path, pack: Path = REPOSITORY_PACK) -> bool:
    """Write the default config at `path`, naming `pack` by its absolute path; without that pack, a config with no
    pack and no instance. Returns whether the pack was found."""
    path.parent.mkdir(parents=True, exist_ok=True)
    template = DEFAULT_CONFIG if pack.is_dir() else EMPTY_CONFIG
    text = template.format(pack=_yaml_scalar(str(pack.resolve())), password=secrets.token_urlsafe(24))
    path.write_text(text, encoding="utf-8")
    return pack.is_dir()


def load_config(path: str | Path) -> PlatformConfig:
    """Read and check the config file; every problem found is reported in one `ConfigError`."""
    path = Path(path)
    data = _read_yaml(path)
    base = path.resolve().parent
    problems: list[str] = []
    _check_keys(problems, "config", data, _TOP_LEVEL_KEYS)
    server = _server_config(problems, data.get("server"), base)
    packs = _packs(problems, data.get("packs"), base)
    instances = _instances(problems, data.get("instances"))
    if problems:
        raise ConfigError(*(f"{path}: {problem}" for problem in problems))
    return PlatformConfig(path=path, server=server, packs=packs, instances=instances)


def _read_yaml(path: Path) -> dict[str, Any]:
    text = _config_text(path)
    try:
        data = safe_yaml.load(text)
    except safe_yaml.YamlBoundError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: invalid YAML{where}: {' '.join(str(problem).split())}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping with server, packs and instances")
    return data


def _config_text(path: Path) -> str:
    """The config file's text, refused past MAX_CONFIG_BYTES."""
    try:
        data = bounds.read_at_most(path, bounds.MAX_CONFIG_BYTES)
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from exc
    if len(data) > bounds.MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {path} is more than {bounds.size_text(bounds.MAX_CONFIG_BYTES)}, the bound"
            f" (MAX_CONFIG_BYTES); fix: give the path of the platform's config file, or raise"
            f" {bounds.bound_name('MAX_CONFIG_BYTES')}"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text: {exc}") from exc


def _check_keys(problems: list[str], where: str, data: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(allowed)}"
            problems.append(f"{where}: unknown key {key!r} (fix: {hint})")


def _server_config(problems: list[str], data: Any, base: Path) -> ServerConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append("server must be a mapping (fix: see the default config for its keys)")
        return ServerConfig(data_dir=base / ".xsoar-local")
    _check_keys(problems, "server", data, _SERVER_KEYS)
    defaults = ServerConfig()
    host = data.get("host", defaults.host)
    if not isinstance(host, str) or not host:
        problems.append(f"server.host must be a host name or address, got {host!r} (fix: use 127.0.0.1)")
        host = defaults.host
    port = data.get("port", defaults.port)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        problems.append(f"server.port must be a port number (0-65535; 0 = any free port), got {port!r}")
        port = defaults.port
    data_dir = data.get("data_dir", str(defaults.data_dir))
    if not isinstance(data_dir, str) or not data_dir:
        problems.append(f"server.data_dir must be a folder path, got {data_dir!r} (fix: use .xsoar-local)")
        data_dir = str(defaults.data_dir)
    api_key = data.get("api_key")
    if api_key is not None and (not isinstance(api_key, str | int) or isinstance(api_key, bool) or api_key == ""):
        problems.append("server.api_key must be a non-empty string (fix: quote it, or remove the line)")
        api_key = None
    server_keys = data.get("config") or {}
    if not isinstance(server_keys, dict):
        problems.append("server.config must be a mapping of server configuration keys to values")
        server_keys = {}
    timeout = _seconds(problems, data, "upstream_timeout", defaults.upstream_timeout)
    return ServerConfig(
        host=host,
        port=port,
        data_dir=base / data_dir,
        api_key=None if api_key is None else str(api_key),
        allowed_hosts=_allowed_hosts(problems, data.get("allowed_hosts")),
        config={str(key): _config_value(value) for key, value in server_keys.items()},
        upstream_timeout=timeout,
        body_timeout=_seconds(problems, data, "body_timeout", defaults.body_timeout),
        requests_kept=_requests_kept(problems, data.get("requests_kept", defaults.requests_kept)),
        environments_dir_setting=_environments_dir(problems, data.get("environments_dir"), base),
        unknown_image=_unknown_image(problems, data.get("unknown_image", defaults.unknown_image)),
    )


def _requests_kept(problems: list[str], value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REQUESTS_KEPT:
        problems.append(
            f"server.requests_kept must be a whole number from 0 (no requests log) to {MAX_REQUESTS_KEPT:,},"
            f" got {value!r} (fix: requests_kept: {DEFAULT_REQUESTS_KEPT})"
        )
        return DEFAULT_REQUESTS_KEPT
    return value


def _seconds(problems: list[str], data: dict[str, Any], key: str, default: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        problems.append(f"server.{key} must be a number of seconds above 0, got {value!r} (fix: {key}: {default:g})")
        return default
    return float(value)


def _allowed_hosts(problems: list[str], value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        problems.append(
            f"server.allowed_hosts must be a list of host names (fix: allowed_hosts: [{_yaml_scalar(value)}])"
        )
        return ()
    if not isinstance(value, list):
        problems.append(f"server.allowed_hosts must be a list of host names, got {value!r} (fix: [xsoar.lan])")
        return ()
    names: list[str] = []
    for item in value:
        if item == ANY_HOST:
            names.append(ANY_HOST)
            continue
        try:
            names.append(canonical_host(item if isinstance(item, str) else ""))
        except ValueError:
            problems.append(f"server.allowed_hosts: {item!r} is not a host name or IP address ({_host_fix(item)})")
    return tuple(names)


def _host_fix(item: Any) -> str:
    """The fix for an allowed_hosts entry that is not a host name: what to write instead."""
    if not isinstance(item, str) or not item.strip():
        return "fix: write the name as text, e.g. xsoar.lan"
    text = item.strip()
    if "://" in text:
        text = text.partition("://")[2].partition("/")[0]
    name = host_of(text)
    if name is not None:
        return f"fix: write {name} alone; the port and scheme are not compared"
    if "*" in text:
        return 'fix: list each name; "*" alone allows any'
    if not text.isascii():
        with contextlib.suppress(UnicodeError):
            return f"fix: write it as browsers send it, {text.encode('idna').decode('ascii')}"
    return "fix: e.g. xsoar.lan or 192.168.1.10"


def _environments_dir(problems: list[str], value: Any, base: Path) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        problems.append(
            f"server.environments_dir must be a folder path, got {value!r} (fix: remove it for the default)"
        )
        return None
    return base / Path(value).expanduser()


def _unknown_image(problems: list[str], value: Any) -> str:
    if value not in UNKNOWN_IMAGE_CHOICES:
        problems.append(f"server.unknown_image must be warn or error, got {value!r}")
        return "warn"
    return str(value)


def _config_value(value: Any) -> str:
    # The real server keeps configuration values as strings; YAML turns an unquoted true into a boolean.
    return str(value).lower() if isinstance(value, bool) else str(value)


def _packs(problems: list[str], data: Any, base: Path) -> tuple[Path, ...]:
    if data is None:
        return ()
    if not isinstance(data, list) or not all(isinstance(item, str) and item for item in data):
        problems.append("packs must be a list of pack folder or zip paths (fix: packs: [Packs/GenericWebhook])")
        return ()
    return tuple(base / item for item in data)


def _instances(problems: list[str], data: Any) -> tuple[InstanceConfig, ...]:
    if data is None:
        return ()
    if not isinstance(data, list):
        problems.append("instances must be a list of mappings with name, integration, enabled and params")
        return ()
    instances: list[InstanceConfig] = []
    for index, item in enumerate(data, start=1):
        where = f"instance #{index}"
        if not isinstance(item, dict):
            problems.append(f"{where} must be a mapping with name, integration, enabled and params")
            continue
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{where} has no name (fix: add name: <instance-name>)")
            continue
        where = f"instance {name!r}"
        if "/" in name:
            problems.append(f"{where}: the name cannot contain '/', as it is a path segment of its webhook URL")
            continue
        _check_keys(problems, where, item, _INSTANCE_KEYS)
        if any(existing.name == name for existing in instances):
            problems.append(f"{where} is defined twice (fix: give each instance its own name)")
            continue
        integration = item.get("integration")
        if not isinstance(integration, str) or not integration:
            problems.append(f"{where} has no integration (fix: add integration: <integration id>)")
            continue
        enabled = item.get("enabled", True)
        if not isinstance(enabled, bool):
            problems.append(f"{where}: enabled must be true or false, got {enabled!r}")
            continue
        params = item.get("params") or {}
        if not isinstance(params, dict):
            problems.append(f"{where}: params must be a mapping of param name to value")
            continue
        instances.append(InstanceConfig(name=name, integration=integration, enabled=enabled, params=params))
    return tuple(instances)


def add_pack(config_path: Path, entry: str, pack_id: str) -> None:
    """Put `entry` in the config file's packs list, replacing entries of the same pack; comments are kept."""
    text = _config_text(config_path)
    text += "" if text.endswith("\n") else "\n"
    data = safe_yaml.load(text) or {}
    packs = [item for item in data.get("packs") or [] if not _same_pack(str(item), pack_id)] + [entry]
    block = "packs:\n" + "".join(f"  - {_yaml_scalar(item)}\n" for item in packs)
    match = _PACKS_BLOCK.search(text)
    edited = text[: match.start()] + block + text[match.end() :].lstrip("\n") if match else text + block
    if _parses_to(edited) != {**data, "packs": packs}:
        # A layout the targeted edit does not understand: write the whole file (its comments are lost).
        edited = yaml.safe_dump({**data, "packs": packs}, sort_keys=False)
    config_path.write_text(edited, encoding="utf-8")


# The top-level `packs:` key with its value: a flow list on the same line, or the block list under it.
_PACKS_BLOCK = re.compile(r"^packs:[^\n]*\n(?:[ \t]*-[^\n]*\n|[ \t]+#[^\n]*\n)*", re.MULTILINE)


def _parses_to(text: str) -> Any:
    try:
        return safe_yaml.load(text)
    except yaml.YAMLError:
        return None


def _same_pack(entry: str, pack_id: str) -> bool:
    path = Path(entry)
    return pack_id in (path.name, path.stem)


def _yaml_scalar(value: str) -> str:
    return value if re.fullmatch(r"[A-Za-z0-9_./-]+", value) else json.dumps(value)
