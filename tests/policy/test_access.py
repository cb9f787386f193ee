"""Access: port-range union, difference and rendering."""

from __future__ import annotations

from policyorgs import ports

from reconciler.model.repo import PortRange, Rule
from reconciler.policy.access import (
    ALL_ACCESS,
    NO_ACCESS,
    Access,
    merge_ranges,
    subtract_ranges,
)


def test_merge_sorts_joins_adjacent_and_clamps():
    assert merge_ranges(ports((10, 20), 21, (5, 6), (15, 30), (0, 2))) == ports(
        (1, 2), (5, 6), (10, 30))
    assert merge_ranges(ports((60000, 70000))) == ports((60000, 65535))


def test_subtract_splits_ranges():
    assert subtract_ranges(ports((1, 100)), ports((10, 20), (50, 50))) == ports(
        (1, 9), (21, 49), (51, 100))
    assert subtract_ranges(ports((10, 20)), ports((1, 100))) == ()
    assert subtract_ranges(ports(22), ()) == ports(22)


def test_of_rule_per_proto():
    assert Access.of_rule(Rule(("*",), ("*",))) == ALL_ACCESS
    tcp = Access.of_rule(Rule(("*",), ("*",), "tcp", ports(443, 22)))
    assert tcp == Access(tcp=ports(22, 443))
    anyp = Access.of_rule(Rule(("*",), ("*",), "any", ports(53)))
    assert anyp == Access(ports(53), ports(53), True)  # ICMP has no ports
    assert Access.of_rule(Rule(("*",), ("*",), "icmp")) == Access(icmp=True)


def test_union_difference_and_text():
    a = Access(tcp=ports(22, (80, 81)), icmp=True)
    b = Access(tcp=ports(80), udp=ports(53))
    assert str(a | b) == "tcp 22,80-81; udp 53; icmp"
    assert str(a - b) == "tcp 22,81; icmp"
    assert str(b - a) == "udp 53"
    assert not (a - a)
    assert str(ALL_ACCESS) == "all" and str(NO_ACCESS) == "none"
    assert str(Access(tcp=(PortRange(1, 65535),))) == "tcp all"


def test_allows():
    a = Access(tcp=ports((8000, 8100)), icmp=True)
    assert a.allows("tcp", 8000) and not a.allows("tcp", 7999)
    assert a.allows("tcp", None) and not a.allows("udp", None)
    assert a.allows("icmp", 9)
    assert not a.allows("any", 8000)
    assert ALL_ACCESS.allows("any", 1)
