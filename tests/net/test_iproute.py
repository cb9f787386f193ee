"""IPRouteLinks: parsing recorded ``ip -j`` output, fake netlink, and a real netns."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from reconciler.converge import (
    AddAddress,
    AddPeer,
    AddRoute,
    RemoveAddress,
    RemoveRoute,
    SetLinkUp,
    SetMtu,
)
from reconciler.errors import BackendError, BackendUnavailable
from reconciler.model.wg import DesiredPeer
from reconciler.net.iproute import IPRouteLinks, parse_addr_json, parse_route_json
from reconciler.net.sysctl import FORWARD_KEYS

# Recorded from `ip -j addr show dev wg0` on a wireguard-go TUN (iproute2 6.1).
ADDR_JSON = json.dumps(
    [
        {
            "ifindex": 5,
            "ifname": "wg0",
            "flags": ["POINTOPOINT", "MULTICAST", "NOARP", "UP", "LOWER_UP"],
            "mtu": 1420,
            "operstate": "UNKNOWN",
            "addr_info": [
                {"family": "inet", "local": "10.9.0.1", "prefixlen": 24, "scope": "global"},
                {"family": "inet6", "local": "fe80::b67f:45b4:a81b:5cf7", "prefixlen": 64, "scope": "link"},
            ],
        }
    ]
)
ROUTE4_JSON = json.dumps(
    [
        {"dst": "10.9.0.0/24", "dev": "wg0", "protocol": "kernel", "scope": "link", "prefsrc": "10.9.0.1", "flags": []},
        {"dst": "10.77.0.0/16", "dev": "wg0", "scope": "link", "flags": []},
        {"dst": "10.1.2.3", "dev": "wg0", "scope": "link", "flags": []},
        {"type": "broadcast", "dst": "10.9.0.255", "dev": "wg0", "flags": []},
    ]
)
ROUTE6_JSON = json.dumps(
    [
        {"dst": "fe80::/64", "dev": "wg0", "protocol": "kernel", "metric": 256, "flags": []},
        {"dst": "fd00:77::/48", "dev": "wg0", "metric": 1024, "flags": []},
    ]
)


def test_parse_addr_json() -> None:
    obs = parse_addr_json("wg0", ADDR_JSON)
    assert obs.exists and obs.up and obs.mtu == 1420
    assert obs.addresses == ("10.9.0.1/24", "fe80::b67f:45b4:a81b:5cf7/64")
    assert not parse_addr_json("wg0", "[]").exists


def test_parse_route_json_skips_kernel_and_non_unicast() -> None:
    assert parse_route_json(ROUTE4_JSON) == ("10.77.0.0/16", "10.1.2.3/32")
    assert parse_route_json(ROUTE6_JSON) == ("fd00:77::/48",)


class FakeRun:
    def __init__(self, answers: dict[str, tuple[int, str, str]]) -> None:
        self.answers = answers
        self.cmds: list[list[str]] = []

    def __call__(self, cmd: list[str]) -> subprocess.CompletedProcess[str]:
        self.cmds.append(cmd)
        if "sysctl" in cmd:
            kind = "sysctl"
        else:
            kind = "addr" if "addr" in cmd else ("route6" if "-6" in cmd else "route4")
        rc, out, err = self.answers.get(kind, (0, "", "")) if kind == "sysctl" else self.answers[kind]
        return subprocess.CompletedProcess(cmd, rc, out, err)


def test_observe_uses_ip_json_in_the_namespace() -> None:
    run = FakeRun({"addr": (0, ADDR_JSON, ""), "route4": (0, ROUTE4_JSON, ""), "route6": (0, ROUTE6_JSON, "")})
    obs = IPRouteLinks("ns1", run=run).observe("wg0")
    assert obs.routes == ("10.77.0.0/16", "10.1.2.3/32", "fd00:77::/48")
    assert all(cmd[:4] == ["ip", "-n", "ns1", "-j"] for cmd in run.cmds[:3])
    assert run.cmds[3] == ["ip", "netns", "exec", "ns1", "sysctl", *FORWARD_KEYS]
    assert obs.forwarding is None  # nothing readable


def test_observe_missing_device_and_namespace() -> None:
    gone = FakeRun({"addr": (1, "", 'Device "wg0" does not exist.\n')})
    assert not IPRouteLinks(run=gone).observe("wg0").exists
    no_ns = FakeRun({"addr": (1, "", 'Cannot open network namespace "x": No such file or directory\n')})
    with pytest.raises(BackendUnavailable, match="netns x"):
        IPRouteLinks("x", run=no_ns).observe("wg0")


class FakeIPRoute:
    def __init__(self, fail: dict[str, int] | None = None) -> None:
        self.calls: list[tuple[str, str, dict]] = []
        self.fail = fail or {}

    def link_lookup(self, ifname: str) -> list[int]:
        return [7] if ifname == "wg0" else []

    def _call(self, what: str, cmd: str, **kw: Any) -> None:
        self.calls.append((what, cmd, kw))
        if f"{what} {cmd}" in self.fail:
            raise NetlinkError(self.fail[f"{what} {cmd}"])

    def link(self, cmd: str, **kw: Any) -> None:
        self._call("link", cmd, **kw)

    def addr(self, cmd: str, **kw: Any) -> None:
        self._call("addr", cmd, **kw)

    def route(self, cmd: str, **kw: Any) -> None:
        self._call("route", cmd, **kw)

    def close(self) -> None:
        pass


def test_apply_maps_operations_to_netlink() -> None:
    ipr = FakeIPRoute()
    links = IPRouteLinks(iproute_factory=lambda: ipr)
    links.apply(
        [
            RemoveRoute("wg0", "10.5.0.0/16"),
            RemoveAddress("wg0", "10.0.0.9/24"),
            SetMtu("wg0", 1380),
            SetLinkUp("wg0"),
            AddPeer("wg0", DesiredPeer("k", ())),  # WireGuard ops are not ours: ignored
            AddAddress("wg0", "fd00::1/64"),
            AddRoute("wg0", "192.168.50.0/24"),
        ]
    )
    assert ipr.calls == [
        ("route", "del", {"dst": "10.5.0.0", "dst_len": 16, "oif": 7, "family": 2}),
        ("addr", "del", {"index": 7, "address": "10.0.0.9", "prefixlen": 24}),
        ("link", "set", {"index": 7, "mtu": 1380}),
        ("link", "set", {"index": 7, "state": "up"}),
        ("addr", "add", {"index": 7, "address": "fd00::1", "prefixlen": 64}),
        ("route", "replace", {"dst": "192.168.50.0", "dst_len": 24, "oif": 7, "family": 2}),
    ]


def test_existing_and_missing_entries_tolerated() -> None:
    ipr = FakeIPRoute({"addr add": 17, "addr del": 99, "route del": 3})
    IPRouteLinks(iproute_factory=lambda: ipr).apply(
        [AddAddress("wg0", "10.0.0.1/24"), RemoveAddress("wg0", "10.0.0.2/24"), RemoveRoute("wg0", "10.6.0.0/16")]
    )
    assert len(ipr.calls) == 3


def test_errors_translated() -> None:
    with pytest.raises(BackendError, match="CAP_NET_ADMIN"):
        IPRouteLinks(iproute_factory=lambda: FakeIPRoute({"link set": 1})).apply([SetMtu("wg0", 1280)])
    with pytest.raises(BackendUnavailable, match="does not exist"):
        IPRouteLinks(iproute_factory=FakeIPRoute).apply([SetMtu("wg-other", 1280)])
    with pytest.raises(BackendUnavailable, match="userspace"):
        IPRouteLinks(iproute_factory=lambda: FakeIPRoute({"link add": 95})).create_wireguard("wg0")


@pytest.mark.root
def test_create_wireguard_without_module_points_to_userspace(netns: str) -> None:
    if os.path.exists("/sys/module/wireguard"):
        pytest.skip("host has the WireGuard module")
    links = IPRouteLinks(netns)
    try:
        with pytest.raises(BackendUnavailable, match="userspace"):
            links.create_wireguard("mo-wg")
    finally:
        links.close()



@pytest.mark.root
def test_real_namespace_round_trip(netns: str) -> None:
    subprocess.run(
        ["ip", "-n", netns, "link", "add", "mo-a", "type", "veth", "peer", "name", "mo-b"], check=True
    )
    links = IPRouteLinks(netns)
    try:
        before = links.observe("mo-a")
        assert before.exists and not before.up
        ops = [
            SetMtu("mo-a", 1380),
            SetLinkUp("mo-a"),
            AddAddress("mo-a", "10.66.0.1/24"),
            AddAddress("mo-a", "10.66.0.1/24"),  # again: tolerated
            AddRoute("mo-a", "10.67.0.0/16"),
            AddRoute("mo-a", "fd00:67::/48"),
        ]
        links.apply(ops)
        after = links.observe("mo-a")
        assert after.mtu == 1380 and after.up
        assert "10.66.0.1/24" in after.addresses
        assert set(after.routes) == {"10.67.0.0/16", "fd00:67::/48"}
        links.apply([RemoveRoute("mo-a", "10.67.0.0/16"), RemoveAddress("mo-a", "10.66.0.1/24")])
        final = links.observe("mo-a")
        assert "10.66.0.1/24" not in final.addresses and final.routes == ("fd00:67::/48",)
        assert not links.observe("mo-missing").exists
    finally:
        links.close()


@pytest.mark.root
def test_missing_namespace_is_not_created() -> None:
    name = f"mo-net-absent-{os.getpid()}"
    links = IPRouteLinks(name)
    with pytest.raises(BackendUnavailable):
        links.apply([SetMtu("wg0", 1280)])
    assert not os.path.exists(f"/run/netns/{name}")


# Recorded from `ip -j -4 rule show` / `ip -j -6 rule show` (iproute2 6.1) with the
# exit-node layout applied.
RULES4_JSON = json.dumps([
    {"priority": 0, "src": "all", "table": "local"},
    {"priority": 5200, "src": "all", "dst": "203.0.113.5", "table": "main"},
    {"priority": 5210, "src": "all", "table": "main", "suppress_prefixlen": 0},
    {"priority": 5220, "not": None, "src": "all", "fwmark": "0xca6c", "table": "51820"},
    {"priority": 5221, "src": "all", "table": "77"},  # not ours: another priority
    {"priority": 32766, "src": "all", "table": "main"},
])
RULES6_JSON = json.dumps([
    {"priority": 5200, "src": "all", "dst": "2001:db8::", "dstlen": 32, "table": "main"},
    {"priority": 5220, "not": None, "src": "all", "fwmark": "0xca6c/0xffffffff",
     "table": "51820"},
])


def test_parse_rule_json_keeps_only_meshops_priorities() -> None:
    from reconciler.model.routing import PolicyRule
    from reconciler.net.iproute import parse_rule_json

    assert parse_rule_json(4, RULES4_JSON) == {
        PolicyRule(4, 5200, 254, to="203.0.113.5/32"),
        PolicyRule(4, 5210, 254, suppress_prefixlength=0),
        PolicyRule(4, 5220, 51820, fwmark=0xCA6C, invert=True),
    }
    assert parse_rule_json(6, RULES6_JSON) == {
        PolicyRule(6, 5200, 254, to="2001:db8::/32"),
        PolicyRule(6, 5220, 51820, fwmark=0xCA6C, invert=True),
    }


def test_parse_table_json_defaults_per_family() -> None:
    from reconciler.model.routing import TableRoute
    from reconciler.net.iproute import parse_table_json

    text = json.dumps([{"dst": "default", "dev": "wg0", "scope": "link", "flags": []}])
    assert parse_table_json(51820, text, 4) == {TableRoute("0.0.0.0/0", 51820, "wg0")}
    assert parse_table_json(51820, text, 6) == {TableRoute("::/0", 51820, "wg0")}
