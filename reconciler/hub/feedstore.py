"""Durable tables behind the live endpoint feed: reports, reflections, revisions.

Called by ``reconciler.hub.serve`` (through ``ReportWriter``, which batches
reports into one transaction) and by ``reconciler.hub.api`` for reads. The
certificate/serial tables belong to ``reconciler.hub.store``; this module only
adds the feed's own tables and speaks the same two dialects:

* ``sqlite:///PATH`` (default; WAL journal, ``synchronous=FULL`` so a report
  answered 200 survives a crash or power loss);
* ``postgresql://…`` (psycopg 3) when several hub replicas share one feed.

Each org has a row in ``feed_revisions``:

* ``changes``: bumped by ``record`` only when a batch changed what the feed
  shows (a repeated report refreshes times, nothing else). The hub wakes its
  long-polls and rebuilds when it moves; replicas learn about each other's
  writes by polling ``changes()``. The org's row is locked first
  (``INSERT … ON CONFLICT … DO UPDATE … RETURNING``), so on PostgreSQL
  concurrent replicas serialise per org. On PostgreSQL the same transaction
  sends ``pg_notify('meshops_feed', org)`` (``FEED_CHANNEL``), delivered only
  when it commits; other replicas hear it through a ``FeedListener`` (driven
  by ``reconciler.hub.notify``) and poll at once instead of at their next
  periodic store poll.
* ``revision``, ``digest``, ``revised_at``: the served revision is the digest
  of the feed's entries (``reconciler.hub.feed``). ``assign_revision`` keeps the
  revision for the same digest and moves it by one for another, so the revision
  changes exactly when the signed content does, whichever replica builds it.

Reflections live in ``relay_reflections`` (reporter, its certificate serial,
``since``: first seen at this endpoint, ``seen_at``: last report carrying it,
both the hub's clock). Columns added after the first release are added in
place at start-up (``ADDED_COLUMNS``).

All methods are blocking; the async caller runs them in one worker thread.
The connection comes from ``reconciler.hub.store.open_store`` (its own
connection, so publishing never waits on report writes).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.errors import TemporaryError
from reconciler.hub.claims import OWN_FRESH, REFLECTION_TTL, Observation, public_host
from reconciler.model.endpoints import Candidate, EndpointReport

__all__ = ["FEED_CHANNEL", "FeedListener", "FeedStore", "Observation", "Reflection",
           "StoredReport"]

FEED_CHANNEL = "meshops_feed"  # NOTIFY channel; the payload is the org whose changes moved

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS feed_revisions (
        org TEXT PRIMARY KEY,
        revision BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS endpoint_reports (
        org TEXT NOT NULL,
        device TEXT NOT NULL,
        candidates TEXT NOT NULL,
        mapping TEXT NOT NULL,
        listen_port INTEGER NOT NULL,
        serial BIGINT NOT NULL,
        observed_addr TEXT,
        reported_at BIGINT NOT NULL,
        revision BIGINT NOT NULL,
        reports BIGINT NOT NULL DEFAULT 1,
        PRIMARY KEY (org, device))""",
    # The first reflections table (any device's claims, dated by the reporter's
    # clock) is no longer read; it is left in place for replicas not yet upgraded.
    """CREATE TABLE IF NOT EXISTS relay_reflections (
        org TEXT NOT NULL,
        peer TEXT NOT NULL,
        reporter TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        reporter_serial BIGINT NOT NULL,
        since BIGINT NOT NULL,
        seen_at BIGINT NOT NULL,
        PRIMARY KEY (org, peer, reporter))""",
    "CREATE INDEX IF NOT EXISTS relay_reflections_reporter ON relay_reflections (org, reporter)",
)
# Columns added after the first release: (table, column, definition). Added in
# place by ``_add_columns`` (``ALTER TABLE … ADD COLUMN``, both dialects).
ADDED_COLUMNS = (
    ("feed_revisions", "digest", "TEXT NOT NULL DEFAULT ''"),  # of the served entries
    ("feed_revisions", "revised_at", "BIGINT NOT NULL DEFAULT 0"),  # when revision was set
    ("feed_revisions", "changes", "BIGINT NOT NULL DEFAULT 0"),  # bumped by content changes
    ("endpoint_reports", "cert_serial", "BIGINT NOT NULL DEFAULT 0"),
    ("endpoint_reports", "changed_at", "BIGINT NOT NULL DEFAULT 0"),
)


