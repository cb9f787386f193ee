"""Benchmarks for ``meshops hub publish`` (reconciler.hub.publish).

* ``publish_cold_10k``: a fresh ``Publisher`` on a 10,000-device synthetic org:
  load + validate, decrypt the CA (real gpg + SOPS), issue 10,000 certificates,
  build, sign and write everything (seconds, one run).
* ``publish_incremental_1dev_10k``: the same long-lived ``Publisher`` after a
  one-device change (a new WireGuard key): the goal is 0.2 s (median of 5).
* ``publish_incremental_1dev_10k_git``: the same on git commits (``--rev``).
* ``manifest_bytes_per_device``: manifest payload bytes / devices (goal 200).

The synthetic repo comes from ``reconciler.config.synth.make_repo``; its CA is made
with ``init_synthetic_cas`` below, encrypted to the example repo's throwaway key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "example-repo"
DEVICES = 10_000
_STATE: dict[str, Any] = {}


def init_synthetic_cas(repo: Path, gpg_home: str, now: float) -> None:
    """Point mesh.yaml at the example key and run ``ca init`` for every org."""
    from reconciler.hub.publish import init_org_ca

    fpr = _example_fingerprint()
    mesh = repo / "mesh.yaml"
    mesh.write_text(mesh.read_text() + f"pgp_recipients: ['{fpr}']\n")
    for org_dir in sorted((repo / "orgs").iterdir()):
        init_org_ca(repo, org_dir.name, now=now, gpg_home=gpg_home, force=True)


def _example_fingerprint() -> str:
    for line in (EXAMPLE / "keys" / "README.md").read_text().splitlines():
        if "fingerprint `" in line:
            return line.split("fingerprint `")[1].split("`")[0]
    raise RuntimeError("example key fingerprint not found in example-repo/keys/README.md")


def _setup() -> dict[str, Any]:
    if _STATE:
        return _STATE
    from reconciler.config.synth import make_repo
    from reconciler.hub.publish import example_gnupghome

    base = Path(tempfile.mkdtemp(prefix="meshops-bench-publish-"))
    home = example_gnupghome(EXAMPLE, base / "gnupg")
    repo = make_repo(base / "repo", DEVICES, orgs=1, rules=20, git=False)
    init_synthetic_cas(repo, home, time.time())
    _STATE.update(base=base, home=home, repo=repo)
    import atexit

    def cleanup() -> None:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"],
                       capture_output=True, check=False)  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)

    atexit.register(cleanup)
    return _STATE


def _new_wg(i: int) -> str:
    return base64.b64encode(
        hashlib.sha256(f"bench-{i}-{time.time_ns()}".encode()).digest()
    ).decode()


def _change_one(device_file: Path, i: int) -> None:
    lines = device_file.read_text().splitlines()
    at = lines.index("wireguard:") + 1
    lines[at] = f"  public_key: {_new_wg(i)}"
    device_file.write_text("\n".join(lines) + "\n")


def _cold() -> dict[str, Any]:
    from reconciler.hub.publish import Publisher

    s = _setup()
    out = s["base"] / "out-cold"
    state = f"sqlite:///{s['base']}/cold-{time.time_ns()}.db"
    t0 = time.perf_counter()
    with Publisher(s["repo"], state, s["home"]) as pub:
        result = pub.publish(None, time.time(), out)
    elapsed = time.perf_counter() - t0
    org = next(iter(result.orgs.values()))
    payload_len = len(base64.b64decode(json.loads(org.envelope)["payload"]))
    s["bytes_per_device"] = payload_len / len(org.manifest.devices)
    s["manifest_bytes"] = payload_len
    return {"value": elapsed, "unit": "s", "goal": None, "devices": len(org.manifest.devices),
            "issued": len(org.issued)}  # fmt: skip


def _incremental(git: bool) -> dict[str, Any]:
    from reconciler.hub.publish import Publisher

    s = _setup()
    repo = s["repo"]
    if git:
        repo = s["base"] / "repo-git"
        if not repo.exists():
            shutil.copytree(s["repo"], repo)
            _git(repo, "init", "-q", "-b", "main")
            _git(repo, "add", "-A")
            _git(repo, "commit", "-q", "-m", "initial")
    out = s["base"] / f"out-inc-{'git' if git else 'tree'}"
    state = f"sqlite:///{s['base']}/inc-{time.time_ns()}.db"
    times = []
    phases: dict[str, list[float]] = {}
    with Publisher(repo, state, s["home"], freeze_caches=True) as pub:
        now = time.time()
        pub.publish("HEAD" if git else None, now, out)
        devices = sorted((repo / "orgs" / "org-00" / "devices").glob("*.yaml"))
        for i in range(5):
            _change_one(devices[17 + i * 101], i)
            rev = None
            if git:
                _git(repo, "commit", "-q", "-a", "-m", f"change {i}")
                rev = "HEAD"
            now += 10
            t0 = time.perf_counter()
            result = pub.publish(rev, now, out)
            times.append(time.perf_counter() - t0)
            for k, v in pub.timings.items():
                phases.setdefault(k, []).append(v)
            assert sum(len(o.issued) for o in result.orgs.values()) == 1
    extra = {f"{k}_median_s": round(statistics.median(v), 4) for k, v in phases.items()}
    return {"value": statistics.median(times), "unit": "s", "goal": 0.2,
            "min": min(times), "max": max(times), **extra}  # fmt: skip


def _git(repo: Path, *args: str) -> None:
    env = dict(os.environ, GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.invalid",
               GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.invalid")  # fmt: skip
    subprocess.run(["git", "-C", str(repo), "-c", "commit.gpgsign=false", *args], check=True,
                   capture_output=True, env=env)  # fmt: skip


def _bytes_per_device() -> dict[str, Any]:
    s = _setup()
    if "bytes_per_device" not in s:
        _cold()
    return {"value": s["bytes_per_device"], "unit": "bytes", "goal": 200.0,
            "manifest_bytes": s["manifest_bytes"]}  # fmt: skip


BENCHMARKS = {
    "publish_cold_10k": _cold,
    "publish_incremental_1dev_10k": lambda: _incremental(False),
    "publish_incremental_1dev_10k_git": lambda: _incremental(True),
    "manifest_bytes_per_device": _bytes_per_device,
}
