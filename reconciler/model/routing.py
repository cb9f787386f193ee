"""Policy routing of an exit-node client, as data (the wg-quick layout).

``reconciler.policy.exitroute.exit_routing`` builds the desired
``PolicyRouting`` of a device from its verified manifest;
``reconciler.net.iproute.IPRouteLinks.observe_routing`` reads the live one
(``ip -j rule show``, ``ip -j route show table T``);
``reconciler.converge.routing.plan_routing`` diffs them. A device that uses an
exit node gets, per address family, what ``wg-quick`` sets up for a default
route through the tunnel:

* ``to HUB/STUN lookup main`` (priority 5200): the hub connection and STUN
  keep using the host's own routes;
* ``lookup main suppress_prefixlength 0`` (5210): every route of ``main``
  except its default (the LAN, the mesh's own routes) still wins;
* ``not fwmark F lookup T`` (5220): everything else goes to table ``T``, whose
  only route is the default through the mesh interface. WireGuard marks its
  own UDP with ``F`` (the interface's fwmark), so the tunnel does not loop.

meshops owns exactly the rules at ``PRIORITIES`` and table ``T``; removing
``use_exit_node`` empties the desired state, so the plan deletes them and the
host's own default route is used again. Stdlib only.
"""

from __future__ import annotations

from reconciler.structs import Record

EXIT_TABLE = 51820  # as wg-quick: the listen port's number
EXIT_FWMARK = 0xCA6C  # 51820
PRIO_BYPASS = 5200
PRIO_SUPPRESS = 5210
PRIO_TUNNEL = 5220
PRIORITIES = (PRIO_BYPASS, PRIO_SUPPRESS, PRIO_TUNNEL)


class PolicyRule(Record, order=True):
    """One ``ip rule``: ``[not] [fwmark F] [to DST] lookup TABLE [suppress_prefixlength N]``."""

    family: int  # 4 | 6
    priority: int
    table: int  # 254 = main
    fwmark: int | None = None
    invert: bool = False
    to: str | None = None  # canonical CIDR
    suppress_prefixlength: int | None = None

    def __str__(self) -> str:
        parts = [f"ip -{self.family} rule pref {self.priority}"]
        if self.invert:
            parts.append("not")
        if self.fwmark is not None:
            parts.append(f"fwmark {self.fwmark:#x}")
        if self.to is not None:
            parts.append(f"to {self.to}")
        parts.append(f"lookup {'main' if self.table == 254 else self.table}")
        if self.suppress_prefixlength is not None:
            parts.append(f"suppress_prefixlength {self.suppress_prefixlength}")
        return " ".join(parts)


class TableRoute(Record, order=True):
    """A route in a policy-routing table: ``ROUTE dev INTERFACE table TABLE``."""

    route: str  # canonical CIDR, "0.0.0.0/0" / "::/0"
    table: int
    interface: str

    def __str__(self) -> str:
        return f"route {self.route} dev {self.interface} table {self.table}"


class PolicyRouting(Record):
    """meshops' rules (at ``PRIORITIES``) and the routes of its table."""

    rules: frozenset[PolicyRule] = frozenset()
    routes: frozenset[TableRoute] = frozenset()
    fwmark: int = 0  # the mark the WireGuard interface must carry (0 = none needed)

    @property
    def empty(self) -> bool:
        return not self.rules and not self.routes


NO_ROUTING = PolicyRouting()
