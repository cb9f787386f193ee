"""The hub's durable state: device certificates, serials and manifest serials.

Called by the publisher (``reconciler.hub.publish``) and ``hub serve``.
``open_store(url)`` accepts:

* ``sqlite:///PATH`` (default; stdlib ``sqlite3``, WAL journal; PATH relative,
  ``sqlite:////abs/path`` absolute, as in SQLAlchemy and ``hub.feedstore``), or a
  plain file path;
* ``postgresql://…`` (psycopg 3) when several hub replicas share the state.

Both speak the same SQL; ``_Dialect`` only swaps the parameter placeholder
(``?`` vs ``%s``) and the driver's integrity-error class. Tables are created by
``MIGRATIONS`` (a list of ``(version, statements)``) recorded in
``schema_version``; later features append entries, never edit old ones.

Certificate serials are random 63-bit integers (positive in a signed BIGINT,
RFC 5280 4.1.2.2 allows up to 20 octets); ``certs.serial`` is UNIQUE, and
``add_cert`` returns False on a collision so the caller draws another.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlparse

from reconciler.errors import ConfigError, TemporaryError

SCHEMA_LOCK_KEY = 0x6D657368  # "mesh": the advisory lock held while a hub changes the schema
MIGRATIONS: list[tuple[int, tuple[str, ...]]] = [
    (
        1,
        (
            """CREATE TABLE IF NOT EXISTS certs (
                org TEXT NOT NULL,
                device TEXT NOT NULL,
                serial BIGINT NOT NULL UNIQUE,
                fingerprint TEXT NOT NULL,
                not_before BIGINT NOT NULL,
                not_after BIGINT NOT NULL,
                pem TEXT NOT NULL,
                identity_key TEXT NOT NULL,
                wg_key TEXT NOT NULL,
                ips TEXT NOT NULL,
                issued_at BIGINT NOT NULL,
                revoked_at BIGINT)""",
            "CREATE INDEX IF NOT EXISTS certs_org_device ON certs (org, device)",
            """CREATE TABLE IF NOT EXISTS manifest_serials (
                org TEXT PRIMARY KEY,
                last_serial BIGINT NOT NULL,
                last_commit TEXT NOT NULL,
                updated_at BIGINT NOT NULL)""",
        ),
    ),
]


@dataclass(frozen=True)
class CertRecord:
    """One issued device certificate (public data only)."""

    org: str
    device: str
    serial: int
    fingerprint: str
    not_before: int
    not_after: int
    pem: str = field(repr=False)
    identity_key: str
    wg_key: str
    ips: tuple[str, ...]
    issued_at: int
    revoked_at: int | None = None


_CERT_COLS = (
    "org, device, serial, fingerprint, not_before, not_after, pem, "
    "identity_key, wg_key, ips, issued_at, revoked_at"
)


def _cert_from_row(row: Sequence[Any]) -> CertRecord:
    return CertRecord(
        org=row[0],
        device=row[1],
        serial=int(row[2]),
        fingerprint=row[3],
        not_before=int(row[4]),
        not_after=int(row[5]),
        pem=row[6],
        identity_key=row[7],
        wg_key=row[8],
        ips=tuple(x for x in row[9].split(",") if x),
        issued_at=int(row[10]),
        revoked_at=None if row[11] is None else int(row[11]),
    )


def _cert_row(c: CertRecord) -> tuple[Any, ...]:
    return (
        c.org, c.device, c.serial, c.fingerprint, c.not_before, c.not_after, c.pem,
        c.identity_key, c.wg_key, ",".join(c.ips), c.issued_at, c.revoked_at,
    )  # fmt: skip


@dataclass(frozen=True)
class _Dialect:
    name: str
    placeholder: str
    integrity_errors: tuple[type[BaseException], ...]
    operational_errors: tuple[type[BaseException], ...]

    def sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)


class Store:
    """Blocking store over one DB-API connection, guarded by a lock.

    Extend by appending to ``MIGRATIONS`` and adding methods that use
    ``self._run`` / ``self.query`` / ``self.transaction()``. ``query`` and
    ``cursor`` are public for ``hub.feedstore``, which keeps its tables on a
    store of its own."""

    def __init__(self, conn: Any, dialect: _Dialect, url: str) -> None:
        self._conn = conn
        self._dialect = dialect
        self._lock = threading.RLock()
        self._depth = 0
        self.url = url
        self._migrate()

    # -- plumbing ---------------------------------------------------------------------------
    @property
    def dialect(self) -> str:
        return self._dialect.name

    def _translate(self, exc: BaseException) -> Exception:
        return TemporaryError(f"state store {self._dialect.name} failed: {exc}")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes; nested calls join the outer transaction."""
        with self._lock:
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    self._conn.rollback()
                raise
            self._depth -= 1
            if self._depth == 0:
                try:
                    self._conn.commit()
                except self._dialect.operational_errors as exc:
                    raise self._translate(exc) from exc

    def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self.transaction():
            try:
                cur = self._conn.execute(self._dialect.sql(sql), tuple(params))
            except self._dialect.operational_errors as exc:
                raise self._translate(exc) from exc
            return int(cur.rowcount or 0)

    @contextmanager
    def cursor(self) -> Iterator[Any]:
        """A driver cursor inside ``transaction()`` (``?`` placeholders are the
        caller's to translate); closed, and the transaction committed, on exit."""
        with self.transaction():
            cur = self._conn.cursor()
            try:
                yield cur
            finally:
                cur.close()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """All rows of one read (``?`` placeholders); ``TemporaryError`` on driver failure."""
        with self._lock:
            try:
                cur = self._conn.execute(self._dialect.sql(sql), tuple(params))
                rows = [tuple(r) for r in cur.fetchall()]
            except self._dialect.operational_errors as exc:
                raise self._translate(exc) from exc
            if self._depth == 0:
                self._conn.commit()  # end the implicit read transaction (psycopg)
            return rows

    def lock_schema(self, cur: Any) -> None:
        """Inside a transaction: serialize schema changes with every other hub
        process on the same database until that transaction ends. Two replicas
        starting at once would otherwise race on ``CREATE TABLE IF NOT EXISTS``
        (PostgreSQL checks the catalog before it locks: a unique violation).
        SQLite serializes writers by itself."""
        if self._dialect.name == "postgresql":
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))

    def _migrate(self) -> None:
        with self.transaction():
            self.lock_schema(self._conn)
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)"
            )
            done = {int(r[0]) for r in self._conn.execute(
                "SELECT version FROM schema_version").fetchall()}  # fmt: skip
            for version, statements in MIGRATIONS:
                if version in done:
                    continue
                for stmt in statements:
                    self._conn.execute(stmt)
                self._conn.execute(
                    self._dialect.sql("INSERT INTO schema_version (version) VALUES (?)"),
                    (version,),
                )

    def schema_version(self) -> int:
        rows = self.query("SELECT MAX(version) FROM schema_version")
        return int(rows[0][0] or 0)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- certificates -----------------------------------------------------------------------
    def add_cert(self, rec: CertRecord) -> bool:
        """Record a new certificate; False if its serial is already taken."""
        sql = f"INSERT INTO certs ({_CERT_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
        with self._lock:
            if self._depth == 0:
                try:
                    self._run(sql, _cert_row(rec))
                except self._dialect.integrity_errors:
                    self._conn.rollback()
                    return False
                return True
            # inside an outer transaction: probe first so a collision does not abort it
            if self.serial_taken(rec.serial):
                return False
            self._run(sql, _cert_row(rec))
            return True

    def serial_taken(self, serial: int) -> bool:
        return bool(self.query("SELECT 1 FROM certs WHERE serial = ?", (serial,)))

    def cert(self, serial: int) -> CertRecord | None:
        rows = self.query(f"SELECT {_CERT_COLS} FROM certs WHERE serial = ?", (serial,))
        return _cert_from_row(rows[0]) if rows else None

    def current_certs(self, org: str) -> dict[str, CertRecord]:
        """The newest unrevoked certificate of each device of ``org``."""
        rows = self.query(
            f"SELECT {_CERT_COLS} FROM certs WHERE org = ? AND revoked_at IS NULL "
            "ORDER BY device, issued_at, serial",
            (org,),
        )
        out: dict[str, CertRecord] = {}
        for row in rows:
            rec = _cert_from_row(row)
            out[rec.device] = rec  # later rows (newer) win
        return out

    def revoke(self, serials: Iterable[int], at: int) -> int:
        """Put serials on the revocation list (idempotent); returns how many changed."""
        changed = 0
        with self.transaction():
            for s in serials:
                changed += self._run(
                    "UPDATE certs SET revoked_at = ? WHERE serial = ? AND revoked_at IS NULL",
                    (at, s),
                )
        return changed

    def revoke_device(self, org: str, device: str, at: int) -> list[int]:
        """Revoke every unrevoked certificate of one device; return their serials."""
        rows = self.query(
            "SELECT serial FROM certs WHERE org = ? AND device = ? AND revoked_at IS NULL",
            (org, device),
        )
        serials = [int(r[0]) for r in rows]
        self.revoke(serials, at)
        return serials

    def revoked_serials(self, org: str, now: float) -> tuple[int, ...]:
        """Revoked serials of ``org`` whose certificates have not expired yet."""
        rows = self.query(
            "SELECT serial FROM certs WHERE org = ? AND revoked_at IS NOT NULL "
            "AND not_after >= ? ORDER BY serial",
            (org, int(now)),
        )
        return tuple(int(r[0]) for r in rows)

    # -- manifest serials -------------------------------------------------------------------
    def last_serial(self, org: str) -> tuple[int, str] | None:
        rows = self.query(
            "SELECT last_serial, last_commit FROM manifest_serials WHERE org = ?", (org,)
        )
        return (int(rows[0][0]), rows[0][1]) if rows else None

    def last_published(self) -> str | None:
        """The commit of the newest publish, over every org ever published (the
        commit gate's anchor: an org deleted since still counts)."""
        rows = self.query("SELECT last_commit FROM manifest_serials "
                          "ORDER BY updated_at DESC, last_serial DESC LIMIT 1")
        return str(rows[0][0]) if rows else None

    def set_last_serial(self, org: str, serial: int, commit: str, at: int) -> None:
        """Record the newest published serial; never moves backwards."""
        self._run(
            "INSERT INTO manifest_serials (org, last_serial, last_commit, updated_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (org) DO UPDATE SET "
            "last_serial = excluded.last_serial, last_commit = excluded.last_commit, "
            "updated_at = excluded.updated_at "
            "WHERE manifest_serials.last_serial < excluded.last_serial",
            (org, serial, commit, at),
        )


