"""``meshops lab up|down|status|demo``: the netns NAT lab (root only).

``scripts/lab`` and ``scripts/demo`` call these. The lab's state lives in
``--dir`` (default ``.lab/<prefix>`` under the current directory) so ``down``
and ``status`` find what ``up`` made.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser("lab", help="the network-namespace NAT lab (root)")
    lsub = lab.add_subparsers(dest="lab_command", metavar="ACTION")
    lsub.required = True
    for name, func, text in (
        ("up", _up, "build the lab and start hub, STUN and agents"),
        ("down", _down, "stop everything the lab started and delete its namespaces"),
        ("status", _status, "print the live connectivity table"),
        ("demo", _demo, "up, live table until Ctrl-C (or one table with --once), down"),
    ):
        p = lsub.add_parser(name, help=text)
        p.add_argument("--prefix", default="mo-lab", help="namespace prefix (default mo-lab)")
        p.add_argument("--dir", type=Path, help="lab state directory (default .lab/PREFIX)")
        if name == "demo":
            p.add_argument("--once", action="store_true",
                           help="print one full table, exit 0 iff every pair connects and every "
                                "policy verdict holds on the wire")
            p.add_argument("--timeout", type=float, default=90, help="seconds to wait for the mesh (default 90)")
        p.set_defaults(handler=func)


def _lab(args):
    from reconciler.errors import UsageError
    from reconciler.lab.runner import Lab
    from reconciler.lab.topology import Topology

    if os.geteuid() != 0:
        raise UsageError("the lab needs root (network namespaces, iptables, wireguard-go); run with sudo")
    wg_prefix = "ml" if args.prefix == "mo-lab" else args.prefix[-3:].replace("-", "")
    topo = Topology(prefix=args.prefix, wg_prefix=wg_prefix)
    return Lab(topo, args.dir or Path(".lab") / args.prefix)


def _up(args) -> int:
    lab = _lab(args)
    lab.up()
    print(f"lab up: namespaces {args.prefix}-*, state in {lab.dir}; `meshops lab status` for the table")
    return 0


def _down(args) -> int:
    lab = _lab(args)
    for note in lab.down():
        print(f"note: {note}", file=sys.stderr)
    print("lab down")
    return 0


def _status(args) -> int:
    from reconciler.lab.state import load_identities

    lab = _lab(args)
    load_identities(lab)
    rows = lab.table()
    return 0 if _print_table(rows, lab) else 1


def _verdicts(lab, rows) -> dict:
    """Per pair: (allowed flow, it passed), (denied flow, it was blocked), sent for real."""
    probes = lab.verdict_probes([(r.src, r.dst) for r in rows])
    wanted = [f for pair in probes.values() for f in pair if f is not None]
    wire = lab.send(wanted)
    return {pair: tuple((f, wire[f]) if f is not None else None for f in both)
            for pair, both in probes.items()}


def _cell(item, *, allowed: bool) -> tuple[str, bool]:
    if item is None:
        return "-", True
    flow, passed = item
    good = passed if allowed else not passed
    word = ("passes" if passed else "BLOCKED") if allowed else ("blocked" if not passed
                                                                else "PASSES")
    return f"{flow.proto}/{flow.port} {word}", good


def _print_table(rows, lab) -> bool:
    """The connectivity table with the policy verdicts seen on the wire: for
    each pair one flow the policy allows (it must pass both ways) and one it
    denies (it must carry nothing). True when every pair connects and every
    verdict holds."""
    expected = {(e.src, e.dst): e.kind for e in lab.expectations()}
    verdicts = _verdicts(lab, rows)
    print(f"{'from':8} {'to':8} {'path':14} {'expected':9} {'handshake':>10} {'rtt':>9}  "
          f"{'allowed probe':20} {'denied probe':20}")
    held = 0
    for r in rows:
        hs = "-" if r.handshake_age is None else f"{r.handshake_age:.0f}s ago"
        rtt = "no reply" if r.rtt_ms is None else f"{r.rtt_ms:.2f}ms"
        allowed, denied = verdicts.get((r.src, r.dst), (None, None))
        a_text, a_ok = _cell(allowed, allowed=True)
        d_text, d_ok = _cell(denied, allowed=False)
        held += a_ok and d_ok
        print(f"{r.src:8} {r.dst:8} {r.path:14} {expected.get((r.src, r.dst), '?'):9} {hs:>10} "
              f"{rtt:>9}  {a_text:20} {d_text:20}")
    ok = sum(r.ok for r in rows)
    print(f"{ok}/{len(rows)} pairs connected; policy held on the wire for {held}/{len(rows)} "
          "pairs (allowed probe passed, denied probe blocked)", flush=True)
    return ok == len(rows) and held == len(rows)


def _demo(args) -> int:
    lab = _lab(args)
    stop = {"now": False}

    def _sigint(*_):
        stop["now"] = True

    signal.signal(signal.SIGTERM, _sigint)
    try:
        print("bringing the lab up (namespaces, NAT, stund, hub, 8 agents) ...", flush=True)
        lab.up()
        print("waiting for every pair to connect ...", flush=True)
        waited = lab.wait_until(lambda: all(lab.probe(a, b).ok for a, b in lab.pairs()), args.timeout, step=1)
        print(f"mesh converged in {waited:.1f}s" if waited is not None else "mesh did not fully converge", flush=True)
        while True:
            rows = lab.table()
            print()
            good = _print_table(rows, lab)
            if args.once:
                return 0 if good else 1
            for _ in range(20):
                if stop["now"]:
                    return 0
                time.sleep(0.25)
            if stop["now"]:
                return 0
    except KeyboardInterrupt:
        return 0
    finally:
        print("tearing the lab down ...", flush=True)
        lab.down()
