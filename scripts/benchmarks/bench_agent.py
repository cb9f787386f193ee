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

The 10k no-op figures are the median of ``MESHOPS_BENCH_AGENT_RUNS_10K`` runs
(default 7), with min, max, every run's wall time and the CPU median.
``agent_apply_delta_10k``: at 10,000 peers, one peer's endpoint changes in a
new serial, five times (a different peer each time); the whole-process wall
time of each apply, with every UAPI request recorded (the process is
``meshops agent apply`` with ``UapiClient.request`` wrapped to also append to
a file): it fails unless each apply is one operation and its ``set`` requests
name exactly the changed peer (``uapi_set_peers`` is 1).

Teardown deletes the namespace and stops only the wireguard-go this run
started (its pid file).
"""

from __future__ import annotations

import base64
import contextlib
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
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GOAL_S = 0.4
PEERS = int(os.environ.get("MESHOPS_BENCH_AGENT_PEERS", "5"))
RUNS = int(os.environ.get("MESHOPS_BENCH_AGENT_RUNS", "15"))


_PUBLISHED: dict[Path, tuple[object, object]] = {}  # setup dir -> (manifest, signing key)


def _republish_one_peer_changed(tmp: Path, serial: int) -> str:
    """Sign ``serial`` with one peer's endpoint moved (a different peer each
    time); the public key of that peer."""
    from reconciler.pki.manifest import encode_manifest, sign_manifest
    from reconciler.structs import replace

    manifest, signer = _PUBLISHED[tmp]
    devices = list(manifest.devices)  # type: ignore[attr-defined]
    i = 1 + serial % (len(devices) - 1)
    devices[i] = replace(devices[i], endpoint=f"192.0.2.{serial % 250 + 1}:{2000 + serial}")
    manifest = replace(manifest, serial=serial, devices=tuple(devices))  # type: ignore[type-var]
    _PUBLISHED[tmp] = (manifest, signer)
    (tmp / "pub" / "manifest.json").write_bytes(
        sign_manifest(encode_manifest(manifest), signer))  # type: ignore[arg-type]
    return devices[i].wireguard_public_key


# Runs ``meshops agent apply`` with every UAPI request also appended to a file
# (``MESHOPS_BENCH_UAPI_LOG``): the one-peer-delta benchmark counts the peers
# its ``set`` requests touch. The requests still reach wireguard-go.
_RECORDING_APPLY = """
import os, sys
from reconciler.backends import uapi
real = uapi.UapiClient.request
def request(self, data):
    with open(os.environ["MESHOPS_BENCH_UAPI_LOG"], "ab") as fh:
        fh.write(data + b"\\0")
    return real(self, data)
uapi.UapiClient.request = request
from reconciler.cli import main
sys.exit(main(sys.argv[1:]))
"""


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
    _PUBLISHED[tmp] = (manifest, signer)
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


def _skip(goal: float | None) -> dict | None:
    if os.geteuid() != 0 or shutil.which("wireguard-go") is None:
        return {"value": float("nan"), "unit": "s", "goal": goal,
                "skipped": "needs root and wireguard-go"}
    return None


@contextlib.contextmanager
def _converged(peers: int, relay: bool) -> Iterator[tuple[Path, list[str], dict, int]]:
    """A throwaway namespace with a device converged at ``peers`` peers (the
    first apply, then one warm-up no-op); yields (setup dir, the apply command,
    its environment, the first apply's operation count). Teardown deletes the
    namespace and stops only the wireguard-go this run started (its pid file)."""
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
        subprocess.run(cmd, capture_output=True, check=True, env=env)  # warm the caches
        yield tmp, cmd, env, json.loads(first.stdout)["operations"]
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


def _timed(cmd: list[str], env: dict) -> tuple[float, float, dict]:
    """Wall and CPU (user + sys) seconds of one run, and its JSON output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, json.loads(out.stdout)


def _figures(walls: list[float], cpus: list[float]) -> dict:
    return {"value": statistics.median(walls), "unit": "s", "min": min(walls),
            "max": max(walls), "cpu_median": statistics.median(cpus),
            "walls": [round(w, 4) for w in walls], "runs": len(walls),
            "loadavg_1min": os.getloadavg()[0]}


def bench_agent_apply_noop(peers: int = PEERS, relay: bool = False, runs: int = RUNS,
                           goal: float = GOAL_S) -> dict:
    if (skipped := _skip(goal)) is not None:
        return skipped
    with _converged(peers, relay) as (_tmp, cmd, env, created):
        walls, cpus = [], []
        for _ in range(runs):
            wall, cpu, doc = _timed(cmd, env)
            if doc["operations"] != 0:
                raise RuntimeError(f"not a no-op: {doc}")
            walls.append(wall)
            cpus.append(cpu)
    return {**_figures(walls, cpus), "goal": goal, "peers": peers, "relay": relay,
            "first_apply_operations": created}


def bench_agent_apply_delta(peers: int = 10_000, relay: bool = False, runs: int = 5,
                            goal: float | None = None) -> dict:
    """One peer's endpoint changes in a new serial, ``runs`` times (a different
    peer each time): the whole-process wall time of the apply that follows,
    and the peers its UAPI ``set`` requests touch (must be that one peer)."""
    if (skipped := _skip(goal)) is not None:
        return skipped
    with _converged(peers, relay) as (tmp, cmd, env, created):
        log = tmp / "uapi.log"
        env = {**env, "MESHOPS_BENCH_UAPI_LOG": str(log)}
        recording = [sys.executable, "-c", _RECORDING_APPLY, *cmd[cmd.index("agent"):]]
        walls, cpus, touched = [], [], []
        for serial in range(2, runs + 2):
            changed = _republish_one_peer_changed(tmp, serial)
            log.write_bytes(b"")
            wall, cpu, doc = _timed(recording, env)
            requests = [r.decode() for r in log.read_bytes().split(b"\0") if r]
            keys = {line for r in requests if r.startswith("set=1")
                    for line in r.splitlines() if line.startswith("public_key=")}
            want = f"public_key={base64.b64decode(changed).hex()}"
            if doc["operations"] != 1 or keys != {want}:
                raise RuntimeError(f"serial {serial}: {doc['operations']} operation(s), "
                                   f"UAPI set touched {len(keys)} peer(s), not just {want}")
            walls.append(wall)
            cpus.append(cpu)
            touched.append(len(keys))
    return {**_figures(walls, cpus), "goal": goal, "peers": peers, "relay": relay,
            "uapi_set_peers": max(touched), "first_apply_operations": created}


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


RUNS_10K = int(os.environ.get("MESHOPS_BENCH_AGENT_RUNS_10K", "7"))


def bench_agent_apply_noop_10k() -> dict:
    return bench_agent_apply_noop(10_000, runs=RUNS_10K, goal=0.5)


def bench_agent_apply_noop_10k_relay() -> dict:
    return bench_agent_apply_noop(10_000, relay=True, runs=RUNS_10K, goal=0.5)


def bench_agent_apply_delta_10k() -> dict:
    return bench_agent_apply_delta(10_000, runs=5)


BENCHMARKS = {"agent_apply_noop": bench_agent_apply_noop,
              "agent_apply_noop_10k": bench_agent_apply_noop_10k,
              "agent_apply_noop_10k_relay": bench_agent_apply_noop_10k_relay,
              "agent_apply_delta_10k": bench_agent_apply_delta_10k,
              "agent_import": bench_agent_import}