def _open_sqlite(path: str, url: str) -> Store:
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level="DEFERRED")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot open state database {path}: {exc}") from exc
    dialect = _Dialect("sqlite", "?", (sqlite3.IntegrityError,), (sqlite3.OperationalError,))
    return Store(conn, dialect, url)


def _open_postgres(url: str) -> Store:
    try:
        import psycopg
    except ImportError as exc:
        raise ConfigError(
            "postgresql:// state needs psycopg: pip install 'meshops[postgres]'"
        ) from exc
    try:
        conn = psycopg.connect(url, autocommit=False)
    except psycopg.Error as exc:
        raise TemporaryError(f"cannot connect to the state database: {exc}") from exc
    dialect = _Dialect(
        "postgresql", "%s", (psycopg.errors.IntegrityError,), (psycopg.OperationalError,)
    )
    return Store(conn, dialect, url)


Opener = Callable[[str], Store]


def open_store(url: str) -> Store:
    """Open (and migrate) ``sqlite:///PATH``, ``sqlite://:memory:`` or ``postgresql://…``."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        # SQLAlchemy's convention, as reconciler.hub.feedstore: sqlite:///rel/path,
        # sqlite:////abs/path, sqlite:///:memory:
        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else parsed.path
        if not path:
            raise ConfigError(f"state URL {url!r} has no path (use sqlite:///PATH)")
        return _open_sqlite(path, url)
    if parsed.scheme in ("postgresql", "postgres"):
        return _open_postgres(url)
    if not parsed.scheme:  # a plain path
        return _open_sqlite(url, f"sqlite:///{url}")
    raise ConfigError(f"unsupported state URL {url!r} (use sqlite:///PATH or postgresql://…)")
