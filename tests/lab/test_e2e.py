"""The e2e matrix: the whole system in the netns NAT lab (root; runs in CI).

One lab for the module (bringing it up costs seconds). The order matters and is
explicit: first the static matrix, then the changes, each asserted by what the
lab shows (pings, WireGuard peer state, the peer that carried the traffic).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from reconciler.lab import scenarios
from reconciler.lab.netns import in_ns
from reconciler.lab.runner import Lab
from reconciler.lab.topology import Topology

pytestmark = [pytest.mark.root, pytest.mark.e2e]

TIMINGS = Path(os.environ.get("MESHOPS_E2E_TIMINGS", ".lab/e2e-timings.json"))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tag = os.getpid() % 1000  # namespaces and wireguard-go sockets (/run is shared) per run
    lab = Lab(Topology(prefix=f"mo-e2e{tag}", wg_prefix=f"e{tag}"), tmp_path_factory.mktemp("lab"))
    try:
        lab.up()
        yield lab
    finally:
        notes = lab.down()
        assert not notes, notes


@pytest.fixture(scope="module")
def timings():
    found: dict[str, float | None] = {}
    yield found
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    TIMINGS.write_text(json.dumps(found, indent=2))


def test_every_pair_pings(lab, timings):
    t = scenarios.converge(lab)
    timings[t.name] = t.seconds
    rows = lab.table()
    assert [r for r in rows if not r.ok] == []


def test_each_pair_takes_the_expected_path(lab):
    expected = {(e.src, e.dst): e.kind for e in lab.expectations()}
    got = {(r.src, r.dst): r.kind for r in lab.table()}
    wrong = {pair: (got[pair], kind) for pair, kind in expected.items() if got[pair] != kind}
    assert wrong == {}, "pair: (observed, expected)"


class Pinger:
    """``ping -D`` from one namespace in the background; the longest silence."""

    def __init__(self, lab, src: str, dst: str) -> None:
        self.proc = subprocess.Popen(
            in_ns(lab.topo.ns(src), "ping", "-D", "-n", "-i", "0.2", "-W", "1",
                  lab.tunnel_ip[dst]), stdout=subprocess.PIPE, text=True)

    def longest_gap(self) -> float:
        """The longest silence between two answers, or from the last answer to now
        (an outage still going on when the pinger stops counts too)."""
        ended = time.time()
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        stamps = [float(m.group(1)) for m in re.finditer(r"^\[(\d+\.\d+)\].*icmp_seq", out,
                                                         re.MULTILINE)]
        assert len(stamps) > 10, out[-500:]
        return max(ended - stamps[-1], *(b - a for a, b in itertools.pairwise(stamps)))


def test_trust_root_rotation_with_agents_running(lab, timings):
    """Issue 12: rotate the signing key, then the CA, while agents run; one agent
    is stopped before both rotations and started after them. Every pair of running
    nodes is pinged throughout (one ``ping`` each way of each pair), so an outage
    anywhere shows, with its pair and its length."""
    lab.stop_agent("d1")
    running = [n for n in lab.keys if n != "d1"]
    pingers = {pair: Pinger(lab, *pair) for pair in lab.pairs(running)}
    started = time.monotonic()
    try:
        for signing, ca in ((True, False), (False, True)):
            newest = lab.rotate(signing=signing, ca=ca, overlap_seconds=20)
            # every running agent walks to the overlap root, then to the one that
            # retires the old key once the hub publishes it at the overlap's end
            t = lab.wait_until(lambda v=newest: all(lab.root_version(n) >= v for n in running),
                               90, step=0.5)
            assert t is not None, {n: lab.root_version(n) for n in running}
    finally:
        gaps = {f"{a}->{b}": round(p.longest_gap(), 2) for (a, b), p in pingers.items()}
        lab.start_agent("d1")
    timings["lab.rotation_longest_ping_gap"] = max(gaps.values())
    timings["lab.rotation_two_rotations"] = time.monotonic() - started
    # one pass of the lab's agents is about a second; a lost pass shows as ~2 s
    assert {pair: gap for pair, gap in gaps.items() if gap > 2.5} == {}, gaps
    # the agent stopped through both rotations walks the chain and converges
    t = lab.wait_until(lambda: lab.root_version("d1") >= newest and lab.probe("d1", "pub").ok,
                       60, step=0.5)
    timings["lab.rotation_offline_agent_converged"] = t
    assert t is not None, lab.root_version("d1")


def test_a_node_rotates_its_wireguard_key(lab, timings):
    """Issue 14: the new key waits in wireguard.key.next while the commit that
    carries its public half lands (here written as the hub's scoped rotation
    commit writes it: one line of the device file); the node switches in one
    pass. The longest ping gap is recorded; the goal is one keepalive (5 s here)."""
    import base64

    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from reconciler.fsio import atomic_write

    node = "a2"
    key = X25519PrivateKey.generate()
    private = base64.b64encode(key.private_bytes_raw()).decode()
    public = base64.b64encode(key.public_key().public_bytes(Encoding.Raw,
                                                           PublicFormat.Raw)).decode()
    key_file = lab.node_dir(node) / "wireguard.key"
    atomic_write(str(key_file) + ".next", (private + "\n").encode(), mode=0o600)
    pingers = [Pinger(lab, node, "pub"), Pinger(lab, "pub", node)]
    old = lab.keys[node]["wireguard"]
    path = lab.device_file(node)
    path.write_text(path.read_text().replace(old, public))
    lab.git("commit", "-qam", f"lab: rotate {node}'s WireGuard key")
    switched = lab.wait_until(lambda: key_file.read_text().strip() == private, 60, step=0.2)
    lab.keys[node]["wireguard"] = public
    assert switched is not None, "the agent never switched to the new key"
    assert lab.wait_until(lambda: lab.probe(node, "pub").ok, 30) is not None
    time.sleep(3)  # let the pingers see the tunnel settle
    gap = max(p.longest_gap() for p in pingers)
    timings["lab.key_rotation_longest_ping_gap"] = gap
    assert gap <= 5.0, gap


def test_a_commit_adds_a_device(lab, timings):
    t = scenarios.add_device(lab)
    timings[t.name] = t.seconds
    assert t.seconds is not None, t.detail


def test_a_commit_removes_a_device(lab, timings):
    t = scenarios.remove_device(lab)
    timings[t.name] = t.seconds
    assert t.seconds is not None, t.detail
    assert lab.probe("pub", "a3").ok is False
    lab.kill_agent_and_tunnel("a3")
    del lab.keys["a3"]


def test_a_node_moves_sites(lab, timings):
    t = scenarios.move(lab)
    timings[t.name] = t.seconds
    assert t.seconds is not None, t.detail


def test_relay_failover(lab, timings):
    t = scenarios.relay_failover(lab)
    timings[t.name] = t.seconds
    assert t.seconds is not None, t.detail
