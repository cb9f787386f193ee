"""Per-device views and deltas (reconciler.hub.views + reconciler.pki.view).

The central property: for every device, at every step of a random history of
an org (devices added, removed, changed, relabelled, made relays; feed entries
moving), the hub's delta from the previous position, verified and applied by
the agent's code, gives exactly the snapshot the hub would serve now; and no
view ever holds a device policy does not let its owner reach or be reached by
(relays and the device itself aside). Signatures are real (Ed25519) and are
verified on every step.
"""

from __future__ import annotations

import random

import pytest
from agent.helpers import Org, device

from reconciler.errors import ManifestRefused
from reconciler.hub.views import Views
from reconciler.model.endpoints import Candidate, EndpointFeed, FeedEntry
from reconciler.model.manifest import Manifest
from reconciler.pki.envelope import load_trust
from reconciler.pki.view import (
    HeldView,
    ViewMismatch,
    apply_delta,
    held_from_snapshot,
    open_view,
)
from reconciler.policy import peers_allowed
from reconciler.structs import replace

ORG = Org()
TRUST = load_trust(ORG.trust)
SIGNERS = (ORG.key,)
LABELS = ("g:ops", "g:dev", "t:web", "t:db")


def _policy() -> dict:
    return {"version": 1, "rules": [
        {"src": ["g:ops"], "dst": ["*"], "proto": "any"},
        {"src": ["g:dev"], "dst": ["t:web"], "proto": "tcp", "ports": ["443"]},
        {"src": ["t:web"], "dst": ["t:db"], "proto": "tcp", "ports": ["5432"]},
    ]}


def _devices(rng: random.Random, n: int) -> list:
    out = []
    for i in range(n):
        labels = tuple(sorted(rng.sample(LABELS, rng.randint(0, 2))))
        out.append(device(f"d{i:03d}", (i % 250) + 1, f"10.77.0.{i + 1}", labels=labels,
                          relay=(i % 17 == 5)))
    return out


def _feed(revision: int, entries: dict[str, FeedEntry]) -> EndpointFeed:
    return EndpointFeed(ORG.name, revision, 1_000 + revision,
                        tuple(entries[k] for k in sorted(entries)))


def _entry(name: str, port: int) -> FeedEntry:
    return FeedEntry(name, (Candidate("stun", f"203.0.113.9:{port}"),), "independent",
                     "203.0.113.9", port)


def _open(body: bytes, me: str):
    return open_view(body, TRUST, ORG.name, me)


def _snapshot(views: Views, me: str) -> HeldView:
    opened = _open(views.snapshot(ORG.name, me, SIGNERS).body, me)
    assert opened.kind == "snapshot"
    return held_from_snapshot(opened.doc)


def _members(manifest: Manifest, me: str) -> set[str]:
    if manifest.device(me) is None:
        return set()
    relays = {d.name for d in manifest.devices if d.relay}
    if manifest.policy is None or me in relays:
        return {d.name for d in manifest.devices}
    return set(peers_allowed(manifest, me)) | relays | {me}


def _step(rng: random.Random, devices: list, serial: int) -> list:
    devices = list(devices)
    kind = rng.choice(["endpoint", "labels", "add", "remove", "relay", "none"])
    i = rng.randrange(len(devices))
    if kind == "endpoint":
        devices[i] = replace(devices[i], endpoint=f"198.51.100.{rng.randint(1, 250)}:51820")
    elif kind == "labels":
        devices[i] = replace(devices[i], labels=tuple(sorted(rng.sample(LABELS, 1))))
    elif kind == "add":
        n = 500 + serial
        devices.append(device(f"e{n}", (n % 250) + 1, f"10.77.1.{serial % 250 + 1}",
                              labels=(rng.choice(LABELS),)))
    elif kind == "remove" and len(devices) > 5:
        devices.pop(i)
    elif kind == "relay":
        devices[i] = replace(devices[i], relay=not devices[i].relay)
    return sorted(devices, key=lambda d: d.name)


