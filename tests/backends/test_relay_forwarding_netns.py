"""A relay's desired state, applied with the userspace backend in a fresh
namespace ``mo-fw-<pid>``, turns IP forwarding on there (read back
independently with ``ip netns exec NS sysctl -n``), and a second plan is
empty. Teardown stops the wireguard-go this test started (by its verified
pid) and deletes the namespace, tolerating "already gone".
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from converge.cases import key

from reconciler import structs
from reconciler.backends.userspace import UserspaceBackend
from reconciler.converge import SetForwarding, plan
from reconciler.model.wg import DesiredInterface, DesiredPeer
from reconciler.net.iproute import IPRouteLinks

pytestmark = pytest.mark.root


def sysctl_n(ns: str, key_name: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-n", key_name],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[tuple[str, str, UserspaceBackend]]:
    ns, ifname = f"mo-fw-{os.getpid()}", f"mofw{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    backend = UserspaceBackend(links=IPRouteLinks(ns), netns=ns, state_dir=str(tmp_path / "state"))
    try:
        yield ns, ifname, backend
    finally:
        backend.stop(ifname)
        backend.close()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def test_relay_turns_forwarding_on_in_its_namespace(relay: tuple[str, str, UserspaceBackend]) -> None:
    ns, ifname, backend = relay
    assert sysctl_n(ns, "net.ipv4.ip_forward") == "0"  # a fresh namespace does not forward
    want = DesiredInterface(
        name=ifname,
        private_key=key(1),
        listen_port=51870,
        addresses=("10.46.0.1/24",),
        peers={key(n): DesiredPeer(key(n), (f"10.46.0.{n}/32",), name=f"dev-{n}") for n in (2, 3)},
        forwarding=True,
    )
    ops = plan(want, backend.observe(ifname), time.time())
    assert SetForwarding(ifname, True) in ops
    backend.apply(ops)
    assert sysctl_n(ns, "net.ipv4.ip_forward") == "1"
    assert backend.observe(ifname).forwarding is True
    assert plan(want, backend.observe(ifname), time.time()) == ()
    # a non-relay desired state never turns it back off
    plain = structs.replace(want, forwarding=False)
    assert plan(plain, backend.observe(ifname), time.time()) == ()
    assert sysctl_n(ns, "net.ipv4.ip_forward") == "1"
