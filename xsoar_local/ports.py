"""Listen ports: free-port assignment and the clash checks made before anything starts."""

from __future__ import annotations

import socket

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
