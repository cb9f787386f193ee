"""The reachability matrix of one org: what every enabled device may send to every other.

Called by ``policy.review`` (``meshops plan``), docs and tests. Devices are
grouped into classes by the rules whose src and dst select them; the access of
a pair depends only on the two classes, so the work is O(rules x devices +
classes^2), not O(devices^2). ``Matrix.get`` and ``Matrix.pairs`` expand it on
demand. Pure and stdlib-only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cached_property
from typing import TYPE_CHECKING

from reconciler.model.rules import Rule
from reconciler.structs import Record

if TYPE_CHECKING:  # annotations only: the repository model is not loaded on the agent's path
    from reconciler.model.repo import OrgState

from .access import ALL_ACCESS, NO_ACCESS, Access
from .selectors import Resolver

# A class signature: (indices of rules selecting it as src, ... as dst).
Signature = tuple[frozenset[int], frozenset[int]]
FULL_MESH: Signature = (frozenset({-1}), frozenset({-1}))


class Matrix(Record, dict=True):
    """Accepted traffic between the enabled devices of one org (self pairs excluded)."""

    org: str
    devices: tuple[str, ...]
    signature: Mapping[str, Signature]
    rules: tuple[Rule, ...]
    full_mesh: bool

    @cached_property
    def _memo(self) -> dict[frozenset[int], Access]:
        return {}  # in the instance's ``__dict__``: not a field, not compared

    def access_between(self, src_sig: Signature, dst_sig: Signature) -> Access:
        """Access from any device of class ``src_sig`` to any device of class ``dst_sig``."""
        if self.full_mesh:
            return ALL_ACCESS
        common = src_sig[0] & dst_sig[1]
        if not common:
            return NO_ACCESS
        hit = self._memo.get(common)
        if hit is None:
            hit = Access.union_of(Access.of_rule(self.rules[i]) for i in sorted(common))
            self._memo[common] = hit
        return hit

    def get(self, src: str, dst: str) -> Access:
        if src == dst or src not in self.signature or dst not in self.signature:
            return NO_ACCESS
        return self.access_between(self.signature[src], self.signature[dst])

    def pairs(self) -> Iterator[tuple[str, str, Access]]:
        """Every ordered pair with some accepted traffic, sorted by (src, dst)."""
        for src in self.devices:
            for dst in self.devices:
                access = self.get(src, dst)
                if access:
                    yield src, dst, access

    def classes(self) -> dict[Signature, tuple[str, ...]]:
        """Devices grouped by class signature (sorted members)."""
        out: dict[Signature, list[str]] = {}
        for name in self.devices:
            out.setdefault(self.signature[name], []).append(name)
        return {k: tuple(v) for k, v in out.items()}


def reachability(org_state: OrgState) -> Matrix:
    """Build the matrix of ``org_state``'s enabled devices."""
    enabled = org_state.enabled_devices()
    names = tuple(d.name for d in enabled)
    policy = org_state.policy
    if policy is None:
        return Matrix(org_state.name, names, {n: FULL_MESH for n in names}, (), True)
    resolver = Resolver(policy, enabled)
    src_of: dict[str, set[int]] = {n: set() for n in names}
    dst_of: dict[str, set[int]] = {n: set() for n in names}
    for i, rule in enumerate(policy.rules):
        for name in resolver.resolve_all(rule.src):
            src_of[name].add(i)
        for name in resolver.resolve_all(rule.dst):
            dst_of[name].add(i)
    interned: dict[Signature, Signature] = {}
    signature: dict[str, Signature] = {}
    for n in names:
        sig = (frozenset(src_of[n]), frozenset(dst_of[n]))
        signature[n] = interned.setdefault(sig, sig)
    return Matrix(org_state.name, names, signature, tuple(policy.rules), False)
