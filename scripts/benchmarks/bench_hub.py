"""Load generator for ``hub serve``: many agents reporting over mTLS, plus long-polls.

``scripts/bench hub_load`` runs it. The hub runs in a child process: the real
``reconciler.hub.daemon`` with TLS, the SQLite feed store (WAL,
``synchronous=FULL``) and report batching. It serves one org of
``MESHOPS_BENCH_AGENTS`` devices (10,000 by default) from a static snapshot, so
the figures measure serving, not git. This process simulates the agents, each
with its own device certificate:

* every agent reports once per ``MESHOPS_BENCH_INTERVAL`` (30 s), spread
  evenly, so 10,000 agents make ~333 reports/s;
* ``MESHOPS_BENCH_LONGPOLLS`` (1,000) clients hold manifest long-polls
  (``If-None-Match`` + ``?wait=25``), their starts spread over 25 s as real
  agents' are;
* ``MESHOPS_BENCH_KEEPALIVE=1`` (the default) models long-running agents
  (``meshops agent run``): every agent's and poller's mTLS connection is opened
  first (not measured, ``warm_up_s``), then the steady state is measured.
  ``MESHOPS_BENCH_KEEPALIVE=0`` models ``meshops agent apply`` from a timer: each
  report opens a new mTLS connection, and its handshake is in the latency.

Bounded: ``MESHOPS_BENCH_DURATION`` seconds (60) of load, every request with a
10 s timeout, at most 256 reports in flight, the whole run under a hard limit.
Latency is measured from the moment a report was *due*, so a client or hub
that falls behind shows in p99 (no coordinated omission). Recorded: p50/p99,
errors, lost reports (accepted 200s minus reports committed in the store, read
after the hub stopped), the hub's own handler and commit latency (from its
/metrics histograms, as bucket upper bounds), its CPU time and peak RSS, and its
garbage-collector pauses.

The client is bare asyncio streams (aiohttp's client costs several times more
CPU per request). Both sides share the machine (2 cores here, shared with other
jobs), so the client's CPU competes with the hub's: the latency is an upper
bound of what a dedicated hub shows.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ORG = "bench"


def _env(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


# -- set-up: a CA, device certificates, the snapshot files the child serves -----------------
def _make_world(directory: Path, agents: int, now: float) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from reconciler.model.repo import Device, Organization
    from reconciler.pki.ca import init_ca, new_signing_key_pem
    from reconciler.pki.certs import issue_device_cert
    from reconciler.pki.keys import private_to_pem

    org = Organization(name=ORG, cidr_v4="10.64.0.0/10")
    bundle = init_ca(org, now - 3600)
    signing = new_signing_key_pem()
    from reconciler.pki.ca import org_keys_from_doc, secret_doc

    keys = org_keys_from_doc(secret_doc(ORG, bundle.key_pem, signing), ORG, bundle.cert_pem)
    (directory / "ca.crt").write_text(bundle.cert_pem)
    secret = directory / "secret.json"
    secret.write_text(json.dumps(secret_doc(ORG, bundle.key_pem, signing)))
    secret.chmod(0o600)
    certs = directory / "certs"
    certs.mkdir()
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    wg = base64.b64encode(bytes(32)).decode()
    for i in range(agents):
        ident = Ed25519PrivateKey.generate()
        name = f"d{i}"
        dev = Device(name=name, org=ORG, owner="bench", wireguard_public_key=wg,
                     identity_public_key=base64.b64encode(
                         ident.public_key().public_bytes(*raw)).decode(),
                     tunnel_ips=(f"10.{64 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}",))
        pem = issue_device_cert(keys, dev, 10_000 + i, now)
        (certs / f"{name}.pem").write_text(pem + private_to_pem(ident))


# -- the child: a hub serving a static snapshot -----------------------------------------------
def _child(directory: str, port: int) -> None:
    from reconciler.hub.daemon import ServeConfig, serve_forever
    from reconciler.hub.snapshot import OrgSnapshot, Snapshot
    from reconciler.pki.ca import org_keys_from_doc
    from reconciler.pki.envelope import sign_envelope

    d = Path(directory)
    ca = (d / "ca.crt").read_text()
    keys = org_keys_from_doc(json.loads((d / "secret.json").read_text()), ORG, ca)
    names = sorted(p.stem for p in (d / "certs").glob("*.pem"))
    payload = json.dumps({"org": ORG, "serial": 1, "devices": names}).encode()

    class StaticPipeline:
        def build(self, rev: str, now: float) -> Snapshot:
            org = OrgSnapshot(
                org=ORG, serial=1,
                manifest=sign_envelope(payload, "application/vnd.meshops.manifest+json",
                                       keys.signing_key),
                ca_pem=ca, certs={}, devices=frozenset(names), revoked=frozenset(), keys=keys)
            return Snapshot(commit=rev, orgs={ORG: org}, built_at=now)

    repo = d / "repo"
    config = ServeConfig(repo=str(repo), listen=f"127.0.0.1:{port}",
                         db=f"sqlite:///{d}/hub.db", state_dir=str(d / "state"),
                         pipeline=StaticPipeline(), poll=3600)
    import gc

    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started: list[float] = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses[info["generation"]].append(time.perf_counter() - started[0])

    gc.callbacks.append(on_gc)
    asyncio.run(serve_forever(config))
    (d / "gc.json").write_text(json.dumps(
        {g: {"count": len(p), "max_s": max(p, default=0.0), "total_s": sum(p)}
         for g, p in pauses.items()}))


# -- the agents ------------------------------------------------------------------------------
def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class _Conn:
    """One agent's HTTP/1.1 connection over mTLS, on bare asyncio streams.

    aiohttp's client costs several times more CPU per request than this, and the
    client shares the machine with the hub, so the generator stays minimal."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self.port, self.ctx = port, ctx
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=self.ctx, server_hostname=f"{ORG}.hub",
            ssl_handshake_timeout=10)

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: str = "") -> int:
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        head = (f"{method} {path} HTTP/1.1\r\nHost: {ORG}.hub\r\n{headers}"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionResetError("the hub closed the connection")
        status = int(status_line.split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()  # no TLS close_notify round trip
            self.writer = self.reader = None


async def _load(directory: Path, port: int, agents: int, duration: float, interval: float,
                long_polls: int, keepalive: bool, max_in_flight: int = 256) -> dict[str, Any]:
    from reconciler.hub.daemon import small_tls_buffers

    small_tls_buffers()  # the client holds thousands of TLS connections too
    ca = (directory / "ca.crt").read_text()
    base = f"/v1/orgs/{ORG}"
    latencies: list[float] = []
    errors: dict[str, int] = {}
    accepted = 0

    def err(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    # One TLS context per agent (its own certificate, ~20 KiB), made before the
    # clock starts.
    conns = []
    for i in range(agents):
        ctx = ssl.create_default_context(cadata=ca)
        ctx.load_cert_chain(directory / "certs" / f"d{i}.pem")
        conns.append(_Conn(port, ctx))
    in_flight = asyncio.Semaphore(max_in_flight)
    poll_ctx = ssl.create_default_context(cadata=ca)
    # manifest reads need a device certificate of the org (mTLS), like reports
    poll_ctx.load_cert_chain(directory / "certs" / "d0.pem")
    poll_conns = [_Conn(port, poll_ctx) for _ in range(long_polls)]
    warm_up_s = 0.0
    if keepalive:
        # Long-running agents (`meshops agent run`) hold their connection: open them
        # all first (not measured), then measure the steady state.
        t0 = time.monotonic()

        async def connect(c: _Conn) -> None:
            async with in_flight:
                try:
                    await c.open()
                except (OSError, ssl.SSLError, TimeoutError) as exc:
                    err(f"connect-{type(exc).__name__}")

        await asyncio.gather(*(connect(c) for c in [*conns, *poll_conns]))
        warm_up_s = time.monotonic() - t0

    async def report(i: int, seq: int, due: float) -> None:
        # latency counts from when the report was DUE, so a client or hub that falls
        # behind shows up in the figures (no coordinated omission)
        nonlocal accepted
        body = json.dumps({"device": f"d{i}", "serial": seq, "mapping": "independent",
                           "listen_port": 51820, "candidates": [
                               {"kind": "stun", "address": f"203.0.113.{i % 250 + 1}:51820"}]})
        conn = conns[i]
        async with in_flight:
            try:
                status = await asyncio.wait_for(
                    conn.request("POST", f"{base}/endpoints", body.encode()), 10)
            except (OSError, ssl.SSLError, TimeoutError, ValueError, IndexError,
                    asyncio.IncompleteReadError) as exc:
                conn.close()
                err(type(exc).__name__)
                return
            if not keepalive:
                conn.close()  # `agent apply` from a timer: a new mTLS connection each time
            if status == 200:
                accepted += 1
                latencies.append(time.monotonic() - due)
            else:
                err(f"http-{status}")

    async def long_poll(conn: _Conn, stop_at: float, offset: float) -> None:
        await asyncio.sleep(offset)  # real agents' long-polls are not in lock-step
        while time.monotonic() < stop_at - 1:
            try:
                status = await asyncio.wait_for(conn.request(
                    "GET", f"{base}/manifest?wait=25", headers='If-None-Match: "1"\r\n'), 40)
                if status != 304:
                    err(f"poll-http-{status}")
            except (OSError, ssl.SSLError, TimeoutError, ValueError,
                    asyncio.IncompleteReadError) as exc:
                conn.close()
                err(f"poll-{type(exc).__name__}")
                await asyncio.sleep(1)
        conn.close()

    # The generator's own garbage collector must not stall the clock: its objects
    # (10,000 contexts and connections) are frozen, and collection is off while
    # measuring (the load is bounded, so memory is too).
    import gc

    gc.collect()
    gc.freeze()
    gc.disable()
    start = time.monotonic()
    stop_at = start + duration
    pollers = [asyncio.create_task(long_poll(c, stop_at, 25 * k / max(1, long_polls)))
               for k, c in enumerate(poll_conns)]
    tasks: set[asyncio.Task[None]] = set()
    sent = 0
    step = interval / agents
    while True:
        due = int((time.monotonic() - start) / step)
        while sent <= due and sent * step < duration:
            t = asyncio.create_task(report(sent % agents, sent // agents, start + sent * step))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            sent += 1
        if sent * step >= duration:
            break
        await asyncio.sleep(0.005)
    if tasks:
        await asyncio.wait(tasks, timeout=15)
    late = len(tasks)
    for t in [*tasks, *pollers]:
        t.cancel()
    await asyncio.gather(*tasks, *pollers, return_exceptions=True)
    if late:
        errors["not-finished-in-15s"] = late
    elapsed = time.monotonic() - start
    gc.enable()
    gc.unfreeze()
    for c in conns:
        c.close()
    return {"sent": sent, "accepted": accepted, "latencies": latencies, "errors": errors,
            "elapsed": elapsed, "warm_up_s": warm_up_s}


def _server_latency(port: int, ca: str) -> dict[str, float]:
    """p50/p99 of the hub's own report-handling time, from its /metrics histogram
    (bucket upper bounds: the hub's view, without TLS handshakes or client queueing)."""
    import urllib.request

    ctx = ssl.create_default_context(cadata=ca)
    ctx.check_hostname = False
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=ctx,
                                timeout=10) as r:
        text = r.read().decode()
    out = {}
    for metric, prefix in (("meshops_hub_request_seconds_bucket", "server"),
                           ("meshops_hub_store_commit_seconds_bucket", "commit")):
        buckets = []
        for line in text.splitlines():
            if line.startswith(metric) and (prefix == "commit" or "/endpoints" in line):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
        buckets.sort()
        total = buckets[-1][1] if buckets else 0.0
        for name, q in (("p50", 0.5), ("p99", 0.99)):
            out[f"{prefix}_{name}_le_s"] = next(
                (le for le, n in buckets if total and n >= q * total), float("nan"))
    return out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _rss(pid: int) -> tuple[int, int]:
    rss = hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    return rss, hwm


def hub_load() -> dict[str, Any]:
    agents = int(_env("MESHOPS_BENCH_AGENTS", 10_000))
    duration = _env("MESHOPS_BENCH_DURATION", 60)
    interval = _env("MESHOPS_BENCH_INTERVAL", 30)
    long_polls = int(_env("MESHOPS_BENCH_LONGPOLLS", 1000))
    keepalive = bool(int(_env("MESHOPS_BENCH_KEEPALIVE", 1)))
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="meshops-bench-hub-") as tmp:
        d = Path(tmp)
        t0 = time.monotonic()
        _make_world(d, agents, time.time())
        setup_s = time.monotonic() - t0
        repo = d / "repo"
        repo.mkdir()
        env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@example.org",
                   GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@example.org")
        for args in (["init", "-q", "-b", "main"], ["commit", "-q", "--allow-empty", "-m", "b"]):
            subprocess.run(["git", *args], cwd=repo, env=env, check=True)
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve-child", tmp, str(port)], cwd=ROOT)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline or child.poll() is not None:
                        raise RuntimeError("the hub child did not start") from None
                    time.sleep(0.2)
            time.sleep(1.0)  # first publish
            cpu_before = _cpu_seconds(child.pid)
            result = asyncio.run(asyncio.wait_for(
                _load(d, port, agents, duration, interval, long_polls, keepalive),
                duration + 120 + agents / 500))
            rss, peak = _rss(child.pid)
            server = _server_latency(port, (d / "ca.crt").read_text())
            cpu_s = _cpu_seconds(child.pid) - cpu_before
        finally:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        gc_file = d / "gc.json"
        gc_stats = json.loads(gc_file.read_text()) if gc_file.exists() else {}
        from reconciler.hub.feedstore import FeedStore

        store = FeedStore(f"sqlite:///{d}/hub.db")
        stored = store.total_reports()
        store.close()
    lat = result["latencies"]
    p99 = _pct(lat, 0.99)
    return {
        "value": p99,
        "unit": "s",
        "goal": 0.05,
        "p50_s": _pct(lat, 0.50),
        "p99_s": p99,
        "max_s": max(lat) if lat else float("nan"),
        "agents": agents,
        "duration_s": duration,
        "long_polls": long_polls,
        "reports_sent": result["sent"],
        "reports_accepted": result["accepted"],
        "reports_stored": stored,
        "lost_reports": max(0, result["accepted"] - stored),
        "errors": result["errors"],
        "reports_per_s": result["accepted"] / result["elapsed"],
        "keepalive": keepalive,
        "warm_up_s": result["warm_up_s"],
        **server,
        "hub_cpu_s": cpu_s,
        "hub_cpu_ms_per_report": 1000 * cpu_s / max(1, result["accepted"]),
        "hub_rss_bytes": rss,
        "hub_peak_rss_bytes": peak,
        "setup_s": setup_s,
        "hub_gc": gc_stats,
    }


BENCHMARKS = {"hub_load": hub_load}


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-child":
        sys.path.insert(0, str(ROOT))
        _child(sys.argv[2], int(sys.argv[3]))
    else:
        print(json.dumps(hub_load(), indent=2, default=str))
