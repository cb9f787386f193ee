"""desired_ruleset: golden nft scripts per policy and role, the semantics behind
them, and the size property (statements do not grow with devices).

Regenerate the golden files after an intended change with
``MESHOPS_UPDATE_GOLDEN=1 pytest tests/policy/test_firewall.py`` and review the diff.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest
from fworgs import POLICIES, devices, manifest, org
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policyorgs import dev, ports, rules

from reconciler.errors import ConfigError
from reconciler.model.firewall import EMPTY, Match, Rule
from reconciler.model.repo import Policy
from reconciler.model.repo import Rule as PolicyRule
from reconciler.net.nftables import render
from reconciler.policy.firewall import canonical_host, desired_ruleset, elements
from reconciler.structs import replace

GOLDEN = Path(__file__).parent / "golden" / "firewall"
CASES = [
    ("none", "laptop-a", {}),
    ("tcp-port", "web-1", {}),
    ("tcp-port", "laptop-a", {}),
    ("port-range", "web-1", {}),
    ("udp", "db-1", {}),
    ("icmp", "web-1", {"v6": True}),
    ("any-ports", "web-1", {"v6": True}),
    ("tcp-port", "relay-1", {}),
    ("none", "relay-1", {}),
    ("routes-exit", "router-1", {}),
    ("routes-exit", "router-1", {"keep_sources": True}),
    ("routes-exit", "exit-1", {"v6": True}),
    ("none", "exit-1", {}),
]


def ruleset(policy: str, me: str, **kw):
    return desired_ruleset(manifest(org(POLICIES[policy], **kw)), me, "wg0")


def _case_id(case) -> str:
    policy, me, kw = case
    return "-".join([policy, me, *sorted(k for k, v in kw.items() if v)])


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_golden(case):
    policy, me, kw = case
    text = render(ruleset(policy, me, **kw))
    path = GOLDEN / f"{_case_id(case)}.nft"
    if os.environ.get("MESHOPS_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def _accepts(chain) -> list[Rule]:
    return [r for r in chain.rules if r.verdict == "accept" and r.matches
            and r.matches[0].field != "ct state"]


def test_receiver_accepts_only_what_the_rule_allows():
    rs = ruleset("tcp-port", "web-1")
    (rule,) = _accepts(rs.chain("mesh_in"))
    src = rs.set(rule.matches[0].value[0][1:])
    assert src.elements == ("10.10.0.2",)  # laptop-a only
    assert rule.matches[1] == Match("tcp dport", ("8080",))
    mesh_in = rs.chain("mesh_in")
    assert mesh_in.rules[0].matches[0].value == ("established", "related")
    assert mesh_in.rules[1].verdict == "drop" and mesh_in.rules[-1] == Rule((), "drop")
    assert rs.chain("input").rules[0].matches == (Match("iifname", ("wg0",)),)
    assert rs.chain("forward") is None and rs.chain("postrouting") is None


def test_the_sender_side_accepts_nothing_new():
    assert _accepts(ruleset("tcp-port", "laptop-a").chain("mesh_in")) == []


def test_full_mesh_accepts_the_org_cidr_only():
    rs = ruleset("none", "laptop-a")
    (rule,) = _accepts(rs.chain("mesh_in"))
    assert rs.set(rule.matches[0].value[0][1:]).elements == ("10.10.0.0/24",)


def test_relay_filters_forwarded_pairs():
    rs = ruleset("tcp-port", "relay-1")
    (rule,) = _accepts(rs.chain("mesh_fwd"))
    fields = [m.field for m in rule.matches]
    assert fields == ["ip saddr", "ip daddr", "tcp dport"]
    assert rs.set(rule.matches[1].value[0][1:]).elements == ("10.10.0.4",)  # web-1
    assert [r.matches[0].field for r in rs.chain("forward").rules] == ["iifname", "oifname"]


def test_router_masquerades_unless_sources_are_kept():
    nat = ruleset("routes-exit", "router-1").chain("postrouting")
    assert [r.verdict for r in nat.rules] == ["masquerade"]
    assert ruleset("routes-exit", "router-1", keep_sources=True).chain("postrouting") is None
    fwd = _accepts(ruleset("routes-exit", "router-1").chain("mesh_fwd"))
    lan = [r for r in fwd if r.comment.endswith("lan-ssh")]
    assert lan and lan[0].matches[-1] == Match("tcp dport", ("22",))


def test_exit_node_forwards_and_masquerades_the_internet_only_for_its_rule():
    rs = ruleset("routes-exit", "exit-1", v6=True)
    internet = [r for r in rs.chain("mesh_fwd").rules if any(m.negate for m in r.matches)]
    assert {r.comment for r in internet} == {"rule 1 bob-internet"}
    for r in internet:
        assert rs.set(r.matches[0].value[0][1:]).elements in (("10.10.0.3",),
                                                              ("fd10:10::3",))
    assert [r.verdict for r in rs.chain("postrouting").rules] == ["masquerade"] * 2
    # a relay is not an exit node: no internet forwarding there
    assert not [r for r in ruleset("routes-exit", "relay-1").chain("mesh_fwd").rules
                if any(m.negate for m in r.matches)]


def test_not_in_the_manifest_means_no_table():
    assert desired_ruleset(manifest(org(None)), "ghost", "wg0") == EMPTY


@pytest.mark.parametrize("bad", ['wg0"; flush ruleset', "", "a" * 16, "wg 0", "wg:0", "wg/0"])
def test_interface_names_cannot_inject(bad):
    with pytest.raises(ConfigError, match="interface name"):
        desired_ruleset(manifest(org(None)), "laptop-a", bad)


def test_rule_names_are_sanitised_in_comments():
    pol = Policy(rules=rules(PolicyRule(("*",), ("*",), "tcp", ports(1), 'x"; flush ruleset')))
    text = render(desired_ruleset(manifest(org(pol)), "web-1", "wg0"))
    assert 'comment "rule 0 x__ flush ruleset"\n' in text
    assert "\nflush" not in text and ";" not in text.replace("; policy accept;", "")


@pytest.mark.parametrize(("hosts", "nets", "expected"), [
    (["10.0.0.3", "10.0.0.2", "10.0.0.3"], [], ("10.0.0.2", "10.0.0.3")),  # no merging
    (["10.0.0.2"], ["10.0.0.0/24"], ("10.0.0.0/24",)),                     # host inside
    ([], ["192.168.0.0/25", "192.168.0.128/25", "192.168.0.7/32"], ("192.168.0.0/24",)),
    ([], ["192.168.1.5/32"], ("192.168.1.5",)),                            # bare host
    (["fd00::10", "fd00::9"], [], ("fd00::10", "fd00::9")),                # string order
    ([], [], ()),
])
def test_elements(hosts, nets, expected):
    assert elements(hosts, [ipaddress.ip_network(n) for n in nets]) == expected


@pytest.mark.parametrize(("text", "canonical"), [
    ("FD10:0:0::5", "fd10::5"), ("10.0.0.1", "10.0.0.1"), ("10.0.0.1/24", "10.0.0.1"),
    ("nonsense", None), ("fd10:0000::0001", "fd10::1"),
])
def test_canonical_host(text, canonical):
    assert canonical_host(text) == canonical


@settings(max_examples=300, deadline=None)
@given(st.ip_addresses() | st.ip_addresses().map(lambda a: a.exploded))
def test_canonical_host_agrees_with_ipaddress(addr):
    text = str(addr)
    assert canonical_host(text) == str(ipaddress.ip_address(text))
    assert canonical_host(text.upper()) == str(ipaddress.ip_address(text))


def test_non_canonical_manifest_addresses_still_read_back_equal():
    devs = tuple(replace(d, tunnel_ips=("10.10.0.2", "FD10:10:0::2")) if d.name == "laptop-a"
                 else d for d in devices(v6=True))
    rs = desired_ruleset(manifest(org(POLICIES["tcp-port"], devs=devs, v6=True)), "web-1",
                         "wg0")
    assert rs.set("r0_src_6").elements == ("fd10:10::2",)


def test_a_plain_device_carries_no_set_of_rules_not_aimed_at_it():
    rs = ruleset("tcp-port", "laptop-a")
    assert rs.sets == () and rs.statements == 4


# --- size: flat in the number of devices -------------------------------------

TAGS = ("web", "db", "ops", "lab")
USERS = ("alice", "bob", "carol", "ops")


def _org_of(n: int, policy: Policy):
    base = devices()
    extra = tuple(
        dev(f"d{i}", USERS[i % 4], f"10.10.{1 + i // 250}.{1 + i % 250}", TAGS[i % 4],
            TAGS[(i // 4) % 4])
        for i in range(n))
    state = org(policy, devs=base + extra)
    return replace(state, organization=replace(state.organization, cidr_v4="10.10.0.0/16"))


selector = st.sampled_from([*(f"tag:{t}" for t in TAGS), *(f"user:{u}" for u in USERS), "*",
                            "device:web-1"])
rule = st.builds(
    PolicyRule, st.lists(selector, min_size=1, max_size=3).map(tuple),
    st.lists(selector, min_size=1, max_size=3).map(tuple),
    st.sampled_from(["tcp", "udp", "icmp", "any"]),
    st.lists(st.integers(1, 65535), max_size=3).map(lambda ps: ports(*ps)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rule, min_size=1, max_size=8), st.sampled_from(["relay-1", "web-1"]))
def test_statement_count_does_not_depend_on_the_number_of_devices(policy_rules, me):
    policy = Policy(rules=rules(*(
        r if r.proto != "icmp" else replace(r, ports=()) for r in policy_rules)))
    counts = {n: desired_ruleset(manifest(_org_of(n, policy)), me, "wg0").statements
              for n in (16, 300)}
    assert counts[16] == counts[300]
    assert counts[16] <= 5 + 2 * 2 * 8 * 2  # fixed part + per rule: families x (in, fwd) x 2


@pytest.mark.parametrize("bad", [
    {"src": ["*"]},                                        # no dst
    {"src": ["*"], "dst": ["*"], "ports": ["eighty"]},     # not a port
    {"src": "*", "dst": 5},                                # wrong types
])
def test_a_malformed_compiled_rule_is_a_clear_error(bad):
    m = manifest(org(POLICIES["tcp-port"]))
    m = replace(m, policy={"version": 1, "rules": [bad]})
    with pytest.raises(ConfigError, match="compiled policy rule 0 is malformed"):
        desired_ruleset(m, "web-1", "wg0")
