"""reconciler.config.build: documents -> model objects, with defaults."""

from __future__ import annotations

from reconciler.config import build
from reconciler.model.repo import PortRange, Source

SRC = Source("orgs/o/policy.yaml", {"": 1})


def test_parse_port_numbers_and_ranges():
    assert build.parse_port(80) == PortRange(80, 80)
    assert build.parse_port("8000-8100") == PortRange(8000, 8100)
    assert build.parse_port("443") == PortRange(443, 443)
    assert build.parse_port("9000-8000") is None
    assert build.parse_port(0) is None and build.parse_port("1-65536") is None


def test_policy_defaults_and_indexes():
    policy = build.policy({
        "kind": "Policy",
        "groups": {"ops": {"users": ["alice"]}},
        "rules": [{"src": ["*"], "dst": ["tag:web"], "ports": [80, "8000-8001"]},
                  {"name": "ping", "src": ["*"], "dst": ["*"], "proto": "icmp"}],
        "tests": [{"src": "a", "dst": "b", "port": 80, "expect": "accept"},
                  {"src": "a", "dst": "b", "expect": "deny"}],
    }, SRC)
    assert policy.groups["ops"].users == ("alice",) and policy.groups["ops"].tags == ()
    first, second = policy.rules
    assert (first.proto, first.index, first.name) == ("any", 0, "")
    assert first.ports == (PortRange(80, 80), PortRange(8000, 8001))
    assert (second.proto, second.index, second.name) == ("icmp", 1, "ping")
    assert [(t.proto, t.port, t.index) for t in policy.tests] == [("tcp", 80, 0), ("any", None, 1)]


def test_mesh_and_org_defaults():
    mesh = build.mesh({"kind": "Mesh", "hub_url": "https://h"}, SRC)
    assert (mesh.cert_lifetime_days, mesh.manifest_lifetime_days) == (30, 7)
    assert mesh.pgp_recipients == () and mesh.require_signed_commits is False
    org = build.organization({"kind": "Organization", "name": "o", "cidr_v4": "10.0.0.0/24"},
                             SRC)
    assert (org.defaults.listen_port, org.defaults.keepalive) == (51820, 25)
    assert org.cidr_v6 is None and org.owners == ()


def test_device_optional_fields():
    dev = build.device({"kind": "Device", "name": "d", "owner": "u",
                        "wireguard": {"public_key": "k"}, "identity": {"public_key": "i"},
                        "tunnel_ips": ["10.0.0.1"], "keepalive": 0}, "o", SRC)
    assert dev.org == "o" and dev.keepalive == 0 and dev.endpoint is None
    assert (dev.relay, dev.exit_node, dev.disabled, dev.tags, dev.routes) == (
        False, False, False, (), ())
