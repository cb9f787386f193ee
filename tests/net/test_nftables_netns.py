"""The real nft in a fresh network namespace: apply, read back, no-op second
plan, drift repaired, atomic failure, other tables untouched; policy routing
rules applied and removed with the real kernel."""

from __future__ import annotations

import subprocess

import pytest
from fworgs import POLICIES, manifest, org
from hypothesis import given, settings
from hypothesis import strategies as st
from policyorgs import ports

from reconciler.converge import plan_firewall, plan_routing
from reconciler.errors import BackendError, BackendUnavailable
from reconciler.model.firewall import EMPTY, Chain, Match, Rule, Ruleset
from reconciler.model.repo import Policy
from reconciler.model.repo import Rule as PolicyRule
from reconciler.model.routing import NO_ROUTING
from reconciler.net.iproute import IPRouteLinks
from reconciler.net.nftables import Nftables
from reconciler.policy.exitroute import exit_routing
from reconciler.policy.firewall import desired_ruleset

pytestmark = pytest.mark.root

CASES = [(p, me, v6) for p in POLICIES for me in ("laptop-a", "web-1", "relay-1", "router-1",
                                                  "exit-1") for v6 in (False, True)]


def nft(ns: str, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", *args], input=stdin, text=True,
                          capture_output=True, check=True).stdout


def test_every_builder_shape_reads_back_equal(nft_netns):
    """The normal form holds for every policy x role x family the builder makes:
    after applying, a second plan is empty."""
    fw = Nftables(nft_netns)
    for policy, me, v6 in CASES:
        desired = desired_ruleset(manifest(org(POLICIES[policy], v6=v6)), me, "wg0")
        ops = plan_firewall(desired, fw.observe(), "wg0")
        for op in ops:
            fw.apply(op.ruleset)
        assert plan_firewall(desired, fw.observe(), "wg0") == (), (policy, me, v6)


def test_absent_table_and_removal(nft_netns):
    fw = Nftables(nft_netns)
    assert fw.observe() == EMPTY
    desired = desired_ruleset(manifest(org(POLICIES["tcp-port"])), "web-1", "wg0")
    fw.apply(desired)
    assert fw.observe() == desired
    fw.apply(EMPTY)
    assert fw.observe() == EMPTY
    assert "meshops" not in nft(nft_netns, "list", "tables")


@pytest.mark.parametrize("drift", [
    ["delete", "table", "inet", "meshops"],
    ["flush", "ruleset"],
    ["flush", "chain", "inet", "meshops", "mesh_in"],
    ["add", "rule", "inet", "meshops", "mesh_in", "position", "0", "accept"],
    ["add", "element", "inet", "meshops", "r0_src_4", "{", "10.10.0.99", "}"],
    ["add", "chain", "inet", "meshops", "extra"],
])
def test_drift_is_detected_and_repaired(nft_netns, drift):
    fw = Nftables(nft_netns)
    desired = desired_ruleset(manifest(org(POLICIES["tcp-port"])), "web-1", "wg0")
    fw.apply(desired)
    nft(nft_netns, *drift)
    (op,) = plan_firewall(desired, fw.observe(), "wg0")
    fw.apply(op.ruleset)
    assert plan_firewall(desired, fw.observe(), "wg0") == ()


def test_failed_apply_leaves_the_old_ruleset(nft_netns):
    fw = Nftables(nft_netns)
    old = desired_ruleset(manifest(org(POLICIES["udp"])), "db-1", "wg0")
    fw.apply(old)
    broken = Ruleset.of(old.sets, [*old.chains, Chain("bad", (
        Rule((Match("ip saddr", ("@no_such_set",)),), "accept"),))])
    with pytest.raises(BackendError, match="refused by nft, nothing changed.*no_such_set"):
        fw.apply(broken)
    assert fw.observe() == old


