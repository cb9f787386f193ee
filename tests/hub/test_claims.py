"""Who may claim which endpoint (reconciler.hub.claims), pure: address checks with
their reasons, and which observations the hub keeps from whom."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from reconciler.hub.claims import (
    REFLECTION_TTL,
    Authority,
    ClaimRefused,
    Observation,
    accept_observations,
    check_address,
    check_candidates,
)
from reconciler.model.endpoints import Candidate

NOW = 1_790_000_000
HUB = frozenset({ip_address("198.51.100.10"), ip_address("2001:db8::10")})
AUTH = Authority(devices=frozenset({"laptop", "server", "relay-1"}),
                 relays=frozenset({"relay-1"}), revoked=frozenset())


@pytest.mark.parametrize("value,reason", [
    ("0.0.0.0:51820", "unspecified"), ("[::]:51820", "unspecified"),
    ("127.0.0.1:22", "loopback"), ("127.0.0.53:53", "loopback"), ("[::1]:51820", "loopback"),
    ("[::ffff:127.0.0.1]:22", "loopback"),
    ("224.0.0.1:51820", "multicast"), ("239.1.1.1:5", "multicast"), ("[ff02::1]:51820",
                                                                     "multicast"),
    ("255.255.255.255:51820", "broadcast"),
    ("169.254.169.254:80", "link-local"), ("[fe80::1]:51820", "link-local"),
    ("[fe80::1%eth0]:51820", "zone-id"), ("[2001:db8::1%2]:51820", "zone-id"),
    ("198.51.100.7%eth0:51820", "zone-id"),
    ("198.51.100.7:0", "bad-port"), ("198.51.100.7:65536", "bad-port"),
    ("198.51.100.7:99999", "bad-port"), ("198.51.100.7:-5", "bad-port"),
    ("198.51.100.7", "malformed"), ("not-an-ip:1", "malformed"), ("example.com:51820",
                                                                   "malformed"),
    ("2001:db8::1:51820", "malformed"), ("", "malformed"), (51820, "malformed"),
    (None, "malformed"), ("1" * 65, "malformed"),
    ("240.0.0.1:51820", "reserved"),
    ("198.51.100.10:51820", "hub-address"), ("198.51.100.10:8443", "hub-address"),
    ("[2001:db8::10]:3478", "hub-address"), ("[::ffff:198.51.100.10]:51820", "hub-address"),
])
def test_each_bad_candidate_class_is_refused_with_its_own_reason(value: object,
                                                                 reason: str) -> None:
    with pytest.raises(ClaimRefused) as info:
        check_address(value, "candidates[3].address", HUB)
    refusal = info.value
    assert refusal.reason == reason, refusal.message
    assert refusal.field == "candidates[3].address"
    assert "candidates[3].address" in refusal.message
    if isinstance(value, str) and len(value) <= 64:
        assert refusal.value == value


@pytest.mark.parametrize("value,canonical", [
    ("203.0.113.7:51820", "203.0.113.7:51820"),
    ("[2001:DB8::0001]:1", "[2001:db8::1]:1"),
    ("10.1.2.3:65535", "10.1.2.3:65535"),
    ("100.64.0.1:41641", "100.64.0.1:41641"),  # carrier-grade NAT space: accepted
    ("192.0.2.1:51820", "192.0.2.1:51820"),  # documentation: accepted (the lab's internet)
    ("[fd00::5]:51820", "[fd00::5]:51820"),
    ("198.51.100.11:51820", "198.51.100.11:51820"),  # next to the hub, not the hub
])
def test_routable_unicast_is_accepted_in_canonical_form(value: str, canonical: str) -> None:
    assert str(check_address(value, "f", HUB)) == canonical


def test_candidates_are_written_canonically_and_deduplicated() -> None:
    got = check_candidates([Candidate("stun", "[2001:DB8::1]:5"), Candidate("local", "10.0.0.2:5"),
                            Candidate("reflected", "[2001:db8::1]:5")], HUB)
    assert got == (Candidate("stun", "[2001:db8::1]:5"), Candidate("local", "10.0.0.2:5"))
    with pytest.raises(ClaimRefused) as info:
        check_candidates([Candidate("stun", "203.0.113.1:5"), Candidate("local", "127.0.0.1:5")])
    assert info.value.field == "candidates[1].address" and info.value.reason == "loopback"


def obs(peer: str, handshake: int = NOW - 5, endpoint: str = "198.51.100.9:4000") -> Observation:
    return Observation(peer, endpoint, handshake)


@pytest.mark.parametrize("reporter", ["laptop", "server", "not-even-a-device"])
def test_a_device_that_is_not_a_relay_cannot_reflect_anyone(reporter: str) -> None:
    kept, dropped = accept_observations(
        reporter, [obs("server"), obs("relay-1"), obs("laptop")], AUTH, NOW)
    assert kept == () and dropped == {"not-a-relay": 3}


def test_a_relay_reflects_others_and_each_drop_has_its_reason() -> None:
    kept, dropped = accept_observations("relay-1", [
        obs("server"),
        obs("laptop", NOW + 10 * 365 * 86400),  # its clock says ten years ahead: kept...
        obs("relay-1"),  # about itself
        obs("stranger"),  # not in the manifest
        obs("server", NOW - 1, "198.51.100.99:1"),  # a second view of one peer
    ], AUTH, NOW)
    assert [o.peer for o in kept] == ["laptop", "server"]
    assert dropped == {"self": 1, "unknown-peer": 1, "duplicate": 1}
    # ... and a handshake older than the TTL by the hub's clock is stale
    kept, dropped = accept_observations("relay-1", [obs("server", NOW - REFLECTION_TTL - 1)],
                                        AUTH, NOW)
    assert kept == () and dropped == {"stale": 1}
