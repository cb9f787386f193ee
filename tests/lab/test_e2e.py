"""The e2e matrix: the whole system in the netns NAT lab (root; runs in CI).

One lab for the module (bringing it up costs seconds). The order matters and is
explicit: first the static matrix, then the changes, each asserted by what the
lab shows (pings, WireGuard peer state, the peer that carried the traffic).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from reconciler.lab import scenarios
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
