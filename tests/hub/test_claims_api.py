"""The endpoint-claim attacks of issue 12, through the hub API in-process (real
store, real signatures, injected clock): each one is refused, with its own reason.
Plus the feed revision: it moves only when the signed content does, and
long-polls wake only then (or when something expires)."""

from __future__ import annotations

import asyncio
import json
import time
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from reconciler.hub.claims import OWN_FRESH, REFLECTION_TTL
from reconciler.hub.feed import FEED_PAYLOAD_TYPE
from reconciler.pki.envelope import OrgTrust, open_envelope
from reconciler.pki.keys import keyid

from .conftest_serve import NOW, run
from .test_api import World, as_device, client, report_body

POST = "/v1/orgs/acme/endpoints"
TEN_YEARS = 10 * 365 * 86400


def feed_of(w: World, body: bytes) -> dict[str, Any]:
    key = w.acme.keys.signing_key.public_key()
    doc: dict[str, Any] = json.loads(
        open_envelope(body, OrgTrust(keys={keyid(key): key}), FEED_PAYLOAD_TYPE).payload)
    return doc


async def entries(c: Any, w: World) -> dict[str, list[tuple[str, str]]]:
    r = await c.get(POST, headers=as_device(w.server))
    assert r.status == 200
    return {e["device"]: [(x["kind"], x["address"]) for x in e["candidates"]]
            for e in feed_of(w, await r.read())["entries"]}


async def revision(c: Any, w: World) -> int:
    r = await c.get(POST, headers=as_device(w.server))
    return int(r.headers["X-Feed-Revision"])


def observation(peer: str, endpoint: str, handshake: int) -> dict[str, Any]:
    return {"peer": peer, "endpoint": endpoint, "last_handshake": handshake}


def advance(w: World, hub: Any, seconds: float) -> None:
    """Move the hub's clock, and forget the cached feed (its rebuild interval
    is real time, the test's clock is not)."""
    w.clock[0] += seconds
    hub._feeds.clear()


# -- own endpoints: only the device itself ---------------------------------------------------
def test_a_device_can_claim_only_its_own_endpoints(tmp_path: Path) -> None:
    async def go(tmp: Any) -> None:
        w = World(tmp)
        async with client(w) as (c, hub):
            for creds, target in ((w.laptop, "server"), (w.relay, "laptop"),
                                  (w.server, "relay-1"), (w.laptop, "phone")):
                r = await c.post(POST, json=report_body(target), headers=as_device(creds))
                doc = await r.json()
                assert r.status == 403 and doc["error"] == "forbidden", target
                assert creds.name in doc["message"]
            assert hub.store.total_reports() == 0
            assert await entries(c, w) == {}
    run(go(tmp_path))


# -- reflections: only from relays -----------------------------------------------------------
def test_a_device_that_is_not_a_relay_cannot_reflect_another(tmp_path: Path) -> None:
    async def go(tmp: Any) -> None:
        w = World(tmp)
        async with client(w) as (c, hub):
            r = await c.post(POST, json=report_body("server"), headers=as_device(w.server))
            assert r.status == 200
            for creds, peer in ((w.laptop, "server"), (w.laptop, "relay-1"),
                                (w.server, "laptop")):
                body = report_body(creds.name, observations=[
                    observation(peer, "198.51.100.66:666", int(NOW)),
                    observation(peer, "203.0.113.66:666", int(NOW) + TEN_YEARS)])
                r = await c.post(POST, json=body, headers=as_device(creds))
                doc = await r.json()
                assert r.status == 200 and doc["reflections"] == {
                    "kept": 0, "dropped": {"not-a-relay": 2}}, peer
            feed = await entries(c, w)
            assert all(kind != "reflected" for cands in feed.values() for kind, _ in cands)
            assert "198.51.100.66:666" not in json.dumps(feed)
            metrics = hub.metrics.render().decode()
            assert 'meshops_hub_reflections_dropped_total{reason="not-a-relay"} 6.0' in metrics
    run(go(tmp_path))


