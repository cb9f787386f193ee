"""Desired-state computation (pure): golden files per scenario, plus properties."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.agent.desired import PeerPath, compute_desired, host_network
from reconciler.converge import SetForwarding, plan, simulate
from reconciler.errors import ConfigError
from reconciler.model.wg import ObservedInterface
from reconciler.policy import peers_allowed

from .helpers import NOW, Org, device, wg_keypair

GOLDEN = Path(__file__).parent / "golden"
ORG = Org()
PRIVATE = wg_keypair(1)[0]
SEEDS = {"alpha": 1, "beta": 2, "gamma": 3, "relay-1": 4}


def private_of(name: str) -> str:
    """The local private key of ``name`` (its manifest key is ``wg_keypair(seed)[1]``)."""
    return wg_keypair(SEEDS.get(name, 1))[0]


def render(desired) -> dict:
    iface = desired.interface
    return {
        "member": desired.member,
        "interface": {
            "name": iface.name, "listen_port": iface.listen_port, "mtu": iface.mtu,
            "addresses": list(iface.addresses), "routes": list(iface.routes),
            "forwarding": iface.forwarding,
        },
        "wireguard_peers": [
            {"name": p.name, "public_key": p.public_key, "allowed_ips": list(p.allowed_ips),
             "endpoint": p.endpoint, "keepalive": p.keepalive}
            for p in sorted(iface.peers.values(), key=lambda p: p.name)
        ],
        "paths": [{"peer": s.name, "path": s.path, "via": s.via, "endpoint": s.endpoint}
                  for s in desired.peers],
    }


def full_mesh():
    return ORG.manifest([
        device("alpha", 1, "10.77.0.1", tunnel_ips=("10.77.0.1", "fd77::1")),
        device("beta", 2, "10.77.0.2", endpoint="198.51.100.2:51820"),
        device("gamma", 3, "10.77.0.3", routes=("192.168.50.0/24",)),
    ], cidr_v6="fd77::/64")


def with_relay():
    return ORG.manifest([
        device("alpha", 1, "10.77.0.1", keepalive=10),
        device("beta", 2, "10.77.0.2", routes=("192.168.60.0/24",)),
        device("gamma", 3, "10.77.0.3"),
        device("relay-1", 4, "10.77.0.4", relay=True, endpoint="203.0.113.4:51820"),
    ])


def policy_limited():
    # alpha may talk to beta only; gamma is not allowed (labels + compiled policy)
    policy = {"version": 1, "rules": [{"src": ["d:alpha"], "dst": ["d:beta"], "proto": "any"}]}
    return ORG.manifest([
        device("alpha", 1, "10.77.0.1"),
        device("beta", 2, "10.77.0.2"),
        device("gamma", 3, "10.77.0.3"),
    ], policy=policy)


CASES = {
    "full-mesh": (full_mesh, "alpha", {}),
    "relay-fallback-my-relay": (with_relay, "alpha", {
        "beta": PeerPath("beta", "relay", via="relay-1"),
        "relay-1": PeerPath("relay-1", "direct", endpoint="203.0.113.4:51820"),
    }),
    "relay-fallback": (with_relay, "alpha", {
        "beta": PeerPath("beta", "relay", via="relay-1"),
        "gamma": PeerPath("gamma", "lan", endpoint="192.168.1.3:51820"),
        "relay-1": PeerPath("relay-1", "direct", endpoint="203.0.113.4:51820"),
    }),
    "on-the-relay": (with_relay, "relay-1", {}),
    "removed-from-manifest": (full_mesh, "zeta", {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_desired_matches_golden(case: str) -> None:
    build, me, paths = CASES[case]
    manifest = build()
    got = compute_desired(manifest, me, private_key=private_of(me), interface="mo-acme",
                          allowed=peers_allowed(manifest, me), paths=paths,
                          my_relay="relay-1" if case.endswith("my-relay") else None)
    text = json.dumps(render(got), indent=2, sort_keys=True) + "\n"
    path = GOLDEN / f"desired-{case}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text()


def test_relay_catch_all_and_direct_host_routes() -> None:
    manifest = with_relay()
    got = compute_desired(manifest, "alpha", private_key=PRIVATE, interface="mo-acme",
                          allowed=peers_allowed(manifest, "alpha"),
                          paths=CASES["relay-fallback"][2], my_relay="relay-1")
    by_name = {p.name: p for p in got.interface.peers.values()}
    assert by_name["beta"].allowed_ips == ()  # reached through the relay only
    assert by_name["relay-1"].allowed_ips == ("10.77.0.0/24", "10.77.0.2/32", "10.77.0.4/32",
                                              "192.168.60.0/24")
    assert by_name["gamma"].allowed_ips == ("10.77.0.3/32",)
    assert by_name["gamma"].endpoint == "192.168.1.3:51820"
    assert all(p.keepalive == 10 for p in by_name.values())  # device override
    assert "192.168.60.0/24" in got.interface.routes


def test_policy_limits_peers_but_relays_stay() -> None:
    manifest = policy_limited()
    allowed = peers_allowed(manifest, "alpha")
    got = compute_desired(manifest, "alpha", private_key=PRIVATE, interface="mo-acme",
                          allowed=allowed, paths={})
    names = {p.name for p in got.interface.peers.values()}
    assert allowed == {"beta"}
    assert names == {"beta"}
    beta_only = compute_desired(manifest, "gamma", private_key=private_of("gamma"),
                                interface="mo-acme",
                                allowed=peers_allowed(manifest, "gamma"), paths={})
    assert beta_only.interface.peers == {}


def test_relay_path_without_usable_relay_falls_back_to_direct() -> None:
    manifest = full_mesh()
    got = compute_desired(manifest, "alpha", private_key=PRIVATE, interface="mo-acme",
                          allowed={"beta", "gamma"},
                          paths={"beta": PeerPath("beta", "relay", via="nobody")})
    assert {p.name for p in got.interface.peers.values()} == {"beta", "gamma"}
    assert [s.path for s in got.peers if s.name == "beta"] == ["direct"]


def test_relay_wants_forwarding_and_every_host_route() -> None:
    manifest = with_relay()
    on_relay = compute_desired(manifest, "relay-1", private_key=private_of("relay-1"),
                               interface="mo-acme", allowed=peers_allowed(manifest, "relay-1"),
                               paths={})
    assert on_relay.interface.forwarding is True
    allowed = {ip for p in on_relay.interface.peers.values() for ip in p.allowed_ips}
    assert {"10.77.0.1/32", "10.77.0.2/32", "10.77.0.3/32"} <= allowed
    ops = plan(on_relay.interface, ObservedInterface("mo-acme", exists=False), NOW)
    assert SetForwarding("mo-acme", True) in ops
    member = compute_desired(manifest, "alpha", private_key=private_of("alpha"),
                             interface="mo-acme", allowed=peers_allowed(manifest, "alpha"),
                             paths={})
    assert member.interface.forwarding is False


def test_manifest_key_not_ours_is_refused_before_planning() -> None:
    manifest = with_relay()
    with pytest.raises(ConfigError) as caught:
        compute_desired(manifest, "beta", private_key=private_of("alpha"), interface="mo-acme",
                        allowed=peers_allowed(manifest, "beta"), paths={})
    text = str(caught.value)
    assert wg_keypair(2)[1] in text and wg_keypair(1)[1] in text  # both public keys
    assert "meshops agent init --force" in text and "restore the key file" in text
    assert private_of("alpha") not in text and private_of("beta") not in text  # no secrets
    with pytest.raises(ConfigError, match="not a valid key"):
        compute_desired(manifest, "beta", private_key="bm90IGEga2V5", interface="mo-acme",
                        allowed=(), paths={})
    # a device that is not in the manifest has no key to compare: cut off, no error
    gone = compute_desired(manifest, "zeta", private_key=private_of("alpha"),
                           interface="mo-acme", allowed=(), paths={})
    assert not gone.member


def test_host_network() -> None:
    assert host_network("10.0.0.3") == "10.0.0.3/32"
    assert host_network("fd00::3") == "fd00::3/128"


names = st.lists(st.sampled_from(["a1", "b2", "c3", "d4", "e5", "f6"]), min_size=1,
                 max_size=6, unique=True)


@settings(max_examples=60, deadline=None)
@given(names=names, relay_mask=st.lists(st.booleans(), min_size=6, max_size=6),
       route_mask=st.lists(st.booleans(), min_size=6, max_size=6),
       path_kinds=st.lists(st.sampled_from(["direct", "lan", "relay"]), min_size=6,
                           max_size=6))
def test_property_plan_apply_plan_is_empty(names, relay_mask, route_mask, path_kinds) -> None:
    devices = [
        device(n, i + 2, f"10.77.0.{i + 2}", relay=relay_mask[i],
               endpoint=f"203.0.113.{i + 2}:51820" if relay_mask[i] else None,
               routes=(f"192.168.{i + 2}.0/24",) if route_mask[i] else ())
        for i, n in enumerate(names)
    ]
    devices.append(device("me", 1, "10.77.0.1"))
    manifest = ORG.manifest(devices)
    relays = [d.name for d in devices if d.relay]
    paths = {d.name: PeerPath(d.name, kind, via=relays[0] if relays else None,
                              endpoint="198.51.100.9:51820")
             for d, kind in zip(devices, path_kinds)}
    got = compute_desired(manifest, "me", private_key=PRIVATE, interface="mo-acme",
                          allowed=peers_allowed(manifest, "me"), paths=paths)
    ops = plan(got.interface, ObservedInterface("mo-acme", exists=False), NOW)
    after = simulate(ObservedInterface("mo-acme", exists=False), ops)
    assert plan(got.interface, after, NOW) == ()
    # every allowed IP belongs to exactly one WireGuard peer (cryptokey routing)
    seen: list[str] = []
    for p in got.interface.peers.values():
        seen.extend(p.allowed_ips)
    assert len(seen) == len(set(seen))
