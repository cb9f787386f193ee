"""The pure planner: golden plans, ordering, the endpoint rule, addresses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from converge.cases import NOW, PRIVATE, desired, key, observed_from, peer
from reconciler import structs
from reconciler.converge import (
    AddPeer,
    RemovePeer,
    SetForwarding,
    SetPrivateKey,
    UpdatePeer,
    plan,
    simulate,
)
from reconciler.model.wg import ABSENT, ObservedInterface, ObservedPeer

GOLDEN = Path(__file__).parent / "golden"


def _cases() -> dict[str, tuple]:
    base = desired(peer(2, "db-1", "203.0.113.5:51820", 25), peer(3, "laptop-7"))
    seen = observed_from(base)
    p2 = base.peers[key(2)]
    return {
        "fresh-interface": (
            structs.replace(base, routes=("192.168.50.0/24",)),
            structs.replace(ABSENT, name="wg-mesh"),
        ),
        "converged": (base, seen),
        "peer-added-removed": (
            desired(p2, peer(4, "printer")),
            seen,
        ),
        "peer-fields-changed": (
            desired(
                structs.replace(p2, allowed_ips=("10.0.0.2/32", "192.168.7.0/24")),
                structs.replace(peer(3, "laptop-7"), keepalive=15),
            ),
            seen,
        ),
        "device-drift": (
            base,
            structs.replace(
                seen,
                public_key=None,
                listen_port=0,
                mtu=1280,
                up=False,
                addresses=("10.0.0.99/24", "fe80::1/64"),
                routes=("10.200.0.0/16",),
            ),
        ),
        "key-rotated": (
            structs.replace(base, private_key=key(9)),
            seen,
        ),
        "relay-forwarding-off": (
            structs.replace(base, forwarding=True),
            structs.replace(seen, forwarding=False, up=False),
        ),
        "relay-fresh-interface": (
            structs.replace(base, forwarding=True),
            structs.replace(ABSENT, name="wg-mesh"),
        ),
    }


def render(ops) -> str:
    return "".join(f"{op}\n" for op in ops)


@pytest.mark.parametrize("case", sorted(_cases()))
def test_golden(case: str) -> None:
    want_desired, obs = _cases()[case]
    text = render(plan(want_desired, obs, NOW))
    path = GOLDEN / f"{case}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


class TestForwarding:
    def test_relay_with_forwarding_off_or_unobserved_gets_it_on(self) -> None:
        d = desired(peer(2), forwarding=True)
        for seen in (False, None):
            ops = plan(d, observed_from(d, forwarding=seen), NOW)
            assert ops == (SetForwarding("wg-mesh", True),)
            assert str(ops[0]) == "set ip forwarding on"

    def test_relay_with_forwarding_on_is_converged(self) -> None:
        d = desired(peer(2), forwarding=True)
        assert plan(d, observed_from(d, forwarding=True), NOW) == ()

    def test_forwarding_is_never_turned_off(self) -> None:
        d = desired(peer(2))  # not a relay
        assert plan(d, observed_from(d, forwarding=True), NOW) == ()
        assert not any(isinstance(op, SetForwarding)
                       for op in plan(d, structs.replace(ABSENT, name="wg-mesh"), NOW))

    def test_forwarding_comes_after_link_up_before_peer_updates(self) -> None:
        d = desired(peer(2), forwarding=True)
        seen = observed_from(d, up=False, forwarding=False)
        seen = structs.replace(seen, peers={key(2): ObservedPeer(key(2), ())})
        names = [type(op).__name__ for op in plan(d, seen, NOW)]
        assert names == ["SetLinkUp", "SetForwarding", "UpdatePeer"]

    def test_simulate_keeps_forwarding_across_create(self) -> None:
        d = desired(peer(2), forwarding=True)
        start = ObservedInterface(name="wg-mesh", exists=False, forwarding=True)
        ops = plan(d, start, NOW)
        assert not any(isinstance(op, SetForwarding) for op in ops)
        assert simulate(start, ops).forwarding is True
        assert simulate(start, [SetForwarding("wg-mesh", False)]).forwarding is False


def test_converged_plans_nothing_and_ignores_link_local() -> None:
    d = desired(peer(2), peer(3))
    assert plan(d, observed_from(d), NOW) == ()


def test_order_is_removals_updates_additions_each_sorted() -> None:
    d = desired(peer(5), peer(7), structs.replace(peer(3), keepalive=9), peer(4))
    obs = observed_from(desired(peer(3), peer(9), peer(8)))
    ops = plan(d, obs, NOW)
    kinds = [type(op).__name__ for op in ops]
    assert kinds == ["RemovePeer", "RemovePeer", "UpdatePeer", "AddPeer", "AddPeer", "AddPeer"]
    removed = [op.public_key for op in ops if isinstance(op, RemovePeer)]
    added = [op.peer.public_key for op in ops if isinstance(op, AddPeer)]
    assert removed == sorted(removed) and added == sorted(added)


def test_update_carries_only_changed_fields() -> None:
    d = desired(structs.replace(peer(2), keepalive=25))
    (op,) = plan(d, observed_from(desired(peer(2))), NOW)
    assert op == UpdatePeer("wg-mesh", key(2), None, None, 25, "dev-2")


def test_allowed_ips_compared_as_canonical_sets() -> None:
    d = desired(structs.replace(peer(2), allowed_ips=("10.0.0.2/32", "10.1.0.0/16")))
    obs = observed_from(d)
    obs = structs.replace(
        obs,
        peers={key(2): structs.replace(obs.peers[key(2)], allowed_ips=("10.1.0.0/16", "10.0.0.2"))},
    )
    assert plan(d, obs, NOW) == ()


class TestEndpointRule:
    def _plan(self, want: str | None, have: str | None, handshake: float | None):
        d = desired(peer(2, endpoint=want))
        obs = observed_from(d)
        obs = structs.replace(
            obs,
            peers={key(2): ObservedPeer(key(2), ("10.0.0.2/32",), have, 0, handshake)},
        )
        return plan(d, obs, NOW)

    def test_unknown_desired_endpoint_is_left_to_roaming(self) -> None:
        assert self._plan(None, "198.51.100.9:4000", None) == ()

    def test_missing_observed_endpoint_is_set(self) -> None:
        (op,) = self._plan("203.0.113.5:51820", None, None)
        assert isinstance(op, UpdatePeer) and op.endpoint == "203.0.113.5:51820"

    def test_roamed_endpoint_with_fresh_handshake_is_not_fought(self) -> None:
        assert self._plan("203.0.113.5:51820", "198.51.100.9:4000", NOW - 30) == ()

    def test_roamed_endpoint_with_stale_handshake_is_repointed(self) -> None:
        (op,) = self._plan("203.0.113.5:51820", "198.51.100.9:4000", NOW - 181)
        assert op.endpoint == "203.0.113.5:51820"

    def test_differing_endpoint_without_handshake_is_repointed(self) -> None:
        (op,) = self._plan("203.0.113.5:51820", "198.51.100.9:4000", None)
        assert op.endpoint == "203.0.113.5:51820"

    def test_equal_endpoints_in_other_spelling_are_equal(self) -> None:
        assert self._plan("[2001:DB8::1]:51820", "[2001:db8::1]:51820", None) == ()


def test_private_key_never_printed() -> None:
    d = structs.replace(desired(peer(2)), private_key=key(9))
    ops = plan(d, structs.replace(ABSENT, name="wg-mesh"), NOW)
    ops += (SetPrivateKey("wg-mesh", PRIVATE),)
    for op in ops:
        assert key(9) not in str(op) and key(9) not in repr(op)
        assert PRIVATE not in str(op) and PRIVATE not in repr(op)


def test_absent_interface_starts_with_create() -> None:
    ops = plan(desired(peer(2)), ObservedInterface(name="wg-mesh", exists=False), NOW)
    assert type(ops[0]).__name__ == "CreateInterface"
    assert not any(isinstance(op, SetPrivateKey) for op in ops)


def test_listen_port_zero_and_mtu_zero_mean_dont_care() -> None:
    d = desired(peer(2), listen_port=0, mtu=0)
    obs = structs.replace(observed_from(d), listen_port=43210, mtu=1380)
    assert plan(d, obs, NOW) == ()
