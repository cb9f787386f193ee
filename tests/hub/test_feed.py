"""The pure feed merge: own candidates first, reflections only from relays and
never over a fresh own report, expiry by the hub's clock, the digest the
revision follows."""

from __future__ import annotations

import json

import pytest

from reconciler.hub.claims import MAX_REFLECTIONS, OWN_FRESH, REFLECTION_TTL, REPORT_TTL, Authority
from reconciler.hub.feed import build_entries, build_feed, entries_digest, feed_payload
from reconciler.hub.feedstore import Reflection, StoredReport
from reconciler.model.endpoints import Candidate, EndpointReport

NOW = 10_000
AUTH = Authority(devices=frozenset({"a", "b", "relay-1", "relay-2", "laptop"}),
                 relays=frozenset({"relay-1", "relay-2"}), revoked=frozenset({666}))


def stored(device: str, at: int = NOW - 5, observed: str | None = "[2001:db8::7]:4000",
           *cands: Candidate, cert: int = 1, changed_at: int | None = None) -> StoredReport:
    report = EndpointReport("acme", device, tuple(cands), "dependent", 51820, 3, observed, at,
                            cert)
    return StoredReport(report, 0, 1, at if changed_at is None else changed_at)


def refl(peer: str, reporter: str, endpoint: str, since: int, seen: int | None = None,
         serial: int = 2) -> Reflection:
    return Reflection(peer, reporter, endpoint, serial, since, since if seen is None else seen)


def by_device(reports, reflections, auth: Authority = AUTH, now: float = NOW):
    entries, _ = build_entries(reports, reflections, auth, now)
    return {e.device: e for e in entries}


def test_reflections_fill_in_for_a_device_without_a_fresh_report() -> None:
    reflections = [
        refl("a", "relay-1", "198.51.100.3:7", NOW - 20),
        refl("a", "relay-2", "198.51.100.4:7", NOW - 2),  # newest address first
        refl("b", "relay-1", "203.0.113.1:1", NOW - 10),
    ]
    # b's own report is old (not fresh): its own candidate first, then the relay's view
    reports = [stored("b", NOW - OWN_FRESH - 1, None, Candidate("stun", "203.0.113.9:1"),
                      changed_at=NOW - 500)]
    entries = by_device(reports, reflections)
    assert [(c.kind, c.address) for c in entries["a"].candidates] == [
        ("reflected", "198.51.100.4:7"), ("reflected", "198.51.100.3:7")]
    assert entries["a"].public_ip is None and entries["a"].mapping == "unknown"
    assert entries["a"].updated_at == NOW - 2
    assert [c.address for c in entries["b"].candidates] == ["203.0.113.9:1", "203.0.113.1:1"]
    assert entries["b"].updated_at == NOW - 10


@pytest.mark.parametrize("own", [
    Candidate("stun", "203.0.113.50:51820"),
    Candidate("static", "203.0.113.50:51820"),
    Candidate("observed", "203.0.113.50:51820"),
])
def test_a_fresh_own_report_is_never_outranked_by_a_reflection(own: Candidate) -> None:
    reflections = [refl("laptop", "relay-1", "198.51.100.66:666", NOW - 1)]
    for age in (0, 30, OWN_FRESH):
        entries = by_device([stored("laptop", NOW - age, None, own)], reflections)
        assert entries["laptop"].candidates == (own,), age


def test_reflections_show_when_the_own_report_is_stale_or_names_no_public_address() -> None:
    reflections = [refl("laptop", "relay-1", "198.51.100.66:7", NOW - 1)]
    lan_only = stored("laptop", NOW, None, Candidate("local", "192.168.1.2:51820"))
    stale = stored("laptop", NOW - OWN_FRESH - 1, None, Candidate("stun", "203.0.113.5:1"))
    for report in (lan_only, stale):
        cands = by_device([report], reflections)["laptop"].candidates
        assert cands[0] == report.report.candidates[0]  # own first, always
        assert cands[-1] == Candidate("reflected", "198.51.100.66:7")


