"""model.endpoint: the one host:port value type."""

import re
from ipaddress import ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.model.endpoint import (
    Endpoint,
    EndpointError,
    host_of,
    is_routable_unicast,
    parse_or_none,
    unroutable_reason,
)


@pytest.mark.parametrize("text,host,port,back", [
    ("198.51.100.7:51820", "198.51.100.7", 51820, "198.51.100.7:51820"),
    ("[2001:DB8::01]:1", "2001:db8::1", 1, "[2001:db8::1]:1"),
    ("[::ffff:198.51.100.1]:65535", "::ffff:c633:6401", 65535, "[::ffff:c633:6401]:65535"),
])
def test_literals_parse_to_canonical_text(text, host, port, back) -> None:
    ep = Endpoint.parse(text)
    assert (ep.host, ep.port, str(ep)) == (host, port, back)
    assert Endpoint.parse(str(ep)) == ep


@pytest.mark.parametrize("text,why", [
    ("198.51.100.7", "host:port"),
    ("2001:db8::1:51820", "[address]:port"),
    ("[fe80::1%eth0]:51820", "zone ids"),
    ("[198.51.100.7]:1", "IPv6 addresses only"),
    ("[2001:db8::1]51820", "[address]:port"),
    ("198.51.100.7:0", "1 to 65535"),
    ("198.51.100.7:65536", "1 to 65535"),
    ("198.51.100.7:-1", "1 to 65535"),
    ("198.51.100.7:８０", "1 to 65535"),  # full-width digits
    ("198.51.100.7:" + "9" * 5000, "1 to 65535"),
    ("198.51.100.7: 80", "1 to 65535"),
    (":80", "host:port"),
    ("hub.example:443", "not an IP address"),
    ("1.2.3:80", "not an IP address"),
])
def test_malformed_endpoints_are_refused_with_a_reason(text, why) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        Endpoint.parse(text)
    assert parse_or_none(text) is None


def test_names_only_where_allowed() -> None:
    ep = Endpoint.parse("Relay-1.Example.:51820", allow_names=True)
    assert (ep.host, ep.is_literal, ep.ip) == ("relay-1.example", False, None)
    for bad in ("bad_name:1", "-x.example:1", "a..b:1", "1.2.3:80", ("a" * 64) + ".example:1"):
        with pytest.raises(ValueError):
            Endpoint.parse(bad, allow_names=True)


def test_of_and_host_of() -> None:
    assert str(Endpoint.of("2001:db8::1", 5)) == "[2001:db8::1]:5"
    with pytest.raises(ValueError):
        Endpoint.of("fe80::1%eth0", 5)
    with pytest.raises(ValueError):
        Endpoint.of("198.51.100.1", 0)
    assert host_of("[2001:db8::1]:5") == "2001:db8::1"
    assert host_of("198.51.100.1") == "198.51.100.1"
    assert host_of("2001:db8::1") == "2001:db8::1"


@given(st.ip_addresses(), st.integers(1, 65535))
def test_round_trip(ip, port) -> None:
    ep = Endpoint.of(ip, port)
    assert Endpoint.parse(str(ep)) == ep and ep.ip == ip


# -- the address-class policy: what a device may be claimed to be reachable at --------------