def test_a_non_relays_observations_cannot_fail_its_own_report(tmp_path: Path) -> None:
    """They are dropped unread: a LAN peer WireGuard shows at a link-local or
    zoned address must not cost the device its own report."""
    async def go(tmp: Path) -> None:
        w = World(tmp)
        async with client(w) as (c, _):
            body = report_body("laptop", observations=[
                observation("server", "[fe80::1%eth0]:51820", int(NOW)),
                observation("server", "127.0.0.1:51820", int(NOW))])
            r = await c.post(POST, json=body, headers=as_device(w.laptop))
            doc = await r.json()
            assert r.status == 200 and doc["reflections"]["dropped"] == {"not-a-relay": 2}
            assert await entries(c, w) == {"laptop": [("stun", "203.0.113.7:51820")]}
    run(go(tmp_path))


@pytest.mark.parametrize("handshake", [int(NOW) + TEN_YEARS, int(NOW) + 86400, 2**62,
                                       int(NOW)])
def test_a_relay_reflection_is_stamped_by_the_hub_and_expires(handshake: int,
                                                               tmp_path: Path) -> None:
    async def go(tmp: Any) -> None:
        w = World(tmp)
        async with client(w) as (c, hub):
            body = report_body("relay-1", candidates=[], observations=[
                observation("laptop", "198.51.100.20:4000", handshake)])
            r = await c.post(POST, json=body, headers=as_device(w.relay))
            assert (await r.json())["reflections"]["kept"] == 1
            (row,) = hub.store.reflections("acme")
            assert row.seen_at == row.since == int(NOW)  # the hub's clock, not the relay's
            assert (await entries(c, w))["laptop"] == [("reflected", "198.51.100.20:4000")]
            advance(w, hub, REFLECTION_TTL)
            assert "laptop" in await entries(c, w)
            advance(w, hub, 1)  # REFLECTION_TTL after the hub last heard it: gone
            assert "laptop" not in await entries(c, w)
    run(go(tmp_path))


def test_a_relay_with_a_slow_clock_cannot_revive_an_old_session(tmp_path: Path) -> None:
    async def go(tmp: Any) -> None:
        w = World(tmp)
        async with client(w) as (c, _):
            body = report_body("relay-1", candidates=[], observations=[
                observation("laptop", "198.51.100.20:4000", int(NOW) - REFLECTION_TTL - 1),
                observation("server", "198.51.100.21:4000", 0)])
            r = await c.post(POST, json=body, headers=as_device(w.relay))
            assert (await r.json())["reflections"] == {"kept": 0, "dropped": {"stale": 2}}
            assert await entries(c, w) == {"relay-1": []}
    run(go(tmp_path))


@pytest.mark.parametrize("own", [
    {"kind": "stun", "address": "203.0.113.7:51820"},
    {"kind": "static", "address": "203.0.113.7:51820"},
    {"kind": "observed", "address": "203.0.113.7:51820"},
])
def test_a_reflection_never_outranks_the_devices_own_fresh_report(own: dict[str, str],
                                                                  tmp_path: Path) -> None:
    async def go(tmp: Any) -> None:
        w = World(tmp)
        async with client(w) as (c, hub):
            relay_says = report_body("relay-1", candidates=[], observations=[
                observation("server", "198.51.100.66:666", int(NOW) + TEN_YEARS)])
            # the reflection first, the own report after it, and the other way round
            for first, second in (("relay", "own"), ("own", "relay")):
                for who in (first, second):
                    creds, body = (w.relay, relay_says) if who == "relay" else \
                        (w.server, report_body("server", candidates=[own]))
                    assert (await c.post(POST, json=body, headers=as_device(creds))).status == 200
                assert (await entries(c, w))["server"] == [(own["kind"], own["address"])]
            # the relay keeps saying it, the own report stays fresh: still the own word only
            for _ in range(3):
                advance(w, hub, 30)
                await c.post(POST, json=relay_says, headers=as_device(w.relay))
                await c.post(POST, json=report_body("server", candidates=[own]),
                             headers=as_device(w.server))
                assert (await entries(c, w))["server"] == [(own["kind"], own["address"])]
            # server silent for longer than OWN_FRESH: the relay's view follows its own
            advance(w, hub, OWN_FRESH + 1)
            await c.post(POST, json=relay_says, headers=as_device(w.relay))
            assert (await entries(c, w))["server"] == [
                (own["kind"], own["address"]), ("reflected", "198.51.100.66:666")]
    run(go(tmp_path))


