"""Selector membership: which devices a policy selector names.

Used by ``engine`` (one device at a time), ``reach`` (every device) and
``compiled`` (membership labels for the manifest). Selectors are ``*``,
``group:G``, ``tag:T``, ``device:D`` and ``user:U``; an unknown kind or a name
that resolves to nothing selects no device (``meshops validate`` reports
dangling references). The destination-only selectors ``route:CIDR`` and
``internet`` select no device: they select addresses outside the mesh
(``selects_address``). Pure and stdlib-only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the repository model is not loaded on the agent's path
    from reconciler.model.repo import Device, Policy

# Selector kind -> compiled label prefix (labels look like "g:eng").
LABEL_PREFIX = {"group": "g", "tag": "t", "user": "u", "device": "d", "route": "r"}
KIND_OF_PREFIX = {v: k for k, v in LABEL_PREFIX.items()}
INTERNET = "internet"  # selector and label: addresses outside the org's CIDRs and routes


def split(selector: str) -> tuple[str, str]:
    """``"group:eng"`` -> ``("group", "eng")``; ``"*"`` -> ``("*", "")``;
    ``"internet"`` -> ``("internet", "")``."""
    if selector in ("*", INTERNET):
        return selector, ""
    kind, _, name = selector.partition(":")
    return kind, name


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(text: str) -> Address | None:
    """An IP literal (a destination outside the mesh), or ``None`` for a device name."""
    if not text or not (":" in text or text[0].isdigit()):
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def selects_address(selector: str, address: Address, inside: Iterable[Network]) -> bool:
    """True if destination ``selector`` (or its label) selects ``address``:
    ``route:CIDR`` / ``r:CIDR`` when the address is inside CIDR, ``internet``
    when it is outside every network of ``inside`` (the org's CIDRs and every
    advertised route)."""
    if selector == INTERNET:
        return not any(address in net for net in inside)
    kind, name = split(selector)
    if kind not in ("route", "r"):
        return False
    try:
        return address in ipaddress.ip_network(name, strict=False)
    except ValueError:
        return False


def in_group(policy: Policy, group: str, device: Device) -> bool:
    g = policy.groups.get(group)
    if g is None:
        return False
    return (
        device.owner in g.users
        or device.name in g.devices
        or any(tag in g.tags for tag in device.tags)
    )


def matches(policy: Policy, selector: str, device: Device) -> bool:
    """True if ``selector`` selects ``device``."""
    kind, name = split(selector)
    if kind == "*":
        return True
    if kind == "device":
        return device.name == name
    if kind == "user":
        return device.owner == name
    if kind == "tag":
        return name in device.tags
    if kind == "group":
        return in_group(policy, name, device)
    return False


def to_label(selector: str) -> str:
    """Compiled form of a selector: ``"group:eng"`` -> ``"g:eng"``, ``"route:C"``
    -> ``"r:C"``; ``"*"`` and ``"internet"`` stay."""
    kind, name = split(selector)
    if kind in ("*", INTERNET):
        return kind
    prefix = LABEL_PREFIX.get(kind)
    return f"{prefix}:{name}" if prefix else f"?:{selector}"


def from_label(label: str) -> str:
    """Inverse of ``to_label``."""
    if label in ("*", INTERNET):
        return label
    prefix, _, name = label.partition(":")
    if prefix == "?":
        return name
    return f"{KIND_OF_PREFIX.get(prefix, prefix)}:{name}"


def device_labels(policy: Policy, device: Device) -> frozenset[str]:
    """Every membership label of ``device`` (owner, tags, groups), before trimming
    to the labels the rules actually use."""
    labels = {f"u:{device.owner}"}
    labels.update(f"t:{t}" for t in device.tags)
    labels.update(f"g:{g}" for g in policy.groups if in_group(policy, g, device))
    return frozenset(labels)


class Resolver:
    """Selector -> set of device names over a fixed device list, via owner and tag
    indexes: O(selected devices) per selector instead of O(devices x group size).
    Used by ``reach.reachability`` and ``compiled.compile_policy``."""

    def __init__(self, policy: Policy, devices: Iterable[Device]) -> None:
        self.policy = policy
        self.names: frozenset[str] = frozenset()
        self.by_owner: dict[str, set[str]] = {}
        self.by_tag: dict[str, set[str]] = {}
        names = set()
        for d in devices:
            names.add(d.name)
            self.by_owner.setdefault(d.owner, set()).add(d.name)
            for tag in d.tags:
                self.by_tag.setdefault(tag, set()).add(d.name)
        self.names = frozenset(names)
        self._memo: dict[str, frozenset[str]] = {}

    def _group(self, name: str) -> frozenset[str]:
        g = self.policy.groups.get(name)
        if g is None:
            return frozenset()
        out: set[str] = set()
        for user in g.users:
            out |= self.by_owner.get(user, set())
        for tag in g.tags:
            out |= self.by_tag.get(tag, set())
        out.update(d for d in g.devices if d in self.names)
        return frozenset(out)

    def resolve(self, selector: str) -> frozenset[str]:
        hit = self._memo.get(selector)
        if hit is not None:
            return hit
        kind, name = split(selector)
        if kind == "*":
            out = self.names
        elif kind == "device":
            out = frozenset({name}) & self.names
        elif kind == "user":
            out = frozenset(self.by_owner.get(name, ()))
        elif kind == "tag":
            out = frozenset(self.by_tag.get(name, ()))
        elif kind == "group":
            out = self._group(name)
        else:
            out = frozenset()
        self._memo[selector] = out
        return out

    def resolve_all(self, selectors: Iterable[str]) -> frozenset[str]:
        out: set[str] = set()
        for s in selectors:
            members = self.resolve(s)
            if members is self.names:
                return members
            out |= members
        return frozenset(out)
