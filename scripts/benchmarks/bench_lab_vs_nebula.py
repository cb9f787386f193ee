"""meshops beside Nebula in the same NAT lab, measured in one run (issue 15).

``lab_vs_nebula`` builds the lab's topology (``reconciler.lab.topology``) three
times in a row, measures each system the same way, then brings the three up
together for the throughput rounds:

1. meshops (``reconciler.lab.runner.Lab``: hub, stund, daemon agents,
   wireguard-go; the lab's short timers);
2. Nebula 1.6.1 with relays usable by every node behind a NAT (``natted``: no
   knowledge of NAT types, as meshops is given none);
3. Nebula with relays listed only by the nodes behind a symmetric NAT
   (``symmetric``: what an operator who knows the NAT types would write).

The Nebula configuration is ``scripts/benchmarks/nebula/node.yml`` (every
choice commented); its firewall is generated from the meshops lab org's
compiled policy (``reconciler.lab.nebula.inbound_rules``).

Each system-neutral figure is measured by the same code for every system:

* **cold start -> full mesh**: from the moment the tunnel daemons are started
  (meshops: right after ``Lab.up`` spawned the agents, hub already serving;
  Nebula: right before the nodes start, lighthouse already bound) until every
  ordered pair has answered a ping. All pending pairs are pinged in parallel,
  once per sweep; a pair's time is its ping's start plus the reply's RTT.
* **the path matrix**, after that: each system's own reader (WireGuard
  counters for meshops, both host maps plus relay byte counters for Nebula).
* **a new node's first ping**: ``a3`` joins site A (cone NAT); from the moment
  its daemon is started (meshops: after its commit and ``agent run``; Nebula:
  after ``nebula-cert sign`` and ``nebula``), ``pub`` pings it back to back;
  then the time until it and every node have pinged each other, and the paths
  it took to ``pub``, ``d1`` (cone, another site) and ``b1`` (symmetric).
* **removal -> cut off**: ``a3`` pings every other node every 50 ms; the
  change is made (meshops: its device file removed in a git commit; Nebula: its
  fingerprint blocklisted and SIGHUP to every other node); the figure is the
  last reply any node sent ``a3`` after the change. The state is checked too.
* **TCP throughput and CPU**: ``iperf3`` for 5 s from ``a1`` to ``d1`` (cone to
  cone across sites: a NAT-traversed direct tunnel in both systems) and from
  ``b1`` to ``c1`` (symmetric to symmetric: relayed in both). CPU seconds are
  ``utime + stime`` from ``/proc/PID/stat`` of the tunnel processes
  (wireguard-go or nebula) of the two ends and both relays, per GB received.
  The machine is shared, so throughput is measured last, with the three labs
  up at once and the systems taking turns (``ROUNDS`` rounds, the order
  rotating); the figures are medians, every round is in the report.

The report is printed to stderr and written to ``.lab/lab_vs_nebula.json``.
The headline value is the number of the issue's goals not met (0 is best);
every figure is an extra field. Every lab is torn down, also after a failure.
Needs root, wireguard-go, nebula, nebula-cert, iperf3 and ssh; without them the
value is NaN with the reason.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = Path(__file__).resolve().parent / "nebula"
REPORT = ROOT / ".lab" / "lab_vs_nebula.json"
TOOLS = ("wireguard-go", "wg", "nebula", "nebula-cert", "iperf3", "ssh", "ssh-keygen", "ping")
NEW_NODE = ("a3", "a", "10.10.1.13")
DIRECT_PAIR = ("a1", "d1")
RELAYED_PAIR = ("b1", "c1")
IPERF_SECONDS = 5
ROUNDS = 5
VARIANTS = ("natted", "symmetric")
CLK_TCK = os.sysconf("SC_CLK_TCK")
_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------- the two systems
@dataclass(frozen=True)
class Row:
    src: str
    dst: str
    rtt_ms: float | None
    path: str
    kind: str  # direct | lan | relay | none
    confirmed: bool  # the system's state and the traffic agree
    traffic: str = ""  # Nebula: the relays the burst crossed (meshops: one reading, see Meshops.matrix)


class Meshops:
    """The meshops lab through the bench's eyes."""

    name = "meshops"
    argv0 = "wireguard-go"

    def __init__(self, lab) -> None:
        self.lab = lab
        self.topo = lab.topo

    def members(self) -> list[str]:
        return list(self.lab.keys)

    def ip(self, node: str) -> str:
        return self.lab.tunnel_ip[node]

    def matrix(self) -> list[Row]:
        # matrix.probe_pair names the WireGuard peer whose tx counter the ping moved:
        # the state and the traffic are one reading.
        return [Row(r.src, r.dst, r.rtt_ms, r.path, r.kind if r.ok else "none", r.path != "none")
                for r in self.lab.table()]

    def add(self, name: str, site: str, ip: str) -> None:
        self.lab.add_device(name, site, ip)

    def remove(self, name: str) -> None:
        self.lab.remove_device(name)

    def cut_in_state(self, name: str) -> bool:
        from reconciler.lab.matrix import wg_dump

        key = self.lab.keys[name]["wireguard"]
        return all(key not in wg_dump(self.topo.ns(n), self.topo.ifname(n))
                   for n in self.members() if n != name)

    def forget(self, name: str) -> None:
        self.lab.kill_agent_and_tunnel(name)
        del self.lab.keys[name]

    def tunnel_pids(self, nodes: Iterable[str]) -> list[int]:
        return [pid for n in nodes for pid in _pids_named(self.topo.ns(n), self.argv0)]


