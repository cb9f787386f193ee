"""Exhaustive tests of the pure peering decision, relay hashing and hysteresis."""

from __future__ import annotations

import itertools

import pytest

from reconciler.agent import peering as p
from reconciler.agent.memory import Memory
from reconciler.model.endpoints import Candidate

KINDS = ("public", "relay", "cone", "symmetric", "unknown")
RELAYS = ("relay-1", "relay-2")


def node(kind: str, name: str, public_ip: str, lan: str = "192.168.1.10") -> p.PeerInfo:
    """A device of one NAT kind; public/relay devices have a static endpoint."""
    if kind in ("public", "relay"):
        return p.PeerInfo(name, relay=kind == "relay", public=True, mapping="independent",
                          public_ip=public_ip,
                          candidates=(Candidate("static", f"{public_ip}:51820"),))
    mapping = {"cone": "independent", "symmetric": "dependent", "unknown": "unknown"}[kind]
    return p.PeerInfo(name, mapping=mapping, public_ip=public_ip,
                      candidates=(Candidate("stun", f"{public_ip}:40{len(name)}00"),
                                  Candidate("local", f"{lan}:51820")))


def expected_kind(a: str, b: str, same_site: bool) -> str:
    """The issue's table, written out independently of the implementation."""
    if "relay" in (a, b) or "public" in (a, b):
        return "direct"
    if same_site:
        return "lan"
    if "symmetric" in (a, b):
        return "relay"
    return "direct"  # cone/unknown pairs: simultaneous open, hysteresis as safety net


@pytest.mark.parametrize(("a", "b", "same_site"),
                         list(itertools.product(KINDS, KINDS, (False, True))))
def test_matrix(a, b, same_site):
    me = node(a, "me", "198.51.100.1", lan="192.168.1.10")
    peer = node(b, "peer", "198.51.100.1" if same_site else "203.0.113.9", lan="192.168.1.11")
    want = expected_kind(a, b, same_site)
    choice = p.choose_path(me, peer, RELAYS)
    assert choice.kind == want
    assert p.path_kind(peer, me) == want  # both sides agree, or traffic would be dropped
    if want == "direct":
        preferred = "static" if b in ("public", "relay") else "stun"
        assert choice.endpoint == next(c.address for c in peer.candidates if c.kind == preferred)
        assert choice.via is None
    elif want == "lan":
        assert choice.endpoint == "192.168.1.11:51820"
    else:
        assert choice.endpoint is None
        assert choice.via == p.choose_relay(p.pair_key("me", "peer"), RELAYS)
        # both ends pick the same relay for the pair
        assert p.choose_path(peer, me, RELAYS).via == choice.via


@pytest.mark.parametrize(
    ("a", "b", "same_site", "want"),
    [
        ("public", "cone", False, "direct"),
        ("cone", "cone", False, "direct"),
        ("cone", "cone", True, "lan"),
        ("cone", "symmetric", False, "relay"),
        ("symmetric", "symmetric", False, "relay"),
        ("symmetric", "relay", False, "direct"),
        ("cone", "relay", False, "direct"),
        ("symmetric", "public", False, "direct"),
    ],
)
def test_issue_6_matrix(a, b, same_site, want):
    me = node(a, "a", "198.51.100.1")
    peer = node(b, "b", "198.51.100.1" if same_site else "203.0.113.9")
    assert p.choose_path(me, peer, RELAYS).kind == want


def test_same_site_without_any_lan_candidate_goes_through_the_relay():
    a = p.PeerInfo("a", mapping="independent", public_ip="198.51.100.1")
    b = p.PeerInfo("b", mapping="independent", public_ip="198.51.100.1")
    assert p.choose_path(a, b, RELAYS).kind == "relay"


def test_lan_endpoint_prefers_the_candidate_on_my_subnet():
    me = p.PeerInfo("a", public_ip="198.51.100.1",
                    candidates=(Candidate("local", "10.1.2.3:51820"),))
    peer = p.PeerInfo("b", public_ip="198.51.100.1",
                      candidates=(Candidate("local", "172.16.0.9:51820"),
                                  Candidate("local", "10.1.2.77:51820")))
    assert p.choose_path(me, peer).endpoint == "10.1.2.77:51820"


def test_direct_to_a_nat_peer_without_candidates_learns_its_endpoint_by_roaming():
    me = node("public", "hub", "198.51.100.1")
    peer = p.PeerInfo("laptop", mapping="independent")
    assert p.choose_path(me, peer) == p.PathChoice("direct", None, None)


def test_reflected_beats_stun_for_the_endpoint():
    peer = p.PeerInfo("b", mapping="independent", public_ip="203.0.113.9",
                      candidates=(Candidate("stun", "203.0.113.9:1"),
                                  Candidate("reflected", "203.0.113.9:2")))
    assert p.choose_path(node("cone", "a", "198.51.100.1"), peer).endpoint == "203.0.113.9:2"


# -- rendezvous hashing ------------------------------------------------------------


DEVICES = [f"dev-{i}" for i in range(2000)]


def test_relay_choice_is_deterministic_and_order_free():
    relays = ["r1", "r2", "r3"]
    for device in DEVICES[:50]:
        assert p.choose_relay(device, relays) == p.choose_relay(device, list(reversed(relays)))
        assert p.relay_order(device, relays)[0] == p.choose_relay(device, relays)


def test_adding_a_relay_moves_about_one_in_n_devices_and_only_to_it():
    before = {d: p.choose_relay(d, ["r1", "r2", "r3", "r4"]) for d in DEVICES}
    after = {d: p.choose_relay(d, ["r1", "r2", "r3", "r4", "r5"]) for d in DEVICES}
    moved = [d for d in DEVICES if before[d] != after[d]]
    assert all(after[d] == "r5" for d in moved)
    assert 0.15 < len(moved) / len(DEVICES) < 0.25  # expected 1/5


