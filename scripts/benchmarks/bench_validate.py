"""Benchmarks for ``meshops validate`` (issue 2, part 10) and the loader's cache.

- ``validate_{100,1000,10000}``: a synthetic repository (``reconciler.config.synth``,
  one org, a policy of 20+ rules and 6 tests) validated by a cold ``meshops
  validate`` process, best of 3. Goal: 10,000 devices in <= 2 s.
- ``validate_reload_one_commit_10000``: in one process, ``config.load(rev=HEAD)``
  with a warm ``BlobCache`` after a commit that changes one device (what the hub
  does on each commit), best of 3.

``python scripts/benchmarks/bench_validate.py --profile N`` prints a cProfile
summary of one in-process load of N devices (the figures in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from reconciler.config.synth import git_init_commit, make_repo

GOALS = {100: None, 1000: None, 10000: 2.0}


def _meshops() -> list[str]:
    script = Path(sys.executable).parent / "meshops"
    return [str(script)] if script.exists() else [sys.executable, "-m", "reconciler"]


def time_cold_validate(devices: int, runs: int = 3) -> dict:
    with tempfile.TemporaryDirectory(prefix="meshops-bench-") as tmp:
        repo = make_repo(Path(tmp) / "repo", devices, orgs=1, rules=20)
        times, cpu = [], []
        for _ in range(runs):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            proc = subprocess.run([*_meshops(), "validate", str(repo)], check=False,
                                  capture_output=True, text=True)
            times.append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            if proc.returncode != 0:
                raise RuntimeError(f"validate failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return {"value": min(times), "unit": "s", "goal": GOALS.get(devices),
            "devices": devices, "runs": [round(t, 3) for t in times],
            "cpu_s": round(min(cpu), 3)}  # less sensitive to a busy machine than wall time


def time_reload_one_commit(devices: int = 10000, runs: int = 3) -> dict:
    from reconciler.config import BlobCache, load

    with tempfile.TemporaryDirectory(prefix="meshops-bench-") as tmp:
        repo = make_repo(Path(tmp) / "repo", devices, orgs=1, rules=20, git=True)
        cache = BlobCache()
        start = time.perf_counter()
        assert load(repo, "HEAD", cache=cache).valid
        cold = time.perf_counter() - start
        target = repo / "orgs" / "org-00" / "devices" / "dev-00005.yaml"
        times, cpu = [], []
        for i in range(runs):
            target.write_text(target.read_text().replace("description:", f"description: v{i}"))
            git_init_commit(repo, f"change {i}")
            start, start_cpu = time.perf_counter(), time.process_time()
            result = load(repo, "HEAD", cache=cache)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
            assert result.valid and cache.misses == 1
    return {"value": min(times), "unit": "s", "goal": 0.1, "devices": devices,
            "cold_in_process": round(cold, 3), "runs": [round(t, 3) for t in times],
            "cpu_s": round(min(cpu), 3)}


def profile(devices: int, top: int = 25) -> str:
    from reconciler.config import load

    with tempfile.TemporaryDirectory(prefix="meshops-bench-") as tmp:
        repo = make_repo(Path(tmp) / "repo", devices, orgs=1, rules=20)
        prof = cProfile.Profile()
        prof.enable()
        result = load(repo)
        prof.disable()
        assert result.valid
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out)
        stats.strip_dirs().sort_stats("tottime").print_stats(top)
        shutil.rmtree(repo, ignore_errors=True)
        return out.getvalue()


BENCHMARKS = {
    "validate_100": lambda: time_cold_validate(100),
    "validate_1000": lambda: time_cold_validate(1000),
    "validate_10000": lambda: time_cold_validate(10000),
    "validate_reload_one_commit_10000": lambda: time_reload_one_commit(10000),
}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", type=int, metavar="DEVICES")
    args = ap.parse_args()
    if args.profile:
        print(profile(args.profile))
    else:
        for name, fn in BENCHMARKS.items():
            print(name, fn())
