"""agent.decide as a pure function over recorded inputs: golden operations,
the requeue and persistence choices, and "decide -> simulate -> decide gives
nothing" as a property."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.agent.decide import QUICK_RETRY, decide
from reconciler.agent.endpoints import SelfEndpoints
from reconciler.agent.inputs import Inputs, VerifiedManifest
from reconciler.agent.memory import Memory
from reconciler.converge import simulate
from reconciler.errors import ConfigError
from reconciler.model.endpoints import Candidate, EndpointFeed, FeedEntry
from reconciler.model.wg import ObservedInterface, ObservedPeer
from reconciler.structs import replace

from .helpers import NOW, Org, device, wg_keypair

GOLDEN = Path(__file__).parent / "golden" / "decide"
ORG = Org()


def manifest(serial: int = 1):
    return ORG.manifest([
        device("alpha", 1, "10.77.0.1"),
        device("beta", 2, "10.77.0.2", endpoint="198.51.100.2:51820"),
        device("gamma", 3, "10.77.0.3", routes=("192.168.50.0/24",)),
        device("delta", 4, "10.77.0.4"),
        device("relay-1", 5, "10.77.0.5", relay=True, endpoint="relay.example:51820"),
    ], serial=serial)


FEED = EndpointFeed("acme", 3, int(NOW), (
    FeedEntry("alpha", (Candidate("stun", "198.51.100.1:40001"),), "independent",
              "198.51.100.1", int(NOW)),
    FeedEntry("gamma", (Candidate("stun", "203.0.113.3:40003"),), "independent",
              "203.0.113.3", int(NOW)),
    FeedEntry("delta", (Candidate("stun", "203.0.113.4:40004"),), "dependent",
              "203.0.113.4", int(NOW)),
))


def inputs(**kw) -> Inputs:
    m = kw.pop("manifest", manifest())
    defaults = {
        "me": "alpha", "org": "acme", "interface": "mo-acme", "listen_port": 51820,
        "hysteresis": {}, "hub": True, "manifest": m,
        "source": VerifiedManifest(m, b"envelope", '"1"', "fetched"),
        "feed": FEED, "observed": ObservedInterface("mo-acme", exists=False),
        "memory": Memory(),
        "own": SelfEndpoints((Candidate("local", "10.10.1.11:51820"),), "independent",
                             "198.51.100.1", "10.10.1.11"),
        "private_key": wg_keypair(1)[0], "here": "10.10.1.11",
        "resolved": {"relay.example": "203.0.113.50"},
    }
    return Inputs(**{**defaults, **kw})


def converged(inp: Inputs) -> Inputs:
    """The inputs of the next pass after applying ``decide(inp)`` (no traffic yet)."""
    d = decide(inp, NOW)
    return replace(inp, observed=simulate(inp.observed, d.operations), memory=d.memory,
                   was_member=True,
                   source=replace(inp.source, source="unchanged", cached_etag='"1"'))


CASES = {
    "fresh-device": lambda: inputs(),
    "one-peer-removed": lambda: replace(
        converged(inputs()),
        manifest=replace(manifest(2), devices=tuple(
            d for d in manifest(2).devices if d.name != "gamma"))),
    "after-a-move": lambda: replace(converged(inputs()), moved=True, here="10.10.9.11"),
    "removed-from-git": lambda: replace(
        converged(inputs()),
        manifest=replace(manifest(2), devices=tuple(
            d for d in manifest(2).devices if d.name != "alpha"))),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_operations(case: str) -> None:
    got = decide(CASES[case](), NOW)
    text = "".join(f"{op}\n" for op in got.operations)
    path = GOLDEN / f"{case}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()
    assert "PRIVATE" not in text and wg_keypair(1)[0] not in text


def test_decide_is_pure_same_inputs_same_decision() -> None:
    assert decide(inputs(), NOW) == decide(inputs(), NOW)


def test_a_second_pass_decides_nothing_and_records_nothing_new() -> None:
    second = decide(converged(inputs()), NOW)
    assert second.operations == ()
    assert second.record_manifest is False and second.requeue_after is None


def test_paths_and_report() -> None:
    d = decide(inputs(), NOW)
    by_name = {p.name: p for p in d.desired.peers}
    assert by_name["delta"].path == "relay" and by_name["delta"].via == "relay-1"
    assert by_name["gamma"].path == "direct" and by_name["gamma"].endpoint == "203.0.113.3:40003"
    assert by_name["relay-1"].endpoint == "203.0.113.50:51820"  # resolved in gather
    assert d.report is not None and d.report["device"] == "alpha"
    assert {"kind": "local", "address": "10.10.1.11:51820"} in d.report["candidates"]
    assert d.record_manifest and d.applied["serial"] == 1


def test_a_pass_on_the_cached_manifest_asks_for_a_quick_requeue_and_reports_nothing() -> None:
    inp = inputs()
    d = decide(replace(inp, source=replace(inp.source, source="cache")), NOW)
    assert d.requeue_after == QUICK_RETRY and d.report is None and not d.record_manifest


def test_no_hub_no_report() -> None:
    assert decide(inputs(hub=False), NOW).report is None


def test_a_device_never_enrolled_gets_a_clear_error_and_no_interface() -> None:
    m = manifest()
    m = replace(m, devices=tuple(d for d in m.devices if d.name != "alpha"))
    with pytest.raises(ConfigError, match="not enrolled yet.*devices/alpha.yaml"):
        decide(inputs(manifest=m, source=VerifiedManifest(m, b"e", None, "fetched")), NOW)
    # a member before: cut off (fail-closed), interface kept
    d = decide(inputs(manifest=m, source=VerifiedManifest(m, b"e", None, "fetched"),
                      was_member=True), NOW)
    assert not d.desired.member and d.desired.interface.peers == {}
    assert any("removed or disabled" in w for w in d.warnings)


def test_a_move_rebinds_once_and_repoints_a_moved_peer() -> None:
    before = converged(inputs())
    gamma = wg_keypair(3)[1]
    seen = dict(before.observed.peers)
    seen[gamma] = replace(seen[gamma], last_handshake=NOW - 5, endpoint="203.0.113.3:40003")
    settled = replace(before, observed=replace(before.observed, peers=seen))
    settled = replace(settled, memory=decide(settled, NOW).memory)
    moved_feed = replace(FEED, revision=4, entries=(
        FEED.entries[0], FeedEntry("gamma", (Candidate("stun", "203.0.113.99:41000"),),
                                   "independent", "203.0.113.99", int(NOW)), FEED.entries[2]))
    d = decide(replace(settled, feed=moved_feed, moved=True), NOW + 1)
    texts = [str(op) for op in d.operations]
    assert texts[0].startswith("set listen-port 51820")
    assert any("203.0.113.99:41000" in t for t in texts)  # over a fresh-looking session


peer_names = st.sets(st.sampled_from(["beta", "gamma", "delta", "relay-1"]))


@settings(max_examples=60, deadline=None)
@given(drop=peer_names, mapping=st.sampled_from(["independent", "dependent", "unknown"]),
       handshake=st.one_of(st.none(), st.floats(NOW - 400, NOW)),
       stale=st.booleans())
def test_decide_simulate_decide_gives_nothing(drop, mapping, handshake, stale) -> None:
    m = manifest()
    m = replace(m, devices=tuple(d for d in m.devices if d.name not in drop))
    own = replace(inputs().own, mapping=mapping)
    observed = ObservedInterface("mo-acme", exists=False)
    if stale:  # an interface left behind with a stranger peer and a wrong port
        stranger = wg_keypair(9)[1]
        observed = ObservedInterface("mo-acme", True, listen_port=1234, up=True, peers={
            stranger: ObservedPeer(stranger, ("10.77.0.9/32",), last_handshake=handshake)})
    first = inputs(manifest=m, source=VerifiedManifest(m, b"e", None, "fetched"), own=own,
                   observed=observed)
    d = decide(first, NOW)
    after = simulate(observed, d.operations)
    again = decide(replace(first, observed=after, memory=d.memory), NOW)
    assert again.operations == ()


def test_applied_summary_is_built_in_sorted_key_order() -> None:
    """agent.state writes applied.json without re-sorting its keys: the summary
    must come out exactly as ``sort_keys`` would write it."""
    import json

    d = decide(inputs(), NOW)
    assert d.applied["peers"]
    assert json.dumps(dict(d.applied)) == json.dumps(dict(d.applied), sort_keys=True)
