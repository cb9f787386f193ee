"""Desired and observed WireGuard interface state.

The agent computes a ``DesiredInterface`` from a verified manifest and the
endpoint feed; a backend returns an ``ObservedInterface``;
``reconciler.converge.plan(desired, observed, now)`` diffs them. Keys are base64
(as in ``wg``); backends convert to hex for UAPI. Allowed IPs, addresses and
routes are canonical CIDR strings (``ipaddress.ip_network(..., strict=False)``).
``forwarding`` is a property of the interface's network namespace (or host),
not of the link: a relay wants it on; the planner never turns it off.
"""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.structs import Record, field, repr_without


class DesiredPeer(Record):
    public_key: str
    allowed_ips: tuple[str, ...]  # sorted, canonical
    endpoint: str | None = None  # "ip:port" / "[v6]:port"; None = leave to roaming
    keepalive: int = 0
    name: str = ""  # for humans; not part of the WireGuard state


class DesiredInterface(Record):
    name: str
    private_key: str  # base64; never logged (``__repr__``)
    listen_port: int
    addresses: tuple[str, ...]  # "10.0.0.1/24" style interface addresses
    peers: Mapping[str, DesiredPeer]  # by public key
    routes: tuple[str, ...] = ()  # extra CIDRs routed into the interface
    mtu: int = 1420
    forwarding: bool = False  # relay: IP forwarding on in the interface's namespace
    fwmark: int = 0  # mark on WireGuard's own packets (exit-node routing); 0 = none

    __repr__ = repr_without("private_key")  # never logged


class ObservedPeer(Record):
    public_key: str
    allowed_ips: tuple[str, ...]
    endpoint: str | None = None
    keepalive: int = 0
    last_handshake: float | None = None  # unix seconds, None = never
    rx_bytes: int = 0
    tx_bytes: int = 0


class ObservedInterface(Record):
    name: str
    exists: bool
    public_key: str | None = None  # derived from the configured private key
    listen_port: int = 0
    addresses: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    up: bool = False
    mtu: int = 0
    peers: Mapping[str, ObservedPeer] = field(default_factory=dict)
    forwarding: bool | None = None  # IP forwarding in its namespace; None = not observed
    fwmark: int = 0


ABSENT = ObservedInterface(name="", exists=False)
