"""Per-instance platform state: incidents, integration context, module health and last run.

Two backends behind one API: `MemoryStore` for unit tests and `SqliteStore` for the platform, where the
integration process and the platform process share one file (see docs/script-env-contract.md).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

DEFAULT_INCIDENT_TYPE = "Unclassified"
BUSY_TIMEOUT_MS = 30_000
MAX_IDLE_CONNECTIONS = 4  # SqliteStore's pool: connections kept open between calls
# An incident id as the store hands it out: a positive decimal, no sign, no leading zero, no `_`, within int64.
_INCIDENT_ID = re.compile(r"[1-9][0-9]{0,18}")
_MAX_INCIDENT_ID = 2**63 - 1

Incident = dict[str, Any]
RequestEntry = dict[str, Any]  # one entry of the requests log (xsoar_local/request_log.py)
INCIDENT_SORTS = ("created", "occurred", "severity")
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class IncidentQuery:
    """Which incidents, in which order, which page (the page and `GET /incidents` ask this)."""

    instance: str | None = None
    type: str | None = None
    severity: float | None = None
    since: str | None = None  # created at or after (ISO-8601; see normalize_since)
    text: str = ""  # words that the name or the rawJSON text holds (the last one as a prefix)
    sort: str = "created"
    descending: bool = True
    offset: int = 0
    limit: int = 50

    def words(self) -> list[str]:
        return [word.lower() for word in _WORD.findall(self.text)]


def _text_of(incident: Incident) -> tuple[str, str]:
    """What the search looks at: the name and the rawJSON text."""
    raw = incident.get("rawJSON")
    if raw is not None and not isinstance(raw, str):
        raw = json.dumps(raw, ensure_ascii=False)
    return _column_text(incident.get("name") or ""), _column_text(raw or "")


def _fts_query(words: list[str]) -> str:
    """Every word (the last as a prefix, as one types), each quoted: no FTS5 syntax gets through."""
    quoted = [f'"{word}"' for word in words]
    quoted[-1] += "*"
    return " ".join(quoted)


class Store(Protocol):
    def create_incidents(self, instance: str, incidents: list[Incident]) -> list[Incident]: ...
    def list_incidents(
        self, *, instance: str | None = None, since: str | None = None, limit: int | None = 50
    ) -> list[Incident]: ...
    def get_incident(self, incident_id: str | int) -> Incident | None: ...
    def count_incidents(self, instance: str | None = None) -> int: ...
    def find_incidents(self, query: IncidentQuery) -> tuple[int, list[Incident]]: ...
    def get_integration_context(self, instance: str) -> tuple[dict[str, Any], int]: ...
    def set_integration_context(self, instance: str, context: dict[str, Any], version: int = -1) -> int: ...
    def set_module_health(self, instance: str, message: str, is_error: bool = False) -> None: ...
    def get_module_health(self, instance: str) -> dict[str, Any] | None: ...
    def get_last_run(self, instance: str) -> dict[str, Any]: ...
    def set_last_run(self, instance: str, obj: dict[str, Any]) -> None: ...
    def add_requests(self, entries: list[RequestEntry], kept: int) -> None: ...
    def list_requests(
        self, *, instance: str | None = None, before: int | None = None, limit: int = 50
    ) -> list[RequestEntry]: ...
    def get_request(self, request_id: str | int) -> RequestEntry | None: ...
    def request_of_incident(self, incident: Incident) -> RequestEntry | None: ...
    def count_requests(self, instance: str | None = None) -> int: ...
    def close(self) -> None: ...


def open_store(path: str | os.PathLike[str] | None) -> Store:
    """The in-memory store for `None`, else the SQLite store file at `path`."""
    return MemoryStore() if path is None else SqliteStore(path)


def utc_now() -> str:
    return _iso(datetime.now(timezone.utc))


def _iso(moment: datetime) -> str:
    # One fixed format, so that `created` values compare correctly as strings.
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def normalize_since(since: str) -> str:
    """`since` (ISO-8601, UTC if no offset) in the store's `created` format; ValueError if it is not a time
    the format can hold."""
    moment = datetime.fromisoformat(since)
    try:
        return _iso(moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc))
    except OverflowError:
        raise ValueError(f"{since!r} is out of range in UTC") from None


def _incident_key(incident_id: str | int) -> int | None:
    """The row id for an incident id, or None when it cannot be one the store handed out."""
    text = str(incident_id)
    if not _INCIDENT_ID.fullmatch(text) or int(text) > _MAX_INCIDENT_ID:
        return None
    return int(text)


def _copy(value: Any) -> Any:
    """A deep, JSON-shaped copy: both backends hand out what a round trip to the server would."""
    return json.loads(json.dumps(value))


def _stored_incident(incident: Incident, incident_id: int, instance: str, created: str, copy: bool = True) -> Incident:
    stored = _copy(incident) if copy else dict(incident)
    stored.update(id=str(incident_id), created=created, instance=instance)
    stored["type"] = stored.get("type") or DEFAULT_INCIDENT_TYPE
    stored["severity"] = stored.get("severity") or 0
    stored["occurred"] = stored.get("occurred") or created
    return stored


def _severity_column(value: Any) -> float | None:
    """The severity column holds numbers only; anything else stays in the row's JSON alone."""
    return value if isinstance(value, int | float) else None


