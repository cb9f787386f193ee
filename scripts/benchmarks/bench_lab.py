"""NAT lab benchmark: how fast the running mesh follows each kind of change.

``lab_e2e`` brings the netns NAT lab up (prefix ``mo-bench-lab``, state in
``.lab/mo-bench-lab``; daemon agents, lab timers), then runs the same
scenarios as the e2e suite (``reconciler.lab.scenarios``), in the same order:
converge, add a device, remove it, move a node from cone site A to symmetric
site B, kill the relay a pair uses. Each figure is the wall time from the
change until the lab showed its effect (pings, WireGuard peer state). The
headline value is the move (goal 3 s); the others are extra fields. The lab
is always torn down, also after a failure. Needs root; without it the value
is NaN with the reason.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "mo-bench-lab"
GOAL_S = 3.0


def _seconds(value: float | None) -> float:
    return round(value, 3) if value is not None else math.nan


def bench_lab_e2e() -> dict:
    if os.geteuid() != 0 or shutil.which("wireguard-go") is None:
        return {"value": math.nan, "unit": "s", "goal": GOAL_S,
                "skipped": "needs root and wireguard-go"}
    from reconciler.lab import scenarios
    from reconciler.lab.runner import Lab
    from reconciler.lab.topology import Topology

    lab = Lab(Topology(prefix=PREFIX, wg_prefix="mbl"), ROOT / ".lab" / PREFIX,
              log=lambda _msg: None)
    if lab.ledger.namespaces:  # a run that was interrupted: clean it first
        lab.down()
        lab = Lab(Topology(prefix=PREFIX, wg_prefix="mbl"), ROOT / ".lab" / PREFIX,
                  log=lambda _msg: None)
    out: dict = {}
    try:
        lab.up()
        out["converge_s"] = _seconds(scenarios.converge(lab).seconds)
        out["add_s"] = _seconds(scenarios.add_device(lab).seconds)
        out["remove_s"] = _seconds(scenarios.remove_device(lab).seconds)
        lab.kill_agent_and_tunnel("a3")
        del lab.keys["a3"]
        out["move_s"] = _seconds(scenarios.move(lab).seconds)
        out["relay_failover_s"] = _seconds(scenarios.relay_failover(lab).seconds)
    finally:
        notes = lab.down()
    if notes:
        out["teardown_notes"] = "; ".join(notes)
    return {"value": out.get("move_s", math.nan), "unit": "s", "goal": GOAL_S,
            "goals": "add<=2 remove<=2 move<=3 relay_failover<=30", **out}


BENCHMARKS = {"lab_e2e": bench_lab_e2e}