@pytest.mark.parametrize("reflection,why", [
    (refl("a", "b", "198.51.100.9:1", NOW - 1), "reporter is not a relay"),
    (refl("a", "relay-1", "198.51.100.9:1", NOW - 1, serial=666), "reporter revoked"),
    (refl("a", "gone-relay", "198.51.100.9:1", NOW - 1), "reporter removed"),
    (refl("a", "relay-1", "198.51.100.9:1", NOW - 500, NOW - REFLECTION_TTL - 1), "expired"),
    (refl("stranger", "relay-1", "198.51.100.9:1", NOW - 1), "peer not in the manifest"),
    (refl("relay-1", "relay-1", "198.51.100.9:1", NOW - 1), "about itself"),
])
def test_reflections_that_do_not_count_are_left_out(reflection: Reflection, why: str) -> None:
    assert by_device([], [reflection]) == {}, why


def test_a_relay_clock_cannot_extend_a_reflection_the_hub_stamped() -> None:
    # stamps are the hub's receipt times: whatever the relay's clock said, the
    # reflection is gone REFLECTION_TTL after the hub last heard it
    r = refl("a", "relay-1", "198.51.100.9:1", NOW, NOW)
    assert by_device([], [r], now=NOW + REFLECTION_TTL)
    assert by_device([], [r], now=NOW + REFLECTION_TTL + 1) == {}


def test_reports_of_revoked_removed_or_old_devices_are_left_out() -> None:
    reports = [stored("a", NOW, None, Candidate("stun", "203.0.113.1:1"), cert=666),
               stored("gone", NOW, None, Candidate("stun", "203.0.113.2:1")),
               stored("b", NOW - REPORT_TTL - 1, None, Candidate("stun", "203.0.113.3:1")),
               stored("laptop", NOW - REPORT_TTL, None, Candidate("stun", "203.0.113.4:1"))]
    assert list(by_device(reports, [])) == ["laptop"]


def test_reflections_per_device_are_bounded() -> None:
    relays = frozenset(f"r{i}" for i in range(20))
    auth = Authority(AUTH.devices | relays, relays, frozenset())
    reflections = [refl("a", f"r{i}", f"198.51.100.{i + 1}:1", NOW - i) for i in range(20)]
    cands = by_device([], reflections, auth)["a"].candidates
    assert len(cands) == MAX_REFLECTIONS
    assert cands[0].address == "198.51.100.1:1"  # the newest addresses are kept


def test_next_change_is_the_first_expiry() -> None:
    reports = [stored("laptop", NOW - 10, None, Candidate("stun", "203.0.113.4:1"))]
    reflections = [refl("a", "relay-1", "198.51.100.9:1", NOW - 100, NOW - 50),
                   refl("laptop", "relay-1", "198.51.100.8:1", NOW - 5)]
    _, next_change = build_entries(reports, reflections, AUTH, NOW)
    # laptop's own report stops outranking its reflection at NOW - 10 + OWN_FRESH + 1
    assert next_change == min(NOW - 50 + REFLECTION_TTL + 1, NOW - 10 + OWN_FRESH + 1)
    assert build_entries([], [], AUTH, NOW) == ((), None)


def test_the_digest_follows_the_entries_only() -> None:
    reports = [stored("laptop", NOW - 10, None, Candidate("stun", "203.0.113.4:1"),
                      changed_at=NOW - 100)]
    entries, _ = build_entries(reports, [], AUTH, NOW)
    # the same report confirmed later: same entries, same digest
    later = [stored("laptop", NOW + 20, None, Candidate("stun", "203.0.113.4:1"),
                    changed_at=NOW - 100)]
    again, _ = build_entries(later, [], AUTH, NOW + 25)
    assert entries == again and entries_digest("acme", entries) == entries_digest("acme", again)
    moved = [stored("laptop", NOW + 20, None, Candidate("stun", "203.0.113.5:1"))]
    other, _ = build_entries(moved, [], AUTH, NOW + 25)
    assert entries_digest("acme", other) != entries_digest("acme", entries)
    assert entries_digest("beta", entries) != entries_digest("acme", entries)
    assert entries_digest("acme", ()) == ""


def test_payload_is_canonical_json_in_the_documented_shape() -> None:
    entries, _ = build_entries([stored("a", NOW, "203.0.113.5:9",
                                       Candidate("local", "192.168.1.2:51820"))], [], AUTH, NOW)
    payload = feed_payload(build_feed("acme", 2, NOW - 7, entries))
    doc = json.loads(payload)
    assert payload == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    assert doc == {"org": "acme", "revision": 2, "generated_at": NOW - 7, "entries": [
        {"device": "a", "candidates": [{"kind": "local", "address": "192.168.1.2:51820"}],
         "mapping": "dependent", "public_ip": "203.0.113.5", "updated_at": NOW}]}
