"""The Host names the platform's own endpoints (the read API, the page, `/health`) answer to.

A web page the user visits can point a name of its own at 127.0.0.1 (DNS rebinding) and then read, as its own
origin, whatever the browser fetches from that name: the incidents. The browser still sends that page's name in
the `Host` header, so everything of the platform's own answers only to localhost, 127.0.0.1, ::1, server.host (when
it is not a wildcard) and the names in server.allowed_hosts. The reroute answers to any name: senders reach it
through tunnels and proxies under public names, and it has its own access rules (external, the API key).

The port in the Host is not compared: rebinding is told apart by the name alone, and a port forward or tunnel
(`ssh -L 9000:127.0.0.1:8080`, `docker -p`) shows the user's port, not the served one.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

ANY_HOST = "*"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_PORT = re.compile(r"[0-9]*")
_SHOWN = 100  # at most this much of a refused Host is quoted back


def canonical_host(text: str) -> str:
    """`text` as the Host check compares it: lower-case, without a trailing dot, an IP address in its short form
    and without brackets. ValueError when it is neither a host name nor an IP address."""
    name = text.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        return str(ipaddress.IPv6Address(name[1:-1]))
    if name.endswith("."):
        name = name[:-1]
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(name))
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError(f"{text!r} is not a host name or IP address")
    return name


def host_of(value: str) -> str | None:
    """The name part of a Host header value (`name`, `name:port`, `[v6]`, `[v6]:port`), canonical; None when the
    value is not one of those."""
    value = value.strip()
    if value.startswith("["):
        name, bracket, port = value.partition("]")
        name += bracket
        if port and not port.startswith(":"):
            return None
        port = port[1:]
    else:
        name, _, port = value.partition(":")
    if not _PORT.fullmatch(port):
        return None
    try:
        return canonical_host(name)
    except ValueError:
        return None


def is_wildcard(host: str) -> bool:
    """Whether server.host binds every address (0.0.0.0, ::): the user means access from elsewhere."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


@dataclass(frozen=True)
class HostRefusal:
    status: int
    error: str
    detail: str


@dataclass(frozen=True)
class AllowedHosts:
    names: frozenset[str]
    any_host: bool = False

    @classmethod
    def of(cls, host: str, allowed_hosts: Iterable[str]) -> AllowedHosts:
        """The names for server.host `host` and server.allowed_hosts `allowed_hosts` (already canonical)."""
        listed = set(allowed_hosts)
        names = set(LOOPBACK_NAMES) | (listed - {ANY_HOST})
        if not is_wildcard(host):
            try:
                names.add(canonical_host(host))
            except ValueError:
                names.add(host.strip().lower())
        return cls(frozenset(names), ANY_HOST in listed)

    def allows(self, name: str) -> bool:
        return self.any_host or name in self.names

    def refusal(self, headers: Iterable[tuple[bytes, bytes]]) -> HostRefusal | None:
        """Why a request with these (ASGI) headers is refused, or None when its Host is allowed. A request without
        a Host (HTTP/1.0) passes: only browsers are fooled by rebinding, and they always send one."""
        values = [value.decode("latin-1") for key, value in headers if key == b"host"]
        if not values:
            return None
        if len(values) > 1:
            return HostRefusal(400, "invalid_request", "the request has more than one Host header")
        if self.any_host:
            return None
        shown = values[0] if len(values[0]) <= _SHOWN else values[0][:_SHOWN] + "..."
        name = host_of(values[0])
        if name is None:
            return HostRefusal(400, "invalid_request", f"Host {shown!r} is not a host name with an optional port")
        if self.allows(name):
            return None
        detail = (
            f"Host {shown!r} is not one this platform's page and API answer to (localhost, 127.0.0.1, ::1,"
            " server.host and server.allowed_hosts), which keeps other web sites from reading them through DNS"
            f" rebinding; fix: open it as localhost or 127.0.0.1, or add {name!r} to server.allowed_hosts"
        )
        return HostRefusal(421, "host_not_allowed", detail)
