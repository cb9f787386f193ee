"""Benchmark harness behind ``scripts/bench``.

Every ``scripts/benchmarks/bench_*.py`` module defines ``BENCHMARKS``: a dict of
name -> callable returning ``{"value": float, "unit": str, "goal": float|None,
...extra}``. ``lower is better`` for every figure. Output is a table, or with
``--json`` the object ``{"name": {"value": x, "unit": "s", "goal": g, ...}}``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover() -> dict:
    found: dict = {}
    for path in sorted(HERE.glob("bench_*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # registered, so dataclasses in the module can resolve it
        assert spec.loader is not None
        spec.loader.exec_module(module)
        for name, fn in module.BENCHMARKS.items():
            found[name] = fn
    return found


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()} {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench")
    ap.add_argument("names", nargs="*")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args(argv)
    available = discover()
    if args.list:
        print("\n".join(available))
        return 0
    unknown = [n for n in args.names if n not in available]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; try --list", file=sys.stderr)
        return 2
    results = {}
    for name in args.names or list(available):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = available[name]()
    if args.json:
        print(json.dumps(results, indent=2, sort_keys=True))
        return 0
    print(f"machine: {machine()}")
    print(f"{'benchmark':44} {'value':>12} {'unit':6} {'goal':>10}  met")
    for name, r in results.items():
        goal = r.get("goal")
        met = "" if goal is None else ("yes" if r["value"] <= goal else "NO")
        goal_s = "" if goal is None else f"{goal:g}"
        print(f"{name:44} {r['value']:12.4g} {r['unit']:6} {goal_s:>10}  {met}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
