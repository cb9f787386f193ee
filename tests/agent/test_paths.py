"""The adapter from manifest + feed + observed handshakes to peering decisions."""

from __future__ import annotations

from reconciler.agent.memory import Heard, Memory
from reconciler.agent.paths import decide_paths, literal_endpoint
from reconciler.model.endpoints import Candidate, EndpointFeed, FeedEntry
from reconciler.model.wg import ObservedInterface, ObservedPeer

from .helpers import NOW, Org, device, wg_keypair

ORG = Org()


def manifest():
    return ORG.manifest([
        device("alpha", 1, "10.77.0.1"),
        device("beta", 2, "10.77.0.2"),
        device("gamma", 3, "10.77.0.3"),
        device("relay-1", 4, "10.77.0.4", relay=True, endpoint="relay.example:51820"),
    ])


def entry(name, mapping, ip, port):
    return FeedEntry(name, (Candidate("stun", f"{ip}:{port}"),), mapping, ip, int(NOW))


FEED = EndpointFeed("acme", 1, int(NOW), (
    entry("alpha", "independent", "198.51.100.1", 40001),
    entry("beta", "dependent", "198.51.100.2", 40002),
    entry("gamma", "independent", "203.0.113.3", 40003),
))


RESOLVED = {"relay.example": "203.0.113.4"}


def decide(manifest, me, *, state, resolve=None, **kw):
    return decide_paths(manifest, me, memory=state if isinstance(state, Memory) else Memory(),
                        resolved=RESOLVED if resolve else None, **kw)


def test_symmetric_peer_goes_through_the_relay_cone_peer_direct() -> None:
    got = decide(manifest(), "alpha", observed=ObservedInterface("mo-acme", False), feed=FEED,
                 state={}, now=NOW, resolve=True)
    assert got.paths["beta"].path == "relay" and got.paths["beta"].via == "relay-1"
    assert got.paths["gamma"].path == "direct"
    assert got.paths["gamma"].endpoint == "203.0.113.3:40003"
    assert got.paths["relay-1"].endpoint == "203.0.113.4:51820"  # hostname resolved
    assert got.my_relay == "relay-1"


def test_stale_direct_path_falls_back_to_relay_and_state_persists() -> None:
    gamma_key = wg_keypair(3)[1]
    observed = ObservedInterface("mo-acme", True, peers={
        gamma_key: ObservedPeer(gamma_key, ("10.77.0.3/32",), last_handshake=None)})
    first = decide(manifest(), "alpha", observed=observed, feed=FEED, state={}, now=NOW,
                   resolve=True)
    assert first.paths["gamma"].path == "direct"
    later = decide(manifest(), "alpha", observed=observed, feed=FEED, state=first.memory,
                   now=NOW + 60, resolve=True)
    assert later.paths["gamma"].path == "relay"  # no handshake within the grace period
    assert later.memory != first.memory


def test_unknown_device_gets_nothing() -> None:
    got = decide(manifest(), "zeta", observed=ObservedInterface("x", False), feed=None,
                 state={}, now=NOW)
    assert got.paths == {} and got.my_relay is None


def test_literal_endpoint() -> None:
    assert literal_endpoint("198.51.100.7:51820", {}) == "198.51.100.7:51820"
    assert literal_endpoint("[2001:DB8::01]:51820", {}) == "[2001:db8::1]:51820"
    assert literal_endpoint("relay.example:7", RESOLVED) == "203.0.113.4:7"
    assert literal_endpoint("nowhere.invalid:1", {"nowhere.invalid": None}) is None
    assert literal_endpoint("nowhere.invalid:1", {}) is None
    assert literal_endpoint("[fe80::1%eth0]:1", {}) is None
    assert literal_endpoint(None, {}) is None


