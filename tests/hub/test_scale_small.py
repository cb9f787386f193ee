"""The scale scenario of ``scripts/bench scale`` at 200 devices: a real ``hub
serve`` process, client processes over mTLS, both modes (per-device views and
the full manifest + feed). Behaviour only, no timing: every poller that sees
the changed device gets the change, a view delta is smaller than the full
manifest and below 2 KB, no report is lost, and every view answer passes the
agent's own checks (``reconciler.pki.view.open_view``/``apply_delta`` and
``reconciler.agent.view.check_manifest``: signature, org, unbroken chain,
schema, expiry, no rollback)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "scripts" / "benchmarks" / "bench_scale.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_scale", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg is needed (SOPS-encrypted CA keys)")
def test_small_scale_both_modes(tmp_path: Path) -> None:
    bench = _bench()
    if not (bench.ROOT / "example-repo" / "keys" / "example-hub.sec.asc").exists():
        pytest.skip("example-repo with its example hub key is needed")
    params = bench.Params(devices=200, pollers=200, clients=2, moves_per_s=20, seconds=3,
                          movers=40, observers=200, wait=30, verify=True)
    result = bench.run_scale(params, base=tmp_path)
    view, full = result["modes"]["view"], result["modes"]["full"]
    for m in (view, full):
        assert m["long_polls_held"] >= 200 * (1 if m is view else 2)
        a, b = m["a"], m["b"]
        assert a["delivered"] == a["expected"] > 0, a["missing"]
        assert a["errors"] == {} and b["errors"] == {}
        assert b["moves_sent"] == 60 and b["moves_accepted"] == 60
        assert b["lost_reports"] == 0 and b["reports_stored"] == b["reports_accepted_total"]
        assert b["delivery_samples"] > 0  # observers saw moves arrive
    # views: only the devices that see the change are answered, each with a small delta
    assert view["a"]["unexpected_count"] == 0
    # answers before re-polls, over real mTLS: the round's answered connections were
    # held, then read again (the moves of (b) reached the observers over them)
    assert view["a"]["held"] >= view["a"]["delivered"] * 0.9
    assert full["a"]["held"] == 0
    assert view["a"]["bytes_per_agent_max"] < 2048
    assert view["a"]["bytes_per_agent_max"] < full["a"]["bytes_per_agent_mean"]
    # every view answer (snapshots at the start, then the deltas) was verified by the
    # agent's code; the full manifests by verify_manifest
    assert view["a"]["verified"] == view["a"]["delivered"]
    assert view["b"]["verified"] > 0 and full["a"]["verified"] == full["a"]["delivered"]