@dataclass(frozen=True)
class StoredReport:
    report: EndpointReport
    revision: int  # legacy column: the feed revision when it was last written
    reports: int  # how many reports this device has sent in total (bench: lost-report check)
    changed_at: int = 0  # when its candidates, mapping or public IP last changed


@dataclass(frozen=True)
class Reflection:
    """A stored reflection: a relay's WireGuard saw ``peer`` at ``endpoint``.
    ``since``: the hub's time it first saw this endpoint from this reporter;
    ``seen_at``: the hub's time of the last report carrying it."""

    peer: str
    reporter: str
    endpoint: str
    reporter_serial: int
    since: int
    seen_at: int


@dataclass(frozen=True)
class Recorded:
    """What one ``record`` call committed: every touched org's change counter,
    and per report (in batch order) whether it changed what the feed shows."""

    changes: dict[str, int]
    changed: tuple[bool, ...]


class FeedStore:
    """The feed tables, on a connection of its own opened through
    ``reconciler.hub.store.open_store(url)`` (same URL as the certificate store:
    ``sqlite:///PATH`` or ``postgresql://…``), reusing its dialect and
    transaction plumbing."""

    def __init__(self, url: str) -> None:
        from reconciler.hub.store import open_store

        self.url = url
        self._store = open_store(url)
        self.dialect = self._store.dialect
        if self.dialect == "sqlite":
            # WAL + FULL: a report answered 200 survives power loss too, not only a crash.
            with self._store.transaction():
                pass
            with self._store.cursor() as cur:
                cur.execute("PRAGMA synchronous=FULL")
        self._transaction(self._create_schema)

    def _create_schema(self, cur: Any) -> None:
        self._store.lock_schema(cur)  # replicas starting together must not race
        for stmt in SCHEMA:
            cur.execute(stmt)
        for table, column, definition in ADDED_COLUMNS:
            cur.execute(f"SELECT * FROM {table} WHERE 1 = 0")
            if column not in {d[0] for d in cur.description}:
                cur.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")

    def _sql(self, text: str) -> str:
        return text.replace("?", "%s") if self.dialect == "postgresql" else text

    def _errors(self) -> tuple[type[BaseException], ...]:
        if self.dialect == "postgresql":
            import psycopg

            return (psycopg.Error,)
        return (sqlite3.Error,)

    def _transaction(self, work: Any) -> Any:
        """Run ``work(cursor)`` in one committed transaction; translate driver errors."""
        try:
            with self._store.cursor() as cur:
                return work(cur)
        except self._errors() as exc:
            raise TemporaryError(f"feed store ({self.dialect}): {exc}", delay=1.0) from exc

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._store.query(sql, params)
        except self._errors() as exc:
            raise TemporaryError(f"feed store ({self.dialect}): {exc}", delay=1.0) from exc

    def _lock_org(self, cur: Any, org: str) -> tuple[int, str, int, int]:
        """Inside a transaction: the org's row, created if missing and locked
        (PostgreSQL: the no-op update takes the row lock, so replicas writing one
        org serialise); (revision, digest, revised_at, changes)."""
        cur.execute(
            self._sql(
                "INSERT INTO feed_revisions (org, revision) VALUES (?, 0) "
                "ON CONFLICT (org) DO UPDATE SET revision = feed_revisions.revision "
                "RETURNING revision, digest, revised_at, changes"
            ),
            (org,),
        )
        rev, digest, revised_at, changes = cur.fetchone()
        return int(rev), str(digest), int(revised_at), int(changes)

    # -- writes -----------------------------------------------------------
    def record(self, batch: Sequence[tuple[EndpointReport, Sequence[Observation]]]) -> Recorded:
        """Store reports, and the reflections kept from each reporter (they
        replace that reporter's previous ones), in ONE committed transaction.
        Once this returns, every report in ``batch`` is durable.

        An org's ``changes`` counter moves when a report changes what its feed
        shows (candidates, mapping, public IP, a reflection's endpoint, or a
        row that had expired coming back); a report that repeats the last one
        only refreshes the times. ``report.reported_at`` is the hub's clock."""
        orgs = sorted({report.org for report, _ in batch})

        def work(cur: Any) -> Recorded:
            counters: dict[str, int] = {}
            for org in orgs:  # sorted: replicas lock rows in the same order (no deadlock)
                counters[org] = self._lock_org(cur, org)[3]
            moved: set[str] = set()
            changed: list[bool] = []
            for report, observations in batch:
                own = self._write_report(cur, report)
                refl = self._write_reflections(cur, report, observations)
                changed.append(own or refl)
                if own or refl:
                    moved.add(report.org)
            for org in sorted(moved):
                cur.execute(self._sql("UPDATE feed_revisions SET changes = changes + 1 "
                                      "WHERE org = ? RETURNING changes"), (org,))
                counters[org] = int(cur.fetchone()[0])
                if self.dialect == "postgresql":
                    # queued with the transaction: PostgreSQL delivers it on COMMIT only,
                    # so a listener never polls before the change is visible
                    cur.execute("SELECT pg_notify(%s, %s)", (FEED_CHANNEL, org))
            return Recorded(counters, tuple(changed))

        if not batch:
            return Recorded({}, ())
        result: Recorded = self._transaction(work)
        return result

    def _write_report(self, cur: Any, report: EndpointReport) -> bool:
        now = report.reported_at
        candidates = json.dumps(
            [{"kind": c.kind, "address": c.address} for c in report.candidates])
        cur.execute(
            self._sql("SELECT candidates, mapping, observed_addr, cert_serial, reported_at, "
                      "changed_at FROM endpoint_reports WHERE org = ? AND device = ?"),
            (report.org, report.device),
        )
        old = cur.fetchone()
        key = (candidates, report.mapping, public_host(report.observed_addr), report.cert_serial)
        same = old is not None and (old[0], old[1], public_host(old[2]), int(old[3])) == key \
            and now - int(old[4]) <= OWN_FRESH  # a stale report coming back can change rank
        changed_at = int(old[5]) if same and old is not None else now
        cur.execute(
            self._sql(
                "INSERT INTO endpoint_reports (org, device, candidates, mapping, "
                "listen_port, serial, observed_addr, reported_at, revision, reports, "
                "cert_serial, changed_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 1, ?, ?) "
                "ON CONFLICT (org, device) DO UPDATE SET candidates = excluded.candidates, "
                "mapping = excluded.mapping, listen_port = excluded.listen_port, "
                "serial = excluded.serial, observed_addr = excluded.observed_addr, "
                "reported_at = excluded.reported_at, cert_serial = excluded.cert_serial, "
                "changed_at = excluded.changed_at, "
                "reports = endpoint_reports.reports + 1"
            ),
            (report.org, report.device, candidates, report.mapping, report.listen_port,
             report.serial, report.observed_addr, now, report.cert_serial, changed_at),
        )
        return not same

    def _write_reflections(self, cur: Any, report: EndpointReport,
                           observations: Sequence[Observation]) -> bool:
        now = report.reported_at
        cur.execute(
            self._sql("SELECT peer, endpoint, reporter_serial, since, seen_at "
                      "FROM relay_reflections WHERE org = ? AND reporter = ?"),
            (report.org, report.device),
        )
        old = {str(p): (str(e), int(s), int(since), int(seen)) for p, e, s, since, seen
               in cur.fetchall()}
        changed = False
        new = {o.peer: o for o in observations}
        for peer, (_, _, _, seen) in sorted(old.items()):
            if peer not in new:
                changed |= now - seen <= REFLECTION_TTL  # one the feed still showed
                cur.execute(self._sql("DELETE FROM relay_reflections WHERE org = ? AND "
                                      "peer = ? AND reporter = ?"),
                            (report.org, peer, report.device))
        for peer, obs in sorted(new.items()):
            prev = old.get(peer)
            same = prev is not None and prev[0] == obs.endpoint and \
                prev[1] == report.cert_serial and now - prev[3] <= REFLECTION_TTL
            changed |= not same
            cur.execute(
                self._sql(
                    "INSERT INTO relay_reflections (org, peer, reporter, endpoint, "
                    "reporter_serial, since, seen_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (org, peer, reporter) DO UPDATE SET "
                    "endpoint = excluded.endpoint, reporter_serial = excluded.reporter_serial, "
                    "since = excluded.since, seen_at = excluded.seen_at"
                ),
                (report.org, peer, report.device, obs.endpoint, report.cert_serial,
                 prev[2] if same and prev is not None else now, now),
            )
        return changed

    def assign_revision(self, org: str, digest: str, now: int) -> tuple[int, int]:
        """The feed revision for entries with ``digest``: the stored one when the
        digest is the one stored, else the next revision (stored with ``now``).
        Returns (revision, the time it was assigned). Replicas building the same
        entries get the same revision."""
        rows = self._query("SELECT revision, digest, revised_at FROM feed_revisions "
                           "WHERE org = ?", (org,))
        if rows and str(rows[0][1]) == digest:
            return int(rows[0][0]), int(rows[0][2])
        if not rows and digest == "":  # nothing ever shown: revision 0, nothing to write
            return 0, 0

        def work(cur: Any) -> tuple[int, int]:
            revision, stored, revised_at, _ = self._lock_org(cur, org)
            if stored == digest:  # another replica assigned it meanwhile
                return revision, revised_at
            cur.execute(self._sql("UPDATE feed_revisions SET revision = revision + 1, "
                                  "digest = ?, revised_at = ? WHERE org = ? RETURNING revision"),
                        (digest, now, org))
            return int(cur.fetchone()[0]), now

        result: tuple[int, int] = self._transaction(work)
        return result

    def prune_reflections(self, org: str, relays: Collection[str], revoked: Collection[int]
                          ) -> int:
        """Delete the reflections of reporters that are no longer relays of the
        served snapshot, or whose certificate is revoked; returns how many."""
        rows = self._query("SELECT DISTINCT reporter, reporter_serial FROM relay_reflections "
                           "WHERE org = ?", (org,))
        gone = [(str(r), int(s)) for r, s in rows if r not in relays or int(s) in revoked]
        if not gone:
            return 0

        def work(cur: Any) -> int:
            count = 0
            for reporter, serial in gone:
                cur.execute(self._sql("DELETE FROM relay_reflections WHERE org = ? AND "
                                      "reporter = ? AND reporter_serial = ?"),
                            (org, reporter, serial))
                count += int(cur.rowcount or 0)
            return count

        result: int = self._transaction(work)
        return result

    # -- reads ------------------------------------------------------------
    def revisions(self) -> dict[str, int]:
        """Current feed revision per org."""
        return {str(o): int(r) for o, r in self._query("SELECT org, revision FROM feed_revisions")}

    def changes(self) -> dict[str, int]:
        """Each org's change counter (what the store poller compares: another
        replica's accepted change moves it)."""
        return {str(o): int(c) for o, c in self._query("SELECT org, changes FROM feed_revisions")}

    def revision(self, org: str) -> int:
        rows = self._query("SELECT revision FROM feed_revisions WHERE org = ?", (org,))
        return int(rows[0][0]) if rows else 0

    def reports(self, org: str) -> list[StoredReport]:
        rows = self._query(
            "SELECT device, candidates, mapping, listen_port, serial, observed_addr, "
            "reported_at, revision, reports, cert_serial, changed_at FROM endpoint_reports "
            "WHERE org = ? ORDER BY device",
            (org,),
        )
        out = []
        for device, cands, mapping, port, serial, observed, at, rev, count, cert, changed \
                in rows:
            candidates = tuple(Candidate(c["kind"], c["address"]) for c in json.loads(cands))
            report = EndpointReport(
                org=org,
                device=str(device),
                candidates=candidates,
                mapping=str(mapping),
                listen_port=int(port),
                serial=int(serial),
                observed_addr=observed,
                reported_at=int(at),
                cert_serial=int(cert),
            )
            out.append(StoredReport(report, int(rev), int(count), int(changed)))
        return out

    def reflections(self, org: str) -> list[Reflection]:
        rows = self._query(
            "SELECT peer, reporter, endpoint, reporter_serial, since, seen_at "
            "FROM relay_reflections WHERE org = ? ORDER BY peer, reporter",
            (org,),
        )
        return [Reflection(str(p), str(r), str(e), int(s), int(since), int(seen))
                for p, r, e, s, since, seen in rows]

    def agent_serials(self) -> dict[str, dict[str, tuple[int, int]]]:
        """``{org: {device: (applied serial, reported_at)}}``: the rollout view."""
        out: dict[str, dict[str, tuple[int, int]]] = {}
        rows = self._query("SELECT org, device, serial, reported_at FROM endpoint_reports")
        for org, device, serial, at in rows:
            out.setdefault(str(org), {})[str(device)] = (int(serial), int(at))
        return out

    def total_reports(self) -> int:
        rows = self._query("SELECT COALESCE(SUM(reports), 0) FROM endpoint_reports")
        return int(rows[0][0])

    def backend_pid(self) -> int | None:
        """PostgreSQL: the server process of this store's connection (its own
        notifications carry it); None on SQLite."""
        if self.dialect != "postgresql":
            return None
        return int(self._query("SELECT pg_backend_pid()")[0][0])

    def close(self) -> None:
        try:
            self._store.close()
        except self._errors():
            pass