@pytest.mark.parametrize("how", ["revoked", "removed", "demoted", "disabled"])
def test_a_reflection_goes_when_its_reporter_goes(how: str, tmp_path: Path) -> None:
    async def go(tmp: Any) -> None:
        w = World(tmp)
        async with client(w) as (c, hub):
            body = report_body("relay-1", candidates=[], observations=[
                observation("laptop", "198.51.100.20:4000", int(NOW))])
            assert (await c.post(POST, json=body, headers=as_device(w.relay))).status == 200
            assert (await entries(c, w))["laptop"] == [("reflected", "198.51.100.20:4000")]
            before = await revision(c, w)
            if how == "revoked":
                w.pipeline.revoked["acme"] = frozenset({w.relay.serial})
            elif how == "demoted":  # relay: true removed from its file
                w.acme.relays.discard("relay-1")
            else:  # removed or disabled: either way no longer in the manifest
                w.pipeline.removed["acme"] = {"relay-1"}
            assert await hub.publish(f"c-{how}")
            # at once, without waiting for the TTL, and deleted from the store
            feed = await entries(c, w)
            assert "laptop" not in feed
            assert ("relay-1" in feed) == (how == "demoted")  # its own report stays
            assert await revision(c, w) == before + 1
            assert hub.store.reflections("acme") == []
    run(go(tmp_path))


def test_a_later_relay_report_replaces_its_earlier_reflections(tmp_path: Path) -> None:
    async def go(tmp: Any) -> None:
        w = World(tmp)
        async with client(w) as (c, hub):
            body = report_body("relay-1", candidates=[], observations=[
                observation("laptop", "198.51.100.20:4000", int(NOW))])
            await c.post(POST, json=body, headers=as_device(w.relay))
            advance(w, hub, 5)
            await c.post(POST, json=report_body("relay-1", candidates=[]),
                         headers=as_device(w.relay))
            assert "laptop" not in await entries(c, w)
    run(go(tmp_path))


# -- candidates: routable unicast only, each refusal with its reason --------------------------
BAD = [
    ("0.0.0.0:51820", "unspecified"), ("[::]:51820", "unspecified"),
    ("127.0.0.1:22", "loopback"), ("127.0.0.53:53", "loopback"), ("[::1]:22", "loopback"),
    ("[::ffff:127.0.0.1]:22", "loopback"),
    ("224.0.0.1:51820", "multicast"), ("[ff02::1]:51820", "multicast"),
    ("255.255.255.255:51820", "broadcast"),
    ("169.254.169.254:80", "link-local"), ("[fe80::1]:51820", "link-local"),
    ("[fe80::1%eth0]:51820", "zone-id"), ("[2001:db8::5%3]:51820", "zone-id"),
    ("203.0.113.7:0", "bad-port"), ("203.0.113.7:65536", "bad-port"),
    ("203.0.113.7:123456", "bad-port"), ("203.0.113.7:-1", "bad-port"),
    ("203.0.113.7", "malformed"), ("localhost:51820", "malformed"),
    ("240.0.0.1:51820", "reserved"),
    ("198.51.100.10:51820", "hub-address"), ("[2001:db8::10]:443", "hub-address"),
]


def test_each_bad_candidate_is_refused_with_a_json_reason(tmp_path: Path) -> None:
    async def go(tmp: Any) -> None:
        w = World(tmp)
        async with client(w) as (c, hub):
            hub.hub_addresses = frozenset({ip_address("198.51.100.10"),
                                           ip_address("2001:db8::10")})
            for address, reason in BAD:
                body = report_body("laptop", candidates=[
                    {"kind": "local", "address": "192.168.1.2:51820"},
                    {"kind": "stun", "address": address}])
                r = await c.post(POST, json=body, headers=as_device(w.laptop))
                doc = await r.json()
                assert r.status == 400, address
                assert (doc["error"], doc["reason"], doc["field"], doc["candidate"]) == \
                    ("bad-candidate", reason, "candidates[1].address", address), doc
                assert address in doc["message"] or reason in ("malformed", "bad-port")
                # the same address reported by a relay as another device's: refused too
                body = report_body("relay-1", candidates=[], observations=[
                    observation("laptop", address, int(NOW))])
                r = await c.post(POST, json=body, headers=as_device(w.relay))
                doc = await r.json()
                assert (r.status, doc["reason"], doc["field"]) == \
                    (400, reason, "observations[0].endpoint"), address
            assert hub.store.total_reports() == 0  # nothing of it was stored
            assert await entries(c, w) == {}
            metrics = hub.metrics.render().decode()
            assert 'meshops_hub_claims_refused_total{reason="loopback"} 8.0' in metrics
    run(go(tmp_path))


