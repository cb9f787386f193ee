"""Hypothesis: the compiled form, the matrix and peers_allowed agree with evaluate."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from policyorgs import dev, manifest_of, org_state, repo, rules

from reconciler.model.repo import Group, Policy, PortRange, Rule
from reconciler.policy import (
    compile_policy,
    evaluate,
    evaluate_compiled,
    peers_allowed,
    reachability,
)
from reconciler.policy.selectors import device_labels

USERS = ("alice", "bob", "carol", "dave", "erin")
TAGS = ("web", "db", "relay", "x")
GROUPS = ("g1", "g2", "g3")
DEVS = tuple(f"d{i}" for i in range(8))
PROTOS = ("tcp", "udp", "icmp", "any")
PORTS = st.integers(1, 65535) | st.sampled_from([1, 22, 53, 80, 443, 65535])

selector = st.one_of(
    st.just("*"),
    st.sampled_from(GROUPS + ("nogroup",)).map(lambda g: f"group:{g}"),
    st.sampled_from(TAGS).map(lambda t: f"tag:{t}"),
    st.sampled_from(DEVS + ("ghost",)).map(lambda d: f"device:{d}"),
    st.sampled_from(USERS + ("nobody",)).map(lambda u: f"user:{u}"),
)


@st.composite
def port_range(draw):
    lo = draw(PORTS)
    return PortRange(lo, draw(st.integers(lo, min(lo + 200, 65535))))


@st.composite
def a_rule(draw):
    proto = draw(st.sampled_from(PROTOS))
    ports = () if proto == "icmp" else tuple(draw(st.lists(port_range(), max_size=3)))
    return Rule(tuple(draw(st.lists(selector, min_size=1, max_size=3))),
                tuple(draw(st.lists(selector, min_size=1, max_size=3))),
                proto, ports, draw(st.sampled_from(["", "r"])))


@st.composite
def an_org(draw):
    n = draw(st.integers(1, len(DEVS)))
    devices = tuple(
        dev(DEVS[i], draw(st.sampled_from(USERS)), f"10.10.0.{i + 2}",
            *draw(st.lists(st.sampled_from(TAGS), unique=True, max_size=2)),
            disabled=draw(st.booleans()))
        for i in range(n)
    )
    if draw(st.integers(0, 9)) == 0:
        return org_state(devices=devices, policy=None)
    groups = {
        g: Group(g, users=tuple(draw(st.lists(st.sampled_from(USERS), unique=True, max_size=2))),
                 tags=tuple(draw(st.lists(st.sampled_from(TAGS), unique=True, max_size=2))),
                 devices=tuple(draw(st.lists(st.sampled_from(DEVS), unique=True, max_size=2))))
        for g in GROUPS
    }
    policy = Policy(groups=groups, rules=rules(*draw(st.lists(a_rule(), max_size=6))))
    return org_state(devices=devices, policy=policy)


query = st.tuples(st.sampled_from(DEVS + ("ghost",)), st.sampled_from(DEVS),
                  st.sampled_from(PROTOS), st.none() | PORTS)


@settings(max_examples=200, deadline=None)
@given(an_org(), st.lists(query, min_size=1, max_size=20))
def test_evaluate_compiled_agrees_with_evaluate(state, queries):
    compiled = compile_policy(state)
    doc = json.loads(json.dumps(compiled.as_dict()))  # as it travels in the manifest
    labels = {d.name: compiled.labels(d.name) for d in state.enabled_devices()}
    if state.policy is not None:  # the indexed labels equal the per-device reference
        used = {lab for r in doc["rules"] for lab in (*r["src"], *r["dst"])}
        for d in state.enabled_devices():
            assert labels[d.name] == tuple(sorted(device_labels(state.policy, d) & used))
    for src, dst, proto, port in queries:
        want = evaluate(state, src, dst, proto, port)
        got = evaluate_compiled(doc, labels, src, dst, proto, port)
        assert (got.action, got.rule) == (want.action, want.rule), (src, dst, proto, port)


@settings(max_examples=200, deadline=None)
@given(an_org(), st.lists(st.tuples(st.sampled_from(("tcp", "udp", "icmp")), st.none() | PORTS),
                          min_size=1, max_size=6))
def test_matrix_agrees_with_evaluate(state, flows):
    m = reachability(state)
    for src in m.devices:
        for dst in m.devices:
            if src == dst:
                continue
            for proto, port in flows:
                accepted = evaluate(state, src, dst, proto, port).action == "accept"
                assert m.get(src, dst).allows(proto, port) == accepted


@settings(max_examples=200, deadline=None)
@given(an_org())
def test_peers_allowed_is_the_symmetric_matrix(state):
    m = reachability(state)
    manifest = manifest_of(state)
    for me in m.devices:
        want = {o for o in m.devices if o != me and (m.get(me, o) or m.get(o, me))}
        assert peers_allowed(manifest, me) == want


@settings(max_examples=150, deadline=None)
@given(an_org(), an_org())
def test_plan_reach_diff_matches_pairwise_diff(base, head):
    from reconciler.policy.review import review_diff

    mb, mh = reachability(base), reachability(head)
    names = sorted(set(mb.devices) | set(mh.devices))
    want = {(s, d): (mh.get(s, d) - mb.get(s, d), mb.get(s, d) - mh.get(s, d))
            for s in names for d in names if s != d and mb.get(s, d) != mh.get(s, d)}
    report = review_diff(repo(base), repo(head))
    got: dict = {}
    for org in report.orgs:
        for c in org.reach:
            for s in c.srcs:
                for d in c.dsts:
                    if s != d:
                        assert (s, d) not in got
                        got[(s, d)] = (c.gained, c.lost)
    assert got == want
    assert report.summary().gained_pairs == sum(1 for g, _ in want.values() if g)
    assert report.summary().lost_pairs == sum(1 for _, lost in want.values() if lost)
