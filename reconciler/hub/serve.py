"""The running hub: current snapshot, reconcile on new commits, reports, feeds.

``Hub`` is the state ``reconciler.hub.api`` serves from. It is built and
wired to the follower, the HTTPS listener, the STUN responder and the store
poller by ``reconciler.hub.daemon`` (what ``meshops hub serve`` runs); tests
build it directly with a fake pipeline.

Build, validate, swap: ``Hub.reconcile(rev)`` runs the publish pipeline in a
worker thread and swaps the new ``Snapshot`` in with one assignment only when
it succeeded. A failure keeps the last good snapshot serving and is shown on
``/v1/status`` and in ``meshops_hub_publish_failing``.

Reports are batched: concurrent ``POST /endpoints`` requests are written in
one transaction by ``ReportWriter``, and each request is answered only after
that transaction committed (an accepted report is never lost).

Long-polls wait on ``Signal``s: the manifest signal fires on every swap, the
feed signal on every local commit and whenever the store poller sees another
replica move an org's feed revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from reconciler.errors import MeshopsError
from reconciler.hub.feed import FEED_PAYLOAD_TYPE, build_feed, feed_payload
from reconciler.hub.feedstore import FeedStore, Observation
from reconciler.hub.metrics import Metrics
from reconciler.hub.snapshot import OrgSnapshot, Pipeline, Snapshot
from reconciler.model.endpoints import EndpointReport
from reconciler.pki.envelope import sign_envelope

log = logging.getLogger(__name__)

_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
_PEM_PRIVATE = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|$)",
    re.DOTALL)
_SECRET_VALUE = re.compile(
    r"(?i)\b(?P<key>password|passwd|token|secret|private_key|data_key)(?P<sep>\s*[=:]\s*)"
    r"(?P<value>[^\s,;'\"]+)")


def redact(text: str) -> str:
    """A publish error as ``/v1/status`` and the log show it: credentials in
    URLs (``https://user:token@git.example/...``), PEM private keys and
    ``password=``/``token:``-style values are replaced by ``***``."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}***@", text)
    text = _PEM_PRIVATE.sub("[private key redacted]", text)
    return _SECRET_VALUE.sub(lambda m: f"{m['key']}{m['sep']}***", text)

FEED_MAX_AGE = 30.0  # rebuild a feed at least this often (reflections age out)
FEED_MIN_INTERVAL = 0.5  # and at most this often per org under a stream of reports


class Signal:
    """A broadcast wake-up: ``fire()`` wakes every current ``wait()``."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> bool:
        if timeout <= 0:
            return False
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        return True


@dataclass(frozen=True)
class SignedFeed:
    revision: int
    body: bytes
    built_at: float
    snapshot_serial: int


@dataclass
class PublishStatus:
    commit: str | None = None  # the newest commit seen on the branch
    error: str | None = None  # why that commit is not served (None: it is)
    error_at: float | None = None
    last_good_at: float | None = None
    attempts: int = 0


class ReportWriter:
    """Group concurrent reports into one store transaction; resolve each caller
    with its org's new revision once committed."""

    def __init__(
        self,
        store: FeedStore,
        executor: ThreadPoolExecutor,
        metrics: Metrics,
        on_commit: Callable[[dict[str, int]], None],
        max_batch: int = 500,
    ) -> None:
        self._store = store
        self._executor = executor
        self._metrics = metrics
        self._on_commit = on_commit
        self._max_batch = max_batch
        self._queue: asyncio.Queue[
            tuple[EndpointReport, Sequence[Observation], asyncio.Future[int]]
        ] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="report-writer")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def submit(self, report: EndpointReport, observations: Sequence[Observation]) -> int:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await self._queue.put((report, observations, fut))
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            while len(items) < self._max_batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
            batch = [(r, o) for r, o, _ in items]
            started = time.monotonic()
            try:
                revisions = await loop.run_in_executor(self._executor, self._store.record, batch)
            except MeshopsError as exc:  # the store failed: every caller gets the error (503)
                for _, _, fut in items:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self._metrics.store_commit.observe(time.monotonic() - started)
            self._metrics.reports.inc(len(items))
            self._metrics.report_batches.observe(len(items))
            self._on_commit(revisions)
            for report, _, fut in items:
                if not fut.done():
                    fut.set_result(revisions[report.org])


