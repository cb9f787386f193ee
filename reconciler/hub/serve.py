"""The running hub: current snapshot, level-based publish, reports, feeds.

``Hub`` is the state ``reconciler.hub.api`` serves from. It is built and
wired to the follower, the HTTPS listener, the STUN responder and the store
poller by ``reconciler.hub.daemon`` (what ``meshops hub serve`` runs); tests
build it directly with a fake pipeline and an injected clock.

Level-based, like a controller-runtime reconciler: the follower calls
``Hub.reconcile(head)`` on every pass with the branch head it read (not only
when the head moved). ``decide`` (pure) compares the head with what is served
and with the head's last failure, and returns what to build now and when the
next pass is due at the latest:

* a head that is not served and has not failed is built;
* a ``TemporaryError`` is retried with exponential backoff, starting from the
  exception's ``delay`` and capped at ``retry_cap``; it stays on ``/v1/status``
  and in the metrics until a build of that head succeeds;
* a ``PermanentError`` is not retried for the same commit; it stays visible
  until a newer head replaces it;
* the served commit is re-published every ``refresh_every`` seconds
  (certificate renewals, manifest ``not_after``), also while a newer head
  fails; that refresh never hides the head's failure. It comes earlier when a
  trust root in git becomes due (``Snapshot.next_change_at``, the end of a key
  rotation's overlap), so the old keys retire on time.

Build, validate, swap: ``Hub.publish(rev)`` runs the publish pipeline in a
worker thread and swaps the new ``Snapshot`` in with one assignment only when
it succeeded. A failure keeps the last good snapshot serving.

Reports are batched: concurrent ``POST /endpoints`` requests are written in
one transaction by ``ReportWriter``, and each request is answered only after
that transaction committed (an accepted report is never lost).

The feed's revision follows its content (``reconciler.hub.feed``,
``FeedStore.assign_revision``): a report that repeats the last one does not
move it. Long-polls wait on ``Signal``s: the manifest signal fires on every
swap; the feed signal on every swap, on every local commit that changed
something (``Recorded.changes``), and whenever the store poller sees another
replica's change counter move. A feed waiting for a change also wakes when
its entries expire by time alone (``next_change``). After every swap the
reflections of reporters that are no longer relays, or whose certificate was
revoked, are deleted (``FeedStore.prune_reflections``); feed builds filter
them against the served snapshot in any case.
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

from reconciler.errors import MeshopsError, TemporaryError
from reconciler.hub.claims import Authority, Observation
from reconciler.hub.feed import (
    FEED_PAYLOAD_TYPE,
    build_entries,
    build_feed,
    entries_digest,
    feed_payload,
)
from reconciler.hub.feedstore import FeedStore, Recorded
from reconciler.hub.metrics import Metrics
from reconciler.hub.snapshot import OrgSnapshot, Pipeline, Snapshot
from reconciler.hub.views import Answer, Views
from reconciler.model.endpoint import IPAddress
from reconciler.model.endpoints import EndpointFeed, EndpointReport
from reconciler.pki.envelope import sign_envelope_multi

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

FEED_MAX_AGE = 30.0  # rebuild a feed at least this often (a safety net: same digest, same revision)
FEED_MIN_INTERVAL = 0.5  # and at most this often per org under a stream of reports
PAUSE_MIN = 0.01  # the shortest sleep of a feed waiter that found a rebuild due
FEED_BUILD_SHARE = 3.0  # and at most once per this many build durations (10,000 entries: ~0.5 s)


def authority(org: OrgSnapshot) -> Authority:
    """Who may claim what in ``org``, as its served snapshot says."""
    return Authority(devices=org.devices, relays=org.relays, revoked=org.revoked)


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
    """One build of an org's feed. Per-device views need only ``feed`` (the
    entries); the whole-feed envelope (``GET .../endpoints``) is serialized and
    signed on first use (``signed_body``, on the feed thread), not at every
    build: at 10,000 entries that is ~0.15 s of the interpreter, which a
    publish would otherwise spend while 10,000 view answers wait for it."""

    revision: int
    body: bytes | None  # the signed envelope; None until ``signed_body`` makes it
    built_at: float  # monotonic
    snapshot_serial: int
    changes: int = 0  # the org's change counter it was built at
    next_change: float | None = None  # hub clock: the entries change by time alone then
    feed: EndpointFeed | None = None  # the entries it signs (per-device views filter them)
    build_s: float = 0.0  # how long building it took (wall clock, worker thread)
    sign: Callable[[], bytes] | None = field(default=None, compare=False, repr=False)
    _made: list[bytes] = field(default_factory=list, compare=False, repr=False)

    @property
    def made(self) -> bool:
        """The envelope exists: ``signed_body`` returns it without work."""
        return self.body is not None or bool(self._made)

    def signed_body(self) -> bytes:
        """The signed envelope, made once (called on the feed thread: one worker,
        so two requests never make it twice)."""
        if self.body is not None:
            return self.body
        if not self._made:
            assert self.sign is not None
            self._made.append(self.sign())
        return self._made[0]

    @property
    def window(self) -> float:
        """The least time between this build and the next one while reports
        stream in: FEED_MIN_INTERVAL, or FEED_BUILD_SHARE build durations."""
        return max(FEED_MIN_INTERVAL, FEED_BUILD_SHARE * self.build_s)

    def rebuild_pause(self, mono: float) -> float:
        """Seconds until a rebuild is allowed (``_signed_feed``'s rule), at least
        PAUSE_MIN: waiters sleep this long, never spin on the cached build."""
        return max(self.built_at + self.window - mono, PAUSE_MIN)


REFRESH_EVERY = 6 * 3600.0  # re-publish the served commit (renewals, manifest not_after)
RETRY_CAP = 300.0  # the longest wait between two attempts of a temporarily failing commit
RETRY_MIN = 1.0  # the shortest, whatever delay an exception suggests

TEMPORARY, PERMANENT, INTERNAL = "temporary", "permanent", "internal"


@dataclass(frozen=True)
class Failure:
    """Why ``commit`` is not served. ``kind`` is ``temporary`` (retried at
    ``retry_at``), ``permanent`` (not retried for this commit) or ``internal``
    (an unexpected exception: a bug or the host; retried like a temporary one)."""

    commit: str
    kind: str
    error_class: str
    message: str  # redacted: /v1/status is unauthenticated
    at: float  # unix time of the last failed attempt
    attempts: int  # consecutive failed attempts of this commit
    retry_at: float | None  # unix time of the next attempt; None: never for this commit


@dataclass(frozen=True)
class Decision:
    """What one pass does: build ``build`` (``None``: nothing), and run the
    next pass within ``requeue`` seconds (``None``: only when woken)."""

    build: str | None
    refresh: bool = False  # ``build`` re-publishes the served commit
    requeue: float | None = None


def retry_delay(hint: float, attempts: int, cap: float = RETRY_CAP,
                floor: float = RETRY_MIN) -> float:
    """Exponential backoff: ``hint`` (the exception's ``delay``) doubled per
    further consecutive failure, at least ``floor``, at most ``cap``."""
    return min(cap, max(floor, hint) * 2.0 ** min(attempts - 1, 30))


def decide(head: str | None, serving: str | None, failure: Failure | None,
           refresh_at: float | None, now: float) -> Decision:
    """The pure heart of a pass.

    ``head``: the branch head (``None``: the branch cannot be read);
    ``serving``: the commit served (``None``: nothing yet); ``failure``: the
    last failure of the head, if any; ``refresh_at``: when the served commit
    is due to be re-published."""
    wait = float("inf")
    if head is not None and head != serving:
        if failure is None or failure.commit != head:
            return Decision(build=head)
        if failure.retry_at is not None:
            if now >= failure.retry_at:
                return Decision(build=head)
            wait = failure.retry_at - now
    if serving is not None and refresh_at is not None:
        if now >= refresh_at:
            return Decision(build=serving, refresh=True)
        wait = min(wait, refresh_at - now)
    return Decision(build=None, requeue=None if wait == float("inf") else wait)


def classify(exc: BaseException) -> tuple[str, float]:
    """The retry class of a failed build and the delay it suggests."""
    if isinstance(exc, TemporaryError):
        return TEMPORARY, exc.delay
    if isinstance(exc, MeshopsError):  # PermanentError, or any other error of the tree
        return PERMANENT, 0.0
    return INTERNAL, 5.0


@dataclass
class PublishStatus:
    """What the last passes found; ``Hub.status_doc`` renders it."""

    commit: str | None = None  # the branch head read by the last pass
    branch: str | None = None  # the branch followed (None: not known yet)
    follow_error: str | None = None  # why the branch head cannot be read, if so
    failure: Failure | None = None  # why the head is not served, if so
    last_good_at: float | None = None
    refresh_at: float | None = None  # when the served commit is re-published next

    @property
    def error(self) -> str | None:
        return self.failure.message if self.failure else None


class ReportWriter:
    """Group concurrent reports into one store transaction; resolve each caller,
    once committed, with whether its report changed what the feed shows."""

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
            tuple[EndpointReport, Sequence[Observation], asyncio.Future[bool]]
        ] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="report-writer")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def submit(self, report: EndpointReport, observations: Sequence[Observation]) -> bool:
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
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
                recorded: Recorded = await loop.run_in_executor(
                    self._executor, self._store.record, batch)
            except MeshopsError as exc:  # the store failed: every caller gets the error (503)
                for _, _, fut in items:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            except Exception as exc:  # a bug: fail this batch (503), keep the writer running
                log.error("report batch of %d not stored", len(items), exc_info=exc)
                for _, _, fut in items:
                    if not fut.done():
                        fut.set_exception(TemporaryError(f"report not stored: {exc}", 1.0))
                continue
            self._metrics.store_commit.observe(time.monotonic() - started)
            self._metrics.reports.inc(len(items))
            self._metrics.report_batches.observe(len(items))
            self._on_commit(recorded.changes)
            for (_, _, fut), changed in zip(items, recorded.changed, strict=True):
                if not fut.done():
                    fut.set_result(changed)


@dataclass
class Hub:
    """Everything the API serves. ``now`` is injected (unix seconds)."""

    pipeline: Pipeline
    store: FeedStore
    now: Callable[[], float] = time.time
    metrics: Metrics = field(default_factory=Metrics)
    on_swap: Callable[[Snapshot], None] | None = None  # e.g. TLS refresh
    refresh_every: float = REFRESH_EVERY
    retry_cap: float = RETRY_CAP
    retry_min: float = RETRY_MIN
    snapshot: Snapshot | None = None
    status: PublishStatus = field(default_factory=PublishStatus)
    revisions: dict[str, int] = field(default_factory=dict)  # the served feed revision per org
    changes: dict[str, int] = field(default_factory=dict)  # the store's change counter per org
    hub_addresses: frozenset[IPAddress] = frozenset()  # no device may claim these

    def __post_init__(self) -> None:
        # One thread for the store (SQLite/psycopg connection), one for publishing.
        self._db = ThreadPoolExecutor(1, thread_name_prefix="hub-db")
        self._pub = ThreadPoolExecutor(1, thread_name_prefix="hub-publish")
        # Feed builds read every row of an org; on their own connection and thread
        # (from ``start``) report commits never queue behind them.
        self._feed_store, self._feed_exec = self.store, self._db
        self.manifest_changed = Signal()
        self.feed_changed = Signal()
        self._feeds: dict[str, SignedFeed] = {}
        self._feed_locks: dict[str, asyncio.Lock] = {}
        self._reconcile_lock = asyncio.Lock()
        self.views = Views()
        self._pumps: dict[str, asyncio.Task[None]] = {}
        self.writer = ReportWriter(self.store, self._db, self.metrics, self._changes_moved)

    # -- lifecycle ----------------------------------------------------------
    async def start(self) -> None:
        url = getattr(self.store, "url", "")
        if isinstance(self.store, FeedStore) and url.startswith(("sqlite:///", "postgres")) \
                and ":memory:" not in url:
            self._feed_store = await asyncio.to_thread(FeedStore, url)
            self._feed_exec = ThreadPoolExecutor(1, thread_name_prefix="hub-feed")
        self.writer.start()
        await self.poll_store()

    async def close(self) -> None:
        for task in self._pumps.values():
            task.cancel()
        await self.writer.stop()
        if self._feed_exec is not self._db:
            self._feed_exec.submit(self._feed_store.close).result()
            self._feed_exec.shutdown(wait=True)
        self._pub.shutdown(wait=True, cancel_futures=True)
        self._db.submit(self.store.close).result()
        self._db.shutdown(wait=True)

    async def db(self, fn: Callable[..., object], *args: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    # -- publish ------------------------------------------------------------
    def follow_state(self, branch: str | None, problem: str | None) -> None:
        """What the follower knows about its branch (``problem``: why no head)."""
        self.status.branch = branch
        self.status.follow_error = redact(problem) if problem else None
        self.metrics.branch_found.set(0 if problem else 1)

    async def reconcile(self, head: str | None) -> float | None:
        """One level-based pass for branch head ``head``: build what ``decide``
        says; return the seconds until the next pass is due at the latest
        (``None``: only when the follower is woken)."""
        async with self._reconcile_lock:
            self.status.commit = head
            serving = self.snapshot.commit if self.snapshot else None
            stale = self.status.failure
            if stale is not None and head is not None and head != stale.commit and head == serving:
                self._set_failure(None)  # the branch went back to the served commit
            for _ in range(3):  # at most a refresh and the head; every build moves a deadline
                serving = self.snapshot.commit if self.snapshot else None
                failure = self.status.failure
                decision = decide(head, serving, failure, self.status.refresh_at, self.now())
                if decision.build is None:
                    return decision.requeue
                if failure is not None and failure.commit == decision.build:
                    self.metrics.publish_retries.inc()
                await self._publish(decision.build, refresh=decision.refresh, head=head)
            return 0.0

    async def publish(self, rev: str) -> bool:
        """Build ``rev`` now and serve it if the build succeeds (tests, tools)."""
        async with self._reconcile_lock:
            self.status.commit = rev
            return await self._publish(rev, refresh=False, head=rev)

    async def _publish(self, rev: str, *, refresh: bool, head: str | None) -> bool:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            snap = await loop.run_in_executor(self._pub, self.pipeline.build, rev, self.now())
            if self.on_swap is not None:
                self.on_swap(snap)  # e.g. new TLS contexts; fails before the swap
        except Exception as exc:  # noqa: BLE001 - any failure keeps the last good snapshot
            return self._failed(rev, exc, refresh=refresh, head=head)
        finally:
            self.metrics.publish_seconds.observe(time.monotonic() - started)
        self.snapshot = snap
        for org in snap.orgs.values():
            if org.org in self.views.history:  # an org with view long-polls: wake them
                self.views.served(org.org, org.manifest_model)
        self.views.forget(snap.orgs)
        now = self.now()
        self.status.last_good_at = now
        self.status.refresh_at = now + self.refresh_every
        if snap.next_change_at is not None:  # a rotation's overlap ends: retire the old keys
            self.status.refresh_at = min(self.status.refresh_at, snap.next_change_at)
        failure = self.status.failure
        if failure is not None and (rev == head or failure.commit == rev):
            self._set_failure(None)  # the head is served, or the failed refresh went through
        self.metrics.publishes.labels("ok").inc()
        self.metrics.last_success.set(now)
        for org in snap.orgs.values():
            self.metrics.manifest_serial.labels(org.org).set(org.serial)
        self.manifest_changed.fire()
        self.feed_changed.fire()  # device set, relays, revocations may have changed
        log.info("serving commit %s (%d orgs)", rev[:12], len(snap.orgs))
        await self._prune(snap)
        return True

    async def _prune(self, snap: Snapshot) -> None:
        """Delete reflections whose reporter left, was disabled, stopped being a
        relay or was revoked. Feed builds filter them anyway, so a failure here
        is only logged."""
        for org in snap.orgs.values():
            try:
                gone = await self.db(self.store.prune_reflections, org.org, org.relays,
                                     org.revoked)
            except MeshopsError as exc:
                log.warning("org %s: could not delete the reflections of former relays: %s",
                            org.org, exc)
                continue
            if gone:
                log.info("org %s: deleted %s reflections of reporters that are no longer "
                         "relays or were revoked", org.org, gone)

    def _failed(self, rev: str, exc: Exception, *, refresh: bool, head: str | None) -> bool:
        kind, hint = classify(exc)
        text = str(exc) if isinstance(exc, MeshopsError) else \
            f"internal error: {type(exc).__name__}: {exc}"
        message = redact(text)  # /v1/status is unauthenticated: no secrets in it
        now = self.now()
        old = self.status.failure
        attempts = old.attempts + 1 if old is not None and old.commit == rev else 1
        if kind == INTERNAL and attempts == 1:
            log.error("publish of %s crashed", rev[:12], exc_info=exc)  # a bug: once per commit
        retry_at = None if kind == PERMANENT else now + retry_delay(
            hint, attempts, self.retry_cap, self.retry_min)
        self.metrics.publishes.labels("error").inc()
        if refresh:
            # the served commit could not be re-published: keep serving it, try again later
            self.status.refresh_at = retry_at if retry_at is not None else now + self.refresh_every
        if rev == head or not refresh:
            # a failed refresh of the head is retried by the refresh schedule
            self._set_failure(Failure(rev, kind, type(exc).__name__, message, now, attempts,
                                      self.status.refresh_at if refresh else retry_at))
        when = "never for this commit" if retry_at is None else f"in {retry_at - now:.0f}s"
        log.error("commit %s not published (%s %s, attempt %d, retry %s), still serving %s: %s",
                  rev[:12], kind, type(exc).__name__, attempts, when,
                  self.snapshot.commit[:12] if self.snapshot else "nothing", message)
        return False

    def _set_failure(self, failure: Failure | None) -> None:
        old = self.status.failure
        if old is not None:
            self.metrics.publish_failure.remove(old.commit[:12], old.kind, old.error_class)
        self.status.failure = failure
        self.metrics.publish_failing.set(0 if failure is None else 1)
        if failure is None:
            self.metrics.next_retry.set(0)
            return
        self.metrics.publish_failure.labels(failure.commit[:12], failure.kind,
                                            failure.error_class).set(failure.attempts)
        self.metrics.next_retry.set(failure.retry_at or 0)

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
    def _changes_moved(self, changes: dict[str, int]) -> None:
        moved = False
        for org, count in changes.items():
            if count > self.changes.get(org, 0):
                self.changes[org] = count
                moved = True
        if moved:
            self.feed_changed.fire()

    def _served(self, org: str, revision: int) -> None:
        if revision > self.revisions.get(org, 0):
            self.revisions[org] = revision
            self.metrics.feed_revision.labels(org).set(revision)

    async def poll_store(self) -> None:
        """Pick up changes written by other replicas (and at start-up)."""
        revisions = await self.db(self.store.revisions)
        changes = await self.db(self.store.changes)
        assert isinstance(revisions, dict) and isinstance(changes, dict)
        for org, revision in revisions.items():
            self._served(org, revision)
        self._changes_moved(changes)

    async def report(self, report: EndpointReport, observations: Sequence[Observation]) -> bool:
        """Store an accepted report and the reflections kept from it; True when
        it changed what the feed shows."""
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
                if self.changes.get(org.org, 0) > signed.changes:
                    # rate-limited rebuild: wait out only what is left of the window
                    # since the last build (a change after a quiet spell rebuilds now)
                    await asyncio.sleep(min(signed.rebuild_pause(time.monotonic()), remaining))
                else:
                    if signed.next_change is not None:  # something expires before then
                        remaining = min(remaining, max(FEED_MIN_INTERVAL,
                                                       signed.next_change - self.now()))
                    await self.feed_changed.wait(remaining)
        finally:
            if counted:
                self.metrics.long_polls.labels("feed").dec()

    async def _signed_feed(self, org: OrgSnapshot) -> SignedFeed:
        lock = self._feed_locks.setdefault(org.org, asyncio.Lock())
        async with lock:
            cached = self._feeds.get(org.org)
            changes = self.changes.get(org.org, 0)
            mono, now = time.monotonic(), self.now()
            if cached is not None and cached.snapshot_serial == org.serial:
                age = mono - cached.built_at
                # Not rebuilt because another replica assigned a newer revision: two
                # replicas briefly serving different snapshots would take turns
                # moving it. Writes (``changes``), expiry and swaps are the triggers.
                current = cached.changes >= changes and (
                    cached.next_change is None or now < cached.next_change)
                # under a stream of reports, rebuilding at most once per
                # FEED_BUILD_SHARE build durations leaves the store and the
                # interpreter to the reports and the answers
                if (current and age < FEED_MAX_AGE) or age < cached.window:
                    return cached
            built = await asyncio.get_running_loop().run_in_executor(
                self._feed_exec, self._build_feed, org, now, changes)
            assert isinstance(built, SignedFeed)
            self._feeds[org.org] = built
            if built.feed is not None:
                self.views.feed_built(org.org, built.feed)  # wakes the devices that see it
            self._served(org.org, built.revision)
            return built

    def _build_feed(self, org: OrgSnapshot, now: float, changes: int) -> SignedFeed:
        """Worker thread: read the org's rows, merge, take the revision of the
        entries' digest, sign."""
        started = time.monotonic()
        store = self._feed_store
        entries, next_change = build_entries(
            store.reports(org.org), store.reflections(org.org), authority(org), now)
        revision, generated_at = store.assign_revision(
            org.org, entries_digest(org.org, entries), int(now))
        feed = build_feed(org.org, revision, generated_at, entries)
        root_version, signers = org.root_version, org.feed_signers

        def sign() -> bytes:
            return sign_envelope_multi(feed_payload(feed, root_version), FEED_PAYLOAD_TYPE,
                                       signers)

        done = time.monotonic()
        return SignedFeed(revision, None, done, org.serial, changes, next_change, feed,
                          done - started, sign)

    async def feed_body(self, signed: SignedFeed) -> bytes:
        """``signed``'s envelope, serialized and signed on the feed thread the
        first time a whole-feed request needs it."""
        if signed.made:
            return signed.signed_body()
        body = await asyncio.get_running_loop().run_in_executor(self._feed_exec,
                                                                signed.signed_body)
        assert isinstance(body, bytes)
        return body

    # -- per-device views (reconciler.hub.views) ---------------------------------
    async def view(self, org_name: str, device: str, start: tuple[int, int] | None,
                   wait: float) -> Answer | None:
        """Device ``device``'s view: a snapshot without ``start``; with it, the
        delta from ``start`` (a snapshot when the history does not cover it) as
        soon as something in the view changed, or when ``wait`` runs out and only
        the position moved; None (304) when nothing moved within ``wait``."""
        deadline = time.monotonic() + wait
        counted = False
        try:
            while True:
                org = self.org(org_name)
                if org is None:
                    raise MeshopsError(f"org {org_name!r} is no longer served")
                self.views.served(org.org, org.manifest_model)
                if org.org not in self.views.feeds:  # the first view request of the org
                    signed = await self._signed_feed(org)
                    if signed.feed is not None:
                        self.views.feed_built(org.org, signed.feed)
                self._ensure_pump(org.org)
                if start is None:
                    return self.views.snapshot(org.org, device, org.feed_signers)
                pos = self.views.position(org.org)
                assert pos is not None
                remaining = deadline - time.monotonic()
                ahead = start[0] > pos[0] or (start[0] == pos[0] and start[1] > pos[1])
                if not (start == pos or ahead):
                    answer, relevant = self.views.delta(org.org, device, start,
                                                        org.feed_signers)
                    if answer is None:
                        return self.views.snapshot(org.org, device, org.feed_signers)
                    if relevant or remaining <= 0:
                        return answer
                # nothing new in this view (or this replica is behind): hold the
                # long-poll until something the device sees changes; when it
                # ends, a position that moved is answered with a delta
                if not counted:
                    self.metrics.long_polls.labels("view").inc()
                    counted = True
                if not await self.views.wait(org.org, device, remaining):
                    pos = self.views.position(org.org)
                    if pos is None or pos == start or start[0] > pos[0] or (
                            start[0] == pos[0] and start[1] > pos[1]):
                        return None
                    answer, _ = self.views.delta(org.org, device, start, org.feed_signers)
                    return answer or self.views.snapshot(org.org, device, org.feed_signers)
        finally:
            if counted:
                self.metrics.long_polls.labels("view").dec()

    def _ensure_pump(self, org: str) -> None:
        task = self._pumps.get(org)
        if task is None or task.done():
            self._pumps[org] = asyncio.get_running_loop().create_task(
                self._feed_pump(org), name=f"view-feed-{org}")

    async def _feed_pump(self, org_name: str) -> None:
        """Rebuild the org's feed when reports changed it (rate-limited like the
        feed long-poll), so view long-polls learn of endpoint moves without
        anyone polling the whole feed."""
        while True:
            await self.views.answered(org_name)  # a wake round's answers go first
            org = self.org(org_name)
            if org is None:
                return
            try:
                signed = await self._signed_feed(org)
            except TemporaryError as exc:
                log.warning("org %s: feed not rebuilt for views: %s", org_name, exc)
                await asyncio.sleep(FEED_MIN_INTERVAL)
                continue
            if self.changes.get(org_name, 0) > signed.changes:
                # built within the rate limit: wait out the rest of its window
                await asyncio.sleep(signed.rebuild_pause(time.monotonic()))
                continue
            wait = FEED_MAX_AGE
            if signed.next_change is not None:
                wait = min(wait, max(FEED_MIN_INTERVAL, signed.next_change - self.now()))
            await self.feed_changed.wait(wait)

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
        st, failure = self.status, self.status.failure
        return {
            "serving_commit": snap.commit if snap else None,
            "branch": st.branch,
            "branch_commit": st.commit,
            "follow_error": st.follow_error,
            "healthy": snap is not None and failure is None and st.follow_error is None,
            "last_error": failure.message if failure else None,
            "last_error_at": failure.at if failure else None,
            "failing_commit": failure.commit if failure else None,
            "error_kind": failure.kind if failure else None,
            "error_class": failure.error_class if failure else None,
            "attempts": failure.attempts if failure else 0,
            "next_retry_at": failure.retry_at if failure else None,
            "last_good_at": st.last_good_at,
            "orgs": orgs,
        }