def _column_text(value: Any) -> str:
    """Column text SQLite can hold: lone surrogates (possible in JSON text) become U+FFFD."""
    text = str(value)
    if text.isascii():
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


_INSERT_INCIDENTS = "INSERT INTO incidents (id, instance, created, name, type, severity, occurred, data) VALUES "
# Rows per statement: a handful of statements, each prepared once and cached; at most 896 parameters, under the
# 999 that SQLite before 3.32 allows.
_INSERT_CHUNKS = (112, 32, 8, 2, 1)


def _insert_incident_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Inserts the rows with multi-row INSERT statements: one SQLite step per chunk instead of one per row, so the
    writing thread gives up and takes back the GIL (which the sqlite3 module releases around every step) once per
    chunk; with other threads busy, each hand-over costs more than the insert itself."""
    position = 0
    for size in _INSERT_CHUNKS:
        statement = _INSERT_INCIDENTS + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * size)
        while len(rows) - position >= size:
            conn.execute(statement, [value for row in rows[position : position + size] for value in row])
            position += size


def _switch_to_wal(conn: sqlite3.Connection) -> None:
    """Turn on WAL. When several processes open a new store file at once, the switch can meet a lock that the
    busy timeout does not cover (SQLite answers `database is locked` at once): retry for a bounded time."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _check_version(instance: str, version: int, stored: int) -> None:
    if version != -1 and version != stored:
        raise ValueError(
            f"Integration context of instance {instance!r} was changed: version {version} given, {stored} stored"
        )


def _new_incidents(entry: RequestEntry, created: dict[str, tuple[str, str]]) -> list[str] | None:
    """Of the incidents a request's answer listed, those it created: of its instance and created after it started
    (a duplicate delivery is answered with incidents an earlier request created). `created`: id -> (instance,
    created time)."""
    answered = entry.get("incident_ids")
    if answered is None:
        return None
    return [
        item
        for item in answered
        if item in created and created[item][0] == entry["instance"] and created[item][1] >= entry["time"]
    ]


def _check_kept(kept: int) -> None:
    if kept < 1:
        raise ValueError(f"the requests log keeps at least 1 entry per instance, not {kept}")