class Nebula:
    """The Nebula lab through the bench's eyes."""

    argv0 = "nebula"

    def __init__(self, lab) -> None:
        self.lab = lab
        self.topo = lab.topo
        self.name = f"nebula ({lab.relay_users})"

    def members(self) -> list[str]:
        return [n for n in self.lab.members if n not in self.lab.blocked]

    def ip(self, node: str) -> str:
        return self.lab.vpn_ip[node]

    def matrix(self) -> list[Row]:
        return [Row(r.src, r.dst, r.rtt_ms, r.path, r.kind if r.ok else "none", r.confirmed, r.traffic)
                for r in self.lab.table()]

    def add(self, name: str, site: str, ip: str) -> None:
        self.lab.add_node(name, site, ip)

    def remove(self, name: str) -> None:
        self.lab.block(name)

    def cut_in_state(self, name: str) -> bool:
        ip = self.lab.vpn_ip[name]
        return all(ip not in self.lab.hostmap(n) for n in self.members())

    def forget(self, name: str) -> None:
        """Nothing to do: a blocked node is no member (its process stops at down)."""

    def tunnel_pids(self, nodes: Iterable[str]) -> list[int]:
        return self.lab.pids(nodes)


def _pids_named(ns: str, argv0: str) -> list[int]:
    from reconciler.lab.netns import ns_pids

    found = []
    for pid in ns_pids(ns):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.path.basename(argv[0].decode(errors="replace")) == argv0:
            found.append(pid)
    return found


# --------------------------------------------------------------------- measurements
def _ping_at(ns: str, ip: str, timeout: float = 1.0) -> float | None:
    """Seconds (monotonic) when a reply arrived, or None."""
    from reconciler.lab.matrix import ping

    start = time.monotonic()
    rtt = ping(ns, ip, timeout=timeout)
    return None if rtt is None else start + rtt / 1000


def time_to_mesh(side, t0: float, timeout: float = 120, *, node: str | None = None,
                 ) -> tuple[float | None, dict[str, float]]:
    """Seconds until every ordered pair (with ``node``: every pair it is part of) has
    answered once (None at ``timeout``), and each pair's own time (``src->dst``)."""
    members = side.members()
    pending = {(a, b) for a in members for b in members if a != b and node in (None, a, b)}
    first: dict[str, float] = {}
    with ThreadPoolExecutor(max_workers=16) as pool:
        while pending and time.monotonic() - t0 < timeout:
            order = sorted(pending)
            answers = list(pool.map(lambda p: _ping_at(side.topo.ns(p[0]), side.ip(p[1])), order))
            for (a, b), at in zip(order, answers, strict=True):
                if at is not None:
                    pending.discard((a, b))
                    first[f"{a}->{b}"] = round(at - t0, 3)
            if pending:
                time.sleep(0.05)
    return (None if pending else max(first.values(), default=0.0)), first


