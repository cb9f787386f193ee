"""STUN benchmarks: responder round trip, a loopback discovery, and import cost.

``scripts/bench stun_binding_rtt_p50 stun_discover_loopback stun_client_import``.
All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time

from reconciler.stun import message as m
from reconciler.stun.client import discover
from reconciler.stun.server import StunResponder


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binding_rtt() -> dict:
    """p50/p99 of one RFC 5389 Binding round trip to the threaded responder."""
    samples = []
    with StunResponder("127.0.0.1", 0) as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        for i in range(2000):
            txid = i.to_bytes(12, "big")
            start = time.perf_counter()
            s.sendto(m.binding_request(txid), ("127.0.0.1", server.port))
            data, _ = s.recvfrom(2048)
            samples.append(time.perf_counter() - start)
            assert m.decode(data).transaction_id == txid
    samples.sort()
    return {"value": statistics.median(samples), "unit": "s", "goal": 0.001,
            "p99": samples[int(len(samples) * 0.99)], "rate_per_s": len(samples) / sum(samples)}


def discover_loopback() -> dict:
    """A whole ``discover`` (two servers, LAN addresses) on loopback."""
    times = []
    with StunResponder("127.0.0.1", 0) as a, StunResponder("127.0.0.1", 0) as b:
        for _ in range(20):
            start = time.perf_counter()
            found = discover(_free_port(), [("127.0.0.1", a.port), ("127.0.0.1", b.port)])
            times.append(time.perf_counter() - start)
            assert found.mapping == "independent"
    return {"value": statistics.median(times), "unit": "s", "goal": 0.05, "max": max(times)}


def client_import() -> dict:
    """Cost of ``import reconciler.stun.client`` in a fresh interpreter (the agent's
    0.4 s whole-process budget), minus a bare interpreter start."""
    def run(code: str) -> float:
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))
            best = min(best, time.perf_counter() - start)
        return best

    base = run("pass")
    full = run("import reconciler.stun.client, reconciler.agent.peering")
    return {"value": max(full - base, 0.0), "unit": "s", "goal": 0.05, "interpreter": base}


BENCHMARKS = {
    "stun_binding_rtt_p50": binding_rtt,
    "stun_discover_loopback": discover_loopback,
    "stun_client_import": client_import,
}