@dataclass
class Hub:
    """Everything the API serves. ``now`` is injected (unix seconds)."""

    pipeline: Pipeline
    store: FeedStore
    now: Callable[[], float] = time.time
    metrics: Metrics = field(default_factory=Metrics)
    on_swap: Callable[[Snapshot], None] | None = None  # e.g. TLS refresh
    snapshot: Snapshot | None = None
    status: PublishStatus = field(default_factory=PublishStatus)
    revisions: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # One thread for the store (SQLite/psycopg connection), one for publishing.
        self._db = ThreadPoolExecutor(1, thread_name_prefix="hub-db")
        self._pub = ThreadPoolExecutor(1, thread_name_prefix="hub-publish")
        self.manifest_changed = Signal()
        self.feed_changed = Signal()
        self._feeds: dict[str, SignedFeed] = {}
        self._feed_locks: dict[str, asyncio.Lock] = {}
        self._reconcile_lock = asyncio.Lock()
        self.writer = ReportWriter(self.store, self._db, self.metrics, self._revisions_moved)

    # -- lifecycle ----------------------------------------------------------
    async def start(self) -> None:
        self.writer.start()
        await self.poll_store()

    async def close(self) -> None:
        await self.writer.stop()
        self._pub.shutdown(wait=True, cancel_futures=True)
        self._db.submit(self.store.close).result()
        self._db.shutdown(wait=True)

    async def db(self, fn: Callable[..., object], *args: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    # -- publish ------------------------------------------------------------
    async def reconcile(self, rev: str, *, force: bool = False) -> bool:
        """Publish commit ``rev``; swap it in only if everything succeeded.

        ``force`` re-publishes the commit already served: certificates due for
        renewal are renewed and manifests get a fresh ``not_after`` even when
        nobody commits (``reconciler.hub.daemon`` does this every few hours)."""
        async with self._reconcile_lock:
            if not force and self.snapshot is not None and self.snapshot.commit == rev:
                return True
            self.status.commit = rev
            self.status.attempts += 1
            started = time.monotonic()
            loop = asyncio.get_running_loop()
            try:
                snap = await loop.run_in_executor(self._pub, self.pipeline.build, rev, self.now())
                if self.on_swap is not None:
                    self.on_swap(snap)  # e.g. new TLS contexts; fails before the swap
            except MeshopsError as exc:
                return self._failed(rev, str(exc))
            except Exception as exc:  # a bug in a stage must not stop the hub
                log.exception("publish of %s crashed", rev[:12])
                return self._failed(rev, f"internal error: {type(exc).__name__}: {exc}")
            finally:
                self.metrics.publish_seconds.observe(time.monotonic() - started)
            self.snapshot = snap
            self.status.error = None
            self.status.error_at = None
            self.status.last_good_at = self.now()
            self.metrics.publishes.labels("ok").inc()
            self.metrics.publish_failing.set(0)
            self.metrics.last_success.set(self.status.last_good_at)
            for org in snap.orgs.values():
                self.metrics.manifest_serial.labels(org.org).set(org.serial)
            self.manifest_changed.fire()
            self.feed_changed.fire()  # device set may have changed
            log.info("serving commit %s (%d orgs)", rev[:12], len(snap.orgs))
            return True

    def _failed(self, rev: str, message: str) -> bool:
        message = redact(message)  # /v1/status is unauthenticated: no secrets in it
        self.status.error = message
        self.status.error_at = self.now()
        self.metrics.publishes.labels("error").inc()
        self.metrics.publish_failing.set(1)
        log.error("commit %s not published, still serving %s: %s", rev[:12],
                  self.snapshot.commit[:12] if self.snapshot else "nothing", message)
        return False

    def org(self, name: str) -> OrgSnapshot | None:
        snap = self.snapshot
        return snap.orgs.get(name) if snap else None

    async def wait_manifest(self, org: str, after_serial: int | None, wait: float) -> OrgSnapshot | None:
        """The org's snapshot; with ``after_serial`` wait up to ``wait`` s for a newer one."""
        deadline = time.monotonic() + wait
        current = self.org(org)
        if after_serial is None or wait <= 0:
            return current
        self.metrics.long_polls.labels("manifest").inc()
        try:
            while current is not None and current.serial <= after_serial:
                if not await self.manifest_changed.wait(deadline - time.monotonic()):
                    break
                current = self.org(org)
        finally:
            self.metrics.long_polls.labels("manifest").dec()
        return current

    # -- reports and feeds ---------------------------------------------------
    def _revisions_moved(self, revisions: dict[str, int]) -> None:
        moved = False
        for org, rev in revisions.items():
            if rev > self.revisions.get(org, 0):
                self.revisions[org] = rev
                self.metrics.feed_revision.labels(org).set(rev)
                moved = True
        if moved:
            self.feed_changed.fire()

    async def poll_store(self) -> None:
        """Pick up revisions written by other replicas (and at start-up)."""
        revisions = await self.db(self.store.revisions)
        assert isinstance(revisions, dict)
        self._revisions_moved(revisions)

    async def report(self, report: EndpointReport, observations: Sequence[Observation]) -> int:
        return await self.writer.submit(report, observations)

    async def feed(self, org: OrgSnapshot, since: int | None, wait: float) -> SignedFeed:
        """The org's signed feed; with ``since`` wait up to ``wait`` s for a newer revision."""
        deadline = time.monotonic() + wait
        counted = False
        try:
            while True:
                current = self.org(org.org) or org
                signed = await self._signed_feed(current)
                remaining = deadline - time.monotonic()
                if since is None or signed.revision > since or remaining <= 0:
                    return signed
                if not counted:
                    self.metrics.long_polls.labels("feed").inc()
                    counted = True
                if self.revisions.get(org.org, 0) > signed.revision:
                    await asyncio.sleep(min(FEED_MIN_INTERVAL, remaining))  # rate-limited rebuild
                else:
                    await self.feed_changed.wait(remaining)
        finally:
            if counted:
                self.metrics.long_polls.labels("feed").dec()

    async def _signed_feed(self, org: OrgSnapshot) -> SignedFeed:
        lock = self._feed_locks.setdefault(org.org, asyncio.Lock())
        async with lock:
            cached = self._feeds.get(org.org)
            rev = self.revisions.get(org.org, 0)
            mono = time.monotonic()
            if cached is not None and cached.snapshot_serial == org.serial:
                age = mono - cached.built_at
                if (cached.revision >= rev and age < FEED_MAX_AGE) or age < FEED_MIN_INTERVAL:
                    return cached
            built = await self.db(self._build_feed, org, self.now())
            assert isinstance(built, SignedFeed)
            self._feeds[org.org] = built
            return built

    def _build_feed(self, org: OrgSnapshot, now: float) -> SignedFeed:
        """Worker thread: read the org's rows, merge, sign."""
        revision = self.store.revision(org.org)
        feed = build_feed(
            org.org,
            revision,
            self.store.reports(org.org),
            self.store.reflections(org.org),
            org.devices,
            now,
        )
        body = sign_envelope(feed_payload(feed), FEED_PAYLOAD_TYPE, org.keys.signing_key)
        return SignedFeed(revision, body, time.monotonic(), org.serial)

    # -- status ---------------------------------------------------------------
    async def status_doc(self) -> dict[str, object]:
        agents = await self.db(self.store.agent_serials)
        assert isinstance(agents, dict)
        snap = self.snapshot
        orgs: dict[str, object] = {}
        for name, org in sorted((snap.orgs if snap else {}).items()):
            seen = agents.get(name, {})
            rollout: dict[str, int] = {}
            for serial, _ in seen.values():
                rollout[str(serial)] = rollout.get(str(serial), 0) + 1
            orgs[name] = {
                "serial": org.serial,
                "commit": snap.commit if snap else None,
                "devices": len(org.devices),
                "feed_revision": self.revisions.get(name, 0),
                "agents_current": sum(1 for s, _ in seen.values() if s >= org.serial),
                "rollout": dict(sorted(rollout.items(), key=lambda kv: -int(kv[0]))),
                "agents": {
                    dev: {"applied_serial": s, "reported_at": at}
                    for dev, (s, at) in sorted(seen.items())
                },
            }
        return {
            "serving_commit": snap.commit if snap else None,
            "branch_commit": self.status.commit,
            "healthy": snap is not None and self.status.error is None,
            "last_error": self.status.error,
            "last_error_at": self.status.error_at,
            "last_good_at": self.status.last_good_at,
            "orgs": orgs,
        }
