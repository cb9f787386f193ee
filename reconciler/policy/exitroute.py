"""Pure: does this device route its default through an exit node, and how.

Called by the agent every pass (decide step) and by tests:

* ``exit_node_of(manifest, me) -> str | None``: the exit node ``me`` uses, or
  ``None``. Three things must hold: ``me``'s own manifest entry names it
  (``use_exit_node`` in the device's file in git, signed by the hub), the
  named device is in the manifest and offers ``exit_node: true``, and policy
  lets ``me`` reach ``internet`` (always, with no policy). The agent gives
  that peer ``0.0.0.0/0`` and ``::/0`` as allowed IPs.
* ``exit_routing(manifest, me, interface, bypass=...) -> PolicyRouting``: the
  wg-quick policy-routing layout (``reconciler.model.routing``), or
  ``NO_ROUTING`` when ``exit_node_of`` is ``None``, so removing the setting
  restores the host's own default route. ``bypass`` lists the hub's and the
  STUN servers' addresses, which keep the host's routes.

No I/O, stdlib only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from reconciler.model.manifest import Manifest
from reconciler.model.routing import (
    EXIT_FWMARK,
    EXIT_TABLE,
    NO_ROUTING,
    PRIO_BYPASS,
    PRIO_SUPPRESS,
    PRIO_TUNNEL,
    PolicyRouting,
    PolicyRule,
    TableRoute,
)

from .selectors import INTERNET

MAIN = 254
DEFAULTS = {4: "0.0.0.0/0", 6: "::/0"}


def exit_node_of(manifest: Manifest, me: str) -> str | None:
    """The exit node ``me`` routes its default through (module docstring)."""
    mine = manifest.device(me)
    if mine is None or not mine.use_exit_node or mine.use_exit_node == me:
        return None
    target = manifest.device(mine.use_exit_node)
    if target is None or not target.exit_node:
        return None
    if manifest.policy is None:
        return target.name
    labels = frozenset(mine.labels)
    for raw in manifest.policy.get("rules", ()):
        if INTERNET in raw["dst"] and any(
                s == "*" or s == f"d:{me}" or s in labels for s in raw["src"]):
            return target.name
    return None


def _families(manifest: Manifest, me: str) -> tuple[int, ...]:
    mine = manifest.device(me)
    assert mine is not None
    have = {ipaddress.ip_address(ip.partition("/")[0]).version for ip in mine.tunnel_ips}
    return tuple(f for f in (4, 6) if f in have)


def exit_routing(manifest: Manifest, me: str, interface: str, *, bypass: Iterable[str] = (),
                 table: int = EXIT_TABLE, fwmark: int = EXIT_FWMARK) -> PolicyRouting:
    """The desired rules and table routes (``NO_ROUTING`` when no exit node is used)."""
    if exit_node_of(manifest, me) is None:
        return NO_ROUTING
    families = _families(manifest, me)
    rules: set[PolicyRule] = set()
    routes: set[TableRoute] = set()
    for item in bypass:
        net = ipaddress.ip_network(item, strict=False)
        if net.version in families:
            rules.add(PolicyRule(net.version, PRIO_BYPASS, MAIN, to=str(net)))
    for f in families:
        rules.add(PolicyRule(f, PRIO_SUPPRESS, MAIN, suppress_prefixlength=0))
        rules.add(PolicyRule(f, PRIO_TUNNEL, table, fwmark=fwmark, invert=True))
        routes.add(TableRoute(DEFAULTS[f], table, interface))
    return PolicyRouting(frozenset(rules), frozenset(routes), fwmark)