def first_reply(ns: str, ip: str, t0: float, timeout: float = 60) -> float | None:
    while time.monotonic() - t0 < timeout:
        at = _ping_at(ns, ip)
        if at is not None:
            return round(at - t0, 3)
        time.sleep(0.05)
    return None


def time_to_cut(side, name: str, *, quiet: float = 4.0, timeout: float = 60) -> tuple[float | None, bool]:
    """Seconds from the removal until the last reply ``name`` got from any node, and
    whether the system's state shows it cut. None: replies still came at ``timeout``."""
    from reconciler.lab.netns import in_ns

    targets = [n for n in side.members() if n != name]
    pingers = [subprocess.Popen(in_ns(side.topo.ns(name), "ping", "-n", "-D", "-i", "0.05", side.ip(n)),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
               for n in targets]
    try:
        time.sleep(1.0)  # replies are flowing before the change
        t0 = time.time()
        side.remove(name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if side.cut_in_state(name):
                break
        time.sleep(quiet)  # any reply still coming would show now
    finally:
        for p in pingers:
            p.terminate()
    last = t0
    for p in pingers:
        out, _ = p.communicate(timeout=10)
        for line in out.splitlines():
            m = _REPLY.match(line)
            if m:
                last = max(last, float(m.group(1)))
    if last > t0 + timeout:
        return None, side.cut_in_state(name)
    return round(last - t0, 3), side.cut_in_state(name)


def _cpu_ticks(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total


def throughput(side, src: str, dst: str, relays: Iterable[str]) -> dict:
    """iperf3 TCP through the tunnel from ``src`` to ``dst`` and the tunnel processes'
    CPU seconds per GB received."""
    from reconciler.lab.netns import in_ns

    ns_dst = side.topo.ns(dst)
    server = subprocess.Popen(in_ns(ns_dst, "iperf3", "-s", "-1", "-B", side.ip(dst)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        pids = side.tunnel_pids({src, dst, *relays})
        before = _cpu_ticks(pids)
        proc = subprocess.run(in_ns(side.topo.ns(src), "iperf3", "-c", side.ip(dst), "-t", str(IPERF_SECONDS), "-J"),
                              capture_output=True, text=True, timeout=IPERF_SECONDS + 30, check=False)
        after = _cpu_ticks(pids)
    finally:
        server.kill()
        server.wait()
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip()[-300:]}
    from reconciler import boundedjson

    received = boundedjson.loads(proc.stdout, what="iperf3 -J", max_bytes=4 << 20)["end"]["sum_received"]
    cpu = (after - before) / CLK_TCK
    gigabytes = received["bytes"] / 1e9
    return {"mbit_s": round(received["bits_per_second"] / 1e6, 1), "bytes": received["bytes"],
            "cpu_s": round(cpu, 2), "cpu_s_per_gb": round(cpu / gigabytes, 2) if gigabytes else math.nan,
            "processes": len(pids)}


def measure(side, t0: float) -> dict:
    """The path matrix and the timed figures for one running system (see the module
    docstring); throughput is measured later, interleaved (``throughput_rounds``)."""
    out: dict = {"system": side.name}
    log(f"{side.name}: waiting for the full mesh")
    out["mesh_s"], per_pair = time_to_mesh(side, t0)
    out["mesh_slowest"] = dict(sorted(per_pair.items(), key=lambda kv: -kv[1])[:6])
    log(f"{side.name}: reading the path matrix")
    rows = side.matrix()
    out["matrix"] = [asdict(r) for r in rows]
    out["paths"] = dict(Counter(r.kind for r in rows))
    out["unconfirmed"] = [f"{r.src}->{r.dst}: {r.path} / traffic {r.traffic}" for r in rows
                          if r.kind != "none" and not r.confirmed]
    name, site, ip = NEW_NODE
    log(f"{side.name}: adding {name}")
    side.add(name, site, ip)
    t0 = time.monotonic()
    out["first_ping_s"] = first_reply(side.topo.ns("pub"), side.ip(name), t0)
    out["new_node_all_s"], per_pair = time_to_mesh(side, t0, 60, node=name)
    out["new_node_slowest"] = dict(sorted(per_pair.items(), key=lambda kv: -kv[1])[:4])
    out["new_node_paths"] = {f"{a}->{b}": r.path for a, b in (("pub", name), (name, "d1"), (name, "b1"))
                             for r in [_probe(side, a, b)]}
    log(f"{side.name}: removing {name}")
    out["cut_s"], out["cut_in_state"] = time_to_cut(side, name)
    side.forget(name)
    return out


def throughput_rounds(sides: list, rounds: int = ROUNDS) -> dict[str, dict]:
    """iperf3 through each system's direct and relayed pair, ``rounds`` times,
    alternating systems (the order rotates every round) so that other load on the
    machine falls on each alike. Per system and pair: the medians and every round."""
    out: dict[str, dict] = {side.name: {} for side in sides}
    for label, (src, dst) in (("direct", DIRECT_PAIR), ("relayed", RELAYED_PAIR)):
        for side in sides:
            if first_reply(side.topo.ns(src), side.ip(dst), time.monotonic(), timeout=60) is None:
                raise RuntimeError(f"{side.name}: {src} cannot ping {dst}; no throughput to measure")
            out[side.name][label] = {"pair": f"{src}->{dst}", "path": _probe(side, src, dst).path, "rounds": []}
        for i in range(rounds):
            for side in sides[i % len(sides):] + sides[:i % len(sides)]:
                log(f"{side.name}: iperf3 {src} -> {dst} (round {i + 1})")
                relays = [n.name for n in side.topo.nodes if n.relay]
                out[side.name][label]["rounds"].append(throughput(side, src, dst, relays))
        for side in sides:
            done = [r for r in out[side.name][label]["rounds"] if "mbit_s" in r]
            out[side.name][label]["mbit_s"] = median([r["mbit_s"] for r in done]) if done else math.nan
            out[side.name][label]["cpu_s_per_gb"] = median([r["cpu_s_per_gb"] for r in done]) if done else math.nan
    return out


def _probe(side, src: str, dst: str) -> Row:
    r = side.lab.probe(src, dst)
    confirmed = getattr(r, "confirmed", r.path != "none")
    return Row(r.src, r.dst, r.rtt_ms, r.path, r.kind if r.ok else "none", confirmed)


# --------------------------------------------------------------------- labs
@contextlib.contextmanager
def meshops_lab(tag: str, workdir: Path, notes: list[str]) -> Iterator:
    from reconciler.lab.runner import Lab
    from reconciler.lab.topology import Topology

    lab = Lab(Topology(prefix=f"mo-bvn{tag}", wg_prefix=f"m{tag}"), workdir / f"meshops{tag}",
              log=lambda _m: None)
    try:
        log(f"meshops: lab up ({lab.topo.prefix})")
        lab.up()
        yield lab
    finally:
        notes.extend(lab.down())


@contextlib.contextmanager
def nebula_lab(tag: str, workdir: Path, relay_users: str, policy, notes: list[str]) -> Iterator:
    """Up to the running lighthouse; the caller starts the nodes (and the clock)."""
    from reconciler.lab.nebula import NebulaLab
    from reconciler.lab.topology import Topology

    lab = NebulaLab(Topology(prefix=f"mo-bvn{tag}", wg_prefix=f"n{tag}"), workdir / f"nebula{tag}",
                    templates=TEMPLATES, policy=policy, relay_users=relay_users)
    try:
        log(f"nebula ({relay_users}): lab up ({lab.topo.prefix})")
        lab.up()
        yield lab
    finally:
        notes.extend(lab.down())


def org_policy(lab):
    """The lab org's compiled policy (``None`` rules: a full mesh) as it stood while the
    new node was enrolled (the commit before its removal), so that the Nebula
    certificate of the new node carries the same groups as every other node's."""
    from reconciler.config import load
    from reconciler.policy import compile_policy

    last = lab.git("log", "-1", "--format=%s").strip()
    if last != f"lab: remove {NEW_NODE[0]}":
        raise RuntimeError(f"the meshops lab's last commit is {last!r}, not the removal of {NEW_NODE[0]}")
    loaded = load(lab.repo, "HEAD~1").repo
    if loaded is None:
        raise RuntimeError(f"the meshops lab's repository {lab.repo} does not load at HEAD~1")
    return compile_policy(loaded.orgs[lab.topo.org])


def goals(meshops: dict, nebula: dict) -> dict[str, bool]:
    """The issue's goals, each True when met (measured, never forced)."""
    def pairs(run: dict, kinds: tuple[str, ...]) -> set[tuple[str, str]]:
        return {(r["src"], r["dst"]) for r in run["matrix"] if r["kind"] in kinds}

    def lt(a, b) -> bool:
        return a is not None and (b is None or a < b)

    def within(a: dict, b: dict) -> bool:
        return "mbit_s" in a and "mbit_s" in b and a["mbit_s"] >= 0.9 * b["mbit_s"]

    return {
        "connects_every_pair_nebula_connects":
            pairs(nebula, ("direct", "lan", "relay")) <= pairs(meshops, ("direct", "lan", "relay")),
        "at_least_as_many_direct":
            len(pairs(meshops, ("direct", "lan"))) >= len(pairs(nebula, ("direct", "lan"))),
        "first_ping_faster": lt(meshops["first_ping_s"], nebula["first_ping_s"]),
        "removal_faster": lt(meshops["cut_s"], nebula["cut_s"]),
        "direct_throughput_within_10pct": within(meshops["iperf_direct"], nebula["iperf_direct"]),
        "relayed_throughput_within_10pct": within(meshops["iperf_relayed"], nebula["iperf_relayed"]),
    }


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    versions = {}
    for tool, args in (("nebula", ["-version"]), ("wireguard-go", ["--version"]), ("iperf3", ["--version"])):
        proc = subprocess.run([tool, *args], capture_output=True, text=True, check=False)
        versions[tool] = (proc.stdout or proc.stderr).strip().splitlines()[0] if (proc.stdout or proc.stderr) else ""
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": os.uname().release,
            "loadavg": Path("/proc/loadavg").read_text().split()[:3], **versions}


def bench_lab_vs_nebula() -> dict:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if os.geteuid() != 0 or missing:
        return {"value": math.nan, "unit": "goals missed", "goal": 0,
                "skipped": f"needs root and {', '.join(TOOLS)}; missing: {', '.join(missing) or 'root'}"}
    tag = os.getpid() % 1000
    workdir = ROOT / ".lab" / f"lab-vs-nebula-{tag}"
    notes: list[str] = []
    report: dict = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    try:
        # 1. each system alone: matrix and timings
        with meshops_lab(f"{tag}", workdir, notes) as lab:
            t0 = time.monotonic()
            report["meshops"] = measure(Meshops(lab), t0)
            policy = org_policy(lab)
        report["policy"] = "full mesh (no policy.yaml)" if policy.rules is None else f"{len(policy.rules)} rules"
        for variant in VARIANTS:
            with nebula_lab(f"{tag}{variant[0]}", workdir, variant, policy, notes) as nlab:
                t0 = time.monotonic()
                nlab.start_nodes()
                report[f"nebula_{variant}"] = measure(Nebula(nlab), t0)
        # 2. all three up at once: throughput, interleaved
        with contextlib.ExitStack() as stack:
            sides: list = [Meshops(stack.enter_context(meshops_lab(f"{tag}t", workdir, notes)))]
            for variant in VARIANTS:
                nlab = stack.enter_context(nebula_lab(f"{tag}{variant[0]}t", workdir, variant, policy, notes))
                nlab.start_nodes()
                sides.append(Nebula(nlab))
            report["load_before_throughput"] = Path("/proc/loadavg").read_text().split()[:3]
            for side, perf in zip(sides, throughput_rounds(sides).values(), strict=True):
                key = "meshops" if isinstance(side, Meshops) else f"nebula_{side.lab.relay_users}"
                report[key].update({f"iperf_{label}": figures for label, figures in perf.items()})
    finally:
        report["teardown_notes"] = notes
        shutil.rmtree(workdir, ignore_errors=True)
    for variant in VARIANTS:
        report[f"goals_vs_nebula_{variant}"] = goals(report["meshops"], report[f"nebula_{variant}"])
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2))
    log(summary(report))
    missed = sum(not ok for ok in report["goals_vs_nebula_natted"].values())
    flat = {f"{system}.{key}": value for system in ("meshops", *(f"nebula_{v}" for v in VARIANTS))
            for key, value in _flat(report[system]).items()}
    return {"value": float(missed), "unit": "goals missed", "goal": 0, "report": str(REPORT), **flat}


def _flat(run: dict) -> dict:
    out = {k: run[k] for k in ("mesh_s", "first_ping_s", "new_node_all_s", "cut_s", "cut_in_state") if k in run}
    out["paths"] = json.dumps(run.get("paths", {}), sort_keys=True)
    for label in ("direct", "relayed"):
        perf = run.get(f"iperf_{label}", {})
        out[f"{label}_mbit_s"] = perf.get("mbit_s", math.nan)
        out[f"{label}_cpu_s_per_gb"] = perf.get("cpu_s_per_gb", math.nan)
    return out


def summary(report: dict) -> str:
    systems = ("meshops", "nebula_natted", "nebula_symmetric")
    lines = [f"machine: {report['machine']}", f"policy: {report['policy']}",
             f"load before throughput: {report['load_before_throughput']}",
             f"{'figure':34}" + "".join(f"{s:>20}" for s in systems)]
    rows: list[tuple[str, Callable[[dict], object]]] = [
        ("paths (direct/lan/relay/none)", lambda r: "/".join(str(r["paths"].get(k, 0))
                                                              for k in ("direct", "lan", "relay", "none"))),
        ("unconfirmed paths", lambda r: len(r["unconfirmed"])),
        ("cold start -> full mesh (s)", lambda r: r["mesh_s"]),
        ("new node first ping (s)", lambda r: r["first_ping_s"]),
        ("new node <-> every node (s)", lambda r: r["new_node_all_s"]),
        ("new node paths pub/d1/b1", lambda r: "/".join(p.split(":")[0] for p in r["new_node_paths"].values())),
        ("removal -> cut off (s)", lambda r: r["cut_s"]),
        ("direct a1->d1 (Mbit/s, median)", lambda r: r["iperf_direct"].get("mbit_s")),
        ("direct CPU s/GB", lambda r: r["iperf_direct"].get("cpu_s_per_gb")),
        ("relayed b1->c1 (Mbit/s, median)", lambda r: r["iperf_relayed"].get("mbit_s")),
        ("relayed CPU s/GB", lambda r: r["iperf_relayed"].get("cpu_s_per_gb")),
        ("direct rounds (Mbit/s)", lambda r: ",".join(f"{x.get('mbit_s', 'err')}" for x in r["iperf_direct"]["rounds"])),
        ("relayed rounds (Mbit/s)", lambda r: ",".join(f"{x.get('mbit_s', 'err')}" for x in r["iperf_relayed"]["rounds"])),
    ]
    for label, get in rows:
        lines.append(f"{label:34}" + "".join(f"{get(report[s])!s:>20}" for s in systems))
    for variant in ("natted", "symmetric"):
        missed = [g for g, ok in report[f"goals_vs_nebula_{variant}"].items() if not ok]
        lines.append(f"goals vs nebula ({variant}) not met: {', '.join(missed) or 'none'}")
    return "\n".join(lines)


BENCHMARKS = {"lab_vs_nebula": bench_lab_vs_nebula}