def test_last_seen_tracks_rx_progress_between_passes():
    from reconciler.agent.paths import last_seen
    from reconciler.model.wg import ObservedInterface, ObservedPeer

    names = {"K1": "relay1", "K2": "b"}

    def obs(rx1: int, rx2: int) -> ObservedInterface:
        return ObservedInterface("wg0", True, peers={
            "K1": ObservedPeer("K1", (), last_handshake=900.0, rx_bytes=rx1),
            "K2": ObservedPeer("K2", (), last_handshake=None, rx_bytes=rx2),
            "K9": ObservedPeer("K9", (), last_handshake=999.0, rx_bytes=5),  # not in the manifest
        })

    first = last_seen(obs(100, 0), names, {}, 1000.0)
    assert first == {"relay1": Heard(100, 900.0), "b": Heard(0, 0.0)}  # no history: handshake
    moved = last_seen(obs(148, 0), names, first, 1005.0)
    assert moved["relay1"] == Heard(148, 1005.0)  # keepalives arrived: seen now
    assert moved["b"] == Heard(0, 0.0)
    still = last_seen(obs(148, 0), names, moved, 1030.0)
    assert still["relay1"] == Heard(148, 1005.0)  # silent since 1005: going stale
    reset = last_seen(obs(3, 0), names, still, 1040.0)
    assert reset["relay1"] == Heard(3, 1040.0)  # counter went down (new interface): progress


def test_a_peer_that_moved_is_repointed_until_it_is_heard_from_again() -> None:
    gamma_key = wg_keypair(3)[1]

    def observed(handshake, rx):
        return ObservedInterface("mo-acme", True, peers={
            gamma_key: ObservedPeer(gamma_key, ("10.77.0.3/32",), endpoint="203.0.113.3:40003",
                                    last_handshake=handshake, rx_bytes=rx)})

    first = decide(manifest(), "alpha", observed=observed(NOW - 5, 100), feed=FEED, state={},
                   now=NOW, resolve=True)
    assert first.paths["gamma"].path == "direct" and first.repoint == frozenset()
    moved = EndpointFeed("acme", 2, int(NOW), (
        FEED.entries[0], FEED.entries[1], entry("gamma", "independent", "203.0.113.99", 41000)))
    # the old session still looks fresh (handshake 6 s ago), but gamma changed networks
    second = decide(manifest(), "alpha", observed=observed(NOW - 5, 100), feed=moved,
                    state=first.memory, now=NOW + 1, resolve=True)
    assert second.paths["gamma"].endpoint == "203.0.113.99:41000"
    assert second.repoint == frozenset({"gamma"})
    still = decide(manifest(), "alpha", observed=observed(NOW - 5, 100), feed=moved,
                   state=second.memory, now=NOW + 2, resolve=True)
    assert still.repoint == frozenset({"gamma"})  # not heard from since the change
    # no handshake on the new address within the grace period: relay, even though
    # the old session's handshake is younger than stale_after
    late = decide(manifest(), "alpha", observed=observed(NOW - 5, 100), feed=moved,
                  state=still.memory, now=NOW + 40, resolve=True)
    assert late.paths["gamma"].path == "relay"
    heard = decide(manifest(), "alpha", observed=observed(NOW + 41, 500), feed=moved,
                   state=second.memory, now=NOW + 42, resolve=True)
    assert heard.paths["gamma"].path == "direct" and heard.repoint == frozenset()


def _observed_under(key, handshake, rx=100):
    return ObservedInterface("mo-acme", True, peers={
        key: ObservedPeer(key, ("10.77.0.3/32",), endpoint="203.0.113.3:40003",
                          last_handshake=handshake, rx_bytes=rx)})


def _rekeyed(name="gamma", n=33, ip="10.77.0.3", **kw):
    """The manifest after ``name`` rotated its WireGuard key (key number ``n``)."""
    devices = [device("alpha", 1, "10.77.0.1"), device("beta", 2, "10.77.0.2"),
               device("gamma", 3, "10.77.0.3"),
               device("relay-1", 4, "10.77.0.4", relay=True, endpoint="relay.example:51820")]
    return ORG.manifest([device(name, n, ip, **kw) if d.name == name else d for d in devices])


def _settled(now):
    """alpha, direct to gamma for a long time, heard from just now."""
    old = wg_keypair(3)[1]
    first = decide(manifest(), "alpha", observed=_observed_under(old, now - 2000), feed=FEED,
                   state={}, now=now - 1000, resolve=True)
    return decide(manifest(), "alpha", observed=_observed_under(old, now - 5, 500), feed=FEED,
                  state=first.memory, now=now, resolve=True)


