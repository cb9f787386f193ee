"""Userspace backend against real wireguard-go in network namespaces we create.

Every namespace is ``mo-bk-<pid>-<n>``; teardown kills the wireguard-go
daemons these tests started (by the pid in the backend's pid file) and
deletes the namespaces, tolerating "already gone". WireGuard state is read
back independently with ``wg show IF dump``.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import pytest
from converge.cases import key

from reconciler import structs
from reconciler.backends.userspace import UserspaceBackend
from reconciler.converge import CreateInterface, plan, public_key
from reconciler.errors import BackendUnavailable
from reconciler.model.wg import DesiredInterface, DesiredPeer
from reconciler.net.iproute import IPRouteLinks

pytestmark = pytest.mark.root
_seq = count()


class Lab:
    """Namespaces, interface names and backends made by one test."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.namespaces: list[str] = []
        self.backends: list[tuple[UserspaceBackend, str]] = []

    def netns(self) -> str:
        name = f"mo-bk-{os.getpid()}-{next(_seq)}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.namespaces.append(name)
        return name

    @staticmethod
    def ifname() -> str:
        return f"mobk{os.getpid() % 100000}{next(_seq)}"[:15]

    def backend(self, ns: str, ifname: str) -> UserspaceBackend:
        b = UserspaceBackend(links=IPRouteLinks(ns), netns=ns, state_dir=str(self.state_dir))
        self.backends.append((b, ifname))
        return b

    def close(self) -> None:
        for b, ifname in self.backends:
            b.stop(ifname)  # SIGTERM by verified pid; a no-op when already gone
            b.close()
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path / "state")
    try:
        yield lab
    finally:
        lab.close()


def wg_dump(ns: str, ifname: str) -> tuple[list[str], dict[str, list[str]]]:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "wg", "show", ifname, "dump"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    device = out[0].split("\t")
    peers = {line.split("\t")[0]: line.split("\t") for line in out[1:]}
    return device, peers


def wg_set(ns: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "wg", "set", *args], check=True)


def desired_for(ifname: str, n_peers: int = 3, port: int = 51820) -> DesiredInterface:
    peers = {
        key(n): DesiredPeer(
            key(n), (f"10.44.0.{n}/32",), endpoint=f"203.0.113.{n}:51820", keepalive=25, name=f"dev-{n}"
        )
        for n in range(2, 2 + n_peers)
    }
    return DesiredInterface(
        name=ifname,
        private_key=key(1),
        listen_port=port,
        addresses=("10.44.0.1/24",),
        peers=peers,
        routes=("10.45.0.0/16",),
    )


def converge(backend: UserspaceBackend, want: DesiredInterface) -> int:
    ops = plan(want, backend.observe(want.name), time.time())
    backend.apply(ops)
    assert plan(want, backend.observe(want.name), time.time()) == ()
    return len(ops)


def test_converge_read_back_independently_then_noop(lab: Lab) -> None:
    ns, ifname = lab.netns(), lab.ifname()
    backend = lab.backend(ns, ifname)
    want = desired_for(ifname)
    assert converge(backend, want) > 0
    device, peers = wg_dump(ns, ifname)
    assert device[1] == public_key(key(1)) and device[2] == "51820"
    assert set(peers) == set(want.peers)
    p = peers[key(2)]
    assert p[2] == "203.0.113.2:51820" and p[3] == "10.44.0.2/32" and p[7] == "25"
    link = subprocess.run(
        ["ip", "-n", ns, "-o", "addr", "show", "dev", ifname], capture_output=True, text=True, check=True
    ).stdout
    assert "10.44.0.1/24" in link
    route = subprocess.run(
        ["ip", "-n", ns, "route", "show", "dev", ifname], capture_output=True, text=True, check=True
    ).stdout
    assert "10.45.0.0/16" in route
    assert converge(backend, want) == 0


def test_drift_made_with_wg_set_is_corrected(lab: Lab) -> None:
    ns, ifname = lab.netns(), lab.ifname()
    backend = lab.backend(ns, ifname)
    want = desired_for(ifname)
    converge(backend, want)
    wg_set(ns, ifname, "peer", key(2), "allowed-ips", "10.44.0.99/32")
    wg_set(ns, ifname, "peer", key(3), "remove")
    wg_set(ns, ifname, "peer", key(50), "allowed-ips", "10.44.0.50/32")
    wg_set(ns, ifname, "listen-port", "51999")
    drift = plan(want, backend.observe(ifname), time.time())
    assert [type(op).__name__ for op in drift] == ["RemovePeer", "SetListenPort", "UpdatePeer", "AddPeer"]
    backend.apply(drift)
    _, peers = wg_dump(ns, ifname)
    assert set(peers) == set(want.peers)
    assert peers[key(2)][3] == "10.44.0.2/32"  # an allowed IP removed: full replacement works
    assert plan(want, backend.observe(ifname), time.time()) == ()


