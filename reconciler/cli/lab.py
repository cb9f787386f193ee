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
            p.add_argument("--once", action="store_true", help="print one full table, exit 0 iff every pair connects")
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
    _print_table(rows, lab)
    return 0 if all(r.ok for r in rows) else 1


def _print_table(rows, lab) -> None:
    expected = {(e.src, e.dst): e.kind for e in lab.expectations()}
    print(f"{'from':8} {'to':8} {'path':14} {'expected':9} {'handshake':>10} {'rtt':>9}")
    for r in rows:
        hs = "-" if r.handshake_age is None else f"{r.handshake_age:.0f}s ago"
        rtt = "no reply" if r.rtt_ms is None else f"{r.rtt_ms:.2f}ms"
        print(f"{r.src:8} {r.dst:8} {r.path:14} {expected.get((r.src, r.dst), '?'):9} {hs:>10} {rtt:>9}")
    ok = sum(r.ok for r in rows)
    print(f"{ok}/{len(rows)} pairs connected", flush=True)


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
            _print_table(rows, lab)
            if args.once:
                return 0 if all(r.ok for r in rows) else 1
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