@pytest.mark.parametrize("address,reason", [
    ("0.0.0.0", "unspecified"), ("0.1.2.3", "unspecified"), ("::", "unspecified"),
    ("127.0.0.1", "loopback"), ("127.0.0.53", "loopback"), ("127.255.255.254", "loopback"),
    ("::1", "loopback"),
    ("169.254.169.254", "link-local"), ("169.254.0.1", "link-local"), ("fe80::1", "link-local"),
    ("febf:ffff::1", "link-local"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("ff02::1", "multicast"),
    ("ff05::1:3", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"), ("254.1.2.3", "reserved"), ("fec0::1", "reserved"),
    ("::127.0.0.1", "reserved"), ("100::1", "reserved"),
    # an IPv4 address inside IPv6 is judged as the IPv4 address it carries
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "link-local"),
    ("::ffff:0.0.0.0", "unspecified"), ("::ffff:224.0.0.1", "multicast"),
    ("64:ff9b::7f00:1", "loopback"), ("64:ff9b::ffff:ffff", "broadcast"),
])
def test_unroutable_addresses_are_refused_with_their_class(address: str, reason: str) -> None:
    ip = ip_address(address)
    assert unroutable_reason(ip) == reason
    assert not is_routable_unicast(ip)


@pytest.mark.parametrize("address", [
    # global unicast
    "1.1.1.1", "8.8.8.8", "2606:4700::1111", "2a00:1450::1",
    # private: LAN candidates
    "10.0.0.1", "10.255.255.254", "172.16.0.1", "172.31.255.254", "192.168.1.20",
    "fd00::1", "fc00::1", "fd12:3456:789a::1",
    # shared address space (carrier-grade NAT, RFC 6598): unicast, accepted
    "100.64.0.1", "100.127.255.254",
    # documentation ranges: the lab's "internet", accepted on purpose
    "192.0.2.1", "198.51.100.7", "203.0.113.9", "2001:db8::1", "2001:db8:ffff::2",
    # mapped / NAT64 forms of accepted addresses
    "::ffff:198.51.100.1", "64:ff9b::c633:6401",
    # the edges of refused ranges
    "1.0.0.0", "126.255.255.255", "128.0.0.0", "169.253.255.255", "169.255.0.0",
    "223.255.255.255", "fe7f:ffff::1", "fbff::1",
])
def test_global_and_private_unicast_is_accepted(address: str) -> None:
    ip = ip_address(address)
    assert unroutable_reason(ip) is None
    assert is_routable_unicast(ip)


@pytest.mark.parametrize("text,reason", [
    ("[fe80::1%eth0]:51820", "zone-id"), ("[2001:db8::1%1]:51820", "zone-id"),
    ("198.51.100.7%eth0:51820", "zone-id"),
    ("198.51.100.7:0", "port"), ("198.51.100.7:65536", "port"), ("198.51.100.7:-1", "port"),
    ("198.51.100.7:+80", "port"), ("[2001:db8::1]:99999", "port"),
    ("198.51.100.7", "syntax"), ("2001:db8::1:51820", "syntax"), ("host:1", "syntax"),
])
def test_endpoint_errors_say_which_rule_failed(text: str, reason: str) -> None:
    with pytest.raises(EndpointError) as info:
        Endpoint.parse(text)
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError)  # callers catching ValueError still work


@pytest.mark.parametrize("text,ok", [
    ("10.0.0.1", True), ("0.0.0.0", True), ("255.255.255.255", True),
    ("10.0.0.01", False), ("256.1.1.1", False), ("1.2.3", False), ("1.2.3.4.5", False),
    ("１.2.3.4", False), ("1.2.3.-4", False), ("a.b.c.d", False), ("", False),
])
def test_canonical_v4_fast_path_agrees_with_ipaddress(text, ok) -> None:
    import ipaddress

    from reconciler.model.endpoint import canonical_v4

    assert (canonical_v4(text) is not None) is ok
    if ok:
        assert str(ipaddress.IPv4Address(text)) == text


@given(st.ip_addresses(v=4), st.integers(1, 65535))
def test_the_fast_path_parses_like_the_slow_one(ip, port) -> None:
    ep = Endpoint.parse(f"{ip}:{port}")
    assert ep == Endpoint.of(ip, port) and ep.ip == ip


def test_canonical_v4_endpoint_is_exactly_what_endpoint_writes():
    import random

    from reconciler.model.endpoint import is_canonical_v4_endpoint, parse_or_none

    parts = ["0", "00", "1", "01", "9", "99", "199", "255", "256", "a", ""]
    ports = ["0", "1", "01", "80", "65535", "65536", "99999", "", "1x"]
    rng = random.Random(7)
    for _ in range(20_000):
        text = ".".join(rng.choice(parts) for _ in range(rng.choice((3, 4, 4)))) + ":" + \
            rng.choice(ports)
        parsed = parse_or_none(text)
        assert is_canonical_v4_endpoint(text) == (parsed is not None and str(parsed) == text)
    assert not is_canonical_v4_endpoint(None)
