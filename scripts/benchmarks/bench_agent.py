"""Agent benchmarks: the whole-process wall time of a no-op ``meshops agent apply``.

``agent_apply_noop_10k`` and ``agent_apply_noop_10k_relay`` (issue 13): the
same with 10,000 peers, as a plain device and as a relay (every peer carries
its own host route and the relay forwards). Each pass also observes the
``inet meshops`` table and the policy routing, as every real pass does.

``agent_apply_noop``: a device with a few peers (default 5) is converged once
on a real wireguard-go interface in a throwaway network namespace
(``mo-bench-<pid>``), from a ``file://`` manifest signed by a throwaway key;
then ``meshops agent apply`` runs again N times (default 15) as separate
processes -- what a systemd timer does every 30 s -- and the median wall time
is reported. Needs root; without it the figure is ``None`` with the reason.
``agent_import``: the import time of what a no-op apply loads (``python -X
importtime``-free: one fresh interpreter, imports timed in-process).

Teardown deletes the namespace and stops only the wireguard-go this run
started (its pid file).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GOAL_S = 0.4
PEERS = int(os.environ.get("MESHOPS_BENCH_AGENT_PEERS", "5"))
RUNS = int(os.environ.get("MESHOPS_BENCH_AGENT_RUNS", "15"))


def _meshops() -> list[str]:
    exe = Path(sys.executable).with_name("meshops")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "reconciler"]


def _setup(tmp: Path, ns: str, iface: str, peers: int = PEERS, relay: bool = False) -> Path:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from reconciler.agent.config import AgentConfig, save_config
    from reconciler.fsio import atomic_write
    from reconciler.model.manifest import Manifest, ManifestDevice
    from reconciler.pki.envelope import trust_entry
    from reconciler.pki.manifest import encode_manifest, sign_manifest

    def wg_pub(seed: int) -> tuple[str, str]:
        key = X25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
        pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return base64.b64encode(bytes([seed]) * 32).decode(), base64.b64encode(pub).decode()

    signer = Ed25519PrivateKey.generate()
    now = int(time.time())
    def x25519_pub(i: int) -> str:  # distinct keys beyond 255 devices (X25519 clamps the
        raw = hashlib.sha256(i.to_bytes(8, "big")).digest()  # low bits: hash, not count)
        key = X25519PrivateKey.from_private_bytes(raw)
        return base64.b64encode(key.public_key().public_bytes(Encoding.Raw,
                                                              PublicFormat.Raw)).decode()

    devices = [
        ManifestDevice(name=f"dev-{i}", wireguard_public_key=wg_pub(1)[1] if i == 0
                       else x25519_pub(i),
                       tunnel_ips=(f"10.99.{(i + 1) // 250}.{(i + 1) % 250 + 1}",),
                       cert_sha256="A" * 43, relay=relay and i == 0,
                       endpoint=f"198.51.100.{i % 250 + 1}:{1024 + i}" if i else
                       ("203.0.113.1:51820" if relay else None))
        for i in range(peers + 1)
    ]
    manifest = Manifest(org="bench", serial=1, commit="0" * 40, issued_at=now,
                        not_after=now + 86400, cidr_v4="10.99.0.0/16", cidr_v6=None,
                        listen_port=51820, keepalive=25, devices=tuple(devices))
    (tmp / "pub").mkdir()
    (tmp / "pub" / "manifest.json").write_bytes(sign_manifest(encode_manifest(manifest), signer))
    (tmp / "trust.json").write_text(json.dumps(
        {"orgs": {"bench": trust_entry([signer.public_key()], None)}}))
    atomic_write(tmp / "wireguard.key", (wg_pub(1)[0] + "\n").encode(), mode=0o600)
    config = AgentConfig(org="bench", name="dev-0", trust=str(tmp / "trust.json"),
                         private_key=str(tmp / "wireguard.key"),
                         identity_key=str(tmp / "identity.key"),
                         manifest_url=f"file://{tmp}/pub/manifest.json", interface=iface,
                         netns=ns, state_dir=str(tmp / "state"))
    save_config(config, tmp / "agent.json")
    return tmp / "agent.json"


def bench_agent_apply_noop(peers: int = PEERS, relay: bool = False, runs: int = RUNS,
                           goal: float = GOAL_S) -> dict:
    if os.geteuid() != 0 or shutil.which("wireguard-go") is None:
        return {"value": float("nan"), "unit": "s", "goal": goal,
                "skipped": "needs root and wireguard-go"}
    tmp = Path(tempfile.mkdtemp(prefix="meshops-bench-agent-"))
    ns, iface = f"mo-bench-{os.getpid()}", f"mob{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        config = _setup(tmp, ns, iface, peers, relay)
        cmd = [*_meshops(), "agent", "apply", "--config", str(config), "--format", "json"]
        # as installed: bytecode cached (pip compiles it); kept out of the source tree
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
        first = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        created = json.loads(first.stdout)["operations"]
        subprocess.run(cmd, capture_output=True, check=True, env=env)  # warm the caches
        walls, cpus = [], []
        for _ in range(runs):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            walls.append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            if json.loads(out.stdout)["operations"] != 0:
                raise RuntimeError(f"not a no-op: {out.stdout}")
        return {"value": statistics.median(walls), "unit": "s", "goal": goal,
                "min": min(walls), "max": max(walls), "cpu_median": statistics.median(cpus),
                "runs": runs, "peers": peers, "relay": relay, "first_apply_operations": created,
                "loadavg_1min": os.getloadavg()[0]}
    finally:
        pid_file = tmp / "state" / "wireguard" / f"{iface}.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
            if iface.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError, IndexError):
            pass
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def bench_agent_import() -> dict:
    code = ("import time; t=time.perf_counter(); import reconciler.cli, reconciler.cli.agent, "
            "reconciler.agent.reconcile, reconciler.agent.runtime, reconciler.backends.userspace,"
            " reconciler.net.iproute; print(time.perf_counter()-t)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory() as cache:
        env["PYTHONPYCACHEPREFIX"] = cache
        times = [float(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                      text=True, check=True, env=env).stdout)
                 for _ in range(6)][1:]  # the first run writes the bytecode cache
    return {"value": statistics.median(times), "unit": "s", "goal": None}


def bench_agent_apply_noop_10k() -> dict:
    return bench_agent_apply_noop(10_000, runs=7, goal=0.5)


def bench_agent_apply_noop_10k_relay() -> dict:
    return bench_agent_apply_noop(10_000, relay=True, runs=7, goal=0.5)


BENCHMARKS = {"agent_apply_noop": bench_agent_apply_noop,
              "agent_apply_noop_10k": bench_agent_apply_noop_10k,
              "agent_apply_noop_10k_relay": bench_agent_apply_noop_10k_relay,
              "agent_import": bench_agent_import}
