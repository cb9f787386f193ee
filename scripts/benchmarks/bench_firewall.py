"""Benchmarks for policy on the wire (the nftables ruleset of one device).

For one device of a 10,000-device org (IPv4 and IPv6 tunnel addresses) with a
20-rule policy (seven groups of about 1,400 devices each, tags, port ranges, a
routed subnet, the internet). The device (``DEVICE``) is a laptop that three
group rules and the ``*`` ICMP rule target: about 5,000 devices may reach it,
so its sets hold 10,000 addresses. The extra fields repeat the figure for a
relay, which must hold every rule's pairs (55,000 addresses): the worst case.

* ``firewall_generate_10k``: ``desired_ruleset`` from the manifest (median of 5
  warm runs; goal 50 ms). ``cold_ms`` is the first run of a process (tunnel
  addresses canonicalised once), ``render_ms`` the nft script on top.
* ``firewall_apply_10k``: ``Nftables.apply`` (``nft -f``, one transaction) in a
  fresh network namespace (median of 5; goal 300 ms; needs root and nft).
  The relay's figure is ``relay_ms``.
* ``firewall_noop_check_10k``: the next pass when nothing changed: read the
  table back (``nft -j list table inet meshops``), parse it into the normal
  form and ``plan_firewall`` it to ``()`` (median of 5; goal 50 ms).
* ``firewall_statements_{100,1k,10k}``: statements (rules) of the ruleset at
  100, 1,000 and 10,000 devices, same policy; flat. Set elements grow, and
  are reported in the extra fields.
* ``firewall_relay_forward_overhead``: iperf3 TCP throughput through a middle
  namespace forwarding between two veths, with the relay's forward filter
  versus without it, six interleaved pairs; the value is the loss in percent
  from the median of the pairwise ratios (goal 10 %). Established packets
  match the filter's first statement, so only a flow's first packet walks the
  whole chain; the figure is dominated by the machine's load. veths
  stand in for WireGuard here (the kernel has no WireGuard module; the
  filter's cost does not depend on the tunnel).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from reconciler.converge import plan_firewall
from reconciler.model.firewall import EMPTY
from reconciler.model.manifest import Manifest
from reconciler.model.repo import (
    Device,
    Group,
    Organization,
    OrgState,
    Policy,
    PortRange,
    Rule,
    User,
)
from reconciler.net.nftables import Nftables, render
from reconciler.pki.manifest import build_manifest
from reconciler.policy.firewall import desired_ruleset

TAGS = ("web", "db", "cache", "ci", "laptop", "printer", "gpu", "edge")
ME = "relay-0"  # the relay (worst case)
DEVICE = "dev-00004"  # the laptop (the benchmarked device)


def synthetic_org(n: int, rules: int = 20) -> OrgState:
    base4 = int(ipaddress.ip_address("10.0.0.1"))
    base6 = int(ipaddress.ip_address("fd00::1"))
    users = n // 10 + 1
    devices: dict[str, Device] = {}
    for i in range(n):
        name = ME if i == n - 1 else f"dev-{i:05d}"
        devices[name] = Device(
            name=name, org="bench", owner=f"user-{i % users:04d}",
            wireguard_public_key=f"wg{i}", identity_public_key=f"id{i}",
            tunnel_ips=(str(ipaddress.ip_address(base4 + i)),
                        str(ipaddress.ip_address(base6 + i))),
            tags=(TAGS[i % len(TAGS)],) + (("prod",) if i % 3 == 0 else ()),
            relay=name == ME, endpoint="198.51.100.1:51820" if name == ME else None,
            routes=("192.168.50.0/24",) if i == 1 else (),
            exit_node=i == 2,
        )
    groups = {f"team-{g}": Group(f"team-{g}", users=tuple(f"user-{u:04d}" for u in
                                                           range(g, users, 7)),
                                 tags=(TAGS[g % len(TAGS)],))
              for g in range(7)}
    rule_list = [
        Rule(src=(f"group:team-{i % 7}",), dst=(f"tag:{TAGS[(i + 1) % len(TAGS)]}",),
             proto=("tcp", "udp", "any")[i % 3],
             ports=(PortRange(1000 + i, 1000 + i * 3), PortRange(22, 22)), name=f"r{i}")
        for i in range(rules - 3)
    ]
    rule_list += [
        Rule(src=("tag:laptop",), dst=("route:192.168.50.0/24",), proto="tcp",
             ports=(PortRange(443, 443),), name="lan"),
        Rule(src=("group:team-0",), dst=("internet",), proto="any", name="internet"),
        Rule(src=("*",), dst=("*",), proto="icmp", name="ping"),
    ]
    users_map = {f"user-{u:04d}": User(f"user-{u:04d}", "bench", "u@example.com", "i", str(u))
                 for u in range(users)}
    return OrgState(Organization("bench", "10.0.0.0/16", "fd00::/64"), users=users_map,
                    devices=devices,
                    policy=Policy(groups=groups, rules=tuple(
                        Rule(r.src, r.dst, r.proto, r.ports, r.name, i)
                        for i, r in enumerate(rule_list))))


def manifest(n: int) -> Manifest:
    state = synthetic_org(n)
    fps = {name: "A" * 43 for name in state.devices}
    return build_manifest(state, commit="c" * 40, serial=1, now=0, lifetime_s=86400,
                          cert_fingerprints=fps)


def _median(fn: Callable[[], Any], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _generate(m: Manifest, me: str) -> dict[str, Any]:
    from reconciler.policy import firewall

    firewall._CANON.clear()
    t0 = time.perf_counter()
    rs = desired_ruleset(m, me, "wg0")
    cold = time.perf_counter() - t0
    return {"warm_ms": round(_median(lambda: desired_ruleset(m, me, "wg0")) * 1000, 2),
            "cold_ms": round(cold * 1000, 2),
            "render_ms": round(_median(lambda: render(rs)) * 1000, 2),
            "statements": rs.statements, "sets": len(rs.sets), "elements": rs.elements}


def bench_generate() -> dict[str, Any]:
    m = manifest(10_000)
    dev = _generate(m, DEVICE)
    relay = _generate(m, ME)
    return {"value": dev.pop("warm_ms"), "unit": "ms", "goal": 50.0, **dev,
            **{f"relay_{k}": v for k, v in relay.items()}}


class _Netns:
    def __init__(self, tag: str) -> None:
        self.name = f"mo-bench-fw-{os.getpid()}-{tag}"

    def __enter__(self) -> str:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        return self.name

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)


def _needs_root() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("nft") is None:
        return "nft not installed: apt-get install nftables"
    return None


def _skipped(why: str, goal: float, unit: str = "ms") -> dict[str, Any]:
    return {"value": float("nan"), "unit": unit, "goal": goal, "skipped": why}


def _apply(m: Manifest, me: str) -> tuple[float, float, float]:
    """(apply, no-op check, observe alone) in seconds, medians of 5, in a fresh netns."""
    rs = desired_ruleset(m, me, "wg0")
    with _Netns(me) as ns:
        fw = Nftables(ns)
        apply = _median(lambda: fw.apply(rs))

        def check() -> None:
            assert plan_firewall(rs, fw.observe(), "wg0") == ()

        noop = _median(check)
        observe = _median(fw.observe)
    return apply, noop, observe


_RESULTS: dict[str, tuple[float, float, float]] = {}


def _applied(me: str) -> tuple[float, float, float]:
    if me not in _RESULTS:
        _RESULTS[me] = _apply(manifest(10_000), me)
    return _RESULTS[me]


def bench_apply() -> dict[str, Any]:
    why = _needs_root()
    if why:
        return _skipped(why, 300.0)
    value = _applied(DEVICE)[0]
    return {"value": value * 1000, "unit": "ms", "goal": 300.0,
            "relay_ms": round(_applied(ME)[0] * 1000, 1)}


def bench_noop() -> dict[str, Any]:
    why = _needs_root()
    if why:
        return _skipped(why, 50.0)
    _, noop, observe = _applied(DEVICE)
    return {"value": noop * 1000, "unit": "ms", "goal": 50.0,
            "observe_ms": round(observe * 1000, 1),
            "relay_ms": round(_applied(ME)[1] * 1000, 1)}


def _statements(n: int) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        m = manifest(n)
        rs = desired_ruleset(m, DEVICE, "wg0")
        relay = desired_ruleset(m, ME, "wg0")
        return {"value": float(rs.statements), "unit": "stmts", "goal": None,
                "elements": rs.elements, "relay_statements": relay.statements,
                "relay_elements": relay.elements}
    return run


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def _iperf(client: str, server: str, dst: str, seconds: int = 4) -> float:
    srv = subprocess.Popen(["ip", "netns", "exec", server, "iperf3", "-s", "-1", "-B", dst],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        out = subprocess.run(["ip", "netns", "exec", client, "iperf3", "-c", dst, "-t",
                              str(seconds), "-J"], capture_output=True, text=True, check=True)
        return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"])
    finally:
        srv.kill()
        srv.wait()


def bench_relay_overhead() -> dict[str, Any]:
    why = _needs_root() or (None if shutil.which("iperf3") else "iperf3 not installed")
    if why:
        return _skipped(why, 10.0, "%")
    m = manifest(10_000)
    names = {k: f"mo-bench-fw-{os.getpid()}-{k}" for k in ("a", "b", "r")}
    tag = str(os.getpid() % 100000)
    ra, rb, ia, ib = (f"bf{x}{tag}"[:15] for x in ("ra", "rb", "a", "b"))
    for ns in names.values():
        _sh("ip", "netns", "add", ns)
    try:
        a, b, r = names["a"], names["b"], names["r"]
        _sh("ip", "link", "add", ia, "netns", a, "type", "veth", "peer", "name", ra, "netns", r)
        _sh("ip", "link", "add", ib, "netns", b, "type", "veth", "peer", "name", rb, "netns", r)
        for ns, ifname, addr in ((a, ia, "172.31.1.2/30"), (r, ra, "172.31.1.1/30"),
                                 (b, ib, "172.31.2.2/30"), (r, rb, "172.31.2.1/30")):
            _sh("ip", "-n", ns, "addr", "add", addr, "dev", ifname)
            _sh("ip", "-n", ns, "link", "set", ifname, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        dev_a = next(d for d in m.devices if "g:team-0" in d.labels and "laptop" not in d.tags)
        dev_b = next(d for d in m.devices if "t:db" in d.labels or "db" in d.tags)
        src, dst = dev_a.tunnel_ips[0], dev_b.tunnel_ips[0]
        _sh("ip", "-n", a, "addr", "add", f"{src}/32", "dev", ia)
        _sh("ip", "-n", b, "addr", "add", f"{dst}/32", "dev", ib)
        _sh("ip", "-n", a, "route", "add", f"{dst}/32", "via", "172.31.1.1", "src", src)
        _sh("ip", "-n", b, "route", "add", f"{src}/32", "via", "172.31.2.1", "src", dst)
        _sh("ip", "-n", r, "route", "add", f"{src}/32", "via", "172.31.1.2")
        _sh("ip", "-n", r, "route", "add", f"{dst}/32", "via", "172.31.2.2")
        _sh("ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        filtered = _allow_iperf(desired_ruleset(m, ME, ra))
        fw = Nftables(r)
        runs: dict[bool, list[float]] = {False: [], True: []}
        for i in range(6):  # interleaved pairs, alternating which goes first: load drifts
            for on in ((False, True) if i % 2 == 0 else (True, False)):
                fw.apply(filtered if on else EMPTY)
                runs[on].append(_iperf(a, b, dst, seconds=2))
        without, with_filter = statistics.median(runs[False]), statistics.median(runs[True])
        ratios = [w / wo for w, wo in zip(runs[True], runs[False], strict=True)]
    finally:
        for ns in names.values():
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
    loss = max(0.0, (1 - statistics.median(ratios)) * 100)
    return {"value": loss, "unit": "%", "goal": 10.0,
            "without_gbit": round(without / 1e9, 2), "with_gbit": round(with_filter / 1e9, 2),
            "pair_ratios": [round(r, 2) for r in ratios]}


def _allow_iperf(rs: Any) -> Any:
    """The benchmark ruleset plus iperf3's port (5201) in the forward chain's rules:
    the full 10,000-device sets and 20 rules stay, iperf's flow matches the last."""
    from reconciler.model.firewall import Match, Rule
    from reconciler.structs import replace

    fwd = rs.chain("mesh_fwd")
    first = next(r for r in fwd.rules if r.matches and r.matches[0].field == "ip saddr")
    extra = Rule((Match("ip saddr", ("@org_4",)) if rs.set("org_4") else first.matches[0],
                  Match("tcp dport", ("5201",))), "accept", "benchmark: iperf3")
    rules = (*fwd.rules[:-1], extra, fwd.rules[-1])
    chains = tuple(replace(c, rules=rules) if c.name == "mesh_fwd" else c for c in rs.chains)
    return replace(rs, chains=chains)


BENCHMARKS = {
    "firewall_generate_10k": bench_generate,
    "firewall_apply_10k": bench_apply,
    "firewall_noop_check_10k": bench_noop,
    "firewall_statements_100": _statements(100),
    "firewall_statements_1k": _statements(1000),
    "firewall_statements_10k": _statements(10_000),
    "firewall_relay_forward_overhead": bench_relay_overhead,
}

if __name__ == "__main__":
    for key in sys.argv[1:] or list(BENCHMARKS):
        print(key, BENCHMARKS[key]())
