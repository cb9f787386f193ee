"""route:CIDR and internet: evaluation (engine and compiled agree), compilation,
peering, validation with file:line, and the exit-node routing decision."""

from __future__ import annotations

import pytest
from fworgs import POLICIES, devices, manifest, org
from hypothesis import given, settings
from hypothesis import strategies as st
from policyorgs import ports, rules

from reconciler.config.semantic import check_org
from reconciler.model.repo import Policy, Rule, Source
from reconciler.model.routing import EXIT_FWMARK, EXIT_TABLE, NO_ROUTING, PolicyRule, TableRoute
from reconciler.policy import compile_policy, evaluate, evaluate_compiled, peers_allowed
from reconciler.policy.exitroute import exit_node_of, exit_routing
from reconciler.structs import replace

STATE = org(POLICIES["routes-exit"])


@pytest.mark.parametrize(("src", "dst", "proto", "port", "action"), [
    ("laptop-a", "192.168.10.5", "tcp", 22, "accept"),      # route rule
    ("laptop-a", "192.168.10.5", "tcp", 23, "deny"),        # wrong port
    ("web-1", "192.168.10.5", "tcp", 22, "deny"),           # not a laptop
    ("laptop-a", "192.168.11.5", "tcp", 22, "deny"),        # outside the route
    ("laptop-b", "198.51.100.9", "udp", 53, "accept"),      # internet rule
    ("laptop-a", "198.51.100.9", "tcp", 443, "deny"),       # alice has no internet rule
    ("laptop-b", "192.168.10.5", "tcp", 80, "deny"),        # a route is not the internet
    ("laptop-b", "10.10.0.4", "tcp", 443, "deny"),          # tunnel address: name the device
    ("laptop-b", "web-1", "tcp", 443, "accept"),            # devices still work
    ("ghost", "198.51.100.9", "tcp", 443, "deny"),
])
def test_evaluate_addresses(src, dst, proto, port, action):
    assert evaluate(STATE, src, dst, proto, port).action == action


def test_full_mesh_accepts_outside_destinations():
    assert evaluate(org(None), "laptop-a", "198.51.100.9", "tcp", 443).accepted
    assert not evaluate(org(None), "laptop-a", "10.10.0.9", "tcp", 443).accepted


def test_tunnel_address_reason_names_the_fix():
    assert "name the device" in evaluate(STATE, "laptop-b", "10.10.0.4", "tcp", 1).reason


def test_compile_keeps_the_selectors_as_labels():
    compiled = compile_policy(STATE).as_dict()
    assert compiled["rules"][0]["dst"] == ["r:192.168.10.0/24"]
    assert compiled["rules"][1]["dst"] == ["internet"]


ADDRESSES = st.sampled_from(["192.168.10.1", "192.168.10.200", "192.168.11.1", "198.51.100.9",
                             "203.0.113.1", "10.10.0.4", "fd10:10::4", "2001:db8::1"])


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([d.name for d in devices()] + ["ghost"]), ADDRESSES,
       st.sampled_from(["tcp", "udp", "icmp", "any"]), st.none() | st.integers(1, 65535),
       st.sampled_from(["routes-exit", "none", "tcp-port"]))
def test_compiled_agrees_with_engine_on_addresses(src, dst, proto, port, policy):
    state = org(POLICIES[policy], v6=True)
    m = manifest(state)
    labels = {d.name: d.labels for d in m.devices}
    routes = [r for d in m.devices for r in d.routes]
    want = evaluate(state, src, dst, proto, port)
    got = evaluate_compiled(m.policy, labels, src, dst, proto, port,
                            org_cidrs=(m.cidr_v4, m.cidr_v6), routes=routes)
    assert (got.action, got.rule and got.rule.index) == (want.action,
                                                         want.rule and want.rule.index)


def test_peers_follow_route_and_internet_rules():
    m = manifest(STATE)
    assert {"router-1", "exit-1", "web-1"} <= peers_allowed(m, "laptop-b")
    assert "exit-1" not in peers_allowed(m, "laptop-a")  # no internet rule for alice
    assert {"laptop-a", "laptop-b"} <= peers_allowed(m, "router-1")
    assert peers_allowed(m, "exit-1") >= {"laptop-b"}
    assert "laptop-a" not in peers_allowed(m, "exit-1")


