"""`xsoar-local up`: the gateway and the supervised instances in one foreground process.

The platform installs its own signal handlers (SIGINT, SIGTERM, SIGHUP) instead of uvicorn's, so that however
the server loop ends, the instances are stopped before the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import uvicorn

from xsoar_local.app import create_app
from xsoar_local.config import PlatformConfig, ServerConfig
from xsoar_local.errors import ConfigError
from xsoar_local.gateway import BODY_TOTAL_FACTOR, upstream_pool
from xsoar_local.instances import Instance
from xsoar_local.listener import (
    H11_BUFFER_SLACK,
    KEEP_ALIVE_GRACE_SECONDS,
    MAX_HEADER_BYTES,
    UVICORN_CHECKED,
    GuardedServer,
    guarded_http_protocol,
    write_timeout_seconds,
)
from xsoar_local.ports import bind_socket
from xsoar_local.request_log import RequestLog
from xsoar_local.store import open_store
from xsoar_local.supervisor import Supervisor

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
BANNER_GRACE = 15.0
KEEP_ALIVE_SECONDS = 5.0  # an idle caller's connection (uvicorn's default, as before the guards)

T = TypeVar("T")


class _Server(GuardedServer):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Signals are handled by `serve()` below; uvicorn would re-raise them after shutting down.
        yield


def bind_gateway(server: ServerConfig) -> socket.socket:
    try:
        return bind_socket(server.host, server.port)
    except OSError as exc:
        raise ConfigError(
            f"server.port {server.port} on {server.host} cannot be used: {exc.strerror or exc}"
            " (fix: stop the process that holds it, or set another server.port)"
        ) from None


def base_url(server: ServerConfig, sock: socket.socket) -> str:
    return server.base_url(sock.getsockname()[1])


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def serve(
    config: PlatformConfig,
    instances: list[Instance],
    sock: socket.socket,
    on_started: Callable[[Supervisor], None] = lambda _: None,
) -> None:
    """Run the gateway on `sock` and every supervised instance until a stop signal; then stop them all."""
    store = open_store(config.server.store_path)
    supervisor = Supervisor(instances, store=store, store_path=config.server.store_path, log_dir=config.server.log_dir)
    upstream = upstream_pool(config.server)
    requests = RequestLog(store, config.server.requests_kept)
    app = create_app(
        instances=instances,
        supervisor=supervisor,
        server=config.server,
        store=store,
        upstream=upstream,
        base_url=base_url(config.server, sock),
        config_path=config.path.resolve(),
        requests=requests,
    )
    uv_config = uvicorn.Config(
        app,
        http=gateway_protocol(config.server),
        lifespan="off",
        log_level="warning",
        access_log=False,
        proxy_headers=False,  # the client address must be the peer's: the reroute adds it to X-Forwarded-For
        server_header=False,
        date_header=False,  # rerouted responses carry the instance's own
        timeout_graceful_shutdown=5,
        timeout_keep_alive=KEEP_ALIVE_SECONDS + KEEP_ALIVE_GRACE_SECONDS,  # uvicorn's timer, behind the guard's
        h11_max_incomplete_event_size=MAX_HEADER_BYTES + H11_BUFFER_SLACK,  # the guard answers 431 first
    )
    server = _Server(uv_config)
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, server.handle_exit, sig, None)
    announce: asyncio.Task[None] | None = None
    try:
        await supervisor.start()
        # The banner says what each instance's start came to (serving, in error, or down), so it waits for that.
        announce = asyncio.create_task(_announce(supervisor, on_started), name="announce")
        await server.serve(sockets=[sock])
    finally:
        if announce is not None:
            announce.cancel()
        log.info("stopping instances")
        await supervisor.stop()
        await upstream.aclose()
        await requests.aclose()
        store.close()
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


def gateway_protocol(server: ServerConfig) -> Any:
    """The gateway's connections get the integration's guards (ListenerApiModule): a head deadline and a 431 for
    heads over MAX_HEADER_BYTES, server.body_timeout for a body's pauses (BODY_TOTAL_FACTOR times it in all), a
    keep-alive deadline, a write deadline for callers that take no answers, bounded pipelining."""
    seconds = server.body_timeout
    protocol = guarded_http_protocol(
        None,
        keep_alive=KEEP_ALIVE_SECONDS,
        write_timeout=write_timeout_seconds(),
        body_idle=seconds,
        body_total=BODY_TOTAL_FACTOR * seconds,
        body_timeout_detail=(
            f"the request body paused for over {seconds:g} s, or took over {BODY_TOTAL_FACTOR * seconds:g} s in all"
            " (server.body_timeout); send it without pauses"
        ),
    )
    if isinstance(protocol, str):
        log.warning(
            "uvicorn %s differs from the versions the connection guards were checked against (%s): the gateway"
            " serves with its plain %s protocol, without head, body and write deadlines",
            uvicorn.__version__,
            ", ".join(UVICORN_CHECKED),
            protocol,
        )
    return protocol


async def _announce(supervisor: Supervisor, on_started: Callable[[Supervisor], None]) -> None:
    # Past the supervisor's startup timeout (counted from each process's start): the banner does not give up on an
    # instance a moment before the supervisor does.
    await supervisor.settled(timeout=supervisor.startup_timeout + BANNER_GRACE)
    on_started(supervisor)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run an event loop to the end of `main`, on uvloop when it is installed (it comes with uvicorn[standard])."""
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main)