class MemoryStore:
    """Everything in dicts behind one lock; the default for unit tests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._incidents: list[Incident] = []
        self._contexts: dict[str, tuple[dict[str, Any], int]] = {}
        self._health: dict[str, dict[str, Any]] = {}
        self._last_runs: dict[str, dict[str, Any]] = {}
        self._requests: list[RequestEntry] = []
        self._request_ids = 0

    def create_incidents(self, instance: str, incidents: list[Incident]) -> list[Incident]:
        with self._lock:
            # Taken under the lock: ids and created times are in the same order.
            created = utc_now()
            first_id = len(self._incidents) + 1
            stored = [_stored_incident(item, first_id + i, instance, created) for i, item in enumerate(incidents)]
            self._incidents.extend(stored)
        return _copy(stored)

    def list_incidents(
        self, *, instance: str | None = None, since: str | None = None, limit: int | None = 50
    ) -> list[Incident]:
        since = normalize_since(since) if since else None
        with self._lock:
            found = [
                item
                for item in reversed(self._incidents)
                if (instance is None or item["instance"] == instance) and (since is None or item["created"] >= since)
            ]
        return _copy(found if limit is None else found[:limit])

    def get_incident(self, incident_id: str | int) -> Incident | None:
        key = _incident_key(incident_id)
        with self._lock:
            found = self._incidents[key - 1] if key is not None and key <= len(self._incidents) else None
        return _copy(found)

    def count_incidents(self, instance: str | None = None) -> int:
        with self._lock:
            return sum(1 for item in self._incidents if instance is None or item["instance"] == instance)

    def find_incidents(self, query: IncidentQuery) -> tuple[int, list[Incident]]:
        words = query.words()
        since = normalize_since(query.since) if query.since else None

        def matches(item: Incident) -> bool:
            if query.instance is not None and item["instance"] != query.instance:
                return False
            if query.type is not None and item["type"] != query.type:
                return False
            if query.severity is not None and _severity_column(item["severity"]) != query.severity:
                return False
            if since is not None and item["created"] < since:
                return False
            if not words:
                return True
            found = [word.lower() for text in _text_of(item) for word in _WORD.findall(text)]
            return all(word in found for word in words[:-1]) and any(item.startswith(words[-1]) for item in found)

        with self._lock:
            found = [item for item in self._incidents if matches(item)]
        key = {
            "created": lambda item: int(item["id"]),
            "occurred": lambda item: (str(item["occurred"]), int(item["id"])),
            "severity": lambda item: (_severity_column(item["severity"]) or 0, int(item["id"])),
        }[query.sort]
        found.sort(key=key, reverse=query.descending)
        return len(found), _copy(found[query.offset : query.offset + query.limit])

    def get_integration_context(self, instance: str) -> tuple[dict[str, Any], int]:
        with self._lock:
            context, version = self._contexts.get(instance, ({}, 0))
        return _copy(context), version

    def set_integration_context(self, instance: str, context: dict[str, Any], version: int = -1) -> int:
        with self._lock:
            stored = self._contexts.get(instance, ({}, 0))[1]
            _check_version(instance, version, stored)
            self._contexts[instance] = (_copy(context), stored + 1)
        return stored + 1

    def set_module_health(self, instance: str, message: str, is_error: bool = False) -> None:
        with self._lock:
            self._health[instance] = {"message": message, "is_error": is_error, "updated": utc_now()}

    def get_module_health(self, instance: str) -> dict[str, Any] | None:
        with self._lock:
            return _copy(self._health.get(instance))

    def get_last_run(self, instance: str) -> dict[str, Any]:
        with self._lock:
            return _copy(self._last_runs.get(instance, {}))

    def set_last_run(self, instance: str, obj: dict[str, Any]) -> None:
        with self._lock:
            self._last_runs[instance] = _copy(obj)

    def add_requests(self, entries: list[RequestEntry], kept: int) -> None:
        _check_kept(kept)
        with self._lock:
            for entry in entries:
                self._request_ids += 1
                wanted = set(entry.get("incident_ids") or ())
                created = {
                    item["id"]: (item["instance"], item["created"]) for item in self._incidents if item["id"] in wanted
                }
                stored = {**_copy(entry), "id": self._request_ids, "new_incident_ids": _new_incidents(entry, created)}
                self._requests.append(stored)
            for instance in {entry["instance"] for entry in entries}:
                excess = sum(1 for item in self._requests if item["instance"] == instance) - kept
                remaining = []
                for item in self._requests:  # oldest first
                    if item["instance"] == instance and excess > 0:
                        excess -= 1
                        continue
                    remaining.append(item)
                self._requests = remaining

    def list_requests(
        self, *, instance: str | None = None, before: int | None = None, limit: int = 50
    ) -> list[RequestEntry]:
        with self._lock:
            found = [
                item
                for item in reversed(self._requests)
                if (instance is None or item["instance"] == instance) and (before is None or item["id"] < before)
            ]
        return _copy(found[:limit])

    def get_request(self, request_id: str | int) -> RequestEntry | None:
        key = _incident_key(request_id)
        with self._lock:
            found = next((item for item in self._requests if item["id"] == key), None)
        return _copy(found)

    def request_of_incident(self, incident: Incident) -> RequestEntry | None:
        with self._lock:
            found = next(
                (
                    item
                    for item in reversed(self._requests)
                    if item["instance"] == incident["instance"] and incident["id"] in (item["new_incident_ids"] or ())
                ),
                None,
            )
        return _copy(found)

    def count_requests(self, instance: str | None = None) -> int:
        with self._lock:
            return sum(1 for item in self._requests if instance is None or item["instance"] == instance)

    def close(self) -> None:
        pass


_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS incidents (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        instance TEXT NOT NULL,
        created TEXT NOT NULL,
        name TEXT,
        type TEXT,
        severity REAL,
        occurred TEXT,
        data TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS incidents_instance ON incidents (instance, id)",
    "CREATE INDEX IF NOT EXISTS incidents_created ON incidents (created)",
    """CREATE TABLE IF NOT EXISTS integration_context (
        instance TEXT PRIMARY KEY,
        context TEXT NOT NULL,
        version INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS module_health (
        instance TEXT PRIMARY KEY,
        message TEXT NOT NULL,
        is_error INTEGER NOT NULL,
        updated TEXT NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS last_run (instance TEXT PRIMARY KEY, data TEXT NOT NULL)",
    # The requests log (xsoar_local/request_log.py): bounded per instance, so deleted from the oldest.
    """CREATE TABLE IF NOT EXISTS requests (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        instance TEXT NOT NULL,
        time TEXT NOT NULL,
        status INTEGER NOT NULL,
        data TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS requests_instance ON requests (instance, id)",
    # The incidents' search index: words of the name and the rawJSON text, by incident id (contentless: the text
    # stays in `incidents` alone; incidents are never deleted).
    "CREATE VIRTUAL TABLE IF NOT EXISTS incidents_text USING fts5(name, raw, content='', tokenize='unicode61')",
)

# Schema changes for stores made by earlier versions, by `PRAGMA user_version`: entry n takes a store from
# version n to n + 1, once.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # Only the indexes the read API uses: every index is paid for on each insert.
    (
        "DROP INDEX IF EXISTS incidents_name",
        "DROP INDEX IF EXISTS incidents_type",
        "DROP INDEX IF EXISTS incidents_severity",
        "DROP INDEX IF EXISTS incidents_occurred",
    ),
    # The search index, for the incidents stored before it existed.
    (
        "INSERT INTO incidents_text (rowid, name, raw)"
        " SELECT id, coalesce(name, ''), coalesce(json_extract(data, '$.rawJSON'), '') FROM incidents",
    ),
)


class SqliteStore:
    """A SQLite file in WAL mode; writes in `BEGIN IMMEDIATE` transactions.

    Connections run in autocommit mode, so every read sees what other threads and processes have committed. Each
    call borrows a connection from a small pool and gives it back (at most MAX_IDLE_CONNECTIONS are kept), so
    the threads of a thread pool, which come and go, do not each leave a connection, and its three descriptors
    (the file, -wal, -shm), open behind them.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self.opened = 0  # connections made in all (for tests)
        with self._write() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            for statements in _MIGRATIONS[version:]:
                for statement in statements:
                    conn.execute(statement)
            if version < len(_MIGRATIONS):
                conn.execute(f"PRAGMA user_version = {len(_MIGRATIONS)}")

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _switch_to_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        self.opened += 1
        return conn

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A connection for this thread alone until the block ends; rows must be read inside it."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._open()
        try:
            yield conn
        finally:
            with self._lock:
                kept = not self._closed and len(self._idle) < MAX_IDLE_CONNECTIONS and not conn.in_transaction
                if kept:
                    self._idle.append(conn)
            if not kept:
                conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def create_incidents(self, instance: str, incidents: list[Incident]) -> list[Incident]:
        with self._write() as conn:
            # Taken inside the write transaction: ids and created times are in the same order.
            created = utc_now()
            # Ids are taken inside the write lock, so they can go into each row's JSON before the insert.
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'incidents'").fetchone()
            first_id = (row[0] if row else 0) + 1
            # No deep copy: each row is serialized right here, which is the copy a server round trip makes.
            stored = [
                _stored_incident(item, first_id + i, instance, created, copy=False) for i, item in enumerate(incidents)
            ]
            rows = [
                (
                    int(item["id"]),
                    instance,
                    created,
                    None if item.get("name") is None else _column_text(item["name"]),
                    _column_text(item["type"]),
                    _severity_column(item["severity"]),
                    _column_text(item["occurred"]),
                    json.dumps(item),
                )
                for item in stored
            ]
            _insert_incident_rows(conn, rows)
            conn.executemany(
                "INSERT INTO incidents_text (rowid, name, raw) VALUES (?, ?, ?)",
                [(int(item["id"]), *_text_of(item)) for item in stored],
            )
        return stored

    def list_incidents(
        self, *, instance: str | None = None, since: str | None = None, limit: int | None = 50
    ) -> list[Incident]:
        where, values = ["1 = 1"], []
        if instance is not None:
            where.append("instance = ?")
            values.append(instance)
        if since:
            where.append("created >= ?")
            values.append(normalize_since(since))
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT data FROM incidents WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
                [*values, -1 if limit is None else limit],
            ).fetchall()
        return [json.loads(data) for (data,) in rows]

    def get_incident(self, incident_id: str | int) -> Incident | None:
        key = _incident_key(incident_id)
        if key is None:
            return None
        with self._connection() as conn:
            row = conn.execute("SELECT data FROM incidents WHERE id = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def count_incidents(self, instance: str | None = None) -> int:
        with self._connection() as conn:
            if instance is None:
                return int(conn.execute("SELECT count(*) FROM incidents").fetchone()[0])
            return int(conn.execute("SELECT count(*) FROM incidents WHERE instance = ?", (instance,)).fetchone()[0])

    def find_incidents(self, query: IncidentQuery) -> tuple[int, list[Incident]]:
        where, values = ["1 = 1"], []
        for column, value in (("instance", query.instance), ("type", query.type), ("severity", query.severity)):
            if value is not None:
                where.append(f"{column} = ?")
                values.append(value)
        if query.since:
            where.append("created >= ?")
            values.append(normalize_since(query.since))
        words = query.words()
        if words:
            where.append("id IN (SELECT rowid FROM incidents_text WHERE incidents_text MATCH ?)")
            values.append(_fts_query(words))
        order = "DESC" if query.descending else "ASC"
        columns = {"created": "id", "occurred": "occurred", "severity": "coalesce(severity, 0)"}[query.sort]
        condition = " AND ".join(where)
        with self._connection() as conn:
            total = int(conn.execute(f"SELECT count(*) FROM incidents WHERE {condition}", values).fetchone()[0])
            rows = conn.execute(
                f"SELECT data FROM incidents WHERE {condition} ORDER BY {columns} {order}, id {order} LIMIT ? OFFSET ?",
                [*values, query.limit, query.offset],
            ).fetchall()
        return total, [json.loads(data) for (data,) in rows]

    def get_integration_context(self, instance: str) -> tuple[dict[str, Any], int]:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT context, version FROM integration_context WHERE instance = ?", (instance,)
            ).fetchone()
        return (json.loads(row[0]), int(row[1])) if row else ({}, 0)

    def set_integration_context(self, instance: str, context: dict[str, Any], version: int = -1) -> int:
        with self._write() as conn:
            row = conn.execute("SELECT version FROM integration_context WHERE instance = ?", (instance,)).fetchone()
            stored = int(row[0]) if row else 0
            _check_version(instance, version, stored)
            conn.execute(
                "INSERT INTO integration_context (instance, context, version) VALUES (?, ?, ?)"
                " ON CONFLICT (instance) DO UPDATE SET context = excluded.context, version = excluded.version",
                (instance, json.dumps(context), stored + 1),
            )
        return stored + 1

    def set_module_health(self, instance: str, message: str, is_error: bool = False) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO module_health (instance, message, is_error, updated) VALUES (?, ?, ?, ?)",
                (instance, message, int(is_error), utc_now()),
            )

    def get_module_health(self, instance: str) -> dict[str, Any] | None:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT message, is_error, updated FROM module_health WHERE instance = ?", (instance,)
            ).fetchone()
        return {"message": row[0], "is_error": bool(row[1]), "updated": row[2]} if row else None

    def get_last_run(self, instance: str) -> dict[str, Any]:
        with self._connection() as conn:
            row = conn.execute("SELECT data FROM last_run WHERE instance = ?", (instance,)).fetchone()
        return json.loads(row[0]) if row else {}

    def set_last_run(self, instance: str, obj: dict[str, Any]) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO last_run (instance, data) VALUES (?, ?)",
                (instance, json.dumps(obj)),
            )

    def add_requests(self, entries: list[RequestEntry], kept: int) -> None:
        """Adds entries to the requests log in one transaction; each instance keeps its newest `kept`."""
        _check_kept(kept)
        with self._write() as conn:
            wanted = sorted(
                {key for entry in entries for item in entry.get("incident_ids") or () if (key := _incident_key(item))}
            )
            created: dict[str, tuple[str, str]] = {}
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                rows = conn.execute(
                    f"SELECT id, instance, created FROM incidents WHERE id IN ({', '.join('?' * len(chunk))})", chunk
                ).fetchall()
                created.update({str(row[0]): (row[1], row[2]) for row in rows})
            conn.executemany(
                "INSERT INTO requests (instance, time, status, data) VALUES (?, ?, ?, ?)",
                [
                    (
                        entry["instance"],
                        entry["time"],
                        int(entry["status"]),
                        json.dumps({**entry, "new_incident_ids": _new_incidents(entry, created)}),
                    )
                    for entry in entries
                ],
            )
            for instance in sorted({entry["instance"] for entry in entries}):
                conn.execute(
                    "DELETE FROM requests WHERE instance = ?1 AND id <"
                    " (SELECT id FROM requests WHERE instance = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                    (instance, kept - 1),
                )

    def list_requests(
        self, *, instance: str | None = None, before: int | None = None, limit: int = 50
    ) -> list[RequestEntry]:
        where, values = ["1 = 1"], []
        if instance is not None:
            where.append("instance = ?")
            values.append(instance)
        if before is not None:
            where.append("id < ?")
            values.append(before)
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT id, data FROM requests WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
                [*values, limit],
            ).fetchall()
        return [{**json.loads(data), "id": row_id} for row_id, data in rows]

    def get_request(self, request_id: str | int) -> RequestEntry | None:
        key = _incident_key(request_id)
        if key is None:
            return None
        with self._connection() as conn:
            row = conn.execute("SELECT id, data FROM requests WHERE id = ?", (key,)).fetchone()
        return {**json.loads(row[1]), "id": row[0]} if row else None

    def request_of_incident(self, incident: Incident) -> RequestEntry | None:
        """The requests log entry of the request that created `incident`, while the log still has it."""
        with self._connection() as conn:
            row = conn.execute(
                "SELECT requests.id, requests.data FROM requests, json_each(requests.data, '$.new_incident_ids') AS ids"
                " WHERE requests.instance = ? AND ids.value = ? ORDER BY requests.id DESC LIMIT 1",
                (incident["instance"], str(incident["id"])),
            ).fetchone()
        return {**json.loads(row[1]), "id": row[0]} if row else None

    def count_requests(self, instance: str | None = None) -> int:
        with self._connection() as conn:
            if instance is None:
                return int(conn.execute("SELECT count(*) FROM requests").fetchone()[0])
            return int(conn.execute("SELECT count(*) FROM requests WHERE instance = ?", (instance,)).fetchone()[0])

    def close(self) -> None:
        """Closes the idle connections; one in use is closed when its call ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
