"""reachability: the matrix of accepted traffic between enabled devices."""

from __future__ import annotations

from policyorgs import dev, org_state, ports

from reconciler.policy import ALL_ACCESS, Access, evaluate, reachability

ACME = org_state()


def test_matrix_cells():
    m = reachability(ACME)
    assert "db-2" not in m.devices  # disabled
    assert m.get("laptop-a", "web-1") == Access(tcp=ports(22, (8000, 8100)), icmp=True)
    assert m.get("web-1", "laptop-a") == Access(icmp=True)
    assert m.get("db-1", "web-1") == ALL_ACCESS  # ops-all
    assert m.get("web-1", "relay-1") == Access(udp=ports(53), icmp=True)
    assert m.get("printer", "relay-1") == Access(udp=ports(53), icmp=True)
    assert m.get("laptop-a", "printer") == Access(ports(631), ports(631), True)
    assert m.get("laptop-a", "laptop-a") == Access()  # no self pairs
    assert m.get("laptop-a", "db-2") == Access()


def test_pairs_sorted_and_agree_with_evaluate():
    m = reachability(ACME)
    pairs = list(m.pairs())
    assert pairs == sorted(pairs, key=lambda p: (p[0], p[1]))
    names = m.devices
    for src in names:
        for dst in names:
            if src == dst:
                continue
            cell = m.get(src, dst)
            for proto, port in (("tcp", 22), ("tcp", 5432), ("udp", 53), ("udp", 631),
                                ("icmp", None), ("tcp", 8100)):
                assert cell.allows(proto, port) == (
                    evaluate(ACME, src, dst, proto, port).action == "accept"), (src, dst, proto)


def test_full_mesh_matrix():
    m = reachability(org_state(policy=None))
    assert len(list(m.pairs())) == 6 * 5
    assert all(a == ALL_ACCESS for _, _, a in m.pairs())


def test_classes_group_devices_with_same_rules():
    devices = tuple(dev(f"n{i}", "dave", f"10.10.0.{i + 2}", "web") for i in range(50))
    m = reachability(org_state(devices=devices))
    assert len(m.classes()) == 1
    assert m.get("n1", "n2") == Access(icmp=True)
