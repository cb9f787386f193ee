"""The mapping test behind real iptables NAT, in network namespaces (root).

Builds, with names unique to this process (``mo-st-<pid>-*``)::

    site (10.66.0.2) -- gw (NAT; WAN 203.0.113.2) --+-- br0 in "inet" --+-- s1: StunResponder 198.51.100.10
                                                                      +-- s2: stund 198.51.100.20 + .21

Everything sits on one bridge with on-link routes for both documentation ranges,
so no router is needed. The gateway does plain MASQUERADE with the
port-restricted-cone DROP rules (expect "independent"), then
MASQUERADE --random-fully (expect "dependent"). Teardown kills only the pids it
started and deletes only its namespaces.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.root

PREFIX = f"mo-st-{os.getpid()}"
NS = {k: f"{PREFIX}-{k}" for k in ("inet", "s1", "s2", "gw", "site")}
S1_IP, S2_IPS, GW_WAN, GW_LAN, SITE_IP = (
    "198.51.100.10", ("198.51.100.20", "198.51.100.21"), "203.0.113.2", "10.66.0.1", "10.66.0.2")
PYTHON = sys.executable

RESPONDER = """
import sys, time
from reconciler.stun.server import StunResponder
r = StunResponder(sys.argv[1], 3478).start()
print("ready", flush=True)
sys.stdin.read()
r.stop()
"""

DISCOVER = """
import json, sys
from reconciler.stun.client import discover
d = discover(int(sys.argv[1]), [(sys.argv[2], 3478), (sys.argv[3], 3478)], timeout=3)
print(json.dumps({"mapping": d.mapping, "mapped": d.mapped, "public_ip": d.public_ip,
                  "local": d.local, "problems": d.problems}))
"""

PYSTUN = """
import json, socket, sys, stun
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
s.bind(("0.0.0.0", int(sys.argv[1])))
stun._initialize()
print(json.dumps(stun.stun_test(s, sys.argv[2], 3478, "0.0.0.0", int(sys.argv[1]))))
"""


def sh(*args: str, ns: str | None = None, check: bool = True) -> str:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
    return done.stdout


def py(ns: str, code: str, *args: str) -> dict:
    out = sh(PYTHON, "-c", code, *args, ns=ns)
    return json.loads(out.strip().splitlines()[-1])


def _host(name: str, ips: tuple[str, ...]) -> None:
    sh("ip", "-n", NS["inet"], "link", "add", name, "type", "veth", "peer", "name", "eth0",
       "netns", NS[name])
    sh("ip", "-n", NS["inet"], "link", "set", name, "master", "br0", "up")
    for ip in ips:
        sh("ip", "-n", NS[name], "addr", "add", f"{ip}/24", "dev", "eth0")
    sh("ip", "-n", NS[name], "link", "set", "eth0", "up")
    for net in ("198.51.100.0/24", "203.0.113.0/24"):
        sh("ip", "-n", NS[name], "route", "replace", net, "dev", "eth0")


def _wait_udp(ns: str, ip: str, port: int) -> None:
    for _ in range(100):
        if f"{ip}:{port}" in sh("ss", "-Hlun", ns=ns):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {ip}:{port} in {ns}")


@pytest.fixture(scope="module")
def lab() -> Iterator[dict[str, str]]:
    if shutil.which("stund") is None:
        pytest.fail("stund is missing: apt-get install stun-server (scripts/test does it)")
    procs: list[subprocess.Popen] = []
    try:
        for name in NS.values():
            sh("ip", "netns", "add", name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "-n", NS["inet"], "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", NS["inet"], "link", "set", "br0", "up")
        _host("s1", (S1_IP,))
        _host("s2", S2_IPS)
        _host("gw", (GW_WAN,))
        sh("ip", "-n", NS["gw"], "link", "add", "lan", "type", "veth", "peer", "name", "eth0",
           "netns", NS["site"])
        sh("ip", "-n", NS["gw"], "addr", "add", f"{GW_LAN}/24", "dev", "lan")
        sh("ip", "-n", NS["gw"], "link", "set", "lan", "up")
        sh("ip", "-n", NS["site"], "addr", "add", f"{SITE_IP}/24", "dev", "eth0")
        sh("ip", "-n", NS["site"], "link", "set", "eth0", "up")
        sh("ip", "-n", NS["site"], "route", "add", "default", "via", GW_LAN)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=NS["gw"])

        responder = subprocess.Popen(
            ["ip", "netns", "exec", NS["s1"], PYTHON, "-c", RESPONDER, S1_IP],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(responder)
        assert responder.stdout is not None and responder.stdout.readline().strip() == "ready"
        stund = subprocess.Popen(
            ["ip", "netns", "exec", NS["s2"], "stund", "-h", S2_IPS[0], "-a", S2_IPS[1]],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(stund)
        _wait_udp(NS["s2"], S2_IPS[0], 3478)
        yield NS
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for name in NS.values():
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def _nat(rules: list[list[str]]) -> None:
    gw = NS["gw"]
    for table in ("nat", "filter"):
        sh("iptables", "-t", table, "-F", ns=gw)
    for rule in rules:
        sh("iptables", *rule, ns=gw)


CONE = [
    ["-t", "nat", "-A", "POSTROUTING", "-o", "eth0", "-j", "MASQUERADE"],
    ["-A", "INPUT", "-i", "eth0", "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"],
    ["-A", "FORWARD", "-i", "eth0", "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"],
]
SYMMETRIC = [["-t", "nat", "-A", "POSTROUTING", "-o", "eth0", "-j", "MASQUERADE",
              "--random-fully"]]


def test_port_restricted_cone_nat_is_endpoint_independent(lab):
    _nat(CONE)
    found = py(lab["site"], DISCOVER, "41001", S1_IP, S2_IPS[0])
    assert found["mapping"] == "independent", found
    assert found["public_ip"] == GW_WAN
    ports = {addr.rsplit(":", 1)[1] for _, addr in found["mapped"]}
    assert len(found["mapped"]) == 2 and len(ports) == 1
    assert found["local"] == [f"{SITE_IP}:41001"]


def test_random_fully_masquerade_is_endpoint_dependent(lab):
    _nat(SYMMETRIC)
    found = py(lab["site"], DISCOVER, "41002", S1_IP, S2_IPS[0])
    assert found["mapping"] == "dependent", found
    assert found["public_ip"] == GW_WAN
    assert len({addr for _, addr in found["mapped"]}) == 2


def test_pystun3_binding_against_stund_through_the_nat(lab):
    _nat(CONE)
    result = py(lab["site"], PYSTUN, "41003", S2_IPS[0])
    assert result["Resp"] is True
    assert result["ExternalIP"] == GW_WAN
    assert result["ChangedIP"] == S2_IPS[1]  # stund is RFC 3489: it names its second address


def test_no_nat_means_the_mapped_address_is_the_local_one(lab):
    found = py(lab["gw"], DISCOVER, "41004", S1_IP, S2_IPS[0])
    assert found["mapping"] == "independent"
    assert [addr for _, addr in found["mapped"]] == [f"{GW_WAN}:41004"] * 2