def test_a_rotated_key_starts_a_new_direct_attempt_not_a_failed_one() -> None:
    """The pass that first sees gamma's new key still observes the old entry (the
    new one is added by this pass): gamma is not heard under its key, which is not
    a failed direct path. Counting it as one sent gamma through the relay for a pass
    while the new entry had no allowed IPs (a ping gap of 5 s in the lab once)."""
    settled = _settled(NOW)
    assert settled.paths["gamma"].path == "direct"
    old, new = wg_keypair(3)[1], wg_keypair(33)[1]
    switch = decide(_rekeyed(), "alpha", observed=_observed_under(old, NOW - 5, 500), feed=FEED,
                    state=settled.memory, now=NOW + 1, resolve=True)
    assert switch.paths["gamma"].path == "direct"
    assert switch.paths["gamma"].endpoint == "203.0.113.3:40003"
    # the next pass: the new entry exists, no handshake yet, within the grace period
    added = decide(_rekeyed(), "alpha", observed=_observed_under(new, None, 0), feed=FEED,
                   state=switch.memory, now=NOW + 5, resolve=True)
    assert added.paths["gamma"].path == "direct"
    # a new key that never handshakes is still a failed direct path
    late = decide(_rekeyed(), "alpha", observed=_observed_under(new, None, 0), feed=FEED,
                  state=added.memory, now=NOW + 40, resolve=True)
    assert late.paths["gamma"].path == "relay"


def test_a_recreated_interface_keeps_every_settled_path_direct() -> None:
    """wireguard-go restarted: no peer on the interface for a pass, then fresh entries."""
    settled = _settled(NOW)
    gone = decide(manifest(), "alpha", observed=ObservedInterface("mo-acme", False), feed=FEED,
                  state=settled.memory, now=NOW + 1, resolve=True)
    assert gone.paths["gamma"].path == "direct"
    fresh = decide(manifest(), "alpha", observed=_observed_under(wg_keypair(3)[1], None, 0),
                   feed=FEED, state=gone.memory, now=NOW + 3, resolve=True)
    assert fresh.paths["gamma"].path == "direct"


def test_a_relay_that_rotated_its_key_is_not_taken_down() -> None:
    relay_old = wg_keypair(4)[1]

    def observed(key, handshake):
        return ObservedInterface("mo-acme", True, peers={
            key: ObservedPeer(key, ("10.77.0.0/24",), endpoint="203.0.113.4:51820",
                              last_handshake=handshake, rx_bytes=100)})

    first = decide(manifest(), "alpha", observed=observed(relay_old, NOW - 2000), feed=FEED,
                   state={}, now=NOW - 1000, resolve=True)
    settled = decide(manifest(), "alpha", observed=observed(relay_old, NOW - 5), feed=FEED,
                     state=first.memory, now=NOW, resolve=True)
    assert settled.my_relay == "relay-1"
    rekeyed = _rekeyed("relay-1", 44, "10.77.0.4", relay=True, endpoint="relay.example:51820")
    switch = decide(rekeyed, "alpha", observed=observed(relay_old, NOW - 5), feed=FEED,
                    state=settled.memory, now=NOW + 1, resolve=True)
    assert switch.my_relay == "relay-1"
    assert switch.memory.peering.relays["relay-1"].down_until == 0.0
    assert switch.paths["beta"].via == "relay-1"


def test_a_device_never_on_the_interface_does_not_rewrite_the_memory_each_pass() -> None:
    """Only a peer heard last pass and missing now restarts its attempt: one that
    was never there (say, one the policy keeps off the interface) keeps its state,
    so a pass that changes nothing still writes nothing."""
    first = decide(manifest(), "alpha", observed=ObservedInterface("mo-acme", True), feed=FEED,
                   state={}, now=NOW, resolve=True)
    again = decide(manifest(), "alpha", observed=ObservedInterface("mo-acme", True), feed=FEED,
                   state=first.memory, now=NOW + 1, resolve=True)
    assert again.memory == first.memory
