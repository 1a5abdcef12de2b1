"""The store backends: incidents, integration context, module health and last run, shared across processes."""

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest

from xsoar_local import store as store_module
from xsoar_local.store import IncidentQuery, MemoryStore, SqliteStore, Store, open_store

REPO = Path(__file__).resolve().parents[1]
SCRIPT_ENV = REPO / "xsoar_local" / "script_env"


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    opened = open_store(None if request.param == "memory" else tmp_path / "store.db")
    yield opened
    opened.close()


def run_script_env(code: str, store_path: Path, instance: str) -> dict:
    """Run `code` in a separate Python process with the script environment on the given store; return its JSON."""
    env = {
        **os.environ,
        "XSOAR_LOCAL_STORE": str(store_path),
        "DEMISTO_INSTANCE_NAME": instance,
        "PYTHONPATH": str(SCRIPT_ENV),
    }
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(completed.stdout)


def test_open_store_picks_backend(tmp_path: Path) -> None:
    """
    Given: no path, then a path
    When: opening the store
    Then: the in-memory store, then a SQLite store whose file exists
    """
    assert isinstance(open_store(None), MemoryStore)
    sqlite_store = open_store(tmp_path / "sub" / "store.db")
    assert isinstance(sqlite_store, SqliteStore)
    assert (tmp_path / "sub" / "store.db").exists()
    sqlite_store.close()


def test_create_incidents_stores_ids_created_instance_and_all_fields(store: Store) -> None:
    """
    Given: two incidents with every incident field, and one with only a name
    When: creating them for an instance
    Then: each gets an increasing string id, an ISO UTC created time and the instance, keeps every field given,
          and gets the defaults for type, severity and occurred
    """
    full = {
        "name": "Full",
        "type": "Phishing",
        "severity": 0.5,
        "occurred": "2024-05-01T10:00:00Z",
        "rawJSON": json.dumps({"a": 1}),
        "details": "some details",
        "labels": [{"type": "source", "value": "webhook"}],
        "customFields": {"team": "red"},
        "dbotMirrorId": "m-1",
    }
    created = store.create_incidents("inst-a", [full, {"name": "Bare"}])

    assert [item["id"] for item in created] == ["1", "2"]
    assert created[0] == {**full, "id": "1", "created": created[0]["created"], "instance": "inst-a"}
    assert created[0]["created"].endswith("Z")
    bare = created[1]
    assert (bare["type"], bare["severity"], bare["occurred"]) == ("Unclassified", 0, bare["created"])
    assert store.get_incident("1") == created[0]
    assert store.get_incident(2) == created[1]
    assert store.get_incident("404") is None


def test_list_and_count_incidents(store: Store) -> None:
    """
    Given: incidents created for two instances
    When: listing and counting them with filters
    Then: newest first, filtered by instance, limited, and filtered by creation time
    """
    store.create_incidents("a", [{"name": "a1"}, {"name": "a2"}])
    store.create_incidents("b", [{"name": "b1"}])

    assert [item["name"] for item in store.list_incidents()] == ["b1", "a2", "a1"]
    assert [item["name"] for item in store.list_incidents(instance="a")] == ["a2", "a1"]
    assert [item["name"] for item in store.list_incidents(limit=1)] == ["b1"]
    assert len(store.list_incidents(limit=None)) == 3
    assert len(store.list_incidents(since="2000-01-01T00:00:00Z")) == 3
    assert store.list_incidents(since="2999-01-01T00:00:00") == []
    assert (store.count_incidents(), store.count_incidents("a"), store.count_incidents("c")) == (3, 2, 0)


def test_integration_context_versions(store: Store) -> None:
    """
    Given: an instance without integration context
    When: setting it with and without versions
    Then: the version grows by one per write, and a write with a stale version raises ValueError and changes nothing
    """
    assert store.get_integration_context("a") == ({}, 0)
    assert store.set_integration_context("a", {"k": "v1"}) == 1
    assert store.set_integration_context("a", {"k": "v2"}, version=1) == 2

    with pytest.raises(ValueError):
        store.set_integration_context("a", {"k": "stale"}, version=1)

    assert store.get_integration_context("a") == ({"k": "v2"}, 2)
    assert store.get_integration_context("b") == ({}, 0)


