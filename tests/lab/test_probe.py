"""reconciler.lab.probe on loopback: answered flows pass, closed ports fail."""

from __future__ import annotations

import socket
import subprocess
import sys

from reconciler.lab.flows import compare, sample_flows
from reconciler.lab.probe import send


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_tcp_and_udp_and_closed_ports_fail() -> None:
    tcp, udp = _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_DGRAM)
    closed_tcp, closed_udp = _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_DGRAM)
    proc = subprocess.Popen([sys.executable, "-m", "reconciler.lab.probe", "serve",
                             "--tcp", str(tcp), "--udp", str(udp)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        got = send([
            {"id": 0, "dst": "127.0.0.1", "proto": "tcp", "port": tcp},
            {"id": 1, "dst": "127.0.0.1", "proto": "udp", "port": udp},
            {"id": 2, "dst": "127.0.0.1", "proto": "tcp", "port": closed_tcp},
            {"id": 3, "dst": "127.0.0.1", "proto": "udp", "port": closed_udp},
        ], timeout=0.6)
    finally:
        proc.terminate()
        proc.wait(timeout=5)
    assert [r["ok"] for r in got] == [True, True, False, False]
    assert proc.returncode == 0  # SIGTERM ends it cleanly


def test_sample_is_reproducible_distinct_and_icmp_has_no_port() -> None:
    names = ["a", "b", "c"]
    one = sample_flows(names, [22, 8080], 20, seed=3)
    assert one == sample_flows(names, [22, 8080], 20, seed=3)
    assert len(set(one)) == len(one) == 20
    assert all((f.port is None) == (f.proto == "icmp") and f.src != f.dst for f in one)
    flows = one[:2]
    verdicts = compare({flows[0]: True, flows[1]: False}, {flows[0]: True, flows[1]: True})
    assert [v.agree for v in verdicts] == [True, False]