# --- the exit-node decision ----------------------------------------------------


def test_exit_node_needs_the_setting_the_offer_and_the_policy():
    m = manifest(STATE)
    assert exit_node_of(m, "laptop-b") == "exit-1"
    assert exit_node_of(m, "laptop-a") is None  # no use_exit_node
    no_rule = Policy(rules=rules(Rule(("*",), ("*",), "icmp", (), "ping")))
    assert exit_node_of(manifest(org(no_rule)), "laptop-b") is None  # policy says no
    assert exit_node_of(manifest(org(None)), "laptop-b") == "exit-1"  # full mesh
    not_offered = tuple(replace(d, exit_node=False) if d.name == "exit-1" else d
                        for d in devices())
    assert exit_node_of(manifest(org(None, devs=not_offered)), "laptop-b") is None


def test_exit_routing_is_the_wg_quick_layout():
    m = manifest(org(POLICIES["routes-exit"], v6=True))
    got = exit_routing(m, "laptop-b", "wg0", bypass=["203.0.113.10", "2001:db8::53/128"])
    assert got.fwmark == EXIT_FWMARK
    assert got.routes == {TableRoute("0.0.0.0/0", EXIT_TABLE, "wg0"),
                          TableRoute("::/0", EXIT_TABLE, "wg0")}
    assert PolicyRule(4, 5220, EXIT_TABLE, fwmark=EXIT_FWMARK, invert=True) in got.rules
    assert PolicyRule(6, 5210, 254, suppress_prefixlength=0) in got.rules
    assert PolicyRule(4, 5200, 254, to="203.0.113.10/32") in got.rules
    assert PolicyRule(6, 5200, 254, to="2001:db8::53/128") in got.rules
    assert len(got.rules) == 6
    assert str(PolicyRule(4, 5220, EXIT_TABLE, fwmark=EXIT_FWMARK, invert=True)) == \
        "ip -4 rule pref 5220 not fwmark 0xca6c lookup 51820"
    assert exit_routing(m, "laptop-a", "wg0") == NO_ROUTING


# --- validation ------------------------------------------------------------------


def _problems(state):
    return sorted((p.code, p.line) for p in check_org(state))


def _with(state, name, **kw):
    d = state.devices[name]
    src = Source(f"orgs/acme/devices/{name}.yaml", {"use_exit_node": 9})
    return replace(state, devices={**state.devices, name: replace(d, source=src, **kw)})


@pytest.mark.parametrize(("target", "message"), [
    ("nope", "is not a device"),
    ("web-1", "does not offer itself"),
    ("laptop-b", "cannot use itself"),
])
def test_use_exit_node_must_name_an_offering_device(target, message):
    state = _with(org(None), "laptop-b", use_exit_node=target)
    (p,) = [p for p in check_org(state) if p.code == "E-EXIT-NODE"]
    assert (p.file, p.line) == ("orgs/acme/devices/laptop-b.yaml", 9)
    assert message in p.message and "exit_node: true" in p.remedy


def test_use_exit_node_of_a_disabled_exit_is_refused():
    state = _with(_with(org(None), "exit-1", disabled=True), "laptop-b", use_exit_node="exit-1")
    assert [p.code for p in check_org(state)] == ["E-EXIT-NODE"]


def test_valid_exit_use_has_no_problem():
    assert check_org(org(POLICIES["routes-exit"])) == []


def _policy_state(*dst: str, src: tuple[str, ...] = ("*",), devs=None):
    pol = Policy(rules=rules(Rule(src, tuple(dst), "tcp", ports(22), "r")),
                 source=Source("orgs/acme/policy.yaml", {"rules.0.dst.0": 12,
                                                          "rules.0.src.0": 11}))
    return org(pol, devs=devs)


@pytest.mark.parametrize(("dst", "src", "code", "line"), [
    (("route:192.168.20.0/24",), ("*",), "E-REF-ROUTE", 12),
    (("route:192.168.10.0/16",), ("*",), "E-SELECTOR-INVALID", 12),  # host bits set
    (("*",), ("route:192.168.10.0/24",), "E-SELECTOR-SIDE", 11),
    (("*",), ("internet",), "E-SELECTOR-SIDE", 11),
])
def test_route_and_internet_selectors_are_checked(dst, src, code, line):
    assert _problems(_policy_state(*dst, src=src)) == [(code, line)]