def test_removing_a_relay_moves_only_its_devices():
    before = {d: p.choose_relay(d, ["r1", "r2", "r3"]) for d in DEVICES}
    after = {d: p.choose_relay(d, ["r1", "r3"]) for d in DEVICES}
    assert {d for d in DEVICES if before[d] != after[d]} == {
        d for d in DEVICES if before[d] == "r2"}
    load = [sum(1 for d in DEVICES if before[d] == r) for r in ("r1", "r2", "r3")]
    assert min(load) > len(DEVICES) / 3 * 0.8  # roughly balanced


def test_down_relays_are_skipped_in_hash_order():
    order = p.relay_order("dev-7", ["r1", "r2", "r3"])
    assert p.choose_relay("dev-7", ["r1", "r2", "r3"], {order[0]}) == order[1]
    assert p.choose_relay("dev-7", ["r1", "r2", "r3"], set(order)) == order[0]
    assert p.choose_relay("dev-7", []) is None
    assert p.choose_relay("r1", ["r1"]) is None  # a relay does not relay to itself


# -- hysteresis --------------------------------------------------------------------


CFG = p.HysteresisConfig(stale_after=30, establish_timeout=10, retry_initial=20,
                         retry_max=70, stable_after=100)


def test_direct_path_lifecycle():
    s = p.step_path(None, 0, 1000, CFG)
    assert (s.mode, s.since) == ("direct", 1000)
    assert p.step_path(s, 0, 1009, CFG) == s  # grace: still trying
    s = p.step_path(s, 0, 1010, CFG)  # never shook hands
    assert (s.mode, s.failures, s.retry_at) == ("relay", 1, 1030)
    assert p.step_path(s, 0, 1029, CFG) == s
    s = p.step_path(s, 0, 1030, CFG)  # retry direct
    assert (s.mode, s.since, s.failures) == ("direct", 1030, 1)
    s = p.step_path(s, 1035, 1036, CFG)  # it worked
    assert s.mode == "direct" and s.failures == 1
    s = p.step_path(s, 1100, 1129, CFG)  # healthy long enough: failures forgotten
    assert (s.mode, s.failures) == ("direct", 1)
    s = p.step_path(s, 1120, 1130, CFG)
    assert (s.mode, s.failures) == ("direct", 0)


def test_stale_handshake_falls_back_and_backoff_doubles_to_the_cap():
    s = p.PathState("direct", 0)
    s = p.step_path(s, 100, 120, CFG)
    assert s.mode == "direct"
    s = p.step_path(s, 100, 131, CFG)  # 31 s > stale_after
    assert (s.mode, s.retry_at) == ("relay", 151)
    waits = []
    for _ in range(4):
        s = p.step_path(s, 100, s.retry_at, CFG)  # retry
        assert s.mode == "direct"
        start = s.since
        s = p.step_path(s, 100, start + CFG.establish_timeout, CFG)  # fails again
        waits.append(s.retry_at - (start + CFG.establish_timeout))
    assert waits == [40, 70, 70, 70]


def test_relay_mode_returns_to_direct_when_the_session_comes_back():
    s = p.PathState("relay", 500, failures=3, retry_at=10_000)
    assert p.step_path(s, 400, 510, CFG) == s  # old handshake: nothing new
    back = p.step_path(s, 505, 510, CFG)  # the peer re-established the direct session
    assert (back.mode, back.since, back.failures) == ("direct", 510, 3)


def test_relay_health_and_failover():
    r = p.step_relay(None, 0, 1000, CFG)
    assert p.step_relay(r, 0, 1005, CFG) == r
    down = p.step_relay(r, 0, 1010, CFG)
    assert down.down_until == 1030 and down.failures == 1
    assert p.step_relay(down, 0, 1020, CFG) == down
    again = p.step_relay(down, 0, 1030, CFG)  # down time over: a new chance
    assert again.down_until == 0 and again.since == 1030
    assert p.step_relay(again, 1031, 1035, CFG).down_until == 0


def test_decide_falls_back_to_the_pairs_relay_and_fails_over_relays():
    me = node("cone", "a", "198.51.100.1")
    b = node("cone", "b", "203.0.113.9")
    relays = ["relay-1", "relay-2", "relay-3"]
    peers = [b] + [node("relay", r, f"198.51.100.{50 + i}") for i, r in enumerate(relays)]
    shakes = {r: 995.0 for r in relays}
    d = p.decide(me, peers, relays, {**shakes, "b": 0.0}, 1000, None, CFG)
    assert d.paths["b"].kind == "direct"
    assert d.my_relay == p.choose_relay("a", relays)
    d = p.decide(me, peers, relays, {**shakes, "b": 0.0}, 1011, d.state, CFG)
    assert d.paths["b"] == p.PathChoice("relay", "203.0.113.9:40100", p.choose_relay(p.pair_key("a", "b"), relays))
    # the pair's relay goes stale: the pair's traffic moves to its next relay
    primary = p.choose_relay(p.pair_key("a", "b"), relays)
    restored = Memory.from_dict(Memory(peering=d.state).to_dict()).peering  # across runs
    d = p.decide(me, peers, relays, {**shakes, primary: 900.0, "b": 0.0}, 1025, restored, CFG)
    assert d.state.relays[primary].down_until == 1045
    assert d.paths["b"].via == p.relay_order(p.pair_key("a", "b"), relays)[1]
