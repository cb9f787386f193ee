"""The lab's process ledger: a teardown stops exactly what the lab started.

``started_as`` is pure and checked against command lines; the root test spawns
real processes in a real namespace and tears down at once, the moment in which
``ip netns exec`` has not yet become the program (it used to leak them).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from reconciler.lab.netns import Ledger, Netns, Proc, existing_namespaces, started_as, teardown

AGENT = Proc("agent-d1", 4242, "mo-x-d1", "python", "/tmp/agent.log")


@pytest.mark.parametrize("argv", [
    ["/work/.venv/bin/python", "-m", "reconciler", "agent", "run"],
    ["python", "-m", "reconciler"],
    # spawned, not yet exec'd: `ip netns exec` of our namespace and our program
    ["ip", "netns", "exec", "mo-x-d1", "/work/.venv/bin/python", "-m", "reconciler"],
])
def test_our_program_or_the_exec_that_becomes_it(argv):
    assert started_as(argv, AGENT)


@pytest.mark.parametrize("argv", [
    [],  # gone
    ["/usr/bin/sleep", "60"],  # a recycled pid
    ["ip", "netns", "exec", "mo-y-d1", "/work/.venv/bin/python", "-m", "reconciler"],  # another namespace
    ["ip", "netns", "exec", "mo-x-d1", "/usr/bin/ping", "10.0.0.1"],  # another program in ours
    ["ip", "netns", "exec", "mo-x-d1"],  # nothing to become
    ["/usr/bin/sh", "-c", "echo ip netns exec mo-x-d1 python"],
])
def test_anything_else_is_a_stranger(argv):
    assert not started_as(argv, AGENT)


@pytest.mark.root
def test_a_teardown_right_after_a_spawn_stops_it(tmp_path):
    ns = f"mo-nt{os.getpid() % 1000}"
    pids = []
    for round_ in range(10):
        ledger = Ledger(tmp_path / f"ledger{round_}.json")
        Netns(ledger).add_ns(ns)
        pids.append(Netns(ledger).spawn("sleeper", ns, ["/usr/bin/sleep", "300"], log_dir=tmp_path).pid)
        notes = teardown(ledger)
        assert notes == []
        assert ns not in existing_namespaces()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.05)
    left = [p for p in pids if Path(f"/proc/{p}").exists()]
    for pid in left:  # ours, by pid: do not leave them running when this fails
        os.kill(pid, signal.SIGKILL)
    assert left == []