def test_other_tables_are_untouched(nft_netns):
    other = ("table inet other {\n chain c {\n type filter hook input priority 10; "
             "policy accept;\n tcp dport 22 counter accept\n }\n}\n"
             "table ip legacy {\n chain c {\n ip saddr 192.0.2.1 drop\n }\n}\n")
    nft(nft_netns, "-f", "-", stdin=other)
    before = nft(nft_netns, "list", "table", "inet", "other") + \
        nft(nft_netns, "list", "table", "ip", "legacy")
    fw = Nftables(nft_netns)
    for policy in ("none", "routes-exit"):
        fw.apply(desired_ruleset(manifest(org(POLICIES[policy])), "exit-1", "wg0"))
    fw.apply(EMPTY)
    after = nft(nft_netns, "list", "table", "inet", "other") + \
        nft(nft_netns, "list", "table", "ip", "legacy")
    assert after == before


def test_missing_namespace_is_unavailable():
    with pytest.raises(BackendUnavailable):
        Nftables("mo-net-absent-nft").observe()


def test_exit_routing_applies_and_restores(netns):
    """The wg-quick layout on the real kernel, then removed again: the
    namespace's own rules come back exactly."""
    subprocess.run(["ip", "-n", netns, "link", "add", "mo-ex", "type", "veth", "peer", "name",
                    "mo-ey"], check=True)
    subprocess.run(["ip", "-n", netns, "link", "set", "mo-ex", "up"], check=True)
    subprocess.run(["ip", "-n", netns, "link", "set", "mo-ey", "up"], check=True)
    rules_before = subprocess.run(["ip", "-n", netns, "rule", "show"], capture_output=True,
                                  text=True, check=True).stdout
    m = manifest(org(POLICIES["routes-exit"], v6=True))
    desired = exit_routing(m, "laptop-b", "mo-ex", bypass=["203.0.113.10"])
    links = IPRouteLinks(netns)
    try:
        links.apply(plan_routing(desired, links.observe_routing(51820), "mo-ex"))
        observed = links.observe_routing(51820, desired.fwmark)
        assert observed == desired
        assert plan_routing(desired, observed) == ()
        # a packet to the internet now goes to the tunnel, the bypass stays on main
        got = subprocess.run(["ip", "-n", netns, "route", "get", "198.51.100.9"],
                             capture_output=True, text=True, check=False).stdout
        assert "dev mo-ex" in got and "table 51820" in got
        links.apply(plan_routing(NO_ROUTING, links.observe_routing(51820), "mo-ex"))
        assert links.observe_routing(51820) == NO_ROUTING
    finally:
        links.close()
    rules_after = subprocess.run(["ip", "-n", netns, "rule", "show"], capture_output=True,
                                 text=True, check=True).stdout
    assert rules_after == rules_before


_selector = st.sampled_from(["*", "tag:laptop", "tag:web", "user:ops", "device:db-1",
                             "route:192.168.10.0/24", "route:192.168.10.128/25", "internet"])
_src = st.sampled_from(["*", "tag:laptop", "tag:web", "user:ops", "device:db-1"])


@st.composite
def _policy(draw):
    out = []
    for i in range(draw(st.integers(1, 6))):
        proto = draw(st.sampled_from(["tcp", "udp", "icmp", "any"]))
        chosen = () if proto == "icmp" else tuple(draw(st.lists(
            st.integers(1, 65535) | st.tuples(st.integers(1, 60000), st.integers(0, 5000)).map(
                lambda t: (t[0], min(65535, t[0] + t[1]))), max_size=4)))
        out.append(PolicyRule(tuple(draw(st.lists(_src, min_size=1, max_size=3))),
                              tuple(draw(st.lists(_selector, min_size=1, max_size=3))), proto,
                              ports(*chosen), draw(st.sampled_from(["", "a name", "x\"y;z"])),
                              i))
    return Policy(rules=tuple(out))


def test_random_policies_read_back_equal(nft_netns):
    """For random policies, every role's ruleset survives apply + read-back unchanged
    (the normal form holds beyond the golden shapes), so a second plan is empty."""
    fw = Nftables(nft_netns)

    @settings(max_examples=15, deadline=None, database=None)
    @given(_policy(), st.booleans())
    def check(policy, v6):
        m = manifest(org(policy, v6=v6))
        for me in ("laptop-a", "relay-1", "router-1", "exit-1"):
            desired = desired_ruleset(m, me, "wg0")
            fw.apply(desired)
            assert plan_firewall(desired, fw.observe(), "wg0") == (), (policy, me)

    check()
