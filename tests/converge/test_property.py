"""Property: plan, simulate the operations, plan again -> nothing left.

Also checks the planner's purity: converge/ imports only the stdlib (minus the
purity contract's list), cryptography's primitives and the lower meshops layers.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from converge.cases import NOW, key
from reconciler.converge import plan, public_key, simulate
from reconciler.model.wg import DesiredInterface, DesiredPeer, ObservedInterface, ObservedPeer

keys = st.integers(min_value=2, max_value=40).map(key)
v4_hosts = st.integers(min_value=2, max_value=250).map(lambda n: f"10.0.{n // 100}.{n}/32")
nets = st.sampled_from(["192.168.1.0/24", "10.50.0.0/16", "172.16.4.0/22", "2001:db8:1::/48"])
endpoints = st.none() | st.sampled_from(["203.0.113.5:51820", "198.51.100.7:4500", "[2001:db8::5]:51820"])
handshakes = st.none() | st.floats(min_value=NOW - 1000, max_value=NOW)
addresses = st.sampled_from(["10.0.0.1/24", "10.0.0.9/24", "fd00::1/64", "fe80::77/64"])


@st.composite
def desired_peers(draw) -> DesiredPeer:
    return DesiredPeer(
        public_key=draw(keys),
        allowed_ips=tuple(sorted(draw(st.sets(v4_hosts | nets, max_size=3)))),
        endpoint=draw(endpoints),
        keepalive=draw(st.sampled_from([0, 15, 25])),
        name=draw(st.sampled_from(["", "db-1", "laptop"])),
    )


@st.composite
def observed_peers(draw) -> ObservedPeer:
    return ObservedPeer(
        public_key=draw(keys),
        allowed_ips=tuple(draw(st.lists(v4_hosts | nets, max_size=3, unique=True))),
        endpoint=draw(endpoints),
        keepalive=draw(st.sampled_from([0, 15, 25])),
        last_handshake=draw(handshakes),
    )


@st.composite
def desired_ifaces(draw) -> DesiredInterface:
    peers = draw(st.lists(desired_peers(), max_size=6, unique_by=lambda p: p.public_key))
    return DesiredInterface(
        name="wg-mesh",
        private_key=draw(st.sampled_from([key(1), key(60)])),
        listen_port=draw(st.sampled_from([0, 51820, 51821])),
        addresses=tuple(draw(st.sets(addresses.filter(lambda a: not a.startswith("fe80")), max_size=2))),
        peers={p.public_key: p for p in peers},
        routes=tuple(draw(st.sets(nets, max_size=2))),
        mtu=draw(st.sampled_from([0, 1280, 1420])),
        forwarding=draw(st.booleans()),
    )


@st.composite
def observed_ifaces(draw) -> ObservedInterface:
    forwarding = draw(st.sampled_from([None, False, True]))
    if not draw(st.booleans()):
        return ObservedInterface(name="wg-mesh", exists=False, forwarding=forwarding)
    peers = draw(st.lists(observed_peers(), max_size=6, unique_by=lambda p: p.public_key))
    return ObservedInterface(
        name="wg-mesh",
        exists=True,
        public_key=draw(st.sampled_from([None, public_key(key(1)), public_key(key(60))])),
        listen_port=draw(st.sampled_from([0, 51820, 40000])),
        addresses=tuple(draw(st.sets(addresses, max_size=3))),
        routes=tuple(draw(st.sets(nets, max_size=2))),
        up=draw(st.booleans()),
        mtu=draw(st.sampled_from([0, 1280, 1420])),
        peers={p.public_key: p for p in peers},
        forwarding=forwarding,
    )


@settings(max_examples=300, deadline=None)
@given(desired_ifaces(), observed_ifaces())
def test_plan_apply_plan_is_empty(want: DesiredInterface, have: ObservedInterface) -> None:
    ops = plan(want, have, NOW)
    after = simulate(have, ops)
    assert plan(want, after, NOW) == ()
    assert plan(want, have, NOW) == ops  # deterministic
    if want.forwarding:
        assert after.forwarding is True
    else:  # never turned off, never touched
        assert after.forwarding == have.forwarding


@settings(max_examples=100, deadline=None)
@given(desired_ifaces(), observed_ifaces())
def test_plan_is_removals_updates_additions(want: DesiredInterface, have: ObservedInterface) -> None:
    rank = {"Create": 0, "Remove": 1, "Set": 2, "Update": 2, "Add": 3}
    ranks = []
    for op in plan(want, have, NOW):
        name = type(op).__name__
        ranks.append(next(v for prefix, v in rank.items() if name.startswith(prefix)))
    assert ranks == sorted(ranks)


def test_converge_imports_only_stdlib_cryptography_and_lower_layers() -> None:
    """The planner's own rule, tighter than the shared contract: the stdlib (minus
    the contract's forbidden modules, read from pyproject.toml), cryptography's
    X25519 (no I/O) and the lower meshops layers."""
    root = Path(__file__).resolve().parents[2]
    contracts = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["importlinter"]
    pure = next(c for c in contracts["contracts"]
                if c["name"] == "Pure packages import no I/O libraries")
    assert "reconciler.converge" in pure["source_modules"]
    forbidden = set(pure["forbidden_modules"])
    allowed_own = ("reconciler.converge", "reconciler.model", "reconciler.errors",
                   "reconciler.structs")
    files = sorted((root / "reconciler" / "converge").glob("*.py"))
    assert len(files) >= 4, "reconciler/converge not found (renamed?)"
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                ok = (name.startswith(allowed_own) or top in sys.stdlib_module_names
                      or name.startswith("cryptography.hazmat.primitives"))
                assert ok, f"{path.name} imports {name}"
                assert top not in forbidden, f"{path.name}: {name}"
