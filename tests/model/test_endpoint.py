"""model.endpoint: the one host:port value type."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.model.endpoint import Endpoint, host_of, parse_or_none


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
