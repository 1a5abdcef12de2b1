"""Crash safety: an instance, or the whole platform, killed with SIGKILL under load loses no acknowledged event.

Every event carries a unique `event_id`. A request answered 2xx must have its incident in the store exactly once
after the crash and restart; no event may be stored twice; the store must pass SQLite's integrity check.
Ten runs in a row on demand: `for i in $(seq 10); do .venv/bin/python -m pytest -q tests/test_crash_safety.py
|| break; done`.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from helpers import REPO, start_platform, wait_until, write_config

from xsoar_local.store import open_store

PACK = REPO / "Packs" / "GenericWebhook"
WORKERS = 6


class Load:
    """Closed-loop load through the reroute: each worker posts events with unique ids and records the 2xx ones."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.acknowledged: list[str] = []
        self.failures = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._work, args=(n,), daemon=True) for n in range(WORKERS)]

    def _work(self, worker: int) -> None:
        sequence = 0
        with httpx.Client(timeout=10, trust_env=False) as client:
            while not self.stop.is_set():
                sequence += 1
                event_id = f"w{worker}-{sequence}"
                try:
                    response = client.post(self.url, json={"name": f"crash test {event_id}", "event_id": event_id})
                except httpx.HTTPError:
                    response = None
                with self.lock:
                    if response is not None and response.is_success:
                        self.acknowledged.append(event_id)
                    else:
                        self.failures += 1
                if response is None or not response.is_success:
                    time.sleep(0.02)  # the instance is down: do not spin

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=20)

    def count(self) -> int:
        with self.lock:
            return len(self.acknowledged)


def stored_event_ids(store_path: Path) -> Counter[str]:
    store = open_store(store_path)
    try:
        return Counter(json.loads(item["rawJSON"]).get("event_id") for item in store.list_incidents(limit=None))
    finally:
        store.close()


def assert_no_acknowledged_event_lost(store_path: Path, acknowledged: list[str]) -> None:
    with sqlite3.connect(store_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = stored_event_ids(store_path)
    duplicates = {event_id: count for event_id, count in stored.items() if count > 1}
    assert not duplicates, f"events stored more than once: {list(duplicates)[:5]}"
    missing = [event_id for event_id in acknowledged if stored[event_id] != 1]
    assert not missing, f"{len(missing)} acknowledged events are not in the store: {missing[:5]}"


def webhook_config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path,
        [{"name": "webhook", "integration": "Generic Webhook", "params": {"store_samples": True}}],
        packs=[PACK],
    )


def test_instance_killed_mid_load_loses_no_acknowledged_event(tmp_path: Path) -> None:
    """
    Given load through the reroute into a Generic Webhook instance
    When the instance process is killed with SIGKILL mid-load and the supervisor restarts it
    Then every event answered 2xx is stored exactly once, nothing twice, and the store is intact.
    """
    platform = start_platform(webhook_config(tmp_path))
    try:
        url = f"{platform.url}/instance/execute/webhook"
        with Load(url) as load:
            wait_until(lambda: load.count() >= 200, timeout=60, what="200 acknowledged events")
            pid = platform.instances()["webhook"]["pid"]
            os.kill(pid, signal.SIGKILL)
            platform.wait_running("webhook", restarts=1, timeout=60)
            after_restart = load.count()
            wait_until(lambda: load.count() >= after_restart + 200, timeout=60, what="200 more after the restart")
        acknowledged = list(load.acknowledged)
    finally:
        platform.stop()
    assert load.failures > 0 or acknowledged, "the load generator sent nothing"
    assert_no_acknowledged_event_lost(platform.store_path, acknowledged)


def test_platform_killed_mid_load_loses_no_acknowledged_event(tmp_path: Path) -> None:
    """
    Given load through the reroute
    When the whole platform is killed with SIGKILL mid-load (its instances stop with it) and started again
    Then the store opens cleanly, every event answered 2xx is in it exactly once, and the platform serves again.
    """
    config = webhook_config(tmp_path)
    platform = start_platform(config)
    url = f"{platform.url}/instance/execute/webhook"
    with Load(url) as load:
        wait_until(lambda: load.count() >= 300, timeout=60, what="300 acknowledged events")
        platform.stop(signal.SIGKILL)
    acknowledged = list(load.acknowledged)

    again = start_platform(config, timeout=60)
    try:
        assert_no_acknowledged_event_lost(again.store_path, acknowledged)
        response = again.client.post("/instance/execute/webhook", json={"name": "after the crash", "event_id": "x"})
        assert response.status_code == 200
    finally:
        again.stop()
