"""The ruleset on the wire: real packets between network namespaces joined by
veths (no WireGuard needed: a veth plays the mesh interface).

* receiver: the device's input hook lets exactly what policy allows reach it;
* relay: a middle namespace forwards between two others only the (src, dst,
  proto, port) policy accepts, and replies of accepted flows.

Every probe is also asked of ``policy.evaluate_compiled``: the wire must agree.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from itertools import count

import pytest
from fworgs import devices, manifest, org
from policyorgs import ports, rules

from reconciler.model.firewall import EMPTY
from reconciler.model.repo import Policy, Rule
from reconciler.net.nftables import Nftables
from reconciler.policy import evaluate_compiled
from reconciler.policy.firewall import desired_ruleset

pytestmark = pytest.mark.root
_seq = count()

POLICY = Policy(rules=rules(
    Rule(("device:laptop-a",), ("tag:web",), "tcp", ports(8080), "a-web"),
    Rule(("tag:laptop",), ("tag:web",), "udp", ports(53), "dns"),
    Rule(("device:laptop-a",), ("tag:web",), "icmp", (), "ping"),
    Rule(("tag:laptop",), ("tag:web",), "tcp", ports((9000, 9001)), "range"),
))
ADDR = {"laptop-a": "10.10.0.2", "laptop-b": "10.10.0.3", "web-1": "10.10.0.4"}
FLOWS = [(src, proto, port) for src in ("laptop-a", "laptop-b")
         for proto, port in (("tcp", 8080), ("tcp", 9090), ("tcp", 9001), ("udp", 53),
                             ("udp", 8080), ("icmp", None))]

SERVER = r"""
import socket, sys, threading
def tcp(p):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", p)); s.listen(16)
    while True:
        c, _ = s.accept(); c.sendall(b"ok"); c.close()
def udp(p):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", p))
    while True:
        data, peer = s.recvfrom(100); s.sendto(b"ok", peer)
