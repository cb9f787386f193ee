"""plan_firewall and plan_routing: pure, one op or none, fixed order, printable."""

from __future__ import annotations

from reconciler.converge import (
    AddPolicyRule,
    AddTableRoute,
    RemovePolicyRule,
    RemoveTableRoute,
    ReplaceFirewall,
    plan_firewall,
    plan_routing,
)
from reconciler.model.firewall import EMPTY, Chain, Match, NamedSet, Rule, Ruleset
from reconciler.model.routing import NO_ROUTING, PolicyRouting, PolicyRule, TableRoute
from reconciler.structs import replace

SRC = NamedSet("r0_src_4", "ipv4_addr", ("10.10.0.2/32",))
RULE = Rule((Match("ip saddr", ("@r0_src_4",)), Match("tcp dport", ("8080",))), "accept",
            "rule 0 web")
DESIRED = Ruleset.of([SRC], [
    Chain("input", (Rule((Match("iifname", ("wg0",)),), "jump mesh_in"),), hook="input"),
    Chain("mesh_in", (RULE, Rule((), "drop"))),
])


def test_equal_plans_nothing():
    assert plan_firewall(DESIRED, DESIRED, "wg0") == ()
    assert plan_firewall(EMPTY, EMPTY) == ()


def test_comments_are_not_compared():
    other = replace(DESIRED, chains=(DESIRED.chains[0], Chain("mesh_in", (
        replace(RULE, comment="edited by hand"), Rule((), "drop")))))
    assert plan_firewall(DESIRED, other) == ()


def test_missing_table_is_one_replace():
    (op,) = plan_firewall(DESIRED, EMPTY, "wg0")
    assert op == ReplaceFirewall("wg0", DESIRED, "table inet meshops is missing")
    assert str(op) == ("replace firewall table inet meshops (3 statements, 1 set, 1 set "
                       "element): table inet meshops is missing")


def test_drift_names_what_differs():
    drifted = Ruleset.of([replace(SRC, elements=("10.10.0.0/24",))], [
        DESIRED.chains[0], Chain("mesh_in", (Rule((), "drop"),)),
        Chain("sneaky", (Rule((), "accept"),))])
    (op,) = plan_firewall(DESIRED, drifted)
    assert op.why == "sets differ: r0_src_4; unexpected chains: sneaky; chains differ: mesh_in"


def test_unwanted_table_is_removed():
    (op,) = plan_firewall(EMPTY, DESIRED)
    assert op.ruleset == EMPTY
    assert str(op) == "remove firewall table inet meshops: table inet meshops is no longer wanted"


RULES = frozenset({PolicyRule(4, 5210, 254, suppress_prefixlength=0),
                   PolicyRule(4, 5220, 51820, fwmark=0xCA6C, invert=True)})
ROUTES = frozenset({TableRoute("0.0.0.0/0", 51820, "wg0")})
USING = PolicyRouting(RULES, ROUTES, 0xCA6C)


def test_routing_add_then_remove_restores():
    ops = plan_routing(USING, NO_ROUTING, "wg0")
    assert [type(o) for o in ops] == [AddTableRoute, AddPolicyRule, AddPolicyRule]
    assert [str(o) for o in ops] == [
        "add route 0.0.0.0/0 dev wg0 table 51820",
        "add ip -4 rule pref 5210 lookup main suppress_prefixlength 0",
        "add ip -4 rule pref 5220 not fwmark 0xca6c lookup 51820",
    ]
    back = plan_routing(NO_ROUTING, USING, "wg0")
    assert [type(o) for o in back] == [RemovePolicyRule, RemovePolicyRule, RemoveTableRoute]
    assert plan_routing(USING, USING) == () and plan_routing(NO_ROUTING, NO_ROUTING) == ()


def test_routing_partial_drift_is_repaired():
    half = PolicyRouting(frozenset({PolicyRule(4, 5210, 254, suppress_prefixlength=0),
                                    PolicyRule(4, 5220, 99, fwmark=1, invert=True)}), ROUTES)
    ops = plan_routing(USING, half, "wg0")
    assert [str(o) for o in ops] == [
        "remove ip -4 rule pref 5220 not fwmark 0x1 lookup 99",
        "add ip -4 rule pref 5220 not fwmark 0xca6c lookup 51820",
    ]
