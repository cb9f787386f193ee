"""The feed tables on SQLite and a real PostgreSQL: a repeated report changes
nothing, a changed one moves the change counter, the revision follows the
entries' digest, reflections are replaced per reporter and pruned, and an
old database gains the new columns in place."""

from __future__ import annotations

import sqlite3

import pytest

from reconciler.hub.claims import OWN_FRESH, REFLECTION_TTL, Observation
from reconciler.hub.feedstore import FeedStore
from reconciler.model.endpoints import Candidate, EndpointReport

NOW = 1_790_000_000


@pytest.fixture(params=["sqlite",
                        pytest.param("postgresql", marks=[pytest.mark.postgres, pytest.mark.root])])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/hub.db"
    return str(request.getfixturevalue("fresh_postgres_url"))


@pytest.fixture
def store(url):
    s = FeedStore(url)
    yield s
    s.close()


def report(device: str = "laptop", at: int = NOW, address: str = "203.0.113.5:51820",
           observed: str = "203.0.113.5:40000", serial: int = 1, mapping: str = "independent",
           cert: int = 11) -> EndpointReport:
    return EndpointReport("acme", device, (Candidate("stun", address),), mapping, 51820, serial,
                          observed, at, cert)


def test_a_repeated_report_changes_nothing_a_changed_one_does(store: FeedStore) -> None:
    first = store.record([(report(), [])])
    assert first.changed == (True,) and first.changes == {"acme": 1}
    # the same endpoints again, from another source port, with another manifest serial
    for i in range(1, 6):
        again = store.record([(report(at=NOW + 30 * i, observed=f"203.0.113.5:{40000 + i}",
                                      serial=i + 1), [])])
        assert again.changed == (False,) and again.changes == {"acme": 1}
    (row,) = store.reports("acme")
    assert row.changed_at == NOW and row.report.reported_at == NOW + 150 and row.reports == 6
    # each real change moves the counter once
    for i, changed in enumerate([report(at=NOW + 200, address="203.0.113.6:51820"),
                                 report(at=NOW + 230, address="203.0.113.6:51820",
                                        mapping="dependent"),
                                 report(at=NOW + 260, address="203.0.113.6:51820",
                                        mapping="dependent", observed="198.51.100.1:1")]):
        rec = store.record([(changed, [])])
        assert rec.changed == (True,) and rec.changes == {"acme": 2 + i}
    assert store.reports("acme")[0].changed_at == NOW + 260
    # a report after a silence longer than OWN_FRESH can change the ranking: a change
    late = report(at=NOW + 260 + OWN_FRESH + 1, address="203.0.113.6:51820",
                  mapping="dependent", observed="198.51.100.1:1")
    assert store.record([(late, [])]).changed == (True,)


def test_reflections_replace_the_reporters_previous_ones(store: FeedStore) -> None:
    relay = report("relay-1", cert=22)
    rec = store.record([(relay, [Observation("laptop", "198.51.100.9:1", NOW - 3),
                                 Observation("server", "198.51.100.8:1", NOW - 3)])])
    assert rec.changed == (True,)
    got = {(r.peer, r.endpoint, r.reporter_serial, r.since, r.seen_at)
           for r in store.reflections("acme")}
    assert got == {("laptop", "198.51.100.9:1", 22, NOW, NOW),
                   ("server", "198.51.100.8:1", 22, NOW, NOW)}
    # the same views later: stamped with the new receipt time, no change
    later = report("relay-1", at=NOW + 30, cert=22)
    rec = store.record([(later, [Observation("laptop", "198.51.100.9:1", NOW + 10**9),
                                 Observation("server", "198.51.100.8:1", NOW + 29)])])
    assert rec.changed == (False,)
    assert {(r.since, r.seen_at) for r in store.reflections("acme")} == {(NOW, NOW + 30)}
    # server gone from the relay's next report: deleted, and that is a change
    rec = store.record([(report("relay-1", at=NOW + 60, cert=22),
                         [Observation("laptop", "198.51.100.9:1", NOW + 59)])])
    assert rec.changed == (True,)
    assert [r.peer for r in store.reflections("acme")] == ["laptop"]
    # an expired reflection coming back is a change too
    back = report("relay-1", at=NOW + 60 + REFLECTION_TTL + 1, cert=22)
    assert store.record([(back, [Observation("laptop", "198.51.100.9:1", NOW)])]).changed == \
        (True,)


