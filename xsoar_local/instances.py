"""Instances: a config entry bound to its integration, with checked params and a listen port."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from xsoar_local.config import InstanceConfig, PlatformConfig
from xsoar_local.errors import ConfigError, PackError
from xsoar_local.packs import Integration, Pack, find_integration, load_pack
from xsoar_local.params import LISTEN_PORT_PARAM, resolve_params
from xsoar_local.ports import free_port, port_in_use

if TYPE_CHECKING:
    from xsoar_local.environments import Environment


@dataclass(frozen=True)
class Instance:
    name: str
    integration: Integration
    pack: Pack
    params: dict[str, Any]
    enabled: bool
    # Where its processes run (`xsoar_local.environments.prepare_environments`); None: not prepared yet, so the
    # platform's own interpreter.
    environment: Environment | None = None

    @property
    def python(self) -> str | None:
        return self.environment.python if self.environment is not None else None

    @property
    def long_running(self) -> bool:
        # The hidden `longRunning` param lets an instance of a long-running integration opt out.
        return self.integration.long_running and self.params.get("longRunning", True) is not False

    @property
    def supervised(self) -> bool:
        """Whether the platform keeps a long-running execution of this instance going."""
        return self.enabled and self.long_running

    @property
    def unserved_reason(self) -> str | None:
        """Why the platform does not run this instance ("disabled" or "not long-running"), None if it does."""
        if self.supervised:
            return None
        return "disabled" if not self.enabled else "not long-running"

    @property
    def listen_port(self) -> int | None:
        port = self.params.get(LISTEN_PORT_PARAM) if self.integration.long_running_port else None
        return port if isinstance(port, int) else None

    def webhook_path(self) -> str:
        return f"/instance/execute/{quote(self.name, safe='')}"


def load_packs(config: PlatformConfig) -> list[Pack]:
    packs: list[Pack] = []
    for path in config.packs:
        try:
            packs.append(load_pack(path))
        except PackError as exc:
            raise ConfigError(f"{config.path}: packs: {exc}") from exc
    return packs


def resolve_instances(config: PlatformConfig, packs: list[Pack] | None = None) -> list[Instance]:
    """Every instance of the config with its params checked; instances without a listen port get a free one."""
    packs = load_packs(config) if packs is None else packs
    problems: list[str] = []
    instances: list[Instance] = []
    for item in config.instances:
        try:
            instances.append(_bind(item, packs))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(*(f"{config.path}: {problem}" for problem in problems))
    return _assign_listen_ports(instances, reserved={config.server.port})


def resolve_instance(config: PlatformConfig, name: str) -> Instance:
    """One instance of the config, checked alone: a problem in another instance does not stand in its way."""
    try:
        instance = _bind(config.instance(name), load_packs(config))
    except ConfigError as exc:
        raise ConfigError(*(f"{config.path}: {problem}" for problem in exc.problems)) from None
    return _assign_listen_ports([instance], reserved={config.server.port})[0]


def _bind(item: InstanceConfig, packs: list[Pack]) -> Instance:
    try:
        pack, integration = find_integration(packs, item.integration)
    except PackError as exc:
        raise ConfigError(f"instance {item.name!r}: {exc}") from None
    params = resolve_params(item.name, integration, item.params)
    return Instance(item.name, integration, pack, params, item.enabled)


def check_listen_ports(config: PlatformConfig, instances: list[Instance]) -> None:
    """Refuse two supervised instances on one port, or a port the gateway or another process holds."""
    problems: list[str] = []
    owners: dict[int, str] = {}
    for instance in instances:
        port = instance.listen_port
        if not instance.supervised or port is None:
            continue
        where = f"instance {instance.name!r}: param {LISTEN_PORT_PARAM!r}"
        if port in owners:
            problems.append(
                f"{where}: port {port} is also the listen port of instance {owners[port]!r}"
                f" (fix: give each instance its own {LISTEN_PORT_PARAM}, or remove it to have a free one assigned)"
            )
        elif port == config.server.port:
            problems.append(f"{where}: port {port} is the gateway's server.port (fix: use another port)")
        elif port_in_use(port):
            problems.append(
                f"{where}: port {port} is already in use by another process"
                f" (fix: stop that process, choose another {LISTEN_PORT_PARAM}, or remove it to have a free one"
                " assigned)"
            )
        owners.setdefault(port, instance.name)
    if problems:
        raise ConfigError(*(f"{config.path}: {problem}" for problem in problems))


def _assign_listen_ports(instances: list[Instance], reserved: set[int]) -> list[Instance]:
    taken = reserved | {port for item in instances if (port := item.listen_port) is not None}
    assigned: list[Instance] = []
    for item in instances:
        if item.integration.long_running_port and item.listen_port is None:
            port = free_port(exclude=taken)
            taken.add(port)
            item = replace(item, params={**item.params, LISTEN_PORT_PARAM: port})
        assigned.append(item)
    return assigned
