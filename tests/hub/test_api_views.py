"""GET /v1/orgs/ORG/devices/NAME/view in-process: who may read which view,
snapshots, deltas woken by a publish and by an endpoint report, 304s."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from reconciler.pki.envelope import load_trust, trust_entry
from reconciler.pki.view import apply_delta, held_from_snapshot, open_view

from .conftest_serve import run
from .test_api import World, as_device, client, report_body


def _trust(w: World):
    return load_trust(json.dumps({"orgs": {"acme": trust_entry(
        [w.acme.keys.signing_key.public_key()], None)}}))


def test_a_device_reads_its_own_view_only(tmp_path: Path) -> None:
    async def go() -> None:
        w = World(tmp_path)
        async with client(w) as (c, _hub):
            r = await c.get("/v1/orgs/acme/devices/laptop/view", headers=as_device(w.laptop))
            assert r.status == 200 and r.headers["X-Meshops-View"] == "snapshot"
            assert r.headers["X-Meshops-Serial"] == "1"
            doc = open_view(await r.read(), _trust(w), "acme", "laptop").doc
            assert doc["device"] == "*"  # no policy: every device sees the whole org
            assert [d["name"] for d in doc["manifest"]["devices"]] == \
                ["laptop", "relay-1", "server"]
            r = await c.get("/v1/orgs/acme/devices/server/view", headers=as_device(w.laptop))
            assert r.status == 403 and (await r.json())["error"] == "forbidden"
            r = await c.get("/v1/orgs/acme/devices/laptop/view")
            assert r.status == 401
            r = await c.get("/v1/orgs/acme/devices/phone/view", headers=as_device(w.phone))
            assert r.status == 403  # a device of org beta
            for query in ("serial=1", "revision=0", "serial=x&revision=0", "serial=1&revision=-1"):
                r = await c.get(f"/v1/orgs/acme/devices/laptop/view?{query}",
                                headers=as_device(w.laptop))
                assert r.status == 400, query
    run(go())


def test_long_polls_wake_with_deltas_on_publish_and_on_reports(tmp_path: Path) -> None:
    async def go() -> None:
        w = World(tmp_path)
        trust = _trust(w)
        async with client(w) as (c, hub):
            dev = as_device(w.laptop)
            r = await c.get("/v1/orgs/acme/devices/laptop/view", headers=dev)
            held = held_from_snapshot(open_view(await r.read(), trust, "acme", "laptop").doc)
            base = "/v1/orgs/acme/devices/laptop/view"

            def url() -> str:
                return f"{base}?serial={held.serial}&revision={held.revision}&wait=20"

            # nothing moves: 304 when the wait runs out
            r = await c.get(f"{base}?serial={held.serial}&revision={held.revision}&wait=1",
                            headers=dev)
            assert r.status == 304 and r.headers["X-Meshops-Serial"] == str(held.serial)
            # a publish that removes a device wakes the long-poll with a delta
            poll = asyncio.create_task(c.get(url(), headers=dev))
            await asyncio.sleep(0.3)
            assert not poll.done()
            w.pipeline.removed["acme"] = {"server"}
            assert await hub.publish("c2")
            r = await asyncio.wait_for(poll, 5)
            assert r.status == 200 and r.headers["X-Meshops-View"] == "delta"
            body = await r.read()
            assert len(body) < 2048
            doc = open_view(body, trust, "acme", "laptop").doc
            assert doc["remove"] == ["server"]
            held = apply_delta(held, doc)
            assert [d["name"] for d in held.manifest["devices"]] == ["laptop", "relay-1"]
            # an endpoint report of a device in the view wakes it with the feed entry
            poll = asyncio.create_task(c.get(url(), headers=dev))
            await asyncio.sleep(0.3)
            r = await c.post("/v1/orgs/acme/endpoints", json=report_body("relay-1"),
                             headers=as_device(w.relay))
            assert r.status == 200
            r = await asyncio.wait_for(poll, 5)
            assert r.status == 200
            doc = open_view(await r.read(), trust, "acme", "laptop").doc
            assert [e["device"] for e in doc["feed"]["upsert"]] == ["relay-1"]
            held = apply_delta(held, doc)
            assert set(held.entries) == {"relay-1"}
            # a position the history does not know gets a snapshot
            r = await c.get(f"{base}?serial=999999&revision=0&wait=1", headers=dev)
            assert r.status == 304  # ahead of this hub: wait, never roll back
            r = await c.get(f"{base}?serial=0&revision=0", headers=dev)
            assert r.headers["X-Meshops-View"] == "snapshot"
    run(go())


def test_a_woken_round_answers_everyone_before_reading_next_requests(tmp_path: Path) -> None:
    """Answers before re-polls (hub.views.hold_until_answered): each connection
    a wake round answered stops being read until the round is over, then is
    read again: its next long-poll, on the same kept-open connection, is held
    and woken like any other."""
    import aiohttp

    async def go() -> None:
        w = World(tmp_path)
        trust = _trust(w)
        opened: list[object] = []
        trace = aiohttp.TraceConfig()

        async def on_open(_session: object, _ctx: object, params: object) -> None:
            opened.append(params)
        trace.on_connection_create_end.append(on_open)
        async with client(w) as (c, hub), aiohttp.ClientSession(
                str(c.make_url("")), trace_configs=[trace]) as s:
            dev = as_device(w.laptop)
            base = "/v1/orgs/acme/devices/laptop/view"
            r = await s.get(base, headers=dev)
            held = held_from_snapshot(open_view(await r.read(), trust, "acme", "laptop").doc)
            url = f"{base}?serial={held.serial}&revision={held.revision}&wait=20"
            polls = [asyncio.create_task(s.get(url, headers=dev)) for _ in range(12)]
            await asyncio.sleep(0.5)
            assert hub.views.waiting == 12 and not any(p.done() for p in polls)
            w.pipeline.removed["acme"] = {"server"}
            assert await hub.publish("c2")
            serials = set()
            for r in await asyncio.wait_for(asyncio.gather(*polls), 5):
                assert r.status == 200 and r.headers["X-Meshops-View"] == "delta"
                doc = open_view(await r.read(), trust, "acme", "laptop").doc
                assert doc["remove"] == ["server"]
                serials.add(int(r.headers["X-Meshops-Serial"]))
            assert hub.views.stats["held"] == 12  # every answered connection was held
            connections = len(opened)
            assert connections == 12
            # the held connections are read again: the next long-polls go over the
            # same 12 connections, wait, and the next publish wakes every one
            (serial,) = serials
            after = f"{base}?serial={serial}&revision={held.revision}&wait=20"
            polls = [asyncio.create_task(s.get(after, headers=dev)) for _ in range(12)]
            await asyncio.sleep(0.5)
            assert hub.views.waiting == 12 and not any(p.done() for p in polls)
            w.pipeline.removed["acme"] = {"server", "relay-1"}
            assert await hub.publish("c3")
            for r in await asyncio.wait_for(asyncio.gather(*polls), 5):
                assert r.status == 200
                doc = open_view(await r.read(), trust, "acme", "laptop").doc
                assert doc["remove"] == ["relay-1"]
            assert len(opened) == connections  # no new connection: the held ones were read
            assert hub.views.stats["held"] == 24
    run(go())
