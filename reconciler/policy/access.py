"""What one device may send to another: a compact set of (protocol, ports).

``Access`` is the value type of the reachability matrix and of the plan diff
(``reconciler.policy.reach`` and ``reconciler.policy.review``). It holds merged
TCP and UDP port ranges and an ICMP flag, supports union and difference, and
renders as ``"all"`` or ``"tcp 22,443; udp 53; icmp"``. Pure and stdlib-only.
"""

from __future__ import annotations

from collections.abc import Iterable

from reconciler.model.rules import PortRange, Rule
from reconciler.structs import Record

PORT_MIN = 1
PORT_MAX = 65535
ALL_PORTS = (PortRange(PORT_MIN, PORT_MAX),)

Ranges = tuple[PortRange, ...]


def merge_ranges(ranges: Iterable[PortRange]) -> Ranges:
    """Sort, clamp to 1-65535 and merge overlapping or adjacent ranges."""
    clamped = sorted(
        (max(r.lo, PORT_MIN), min(r.hi, PORT_MAX))
        for r in ranges
        if r.hi >= PORT_MIN and r.lo <= PORT_MAX and r.lo <= r.hi
    )
    out: list[list[int]] = []
    for lo, hi in clamped:
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple(PortRange(lo, hi) for lo, hi in out)


def subtract_ranges(a: Ranges, b: Ranges) -> Ranges:
    """Ports in merged ``a`` but not in merged ``b``."""
    out: list[PortRange] = []
    for r in a:
        lo = r.lo
        for s in b:
            if s.hi < lo or s.lo > r.hi:
                continue
            if s.lo > lo:
                out.append(PortRange(lo, s.lo - 1))
            lo = max(lo, s.hi + 1)
            if lo > r.hi:
                break
        if lo <= r.hi:
            out.append(PortRange(lo, r.hi))
    return tuple(out)


def ranges_contain(ranges: Ranges, port: int) -> bool:
    return any(r.lo <= port <= r.hi for r in ranges)


def format_ranges(ranges: Ranges) -> str:
    return ",".join(str(r) for r in ranges)


class Access(Record):
    """Accepted traffic from one device to another. Ranges are merged and sorted."""

    tcp: Ranges = ()
    udp: Ranges = ()
    icmp: bool = False

    @staticmethod
    def of_rule(rule: Rule) -> Access:
        """What one rule accepts. ICMP has no ports, so a rule with proto ``any``
        accepts ICMP whatever its ports (the same choice Tailscale makes)."""
        ports = merge_ranges(rule.ports) if rule.ports else ALL_PORTS
        tcp = ports if rule.proto in ("tcp", "any") else ()
        udp = ports if rule.proto in ("udp", "any") else ()
        return Access(tcp, udp, rule.proto in ("icmp", "any"))

    @staticmethod
    def union_of(items: Iterable[Access]) -> Access:
        tcp: list[PortRange] = []
        udp: list[PortRange] = []
        icmp = False
        for a in items:
            tcp.extend(a.tcp)
            udp.extend(a.udp)
            icmp = icmp or a.icmp
        return Access(merge_ranges(tcp), merge_ranges(udp), icmp)

    def __or__(self, other: Access) -> Access:
        return Access.union_of((self, other))

    def __sub__(self, other: Access) -> Access:
        return Access(
            subtract_ranges(self.tcp, other.tcp),
            subtract_ranges(self.udp, other.udp),
            self.icmp and not other.icmp,
        )

    def __bool__(self) -> bool:
        return bool(self.tcp or self.udp or self.icmp)

    @property
    def is_all(self) -> bool:
        return self.tcp == ALL_PORTS and self.udp == ALL_PORTS and self.icmp

    def allows(self, proto: str, port: int | None) -> bool:
        """True if ``proto``/``port`` is inside this access (``port=None``: any port)."""
        if proto == "icmp":
            return self.icmp
        if proto == "any":  # union view: every protocol accepted at this port
            return self.icmp and self.allows("tcp", port) and self.allows("udp", port)
        ranges = self.tcp if proto == "tcp" else self.udp
        return bool(ranges) if port is None else ranges_contain(ranges, port)

    def __str__(self) -> str:
        if self.is_all:
            return "all"
        if not self:
            return "none"
        parts = []
        if self.tcp:
            parts.append("tcp " + ("all" if self.tcp == ALL_PORTS else format_ranges(self.tcp)))
        if self.udp:
            parts.append("udp " + ("all" if self.udp == ALL_PORTS else format_ranges(self.udp)))
        if self.icmp:
            parts.append("icmp")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, object]:
        return {
            "tcp": [str(r) for r in self.tcp],
            "udp": [str(r) for r in self.udp],
            "icmp": self.icmp,
        }


NO_ACCESS = Access()
ALL_ACCESS = Access(ALL_PORTS, ALL_PORTS, True)
