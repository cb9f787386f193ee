"""``hub serve`` on a real PostgreSQL server (tests/hub/conftest.py starts it):
two replicas on one database show the same feed and wake each other's
long-polls, and a restart loses no accepted report."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from reconciler.hub.daemon import ServeConfig, start
from reconciler.hub.feedstore import FeedStore, Observation
from reconciler.model.endpoints import Candidate, EndpointReport

from .conftest_serve import FakePipeline, make_org, run, write_pem_files
from .test_serve_tls import client_ctx, fetch, init_repo, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.root]


def _report(device: str, serial: int, address: str = "203.0.113.5:51820") -> EndpointReport:
    return EndpointReport("acme", device, (Candidate("stun", address),),
                          "independent", 51820, serial, "203.0.113.5:4000", 100)


def test_feedstore_on_postgres(fresh_postgres_url: str) -> None:
    a, b = FeedStore(fresh_postgres_url), FeedStore(fresh_postgres_url)
    try:
        assert a.dialect == "postgresql"
        first = a.record([(_report("relay-1", 1), [Observation("server", "198.51.100.2:1", 90)])])
        assert first.changes == {"acme": 1} and first.changed == (True,)
        # relay-1 repeats itself (nothing changes), server is new (a change)
        second = b.record([(_report("relay-1", 2), [Observation("server", "198.51.100.2:1", 95)]),
                           (_report("server", 1), [])])
        assert second.changes == {"acme": 2} and second.changed == (False, True)
        assert a.changes() == {"acme": 2}
        rows = {r.report.device: r for r in a.reports("acme")}
        assert rows["relay-1"].report.serial == 2 and rows["relay-1"].reports == 2
        assert a.reflections("acme")[0].endpoint == "198.51.100.2:1"
        assert a.total_reports() == 3
    finally:
        a.close()
        b.close()


def test_concurrent_writers_never_repeat_a_change_count(fresh_postgres_url: str) -> None:
    """Four replicas write 25 changed reports each at once: the per-org row lock
    serialises them, so the change counter takes every value once."""
    stores = [FeedStore(fresh_postgres_url) for _ in range(4)]

    def writer(i: int) -> list[int]:
        return [stores[i].record([(_report(f"d{i}", n, f"203.0.113.{n + 1}:51820"), [])])
                .changes["acme"] for n in range(25)]

    async def go() -> list[list[int]]:
        return list(await asyncio.gather(*(asyncio.to_thread(writer, i) for i in range(4))))

    try:
        counts = [r for rs in run(go()) for r in rs]
        assert sorted(counts) == list(range(1, 101))
        assert stores[0].total_reports() == 100
    finally:
        for s in stores:
            s.close()


def test_replicas_starting_together_migrate_the_schema_once(fresh_postgres_url: str) -> None:
    """Hubs started at the same moment on an empty database: the schema is created
    under an advisory lock, so none fails on a concurrent CREATE TABLE."""
    import threading

    barrier = threading.Barrier(6)

    def open_one(_: int) -> FeedStore:
        barrier.wait()
        return FeedStore(fresh_postgres_url)

    async def go() -> list[FeedStore]:
        return list(await asyncio.gather(*(asyncio.to_thread(open_one, i) for i in range(6))))

    stores = run(go())
    try:
        assert all(s.dialect == "postgresql" for s in stores)
        assert stores[0]._store.schema_version() == stores[-1]._store.schema_version() >= 1
        assert stores[0].record([(_report("laptop", 1), [])]).changes == {"acme": 1}
        assert stores[-1].changes() == {"acme": 1}
    finally:
        for s in stores:
            s.close()


def test_two_replicas_share_the_feed_and_restart_loses_nothing(
    tmp_path: Path, fresh_postgres_url: str
) -> None:
    now = time.time()
    acme = make_org("acme", "10.20.0.0/16")
    laptop, server = acme.add_device("laptop", now), acme.add_device("server", now)
    files = {"laptop": write_pem_files(tmp_path, laptop),
             "server": write_pem_files(tmp_path, server)}
    repo = init_repo(tmp_path / "repo")

    def config(name: str) -> ServeConfig:
        return ServeConfig(repo=str(repo), listen="127.0.0.1:0", db=fresh_postgres_url,
                           state_dir=str(tmp_path / name), pipeline=FakePipeline([acme]),
                           store_poll=0.1)

    async def go() -> None:
        one, two = await start(config("one")), await start(config("two"))
        try:
            await wait_for(lambda: one.hub.snapshot is not None and two.hub.snapshot is not None)
            lctx = client_ctx(acme.keys.ca_pem, files["laptop"])
            sctx = client_ctx(acme.keys.ca_pem, files["server"])
            # a long-poll on replica two wakes when replica one accepts a report
            poll = asyncio.create_task(
                fetch(two.port, "/v1/orgs/acme/endpoints?since=0&wait=10", sctx, "acme.hub"))
            await asyncio.sleep(0.3)
            assert not poll.done()
            status, _ = await fetch(one.port, "/v1/orgs/acme/endpoints", lctx, "acme.hub",
                                    "POST", {"device": "laptop", "serial": 1, "candidates": [
                                        {"kind": "stun", "address": "203.0.113.9:51820"}]})
            assert status == 200
            status, body = await asyncio.wait_for(poll, 5)
            assert status == 200
            feed_two = _payload(body)
            assert feed_two["revision"] == 1
            assert feed_two["entries"][0]["candidates"] == [
                {"kind": "stun", "address": "203.0.113.9:51820"}]
            # reports to both replicas; both show the same entries, under one revision
            # per change: laptop moves five times, server repeats itself
            for i in range(10):
                port, ctx, dev = ((one.port, lctx, "laptop") if i % 2
                                  else (two.port, sctx, "server"))
                cands = [{"kind": "stun", "address": f"203.0.113.{10 + i}:51820"}] \
                    if dev == "laptop" else []
                status, _ = await fetch(port, "/v1/orgs/acme/endpoints", ctx, "acme.hub",
                                        "POST", {"device": dev, "serial": i,
                                                 "candidates": cands})
                assert status == 200
                await asyncio.sleep(0.6)  # past the feed's rebuild interval
                _, b1 = await fetch(one.port, "/v1/orgs/acme/endpoints", lctx, "acme.hub")
                _, b2 = await fetch(two.port, "/v1/orgs/acme/endpoints", lctx, "acme.hub")
                f1, f2 = _payload(b1), _payload(b2)
                assert f1 == f2, i
            # 1 (laptop's first report) + server's first + five laptop moves
            assert f1["revision"] == 7
            # a long-poll on replica two sleeps through identical reports to replica one
            # (its store poller runs every 0.1 s) and wakes on the first real change
            poll = asyncio.create_task(
                fetch(two.port, "/v1/orgs/acme/endpoints?since=7&wait=20", sctx, "acme.hub"))
            same = {"device": "laptop", "serial": 99, "candidates": [
                {"kind": "stun", "address": "203.0.113.19:51820"}]}
            for _ in range(5):
                status, body = await fetch(one.port, "/v1/orgs/acme/endpoints", lctx,
                                           "acme.hub", "POST", same)
                assert status == 200 and json.loads(body)["changed"] is False
                await asyncio.sleep(0.25)
            assert not poll.done()
            moved = {**same, "candidates": [{"kind": "stun", "address": "203.0.113.99:51820"}]}
            started = time.monotonic()
            status, body = await fetch(one.port, "/v1/orgs/acme/endpoints", lctx, "acme.hub",
                                       "POST", moved)
            assert status == 200 and json.loads(body)["changed"] is True
            status, body = await asyncio.wait_for(poll, 5)
            assert status == 200 and _payload(body)["revision"] == 8
            assert time.monotonic() - started < 2
        finally:
            await one.stop()
            await two.stop()
        # restart: every accepted report is still there
        three = await start(config("three"))
        try:
            assert three.hub.store.total_reports() == 17  # 1 + 10 + 5 identical + 1 moved
            assert three.hub.revisions == {"acme": 8}
            serials = three.hub.store.agent_serials()["acme"]
            assert serials["laptop"][0] == 99 and serials["server"][0] == 8
        finally:
            await three.stop()

    run(go())


def _payload(envelope: bytes) -> dict:
    import base64

    return json.loads(base64.b64decode(json.loads(envelope)["payload"]))
