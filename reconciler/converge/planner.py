"""``plan(desired, observed, now)``: the pure diff of one WireGuard interface.

Called by the agent (``reconciler.agent``) every pass, and again after
apply to check convergence. Same inputs, same output: no I/O, no clock (the
caller passes ``now``); this file imports only the stdlib and ``reconciler.model``
(public keys come from ``converge.keys``, which uses ``cryptography``).

Order is fixed so plans are stable and golden-testable:

0. after a move (``rebind``): ``SetListenPort`` to the port it has;
1. ``CreateInterface`` when the interface does not exist;
2. removals: routes, addresses, peers;
3. updates: private key, listen port, fwmark, MTU, link up, IP forwarding, peers;
4. additions: peers, addresses, routes.

Each group is sorted by its key (public key, or address/network).

Rules
-----
* Peers are keyed by public key. An existing peer gets one ``UpdatePeer``
  carrying only the fields that differ (allowed IPs are compared as sets of
  canonical CIDRs; the op carries the complete desired list).
* **Endpoint rule.** WireGuard roams: when a peer's packets arrive from a
  new address, the endpoint follows them. So the planner sets an endpoint
  only when ``desired.endpoint`` is not ``None`` and either the observed
  endpoint is ``None``, or it differs *and* the last handshake is older
  than ``STALE_HANDSHAKE`` (180 s, the time after which WireGuard gives up
  on a session, REJECT_AFTER_TIME) or never happened. A healthy roamed
  session is left alone; a stale one is re-pointed. Peers in ``repoint``
  (their pair's situation changed: a move) get the desired endpoint even
  over a fresh-looking session: that session is dead, and waiting 180 s
  would keep sending to a vanished address.
* Addresses: IPv6 link-local addresses (``fe80::/10``) on the interface are
  the kernel's (a TUN device gets one when it comes up) and are ignored.
* ``listen_port == 0`` or ``mtu == 0`` in the desired state mean "don't care".
* **Forwarding** (relays): ``SetForwarding(name, True)`` when
  ``desired.forwarding`` is set and the observed forwarding is not ``True``
  (``None``, not observed, counts as off; turning it on twice is harmless).
  Forwarding is never turned off: ``desired.forwarding == False`` means
  "don't care", because the host may forward for other reasons (a router,
  docker, another VPN).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from reconciler.converge.keys import public_key
from reconciler.converge.ops import (
    FIREWALL_OPS,
    ROUTING_OPS,
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
from reconciler.model.endpoint import parse_or_none
from reconciler.model.wg import DesiredInterface, DesiredPeer, ObservedInterface, ObservedPeer

STALE_HANDSHAKE = 180.0
_LINK_LOCAL_V6 = ipaddress.ip_network("fe80::/10")


def canonical_network(cidr: str) -> str:
    """``10.0.0.3`` / ``10.0.0.3/32`` / ``2001:DB8::/32`` -> canonical network text."""
    return str(ipaddress.ip_network(cidr.strip(), strict=False))


def _net_sort_key(text: str) -> tuple[int, int, int]:
    net = ipaddress.ip_interface(text)
    return (net.version, int(net.ip), net.network.prefixlen)


def _same_ips(desired: tuple[str, ...], observed: tuple[str, ...]) -> bool:
    if sorted(desired) == sorted(observed):  # fast path: both canonical already
        return True
    return {canonical_network(c) for c in desired} == {canonical_network(c) for c in observed}


def _same_endpoint(desired: str, observed: str) -> bool:
    if desired == observed:
        return True
    want, have = parse_or_none(desired), parse_or_none(observed)
    return want is not None and want == have


def endpoint_needs_set(
    desired: DesiredPeer, observed: ObservedPeer, now: float, stale: float = STALE_HANDSHAKE
) -> bool:
    """The endpoint rule (see the module docstring)."""
    if desired.endpoint is None:
        return False
    if observed.endpoint is None:
        return True
    if _same_endpoint(desired.endpoint, observed.endpoint):
        return False
    last = observed.last_handshake
    return last is None or last <= 0 or now - last > stale


def _diff_peer(interface: str, d: DesiredPeer, o: ObservedPeer, now: float,
               repoint: bool) -> UpdatePeer | None:
    allowed = None if _same_ips(d.allowed_ips, o.allowed_ips) else d.allowed_ips
    endpoint = d.endpoint if endpoint_needs_set(d, o, float("inf") if repoint else now) \
        else None
    keepalive = None if d.keepalive == o.keepalive else d.keepalive
    if allowed is None and endpoint is None and keepalive is None:
        return None
    return UpdatePeer(interface, d.public_key, allowed, endpoint, keepalive, d.name)


def _addresses(values: Iterable[str]) -> dict[str, str]:
    """canonical -> original, link-local IPv6 dropped."""
    out: dict[str, str] = {}
    for value in values:
        iface = ipaddress.ip_interface(value.strip())
        if iface.version == 6 and iface.ip in _LINK_LOCAL_V6:
            continue
        out[str(iface)] = value
    return out


def _networks(values: Iterable[str]) -> dict[str, str]:
    return {canonical_network(v): v for v in values}


def plan(desired: DesiredInterface, observed: ObservedInterface, now: float, *,
         repoint: frozenset[str] = frozenset(), rebind: bool = False) -> tuple[Operation, ...]:
    """The operations that turn ``observed`` into ``desired`` (see module docstring).

    After a move (this device changed networks) the caller passes ``rebind``
    and the public keys to ``repoint``; both are one-shot: the re-observation
    after apply is planned without them."""
    name = desired.name
    ops: list[Operation] = []
    if rebind and observed.exists and observed.listen_port and \
            observed.listen_port == (desired.listen_port or observed.listen_port):
        # wireguard-go keeps, per peer, the source address it last used ("sticky
        # sockets"); after a move it is gone and every send fails until a
        # handshake times out (15 s). Setting the port, even to the same value,
        # rebinds the socket and clears them; the kernel module ignores it.
        ops.append(SetListenPort(name, observed.listen_port))
    if not observed.exists:
        ops.append(CreateInterface(name, desired.listen_port, desired.private_key))
        observed = ObservedInterface(
            name=name,
            exists=True,
            public_key=public_key(desired.private_key),
            listen_port=desired.listen_port,
            forwarding=observed.forwarding,  # a namespace property, not the link's
        )

    want_addrs = _addresses(desired.addresses)
    have_addrs = _addresses(observed.addresses)
    want_routes = _networks(desired.routes)
    have_routes = _networks(observed.routes)

    # 1. removals
    for net in sorted(have_routes.keys() - want_routes.keys(), key=_net_sort_key):
        ops.append(RemoveRoute(name, net))
    for addr in sorted(have_addrs.keys() - want_addrs.keys(), key=_net_sort_key):
        ops.append(RemoveAddress(name, addr))
    for key in sorted(observed.peers.keys() - desired.peers.keys()):
        ops.append(RemovePeer(name, key))

    # 2. updates
    if observed.public_key != public_key(desired.private_key):
        ops.append(SetPrivateKey(name, desired.private_key))
    if desired.listen_port and observed.listen_port != desired.listen_port:
        ops.append(SetListenPort(name, desired.listen_port))
    if observed.fwmark != desired.fwmark:
        ops.append(SetFwmark(name, desired.fwmark))
    if desired.mtu and observed.mtu != desired.mtu:
        ops.append(SetMtu(name, desired.mtu))
    if not observed.up:
        ops.append(SetLinkUp(name))
    if desired.forwarding and observed.forwarding is not True:
        ops.append(SetForwarding(name, True))
    updates = []
    have_peer = observed.peers.get
    for key, d in desired.peers.items():  # 10,000 a pass: the unchanged peer costs little
        o = have_peer(key)
        if o is None or (d.allowed_ips == o.allowed_ips and d.keepalive == o.keepalive
                         and (d.endpoint is None or d.endpoint == o.endpoint)):
            continue  # to be added; or exactly as wanted (what _diff_peer would find)
        update = _diff_peer(name, d, o, now, key in repoint)
        if update is not None:
            updates.append(update)
    ops.extend(sorted(updates, key=lambda u: u.public_key))

    # 3. additions
    for key in sorted(desired.peers.keys() - observed.peers.keys()):
        ops.append(AddPeer(name, desired.peers[key]))
    for addr in sorted(want_addrs.keys() - have_addrs.keys(), key=_net_sort_key):
        ops.append(AddAddress(name, addr))
    for net in sorted(want_routes.keys() - have_routes.keys(), key=_net_sort_key):
        ops.append(AddRoute(name, net))
    return tuple(ops)


def phases(ops: tuple[Operation, ...]) -> tuple[tuple[Operation, ...], ...]:
    """The order a plan is applied in, as groups that each go to one owner
    (``agent.commit``): the firewall table, the policy routing, or the backend.

    1. peer removals: shrinking the mesh is safe whatever happens next (a
       revoked device is cut off even when the firewall cannot be applied);
    2. ``ReplaceFirewall``: before any peer is added, so a ruleset that cannot
       be applied stops the pass before the peers it protects exist;
    3. the rest of WireGuard and the link. A plan that creates the interface
       goes in two steps, first the interface (key, port, link), then the
       peers: wireguard-go binds a random port as soon as it starts and its
       device is up at once; peers added before ``listen_port`` is set would
       send their first handshake from that random port, and the remote side
       would roam to an address that dies a moment later;
    4. policy routing (the exit node): its table route needs the interface,
       and its rules need the interface's fwmark, set in step 3.
    """
    removals = tuple(op for op in ops if isinstance(op, RemovePeer))
    firewall = tuple(op for op in ops if isinstance(op, FIREWALL_OPS))
    routing = tuple(op for op in ops if isinstance(op, ROUTING_OPS))
    rest = tuple(op for op in ops if not isinstance(op, (RemovePeer, *FIREWALL_OPS,
                                                          *ROUTING_OPS)))
    groups: list[tuple[Operation, ...]] = [g for g in (removals, firewall) if g]
    if any(isinstance(op, CreateInterface) for op in rest):
        first = tuple(op for op in rest if not isinstance(op, AddPeer))
        later = tuple(op for op in rest if isinstance(op, AddPeer))
        groups += [g for g in (first, later) if g]
    elif rest:
        groups.append(rest)
    if routing:
        groups.append(routing)
    return tuple(groups)
