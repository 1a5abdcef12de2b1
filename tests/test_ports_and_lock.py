"""Who holds a listen port, and the data dir lock, checked in this process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from xsoar_local.errors import XsoarLocalError
from xsoar_local.lock import DataDirLock, read_holder
from xsoar_local.ports import can_see_sockets, listener

pytestmark = pytest.mark.skipif(not can_see_sockets(), reason="socket ownership is read from Linux /proc")


def test_a_port_this_process_group_listens_on_is_ours_and_anothers_is_named() -> None:
    # A process group other than this one's: as the platform sees it for an instance that does not hold the port.
    other = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE, start_new_session=True
    )
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            port = sock.getsockname()[1]

            mine = listener(port, os.getpgid(0))
            theirs = listener(port, other.pid)
    finally:
        other.communicate(b"")

    gone = listener(port, os.getpgid(0))
    assert (mine.listening, mine.ours) == (True, True)
    assert (theirs.listening, theirs.ours, theirs.other_pid) == (True, False, os.getpid())
    assert theirs.holder().startswith(f"another process (pid {os.getpid()}")
    assert (gone.listening, gone.ours) == (False, False)


def test_only_listeners_reachable_from_127_0_0_1_count() -> None:
    """A listener on another loopback address does not take the gateway's connections to 127.0.0.1:port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        sock.listen()
        found = listener(sock.getsockname()[1], os.getpgid(0))
    assert (found.listening, found.ours) == (False, False)


def test_a_listener_in_a_child_of_the_group_is_ours() -> None:
    code = "import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); print(s.getsockname()[1]);"
    code += " sys.stdout.flush(); sys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())  # type: ignore[union-attr]
        found = listener(port, os.getpgid(0))  # the child is in this process's group, but is not its leader
    finally:
        child.communicate("")
    assert (found.listening, found.ours) == (True, True)


def test_the_data_dir_lock_is_held_once_and_says_by_whom(tmp_path: Path) -> None:
    path = tmp_path / "data" / "xsoar-local.lock"
    first = DataDirLock(path)
    first.acquire(config="/a/xsoar-local.yaml")
    first.update(url="http://127.0.0.1:1234")
    try:
        with pytest.raises(XsoarLocalError) as refused:
            DataDirLock(path).acquire(config="/b/xsoar-local.yaml")
        holder = read_holder(path)
    finally:
        first.release()

    assert f"(pid {os.getpid()}, gateway http://127.0.0.1:1234, config /a/xsoar-local.yaml)" in str(refused.value)
    assert holder == {"pid": os.getpid(), "url": "http://127.0.0.1:1234", "config": "/a/xsoar-local.yaml"}
    assert read_holder(path) is None
    with DataDirLock(path) as again:
        again.acquire()  # free again


def test_a_status_reading_the_lock_at_that_moment_does_not_make_up_fail(tmp_path: Path) -> None:
    """`read_holder` takes a shared lock for a moment; `acquire` waits that out instead of reporting a platform."""
    import fcntl
    import threading

    path = tmp_path / "xsoar-local.lock"
    path.write_text("")
    reader = os.open(path, os.O_RDONLY)
    fcntl.flock(reader, fcntl.LOCK_SH)
    threading.Timer(0.2, lambda: os.close(reader)).start()  # the reader lets go while `acquire` retries

    with DataDirLock(path) as lock:
        lock.acquire(config="/a/xsoar-local.yaml")
        assert read_holder(path) == {"pid": os.getpid(), "config": "/a/xsoar-local.yaml"}


def test_a_data_dir_that_cannot_be_made_names_the_setting(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")

    with pytest.raises(XsoarLocalError, match=r"data dir .*file/data cannot be used: .*fix: set server.data_dir"):
        DataDirLock(tmp_path / "file" / "data" / "xsoar-local.lock").acquire()


def test_a_busy_hosts_tcp_table_is_read_a_line_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a table of 100,000 TIME_WAIT lines and one listener (a busy host's, read twice a second per instance),
    the listener's inode is found while at most a few KiB are held at once: read whole, the table was megabytes of
    short-lived text per check, which fragmented the worker threads' malloc arenas (the gateway grew for ever)."""
    import tracemalloc

    from xsoar_local import ports

    heading = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    waiting = (
        "{n:5d}: 0100007F:{port:04X} 0100007F:9C40 06 00000000:00000000 03:00000A2B 00000000     0        0 0 3 0\n"
    )
    table = tmp_path / "tcp"
    with table.open("w", encoding="ascii") as out:
        out.write(heading)
        for n in range(100_000):
            out.write(waiting.format(n=n, port=8000 + n % 500))
        out.write(
            "100000: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0  0 424242 1 0 100 0\n"
        )
    monkeypatch.setattr(ports, "_PROC_NET_TCP", (table, tmp_path / "absent"))
    tracemalloc.start()
    try:
        found = ports._listening_inodes(0x1F90)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found == {"424242"}
    assert table.stat().st_size > 9_000_000 and peak < 256 * 1024
