"""Hub replicas wake each other with PostgreSQL LISTEN/NOTIFY (reconciler.hub.notify).

Against a real PostgreSQL server (tests/hub/conftest.py): ``FeedStore.record``
notifies on commit only and only when the feed changed; two ``hub serve``
replicas (``daemon.start``, real TLS listeners, one database) whose periodic
store poll is set to 60 s, so only a notification can explain that a report
accepted by replica A wakes the feed and view long-polls held on replica B;
the listener survives ``pg_terminate_backend``. Without PostgreSQL: the poll
coalescing and reconnect backoff with fake listeners, and SQLite is unchanged
(no listener, the fast poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from reconciler import structs
from reconciler.errors import TemporaryError
from reconciler.hub.daemon import Running, ServeConfig, start
from reconciler.hub.feedstore import FEED_CHANNEL, FeedListener, FeedStore
from reconciler.hub.metrics import Metrics
from reconciler.hub.notify import StoreWatch, backoff_delay, poll_interval
from reconciler.hub.serve import Hub
from reconciler.model.endpoints import Candidate, EndpointReport

from .conftest_serve import FakePipeline, OrgFixture, make_org, run, write_pem_files
from .test_serve_tls import client_ctx, init_repo, wait_for

SNI = "acme.hub"
SLOW = 60.0  # the periodic store poll in the replica tests: far longer than any wait below


def _report(device: str, address: str, at: int = 100) -> EndpointReport:
    return EndpointReport("acme", device, (Candidate("stun", address),), "independent", 51820,
                          1, "203.0.113.5:4000", at)


def _metric(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


# -- pure parts and the watch with fake listeners (no database) --------------------------------

def test_poll_interval_and_backoff() -> None:
    assert poll_interval(True, 0.5, 5.0) == 5.0
    assert poll_interval(False, 0.5, 5.0) == 0.5
    assert [backoff_delay(n, 0.5, 4.0) for n in (1, 2, 3, 4, 5, 50)] == \
        [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


class FakeListener:
    """Hands out queued batches of (org, pid); raises when told to."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, int]]] = []
        self.lock = threading.Lock()
        self.fail = threading.Event()
        self.closed = False

    def push(self, *batch: tuple[str, int]) -> None:
        with self.lock:
            self.batches.append(list(batch))

    def wait(self, timeout: float) -> list[tuple[str, int]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.fail.is_set():
                raise TemporaryError("feed listener: connection lost (fake)")
            with self.lock:
                if self.batches:
                    return self.batches.pop(0)
            time.sleep(0.005)
        return []

    def ping(self) -> None:
        if self.fail.is_set():
            raise TemporaryError("feed listener: connection lost (fake)")

    def close(self) -> None:
        self.closed = True


def test_notifications_coalesce_while_a_poll_runs_and_own_ones_are_ignored() -> None:
    async def go() -> None:
        gate = asyncio.Event()
        calls: list[int] = []

        async def poll() -> None:
            calls.append(len(calls))
            await gate.wait()

        listener = FakeListener()
        metrics = Metrics()
        watch = StoreWatch(poll, metrics, fast=SLOW, slow=SLOW, connect=lambda: listener,
                           own_pid=7, wait_slice=0.05)
        await watch.start()
        try:
            await wait_for(lambda: watch.listening)  # connecting polls once (catch-up)
            await wait_for(lambda: len(calls) == 1)
            for _ in range(5):  # a burst while that poll runs: one more poll after it
                listener.push(("acme", 42))
            listener.push(("acme", 7))  # this replica's own commit: not counted
            await wait_for(lambda: _metric(metrics, "meshops_hub_store_notifications_total")
                           == 5)
            assert len(calls) == 1
            gate.set()
            await wait_for(lambda: len(calls) == 2)
            await asyncio.sleep(0.2)
            assert len(calls) == 2  # the burst cost one poll
            assert _metric(metrics, "meshops_hub_store_listening") == 1
        finally:
            await watch.stop()
        assert listener.closed
    run(go())


def test_a_lost_listener_falls_back_to_the_fast_poll_and_reconnects() -> None:
    async def go() -> None:
        polls: list[float] = []

        async def poll() -> None:
            polls.append(time.monotonic())

        first, second = FakeListener(), FakeListener()
        attempts: list[int] = []

        def connect() -> FakeListener:
            attempts.append(1)
            if len(attempts) == 1:
                return first
            if len(attempts) == 2:
                raise TemporaryError("feed listener: cannot connect (fake)")
            return second

        metrics = Metrics()
        watch = StoreWatch(poll, metrics, fast=0.05, slow=SLOW, connect=connect,
                           backoff=(0.05, 0.1), wait_slice=0.05)
        await watch.start()
        try:
            await wait_for(lambda: watch.listening)
            await asyncio.sleep(0.3)
            quiet = len(polls)
            assert quiet <= 2  # listening: no fast polls, only the catch-up one
            first.fail.set()
            await wait_for(lambda: len(attempts) >= 2)  # lost, then a refused reconnect
            await wait_for(lambda: len(attempts) == 3 and watch.listening)
            assert first.closed
            assert len(polls) > quiet  # the fast poll ran meanwhile, and the catch-up
            second.push(("acme", 1))
            await wait_for(lambda: _metric(metrics, "meshops_hub_store_notifications_total")
                           == 1)
        finally:
            await watch.stop()
        assert _metric(metrics, "meshops_hub_store_listening") == 0 or not watch.listening
    run(go())


# -- PostgreSQL: NOTIFY on commit ---------------------------------------------------------------

@pytest.mark.postgres
@pytest.mark.root
def test_record_notifies_on_commit_only_for_a_change(fresh_postgres_url: str) -> None:
    store = FeedStore(fresh_postgres_url)
    listener = FeedListener(fresh_postgres_url)
    try:
        assert listener.wait(0.05) == []
        store.record([(_report("laptop", "203.0.113.9:51820"), [])])
        heard = listener.wait(5.0)
        assert heard == [("acme", store.backend_pid())]
        # the same report again changes nothing the feed shows: no notification
        store.record([(_report("laptop", "203.0.113.9:51820", at=101), [])])
        assert listener.wait(0.3) == []
        # inside a longer transaction (record joins it): heard only once it commits,
        # never when it rolls back
        with pytest.raises(RuntimeError), store._store.transaction():
            store.record([(_report("laptop", "203.0.113.10:51820", at=102), [])])
            assert listener.wait(0.3) == []
            raise RuntimeError("roll back")
        assert listener.wait(0.3) == []
        with store._store.transaction():
            assert store.record([(_report("laptop", "203.0.113.11:51820", at=103), [])]) \
                .changes == {"acme": 2}
            assert listener.wait(0.3) == []
        assert [org for org, _ in listener.wait(5.0)] == ["acme"]
    finally:
        listener.close()
        store.close()


@pytest.mark.postgres
@pytest.mark.root
def test_listener_errors_are_temporary(fresh_postgres_url: str) -> None:
    import psycopg

    listener = FeedListener(fresh_postgres_url)
    try:
        with psycopg.connect(fresh_postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = %s", (FeedListener.APPLICATION_NAME,))
        with pytest.raises(TemporaryError, match="feed listener"):
            for _ in range(50):
                listener.wait(0.1)
                listener.ping()
    finally:
        listener.close()
    bad = fresh_postgres_url.rsplit("/", 1)[0] + "/no_such_database"
    with pytest.raises(TemporaryError, match="cannot connect"):
        FeedListener(bad)


# -- PostgreSQL: two replicas ---------------------------------------------------------------------

async def _get(port: int, path: str, ctx: Any, method: str = "GET",
               body: Any = None) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as s, s.request(
            method, f"https://127.0.0.1:{port}{path}", ssl=ctx, server_hostname=SNI,
            json=body) as r:
        return r.status, dict(r.headers), await r.read()


def _revision(envelope: bytes) -> int:
    import base64

    return int(json.loads(base64.b64decode(json.loads(envelope)["payload"]))["revision"])


class Replicas:
    """Two replicas on one PostgreSQL database, every periodic store poll at ``SLOW``."""

    def __init__(self, tmp: Path, url: str) -> None:
        now = time.time()
        self.acme: OrgFixture = make_org("acme", "10.20.0.0/16")
        laptop = self.acme.add_device("laptop", now)
        server = self.acme.add_device("server", now)
        self.laptop = client_ctx(self.acme.keys.ca_pem, write_pem_files(tmp, laptop))
        self.server = client_ctx(self.acme.keys.ca_pem, write_pem_files(tmp, server))
        self.repo = init_repo(tmp / "repo")
        self.tmp, self.url = tmp, url

    def config(self, name: str, **extra: Any) -> ServeConfig:
        options: dict[str, Any] = {"store_poll": SLOW, "store_poll_listening": SLOW, **extra}
        return ServeConfig(repo=str(self.repo), listen="127.0.0.1:0", db=self.url,
                           state_dir=str(self.tmp / name), pipeline=FakePipeline([self.acme]),
                           **options)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[tuple[Running, Running]]:
        """Both replicas started, serving and listening; stopped afterwards."""
        a, b = await start(self.config("a")), await start(self.config("b"))
        try:
            await wait_for(lambda: a.hub.snapshot is not None and b.hub.snapshot is not None)
            await wait_for(lambda: a.watch is not None and a.watch.listening
                           and b.watch is not None and b.watch.listening)
            assert b.watch is not None
            yield a, b
        finally:
            await a.stop()
            await b.stop()

    async def report(self, a: Running, address: str) -> None:
        status, _, body = await _get(a.port, "/v1/orgs/acme/endpoints", self.laptop, "POST", {
            "device": "laptop", "serial": 1, "candidates": [{"kind": "stun",
                                                             "address": address}]})
        assert status == 200 and json.loads(body)["changed"] is True, body

    async def held_polls(self, b: Running) -> tuple[asyncio.Task, asyncio.Task]:
        """A feed long-poll and a view long-poll (server's view: the whole org) on ``b``."""
        status, _, body = await _get(b.port, "/v1/orgs/acme/endpoints", self.server)
        assert status == 200
        since = _revision(body)
        status, head, _ = await _get(b.port, "/v1/orgs/acme/devices/server/view", self.server)
        assert status == 200
        pos = f"serial={head['X-Meshops-Serial']}&revision={head['X-Meshops-Revision']}"
        feed = asyncio.create_task(_get(
            b.port, f"/v1/orgs/acme/endpoints?since={since}&wait=25", self.server))
        view = asyncio.create_task(_get(
            b.port, f"/v1/orgs/acme/devices/server/view?{pos}&wait=25", self.server))
        await asyncio.sleep(0.3)
        assert not feed.done() and not view.done()
        return feed, view


async def _woken(feed: asyncio.Task, view: asyncio.Task, address: str) -> None:
    """Both long-polls returned with the new candidate (well before SLOW)."""
    status, _, body = await asyncio.wait_for(feed, 15)
    assert status == 200 and address.encode() in _payload(body)
    status, head, body = await asyncio.wait_for(view, 15)
    assert status == 200 and head["X-Meshops-View"] == "delta"
    assert address.encode() in _payload(body)


def _payload(envelope: bytes) -> bytes:
    import base64

    return base64.b64decode(json.loads(envelope)["payload"])


@pytest.mark.postgres
@pytest.mark.root
def test_a_report_on_one_replica_wakes_long_polls_on_the_other(
        tmp_path: Path, fresh_postgres_url: str) -> None:
    world = Replicas(tmp_path, fresh_postgres_url)

    async def go() -> None:
        async with world.running() as (a, b):
            polls_before = b.watch.polls
            feed, view = await world.held_polls(b)
            await world.report(a, "203.0.113.21:51820")
            await _woken(feed, view, "203.0.113.21:51820")
            assert _metric(b.hub.metrics, "meshops_hub_store_notifications_total") >= 1
            assert _metric(b.hub.metrics, "meshops_hub_store_listening") == 1
            assert b.watch.polls > polls_before
            # A's own commit woke A directly: its listener ignored its own notification
            assert _metric(a.hub.metrics, "meshops_hub_store_notifications_total") == 0

    run(go())


@pytest.mark.postgres
@pytest.mark.root
def test_the_listener_reconnects_after_its_backend_is_terminated(
        tmp_path: Path, fresh_postgres_url: str) -> None:
    import psycopg

    world = Replicas(tmp_path, fresh_postgres_url)

    async def go() -> None:
        async with world.running() as (a, b):
            seen_down: list[bool] = []

            def down_then_up() -> bool:
                assert b.watch is not None
                if not b.watch.listening:
                    seen_down.append(True)
                return bool(seen_down) and b.watch.listening

            with psycopg.connect(fresh_postgres_url, autocommit=True) as admin:
                killed = admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = %s AND datname = current_database()",
                    (FeedListener.APPLICATION_NAME,)).fetchone()
            assert killed is not None and killed[0] == 2  # both replicas' listeners
            await wait_for(down_then_up, timeout=20)
            feed, view = await world.held_polls(b)
            await world.report(a, "203.0.113.22:51820")
            await _woken(feed, view, "203.0.113.22:51820")

    run(go())


@pytest.mark.postgres
@pytest.mark.root
def test_no_store_listen_means_no_listener(tmp_path: Path, fresh_postgres_url: str) -> None:
    world = Replicas(tmp_path, fresh_postgres_url)

    async def go() -> None:
        b = await start(world.config("b", store_listen=False))
        try:
            assert b.watch is not None and b.watch.slow == SLOW
            await asyncio.sleep(0.5)
            assert not b.watch.listening
            assert _metric(b.hub.metrics, "meshops_hub_store_listening") == 0
            import psycopg

            with psycopg.connect(fresh_postgres_url, autocommit=True) as admin:
                row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE "
                                    "application_name = %s", (FeedListener.APPLICATION_NAME,)
                                    ).fetchone()
            assert row is not None and row[0] == 0
        finally:
            await b.stop()

    run(go())