def test_prune_drops_reporters_that_left_or_were_revoked(store: FeedStore) -> None:
    store.record([(report("relay-1", cert=22), [Observation("laptop", "198.51.100.9:1", NOW)]),
                  (report("relay-2", cert=33), [Observation("laptop", "198.51.100.7:1", NOW)]),
                  (report("relay-3", cert=44), [Observation("laptop", "198.51.100.6:1", NOW)])])
    assert len(store.reflections("acme")) == 3
    # relay-2 was removed (or disabled, or lost relay: true); relay-3's certificate revoked
    assert store.prune_reflections("acme", {"relay-1", "relay-3"}, {44}) == 2
    assert [r.reporter for r in store.reflections("acme")] == ["relay-1"]
    assert store.prune_reflections("acme", {"relay-1"}, set()) == 0


def test_the_revision_follows_the_digest(store: FeedStore) -> None:
    assert store.assign_revision("acme", "", NOW) == (0, 0)  # nothing ever shown
    assert store.revisions() == {}
    assert store.assign_revision("acme", "d1", NOW) == (1, NOW)
    assert store.assign_revision("acme", "d1", NOW + 50) == (1, NOW)  # same content
    assert store.assign_revision("acme", "d2", NOW + 60) == (2, NOW + 60)
    assert store.assign_revision("acme", "d1", NOW + 70) == (3, NOW + 70)  # never backwards
    assert store.assign_revision("acme", "", NOW + 80) == (4, NOW + 80)  # emptied: a change
    assert store.revisions() == {"acme": 4} and store.revision("acme") == 4


def test_two_stores_on_one_database_agree(url: str) -> None:
    a, b = FeedStore(url), FeedStore(url)
    try:
        assert a.record([(report(), [])]).changes == {"acme": 1}
        assert b.record([(report(at=NOW + 30), [])]).changed == (False,)
        assert b.changes() == a.changes() == {"acme": 1}
        assert a.assign_revision("acme", "x", NOW) == b.assign_revision("acme", "x", NOW + 9)
    finally:
        a.close()
        b.close()


def test_an_old_sqlite_database_gains_the_new_columns_in_place(tmp_path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE feed_revisions (org TEXT PRIMARY KEY, revision BIGINT NOT NULL);
        CREATE TABLE endpoint_reports (org TEXT NOT NULL, device TEXT NOT NULL,
            candidates TEXT NOT NULL, mapping TEXT NOT NULL, listen_port INTEGER NOT NULL,
            serial BIGINT NOT NULL, observed_addr TEXT, reported_at BIGINT NOT NULL,
            revision BIGINT NOT NULL, reports BIGINT NOT NULL DEFAULT 1,
            PRIMARY KEY (org, device));
        INSERT INTO feed_revisions VALUES ('acme', 41);
        INSERT INTO endpoint_reports VALUES ('acme', 'laptop',
            '[{"kind": "stun", "address": "203.0.113.5:51820"}]', 'independent', 51820, 7,
            '203.0.113.5:4000', 1790000000, 41, 12);
    """)
    conn.commit()
    conn.close()
    store = FeedStore(f"sqlite:///{path}")
    try:
        (row,) = store.reports("acme")
        assert row.reports == 12 and row.report.cert_serial == 0 and row.changed_at == 0
        assert store.revisions() == {"acme": 41}
        # the first digest differs from the empty stored one: the revision moves on, not back
        assert store.assign_revision("acme", "d", NOW) == (42, NOW)
    finally:
        store.close()
