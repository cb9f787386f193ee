"""Policy on the wire, in the netns NAT lab (root; runs in CI): issue 11.

One lab for the module, with the lab's real policy (``runner.LAB_POLICY``):
every pair pings, a few services are open, the rest is denied. The tests send
real TCP, UDP and ICMP flows between the namespaces and compare what the wire
did with ``policy.evaluate``: over direct, LAN and relayed paths, through the
subnet router to a host that runs no agent, and out of the exit node. Order
matters and is explicit; the random-policy test runs last and restores the
lab's policy.
"""

from __future__ import annotations

import os
import random
import subprocess

import pytest

from reconciler.lab import flows as fl
from reconciler.lab import scenarios
from reconciler.lab.netns import in_ns, stop_proc
from reconciler.lab.runner import LAB_POLICY, Lab
from reconciler.lab.topology import Topology
from reconciler.net.nftables import Nftables

pytestmark = [pytest.mark.root, pytest.mark.e2e]
PORTS = (("tcp", 22), ("tcp", 8080), ("udp", 5353), ("udp", 9090))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tag = os.getpid() % 1000
    lab = Lab(Topology(prefix=f"mo-pol{tag}", wg_prefix=f"p{tag}"),
              tmp_path_factory.mktemp("policy-lab"))
    try:
        lab.up()
        assert scenarios.converge(lab).seconds is not None, "the lab did not converge"
        yield lab
    finally:
        notes = lab.down()
        assert not notes, notes


def _disagreements(lab: Lab, flows: list[fl.Flow]) -> list[fl.Verdict]:
    wire = lab.send(flows)
    engine = fl.engine_verdicts(lab.org_state(), flows)
    return [v for v in fl.compare(wire, engine) if not v.agree]


def test_allowed_flows_carry_data_both_ways_denied_flows_carry_nothing(lab):
    flows = [fl.Flow(a, b, proto, port) for a, b in lab.pairs() for proto, port in PORTS]
    engine = fl.engine_verdicts(lab.org_state(), flows)
    assert any(engine.values()) and not all(engine.values())  # both kinds are probed
    bad = _disagreements(lab, flows)
    print(f"{len(flows)} flows over {len(lab.pairs())} pairs, {len(bad)} disagreements")
    assert bad == [], [str(v.flow) + f" wire={v.wire} engine={v.engine}" for v in bad]
    # the pairs behind symmetric NATs (b1, c1) go through a relay: both verdicts held there
    paths = {(r.src, r.dst): r.path for r in lab.table()}
    assert paths[("b1", "c1")].startswith("relay:")
    assert engine[fl.Flow("b1", "c1", "tcp", 22)] is False
    assert engine[fl.Flow("c1", "d1", "udp", 5353)] is True


def test_the_relay_filters_what_it_forwards_even_when_the_receiver_does_not(lab):
    """c1's own firewall is gone (agent stopped, table deleted): the relay still
    drops the denied flow from b1, and still forwards what policy allows."""
    relay = lab.probe("b1", "c1").path.split(":", 1)[1]
    agent = next(p for p in lab.ledger.procs if p.name == "agent-c1")
    stop_proc(agent)
    lab.ledger.procs.remove(agent)
    ns = lab.topo.ns("c1")
    subprocess.run(in_ns(ns, "nft", "delete", "table", "inet", "meshops"), check=True)
    assert Nftables(ns).observe().empty
    try:
        denied = fl.Flow("b1", "c1", "tcp", 22)
        allowed = fl.Flow("a1", "c1", "tcp", 22)  # a1 may ssh anywhere
        got = lab.send([denied, allowed])
        assert got == {denied: False, allowed: True}, f"through {relay}"
        assert lab.probe("b1", "c1").ok  # ping is allowed, also through the relay
    finally:
        lab.start_agent("c1")
    # the restarted agent repairs the deleted table on its first pass
    assert lab.wait_until(lambda: not Nftables(ns).observe().empty, 30) is not None


@pytest.mark.parametrize("damage", [["delete", "table", "inet", "meshops"],
                                    ["flush", "ruleset"]])