@pytest.mark.parametrize("seed,policy", [(1, True), (2, True), (3, False), (4, True)])
def test_every_delta_applied_equals_the_snapshot_and_views_follow_policy(seed, policy) -> None:
    rng = random.Random(seed)
    devices = _devices(rng, 40)
    views = Views()
    serial, revision = 1, 1
    entries = {d.name: _entry(d.name, 1000 + i) for i, d in enumerate(devices[:30])}
    manifest = ORG.manifest(devices, serial=serial, policy=_policy() if policy else None)
    views.served(ORG.name, manifest)
    views.feed_built(ORG.name, _feed(revision, entries))
    held = {d.name: _snapshot(views, d.name) for d in devices}
    deltas = snapshots = 0
    for step in range(30):
        if rng.random() < 0.6:  # a publish
            devices = _step(rng, devices, serial)
            serial += 1
            manifest = ORG.manifest(devices, serial=serial, commit=f"{step:040x}",
                                    policy=_policy() if policy else None)
            views.served(ORG.name, manifest)
        if rng.random() < 0.7:  # endpoint reports moved the feed
            names = [d.name for d in devices]
            for name in rng.sample(names, 3):
                entries[name] = _entry(name, rng.randint(1024, 65000))
            entries.pop(rng.choice(list(entries)), None)
            entries = {k: v for k, v in entries.items() if k in names}
            revision += 1
            views.feed_built(ORG.name, _feed(revision, entries))
        for me in sorted(set(held) | {d.name for d in devices}):
            fresh = _snapshot(views, me)
            old = held.get(me)
            if old is None:
                held[me] = fresh
                continue
            answer, _ = views.delta(ORG.name, me, old.position, SIGNERS)
            if answer is None:
                snapshots += 1
                new = fresh
            else:
                deltas += 1
                opened = _open(answer.body, me)
                assert opened.kind == "delta"
                new = apply_delta(old, opened.doc)
            assert new.to_dict()["manifest"] == fresh.to_dict()["manifest"], (step, me)
            assert new.entries == fresh.entries, (step, me)
            assert new.position == fresh.position == (serial, revision)
            held[me] = new
            held_names = {d["name"] for d in new.manifest["devices"]}
            assert held_names == _members(manifest, me), (step, me)
            assert set(new.entries) <= held_names
    assert deltas > 10 * snapshots  # deltas are the rule, snapshots the exception