for p in (53, 8080, 9090, 9001):
    threading.Thread(target=tcp, args=(p,), daemon=True).start()
    threading.Thread(target=udp, args=(p,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""

PROBE = r"""
import json, socket, subprocess, sys
dst, flows = sys.argv[1], json.loads(sys.argv[2])
out = []
for src, proto, port in flows:
    try:
        if proto == "icmp":
            r = subprocess.run(["ping", "-n", "-c1", "-W1", "-I", src, dst], capture_output=True)
            out.append(r.returncode == 0); continue
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        s = socket.socket(socket.AF_INET, kind); s.settimeout(0.6); s.bind((src, 0))
        if proto == "tcp":
            s.connect((dst, port)); out.append(s.recv(2) == b"ok")
        else:
            s.sendto(b"hi", (dst, port)); out.append(s.recvfrom(2)[0] == b"ok")
        s.close()
    except OSError:
        out.append(False)
print(json.dumps(out))
"""


def ping(ns: str, dst: str, src: str | None = None) -> bool:
    cmd = ["ip", "netns", "exec", ns, "ping", "-n", "-c1", "-W1", *(("-I", src) if src else ()),
           dst]
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def nsx(ns: str, *cmd: str) -> None:
    sh("ip", "netns", "exec", ns, *cmd)


@pytest.fixture
def names() -> Iterator[dict[str, str]]:
    if shutil.which("nft") is None:
        pytest.skip("nft not installed: apt-get install nftables")
    tag = f"{os.getpid() % 100000}{next(_seq)}"
    made = {k: f"mo-fw-{tag}-{k}" for k in ("a", "b", "r")}
    for ns in made.values():
        sh("ip", "netns", "add", ns)
    try:
        yield made | {f"if_{k}": f"fw{k}{tag}"[:15] for k in ("a", "b", "ra", "rb")}
    finally:
        for ns in made.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def veth(ns1: str, if1: str, ns2: str, if2: str) -> None:
    sh("ip", "link", "add", if1, "netns", ns1, "type", "veth", "peer", "name", if2, "netns", ns2)
    for ns, ifname in ((ns1, if1), (ns2, if2)):
        nsx(ns, "ip", "link", "set", ifname, "up")
    nsx(ns1, "ip", "link", "set", "lo", "up")
    nsx(ns2, "ip", "link", "set", "lo", "up")


def serve(ns: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def probe(ns: str, dst: str, flows_by_name: list | None = None) -> list[bool]:
    flows = [(ADDR[s], proto, port) for s, proto, port in (flows_by_name or FLOWS)]
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", PROBE, dst,
                          json.dumps(flows)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def engine(m) -> list[bool]:
    labels = {d.name: d.labels for d in m.devices}
    return [evaluate_compiled(m.policy, labels, src, "web-1", proto, port).accepted
            for src, proto, port in FLOWS]


EXPECTED = [True, False, True, True, False, True,     # laptop-a
            False, False, True, True, False, False]   # laptop-b


def test_receiver_enforces_policy_on_the_wire(names):
    a, b = names["a"], names["b"]
    veth(a, names["if_a"], b, names["if_b"])
    nsx(a, "ip", "addr", "add", "10.10.0.2/24", "dev", names["if_a"])
    nsx(a, "ip", "addr", "add", "10.10.0.3/24", "dev", names["if_a"])
    nsx(b, "ip", "addr", "add", "10.10.0.4/24", "dev", names["if_b"])
    m = manifest(org(POLICY))
    server = serve(b)
    try:
        assert all(probe(a, "10.10.0.4")), "without a firewall everything passes"
        Nftables(b).apply(desired_ruleset(m, "web-1", names["if_b"]))
        wire = probe(a, "10.10.0.4")
        assert wire == engine(m) == EXPECTED
        # the reverse direction: web-1 opens nothing towards laptop-a's firewall
        Nftables(a).apply(desired_ruleset(m, "laptop-a", names["if_a"]))
        assert not ping(b, "10.10.0.2")
        # ... while laptop-a's own allowed flows still get their replies through
        assert probe(a, "10.10.0.4") == EXPECTED
    finally:
        server.kill()
        server.wait()


def test_full_mesh_accepts_the_org_and_drops_outsiders(names):
    a, b = names["a"], names["b"]
    veth(a, names["if_a"], b, names["if_b"])
    nsx(a, "ip", "addr", "add", "10.10.0.2/24", "dev", names["if_a"])
    nsx(a, "ip", "addr", "add", "10.99.0.2/16", "dev", names["if_a"])
    nsx(b, "ip", "addr", "add", "10.10.0.4/24", "dev", names["if_b"])
    nsx(b, "ip", "addr", "add", "10.99.0.4/16", "dev", names["if_b"])
    Nftables(b).apply(desired_ruleset(manifest(org(None)), "web-1", names["if_b"]))
    assert ping(a, "10.10.0.4", "10.10.0.2")
    assert not ping(a, "10.99.0.4", "10.99.0.2")


def _relay_site(names: dict[str, str]) -> None:
    a, b, r = names["a"], names["b"], names["r"]
    veth(a, names["if_a"], r, names["if_ra"])
    veth(b, names["if_b"], r, names["if_rb"])
    nsx(r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    nsx(r, "ip", "addr", "add", "172.31.1.1/30", "dev", names["if_ra"])
    nsx(r, "ip", "addr", "add", "172.31.2.1/30", "dev", names["if_rb"])
    nsx(a, "ip", "addr", "add", "172.31.1.2/30", "dev", names["if_a"])
    nsx(b, "ip", "addr", "add", "172.31.2.2/30", "dev", names["if_b"])
    for ip in ("10.10.0.2", "10.10.0.3"):
        nsx(a, "ip", "addr", "add", f"{ip}/32", "dev", names["if_a"])
        nsx(r, "ip", "route", "add", f"{ip}/32", "via", "172.31.1.2")
    nsx(b, "ip", "addr", "add", "10.10.0.4/32", "dev", names["if_b"])
    nsx(r, "ip", "route", "add", "10.10.0.4/32", "via", "172.31.2.2")
    nsx(a, "ip", "route", "add", "10.10.0.4/32", "via", "172.31.1.1")
    nsx(b, "ip", "route", "add", "10.10.0.0/24", "via", "172.31.2.1", "src", "10.10.0.4")


def test_relay_forwards_only_what_policy_accepts(names):
    a, b, r = names["a"], names["b"], names["r"]
    _relay_site(names)
    m = manifest(org(POLICY))
    server = serve(b)
    try:
        assert all(probe(a, "10.10.0.4")), "the relay forwards everything without a firewall"
        # the relay's "mesh interface" is the veth towards A: every A<->B packet crosses it
        Nftables(r).apply(desired_ruleset(m, "relay-1", names["if_ra"]))
        t0 = time.monotonic()
        assert probe(a, "10.10.0.4") == engine(m) == EXPECTED
        assert time.monotonic() - t0 < 30
        # new flows from B to A are not accepted by any rule: dropped at the relay
        assert not ping(b, "10.10.0.2", "10.10.0.4")
    finally:
        server.kill()
        server.wait()


def test_devices_of_the_test_org():
    assert {d.name for d in devices()} >= set(ADDR)


WHO = r"""
import socket, sys, threading
def tcp(p):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", p)); s.listen(16)
    while True:
        c, peer = s.accept(); c.sendall(peer[0].encode()); c.close()
for p in (22, 23):
    threading.Thread(target=tcp, args=(p,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""

WHO_PROBE = r"""
import json, socket, sys
out = []
for src, dst, port in json.loads(sys.argv[1]):
    try:
        s = socket.socket(); s.settimeout(0.6); s.bind((src, 0)); s.connect((dst, port))
        out.append(s.recv(64).decode()); s.close()
    except OSError:
        out.append(None)
print(json.dumps(out))
"""


def who_probe(ns: str, flows: list[tuple[str, str, int]]) -> list[str | None]:
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", WHO_PROBE,
                          json.dumps(flows)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def _site(names: dict[str, str], far: str, near: str, *, back_route: bool) -> None:
    """a (laptops 10.10.0.2 and .3) -- r (the mesh side is if_ra) -- b (a host at
    ``far`` on r's other side, r holding ``near``)."""
    a, b, r = names["a"], names["b"], names["r"]
    veth(a, names["if_a"], r, names["if_ra"])
    veth(b, names["if_b"], r, names["if_rb"])
    nsx(r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    nsx(r, "ip", "addr", "add", "172.31.1.1/30", "dev", names["if_ra"])
    nsx(a, "ip", "addr", "add", "172.31.1.2/30", "dev", names["if_a"])
    for ip in ("10.10.0.2", "10.10.0.3"):
        nsx(a, "ip", "addr", "add", f"{ip}/32", "dev", names["if_a"])
        nsx(r, "ip", "route", "add", f"{ip}/32", "via", "172.31.1.2")
    nsx(r, "ip", "addr", "add", f"{near}/24", "dev", names["if_rb"])
    nsx(b, "ip", "addr", "add", f"{far}/24", "dev", names["if_b"])
    nsx(a, "ip", "route", "add", f"{far}/32", "via", "172.31.1.1")
    if back_route:  # the LAN routes the org CIDR back to its router
        nsx(b, "ip", "route", "add", "10.10.0.0/24", "via", near)


def _who_server(ns: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", WHO],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize("keep_sources", [False, True])
def test_subnet_router_forwards_what_route_rules_allow(names, keep_sources):
    """routes-exit policy: laptops may reach 192.168.10.0/24 on tcp/22 only; the
    router masquerades unless masquerade_routes is false."""
    from fworgs import POLICIES

    _site(names, "192.168.10.5", "192.168.10.1", back_route=keep_sources)
    m = manifest(org(POLICIES["routes-exit"], keep_sources=keep_sources))
    Nftables(names["r"]).apply(desired_ruleset(m, "router-1", names["if_ra"]))
    server = _who_server(names["b"])
    try:
        seen = who_probe(names["a"], [("10.10.0.2", "192.168.10.5", 22),
                                      ("10.10.0.2", "192.168.10.5", 23),
                                      ("10.10.0.3", "192.168.10.5", 22)])
    finally:
        server.kill()
        server.wait()
    src = ("10.10.0.2", "10.10.0.3") if keep_sources else ("192.168.10.1", "192.168.10.1")
    assert seen == [src[0], None, src[1]]
    if keep_sources:  # the LAN host has a route, yet cannot open a flow into the mesh
        assert not ping(names["b"], "10.10.0.2")


def test_exit_node_forwards_and_masquerades_only_allowed_clients(names):
    """Only laptop-b has an internet rule; the internet host sees the exit node."""
    from fworgs import POLICIES

    _site(names, "198.51.100.9", "198.51.100.1", back_route=False)
    m = manifest(org(POLICIES["routes-exit"]))
    labels = {d.name: d.labels for d in m.devices}
    Nftables(names["r"]).apply(desired_ruleset(m, "exit-1", names["if_ra"]))
    server = _who_server(names["b"])
    try:
        seen = who_probe(names["a"], [("10.10.0.3", "198.51.100.9", 22),
                                      ("10.10.0.2", "198.51.100.9", 22)])
    finally:
        server.kill()
        server.wait()
    assert seen == ["198.51.100.1", None]
    engine_says = [evaluate_compiled(m.policy, labels, src, "198.51.100.9", "tcp", 22,
                                     org_cidrs=(m.cidr_v4,), routes=("192.168.10.0/24",)
                                     ).accepted for src in ("laptop-b", "laptop-a")]
    assert engine_says == [s is not None for s in seen]


SELECTORS = ["*", "tag:laptop", "device:laptop-a", "user:bob", "tag:web", "device:web-1"]
PORT_CHOICES = [(53,), (8080,), ((9000, 9001),), (53, 9090), ()]
SAMPLED = [(src, proto, port) for src in ("laptop-a", "laptop-b")
           for proto, port in (("tcp", 53), ("tcp", 8080), ("tcp", 9001), ("tcp", 9090),
                               ("udp", 53), ("udp", 9001), ("icmp", None))]


def random_policy(seed: int) -> Policy:
    rng = random.Random(seed)
    out = []
    for i in range(rng.randint(1, 4)):
        proto = rng.choice(["tcp", "udp", "icmp", "any"])
        chosen = () if proto == "icmp" else rng.choice(PORT_CHOICES)
        out.append(Rule(tuple(rng.sample(SELECTORS, rng.randint(1, 2))),
                        tuple(rng.sample(SELECTORS, rng.randint(1, 2))), proto,
                        ports(*chosen), f"r{i}"))
    return Policy(rules=rules(*out))


# seeds picked so the three policies cover tcp, udp, icmp and any, with and without
# ports, and accept 6-10 of the 14 sampled flows (the rest must be dropped)
@pytest.mark.slow
@pytest.mark.parametrize("seed", [9, 24, 44])
def test_wire_agrees_with_the_engine_on_random_policies(names, seed):
    """Receiver (web-1's input hook) and relay (forward hook) for random policies:
    every sampled flow passes exactly when ``evaluate_compiled`` accepts it."""
    a, b, r = names["a"], names["b"], names["r"]
    _relay_site(names)
    m = manifest(org(random_policy(seed)))
    labels = {d.name: d.labels for d in m.devices}
    want = [evaluate_compiled(m.policy, labels, src, "web-1", proto, port).accepted
            for src, proto, port in SAMPLED]
    server = serve(b)
    try:
        Nftables(r).apply(desired_ruleset(m, "relay-1", names["if_ra"]))
        via_relay = probe(a, "10.10.0.4", SAMPLED)
        Nftables(r).apply(EMPTY)
        Nftables(b).apply(desired_ruleset(m, "web-1", names["if_b"]))
        at_receiver = probe(a, "10.10.0.4", SAMPLED)
    finally:
        server.kill()
        server.wait()
    disagreements = [(flow, w) for flow, w, x, y in zip(SAMPLED, want, via_relay, at_receiver,
                                                         strict=True) if not w == x == y]
    assert disagreements == [], (m.policy, disagreements)
