"""compile_policy / evaluate_compiled / peers_allowed."""

from __future__ import annotations

import json

import pytest
from policyorgs import ACME_DEVICES, dev, manifest_of, org_state

from reconciler import structs
from reconciler.policy import compile_policy, evaluate, evaluate_compiled, peers_allowed

ACME = org_state()


def test_compiled_form_is_compact_json():
    compiled = compile_policy(ACME)
    doc = compiled.as_dict()
    assert json.loads(json.dumps(doc)) == doc
    assert doc == {"version": 1, "rules": [
        {"src": ["g:eng"], "dst": ["t:web"], "proto": "tcp", "ports": ["22", "8000-8100"],
         "name": "eng-web"},
        {"src": ["g:eng"], "dst": ["t:db"], "proto": "tcp", "ports": ["5432"], "name": "eng-db"},
        {"src": ["g:ops"], "dst": ["*"], "proto": "any", "name": "ops-all"},
        {"src": ["*"], "dst": ["*"], "proto": "icmp", "name": "ping"},
        {"src": ["u:dave"], "dst": ["d:relay-1"], "proto": "udp", "ports": ["53"], "name": "dns"},
        {"src": ["*"], "dst": ["g:printers"], "proto": "any", "ports": ["631"]},
    ]}


def test_labels_only_what_rules_use():
    compiled = compile_policy(ACME)
    assert compiled.labels("laptop-a") == ("g:eng",)  # u:alice is not used by any rule
    assert compiled.labels("relay-1") == ("g:ops",)  # via tag relay; t:relay unused
    assert compiled.labels("printer") == ("g:printers", "u:dave")
    assert compiled.labels("web-1") == ("t:web", "u:dave")
    assert compiled.labels("db-2") == ()  # disabled: not in the manifest


def test_size_independent_of_device_count():
    small = org_state(devices=ACME_DEVICES)
    many = ACME_DEVICES + tuple(dev(f"n{i}", "alice", f"10.10.{i // 200 + 1}.{i % 200 + 2}",
                                    "web") for i in range(1000))
    big = org_state(devices=many, cidr="10.10.0.0/16")
    assert compile_policy(small).as_dict() == compile_policy(big).as_dict()
    compiled = compile_policy(big)
    worst = max(len(",".join(compiled.labels(d.name))) for d in many)
    assert worst < 40


def test_no_policy_compiles_to_none():
    compiled = compile_policy(org_state(policy=None))
    assert compiled.as_dict() is None and compiled.labels("laptop-a") == ()


@pytest.mark.parametrize("src,dst,proto,port", [
    ("laptop-a", "web-1", "tcp", 22), ("laptop-a", "web-1", "tcp", 23),
    ("db-1", "web-1", "any", None), ("printer", "relay-1", "udp", 53),
    ("laptop-a", "printer", "icmp", None), ("laptop-a", "db-2", "tcp", 5432),
    ("ghost", "web-1", "tcp", 1),
])
def test_evaluate_compiled_matches_evaluate(src, dst, proto, port):
    compiled = compile_policy(ACME)
    labels = {d.name: compiled.labels(d.name) for d in ACME.enabled_devices()}
    got = evaluate_compiled(compiled.as_dict(), labels, src, dst, proto, port)
    want = evaluate(ACME, src, dst, proto, port)
    assert (got.action, got.rule) == (want.action, want.rule)


def test_evaluate_compiled_full_mesh():
    labels = {"a": (), "b": ()}
    assert evaluate_compiled(None, labels, "a", "b", "tcp", 1).action == "accept"
    assert evaluate_compiled(None, labels, "a", "zz", "tcp", 1).action == "deny"


def test_peers_allowed_either_direction():
    m = manifest_of(ACME)
    everyone = {d.name for d in ACME.enabled_devices()}
    # ICMP from * to * makes everyone a peer of everyone in ACME; drop that rule.
    assert peers_allowed(m, "web-1") == everyone - {"web-1"}
    rules = [r for r in m.policy["rules"] if r.get("name") != "ping"]
    m2 = structs.replace(m, policy={"version": 1, "rules": rules})
    assert peers_allowed(m2, "web-1") == {"laptop-a", "laptop-b", "db-1", "relay-1", "printer"}
    assert peers_allowed(m2, "printer") == everyone - {"printer"}  # * -> printers
    assert peers_allowed(m2, "laptop-a") == {"web-1", "db-1", "relay-1", "printer"}
    assert peers_allowed(m2, "db-2") == frozenset()  # disabled: not in the manifest


def test_peers_allowed_full_mesh_and_never_self():
    m = manifest_of(org_state(policy=None))
    assert peers_allowed(m, "laptop-a") == {d.name for d in ACME.enabled_devices()} - {
        "laptop-a"}
