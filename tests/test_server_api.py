"""The server API channel: supervised instances reach platform state by round trips to the platform process."""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

import pytest

from xsoar_local.server_api import MAX_FRAME_BYTES, RemoteStore, ServerChannel, open_channel
from xsoar_local.store import SqliteStore, open_store


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    opened = open_store(tmp_path / "store.db")
    assert isinstance(opened, SqliteStore)
    yield opened
    opened.close()


@pytest.fixture
def remote(store: SqliteStore) -> RemoteStore:
    channel, process_end = open_channel(store, "hooks")
    client = RemoteStore(process_end, "hooks")
    yield client
    client.close()
    channel.close()


def test_calls_act_on_the_platform_store_of_the_bound_instance(store: SqliteStore, remote: RemoteStore) -> None:
    """
    Given: a channel bound to instance `hooks` over the platform's SQLite store
    When: the script side creates incidents and writes context, module health and last run
    Then: the platform's store has them under `hooks`, and the answers are what the store answered
    """
    created = remote.create_incidents("hooks", [{"name": "one"}, {"name": "two", "severity": 2}])
    assert [item["name"] for item in created] == ["one", "two"]
    assert all(item["instance"] == "hooks" and item["id"] for item in created)
    assert store.count_incidents("hooks") == 2

    version = remote.set_integration_context("hooks", {"sample_events": "[]"})
    assert remote.get_integration_context("hooks") == ({"sample_events": "[]"}, version)
    assert store.get_integration_context("hooks") == ({"sample_events": "[]"}, version)

    remote.set_module_health("hooks", "Listening on port 9000 (HTTP).", False)
    assert store.get_module_health("hooks")["message"] == "Listening on port 9000 (HTTP)."  # type: ignore[index]
    remote.set_last_run("hooks", {"next": 3})
    assert remote.get_last_run("hooks") == {"next": 3} == store.get_last_run("hooks")


def test_store_refusals_reach_the_script_as_value_errors(remote: RemoteStore) -> None:
    """
    Given: a context written at version N
    When: the script writes again with a stale version
    Then: ValueError with the store's message, as the real server's errors reach a script; the channel still works
    """
    version = remote.set_integration_context("hooks", {"a": "1"})
    remote.set_integration_context("hooks", {"a": "2"}, version)
    with pytest.raises(ValueError, match="was changed"):
        remote.set_integration_context("hooks", {"a": "3"}, version)
    assert remote.get_integration_context("hooks")[0] == {"a": "2"}


def test_another_instances_state_is_out_of_reach(store: SqliteStore, remote: RemoteStore) -> None:
    """
    Given: a channel bound to `hooks`
    When: the script side names another instance
    Then: ValueError, and nothing is written for that instance
    """
    with pytest.raises(ValueError, match="cannot reach"):
        remote.create_incidents("other", [{"name": "x"}])
    assert store.count_incidents("other") == 0


def test_values_json_cannot_hold_fail_before_anything_is_sent(store: SqliteStore, remote: RemoteStore) -> None:
    """
    Given: an incident holding a set
    When: it is created through the channel
    Then: TypeError on the script side (as with the local stores), and the next call is answered normally
    """
    with pytest.raises(TypeError):
        remote.create_incidents("hooks", [{"name": "bad", "tags": {"a"}}])
    assert remote.create_incidents("hooks", [{"name": "good"}])[0]["name"] == "good"
    assert store.count_incidents("hooks") == 1


def test_concurrent_callers_each_get_their_own_answer(store: SqliteStore, remote: RemoteStore) -> None:
    """
    Given: 8 threads sharing one channel
    When: each creates 25 incidents named after itself, one call at a time
    Then: every call answers with its own incidents, and the store holds all 200 exactly once
    """
    mismatches: list[str] = []

    def work(worker: int) -> None:
        for number in range(25):
            name = f"w{worker}-{number}"
            answer = remote.create_incidents("hooks", [{"name": name}])
            if [item["name"] for item in answer] != [name]:
                mismatches.append(name)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not mismatches
    names = [item["name"] for item in store.list_incidents(instance="hooks", limit=None)]
    assert len(names) == len(set(names)) == 200


def test_a_gone_platform_is_a_clear_error(store: SqliteStore) -> None:
    """
    Given: a channel whose platform end was closed
    When: the script side calls
    Then: ValueError that says the platform did not answer
    """
    channel, process_end = open_channel(store, "hooks")
    channel.close()
    channel.thread.join(5)
    client = RemoteStore(process_end, "hooks")
    with pytest.raises(ValueError, match="platform did not answer create_incidents"):
        client.create_incidents("hooks", [{"name": "lost"}])
    client.close()


def test_the_platform_stops_serving_a_broken_peer_and_releases_its_connection(store: SqliteStore) -> None:
    """
    Given: a served channel that has made one store call
    When: the process end announces a frame over the size limit
    Then: the serving thread ends and closes its SQLite connection (no connection is left per process start)
    """
    channel, process_end = open_channel(store, "hooks")
    client = RemoteStore(process_end, "hooks")
    client.get_last_run("hooks")
    connections = len(store._connections)
    process_end.sendall(struct.pack(">I", MAX_FRAME_BYTES + 1))
    channel.thread.join(5)
    assert not channel.thread.is_alive()
    assert len(store._connections) == connections - 1
    client.close()
    channel.close()


def test_malformed_requests_get_an_error_answer_not_a_dead_channel(store: SqliteStore) -> None:
    """
    Given: a channel
    When: requests name no known call, or carry args that are not a list
    Then: each gets an error answer, and a good request after them is served
    """
    platform_end, process_end = socket.socketpair()
    channel = ServerChannel(platform_end, store, "hooks")
    assert "unknown server API call" in channel.answer({"call": "drop_tables", "args": []})["error"]
    assert "list of `args`" in channel.answer({"call": "get_last_run", "args": "x"})["error"]
    assert channel.answer({"call": "get_last_run"}) == {"result": {}}
    platform_end.close()
    process_end.close()
