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
rule, whatever the number of devices. Devices only add set elements (one per
tunnel address a rule selects; ``*`` is one element, the org CIDR).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from reconciler.errors import ConfigError
from reconciler.model.firewall import EMPTY, Chain, Match, NamedSet, Rule, Ruleset
from reconciler.model.manifest import Manifest, ManifestDevice
from reconciler.model.rules import PortRange
from reconciler.structs import Record

from .access import merge_ranges
from .selectors import INTERNET

# IFNAMSIZ is 16 with the NUL; no quotes or spaces may reach the nft script.
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}\Z")
_COMMENT_UNSAFE = re.compile(r"[^A-Za-z0-9 _.,:/+=-]")
FAMILIES = (4, 6)
_SADDR = {4: "ip saddr", 6: "ip6 saddr"}
_DADDR = {4: "ip daddr", 6: "ip6 daddr"}
_ICMP = {4: "icmp", 6: "ipv6-icmp"}
_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
ESTABLISHED = Rule((Match("ct state", ("established", "related")),), "accept")
INVALID = Rule((Match("ct state", ("invalid",)),), "drop")
DROP = Rule((), "drop")


class Role(Record):
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


# --- addresses: canonical strings, as nft prints them back -------------------

Net = ipaddress.IPv4Network | ipaddress.IPv6Network
# text -> canonical host text, kept across calls: the agent builds the ruleset
# every pass from mostly the same addresses, and ipaddress costs ~3 us per IPv6
# parse (10,000 devices: 60 ms cold, 1 ms warm). Bounded; a cache, not state.
_CANON: dict[str, str | None] = {}
_CANON_MAX = 1_000_000


