"""The pure feed merge: own candidates first, fresh reflections, freshness limits."""

from __future__ import annotations

import json

from reconciler.hub.feed import build_feed, feed_payload
from reconciler.hub.feedstore import Reflection, StoredReport
from reconciler.model.endpoints import Candidate, EndpointReport

NOW = 10_000


def stored(device: str, at: int = NOW - 5, observed: str | None = "[2001:db8::7]:4000",
           *cands: Candidate) -> StoredReport:
    report = EndpointReport("acme", device, tuple(cands), "dependent", 51820, 3, observed, at)
    return StoredReport(report, 4, 1)


def test_merge_orders_candidates_and_dedupes_reflections() -> None:
    reports = [stored("a", NOW - 5, "[2001:db8::7]:4000", Candidate("stun", "203.0.113.1:1"))]
    reflections = [
        Reflection("a", "b", "203.0.113.1:1", NOW - 10, NOW - 10),  # same as own: dropped
        Reflection("a", "c", "198.51.100.3:7", NOW - 20, NOW - 20),
        Reflection("a", "d", "198.51.100.4:7", NOW - 2, NOW - 2),  # newest first
    ]
    feed = build_feed("acme", 4, reports, reflections, ["a", "b"], NOW)
    (entry,) = feed.entries
    assert [c.address for c in entry.candidates] == [
        "203.0.113.1:1", "198.51.100.4:7", "198.51.100.3:7"]
    assert [c.kind for c in entry.candidates] == ["stun", "reflected", "reflected"]
    assert entry.public_ip == "2001:db8::7" and entry.mapping == "dependent"
    assert entry.updated_at == NOW - 2
    assert feed.revision == 4 and feed.generated_at == NOW


def test_stale_reflections_old_reports_and_unknown_devices_are_left_out() -> None:
    reports = [stored("gone"), stored("old", at=NOW - 2 * 86400), stored("b")]
    reflections = [Reflection("old", "b", "198.51.100.9:1", NOW - 500, NOW - 500)]
    feed = build_feed("acme", 1, reports, reflections, ["old", "b"], NOW)
    assert [e.device for e in feed.entries] == ["b"]


def test_payload_is_canonical_json_in_the_documented_shape() -> None:
    feed = build_feed("acme", 2, [stored("a", NOW, "203.0.113.5:9",
                                         Candidate("local", "192.168.1.2:51820"))], [], ["a"], NOW)
    payload = feed_payload(feed)
    doc = json.loads(payload)
    assert payload == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    assert doc == {"org": "acme", "revision": 2, "generated_at": NOW, "entries": [
        {"device": "a", "candidates": [{"kind": "local", "address": "192.168.1.2:51820"}],
         "mapping": "dependent", "public_ip": "203.0.113.5", "updated_at": NOW}]}
