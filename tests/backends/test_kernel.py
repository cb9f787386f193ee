"""Kernel backend against netlink messages (no WireGuard module needed).

``data/kernel_get_device.hex`` is a WG_CMD_GET_DEVICE reply in wire format
(encoded with pyroute2's ``wgmsg``, the layout of ``uapi/wireguard.h``):
device wg0, private key key(1), port 51820, one peer key(2) at
203.0.113.5:51820, keepalive 25, handshake 1700000000, rx 10, tx 20,
allowed 10.0.0.2/32.
"""

from __future__ import annotations

from pathlib import Path
from socket import AF_INET, AF_INET6, inet_pton
from typing import Any

import pytest
from converge.cases import NOW, desired, key, peer
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic.wireguard import wgmsg

from backends.fakelinks import FakeLinks
from reconciler.backends import open_backend
from reconciler.backends.kernel import KernelBackend, decode_info, peer_request
from reconciler.converge import (
    AddAddress,
    AddPeer,
    RemovePeer,
    SetForwarding,
    UpdatePeer,
    plan,
    public_key,
)
from reconciler.errors import BackendError, BackendUnavailable, ConfigError
from reconciler.model.wg import ObservedInterface

DATA = Path(__file__).parent / "data"


def _wire(attrs: list) -> Any:
    """Encode then decode a message, exactly as read from a netlink socket."""
    msg = wgmsg()
    msg["cmd"] = 0
    msg["version"] = 1
    msg["attrs"] = attrs
    msg.encode()
    out = wgmsg(bytes(msg.data))
    out.decode()
    return out


def _allowed(cidr: str) -> dict:
    addr, mask = cidr.split("/")
    fam = AF_INET6 if ":" in addr else AF_INET
    return {
        "attrs": [
            ["WGALLOWEDIP_A_FAMILY", fam],
            ["WGALLOWEDIP_A_IPADDR", inet_pton(fam, addr)],
            ["WGALLOWEDIP_A_CIDR_MASK", int(mask)],
        ]
    }


def test_decode_recorded_device_dump() -> None:
    msg = wgmsg(bytes.fromhex((DATA / "kernel_get_device.hex").read_text().strip()))
    msg.decode()
    obs = decode_info("wg0", [msg])
    assert obs.public_key == public_key(key(1)) and obs.listen_port == 51820
    p = obs.peers[key(2)]
    assert p.endpoint == "203.0.113.5:51820" and p.keepalive == 25
    assert p.allowed_ips == ("10.0.0.2/32",)
    assert p.last_handshake == 1_700_000_000 and (p.rx_bytes, p.tx_bytes) == (10, 20)


def test_peer_split_over_two_messages_is_merged_and_v6_endpoint() -> None:
    peer_attrs = [
        ["WGPEER_A_PUBLIC_KEY", key(3)],
        ["WGPEER_A_ENDPOINT", {"addr": "2001:db8::3", "port": 51820}],
    ]
    first = _wire(
        [
            ["WGDEVICE_A_IFNAME", "wg0"],
            ["WGDEVICE_A_LISTEN_PORT", 1000],
            ["WGDEVICE_A_PEERS", [{"attrs": peer_attrs + [["WGPEER_A_ALLOWEDIPS", [_allowed("fd00::3/128")]]]}]],
        ]
    )
    second = _wire(
        [
            ["WGDEVICE_A_IFNAME", "wg0"],
            ["WGDEVICE_A_PEERS", [{"attrs": [["WGPEER_A_PUBLIC_KEY", key(3)], ["WGPEER_A_ALLOWEDIPS", [_allowed("10.3.0.0/16")]]]}]],
        ]
    )
    obs = decode_info("wg0", [first, second])
    assert obs.public_key is None  # no private key attribute
    assert obs.listen_port == 1000
    p = obs.peers[key(3)]
    assert p.endpoint == "[2001:db8::3]:51820"
    assert p.allowed_ips == ("10.3.0.0/16", "fd00::3/128")
    assert p.last_handshake is None


def test_peer_requests() -> None:
    add = peer_request(AddPeer("wg0", peer(2, endpoint="[2001:db8::9]:4500", keepalive=25)))
    assert add == {
        "public_key": key(2),
        "replace_allowed_ips": True,
        "allowed_ips": ["10.0.0.2/32"],
        "persistent_keepalive": 25,
        "endpoint_addr": "2001:db8::9",
        "endpoint_port": 4500,
    }
    assert peer_request(RemovePeer("wg0", key(2))) == {"public_key": key(2), "remove": True}
    assert peer_request(UpdatePeer("wg0", key(2), keepalive=0)) == {
        "public_key": key(2),
        "persistent_keepalive": 0,
    }