def test_killed_wireguard_go_is_restarted_by_the_next_run(lab: Lab) -> None:
    ns, ifname = lab.netns(), lab.ifname()
    backend = lab.backend(ns, ifname)
    want = desired_for(ifname)
    converge(backend, want)
    # A later one-shot run is a new process: a new backend finds the daemon by its pid file.
    later = lab.backend(ns, ifname)
    pid = later.owned_pid(ifname)
    assert pid is not None and Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[-2] == ifname.encode()
    os.kill(pid, signal.SIGKILL)
    backend.owned_pid(ifname)  # reaps the zombie (we are its parent in this test)
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            if not later.observe(ifname).exists:
                break
        except BackendUnavailable:  # dying: socket still there, nobody answers
            pass
        time.sleep(0.05)
    obs = later.observe(ifname)
    assert not obs.exists
    ops = plan(want, obs, time.time())
    assert isinstance(ops[0], CreateInterface)
    later.apply(ops)
    new_pid = later.owned_pid(ifname)
    assert new_pid is not None and new_pid != pid
    assert plan(want, later.observe(ifname), time.time()) == ()


def test_busy_listen_port_is_temporary_and_fixed_next_pass(lab: Lab) -> None:
    ns, ifname = lab.netns(), lab.ifname()
    backend = lab.backend(ns, ifname)
    want = desired_for(ifname)
    converge(backend, want)
    holder = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c",
         ("import socket,sys,time\n"
          "s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM);s.bind(('::',51830))\n"
          "print('ok',flush=True);time.sleep(30)")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        moved = structs.replace(want, listen_port=51830)
        with pytest.raises(BackendUnavailable, match="in use"):
            backend.apply(plan(moved, backend.observe(ifname), time.time()))
        assert backend.observe(ifname).listen_port == 0  # wireguard-go left it without a port
    finally:
        holder.kill()
        holder.wait()
    assert converge(backend, moved) == 1  # only the listen port is left


def test_daemon_survives_the_agent_process(lab: Lab) -> None:
    ns, ifname = lab.netns(), lab.ifname()
    lab.backend(ns, ifname)  # so teardown kills the daemon
    code = (
        "import sys, time\n"
        "sys.path.insert(0, 'tests')\n"
        "from reconciler.backends.userspace import UserspaceBackend\n"
        "from reconciler.net.iproute import IPRouteLinks\n"
        "from reconciler.converge import plan\n"
        "from backends.test_userspace_netns import desired_for\n"
        f"b = UserspaceBackend(links=IPRouteLinks({ns!r}), netns={ns!r}, state_dir={str(lab.state_dir)!r})\n"
        f"want = desired_for({ifname!r})\n"
        "b.apply(plan(want, b.observe(want.name), time.time()))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2], timeout=30)
    backend = lab.backend(ns, ifname)
    assert backend.owned_pid(ifname) is not None
    assert plan(desired_for(ifname), backend.observe(ifname), time.time()) == ()


def _keypair(n: int) -> tuple[str, str]:
    private = base64.b64encode(bytes([n]) * 32).decode()
    return private, public_key(private)


def test_two_namespaces_ping_through_the_tunnel(lab: Lab) -> None:
    ns_a, ns_b = lab.netns(), lab.netns()
    veth_a, veth_b = f"mova{os.getpid() % 10000}", f"movb{os.getpid() % 10000}"
    subprocess.run(["ip", "link", "add", veth_a, "netns", ns_a, "type", "veth", "peer", "name", veth_b, "netns", ns_b], check=True)
    for ns, veth, addr in ((ns_a, veth_a, "10.201.0.1/24"), (ns_b, veth_b, "10.201.0.2/24")):
        subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", veth], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", veth, "up"], check=True)
    if_a, if_b = lab.ifname(), lab.ifname()
    (priv_a, pub_a), (priv_b, pub_b) = _keypair(11), _keypair(12)
    want_a = DesiredInterface(
        name=if_a, private_key=priv_a, listen_port=51820, addresses=("10.202.0.1/24",),
        peers={pub_b: DesiredPeer(pub_b, ("10.202.0.2/32",), "10.201.0.2:51820", 0, "b")},
    )
    want_b = DesiredInterface(
        name=if_b, private_key=priv_b, listen_port=51820, addresses=("10.202.0.2/24",),
        peers={pub_a: DesiredPeer(pub_a, ("10.202.0.1/32",), "10.201.0.1:51820", 0, "a")},
    )
    converge(lab.backend(ns_a, if_a), want_a)
    converge(lab.backend(ns_b, if_b), want_b)
    ping = subprocess.run(
        ["ip", "netns", "exec", ns_a, "ping", "-c", "2", "-W", "2", "-i", "0.2", "10.202.0.2"],
        capture_output=True, text=True, check=False,
    )
    assert ping.returncode == 0, ping.stdout + ping.stderr
    _, peers = wg_dump(ns_a, if_a)
    assert peers[pub_b][4] != "0"  # a handshake happened


def test_real_wireguard_go_accepts_the_batch_in_one_transaction(lab: Lab, monkeypatch) -> None:
    ns, ifname = lab.netns(), lab.ifname()
    backend = lab.backend(ns, ifname)

    def no_fallback(*args: object) -> None:
        raise AssertionError("the batched set was refused; fell back to one op per set")

    monkeypatch.setattr(backend, "_apply_singly", no_fallback)
    want = desired_for(ifname, n_peers=200)
    converge(backend, want)
    moved = structs.replace(
        want, private_key=key(77), listen_port=51822,
        peers={k: structs.replace(p, keepalive=0) for k, p in want.peers.items()},
    )
    assert converge(backend, moved) == 2 + 200
    device, peers = wg_dump(ns, ifname)
    assert device[1] == public_key(key(77)) and device[2] == "51822" and len(peers) == 200
    assert backend.stop(ifname) and not backend.stop(ifname)
    assert not backend.observe(ifname).exists
