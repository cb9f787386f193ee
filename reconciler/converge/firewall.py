"""Pure plans for the host firewall and the exit-node client's policy routing.

Beside ``reconciler.converge.planner.plan`` (the WireGuard interface); the
agent composes the three in its decide step:

* ``plan_firewall(desired, observed, interface)``: one ``ReplaceFirewall``
  when the desired ``Ruleset`` (``reconciler.policy.firewall``) differs
  from the table read back (``reconciler.net.nftables.Nftables.observe``),
  none when they are equal. Level-based: a deleted table or an ``nft flush
  ruleset`` reads back as ``EMPTY`` and is repaired by the next pass. The
  operation says what differed (``why``), for the agent's report.
* ``plan_routing(desired, observed, interface)``: the rule and table-route
  additions and removals that turn the observed ``PolicyRouting``
  (``reconciler.net.iproute.IPRouteLinks.observe_routing``) into the desired
  one (``reconciler.policy.exitroute.exit_routing``). Order: rules out
  first (traffic falls back to ``main`` before its table goes), then table
  routes out, table routes in, rules in (the table has its default before a
  rule sends traffic to it); each group sorted.

No I/O, stdlib only.
"""

from __future__ import annotations

from reconciler.converge.ops import (
    AddPolicyRule,
    AddTableRoute,
    Operation,
    RemovePolicyRule,
    RemoveTableRoute,
    ReplaceFirewall,
)
from reconciler.model.firewall import Ruleset
from reconciler.model.routing import PolicyRouting


def firewall_difference(desired: Ruleset, observed: Ruleset) -> str:
    """A short account of what differs ("" when equal)."""
    if desired == observed:
        return ""
    if observed.empty:
        return "table inet meshops is missing"
    if desired.empty:
        return "table inet meshops is no longer wanted"
    parts = []
    want_sets = {s.name: s for s in desired.sets}
    have_sets = {s.name: s for s in observed.sets}
    for kind, want, have in (("set", want_sets, have_sets),
                             ("chain", {c.name: c for c in desired.chains},
                              {c.name: c for c in observed.chains})):
        missing = sorted(set(want) - set(have))
        extra = sorted(set(have) - set(want))
        changed = sorted(n for n in set(want) & set(have) if want[n] != have[n])
        if missing:
            parts.append(f"{kind}s missing: {', '.join(missing[:5])}")
        if extra:
            parts.append(f"unexpected {kind}s: {', '.join(extra[:5])}")
        if changed:
            parts.append(f"{kind}s differ: {', '.join(changed[:5])}")
    return "; ".join(parts)


def plan_firewall(desired: Ruleset, observed: Ruleset,
                  interface: str = "") -> tuple[Operation, ...]:
    """``()`` when the table is as desired, else one ``ReplaceFirewall``."""
    if desired == observed:
        return ()
    return (ReplaceFirewall(interface, desired, firewall_difference(desired, observed)),)


def plan_routing(desired: PolicyRouting, observed: PolicyRouting,
                 interface: str = "") -> tuple[Operation, ...]:
    """Rule and table-route changes, in the module docstring's order."""
    ops: list[Operation] = []
    ops += [RemovePolicyRule(interface, r) for r in sorted(observed.rules - desired.rules)]
    ops += [RemoveTableRoute(interface, r) for r in sorted(observed.routes - desired.routes)]
    ops += [AddTableRoute(interface, r) for r in sorted(desired.routes - observed.routes)]
    ops += [AddPolicyRule(interface, r) for r in sorted(desired.rules - observed.rules)]
    return tuple(ops)