# -- SQLite: unchanged ------------------------------------------------------------------------------

def test_sqlite_has_no_listener_and_polls_at_the_fast_interval(tmp_path: Path) -> None:
    world = Replicas(tmp_path, f"sqlite:///{tmp_path}/hub.db")

    async def go() -> None:
        a = await start(world.config("a", store_poll=0.05))
        try:
            assert a.watch is not None and a.hub.store.backend_pid() is None
            await wait_for(lambda: a.hub.snapshot is not None)
            polls = a.watch.polls
            await wait_for(lambda: a.watch is not None and a.watch.polls >= polls + 3)
            assert not a.watch.listening
            assert _metric(a.hub.metrics, "meshops_hub_store_listening") == 0
            assert not any(t.name == "store-listen" for t in threading.enumerate())
            # a report on the only replica still wakes its own long-polls
            feed, view = await world.held_polls(a)
            await world.report(a, "203.0.113.23:51820")
            await _woken(feed, view, "203.0.113.23:51820")
        finally:
            await a.stop()

    run(go())


async def _laptop_hub(tmp_path: Path) -> tuple[Hub, Any]:
    """A started hub serving org acme (one device, laptop), published, and its
    first signed feed."""
    acme = make_org("acme")
    acme.add_device("laptop")
    hub = Hub(pipeline=FakePipeline([acme]), store=FeedStore(f"sqlite:///{tmp_path}/h.db"))
    await hub.start()
    assert await hub.publish("c1")
    org = hub.org("acme")
    assert org is not None
    return hub, await hub.feed(org, None, 0)


