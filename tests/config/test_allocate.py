"""next_free: lowest free host address; never reuses or renumbers."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.config.allocate import host_bounds, next_free
from reconciler.errors import ValidationError
from reconciler.model.repo import Device, Organization, OrgState, Source


def device(name: str, *ips: str, disabled: bool = False) -> Device:
    return Device(name=name, org="acme", owner="alice", wireguard_public_key="k" + name,
                  identity_public_key="i" + name, tunnel_ips=ips, disabled=disabled)


def state(cidr4: str, *devices: Device, cidr6: str | None = None) -> OrgState:
    org = Organization(name="acme", cidr_v4=cidr4, cidr_v6=cidr6,
                       source=Source("orgs/acme/organization.yaml", {"cidr_v4": 4, "cidr_v6": 5}))
    return OrgState(organization=org, devices={d.name: d for d in devices})


@pytest.mark.parametrize("cidr,held,want", [
    ("10.0.0.0/24", [], "10.0.0.1"),                         # skips the network address
    ("10.0.0.0/24", ["10.0.0.1", "10.0.0.2"], "10.0.0.3"),
    ("10.0.0.0/24", ["10.0.0.2"], "10.0.0.1"),               # fills the lowest hole
    ("10.0.0.0/30", ["10.0.0.1"], "10.0.0.2"),
    ("10.0.0.0/31", [], "10.0.0.0"),                         # RFC 3021: both usable
    ("10.0.0.5/32", [], "10.0.0.5"),
    ("10.0.0.0/24", ["10.0.0.1/32", "junk", "fd00::1"], "10.0.0.2"),
])
def test_v4(cidr, held, want):
    assert next_free(state(cidr, device("a", *held))) == want


def test_disabled_devices_keep_their_address():
    s = state("10.0.0.0/24", device("old", "10.0.0.1", disabled=True))
    assert next_free(s) == "10.0.0.2"


def test_v6_skips_subnet_router_anycast():
    s = state("10.0.0.0/24", device("a", "10.0.0.1", "fd10::1"), cidr6="fd10::/64")
    assert next_free(s, 6) == "fd10::2"
    assert next_free(state("10.0.0.0/24", cidr6="fd10::/64"), 6) == "fd10::1"


def test_full_cidr_is_a_validation_error_with_file_and_line():
    s = state("10.0.0.0/30", device("a", "10.0.0.1"), device("b", "10.0.0.2"))
    with pytest.raises(ValidationError) as info:
        next_free(s)
    (problem,) = info.value.problems
    assert (problem.file, problem.line, problem.code) == (
        "orgs/acme/organization.yaml", 4, "E-CIDR-FULL")
    assert "10.0.0.0/30" in problem.message


def test_bad_family():
    with pytest.raises(ValueError):
        next_free(state("10.0.0.0/24"), 6)
    with pytest.raises(ValueError):
        next_free(state("10.0.0.0/24"), 5)


def test_ten_thousand_devices_all_taken_but_one():
    devices = [device(f"d{i}", str(ipaddress.ip_address(int(ipaddress.ip_address("10.0.0.1")) + i)))
               for i in range(10_000) if i != 9_876]
    s = state("10.0.0.0/16", *devices)
    assert next_free(s) == str(ipaddress.ip_address(int(ipaddress.ip_address("10.0.0.1")) + 9_876))


@st.composite
def org_and_family(draw):
    family = draw(st.sampled_from([4, 6]))
    if family == 4:
        net = ipaddress.ip_network(f"10.{draw(st.integers(0, 255))}.0.0/{draw(st.integers(27, 31))}",
                                   strict=False)
    else:
        net = ipaddress.ip_network(f"fd00:{draw(st.integers(0, 65535)):x}::/{draw(st.integers(123, 127))}",
                                   strict=False)
    size = net.num_addresses
    held = draw(st.sets(st.integers(0, size - 1), max_size=size))
    devices = [
        device(f"d{i}", str(net.network_address + off), disabled=draw(st.booleans()))
        for i, off in enumerate(sorted(held))
    ]
    cidr4, cidr6 = (str(net), None) if family == 4 else ("192.0.2.0/24", str(net))
    return state(cidr4, *devices, cidr6=cidr6), family, net


@settings(max_examples=300, deadline=None)
@given(org_and_family(), st.integers(1, 40))
def test_allocations_unique_inside_lowest_and_never_renumber(arg, rounds):
    s, family, net = arg
    original = dict(s.devices)
    first, last = host_bounds(net)
    allocated: list[str] = []
    for n in range(rounds):
        held = {int(ipaddress.ip_address(ip)) for d in s.devices.values() for ip in d.tunnel_ips}
        free = [a for a in range(first, last + 1) if a not in held]
        if not free:
            with pytest.raises(ValidationError):
                next_free(s, family)
            break
        ip = next_free(s, family)
        addr = ipaddress.ip_address(ip)
        assert addr in net and int(addr) == free[0]  # inside, lowest free
        assert ip not in allocated  # unique
        allocated.append(ip)
        s = OrgState(s.organization, s.users, {**s.devices, f"new{n}": device(f"new{n}", ip)})
    for name, dev in original.items():  # never renumbers
        assert s.devices[name] == dev
