"""Planner and apply benchmarks (issue 4, part 9).

* ``plan_5000_peers``: ``plan()`` for 5,000 peers against an observed state
  with 1% drift (the steady-state case an agent sees every pass); the
  fresh-interface case (5,000 additions) is reported as ``fresh_s``.
  Goal <= 0.1 s.
* ``apply_1000_peers_vs_syncconf``: 1,000 peers onto a fresh wireguard-go,
  meshops' userspace backend (observe + plan + apply, one UAPI
  transaction) against ``wg syncconf`` with the same config, in the same
  run, each on its own fresh daemon in a namespace created and deleted
  here. Value is the ratio of the medians, meshops / syncconf, over 7 rounds.
  Goal <= 1.5. Needs root, wireguard-go and wg.
"""

from __future__ import annotations

import base64
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reconciler import structs

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from reconciler.converge import plan, public_key
from reconciler.model.wg import DesiredInterface, DesiredPeer, ObservedInterface, ObservedPeer


def _key(n: int) -> str:
    return base64.b64encode(n.to_bytes(4, "big") * 8).decode()


def _desired(name: str, n: int) -> DesiredInterface:
    peers = {}
    for i in range(n):
        k = _key(i + 2)
        ip = f"10.{100 + i // 65536}.{(i // 256) % 256}.{i % 256}/32"
        peers[k] = DesiredPeer(k, (ip,), f"203.0.113.{i % 250 + 1}:{20000 + i}", 25, f"dev-{i}")
    return DesiredInterface(
        name=name, private_key=_key(1), listen_port=51820, addresses=("10.99.0.1/16",), peers=peers,
        mtu=1420,
    )


def bench_plan_5000() -> dict:
    want = _desired("wg-bench", 5000)
    peers = {}
    for i, (k, p) in enumerate(want.peers.items()):
        if i % 100 == 0:  # 1% drift: one changed allowed IP
            peers[k] = ObservedPeer(k, ("10.250.0.1/32",), p.endpoint, p.keepalive, time.time())
        else:
            peers[k] = ObservedPeer(k, p.allowed_ips, p.endpoint, p.keepalive, time.time())
    have = ObservedInterface(
        name="wg-bench", exists=True, public_key=public_key(want.private_key), listen_port=51820,
        addresses=want.addresses, up=True, mtu=1420, peers=peers,
    )
    now = time.time()
    runs, fresh = [], []
    absent = ObservedInterface(name="wg-bench", exists=False)
    for _ in range(7):
        t = time.perf_counter()
        ops = plan(want, have, now)
        runs.append(time.perf_counter() - t)
        t = time.perf_counter()
        plan(want, absent, now)
        fresh.append(time.perf_counter() - t)
    assert len(ops) == 50
    return {"value": min(runs), "unit": "s", "goal": 0.1, "fresh_s": round(min(fresh), 4), "peers": 5000}


def _syncconf_text(want: DesiredInterface) -> str:
    lines = ["[Interface]", f"PrivateKey = {want.private_key}", f"ListenPort = {want.listen_port}"]
    for p in want.peers.values():
        lines += [
            "", "[Peer]", f"PublicKey = {p.public_key}", f"AllowedIPs = {', '.join(p.allowed_ips)}",
            f"Endpoint = {p.endpoint}", f"PersistentKeepalive = {p.keepalive}",
        ]
    return "\n".join(lines) + "\n"


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def wg_dump_count(ns: str, ifname: str) -> tuple[str, int]:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "wg", "show", ifname, "dump"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    return out[0], len(out) - 1


def bench_apply_1000() -> dict:
    from reconciler.backends.userspace import UserspaceBackend
    from reconciler.net.iproute import IPRouteLinks

    if os.geteuid() != 0:
        return {"value": float("nan"), "unit": "ratio", "goal": 1.5, "skipped": "needs root"}
    ns = f"mo-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    state = tempfile.mkdtemp(prefix="mo-bench-")
    backend = UserspaceBackend(links=IPRouteLinks(ns), netns=ns, state_dir=state)
    started: list[int] = []
    ours, theirs = [], []
    try:
        for rnd in range(7):
            if_ours, if_wg = f"mob{os.getpid() % 10000}o{rnd}", f"mob{os.getpid() % 10000}w{rnd}"
            want = structs.replace(
                _desired(if_ours, 1000), addresses=(), mtu=0, listen_port=51820 + 2 * rnd
            )
            # wg syncconf gets its own port: a busy port (-98) aborts its transaction.
            want_wg = structs.replace(want, listen_port=51821 + 2 * rnd)
            round_pids: list[int] = []
            for ifname in (if_ours, if_wg):  # fresh daemons, link up, no config yet
                pid = backend.ensure_daemon(ifname)
                assert pid is not None
                started.append(pid)
                round_pids.append(pid)
                subprocess.run(["ip", "-n", ns, "link", "set", ifname, "up"], check=True)
            conf = Path(state) / f"{if_wg}.conf"
            conf.write_text(_syncconf_text(want_wg))

            def run_ours(want: DesiredInterface = want, name: str = if_ours) -> None:
                t = time.perf_counter()
                backend.apply(plan(want, backend.observe(name), time.time()))
                ours.append(time.perf_counter() - t)

            def run_theirs(name: str = if_wg, conf: Path = conf) -> None:
                t = time.perf_counter()
                subprocess.run(
                    ["ip", "netns", "exec", ns, "wg", "syncconf", name, str(conf)], check=True
                )
                theirs.append(time.perf_counter() - t)

            # Alternate who goes first, so load drift hits both sides alike.
            for run in (run_ours, run_theirs) if rnd % 2 == 0 else (run_theirs, run_ours):
                run()
            assert plan(want, backend.observe(if_ours), time.time()) == ()
            _, peers = wg_dump_count(ns, if_wg)
            assert peers == 1000, peers
            for pid in round_pids:  # keep later rounds free of handshake noise
                _stop(pid)
    finally:
        for pid in started:
            _stop(pid)
        backend.close()
        time.sleep(0.2)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    a, b = statistics.median(ours), statistics.median(theirs)
    return {
        "value": round(a / b, 3), "unit": "ratio", "goal": 1.5,
        "meshops_s": round(a, 4), "wg_syncconf_s": round(b, 4), "peers": 1000,
    }


BENCHMARKS = {
    "plan_5000_peers": bench_plan_5000,
    "apply_1000_peers_vs_syncconf": bench_apply_1000,
}
