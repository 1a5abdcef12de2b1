"""Listen ports: free-port assignment and the clash checks made before anything starts."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

# Instances started by the platform listen on loopback only: callers reach them through the gateway.
INSTANCE_HOST = "127.0.0.1"


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, with the options uvicorn uses; raises OSError when taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


def port_in_use(port: int, host: str = INSTANCE_HOST) -> bool:
    try:
        bind_socket(host, port).close()
    except OSError:
        return True
    return False


def free_port(exclude: set[int] | frozenset[int] = frozenset(), host: str = INSTANCE_HOST) -> int:
    """A port nobody listens on now, as the real server picks one for an instance without a listen port."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port not in exclude:
            return port
    raise OSError("no free port found")


# Linux's tables of TCP sockets: `local_address` is `<hex address>:<hex port>`, state 0A is LISTEN.
_PROC_NET_TCP = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
_LISTEN = "0A"
# The local addresses whose listener takes connections to 127.0.0.1 (where the gateway reaches instances):
# 127.0.0.1 and 0.0.0.0, and in tcp6 `::` (dual-stack) and ::ffff:127.0.0.1.
_REACHED_FROM_LOOPBACK = {"0100007F", "00000000", "0" * 32, "0000000000000000FFFF00000100007F"}


@dataclass(frozen=True)
class Listener:
    """Who listens on a port: whether the process group the platform started holds the socket, and if another
    process does, its pid and name where this user may see them."""

    listening: bool
    ours: bool
    other_pid: int | None = None
    other_name: str | None = None

    def holder(self) -> str:
        """`another process (pid 123, python3)`, for messages."""
        if self.other_pid is None:
            return "another process"
        return f"another process (pid {self.other_pid}{', ' + self.other_name if self.other_name else ''})"


def can_see_sockets() -> bool:
    """Whether socket ownership can be read here (Linux /proc); elsewhere a listener is taken to be ours."""
    return _PROC_NET_TCP[0].exists()


def listener(port: int, pgid: int) -> Listener:
    """Who listens on `port`: a process of the process group `pgid` (the instance's: it runs in a session of its
    own), or another. Without /proc, a port that accepts a connection counts as the group's."""
    if not can_see_sockets():
        # Only whether something accepts connections (a bind test could take the port from the instance itself).
        with socket.socket() as probe:
            probe.settimeout(1.0)
            listening = probe.connect_ex((INSTANCE_HOST, port)) == 0
        return Listener(listening=listening, ours=listening)
    inodes = _listening_inodes(port)
    if not inodes:
        return Listener(listening=False, ours=False)
    # The group leader is the instance itself: checked first, the rest of its group only when it does not hold it.
    if _holds(pgid, inodes) or any(_holds(pid, inodes) for pid in _group_members(pgid)):
        return Listener(listening=True, ours=True)
    other = next((pid for pid in _all_pids() if _holds(pid, inodes)), None)
    return Listener(listening=True, ours=False, other_pid=other, other_name=_process_name(other) if other else None)


def _listening_inodes(port: int) -> set[str]:
    """The inodes of the sockets listening on `port` where 127.0.0.1 reaches them.

    The tables are read line by line, and a line is split whole only when its state is LISTEN: a busy host's table
    holds tens of thousands of lines (TIME_WAIT), read twice a second per instance. Read whole, that is megabytes of
    short-lived text per check in the supervisor's worker threads, which fragments their malloc arenas: the gateway's
    RSS grew by some 3 MiB a minute, whatever its traffic, until this read changed."""
    wanted = f"{port:04X}"
    inodes: set[str] = set()
    for table in _PROC_NET_TCP:
        try:
            with table.open(encoding="ascii") as lines:
                next(lines, None)  # the heading
                for line in lines:
                    head = line.split(None, 4)  # sl, local address, remote address, state, the rest
                    if len(head) < 5 or head[3] != _LISTEN:
                        continue
                    address, _, hex_port = head[1].rpartition(":")
                    fields = head[4].split()  # from tx_queue:rx_queue on: the inode is the sixth
                    if hex_port == wanted and address.upper() in _REACHED_FROM_LOOPBACK and len(fields) > 5:
                        inodes.add(fields[5])
        except OSError:
            continue
    return inodes


def _group_members(pgid: int) -> list[int]:
    """The processes of group `pgid` other than its leader."""
    others = []
    for pid in _all_pids():
        if pid == pgid:
            continue
        try:
            # Field 5 of /proc/<pid>/stat is the process group; the name (field 2) may hold spaces, so split after it.
            stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[2] == str(pgid):
            others.append(pid)
    return others


def _all_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _holds(pid: int, inodes: set[str]) -> bool:
    wanted = {f"socket:[{inode}]" for inode in inodes}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                return True
        except OSError:
            continue
    return False


def _process_name(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text(encoding="utf-8").strip() or None
    except OSError:
        return None