async def _report_and_long_poll(hub: Hub, monkeypatch: pytest.MonkeyPatch, since: int,
                                address: str, at: int) -> tuple[Any, list[float]]:
    """laptop reports ``address``; then a feed long-poll from ``since``: the feed
    it returns and the pauses (``asyncio.sleep``) the hub asked for meanwhile."""
    from reconciler.hub import serve

    assert await hub.report(_report("laptop", address, at=at), [])
    pauses: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay: float) -> None:
        pauses.append(delay)
        await real_sleep(delay)

    org = hub.org("acme")
    assert org is not None
    monkeypatch.setattr(serve.asyncio, "sleep", recording_sleep)
    try:
        got = await hub.feed(org, since, 5)
    finally:
        monkeypatch.undo()
    assert got.revision > since
    return got, pauses


def test_a_feed_long_poll_waits_only_the_rest_of_the_rebuild_window(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A change seen 0.4 s after the last build waits ~0.1 s for the next one (the
    rest of FEED_MIN_INTERVAL), not a whole interval; a change after a quiet spell
    is built at once. Asserted on the pauses the hub asks for, not on the clock."""
    from reconciler.hub.serve import FEED_MIN_INTERVAL

    async def go() -> None:
        hub, first = await _laptop_hub(tmp_path)
        try:
            # the last build was 0.4 s ago; a report moves the change counter now
            hub._feeds["acme"] = structs.replace(first, built_at=first.built_at - 0.4)
            now = int(time.time())
            second, pauses = await _report_and_long_poll(
                hub, monkeypatch, first.revision, "203.0.113.30:51820", now)
            assert len(pauses) == 1 and 0 < pauses[0] <= FEED_MIN_INTERVAL - 0.4 + 0.01
            # long after the last build: rebuilt at once, no pause at all
            hub._feeds["acme"] = structs.replace(second, built_at=second.built_at - 5)
            _, pauses = await _report_and_long_poll(
                hub, monkeypatch, second.revision, "203.0.113.31:51820", now + 1)
            assert pauses == []
        finally:
            await hub.close()

    run(go())


def test_feed_waiters_sleep_until_a_rebuild_is_allowed_and_never_spin(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow build (0.5 s) allows the next only after FEED_BUILD_SHARE build
    durations; a long-poll that sees a change 0.6 s after it sleeps until then in
    one pause, instead of waking every FEED_MIN_INTERVAL (or at once) to find the
    cached feed again."""
    from reconciler.hub.serve import FEED_BUILD_SHARE, PAUSE_MIN, SignedFeed

    feed = SignedFeed(1, b"", built_at=100.0, snapshot_serial=1, build_s=0.5)
    assert feed.rebuild_pause(100.6) == pytest.approx(FEED_BUILD_SHARE * 0.5 - 0.6)
    assert feed.rebuild_pause(200.0) == PAUSE_MIN  # due: a short sleep, not sleep(0)

    async def go() -> None:
        hub, first = await _laptop_hub(tmp_path)
        try:
            hub._feeds["acme"] = structs.replace(
                first, built_at=first.built_at - 0.6, build_s=0.5)
            _, pauses = await _report_and_long_poll(
                hub, monkeypatch, first.revision, "203.0.113.40:51820", int(time.time()))
            # one pause of ~0.9 s (3 x 0.5 s - 0.6 s), then the rebuild: no loop
            # over the cached build in between
            assert len(pauses) == 1 and 0.8 < pauses[0] <= 0.9
        finally:
            await hub.close()

    run(go())


def test_feedstore_channel_name() -> None:
    assert FEED_CHANNEL == "meshops_feed"  # docs/operations.md names it
