"""IP forwarding for relays: sysctl parsing, a fake /proc/sys, a fake runner, a real netns."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from reconciler.converge import AddAddress, SetForwarding, SetLinkUp
from reconciler.errors import BackendError, BackendUnavailable
from reconciler.net.iproute import IPRouteLinks
from reconciler.net.sysctl import (
    FORWARD_KEYS,
    IPV4_FORWARD,
    IPV6_FORWARD,
    Sysctl,
    forwarding_keys,
    forwarding_state,
    parse_sysctl_output,
)


def fake_proc(tmp_path: Path, v4: str | None = "0", v6: str | None = "0") -> Path:
    root = tmp_path / "proc-sys"
    for key, value in ((IPV4_FORWARD, v4), (IPV6_FORWARD, v6)):
        path = root / key.replace(".", "/")
        if value is not None:  # None: as with IPv6 disabled, not even the directory
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(value + "\n")
    return root


def test_parse_sysctl_output() -> None:
    text = "net.ipv4.ip_forward = 1\nnet.ipv6.conf.all.forwarding = 0\ngarbage\n"
    assert parse_sysctl_output(text) == {IPV4_FORWARD: "1", IPV6_FORWARD: "0"}


def test_ipv6_matters_only_with_a_global_ipv6_address() -> None:
    assert forwarding_keys(["10.0.0.1/24", "fe80::1/64"]) == (IPV4_FORWARD,)
    assert forwarding_keys(["10.0.0.1/24", "fd00::1/64"]) == FORWARD_KEYS
    v4_only = {IPV4_FORWARD: "1", IPV6_FORWARD: "0"}
    assert forwarding_state(v4_only, ["10.0.0.1/24"]) is True
    assert forwarding_state(v4_only, ["10.0.0.1/24", "fd00::1/64"]) is False
    assert forwarding_state({IPV4_FORWARD: "1"}, ["fd00::1/64"]) is True  # IPv6 disabled
    assert forwarding_state({IPV4_FORWARD: "0"}, []) is False
    assert forwarding_state({}, []) is None


def test_files_are_read_and_written_in_the_current_namespace(tmp_path: Path) -> None:
    root = fake_proc(tmp_path, v4="0", v6=None)
    sysctl = Sysctl(proc_sys=root)
    assert sysctl.read_command(FORWARD_KEYS) is None
    assert sysctl.read(FORWARD_KEYS) == {IPV4_FORWARD: "0"}
    sysctl.write(IPV4_FORWARD, "1", what="set ip forwarding on")
    sysctl.write(IPV6_FORWARD, "1", what="set ip forwarding on")  # IPv6 off: skipped
    assert (root / "net/ipv4/ip_forward").read_text() == "1\n"
    assert not (root / "net/ipv6/conf/all/forwarding").exists()


def test_permission_denied_names_the_sysctl(tmp_path: Path) -> None:
    root = fake_proc(tmp_path)

    class Denied(Sysctl):
        def path(self, key: str) -> Path:
            return _DeniedPath(str(super().path(key)))  # type: ignore[return-value]

    with pytest.raises(BackendError, match=r"permission denied.*sysctl -w net.ipv4.ip_forward=1"):
        Denied(proc_sys=root).write(IPV4_FORWARD, "1", what="set ip forwarding on")


class _DeniedPath(str):
    """Stands in for a /proc/sys file the agent may not write."""

    def write_text(self, *args: object, **kw: object) -> int:
        raise PermissionError(13, "Permission denied", str(self))


class Recorder:
    def __init__(self, answers: dict[str, tuple[int, str, str]]) -> None:
        self.answers = answers
        self.cmds: list[list[str]] = []

    def __call__(self, cmd: list[str]) -> subprocess.CompletedProcess[str]:
        self.cmds.append(cmd)
        kind = "write" if "-w" in cmd else ("read" if "sysctl" in cmd else "addr")
        rc, out, err = self.answers[kind]
        return subprocess.CompletedProcess(cmd, rc, out, err)


def test_named_namespace_goes_through_ip_netns_exec() -> None:
    run = Recorder({"read": (0, "net.ipv4.ip_forward = 1\n", ""), "write": (0, "", "")})
    sysctl = Sysctl("ns1", run=run)
    assert sysctl.read(FORWARD_KEYS) == {IPV4_FORWARD: "1"}
    sysctl.write(IPV4_FORWARD, "1", what="x")
    assert run.cmds == [
        ["ip", "netns", "exec", "ns1", "sysctl", *FORWARD_KEYS],
        ["ip", "netns", "exec", "ns1", "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
    ]


def test_namespace_write_errors_translated() -> None:
    ro = Recorder({"write": (255, "", "sysctl: setting key \"net.ipv4.ip_forward\": Read-only file system\n")})
    with pytest.raises(BackendError, match="sysctl -w net.ipv4.ip_forward=1"):
        Sysctl("ns1", run=ro).write(IPV4_FORWARD, "1", what="x")
    gone = Recorder({"write": (1, "", 'Cannot open network namespace "ns1": No such file or directory\n')})
    with pytest.raises(BackendUnavailable, match="ns1"):
        Sysctl("ns1", run=gone).write(IPV4_FORWARD, "1", what="x")
    no_v6 = Recorder({"write": (255, "", "sysctl: cannot stat /proc/sys/net/ipv6/conf/all/forwarding: No such file or directory\n")})
    Sysctl("ns1", run=no_v6).write(IPV6_FORWARD, "1", what="x")  # IPv6 disabled: skipped


def _addr_json(*addrs: tuple[str, str, int]) -> str:
    info = [{"family": fam, "local": ip, "prefixlen": n} for fam, ip, n in addrs]
    return json.dumps([{"ifname": "wg0", "flags": ["UP"], "mtu": 1420, "addr_info": info}])


def test_links_observe_and_apply_forwarding_with_a_fake_proc(tmp_path: Path) -> None:
    root = fake_proc(tmp_path, v4="0", v6="0")
    addr = _addr_json(("inet", "10.0.0.1", 24), ("inet6", "fe80::1", 64))

    def answer(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 0, "[]" if "route" in cmd else addr, "")

    links = IPRouteLinks(run=answer, sysctl=Sysctl(proc_sys=root),
                         iproute_factory=lambda: pytest.fail("no netlink for a sysctl"))
    assert links.observe("wg0").forwarding is False
    # no global IPv6 address: IPv6 forwarding (and the host's RA handling) is left alone
    links.apply([SetForwarding("wg0", True)])
    assert (root / "net/ipv4/ip_forward").read_text() == "1\n"
    assert (root / "net/ipv6/conf/all/forwarding").read_text() == "0\n"
    assert links.observe("wg0").forwarding is True


def test_links_turn_on_ipv6_forwarding_for_an_ipv6_address_in_the_batch(tmp_path: Path) -> None:
    root = fake_proc(tmp_path, v4="0", v6="0")

    class NoNetlink:
        def link_lookup(self, ifname: str) -> list[int]:
            return [3]

        def addr(self, *args: object, **kw: object) -> None:
            pass

        def link(self, *args: object, **kw: object) -> None:
            pass

        def close(self) -> None:
            pass

    def answer(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 0, _addr_json(("inet", "10.0.0.1", 24)), "")

    links = IPRouteLinks(run=answer, sysctl=Sysctl(proc_sys=root), iproute_factory=NoNetlink)
    links.apply([SetLinkUp("wg0"), SetForwarding("wg0", True), AddAddress("wg0", "fd00::1/64")])
    assert (root / "net/ipv4/ip_forward").read_text() == "1\n"
    assert (root / "net/ipv6/conf/all/forwarding").read_text() == "1\n"



def _read_back(netns: str, key: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-n", key],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.root
def test_real_namespace_forwarding(netns: str) -> None:
    sysctl = Sysctl(netns)
    assert sysctl.read(FORWARD_KEYS)[IPV4_FORWARD] == "0"  # a fresh namespace does not forward
    sysctl.write(IPV4_FORWARD, "1", what="set ip forwarding on")
    assert _read_back(netns, IPV4_FORWARD) == "1"
    assert sysctl.read(FORWARD_KEYS)[IPV4_FORWARD] == "1"


def test_read_only_proc_sys_names_the_container_fix(tmp_path: Path) -> None:
    class ReadOnly(Sysctl):
        def path(self, key: str) -> Path:
            return _ReadOnlyPath(str(super().path(key)))  # type: ignore[return-value]

    with pytest.raises(BackendError, match=r"read-only /proc/sys.*--sysctl net.ipv4.ip_forward=1"):
        ReadOnly(proc_sys=fake_proc(tmp_path)).write(IPV4_FORWARD, "1", what="set ip forwarding on")


class _ReadOnlyPath(str):
    def write_text(self, *args: object, **kw: object) -> int:
        raise OSError(30, "Read-only file system", str(self))
