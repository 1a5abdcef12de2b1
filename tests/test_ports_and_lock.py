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
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]

        mine = listener(port, os.getpgid(0))
        theirs = listener(port, 1)  # as seen for an instance whose process group is pid 1's

    gone = listener(port, os.getpgid(0))
    assert (mine.listening, mine.ours) == (True, True)
    assert (theirs.listening, theirs.ours, theirs.other_pid) == (True, False, os.getpid())
    assert theirs.holder().startswith(f"another process (pid {os.getpid()}")
    assert (gone.listening, gone.ours) == (False, False)


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