def test_internet_needs_an_exit_node():
    devs = tuple(replace(d, exit_node=False, use_exit_node=None) for d in devices())
    assert _problems(_policy_state("internet", devs=devs)) == [("E-REF-EXIT", 12)]


@pytest.mark.parametrize("dst", ["route:192.168.10.0/24", "route:192.168.10.128/25", "internet"])
def test_valid_outside_selectors(dst):
    assert _problems(_policy_state(dst)) == []


def test_policy_tests_may_name_an_address_as_destination():
    from reconciler.model.repo import PolicyTest

    pol = replace(POLICIES["routes-exit"], tests=(
        PolicyTest("laptop-a", "192.168.10.5", "tcp", 22, "accept", 0),
        PolicyTest("laptop-a", "198.51.100.9", "tcp", 443, "deny", 1),
        PolicyTest("192.168.10.5", "laptop-a", "tcp", 22, "deny", 2),  # src must be a device
    ), source=Source("orgs/acme/policy.yaml", {"tests.2.src": 30}))
    assert _problems(org(pol)) == [("E-REF-DEVICE", 30)]
    from reconciler.config.semantic import check_policy_tests

    outcomes = check_policy_tests(org(replace(pol, tests=pol.tests[:2])))
    assert outcomes == []


@pytest.mark.parametrize(("selector", "valid"), [
    ("internet", True), ("route:192.168.10.0/24", True), ("route:fd00:1::/64", True),
    ("route:", False), ("route:192.168.10.0", False), ("internet:x", False),
    ("route:10.0.0.0/24;drop", False),
])
def test_policy_schema_accepts_the_new_selectors(selector, valid):
    from reconciler.config import schema

    doc = {"kind": "Policy", "rules": [{"src": ["*"], "dst": [selector]}]}
    assert schema.is_valid("Policy", doc) is valid
    if not valid:
        (problem,) = schema.check("Policy", doc, "orgs/acme/policy.yaml", {"rules.0.dst.0": 7})
        assert (problem.line, problem.code) == (7, "E-SELECTOR-INVALID")
        assert "route:CIDR or internet" in problem.remedy


@pytest.mark.parametrize(("fields", "valid"), [
    ({"use_exit_node": "exit-1"}, True), ({"masquerade_routes": False}, True),
    ({"use_exit_node": "Exit 1"}, False), ({"use_exit_node": 3}, False),
    ({"masquerade_routes": "no"}, False),
])
def test_device_schema_has_the_new_fields(fields, valid):
    from reconciler.config import schema

    key = "H68knQ+MlukXL0Qf5sS2i/l+Y7yweVjgpR1m1TjdFGc="
    doc = {"kind": "Device", "name": "laptop-b", "owner": "bob", "wireguard": {"public_key": key},
           "identity": {"public_key": key}, "tunnel_ips": ["10.10.0.3"], **fields}
    assert schema.is_valid("Device", doc) is valid


def test_manifest_carries_the_new_fields_signed_and_back():
    from reconciler.pki.manifest import check_manifest_dict, manifest_from_dict, manifest_to_dict

    m = manifest(org(POLICIES["routes-exit"], keep_sources=True))
    doc = manifest_to_dict(m)
    by_name = {d["name"]: d for d in doc["devices"]}
    assert by_name["laptop-b"]["use_exit"] == "exit-1"
    assert by_name["router-1"]["keep_sources"] is True
    assert "use_exit" not in by_name["laptop-a"] and "keep_sources" not in by_name["laptop-a"]
    back = manifest_from_dict(doc)
    assert back.device("laptop-b").use_exit_node == "exit-1"
    assert back.device("router-1").masquerade_routes is False
    assert back.device("laptop-a").masquerade_routes is True
    for bad in ({"use_exit": "Not A Label"}, {"keep_sources": False}):
        broken = {**doc, "devices": [{**doc["devices"][0], **bad}, *doc["devices"][1:]]}
        with pytest.raises(ValueError, match="use_exit|keep_sources"):
            check_manifest_dict(broken)