def test_accepted_addresses_include_private_cgnat_and_documentation_ranges(
        tmp_path: Path) -> None:
    async def go(tmp: Any) -> None:
        w = World(tmp)
        async with client(w) as (c, _):
            good = ["10.1.2.3:51820", "192.168.1.20:51820", "100.64.0.9:41641",
                    "192.0.2.1:51820", "198.51.100.7:51820", "203.0.113.9:51820",
                    "[2001:db8::7]:51820", "[fd00::7]:51820"]
            body = report_body("laptop", candidates=[{"kind": "local", "address": a}
                                                     for a in good])
            r = await c.post(POST, json=body, headers=as_device(w.laptop))
            assert r.status == 200, await r.text()
            assert [a for _, a in (await entries(c, w))["laptop"]] == good
    run(go(tmp_path))


# -- the revision moves only with the content; long-polls wake only then ----------------------
def test_repeated_reports_keep_the_revision_and_long_polls_asleep(tmp_path: Path) -> None:
    async def go(tmp: Any) -> None:
        w = World(tmp)
        async with client(w) as (c, hub):
            r = await c.post(POST, json=report_body("laptop"), headers=as_device(w.laptop))
            assert (await r.json())["changed"] is True
            rev = await revision(c, w)
            assert rev == 1
            first = await (await c.get(POST, headers=as_device(w.server))).read()
            poll = asyncio.create_task(c.get(f"{POST}?since={rev}&wait=20",
                                             headers=as_device(w.server)))
            for i in range(5):  # the same endpoints, another manifest serial, later
                advance(w, hub, 10)
                r = await c.post(POST, json=report_body("laptop", serial=i + 2),
                                 headers=as_device(w.laptop))
                assert (await r.json())["changed"] is False
                await asyncio.sleep(0.15)
            assert not poll.done()
            hub._feeds.clear()
            again = await (await c.get(POST, headers=as_device(w.server))).read()
            assert again == first  # byte for byte: same revision, same generated_at
            # a changed report wakes the long-poll with the next revision
            body = report_body("laptop", candidates=[{"kind": "stun",
                                                      "address": "203.0.113.8:51820"}])
            r = await c.post(POST, json=body, headers=as_device(w.laptop))
            assert (await r.json())["changed"] is True
            r = await asyncio.wait_for(poll, 5)
            assert r.status == 200 and r.headers["X-Feed-Revision"] == str(rev + 1)
            assert feed_of(w, await r.read())["entries"][0]["candidates"] == [
                {"kind": "stun", "address": "203.0.113.8:51820"}]
    run(go(tmp_path))


def test_a_long_poll_wakes_when_a_reflection_expires(tmp_path: Path) -> None:
    async def go(tmp: Any) -> None:
        w = World(tmp)
        async with client(w) as (c, hub):
            body = report_body("relay-1", candidates=[], observations=[
                observation("laptop", "198.51.100.20:4000", int(NOW))])
            await c.post(POST, json=body, headers=as_device(w.relay))
            rev = await revision(c, w)
            # from here the hub's clock runs in real time, 1.5 s before the reflection
            # expires; nothing is written: time alone changes the feed
            start, t0 = NOW + REFLECTION_TTL - 0.5, time.monotonic()
            hub.now = lambda: start + (time.monotonic() - t0)
            hub._feeds.clear()
            poll = asyncio.create_task(c.get(f"{POST}?since={rev}&wait=20",
                                             headers=as_device(w.server)))
            await asyncio.sleep(0.3)
            assert not poll.done()
            r = await asyncio.wait_for(poll, 5)
            assert time.monotonic() - t0 < 3
            assert r.status == 200 and r.headers["X-Feed-Revision"] == str(rev + 1)
            assert [e["device"] for e in feed_of(w, await r.read())["entries"]] == ["relay-1"]
    run(go(tmp_path))
