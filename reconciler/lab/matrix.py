"""Read the lab's connectivity matrix from real WireGuard state and real traffic.

Called by ``reconciler.lab.runner`` (demo table, ``scripts/lab status``) and the
e2e tests. A path is never assumed: for each ordered pair we ping the peer's
tunnel IP and see which WireGuard peer's tx counter moved. If it is the
destination's own peer, the path is direct (``lan`` when that peer's endpoint
is a private LAN address); if it is a relay's peer, the path is relayed.
"""

from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass

from reconciler.lab.netns import in_ns, run
from reconciler.model.endpoint import parse_or_none

_RTT = re.compile(r"time=([\d.]+) ms")


@dataclass(frozen=True)
class WgPeer:
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    last_handshake: int  # unix seconds, 0 = never
    rx: int
    tx: int


def wg_dump(ns: str, ifname: str) -> dict[str, WgPeer]:
    """``wg show IF dump`` in ``ns``, keyed by public key (an independent reader:
    it talks to the UAPI socket itself, not through our backend)."""
    out = run(in_ns(ns, "wg", "show", ifname, "dump"), check=False)
    peers: dict[str, WgPeer] = {}
    for line in out.splitlines()[1:]:
        f = line.split("\t")
        if len(f) < 8:
            continue
        endpoint = None if f[2] == "(none)" else f[2]
        allowed = () if f[3] == "(none)" else tuple(f[3].split(","))
        peers[f[0]] = WgPeer(f[0], endpoint, allowed, int(f[4]), int(f[5]), int(f[6]))
    return peers


def ping(ns: str, ip: str, *, count: int = 1, timeout: float = 1.0) -> float | None:
    """RTT in ms of the first reply, or None."""
    wait = f"{timeout:g}" if timeout < 1 else str(int(timeout))  # iputils takes fractions
    out = run(in_ns(ns, "ping", "-n", "-c", str(count), "-W", wait, ip), check=False)
    m = _RTT.search(out)
    return float(m.group(1)) if m else None


@dataclass(frozen=True)
class PairResult:
    src: str
    dst: str
    rtt_ms: float | None
    path: str  # "direct" | "lan" | "relay:<name>" | "none"
    handshake_age: float | None  # of the peer entry the traffic used

    @property
    def ok(self) -> bool:
        return self.rtt_ms is not None

    @property
    def kind(self) -> str:
        return self.path.split(":", 1)[0]


# RFC 1918 and RFC 4193 site ranges. (``ipaddress.is_private`` also covers the
# documentation ranges the lab's internet uses, so it cannot tell LAN from WAN here.)
_SITE_RANGES = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)


def _is_private(endpoint: str | None) -> bool:
    if not endpoint:
        return False
    parsed = parse_or_none(endpoint)
    addr = parsed.ip if parsed is not None else None
    if addr is None:
        return False
    return any(addr in net for net in _SITE_RANGES if net.version == addr.version)


def probe_pair(
    src_ns: str,
    src_if: str,
    dst_ip: str,
    dst_key: str,
    names_by_key: dict[str, str],
    *,
    attempts: int = 3,
    now: float | None = None,
) -> tuple[float | None, str, float | None]:
    """Ping ``dst_ip`` from ``src_ns`` and name the WireGuard peer that carried it."""
    before = wg_dump(src_ns, src_if)
    rtt = None
    for _ in range(attempts):
        rtt = ping(src_ns, dst_ip)
        if rtt is not None:
            break
    after = wg_dump(src_ns, src_if)
    moved = [
        (after[k].tx - before[k].tx, k)
        for k in after
        if k in before and after[k].tx > before[k].tx
    ]
    if not moved:
        return rtt, "none", None
    _, key = max(moved)
    peer = after[key]
    age = None
    if peer.last_handshake:
        age = max(0.0, (now if now is not None else time.time()) - peer.last_handshake)
    if key == dst_key:
        return rtt, ("lan" if _is_private(peer.endpoint) else "direct"), age
    return rtt, f"relay:{names_by_key.get(key, key[:8])}", age
