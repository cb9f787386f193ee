"""Shared, deterministic fixtures for the planner and backend tests."""

from __future__ import annotations

import base64

from reconciler.converge.keys import public_key
from reconciler.model.wg import DesiredInterface, DesiredPeer, ObservedInterface, ObservedPeer


def key(n: int) -> str:
    """A deterministic base64 key (32 bytes of ``n``)."""
    return base64.b64encode(bytes([n]) * 32).decode()


PRIVATE = key(1)
PUBLIC = public_key(PRIVATE)
NOW = 1_700_000_000.0


def peer(n: int, name: str = "", endpoint: str | None = None, keepalive: int = 0) -> DesiredPeer:
    return DesiredPeer(
        public_key=key(n),
        allowed_ips=(f"10.0.0.{n}/32",),
        endpoint=endpoint,
        keepalive=keepalive,
        name=name or f"dev-{n}",
    )


def desired(*peers: DesiredPeer, **kw: object) -> DesiredInterface:
    args: dict[str, object] = {
        "name": "wg-mesh",
        "private_key": PRIVATE,
        "listen_port": 51820,
        "addresses": ("10.0.0.1/24",),
        "peers": {p.public_key: p for p in peers},
    }
    args.update(kw)
    return DesiredInterface(**args)  # type: ignore[arg-type]


def observed_from(d: DesiredInterface, **kw: object) -> ObservedInterface:
    """The observed state a perfect backend would report for ``d``."""
    args: dict[str, object] = {
        "name": d.name,
        "exists": True,
        "public_key": public_key(d.private_key),
        "listen_port": d.listen_port,
        "addresses": tuple(d.addresses) + ("fe80::1234/64",),
        "routes": tuple(d.routes),
        "up": True,
        "mtu": d.mtu,
        "peers": {
            k: ObservedPeer(k, p.allowed_ips, p.endpoint, p.keepalive, last_handshake=NOW - 10)
            for k, p in d.peers.items()
        },
    }
    args.update(kw)
    return ObservedInterface(**args)  # type: ignore[arg-type]