def test_module_health_and_last_run(store: Store) -> None:
    """
    Given: an instance
    When: setting module health and last run
    Then: they read back per instance
    """
    assert store.get_module_health("a") is None
    store.set_module_health("a", "listen port 8000 is already in use", is_error=True)
    health = store.get_module_health("a")
    assert health is not None
    assert (health["message"], health["is_error"]) == ("listen port 8000 is already in use", True)
    assert health["updated"].endswith("Z")

    assert store.get_last_run("a") == {}
    store.set_last_run("a", {"time": "t1"})
    assert store.get_last_run("a") == {"time": "t1"}
    assert store.get_last_run("b") == {}


def test_concurrent_threads_get_unique_ids(store: Store) -> None:
    """
    Given: eight threads sharing one store
    When: each creates 25 batches of 4 incidents at once
    Then: all 800 incidents get distinct ids 1..800
    """

    def create() -> None:
        for _ in range(25):
            store.create_incidents("a", [{"name": str(i)} for i in range(4)])

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    ids = [int(item["id"]) for item in store.list_incidents(limit=None)]
    assert sorted(ids) == list(range(1, 801))


def store_descriptors(path: Path) -> int:
    """This process's descriptors open on the store's files (the file, -wal, -shm)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        count += target.startswith(str(path))
    return count


def test_threads_that_come_and_go_leave_no_connections_open(tmp_path: Path) -> None:
    """
    Given: a SQLite store used from short-lived threads, as a thread pool's come and go (the read API's)
    When: 60 threads each read and write once, one after another, and exit
    Then: at most MAX_IDLE_CONNECTIONS connections stay open (with one connection per thread, 60 stayed open
          with three descriptors each, for as long as the store: the gateway's descriptors grew through a soak)
    """
    path = tmp_path / "store.db"
    store = SqliteStore(path)

    def use() -> None:
        store.create_incidents("a", [{"name": "x"}])
        store.count_incidents()
        store.get_integration_context("a")

    for _ in range(60):
        thread = threading.Thread(target=use)
        thread.start()
        thread.join()

    assert store.opened <= store_module.MAX_IDLE_CONNECTIONS
    assert store_descriptors(path) <= 3 * store_module.MAX_IDLE_CONNECTIONS
    # Many at once: each call has a connection of its own, and what stays open is bounded by the calls at once
    # (SQLite keeps a closed connection's descriptors for reuse while others hold locks on the file), not by how
    # many calls or threads there were.
    for _ in range(3):
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(lambda _: use(), range(200)))
        assert store_descriptors(path) <= 3 * 16
    assert store.count_incidents() == 660
    store.close()
    assert store_descriptors(path) == 0


def test_sqlite_store_uses_wal(tmp_path: Path) -> None:
    """
    Given: a new SQLite store
    When: inspecting the file
    Then: it is in WAL mode, so readers in other processes do not block the writer
    """
    SqliteStore(tmp_path / "store.db").close()
    with sqlite3.connect(tmp_path / "store.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_second_process_shares_the_sqlite_store(tmp_path: Path) -> None:
    """
    Given: a SQLite store where this process created an incident and set integration context
    When: another process opens the same file through the script environment and writes its own
    Then: it sees this process's data, and this process sees what it wrote, without reopening the store
    """
    path = tmp_path / "store.db"
    store = SqliteStore(path)
    store.create_incidents("webhook", [{"name": "from parent"}])
    store.set_integration_context("webhook", {"sample_events": "[]"})

    seen = run_script_env(
        """
        import json
        import demistomock as demisto
        store = demisto.get_store()
        seen = {
            "names": [item["name"] for item in store.list_incidents(instance=demisto.integrationInstance())],
            "context": demisto.getIntegrationContextVersioned(),
        }
        demisto.createIncidents([{"name": "from child"}])
        demisto.setIntegrationContextVersioned({"sample_events": "[1]"}, version=seen["context"]["version"])
        demisto.updateModuleHealth("running")
        print(json.dumps(seen))
        """,
        path,
        "webhook",
    )

    assert seen == {"names": ["from parent"], "context": {"context": {"sample_events": "[]"}, "version": 1}}
    assert [item["name"] for item in store.list_incidents()] == ["from child", "from parent"]
    assert store.list_incidents()[0]["id"] == "2"
    assert store.get_integration_context("webhook") == ({"sample_events": "[1]"}, 2)
    assert (store.get_module_health("webhook") or {})["message"] == "running"
    store.close()


def test_processes_writing_at_once_get_unique_ids(tmp_path: Path) -> None:
    """
    Given: a SQLite store file
    When: three processes each create 50 batches of 2 incidents at the same time
    Then: all 300 incidents are stored with distinct ids
    """
    path = tmp_path / "store.db"
    SqliteStore(path).close()
    code = """
        import json
        import demistomock as demisto
        for _ in range(50):
            demisto.createIncidents([{"name": "x"}, {"name": "y"}])
        print(json.dumps({}))
    """
    with ThreadPoolExecutor(max_workers=3) as pool:
        for future in [pool.submit(run_script_env, code, path, f"i{n}") for n in range(3)]:
            future.result()

    store = SqliteStore(path)
    ids = [int(item["id"]) for item in store.list_incidents(limit=None)]
    assert sorted(ids) == list(range(1, 301))
    assert store.count_incidents("i0") == 100
    store.close()


def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path):
    """
    Given a store file that does not exist yet
    When three processes open it at the same moment, ten times over
    Then every process succeeds (turning on WAL is retried when another process holds the file).
    """
    failures = []
    for attempt in range(10):
        path = tmp_path / f"store-{attempt}.db"
        start = time.time() + 0.4
        code = (
            "import time; from xsoar_local.store import open_store; "
            f"time.sleep(max(0, {start} - time.time())); s = open_store({str(path)!r}); "
            "s.set_module_health('i', 'm'); s.close()"
        )
        processes = [
            subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stderr=subprocess.PIPE, text=True)
            for _ in range(3)
        ]
        for process in processes:
            _, stderr = process.communicate(timeout=60)
            if process.returncode:
                failures.append(stderr.strip().splitlines()[-1])
    assert failures == []


@pytest.mark.parametrize(
    "incident_id", ["99999999999999999999", "9223372036854775808", "1_0", "01", "+1", " 1", "-1", "0", "1.0", ""]
)
def test_an_id_the_store_never_hands_out_finds_nothing(store: Store, incident_id: str) -> None:
    """Both backends: only the canonical decimal id finds an incident; nothing else raises or matches."""
    store.create_incidents("a", [{"name": f"n{i}"} for i in range(10)])

    assert store.get_incident(incident_id) is None
    assert store.get_incident("10")["name"] == "n9"  # type: ignore[index]


def test_non_json_values_are_refused_alike_by_both_backends(store: Store) -> None:
    """Both backends store what a JSON round trip keeps: a value JSON cannot hold raises TypeError (no str()
    fallback), and a severity that is not a number stays in the incident without breaking the insert."""
    moment = datetime.now()
    with pytest.raises(TypeError):
        store.create_incidents("a", [{"name": "d", "occurred": moment}])
    with pytest.raises(TypeError):
        store.set_integration_context("a", {"when": moment})
    with pytest.raises(TypeError):
        store.set_last_run("a", {"when": moment})
    assert store.count_incidents() == 0
    assert store.get_integration_context("a") == ({}, 0)
    assert store.get_last_run("a") == {}

    (created,) = store.create_incidents("a", [{"name": "l", "severity": [1]}])
    assert store.get_incident(created["id"])["severity"] == [1]  # type: ignore[index]


def test_created_times_are_taken_under_the_write_lock(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The created time is read while the id is reserved, so ids and created times sort the same way."""
    held: list[bool] = []
    real_now = store_module.utc_now

    def checking_now() -> str:
        if isinstance(store, MemoryStore):
            held.append(store._lock.locked())
        else:
            other = sqlite3.connect(store.path, timeout=0, isolation_level=None)  # type: ignore[attr-defined]
            try:
                other.execute("BEGIN IMMEDIATE")  # fails while the store's write transaction holds the lock
            except sqlite3.OperationalError:
                held.append(True)
            else:
                other.execute("ROLLBACK")
                held.append(False)
            finally:
                other.close()
        return real_now()

    monkeypatch.setattr(store_module, "utc_now", checking_now)
    store.create_incidents("a", [{"name": "x"}])

    assert held == [True]


def test_an_old_store_loses_its_unused_indexes_once(tmp_path: Path) -> None:
    """
    Given: a store file made by an earlier version, with four incident indexes the read API does not use
    When: opening it, then opening it again after an index of that name was made by hand
    Then: the first open drops the four and records the schema version; later opens run no migration
    """
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE incidents (id INTEGER PRIMARY KEY AUTOINCREMENT, instance TEXT NOT NULL,"
            " created TEXT NOT NULL, name TEXT, type TEXT, severity REAL, occurred TEXT, data TEXT NOT NULL)"
        )
        for column in ("name", "type", "severity", "occurred"):
            conn.execute(f"CREATE INDEX incidents_{column} ON incidents ({column})")
    conn.close()

    def indexes() -> set[str]:
        with sqlite3.connect(path) as check:
            rows = check.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'incidents'")
            names = {name for (name,) in rows}
        check.close()
        return names

    SqliteStore(path).close()
    assert indexes() == {"incidents_instance", "incidents_created"}
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        conn.execute("CREATE INDEX incidents_name ON incidents (name)")
    conn.close()

    SqliteStore(path).close()
    assert "incidents_name" in indexes()


@pytest.mark.parametrize("count", [1, 2, 3, 31, 32, 33, 145, 1000])
def test_a_batch_of_any_size_is_stored_whole_in_order(tmp_path, count):
    """
    Given a batch of `count` incidents (inserted in chunks of several rows per statement)
    When it is created
    Then every incident is stored exactly once, with consecutive ids in the order sent, and read back equal.
    """
    store = open_store(tmp_path / "store.db")
    created = store.create_incidents("hooks", [{"name": f"n{number}", "severity": 1} for number in range(count)])
    ids = [int(item["id"]) for item in created]
    assert ids == list(range(ids[0], ids[0] + count))
    listed = store.list_incidents(instance="hooks", limit=None)
    assert sorted(int(item["id"]) for item in listed) == ids
    assert {item["id"]: item for item in listed} == {item["id"]: item for item in created}
    assert store.count_incidents("hooks") == count
    store.close()


def mixed_incidents(store: Store) -> None:
    store.create_incidents(
        "github",
        [
            {
                "name": "push to main",
                "type": "Git",
                "severity": 1,
                "occurred": "2026-01-03T00:00:00Z",
                "rawJSON": json.dumps({"repository": "acme/widgets", "pusher": "octocat"}),
            },
            {
                "name": "https://example.com/" + "x" * 300,
                "type": "Git",
                "severity": 4,
                "occurred": "2026-01-01T00:00:00Z",
                "rawJSON": json.dumps({"alert": "Credential-Leak detected"}),
            },
        ],
    )
    store.create_incidents(
        "gitlab",
        [
            {
                "name": "merge request",
                "type": "Review",
                "severity": 2,
                "occurred": "2026-01-02T00:00:00Z",
                "rawJSON": {"project": "acme/widgets", "état": "ouvert"},
            },
            {"name": "pipeline failed", "severity": 0.5},
        ],
    )


def names(found: tuple[int, list[dict]]) -> tuple[int, list[str]]:
    total, items = found
    return total, [item["name"][:20] for item in items]


def test_find_incidents_filters_sorts_and_pages(store: Store) -> None:
    mixed_incidents(store)
    assert names(store.find_incidents(IncidentQuery())) == (
        4,
        ["pipeline failed", "merge request", "https://example.com/", "push to main"],
    )
    assert names(store.find_incidents(IncidentQuery(instance="github", type="Git", severity=4.0))) == (
        1,
        ["https://example.com/"],
    )
    by_severity = store.find_incidents(IncidentQuery(sort="severity", descending=False))
    assert [item["severity"] for item in by_severity[1]] == [0.5, 1, 2, 4]
    by_occurred = store.find_incidents(IncidentQuery(instance="github", sort="occurred", descending=False))
    assert names(by_occurred)[1] == ["https://example.com/", "push to main"]
    page = store.find_incidents(IncidentQuery(offset=1, limit=2))
    assert names(page) == (4, ["merge request", "https://example.com/"])
    assert store.find_incidents(IncidentQuery(type="Unclassified"))[0] == 1  # the type the store gave it


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("widgets", ["merge request", "push to main"]),  # a word of the rawJSON text (object or string)
        ("ACME widg", ["merge request", "push to main"]),  # every word; the last one as a prefix
        ("credential-leak", ["https://example.com/"]),
        ("ouvert", ["merge request"]),
        ("push", ["push to main"]),  # the name
        ("octocat merge", []),
        ('" OR * NEAR(', []),  # FTS5 syntax is only words here
        ("   ", ["pipeline failed", "merge request", "https://example.com/", "push to main"]),
    ],
)
def test_find_incidents_searches_the_name_and_the_raw_json(store: Store, text: str, expected: list[str]) -> None:
    mixed_incidents(store)
    total, found = names(store.find_incidents(IncidentQuery(text=text)))
    assert (total, found) == (len(expected), expected)


def test_an_old_store_gets_its_incidents_searchable(tmp_path: Path) -> None:
    """A store made before the search index: its incidents are indexed once, at the first open."""
    path = tmp_path / "old.db"
    made = SqliteStore(path)
    mixed_incidents(made)
    made.close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE incidents_text")
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    reopened = SqliteStore(path)
    assert names(reopened.find_incidents(IncidentQuery(text="widgets")))[0] == 2
    reopened.close()
