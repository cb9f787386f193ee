"""Real flows through the lab, compared with the policy engine.

``run_flows(flows, ns_of=..., addr_of=...)`` sends every ``Flow`` (src, dst,
proto, port) for real: one ``reconciler.lab.probe serve`` per destination
namespace listening on the ports the flows use, one ``probe send`` per
source namespace, ICMP with ``ping``. A flow passes on the wire only when
its answer came back, i.e. data went both ways. ``engine_verdicts`` asks
``policy.evaluate`` the same questions, and ``compare`` lists every
disagreement. ``sample_flows`` draws a reproducible sample of flows.

Used by ``scripts/demo`` (the verdict column), the e2e tests (wire versus
engine) and ``scripts/bench``. Processes are started here and stopped here,
by pid; traffic stays between the lab's own namespaces.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from reconciler.lab.matrix import ping
from reconciler.lab.netns import in_ns
from reconciler.model.repo import OrgState
from reconciler.policy import evaluate

PROTOS = ("tcp", "udp", "icmp")


@dataclass(frozen=True, order=True)
class Flow:
    src: str
    dst: str
    proto: str  # tcp | udp | icmp
    port: int | None = None

    def __str__(self) -> str:
        port = f"/{self.port}" if self.port is not None else ""
        return f"{self.src}->{self.dst} {self.proto}{port}"


@dataclass(frozen=True)
class Verdict:
    flow: Flow
    wire: bool
    engine: bool

    @property
    def agree(self) -> bool:
        return self.wire == self.engine


def engine_verdicts(org: OrgState, flows: Iterable[Flow]) -> dict[Flow, bool]:
    return {f: evaluate(org, f.src, f.dst, f.proto, f.port).accepted for f in flows}


def sample_flows(names: Sequence[str], ports: Sequence[int], n: int, seed: int,
                 protos: Sequence[str] = PROTOS) -> list[Flow]:
    """``n`` distinct flows between ordered pairs of ``names`` (reproducible)."""
    rng = random.Random(seed)
    pairs = [(a, b) for a in names for b in names if a != b]
    out: set[Flow] = set()
    budget = n * 20
    while len(out) < n and budget:
        budget -= 1
        src, dst = rng.choice(pairs)
        proto = rng.choice(list(protos))
        out.add(Flow(src, dst, proto, None if proto == "icmp" else rng.choice(list(ports))))
    return sorted(out)


def run_flows(flows: Sequence[Flow], *, ns_of: Callable[[str], str],
              addr_of: Callable[[str], str], timeout: float = 1.0) -> dict[Flow, bool]:
    """Send every flow for real; True where the answer came back."""
    sinks = _start_sinks(flows, ns_of)
    try:
        results: dict[Flow, bool] = {}
        by_src: dict[str, list[Flow]] = {}
        for f in flows:
            by_src.setdefault(f.src, []).append(f)
        with ThreadPoolExecutor(max_workers=max(1, len(by_src))) as pool:
            for part in pool.map(lambda item: _send_from(item[0], item[1], ns_of, addr_of,
                                                         timeout), by_src.items()):
                results.update(part)
        return results
    finally:
        for proc in sinks:
            proc.terminate()
        for proc in sinks:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def compare(wire: Mapping[Flow, bool], engine: Mapping[Flow, bool]) -> list[Verdict]:
    return [Verdict(f, wire[f], engine[f]) for f in sorted(wire)]


def _start_sinks(flows: Sequence[Flow], ns_of: Callable[[str], str]) -> list[subprocess.Popen[str]]:
    ports: dict[str, dict[str, set[int]]] = {}
    for f in flows:
        if f.proto in ("tcp", "udp") and f.port is not None:
            ports.setdefault(f.dst, {"tcp": set(), "udp": set()})[f.proto].add(f.port)
    procs: list[subprocess.Popen[str]] = []
    try:
        for dst, by_proto in sorted(ports.items()):
            argv = in_ns(ns_of(dst), sys.executable, "-m", "reconciler.lab.probe", "serve",
                         "--tcp", ",".join(map(str, sorted(by_proto["tcp"]))),
                         "--udp", ",".join(map(str, sorted(by_proto["udp"]))))
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
            procs.append(proc)
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                err = proc.stderr.read() if proc.stderr else ""
                raise RuntimeError(f"probe sink in {ns_of(dst)} did not start: {err[-500:]}")
    except BaseException:
        for proc in procs:
            proc.kill()
            proc.wait()
        raise
    return procs


def _send_from(src: str, flows: list[Flow], ns_of: Callable[[str], str],
               addr_of: Callable[[str], str], timeout: float) -> dict[Flow, bool]:
    out: dict[Flow, bool] = {}
    socket_flows = [f for f in flows if f.proto != "icmp"]
    for f in flows:
        if f.proto == "icmp":
            out[f] = ping(ns_of(src), addr_of(f.dst), timeout=timeout) is not None
    if socket_flows:
        spec = [{"id": i, "dst": addr_of(f.dst), "proto": f.proto, "port": f.port}
                for i, f in enumerate(socket_flows)]
        argv = in_ns(ns_of(src), sys.executable, "-m", "reconciler.lab.probe", "send",
                     json.dumps(spec), "--timeout", str(timeout))
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
        for item in json.loads(proc.stdout):
            out[socket_flows[int(item["id"])]] = bool(item["ok"])
    return out


WHOAMI_PORT = 8081


def whoami(src_ns: str, server_ns: str, server_ip: str, *, port: int = WHOAMI_PORT,
           timeout: float = 2.0) -> str | None:
    """The source address ``server_ip`` sees for a TCP connection from
    ``src_ns`` (a probe answering on ``port`` runs in ``server_ns`` for the
    call), or None when no answer came back."""
    argv = in_ns(server_ns, sys.executable, "-m", "reconciler.lab.probe", "serve",
                 "--whoami", str(port))
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            return None
        proc = subprocess.run(in_ns(src_ns, sys.executable, "-m", "reconciler.lab.probe",
                                    "whoami", server_ip, str(port), "--timeout", str(timeout)),
                              capture_output=True, text=True, timeout=timeout + 30, check=False)
        return proc.stdout.strip() or None if proc.returncode == 0 else None
    finally:
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
