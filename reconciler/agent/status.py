"""Pure: the applied-state summary + the observed interface -> ``agent status`` rows.

Called by ``meshops agent status``. The applied summary (``applied.json``,
written by ``agent.reconcile``) knows names, tunnel IPs and paths; the
observed interface knows endpoints, handshakes and byte counters. A peer
reached through a relay has no WireGuard peer of its own: its handshake and
counters are the relay's, and its path reads ``relay via NAME``.

``warnings`` are host problems the caller found (for a relay:
``reconciler.net.firewall.forward_drop_warning``); the table prints them
under the header, the JSON carries them as a list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from reconciler.model.wg import ObservedInterface


@dataclass(frozen=True)
class PeerStatus:
    name: str
    tunnel_ips: tuple[str, ...]
    path: str  # direct | lan | relay via NAME
    endpoint: str | None
    handshake_age: float | None  # seconds; None = never
    rx_bytes: int
    tx_bytes: int
    configured: bool  # present on the interface (or on its relay)


@dataclass(frozen=True)
class Status:
    interface: str
    exists: bool
    serial: int | None
    commit: str | None
    peers: tuple[PeerStatus, ...]
    warnings: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["peers"] = [asdict(p) for p in self.peers]
        data["warnings"] = list(self.warnings)
        return data


def build_status(applied: Mapping[str, Any] | None, observed: ObservedInterface,
                 now: float, warnings: Iterable[str] = ()) -> Status:
    applied = applied or {}
    by_name = {p["name"]: p for p in applied.get("peers", [])}
    rows = []
    for name, info in sorted(by_name.items()):
        via = info.get("via")
        key = by_name[via]["public_key"] if via in by_name else info["public_key"]
        peer = observed.peers.get(key)
        hs = peer.last_handshake if peer else None
        rows.append(PeerStatus(
            name=name,
            tunnel_ips=tuple(info.get("tunnel_ips", ())),
            path=f"relay via {via}" if info.get("path") == "relay" and via else info["path"],
            endpoint=peer.endpoint if peer else info.get("endpoint"),
            handshake_age=round(now - hs, 1) if hs else None,
            rx_bytes=peer.rx_bytes if peer else 0,
            tx_bytes=peer.tx_bytes if peer else 0,
            configured=peer is not None,
        ))
    return Status(interface=observed.name or str(applied.get("interface", "")),
                  exists=observed.exists, serial=applied.get("serial"),
                  commit=applied.get("commit"), peers=tuple(rows), warnings=tuple(warnings))


def format_age(age: float | None) -> str:
    if age is None:
        return "never"
    if age < 120:
        return f"{age:.0f}s"
    if age < 7200:
        return f"{age / 60:.0f}m"
    return f"{age / 3600:.0f}h"


def format_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n}B"  # pragma: no cover


def format_table(status: Status) -> str:
    head = (f"interface {status.interface} ({'up' if status.exists else 'absent'}), "
            f"manifest serial {status.serial if status.serial is not None else '-'}, "
            f"commit {(status.commit or '-')[:12]}")
    rows = [("PEER", "TUNNEL IP", "PATH", "ENDPOINT", "HANDSHAKE", "RX", "TX")]
    for p in status.peers:
        rows.append((p.name, ",".join(p.tunnel_ips), p.path, p.endpoint or "-",
                     format_age(p.handshake_age), format_bytes(p.rx_bytes),
                     format_bytes(p.tx_bytes)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [head] + [f"warning: {w}" for w in status.warnings]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)