class FakeWireGuard:
    """Records ``set`` calls; ``info`` answers from a simulated device."""

    def __init__(self, info_error: int | None = None) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.info_error = info_error
        self.closed = False

    def info(self, name: str) -> list:
        if self.info_error is not None:
            raise NetlinkError(self.info_error)
        return [_wire([["WGDEVICE_A_IFNAME", name], ["WGDEVICE_A_PRIVATE_KEY", key(1)], ["WGDEVICE_A_LISTEN_PORT", 51820]])]

    def set(self, name: str, **kw: Any) -> None:
        self.calls.append((name, kw))

    def close(self) -> None:
        self.closed = True


def test_apply_translates_every_operation() -> None:
    links = FakeLinks()
    wg = FakeWireGuard()
    backend = KernelBackend(links=links, wireguard_factory=lambda: wg)
    d = desired(peer(2, endpoint="203.0.113.5:51820"), peer(3))
    ops = plan(d, ObservedInterface(name="wg-mesh", exists=False), NOW)
    backend.apply(ops)
    assert links.created == ["wg-mesh"]
    assert wg.calls[0] == ("wg-mesh", {"private_key": key(1), "listen_port": 51820})
    peers = [kw["peer"]["public_key"] for _, kw in wg.calls[1:]]
    assert peers == [key(2), key(3)]
    assert wg.calls[1][1]["peer"]["endpoint_addr"] == "203.0.113.5"
    assert AddAddress("wg-mesh", "10.0.0.1/24") in links.applied
    backend.close()
    assert wg.closed and links.closed


def test_observe_merges_links_and_netlink() -> None:
    links = FakeLinks(ObservedInterface(name="wg0", exists=True, up=True, mtu=1380, addresses=("10.0.0.1/24",)))
    backend = KernelBackend(links=links, wireguard_factory=FakeWireGuard)
    obs = backend.observe("wg0")
    assert obs.exists and obs.mtu == 1380 and obs.addresses == ("10.0.0.1/24",)
    assert obs.public_key == public_key(key(1)) and obs.listen_port == 51820


def test_relay_forwarding_is_observed_and_applied_through_links() -> None:
    links = FakeLinks(ObservedInterface(name="wg0", exists=True, up=True, forwarding=False))
    wg = FakeWireGuard()
    backend = KernelBackend(links=links, wireguard_factory=lambda: wg)
    assert backend.observe("wg0").forwarding is False
    backend.apply([SetForwarding("wg0", True)])
    assert links.applied == [SetForwarding("wg0", True)]
    assert wg.calls == []  # not a WireGuard operation


def test_missing_link_is_absent_without_netlink() -> None:
    def boom() -> Any:
        raise AssertionError("netlink must not be opened")

    links = FakeLinks(ObservedInterface(name="wg0", exists=False))
    assert not KernelBackend(links=links, wireguard_factory=boom).observe("wg0").exists


def test_no_module_points_to_userspace() -> None:
    def no_module() -> Any:
        raise NetlinkError(2, "No such file or directory")

    backend = KernelBackend(links=FakeLinks(), wireguard_factory=no_module)
    with pytest.raises(BackendUnavailable, match="--backend userspace"):
        backend.observe("wg0")


def test_device_vanished_is_absent_and_errors_translated() -> None:
    assert not KernelBackend(links=FakeLinks(), wireguard_factory=lambda: FakeWireGuard(19)).observe("wg0").exists
    with pytest.raises(BackendError, match="permission denied"):
        KernelBackend(links=FakeLinks(), wireguard_factory=lambda: FakeWireGuard(1)).observe("wg0")


def test_bad_endpoint_refused_before_netlink() -> None:
    wg = FakeWireGuard()
    backend = KernelBackend(links=FakeLinks(), wireguard_factory=lambda: wg)
    with pytest.raises(BackendError, match="IP literal"):
        backend.apply([AddPeer("wg0", peer(2, endpoint="vpn.example.com:51820"))])
    assert wg.calls == []


@pytest.mark.skipif(Path("/sys/module/wireguard").exists(), reason="host has the WireGuard module")
def test_real_pyroute2_without_module_is_unavailable() -> None:
    backend = open_backend("kernel", links=FakeLinks())
    with pytest.raises(BackendUnavailable, match="--backend userspace"):
        backend.apply([UpdatePeer("wg0", key(2), keepalive=1)])
    with pytest.raises(ConfigError):
        open_backend("kernel")