def test_drift_is_repaired_on_the_next_pass(lab, damage):
    ns = lab.topo.ns("d1")
    before = Nftables(ns).observe()
    assert not before.empty
    subprocess.run(in_ns(ns, "nft", *damage), check=True)
    assert Nftables(ns).observe() != before
    assert lab.wait_until(lambda: Nftables(ns).observe() == before, 30) is not None
    assert lab.send([fl.Flow("b1", "d1", "udp", 5353)]) == {fl.Flow("b1", "d1", "udp", 5353): True}


def test_a_host_without_an_agent_is_reached_through_the_subnet_router_only_as_allowed(lab):
    host = lab.topo.lan_host
    flows = [fl.Flow("b1", host, "tcp", 80), fl.Flow("d1", host, "tcp", 80),
             fl.Flow("b1", host, "tcp", 22), fl.Flow("c1", host, "tcp", 80),
             fl.Flow("pub", host, "udp", 5353)]
    got = lab.send(flows)
    assert got == {flows[0]: True, flows[1]: True, flows[2]: False, flows[3]: False,
                   flows[4]: False}
    # the router masquerades towards its LAN by default
    seen = fl.whoami(lab.topo.ns("b1"), lab.topo.ns(host), lab.topo.lan_host_ip, port=80)
    assert seen == f"{lab.topo.router_lan}.1"


def test_the_exit_node_carries_the_clients_internet_traffic_and_removal_restores_it(lab):
    t = lab.topo
    pub_ip = t.node(t.exit_node).ip
    gw_c = t.site(t.node(t.exit_client).site).wan_ip
    assert lab.seen_source(t.exit_client) == pub_ip
    assert lab.seen_source("b1") == t.site("b").wan_ip  # others keep their own route
    before = lab.applied_serials()
    lab.set_exit_node(t.exit_client, None)
    assert lab.wait_applied(before) is not None
    assert lab.wait_until(lambda: lab.seen_source(t.exit_client) == gw_c, 30) is not None
    rules = subprocess.run(in_ns(t.ns(t.exit_client), "ip", "rule", "show"),
                           capture_output=True, text=True, check=True).stdout
    assert "51820" not in rules  # the policy-routing rules are gone
    before = lab.applied_serials()
    lab.set_exit_node(t.exit_client, t.exit_node)
    assert lab.wait_applied(before) is not None
    assert lab.wait_until(lambda: lab.seen_source(t.exit_client) == pub_ip, 30) is not None


def _random_policy(rng: random.Random, names: list[str]) -> str:
    lines = ["kind: Policy", "description: a random policy (tests/lab/test_policy_e2e.py)",
             "rules:"]
    for i in range(rng.randint(3, 7)):
        src = rng.sample(names, rng.randint(1, 3))
        dst = rng.sample(names, rng.randint(1, 3))
        proto = rng.choice(["tcp", "udp", "icmp", "tcp", "udp"])
        lines += [f"  - name: r{i}",
                  f"    src: [{', '.join('device:' + n for n in src)}]",
                  f"    dst: [{', '.join('device:' + n for n in dst)}]",
                  f"    proto: {proto}"]
        if proto != "icmp":
            ports = sorted(rng.sample([22, 80, 5353, 8080], rng.randint(1, 2)))
            lines.append(f"    ports: [{', '.join(map(str, ports))}]")
    return "\n".join(lines) + "\n"


def test_wire_agrees_with_the_engine_for_random_policies(lab):
    names = sorted(lab.keys)
    total = disagreements = 0
    try:
        for seed in (11, 23, 47):
            rng = random.Random(seed)
            before = lab.applied_serials()
            lab.commit_policy(_random_policy(rng, names), f"random policy {seed}")
            assert lab.wait_applied(before) is not None, f"policy {seed} was not applied"
            flows = fl.sample_flows(names, [22, 80, 5353, 8080], 60, seed=seed)
            bad = _disagreements(lab, flows)
            total += len(flows)
            disagreements += len(bad)
            assert bad == [], [f"seed {seed}: {v.flow} wire={v.wire} engine={v.engine}"
                                for v in bad]
    finally:
        print(f"wire versus engine: {total} flows, {disagreements} disagreements")
        before = lab.applied_serials()
        lab.commit_policy(LAB_POLICY.format(lan=lab.topo.router_lan,
                                            client=lab.topo.exit_client), "restore")
        lab.wait_applied(before)
