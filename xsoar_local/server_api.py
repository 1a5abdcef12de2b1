"""The server API channel: how a supervised instance's `demisto` calls reach the platform's state.

On the real server every `demisto` call that touches platform state (incidents, integration context, module
health, last run) is a blocking round trip to the server process, which does the work. xsoar-local does the same
for the long-running instances it supervises: each process start gets one end of a socket pair (its descriptor
number in `XSOAR_LOCAL_SERVER_FD`), and the platform serves the other end on a thread of its own, against its
SQLite store. The channel is bound to its instance: a call cannot reach another instance's state.

Frames are a 4-byte big-endian length and a UTF-8 JSON document. A request is `{"call": <name>, "args": [...]}`;
the answer is `{"result": <value>}` or `{"error": <message>}`, which the script side raises as `ValueError`, the
way the real server's errors reach a script. One call is in flight at a time per channel (a lock on the script
side), like the real server's one pipe per execution.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from xsoar_local.store import Incident, Store

log = logging.getLogger(__name__)

SERVER_FD_VAR = "XSOAR_LOCAL_SERVER_FD"
MAX_FRAME_BYTES = 1024 * 1024 * 1024  # a frame over this is refused: a broken peer, not a real batch
_LENGTH = struct.Struct(">I")


class ChannelClosed(ConnectionError):
    pass


def send_frame(sock: socket.socket, document: Any) -> None:
    payload = json.dumps(document).encode()
    if len(payload) > MAX_FRAME_BYTES:
        raise ValueError(f"a server API message of {len(payload)} bytes is over the {MAX_FRAME_BYTES}-byte limit")
    sock.sendall(_LENGTH.pack(len(payload)) + payload)


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        count = sock.recv_into(view[received:], size - received)
        if count == 0:
            raise ChannelClosed("the other end closed the server API channel")
        received += count
    return bytes(buffer)


def receive_frame(sock: socket.socket) -> Any:
    (size,) = _LENGTH.unpack(_receive_exactly(sock, _LENGTH.size))
    if size > MAX_FRAME_BYTES:
        raise ChannelClosed(f"a server API message of {size} bytes is over the {MAX_FRAME_BYTES}-byte limit")
    return json.loads(_receive_exactly(sock, size))


# --- the platform side ---


class ServerChannel:
    """Serves one instance process's channel on a daemon thread until the process closes its end (or `close()`)."""

    def __init__(self, sock: socket.socket, store: Store, instance: str) -> None:
        self.sock = sock
        self.store = store
        self.instance = instance
        self.calls: dict[str, Callable[..., Any]] = {
            "create_incidents": lambda incidents: store.create_incidents(instance, incidents),
            "get_integration_context": lambda: list(store.get_integration_context(instance)),
            "set_integration_context": lambda context, version=-1: store.set_integration_context(
                instance, context, version
            ),
            "set_module_health": lambda message, is_error=False: store.set_module_health(instance, message, is_error),
            "get_last_run": lambda: store.get_last_run(instance),
            "set_last_run": lambda obj: store.set_last_run(instance, obj),
        }
        self.thread = threading.Thread(target=self.serve, name=f"server API {instance}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        """Ends the channel; a call in flight gets no answer (its process is gone or going)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def serve(self) -> None:
        try:
            while True:
                try:
                    request = receive_frame(self.sock)
                except (ChannelClosed, OSError, ValueError):
                    return  # the process ended (or sent garbage, which only a broken process does): stop serving
                try:
                    send_frame(self.sock, self.answer(request))
                except OSError:
                    return
        finally:
            self.store.release_thread()

    def answer(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict) or not isinstance(request.get("args", []), list):
            return {"error": "a server API request is an object with `call` and a list of `args`"}
        call = self.calls.get(request.get("call"))  # type: ignore[arg-type]
        if call is None:
            return {"error": f"unknown server API call {request.get('call')!r}"}
        try:
            return {"result": call(*request.get("args", []))}
        except (ValueError, TypeError) as error:  # what the store refuses (a stale context version, bad values)
            return {"error": str(error)}
        except Exception as error:  # a platform failure: the script sees a server error, the platform logs it
            log.exception("instance %r: server API call %r failed", self.instance, request.get("call"))
            return {"error": f"the platform could not serve {request.get('call')}: {error}"}


def open_channel(store: Store, instance: str) -> tuple[ServerChannel, socket.socket]:
    """A served channel for one process start, and the end to hand to the process (close it once started)."""
    platform_end, process_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = ServerChannel(platform_end, store, instance)
    channel.start()
    return channel, process_end


# --- the script side ---


class RemoteStore:
    """The script side of the channel, in the shape of `xsoar_local.store.Store` for what `demisto` calls need."""

    def __init__(self, sock: socket.socket, instance: str) -> None:
        self.sock = sock
        self.instance = instance
        self.lock = threading.Lock()

    @classmethod
    def from_fd(cls, fd: int, instance: str) -> RemoteStore:
        return cls(socket.socket(fileno=fd), instance)

    def _call(self, instance: str, name: str, *args: Any) -> Any:
        if instance != self.instance:
            raise ValueError(f"instance {self.instance!r} cannot reach the state of instance {instance!r}")
        with self.lock:
            try:
                send_frame(self.sock, {"call": name, "args": list(args)})
                answer = receive_frame(self.sock)
            except (ChannelClosed, OSError) as error:
                raise ValueError(f"the platform did not answer {name}: {error} (is xsoar-local running?)") from None
        if "error" in answer:
            raise ValueError(answer["error"])
        return answer.get("result")

    def create_incidents(self, instance: str, incidents: list[Incident]) -> list[Incident]:
        return self._call(instance, "create_incidents", incidents)

    def get_integration_context(self, instance: str) -> tuple[dict[str, Any], int]:
        context, version = self._call(instance, "get_integration_context")
        return context, version

    def set_integration_context(self, instance: str, context: dict[str, Any], version: int = -1) -> int:
        return self._call(instance, "set_integration_context", context, version)

    def set_module_health(self, instance: str, message: str, is_error: bool = False) -> None:
        self._call(instance, "set_module_health", message, is_error)

    def get_last_run(self, instance: str) -> dict[str, Any]:
        return self._call(instance, "get_last_run")

    def set_last_run(self, instance: str, obj: dict[str, Any]) -> None:
        self._call(instance, "set_last_run", obj)

    def close(self) -> None:
        self.sock.close()

    def release_thread(self) -> None:
        pass
