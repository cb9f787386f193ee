"""Pure: a verified manifest -> the desired nftables ruleset of one device.

Called by the agent every pass (next to ``agent.desired.compute_desired``),
by ``scripts/benchmarks/bench_firewall.py`` and the tests. The result is a
``reconciler.model.firewall.Ruleset``; ``reconciler.net.nftables`` renders and
applies it, ``reconciler.converge.firewall.plan_firewall`` diffs it. No I/O,
no clock, stdlib only. docs/policy.md ("Where policy is enforced") is the
long form of these rules:

* **input** (every device): packets arriving on the mesh interface jump to
  ``mesh_in``: ``ct state established,related`` accept, ``ct state invalid``
  drop, then one accept per (policy rule whose destination selects this
  device, address family, protocol), then drop. Sources are named sets of
  tunnel addresses (``*`` is the org CIDR). No policy (full mesh): accept
  from the org CIDRs only. So traffic from outside the org CIDRs is dropped.
* **forward** (relays, subnet routers, exit nodes): packets in or out of the
  mesh interface jump to ``mesh_fwd``, which has the same shape with the
  destination matched too (a named set of the destination devices' tunnel
  addresses and ``route:`` subnets; ``internet`` is "not in the org CIDRs
  nor in any advertised route", on exit nodes only). A relay thus forwards
  a packet only when policy accepts its (src, dst, proto, port).
* **postrouting** (nat): a subnet router masquerades mesh traffic towards
  its own routes unless ``masquerade_routes`` is false; an exit node
  masquerades mesh traffic to the internet.

Size: one statement per (rule, family, protocol kind): at most about four per
rule, whatever the number of devices. Devices only add set elements, which
are collapsed into prefixes (contiguous allocations stay small).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.errors import ConfigError
from reconciler.model.firewall import EMPTY, Chain, Match, NamedSet, Rule, Ruleset
from reconciler.model.manifest import Manifest, ManifestDevice
from reconciler.model.repo import PortRange

from .access import merge_ranges
from .selectors import INTERNET

# IFNAMSIZ is 16 with the NUL; no quotes or spaces may reach the nft script.
_IFNAME = re.compile(r"[A-Za-z0-9_.:@-]{1,15}\Z")
_COMMENT_UNSAFE = re.compile(r"[^A-Za-z0-9 _.,:/+=-]")
FAMILIES = (4, 6)
_SADDR = {4: "ip saddr", 6: "ip6 saddr"}
_DADDR = {4: "ip daddr", 6: "ip6 daddr"}
_ICMP = {4: "icmp", 6: "ipv6-icmp"}
_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
_BITS = {4: 32, 6: 128}
ESTABLISHED = Rule((Match("ct state", ("established", "related")),), "accept")
INVALID = Rule((Match("ct state", ("invalid",)),), "drop")
DROP = Rule((), "drop")


@dataclass(frozen=True)
class Role:
    """What this device does besides receiving: derived from its manifest entry."""

    relay: bool = False
    routes: tuple[str, ...] = ()
    exit_node: bool = False
    masquerade_routes: bool = True

    @staticmethod
    def of(device: ManifestDevice) -> Role:
        return Role(device.relay, tuple(device.routes), device.exit_node,
                    device.masquerade_routes)

    @property
    def forwards(self) -> bool:
        return self.relay or bool(self.routes) or self.exit_node


# --- addresses as integer ranges (fast at 10,000 devices) ---------------------

Span = tuple[int, int]  # inclusive integer range of addresses


def _v4int(text: str) -> int:
    a, b, c, d = text.split(".")
    return (int(a) << 24) | (int(b) << 16) | (int(c) << 8) | int(d)


def _host(text: str) -> tuple[int, int]:
    """(family, integer) of a tunnel address such as ``10.0.0.3`` or ``fd00::3``."""
    text = text.partition("/")[0]
    if ":" in text:
        return 6, int(ipaddress.IPv6Address(text))
    return 4, _v4int(text)


def _network(text: str) -> tuple[int, Span]:
    net = ipaddress.ip_network(text, strict=False)
    return net.version, (int(net.network_address), int(net.broadcast_address))


def _fmt(family: int, value: int, prefix: int) -> str:
    if family == 4:
        addr = f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"
    else:
        addr = str(ipaddress.IPv6Address(value))
    return f"{addr}/{prefix}"


def collapse(family: int, spans: Iterable[Span]) -> tuple[str, ...]:
    """Merge overlapping/adjacent spans and cut them into the fewest CIDR blocks,
    sorted: the canonical element list of a named set (nft refuses overlapping
    elements in an interval set)."""
    bits = _BITS[family]
    merged: list[list[int]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    out = []
    for lo, hi in merged:
        while lo <= hi:
            size = (lo & -lo).bit_length() - 1 if lo else bits  # alignment of lo
            while lo + (1 << size) - 1 > hi:
                size -= 1
            out.append(_fmt(family, lo, bits - size))
            lo += 1 << size
    return tuple(out)


class _Sets:
    """Named sets, deduplicated by content: the same device list used by two
    rules is one set. Names are deterministic (first use wins)."""

    def __init__(self) -> None:
        self.by_name: dict[str, NamedSet] = {}
        self.by_content: dict[tuple[str, tuple[str, ...]], str] = {}

    def ref(self, name: str, family: int, spans: Iterable[Span]) -> str | None:
        """``@NAME`` of a set holding ``spans``; ``None`` when it would be empty."""
        elements = collapse(family, spans)
        if not elements:
            return None
        key = (_TYPE[family], elements)
        found = self.by_content.get(key)
        if found is None:
            assert name not in self.by_name, f"set name {name} used for two contents"
            found = self.by_content[key] = name
            self.by_name[name] = NamedSet(name, _TYPE[family], elements)
        return "@" + found


# --- the builder ----------------------------------------------------------------


@dataclass(frozen=True)
class _Index:
    """The manifest, indexed once: tunnel addresses per device, label members,
    org CIDRs, advertised routes."""

    hosts: Mapping[str, tuple[tuple[int, int], ...]]
    members: Mapping[str, tuple[str, ...]]
    org: Mapping[int, tuple[Span, ...]]
    routes: Mapping[int, tuple[Span, ...]]

    @staticmethod
    def of(manifest: Manifest) -> _Index:
        hosts: dict[str, tuple[tuple[int, int], ...]] = {}
        members: dict[str, list[str]] = {}
        routes: dict[int, list[Span]] = {4: [], 6: []}
        for d in manifest.devices:
            hosts[d.name] = tuple(_host(ip) for ip in d.tunnel_ips)
            for label in d.labels:
                members.setdefault(label, []).append(d.name)
            for r in d.routes:
                fam, span = _network(r)
                routes[fam].append(span)
        org: dict[int, list[Span]] = {4: [], 6: []}
        for cidr in (manifest.cidr_v4, manifest.cidr_v6):
            if cidr:
                fam, span = _network(cidr)
                org[fam].append(span)
        return _Index(hosts, {k: tuple(v) for k, v in members.items()},
                      {k: tuple(v) for k, v in org.items()},
                      {k: tuple(v) for k, v in routes.items()})

    def spans(self, selectors: Iterable[str], family: int) -> list[Span]:
        """Addresses of ``family`` that source/destination ``selectors`` pick
        (devices' tunnel addresses, ``*`` = the org CIDR, ``r:`` subnets);
        ``internet`` is handled by the caller."""
        out: list[Span] = []
        names: set[str] = set()
        for sel in selectors:
            if sel == "*":
                out.extend(self.org[family])
            elif sel.startswith("d:"):
                names.add(sel[2:])
            elif sel.startswith("r:"):
                fam, span = _network(sel[2:])
                if fam == family:
                    out.append(span)
            elif sel != INTERNET:
                names.update(self.members.get(sel, ()))
        for name in names:
            for fam, value in self.hosts.get(name, ()):
                if fam == family:
                    out.append((value, value))
        return out


def _selects_me(selectors: Iterable[str], me: ManifestDevice) -> bool:
    labels = frozenset(me.labels)
    return any(s == "*" or s == f"d:{me.name}" or s in labels for s in selectors)


def _ports(raw: Sequence[Any]) -> tuple[str, ...]:
    ranges = []
    for p in raw:
        lo, _, hi = str(p).partition("-")
        ranges.append(PortRange(int(lo), int(hi or lo)))
    return tuple(str(r) for r in merge_ranges(ranges))


def _comment(raw: Mapping[str, Any], index: int) -> str:
    name = _COMMENT_UNSAFE.sub("_", str(raw.get("name", "")))[:100]
    return f"rule {index} {name}".strip()


def proto_rules(family: int, head: tuple[Match, ...], proto: str, ports: tuple[str, ...],
                comment: str = "") -> list[Rule]:
    """The accept statements of one rule for one family, after the address
    matches ``head``. ICMP has no ports, so ``any`` with ports accepts ICMP too
    (the engine's semantics)."""
    icmp = Rule((*head, Match("meta l4proto", (_ICMP[family],))), "accept", comment)
    if proto in ("tcp", "udp"):
        if ports:
            return [Rule((*head, Match(f"{proto} dport", ports)), "accept", comment)]
        return [Rule((*head, Match("meta l4proto", (proto,))), "accept", comment)]
    if proto == "icmp":
        return [icmp]
    if proto == "any" and ports:
        both = Match("meta l4proto", ("tcp", "udp"))
        return [Rule((*head, both, Match("th dport", ports)), "accept", comment), icmp]
    if proto == "any":
        return [Rule(head, "accept", comment)]
    return []  # an unknown protocol accepts nothing


def check_interface(interface: str) -> None:
    if not _IFNAME.match(interface):
        raise ConfigError(f"interface name {interface!r} is not a Linux interface name "
                          "(1-15 letters, digits, '_', '.', '-'); fix the agent's interface")


def desired_ruleset(manifest: Manifest, me: str, interface: str) -> Ruleset:
    """The ``inet meshops`` table device ``me`` should have (module docstring).

    ``EMPTY`` (no table) when ``me`` is not in the manifest: it then has no
    peers, so nothing arrives on the mesh interface anyway."""
    check_interface(interface)
    mine = manifest.device(me)
    if mine is None:
        return EMPTY
    role = Role.of(mine)
    index = _Index.of(manifest)
    sets = _Sets()
    rules = manifest.policy.get("rules", ()) if manifest.policy is not None else None
    # created only where used, so a plain device's table has no unused sets
    org = {f: sets.ref(f"org_{f}", f, index.org[f]) if rules is None else None
           for f in FAMILIES}
    inside = {f: sets.ref(f"inside_{f}", f, [*index.org[f], *index.routes[f]])
              if role.forwards else None for f in FAMILIES}

    mesh_in: list[Rule] = [ESTABLISHED, INVALID]
    mesh_fwd: list[Rule] = [ESTABLISHED, INVALID]
    if rules is None:  # full mesh: anything from the org
        for f in FAMILIES:
            src = org[f]
            if src is None:
                continue
            mesh_in.append(Rule((Match(_SADDR[f], (src,)),), "accept", "no policy: full mesh"))
            if role.forwards and inside[f] is not None:
                to_mesh = Match(_DADDR[f], (inside[f],))  # type: ignore[arg-type]
                mesh_fwd.append(Rule((Match(_SADDR[f], (src,)), to_mesh), "accept",
                                     "no policy: full mesh"))
                if role.exit_node:
                    out = Match(_DADDR[f], (inside[f],), negate=True)  # type: ignore[arg-type]
                    mesh_fwd.append(Rule((Match(_SADDR[f], (src,)), out), "accept",
                                         "no policy: full mesh, internet"))
    else:
        for i, raw in enumerate(rules):
            _add_rule(i, raw, mine, role, index, sets, inside, mesh_in, mesh_fwd)
    mesh_in.append(DROP)
    mesh_fwd.append(DROP)

    chains = [
        Chain("input", (Rule((Match("iifname", (interface,)),), "jump mesh_in"),),
              hook="input"),
        Chain("mesh_in", tuple(mesh_in)),
    ]
    if role.forwards:
        chains += [
            Chain("forward", (Rule((Match("iifname", (interface,)),), "jump mesh_fwd"),
                              Rule((Match("oifname", (interface,)),), "jump mesh_fwd")),
                  hook="forward"),
            Chain("mesh_fwd", tuple(mesh_fwd)),
        ]
    nat = _masquerade(role, interface, sets, inside, index)
    if nat:
        chains.append(Chain("postrouting", tuple(nat), hook="postrouting", type="nat",
                            priority=100))
    return Ruleset.of(list(sets.by_name.values()), chains)


def _add_rule(i: int, raw: Mapping[str, Any], mine: ManifestDevice, role: Role, index: _Index,
              sets: _Sets, inside: Mapping[int, str | None], mesh_in: list[Rule],
              mesh_fwd: list[Rule]) -> None:
    """The statements of compiled rule ``i`` on input and (when forwarding) forward."""
    proto = str(raw.get("proto", "any"))
    ports = _ports(raw.get("ports", ()))
    comment = _comment(raw, i)
    src_sel, dst_sel = raw["src"], raw["dst"]
    internet = INTERNET in dst_sel
    to_me = _selects_me(dst_sel, mine)
    for f in FAMILIES:
        src = sets.ref(f"r{i}_src_{f}", f, index.spans(src_sel, f))
        if src is None:
            continue
        head = (Match(_SADDR[f], (src,)),)
        # input: to this device, or to one of its local addresses inside a route: subnet
        if to_me:
            mesh_in.extend(proto_rules(f, head, proto, ports, comment))
        else:
            routed = [s for s in dst_sel if s.startswith("r:")]
            local = sets.ref(f"r{i}_routed_{f}", f, index.spans(routed, f)) if routed else None
            if local is not None:
                mesh_in.extend(proto_rules(f, (*head, Match(_DADDR[f], (local,))), proto,
                                           ports, comment))
        if internet and role.exit_node and not to_me and inside[f] is not None:
            out = Match(_DADDR[f], (inside[f],), negate=True)  # type: ignore[arg-type]
            mesh_in.extend(proto_rules(f, (*head, out), proto, ports, comment))
        if not role.forwards:
            continue
        dst = sets.ref(f"r{i}_dst_{f}", f, index.spans(dst_sel, f))
        if dst is not None:
            mesh_fwd.extend(proto_rules(f, (*head, Match(_DADDR[f], (dst,))), proto, ports,
                                        comment))
        if internet and role.exit_node and inside[f] is not None:
            out = Match(_DADDR[f], (inside[f],), negate=True)  # type: ignore[arg-type]
            mesh_fwd.extend(proto_rules(f, (*head, out), proto, ports, comment))


def _masquerade(role: Role, interface: str, sets: _Sets, inside: Mapping[int, str | None],
                index: _Index) -> list[Rule]:
    """Source NAT of mesh traffic leaving through another interface."""
    head = (Match("iifname", (interface,)), Match("oifname", (interface,), negate=True))
    out: list[Rule] = []
    for f in FAMILIES:
        if not index.org[f]:
            continue  # no tunnel addresses of this family: nothing to translate
        if role.routes and role.masquerade_routes:
            mine = sets.ref(f"myroutes_{f}", f, [_network(r)[1] for r in role.routes
                                                  if _network(r)[0] == f])
            if mine is not None:
                out.append(Rule((*head, Match(_DADDR[f], (mine,))), "masquerade",
                                "subnet router: masquerade towards its routes"))
        if role.exit_node and inside[f] is not None:
            out.append(Rule((*head, Match(_DADDR[f], (inside[f],), negate=True)), "masquerade",
                            "exit node: masquerade to the internet"))
    return out