class FeedListener:
    """One dedicated PostgreSQL connection (autocommit) that ``LISTEN``s on
    ``FEED_CHANNEL``: another replica's committed feed change arrives here as
    the org's name. Blocking; ``reconciler.hub.notify`` drives it from one
    thread and reconnects when it fails. Every driver error becomes
    ``TemporaryError``: the listener is an accelerator, the periodic store
    poll stays the source of truth. Not for SQLite (one process, no NOTIFY)."""

    APPLICATION_NAME = "meshops-hub-listen"  # visible in pg_stat_activity

    def __init__(self, url: str, connect_timeout: float = 5.0) -> None:
        import psycopg

        self._errors: tuple[type[BaseException], ...] = (psycopg.Error, OSError)
        try:
            # TCP keepalives: a silently dropped connection (NAT, failover) is
            # noticed within ~30 s even between pings
            self._conn = psycopg.connect(
                url, autocommit=True, connect_timeout=max(1, int(connect_timeout)),
                application_name=self.APPLICATION_NAME, keepalives=1, keepalives_idle=10,
                keepalives_interval=5, keepalives_count=3)
        except self._errors as exc:
            raise TemporaryError(f"feed listener: cannot connect: {exc}", delay=1.0) from exc
        try:
            self._conn.execute(f"LISTEN {FEED_CHANNEL}")
        except self._errors as exc:
            self.close()
            raise TemporaryError(f"feed listener: LISTEN failed: {exc}", delay=1.0) from exc

    def wait(self, timeout: float) -> list[tuple[str, int]]:
        """(org, sender's backend pid) of the notifications that arrive within
        ``timeout`` seconds; returns with the first batch ([] on timeout)."""
        try:
            return [(n.payload, n.pid)
                    for n in self._conn.notifies(timeout=timeout, stop_after=1)]
        except self._errors as exc:
            raise TemporaryError(f"feed listener: connection lost: {exc}", delay=1.0) from exc

    def ping(self) -> None:
        """A round trip, so a dead connection is noticed while no one writes."""
        try:
            self._conn.execute("SELECT 1")
        except self._errors as exc:
            raise TemporaryError(f"feed listener: connection lost: {exc}", delay=1.0) from exc

    def close(self) -> None:
        try:
            self._conn.close()
        except self._errors:
            pass