def test_a_one_device_change_is_a_small_delta_for_each_device_that_sees_it() -> None:
    devices = [device(f"n{i:05d}", (i % 250) + 1, f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
               for i in range(2000)]
    views = Views()
    views.served(ORG.name, ORG.manifest(devices, serial=1))
    views.feed_built(ORG.name, _feed(1, {}))
    full = views.snapshot(ORG.name, "n00001", SIGNERS).body
    devices[7] = replace(devices[7], endpoint="198.51.100.7:51820")
    views.served(ORG.name, ORG.manifest(devices, serial=2))
    sizes = set()
    for me in ("n00001", "n00500", "n01999"):
        answer, relevant = views.delta(ORG.name, me, (1, 1), SIGNERS)
        assert answer is not None and relevant
        sizes.add(len(answer.body))
        doc = _open(answer.body, me).doc
        assert [d["name"] for d in doc["upsert"]] == ["n00007"] and doc["remove"] == []
    assert len(sizes) == 1 and sizes.pop() < 2048 < len(full)


def test_policy_limits_who_learns_what() -> None:
    devices = [device("web", 1, "10.77.0.1", labels=("t:web",)),
               device("db", 2, "10.77.0.2", labels=("t:db",)),
               device("laptop", 3, "10.77.0.3", labels=("g:dev",)),
               device("guest", 4, "10.77.0.4"),
               device("relay", 5, "10.77.0.5", relay=True)]
    views = Views()
    views.served(ORG.name, ORG.manifest(devices, policy=_policy()))
    views.feed_built(ORG.name, _feed(1, {d.name: _entry(d.name, 2000) for d in devices}))
    seen = {d.name: {x["name"] for x in _snapshot(views, d.name).manifest["devices"]}
            for d in devices}
    assert seen["laptop"] == {"laptop", "web", "relay"}
    assert seen["db"] == {"db", "web", "relay"}
    assert seen["guest"] == {"guest", "relay"}
    assert seen["relay"] == {d.name for d in devices}  # a relay forwards for every pair
    assert set(_snapshot(views, "guest").entries) == {"guest", "relay"}
    gone = _snapshot(views, "nobody")  # not in the manifest (removed, disabled): no peers
    assert gone.manifest["devices"] == []


def test_refusals() -> None:
    devices = [device(f"d{i}", i + 1, f"10.77.0.{i + 1}") for i in range(5)]
    views = Views()
    views.served(ORG.name, ORG.manifest(devices, serial=1, policy=_policy()))
    views.feed_built(ORG.name, _feed(1, {}))
    body = views.snapshot(ORG.name, "d1", SIGNERS).body
    with pytest.raises(ManifestRefused) as exc:
        open_view(body, TRUST, ORG.name, "d2")  # d1's view replayed to d2
    assert exc.value.reason == "wrong-device"
    other = Org(key_seed=9)
    with pytest.raises(ManifestRefused) as exc:
        open_view(body, load_trust(other.trust), ORG.name, "d1")
    assert exc.value.reason == "unknown-key"
    with pytest.raises(ManifestRefused) as exc:  # a manifest is not a view
        open_view(ORG.sign(ORG.manifest(devices)), TRUST, ORG.name, "d1")
    assert exc.value.reason == "malformed"
    tampered = body.replace(b'"payload":"', b'"payload":"e', 1)
    with pytest.raises(ManifestRefused):
        open_view(tampered, TRUST, ORG.name, "d1")
    held = held_from_snapshot(open_view(body, TRUST, ORG.name, "d1").doc)
    views.served(ORG.name, ORG.manifest(devices[:4], serial=2, policy=_policy()))
    answer, _ = views.delta(ORG.name, "d1", (1, 1), SIGNERS)
    doc = open_view(answer.body, TRUST, ORG.name, "d1").doc
    moved = apply_delta(held, doc)
    with pytest.raises(ViewMismatch, match="does not follow"):  # replayed: no longer chains
        apply_delta(moved, doc)
    with pytest.raises(ViewMismatch, match="backwards"):
        apply_delta(held, {**doc, "to": [0, 1]})
    with pytest.raises(ViewMismatch, match="does not hold"):
        apply_delta(held, {**doc, "remove": ["zz"]})
    with pytest.raises(ViewMismatch, match="may not change"):
        apply_delta(held, {**doc, "top": {**doc["top"], "policy": None}})
    with pytest.raises(ManifestRefused):
        apply_delta(held, {**doc, "upsert": "nope"})


def test_history_limits_and_policy_changes_ask_for_a_snapshot() -> None:
    devices = [device(f"d{i}", i + 1, f"10.77.0.{i + 1}") for i in range(5)]
    views = Views()
    views.served(ORG.name, ORG.manifest(devices, serial=1, policy=_policy()))
    views.feed_built(ORG.name, _feed(1, {}))
    views.served(ORG.name, ORG.manifest(devices, serial=2, policy=None))
    assert views.delta(ORG.name, "d1", (1, 1), SIGNERS)[0] is None  # the policy changed
    for s in range(3, 40):
        views.served(ORG.name, ORG.manifest(devices, serial=s))
    assert views.delta(ORG.name, "d1", (2, 1), SIGNERS)[0] is None  # out of history
    assert views.delta(ORG.name, "d1", (38, 1), SIGNERS)[0] is not None
    assert views.delta(ORG.name, "d1", (39, 0), SIGNERS)[0] is None  # revision unknown


def test_deltas_are_built_once_per_what_the_recipient_sees_and_shared() -> None:
    devices = [device("web", 1, "10.77.0.1", labels=("t:web",)),
               device("db", 2, "10.77.0.2", labels=("t:db",)),
               device("laptop", 3, "10.77.0.3", labels=("g:dev",)),
               device("laptop2", 4, "10.77.0.4", labels=("g:dev",)),
               device("guest", 5, "10.77.0.5"),
               device("relay", 6, "10.77.0.6", relay=True)]
    views = Views()
    views.served(ORG.name, ORG.manifest(devices, serial=1, policy=_policy()))
    views.feed_built(ORG.name, _feed(1, {d.name: _entry(d.name, 2000) for d in devices}))
    held = {d.name: _snapshot(views, d.name) for d in devices}
    changed = [replace(d, endpoint="198.51.100.1:51820") if d.name == "web" else d
               for d in devices]
    views.served(ORG.name, ORG.manifest(changed, serial=2, policy=_policy()))
    answers = {d.name: views.delta(ORG.name, d.name, (1, 1), SIGNERS) for d in devices}
    # web's own entry changed but nothing its view depends on: a delta, not a snapshot
    assert all(a is not None and a.kind == "delta" for a, _ in answers.values())
    # laptop, laptop2, db, relay and web itself see web: one delta, the same bytes
    seeing = ["laptop", "laptop2", "db", "relay", "web"]
    assert len({id(answers[n][0].body) for n in seeing}) == 1
    assert all(answers[n][1] for n in seeing) and not answers["guest"][1]
    assert views.stats["deltas_built"] == 2  # the one above, and guest's position move
    for name, (answer, _) in answers.items():
        moved = apply_delta(held[name], _open(answer.body, name).doc)
        assert moved.manifest == _snapshot(views, name).manifest
    assert "web" not in {d["name"] for d in held["guest"].manifest["devices"]}


def test_member_sets_are_bounded_and_everyone_is_kept_as_none(monkeypatch) -> None:
    import reconciler.hub.views as hv

    monkeypatch.setattr(hv, "SETS_CACHED", 8)
    ops = [device(f"o{i:03d}", i + 1, f"10.77.0.{i + 1}", labels=("g:ops",))
           for i in range(40)]
    dbs = [device(f"d{i:03d}", i + 101, f"10.77.1.{i + 1}", labels=("t:db",))
           for i in range(40)]
    view = hv.OrgView(ORG.manifest(ops + dbs, serial=1, policy=_policy()))
    assert all(view.members(d.name) is None for d in ops)  # ops reach everyone
    for d in dbs:  # a db is reached by the ops only
        assert view.members(d.name) == {d.name} | {o.name for o in ops}
    assert len(view._members) == 8 and len(view._everyone_seers) == 40
    assert view.members(dbs[0].name) == {dbs[0].name} | {o.name for o in ops}  # recomputed
    always, partial = view.split(frozenset({"o001", "d001", "nobody"}))
    assert always == {"o001"} and partial == ("d001",)


def test_a_delta_starts_only_from_a_revision_this_replica_built() -> None:
    """Revisions are shared by replicas: a device may hold one this replica never
    built (another built it), or a made-up one. What changed at it is unknown
    here, so no delta starts from it: the device gets a snapshot."""
    from reconciler.hub.views import FeedState

    def entry(dev: str, addr: str) -> FeedEntry:
        return FeedEntry(dev, (Candidate("stun", addr),), "independent", None, 1)

    state = FeedState()
    state.update(EndpointFeed("o", 10, 100, (entry("a", "203.0.113.1:1"),
                                             entry("b", "203.0.113.2:1"))))
    # another replica built 11 (a moved and, at 12, came back); this one built 12
    state.update(EndpointFeed("o", 12, 120, (entry("a", "203.0.113.1:1"),
                                             entry("b", "203.0.113.2:2"))))
    assert state.changed_since(10) == {"b"}
    assert state.changed_since(12) == frozenset()
    assert state.changed_since(11) is None  # not {"b"}: a's move back would be missed
    assert state.changed_since(13) is None and state.changed_since(9) is None


def test_signed_deltas_kept_are_bounded_by_bytes_and_snapshots_per_org(monkeypatch) -> None:
    """Many distinct deltas (each device changed, each recipient seeing its own
    share) stay within SIGNED_CACHE_BYTES; every one still applies. Whole-org
    snapshots are kept per org, so orgs do not evict each other's."""
    import reconciler.hub.views as hv

    monkeypatch.setattr(hv, "SIGNED_CACHE_BYTES", 6_000)
    rng = random.Random(7)
    devices = _devices(rng, 40)
    views = Views()
    views.served(ORG.name, ORG.manifest(devices, serial=1, policy=_policy()))
    views.feed_built(ORG.name, _feed(1, {d.name: _entry(d.name, 2000) for d in devices}))
    held = {d.name: _snapshot(views, d.name) for d in devices}
    moved = [replace(d, endpoint=f"198.51.100.{i + 1}:51820") for i, d in enumerate(devices)]
    views.served(ORG.name, ORG.manifest(moved, serial=2, policy=_policy()))
    for d in devices:
        answer, _ = views.delta(ORG.name, d.name, (1, 1), SIGNERS)
        if answer is None:  # its own view changed with it: a snapshot
            continue
        assert views._delta_bytes <= 6_000 + hv._size(answer)
        assert views._delta_bytes == sum(hv._size(a) for a, _ in views._deltas.values())
        after = apply_delta(held[d.name], _open(answer.body, d.name).doc)
        assert after.manifest == _snapshot(views, d.name).manifest
    assert views.stats["deltas_built"] > len(views._deltas)  # some were dropped

    # another org's cached whole-org snapshots survive this org's new serials
    other = views.snapshot(ORG.name, "d000", SIGNERS)
    views._snapshots[("other", 1, 1)] = views._snapshots[("other", 2, 1)] = other
    sees_all = next(d.name for d in moved if d.relay)  # a relay sees everyone
    for serial in (3, 4, 5):
        views.served(ORG.name, ORG.manifest(moved, serial=serial, policy=_policy()))
        views.snapshot(ORG.name, sees_all, SIGNERS)
    assert [k for k in views._snapshots if k[0] == ORG.name] == [
        (ORG.name, 4, 1), (ORG.name, 5, 1)]
    assert ("other", 1, 1) in views._snapshots and ("other", 2, 1) in views._snapshots


def test_a_round_holds_the_connections_it_answered_until_every_one_is_answered() -> None:
    """More long-polls than one batch (WAKE_BATCH): each answered one is held
    (``hold_until_answered``), and no held connection is resumed before the
    last long-poll of the round has its answer; ``answered`` returns after."""
    import asyncio

    from reconciler.hub.views import WAKE_BATCH

    async def go() -> None:
        views = Views(wake_interval=0.0)
        count = WAKE_BATCH * 2 + 7
        woken: list[int] = []
        resumed: list[int] = []
        order: list[str] = []

        async def poll(i: int) -> None:
            assert await views.wait(ORG.name, f"d{i:03d}", 30)
            woken.append(i)
            order.append("answer")

            def resume(i: int = i) -> None:
                resumed.append(i)
                order.append("resume")
            assert views.hold_until_answered(ORG.name, resume)

        polls = [asyncio.create_task(poll(i)) for i in range(count)]
        await asyncio.sleep(0)
        assert views.waiting == count
        assert not views.hold_until_answered(ORG.name, lambda: None)  # no round yet
        views.wake(ORG.name, None)
        await asyncio.sleep(0)  # the round has started

        async def feed_build() -> None:
            await views.answered(ORG.name)
            order.append("feed build")
        feed_built = asyncio.create_task(feed_build())
        await asyncio.gather(*polls)
        await asyncio.wait_for(feed_built, 5)
        while len(resumed) < count:
            await asyncio.sleep(0)
        assert sorted(woken) == sorted(resumed) == list(range(count))
        assert order.index("feed build") > count - 1  # after every answer
        order.remove("feed build")
        assert order == ["answer"] * count + ["resume"] * count
        assert views.stats["held"] == count
        assert not views.hold_until_answered(ORG.name, lambda: None)  # the round is over
        await views.answered(ORG.name)  # no round: returns at once

    asyncio.run(go())
