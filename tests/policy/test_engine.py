"""evaluate / run_tests / evaluate_repo: table-driven checks of the semantics."""

from __future__ import annotations

import pytest
from policyorgs import dev, org_state, repo

from reconciler.model.repo import Policy, Rule
from reconciler.policy import evaluate, evaluate_repo, run_tests

ACME = org_state()

CASES = [
    # src, dst, proto, port, action, deciding rule name (None: no rule)
    ("laptop-a", "web-1", "tcp", 22, "accept", "eng-web"),          # group of users -> tag
    ("laptop-b", "web-1", "tcp", 8050, "accept", "eng-web"),        # inside a range
    ("laptop-b", "web-1", "tcp", 8000, "accept", "eng-web"),        # range low end
    ("laptop-b", "web-1", "tcp", 8100, "accept", "eng-web"),        # range high end
    ("laptop-b", "web-1", "tcp", 8101, "deny", None),               # just outside
    ("laptop-a", "web-1", "tcp", 23, "deny", None),
    ("laptop-a", "web-1", "udp", 22, "deny", None),                 # wrong proto
    ("web-1", "laptop-a", "tcp", 22, "deny", None),                 # rules are one-way
    ("laptop-a", "db-1", "tcp", 5432, "accept", "eng-db"),
    ("laptop-a", "db-2", "tcp", 5432, "deny", None),                # disabled dst
    ("db-2", "laptop-a", "icmp", None, "deny", None),               # disabled src
    ("db-1", "web-1", "udp", 9999, "accept", "ops-all"),            # group user carol, proto any
    ("relay-1", "laptop-a", "tcp", 1, "accept", "ops-all"),         # group via tag relay
    ("web-1", "db-1", "icmp", None, "accept", "ping"),
    ("web-1", "db-1", "icmp", 5432, "accept", "ping"),              # icmp ignores ports
    ("web-1", "db-1", "tcp", 5432, "deny", None),
    ("printer", "relay-1", "udp", 53, "accept", "dns"),             # user:dave -> device:
    ("web-1", "relay-1", "udp", 53, "accept", "dns"),
    ("laptop-a", "relay-1", "udp", 53, "deny", None),
    ("laptop-a", "printer", "tcp", 631, "accept", ""),              # group of devices
    ("laptop-a", "printer", "udp", 631, "accept", ""),              # proto any covers udp
    ("laptop-a", "printer", "tcp", 632, "deny", None),
    ("laptop-a", "printer", "any", 631, "accept", ""),              # query any: rule any
    ("laptop-a", "web-1", "any", 22, "deny", None),                 # only tcp rule: deny
    ("laptop-a", "web-1", "tcp", None, "accept", "eng-web"),        # no port: some port
    ("web-1", "laptop-a", "tcp", None, "deny", None),
    ("db-1", "laptop-a", "any", None, "accept", "ops-all"),
    ("ghost", "web-1", "tcp", 22, "deny", None),                    # unknown device
]


@pytest.mark.parametrize("src,dst,proto,port,action,rule", CASES)
def test_evaluate_table(src, dst, proto, port, action, rule):
    decision = evaluate(ACME, src, dst, proto, port)
    assert decision.action == action, decision.reason
    if rule is None:
        assert decision.rule is None
    else:
        assert decision.rule is not None and decision.rule.name == rule


def test_first_matching_rule_decides_and_reason_names_it():
    decision = evaluate(ACME, "laptop-a", "db-1", "icmp", None)
    assert decision.rule is not None and decision.rule.name == "ping"
    assert "rule 'ping' accepts icmp from laptop-a to db-1" == decision.reason
    unnamed = evaluate(ACME, "web-1", "printer", "tcp", 631)
    assert unnamed.reason.startswith("rules[5] accepts tcp/631")


def test_deny_reasons_say_why():
    assert "disabled" in evaluate(ACME, "laptop-a", "db-2", "tcp", 5432).reason
    assert "not in org" in evaluate(ACME, "ghost", "db-1", "tcp", 1).reason
    assert evaluate(ACME, "web-1", "db-1", "tcp", 5432).reason == (
        "no rule accepts tcp/5432 from web-1 to db-1")


def test_no_policy_is_full_mesh_but_disabled_still_out():
    mesh = org_state(policy=None)
    d = evaluate(mesh, "web-1", "laptop-a", "udp", 4242)
    assert (d.action, d.rule, d.reason) == ("accept", None, "no policy: full mesh")
    assert evaluate(mesh, "web-1", "db-2", "tcp", 1).action == "deny"


def test_empty_policy_denies_everything():
    empty = org_state(policy=Policy())
    assert evaluate(empty, "laptop-a", "web-1", "icmp", None).action == "deny"


def test_unknown_selectors_select_nothing():
    policy = Policy(rules=(Rule(("group:nope", "bogus:x"), ("*",)), Rule(("tag:nope",), ("*",),
                                                                      index=1)))
    state = org_state(policy=policy)
    assert evaluate(state, "laptop-a", "web-1", "tcp", 22).action == "deny"


def test_run_tests_reports_each_outcome_in_order():
    outcomes = run_tests(ACME)
    assert [o.test.index for o in outcomes] == [0, 1, 2]
    assert [o.passed for o in outcomes] == [True, True, False]
    assert outcomes[2].decision.action == "deny"
    assert run_tests(org_state(policy=None)) == ()


def test_orgs_never_reach_each_other():
    other = org_state(devices=(dev("web-1", "alice", "10.20.0.2", "web", org="globex"),),
                      policy=None, name="globex", cidr="10.20.0.0/24")
    r = repo(org_state(policy=None), other)
    cross = evaluate_repo(r, "acme/laptop-a", "globex/web-1", "tcp", 22)
    assert cross.action == "deny" and "never reach" in cross.reason
    assert evaluate_repo(r, "acme/laptop-a", "acme/web-1", "tcp", 22).action == "accept"
    assert evaluate_repo(r, "initech/a", "initech/b", "tcp", 22).action == "deny"
