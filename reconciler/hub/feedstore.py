"""Durable tables behind the live endpoint feed: reports, reflections, revisions.

Called by ``reconciler.hub.serve`` (through ``ReportWriter``, which batches
reports into one transaction) and by ``reconciler.hub.api`` for reads. The
certificate/serial tables belong to ``reconciler.hub.store``; this module only
adds the feed's own tables and speaks the same two dialects:

* ``sqlite:///PATH`` (default; WAL journal, ``synchronous=FULL`` so a report
  answered 200 survives a crash or power loss);
* ``postgresql://…`` (psycopg 3) when several hub replicas share one feed.

Each org has a monotonic feed ``revision`` in ``feed_revisions``. Writing a
batch bumps it with ``INSERT … ON CONFLICT … DO UPDATE … RETURNING``: on
PostgreSQL that row lock serialises concurrent replicas, so revisions never
repeat. Replicas learn about each other's writes by polling ``revisions()``.

All methods are blocking; the async caller runs them in one worker thread.
The connection comes from ``reconciler.hub.store.open_store`` (its own
connection, so publishing never waits on report writes).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.errors import TemporaryError
from reconciler.model.endpoints import Candidate, EndpointReport

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
    """CREATE TABLE IF NOT EXISTS reflections (
        org TEXT NOT NULL,
        peer TEXT NOT NULL,
        reporter TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        last_handshake BIGINT NOT NULL,
        reported_at BIGINT NOT NULL,
        PRIMARY KEY (org, peer, reporter))""",
)


@dataclass(frozen=True)
class Observation:
    """One reflection: ``reporter``'s WireGuard saw ``peer`` at ``endpoint``."""

    peer: str
    endpoint: str
    last_handshake: int


@dataclass(frozen=True)
class StoredReport:
    report: EndpointReport
    revision: int
    reports: int  # how many reports this device has sent in total (bench: lost-report check)


@dataclass(frozen=True)
class Reflection:
    peer: str
    reporter: str
    endpoint: str
    last_handshake: int
    reported_at: int


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

    # -- writes -----------------------------------------------------------
    def record(
        self, batch: Sequence[tuple[EndpointReport, Sequence[Observation]]]
    ) -> dict[str, int]:
        """Store reports (and their reflections) in ONE committed transaction.
        Returns the new feed revision of every org touched. Once this returns,
        every report in ``batch`` is durable."""
        orgs = sorted({report.org for report, _ in batch})

        def work(cur: Any) -> dict[str, int]:
            revisions: dict[str, int] = {}
            for org in orgs:  # sorted: replicas lock rows in the same order (no deadlock)
                cur.execute(
                    self._sql(
                        "INSERT INTO feed_revisions (org, revision) VALUES (?, 1) "
                        "ON CONFLICT (org) DO UPDATE SET revision = feed_revisions.revision + 1 "
                        "RETURNING revision"
                    ),
                    (org,),
                )
                revisions[org] = int(cur.fetchone()[0])
            for report, observations in batch:
                candidates = json.dumps(
                    [{"kind": c.kind, "address": c.address} for c in report.candidates]
                )
                cur.execute(
                    self._sql(
                        "INSERT INTO endpoint_reports (org, device, candidates, mapping, "
                        "listen_port, serial, observed_addr, reported_at, revision, reports) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1) "
                        "ON CONFLICT (org, device) DO UPDATE SET candidates = excluded.candidates, "
                        "mapping = excluded.mapping, listen_port = excluded.listen_port, "
                        "serial = excluded.serial, observed_addr = excluded.observed_addr, "
                        "reported_at = excluded.reported_at, revision = excluded.revision, "
                        "reports = endpoint_reports.reports + 1"
                    ),
                    (
                        report.org,
                        report.device,
                        candidates,
                        report.mapping,
                        report.listen_port,
                        report.serial,
                        report.observed_addr,
                        report.reported_at,
                        revisions[report.org],
                    ),
                )
                for obs in observations:
                    cur.execute(
                        self._sql(
                            "INSERT INTO reflections (org, peer, reporter, endpoint, "
                            "last_handshake, reported_at) VALUES (?, ?, ?, ?, ?, ?) "
                            "ON CONFLICT (org, peer, reporter) DO UPDATE SET "
                            "endpoint = excluded.endpoint, "
                            "last_handshake = excluded.last_handshake, "
                            "reported_at = excluded.reported_at"
                        ),
                        (
                            report.org,
                            obs.peer,
                            report.device,
                            obs.endpoint,
                            obs.last_handshake,
                            report.reported_at,
                        ),
                    )
            return revisions

        if not batch:
            return {}
        result: dict[str, int] = self._transaction(work)
        return result

    # -- reads ------------------------------------------------------------
    def revisions(self) -> dict[str, int]:
        """Current feed revision per org (what long-polls compare against)."""
        return {str(o): int(r) for o, r in self._query("SELECT org, revision FROM feed_revisions")}

    def revision(self, org: str) -> int:
        rows = self._query("SELECT revision FROM feed_revisions WHERE org = ?", (org,))
        return int(rows[0][0]) if rows else 0

    def reports(self, org: str) -> list[StoredReport]:
        rows = self._query(
            "SELECT device, candidates, mapping, listen_port, serial, observed_addr, "
            "reported_at, revision, reports FROM endpoint_reports WHERE org = ? ORDER BY device",
            (org,),
        )
        out = []
        for device, cands, mapping, port, serial, observed, at, rev, count in rows:
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
            )
            out.append(StoredReport(report, int(rev), int(count)))
        return out

    def reflections(self, org: str) -> list[Reflection]:
        rows = self._query(
            "SELECT peer, reporter, endpoint, last_handshake, reported_at FROM reflections "
            "WHERE org = ? ORDER BY peer, reporter",
            (org,),
        )
        return [Reflection(str(p), str(r), str(e), int(h), int(a)) for p, r, e, h, a in rows]

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

    def close(self) -> None:
        try:
            self._store.close()
        except self._errors():
            pass