_V4_CANONICAL = re.compile(
    r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\Z")
_V6_GROUP = re.compile(r"[1-9a-f][0-9a-f]{0,3}\Z")


def _plainly_canonical(text: str) -> bool:
    """A fast, conservative test: True only for texts ``ipaddress`` would print
    unchanged (dotted quads without leading zeros; IPv6 whose explicit groups
    are lowercase, unpadded and non-zero, with "::" standing for at least two
    zero groups). Anything else takes the slow path."""
    if _V4_CANONICAL.match(text):
        return True
    head, sep, tail = text.partition("::")
    if "::" in tail or "." in text:
        return False
    groups = (head.split(":") if head else []) + (tail.split(":") if tail else [])
    if len(groups) > 6 if sep else len(groups) != 8:
        return False
    return all(_V6_GROUP.match(g) for g in groups)


def canonical_host(text: str) -> str | None:
    """``FD10:0::5`` -> ``fd10::5``; ``None`` when ``text`` is not an address."""
    hit = _CANON.get(text, "")
    if hit != "":
        return hit
    if _plainly_canonical(text):
        _CANON[text] = text
        return text
    try:
        value: str | None = str(ipaddress.ip_address(text.partition("/")[0]))
    except ValueError:
        value = None
    if len(_CANON) >= _CANON_MAX:
        _CANON.clear()
    _CANON[text] = value
    return value


def element(net: Net) -> str:
    """How nft prints an interval-set element: a host bare, a network as addr/len."""
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def elements(hosts: Iterable[str], nets: Iterable[Net] = ()) -> tuple[str, ...]:
    """The canonical element list of a named set: networks collapsed, hosts inside
    them dropped (nft refuses overlapping elements in an interval set), no
    duplicates, sorted as strings. nft neither merges nor splits what it is given,
    so the read-back is the same tuple."""
    merged = list(ipaddress.collapse_addresses(nets))  # type: ignore[arg-type]
    out = set(hosts)
    if merged:
        out = {h for h in out if not any(ipaddress.ip_address(h) in n for n in merged)}
        out.update(element(n) for n in merged)
    return tuple(sorted(out))


class _Sets:
    """Named sets, deduplicated by content: the same device list used by two
    rules is one set. Names are deterministic (first use wins)."""

    def __init__(self) -> None:
        self.by_name: dict[str, NamedSet] = {}
        self.by_content: dict[tuple[str, tuple[str, ...]], str] = {}

    def ref(self, name: str, family: int, content: tuple[list[str], list[Net]]) -> str | None:
        """``@NAME`` of a set holding ``content`` (hosts, networks); ``None`` when empty."""
        items = elements(*content)
        if not items:
            return None
        key = (_TYPE[family], items)
        found = self.by_content.get(key)
        if found is None:
            assert name not in self.by_name, f"set name {name} used for two contents"
            found = self.by_content[key] = name
            self.by_name[name] = NamedSet(name, _TYPE[family], items,
                                          interval=any("/" in e for e in items))
        return "@" + found


# --- the builder ----------------------------------------------------------------


def _net(text: str) -> Net:
    return ipaddress.ip_network(text, strict=False)


class _Index:
    """The manifest, indexed once: label members, org CIDRs, advertised routes;
    tunnel addresses are canonicalised on first use."""

    def __init__(self, manifest: Manifest) -> None:
        self.devices = {d.name: d for d in manifest.devices}
        members: dict[str, list[str]] = {}
        self.routes: dict[int, list[Net]] = {4: [], 6: []}
        for d in manifest.devices:
            for label in d.labels:
                members.setdefault(label, []).append(d.name)
            for r in d.routes:
                net = _net(r)
                self.routes[net.version].append(net)
        self.members = members
        self.org: dict[int, list[Net]] = {4: [], 6: []}
        for cidr in (manifest.cidr_v4, manifest.cidr_v6):
            if cidr:
                net = _net(cidr)
                self.org[net.version].append(net)
        self._hosts: dict[tuple[str, int], tuple[str, ...]] = {}
        self._content: dict[tuple[tuple[str, ...], int], tuple[list[str], list[Net]]] = {}

    def hosts(self, selector: str, family: int) -> tuple[str, ...]:
        """Canonical tunnel addresses of ``family`` of the devices a label (or a
        ``d:NAME``) selects; memoized: rules share selectors."""
        key = (selector, family)
        hit = self._hosts.get(key)
        if hit is None:
            names = (selector[2:],) if selector.startswith("d:") else self.members.get(selector,
                                                                                       ())
            out = []
            for name in names:
                dev = self.devices.get(name)
                for ip in dev.tunnel_ips if dev is not None else ():
                    text = canonical_host(ip)
                    if text is not None and (":" in text) == (family == 6):
                        out.append(text)
            hit = self._hosts[key] = tuple(out)
        return hit

    def content(self, selectors: Sequence[str], family: int) -> tuple[list[str], list[Net]]:
        """Hosts and networks of ``family`` that ``selectors`` pick: devices' tunnel
        addresses, ``*`` = the org CIDR (which holds every tunnel address), ``r:``
        subnets; ``internet`` is handled by the caller."""
        key = (tuple(selectors), family)
        hit = self._content.get(key)
        if hit is not None:
            return hit
        nets: list[Net] = []
        hosts: list[str] = []
        everyone = "*" in selectors
        for sel in selectors:
            if sel == "*":
                nets.extend(self.org[family])
            elif sel.startswith("r:"):
                net = _net(sel[2:])
                if net.version == family:
                    nets.append(net)
            elif sel != INTERNET and not everyone:
                # tunnel addresses lie inside the org CIDR (validated by the hub), so
                # with "*" there is nothing to add
                hosts.extend(self.hosts(sel, family))
        hit = self._content[key] = (hosts, nets)
        return hit


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
    index = _Index(manifest)
    sets = _Sets()
    rules = manifest.policy.get("rules", ()) if manifest.policy is not None else None
    # created only where used, so a plain device's table has no unused sets
    org = {f: sets.ref(f"org_{f}", f, ([], index.org[f])) if rules is None else None
           for f in FAMILIES}
    inside = {f: sets.ref(f"inside_{f}", f, ([], [*index.org[f], *index.routes[f]]))
              if role.forwards else None for f in FAMILIES}
    # "the internet": not an org CIDR, not an advertised route (exit nodes only)
    outside = {f: Match(_DADDR[f], (ref,), negate=True) if ref and role.exit_node else None
               for f, ref in inside.items()}

    mesh_in: list[Rule] = [ESTABLISHED, INVALID]
    mesh_fwd: list[Rule] = [ESTABLISHED, INVALID]
    if rules is None:  # full mesh: anything from the org
        for f in FAMILIES:
            src, ref = org[f], inside[f]
            if src is None:
                continue
            from_org = Match(_SADDR[f], (src,))
            mesh_in.append(Rule((from_org,), "accept", "no policy: full mesh"))
            if ref is not None:
                mesh_fwd.append(Rule((from_org, Match(_DADDR[f], (ref,))), "accept",
                                     "no policy: full mesh"))
            out = outside[f]
            if out is not None:
                mesh_fwd.append(Rule((from_org, out), "accept", "no policy: full mesh, internet"))
    else:
        for i, raw in enumerate(rules):
            try:
                _add_rule(i, raw, mine, role, index, sets, outside, mesh_in, mesh_fwd)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ConfigError(
                    f"manifest serial {manifest.serial} (org {manifest.org!r}): compiled "
                    f"policy rule {i} is malformed ({type(exc).__name__}: {exc}); the "
                    "firewall was not changed: republish the org from a valid repository"
                ) from exc
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
    nat = _masquerade(role, interface, sets, outside, index)
    if nat:
        chains.append(Chain("postrouting", tuple(nat), hook="postrouting", type="nat",
                            priority=100))
    return Ruleset.of(list(sets.by_name.values()), chains)


def _add_rule(i: int, raw: Mapping[str, Any], mine: ManifestDevice, role: Role, index: _Index,
              sets: _Sets, outside: Mapping[int, Match | None], mesh_in: list[Rule],
              mesh_fwd: list[Rule]) -> None:
    """The statements of compiled rule ``i`` on input and (when forwarding) forward.
    Sets are made only for statements that exist, so a device that is neither a
    destination of the rule nor a forwarder carries nothing of it."""
    src_sel, dst_sel = raw["src"], raw["dst"]
    internet = INTERNET in dst_sel
    to_me = _selects_me(dst_sel, mine)
    # a route: destination reaches this device's input only for its own routes'
    # local addresses (the router's LAN address)
    routed = [] if to_me else [s for s in dst_sel if s.startswith("r:")
                               and _overlaps_any(s[2:], role.routes)]
    if not (to_me or routed or role.forwards):
        return
    proto = str(raw.get("proto", "any"))
    ports = _ports(raw.get("ports", ()))
    comment = _comment(raw, i)
    for f in FAMILIES:
        src = sets.ref(f"r{i}_src_{f}", f, index.content(src_sel, f))
        if src is None:
            continue
        head = (Match(_SADDR[f], (src,)),)
        if to_me:
            mesh_in.extend(proto_rules(f, head, proto, ports, comment))
        local = sets.ref(f"r{i}_routed_{f}", f, index.content(routed, f)) if routed else None
        if local is not None:
            mesh_in.extend(proto_rules(f, (*head, Match(_DADDR[f], (local,))), proto, ports,
                                       comment))
        out = outside[f] if internet else None
        if out is not None and not to_me:
            mesh_in.extend(proto_rules(f, (*head, out), proto, ports, comment))
        if not role.forwards:
            continue
        dst = sets.ref(f"r{i}_dst_{f}", f, index.content(dst_sel, f))
        if dst is not None:
            mesh_fwd.extend(proto_rules(f, (*head, Match(_DADDR[f], (dst,))), proto, ports,
                                        comment))
        if out is not None:
            mesh_fwd.extend(proto_rules(f, (*head, out), proto, ports, comment))


def _overlaps_any(cidr: str, routes: Iterable[str]) -> bool:
    net = _net(cidr)
    return any(r.version == net.version and r.overlaps(net)  # type: ignore[arg-type]
               for r in map(_net, routes))


def _masquerade(role: Role, interface: str, sets: _Sets, outside: Mapping[int, Match | None],
                index: _Index) -> list[Rule]:
    """Source NAT of mesh traffic leaving through another interface."""
    head = (Match("iifname", (interface,)), Match("oifname", (interface,), negate=True))
    out: list[Rule] = []
    for f in FAMILIES:
        if not index.org[f]:
            continue  # no tunnel addresses of this family: nothing to translate
        if role.routes and role.masquerade_routes:
            mine = sets.ref(f"myroutes_{f}", f, ([], [n for n in map(_net, role.routes)
                                                      if n.version == f]))
            if mine is not None:
                out.append(Rule((*head, Match(_DADDR[f], (mine,))), "masquerade",
                                "subnet router: masquerade towards its routes"))
        not_mesh = outside[f]
        if not_mesh is not None:
            out.append(Rule((*head, not_mesh), "masquerade",
                            "exit node: masquerade to the internet"))
    return out
