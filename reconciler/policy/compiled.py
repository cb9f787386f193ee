"""The compiled policy that travels in the signed manifest, and its evaluation on agents.

``compile_policy(org_state)`` is called by ``reconciler.pki.manifest.build``:
``as_dict()`` becomes ``Manifest.policy`` and ``labels(device)`` becomes
``ManifestDevice.labels``. Agents call ``peers_allowed(manifest, me)`` every
run to pick their WireGuard peers; ``evaluate_compiled`` answers single flows
exactly like ``engine.evaluate`` (a hypothesis test holds them together).

Form (``version`` 1)::

    {"version": 1,
     "rules": [{"src": ["g:eng"], "dst": ["t:db", "d:db-1"], "proto": "tcp",
                "ports": ["5432", "8000-8100"], "name": "eng-to-db"}]}

Selectors become labels (``*``, ``g:``, ``t:``, ``u:``, ``d:``); ``ports`` and
``name`` are left out when empty. Its size depends on the rules, never on the
number of devices: group membership is pushed to the devices as labels, and a
device carries only the labels some rule uses (``d:`` needs no label, it is
matched against the device name). Pure and stdlib-only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from reconciler.model.manifest import Manifest, ManifestDevice
from reconciler.model.rules import PortRange, Rule
from reconciler.structs import Record

from .engine import (
    ACCEPT,
    DENY,
    Decision,
    evaluate_address,
    flow_text,
    port_matches,
    proto_matches,
    rule_label,
)
from .selectors import INTERNET, Network, Resolver, from_label, parse_address, to_label

if TYPE_CHECKING:  # annotations only: the repository model is not loaded on the agent's path
    from reconciler.model.repo import OrgState

VERSION = 1


class CompiledPolicy(Record):
    """Compiled rules plus the per-device labels they need; ``rules is None`` = full mesh."""

    rules: tuple[Mapping[str, Any], ...] | None
    device_labels: Mapping[str, tuple[str, ...]]

    def as_dict(self) -> dict[str, Any] | None:
        if self.rules is None:
            return None
        return {"version": VERSION, "rules": [dict(r) for r in self.rules]}

    def labels(self, device_name: str) -> tuple[str, ...]:
        return self.device_labels.get(device_name, ())


def _compile_rule(rule: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {
        "src": [to_label(s) for s in rule.src],
        "dst": [to_label(s) for s in rule.dst],
        "proto": rule.proto,
    }
    if rule.ports:
        out["ports"] = [str(p) for p in rule.ports]
    if rule.name:
        out["name"] = rule.name
    return out


def compile_policy(org_state: OrgState) -> CompiledPolicy:
    """Compile ``org_state.policy`` for the manifest; labels cover enabled devices."""
    policy = org_state.policy
    if policy is None:
        return CompiledPolicy(None, {})
    rules = tuple(_compile_rule(r) for r in policy.rules)
    used = sorted({lab for r in rules for lab in (*r["src"], *r["dst"])
                   if lab[:2] in ("g:", "t:", "u:")})
    enabled = org_state.enabled_devices()
    resolver = Resolver(policy, enabled)
    per_device: dict[str, list[str]] = {d.name: [] for d in enabled}
    for label in used:  # sorted, so each device's labels come out sorted
        for name in resolver.resolve(from_label(label)):
            per_device[name].append(label)
    return CompiledPolicy(rules, {n: tuple(v) for n, v in per_device.items()})


def _parse_port(text: str) -> PortRange:
    lo, _, hi = text.partition("-")
    return PortRange(int(lo), int(hi or lo))


def decompile_rule(compiled: Mapping[str, Any], index: int) -> Rule:
    """The ``Rule`` a compiled rule came from (``index`` = its position)."""
    return Rule(
        src=tuple(from_label(s) for s in compiled["src"]),
        dst=tuple(from_label(s) for s in compiled["dst"]),
        proto=compiled.get("proto", "any"),
        ports=tuple(_parse_port(str(p)) for p in compiled.get("ports", ())),
        name=compiled.get("name", ""),
        index=index,
    )


def _selects(selectors: Iterable[str], name: str, labels: frozenset[str]) -> bool:
    for sel in selectors:
        if sel == "*" or sel in labels:
            return True
        if sel.startswith("d:") and sel[2:] == name:
            return True
    return False


def _networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs if c)


def evaluate_compiled(
    compiled: Mapping[str, Any] | None,
    labels_by_device: Mapping[str, Iterable[str]],
    src: str,
    dst: str,
    proto: str,
    port: int | None,
    *,
    org_cidrs: Iterable[str] = (),
    routes: Iterable[str] = (),
) -> Decision:
    """``engine.evaluate`` on the manifest form: devices absent from
    ``labels_by_device`` (unknown or disabled) are denied. ``dst`` may be an
    address outside the mesh; ``org_cidrs`` and ``routes`` (every advertised
    route in the manifest) then say what ``internet`` is not."""
    address = parse_address(dst)
    if address is not None:
        if src not in labels_by_device:
            return Decision(DENY, None, f"source device {src!r} is not in the manifest")
        org = _networks(org_cidrs)
        src_labels = frozenset(labels_by_device[src])
        rules = None if compiled is None else tuple(
            decompile_rule(raw, i) for i, raw in enumerate(compiled.get("rules", ())))
        return evaluate_address(
            rules, lambda sel: _selects((to_label(sel),), src, src_labels), src, address,
            org + _networks(routes), org, proto, port)
    for role, name in (("source", src), ("destination", dst)):
        if name not in labels_by_device:
            return Decision(DENY, None, f"{role} device {name!r} is not in the manifest")
    if compiled is None:
        return Decision(ACCEPT, None, "no policy: full mesh")
    src_labels = frozenset(labels_by_device[src])
    dst_labels = frozenset(labels_by_device[dst])
    for i, raw in enumerate(compiled.get("rules", ())):
        if not proto_matches(raw.get("proto", "any"), proto):
            continue
        if not (_selects(raw["src"], src, src_labels) and _selects(raw["dst"], dst, dst_labels)):
            continue
        rule = decompile_rule(raw, i)
        if port_matches(rule, proto, port):
            return Decision(ACCEPT, rule, f"{rule_label(rule)} accepts {flow_text(src, dst, proto, port)}")
    return Decision(DENY, None, f"no rule accepts {flow_text(src, dst, proto, port)}")


def peers_allowed(manifest: Manifest, me: str) -> frozenset[str]:
    """Devices ``me`` needs a WireGuard peer with: some rule accepts traffic
    between us in either direction. Full mesh when ``manifest.policy`` is None.
    Never ``me`` itself; empty when ``me`` is not in the manifest.

    Cost: O(devices x labels) to index labels, then O(rules x selected devices);
    ``PeerIndex`` keeps the index for many devices of one manifest (the hub's views).
    """
    return PeerIndex(manifest).allowed(me)


class PeerIndex:
    """``peers_allowed`` for many devices of one manifest: the label index, the
    routers and the exit nodes are built once (O(devices x labels)); each
    ``allowed(me)`` then costs O(rules x selected devices)."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.everyone = frozenset(d.name for d in manifest.devices)
        self.members: dict[str, set[str]] = {}
        for d in manifest.devices:
            for label in d.labels:
                self.members.setdefault(label, set()).add(d.name)
        self.routers = [d for d in manifest.devices if d.routes]
        self.exits = [d.name for d in manifest.devices if d.exit_node]

    def expand(self, selectors: Iterable[str]) -> set[str] | frozenset[str]:
        """The devices a rule side selects."""
        out: set[str] = set()
        for sel in selectors:
            if sel == "*":
                return self.everyone
            if sel.startswith("d:"):
                if sel[2:] in self.everyone:
                    out.add(sel[2:])
            else:
                out.update(self.members.get(sel, ()))
        return out

    def allowed(self, me: str) -> frozenset[str]:
        manifest = self.manifest
        mine = manifest.device(me)
        if mine is None:
            return frozenset()
        if manifest.policy is None:
            return self.everyone - {me}
        my_labels = frozenset(mine.labels)
        peers: set[str] = set()
        for raw in manifest.policy.get("rules", ()):
            if _selects(raw["src"], me, my_labels):
                peers.update(self.expand(raw["dst"]))
            if _selects(raw["dst"], me, my_labels):
                peers.update(self.expand(raw["src"]))
            if len(peers) >= len(self.everyone):
                break
        peers.update(self._route_peers(mine, my_labels))
        peers.discard(me)
        return frozenset(peers)

    def _route_peers(self, mine: ManifestDevice, my_labels: frozenset[str]) -> set[str]:
        """Peers that ``route:`` and ``internet`` rules need: a device a rule lets
        reach a routed subnet peers with the routers advertising it, and with the
        exit nodes for ``internet``; routers and exit nodes peer with those sources."""
        assert self.manifest.policy is not None
        out: set[str] = set()
        for raw in self.manifest.policy.get("rules", ()):
            outside = [s for s in raw["dst"] if s == INTERNET or s.startswith("r:")]
            if not outside:
                continue
            if _selects(raw["src"], mine.name, my_labels):
                for sel in outside:
                    if sel == INTERNET:
                        out.update(self.exits)
                    else:
                        out.update(d.name for d in self.routers if _overlaps(sel[2:], d.routes))
            serves = any((sel == INTERNET and mine.exit_node)
                         or (sel.startswith("r:") and _overlaps(sel[2:], mine.routes))
                         for sel in outside)
            if serves:
                out.update(self.expand(raw["src"]))
        return out


def _overlaps(cidr: str, routes: Iterable[str]) -> bool:
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False
    for r in routes:
        adv = ipaddress.ip_network(r, strict=False)
        if adv.version == net.version and adv.overlaps(net):  # type: ignore[arg-type]
            return True
    return False
