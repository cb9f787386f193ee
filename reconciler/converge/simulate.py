"""``simulate(observed, ops)``: what an interface looks like after ``ops``.

A pure model of how wireguard-go / the kernel react to each operation. It takes
no clock: operations carry no time, and what only time changes (handshakes,
byte counters) is carried over from ``observed`` as it is, so a new peer has
no handshake. Used by the property test (plan, simulate, plan again gives
nothing) and by the render backend (``reconciler.backends.render``, which
keeps its state as a file, not a device).
"""

from __future__ import annotations

from collections.abc import Iterable

from reconciler.converge.keys import public_key
from reconciler.converge.ops import (
    AddAddress,
    AddPeer,
    AddRoute,
    CreateInterface,
    Operation,
    RemoveAddress,
    RemovePeer,
    RemoveRoute,
    SetForwarding,
    SetFwmark,
    SetLinkUp,
    SetListenPort,
    SetMtu,
    SetPrivateKey,
    UpdatePeer,
)
from reconciler.model.wg import ObservedInterface, ObservedPeer
from reconciler.structs import replace

# wireguard-go creates its TUN with this MTU (device.DefaultMTU).
DEFAULT_MTU = 1420


def simulate(observed: ObservedInterface, ops: Iterable[Operation]) -> ObservedInterface:
    """Apply ``ops`` to a copy of ``observed`` and return the result."""
    state = observed
    peers = dict(observed.peers)
    addresses = list(observed.addresses)
    routes = list(observed.routes)
    for op in ops:
        if isinstance(op, CreateInterface):
            state = ObservedInterface(
                name=op.interface,
                exists=True,
                public_key=public_key(op.private_key),
                listen_port=op.listen_port,
                mtu=DEFAULT_MTU,
                forwarding=state.forwarding,  # per namespace: survives the link
            )
            peers, addresses, routes = {}, [], []
        elif isinstance(op, SetPrivateKey):
            state = replace(state, public_key=public_key(op.private_key))
        elif isinstance(op, SetListenPort):
            state = replace(state, listen_port=op.listen_port)
        elif isinstance(op, SetFwmark):
            state = replace(state, fwmark=op.fwmark)
        elif isinstance(op, SetMtu):
            state = replace(state, mtu=op.mtu)
        elif isinstance(op, SetLinkUp):
            state = replace(state, up=True)
        elif isinstance(op, SetForwarding):
            state = replace(state, forwarding=op.enabled)
        elif isinstance(op, AddAddress):
            if op.address not in addresses:
                addresses.append(op.address)
        elif isinstance(op, RemoveAddress):
            addresses = [a for a in addresses if a != op.address]
        elif isinstance(op, AddRoute):
            if op.route not in routes:
                routes.append(op.route)
        elif isinstance(op, RemoveRoute):
            routes = [r for r in routes if r != op.route]
        elif isinstance(op, AddPeer):
            p = op.peer
            peers[p.public_key] = ObservedPeer(
                public_key=p.public_key,
                allowed_ips=tuple(p.allowed_ips),
                endpoint=p.endpoint,
                keepalive=p.keepalive,
            )
        elif isinstance(op, RemovePeer):
            peers.pop(op.public_key, None)
        elif isinstance(op, UpdatePeer):
            old = peers.get(op.public_key) or ObservedPeer(op.public_key, ())
            peers[op.public_key] = replace(
                old,
                allowed_ips=old.allowed_ips if op.allowed_ips is None else tuple(op.allowed_ips),
                endpoint=old.endpoint if op.endpoint is None else op.endpoint,
                keepalive=old.keepalive if op.keepalive is None else op.keepalive,
            )
        else:  # pragma: no cover - exhaustive over Operation
            raise TypeError(f"unknown operation {op!r}")
    return replace(
        state, peers=peers, addresses=tuple(addresses), routes=tuple(routes)
    )
