"""The console and the incidents read API through a running `xsoar-local up`: search, filters, sort and paging with
a total, the live parts the page's script fetches (304 while unchanged), the table that stays readable whatever
the names, and the detail view with rawJSON in the sender's order and the request it came from."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import Platform, start_platform, wait_until, write_config

pytestmark = pytest.mark.timeout(180)

LONG_NAME = "https://example.com/" + "a" * 400


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    config = write_config(
        tmp_path_factory.mktemp("console"),
        [{"name": "echo", "integration": "Echo Webhook"}, {"name": "other", "integration": "Echo Webhook"}],
    )
    running = start_platform(config)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def created(platform: Platform) -> dict[str, dict[str, Any]]:
    events = {
        "push": ("echo", {"name": "push to main", "type": "Git", "severity": 1, "zeta": 1, "alpha": "widgets"}),
        "long": ("echo", {"name": LONG_NAME, "type": "Git", "severity": 4}),
        "review": ("other", {"name": "merge request", "type": "Review", "severity": 3, "project": "acme/widgets"}),
    }
    made = {}
    for key, (instance, event) in events.items():
        response = platform.client.post(f"/instance/execute/{instance}/events/{key}?via=test", json=event)
        assert response.status_code == 200, response.text
        made[key] = response.json()[0]
    return made


def names(platform: Platform, **params: Any) -> tuple[int, list[str]]:
    response = platform.client.get("/incidents", params=params)
    assert response.status_code == 200, response.text
    return int(response.headers["X-Total-Count"]), [item["name"][:20] for item in response.json()]


def test_the_incidents_api_searches_filters_sorts_and_pages(platform: Platform, created: dict[str, Any]) -> None:
    assert names(platform, q="widgets") == (2, ["merge request", "push to main"])
    assert names(platform, q="WIDG") == (2, ["merge request", "push to main"])  # a prefix, any case
    assert names(platform, instance="echo", type="Git", severity="Critical") == (1, [LONG_NAME[:20]])
    assert names(platform, severity="3") == (1, ["merge request"])
    # `via` is in the query of these three (in their rawJSON): what other tests create is left out
    assert names(platform, q="via", sort="severity", order="asc") == (
        3,
        ["push to main", "merge request", LONG_NAME[:20]],
    )
    assert names(platform, q="via", limit=1, offset=1) == (3, [LONG_NAME[:20]])  # newest first: review, long, push
    refused = platform.client.get("/incidents", params={"severity": "urgent"})
    assert refused.status_code == 400 and "Critical" in refused.json()["detail"]


def test_a_live_part_is_304_until_something_changes(platform: Platform, created: dict[str, Any]) -> None:
    first = platform.client.get("/console/incidents")
    assert first.status_code == 200 and 'id="incident-' in first.text
    again = platform.client.get("/console/incidents", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304
    new = platform.client.post("/instance/execute/echo", json={"name": "arrived later"}).json()[0]
    changed = platform.client.get("/console/incidents", headers={"If-None-Match": first.headers["ETag"]})
    assert changed.status_code == 200 and f'id="incident-{new["id"]}"' in changed.text

    def logged() -> bool:
        return "arrived later" in platform.client.get("/console/requests").text

    wait_until(logged, what="the request in the requests part")


def test_the_table_cuts_long_names_and_says_severity_in_words(platform: Platform, created: dict[str, Any]) -> None:
    page = platform.client.get("/", params={"q": "example"}).text
    row = re.search(rf'<tr id="incident-{created["long"]["id"]}">.*?</tr>', page, re.S)
    assert row is not None
    assert f'class="cell name" title="{LONG_NAME}"' in row.group()
    assert ">Critical</span>" in row.group() and "severity-critical" in row.group()
    assert 'class="incidents"' in page and "table-layout: fixed" in page


def test_the_detail_shows_raw_json_as_sent_and_the_request(platform: Platform, created: dict[str, Any]) -> None:
    incident = created["push"]
    detail = platform.client.get(f"/console/incidents/{incident['id']}").text
    raw = json.loads(platform.client.get(f"/incidents/{incident['id']}").json()["rawJSON"])
    keys = list(raw["event"])
    assert keys == ["name", "type", "severity", "zeta", "alpha"]
    positions = [detail.index(f"&#34;{key}&#34;") for key in keys]
    assert positions == sorted(positions)  # the sender's order, not sorted
    assert "POST /events/push?via=test" in detail
    source = platform.client.get(f"/incidents/{incident['id']}/request").json()
    assert source["new_incident_ids"] == [incident["id"]] and source["target"] == "/events/push?via=test"
    without_js = platform.client.get("/", params={"incident": incident["id"]}).text
    assert 'id="detail-page"' in without_js
    assert platform.client.get("/console/incidents/99999").json()["error"] == "unknown_incident"
