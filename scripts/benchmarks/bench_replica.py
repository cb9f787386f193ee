"""Replica wake-up delay: a report accepted by hub A wakes long-polls held on hub B.

``scripts/bench replica_wake`` runs it (root: PostgreSQL runs as the ``postgres``
user, as in tests/hub/conftest.py). A throwaway PostgreSQL cluster on
127.0.0.1, then for each mode two real ``python -m reconciler hub serve``
processes (A and B) on one fresh database, following a copy of example-repo
(real SOPS + gpg publish), over mTLS:

* ``listen``: the defaults (LISTEN/NOTIFY, safety-net poll every 5 s, fast poll
  0.5 s while not listening);
* ``poll``: ``--no-store-listen``, the periodic store poll every 0.5 s only.

Per report (``MESHOPS_BENCH_REPLICA_REPORTS``, 200 by default, per mode): db-1
holds a feed long-poll and a view long-poll on B (its view includes web-1: the
``web-db`` rule), then web-1 reports a new candidate to A. The delay is from
the moment A's 200 response is read to the moment each long-poll on B returns;
it can be slightly negative (B may answer before A's response has been read:
the notification is sent at commit, before A answers). Reports are spaced more
than the feed's rebuild interval (0.5 s) apart, and each poll is held before
the report is sent, so the figure is the propagation, not the rate limit.
The hold time has a random part (0-0.5 s, fixed seed), so reports fall at
every phase of B's periodic poll instead of locking to one.
"""

from __future__ import annotations

import asyncio
import base64
import glob
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[2]
SNI = "acme.hub"
REPORTER, HOLDER = "web-1", "db-1"  # db-1's view holds web-1 (policy rule web-db)
HOLD = 0.6  # seconds a long-poll is held before the report (> the 0.5 s rebuild interval)


def _env(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", cmd], capture_output=True,
                          text=True, timeout=120, check=False)


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                   key=lambda p: [int(n) for n in re.findall(r"\d+", p)], reverse=True)
    for path in found:
        if Path(path, "initdb").is_file():
            return Path(path)
    raise RuntimeError("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin")


class Postgres:
    """A throwaway cluster owned by ``postgres`` on 127.0.0.1 (PLATFORM-NOTES)."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("replica_wake needs root (PostgreSQL runs as postgres)")
        self.bin = _pg_bin()
        self.base = Path(tempfile.mkdtemp(prefix="meshops-bench-pg-"))
        self.data = self.base / "data"
        self.port = _free_port()

    def __enter__(self) -> Self:
        self.data.mkdir()
        shutil.chown(self.base, "postgres")
        shutil.chown(self.data, "postgres")
        start = (f'{self.bin}/pg_ctl -D {self.data} -o "-k {self.data} -h 127.0.0.1 '
                 f'-p {self.port}" -l {self.data}/log -w start')
        for cmd in (f"{self.bin}/initdb -D {self.data} -A trust -U meshops", start):
            done = _as_postgres(cmd)
            if done.returncode != 0:
                self.__exit__()
                raise RuntimeError(f"{cmd.split()[0]}: {done.stderr.strip()[-500:]}")
        return self

    def __exit__(self, *exc: object) -> None:
        _as_postgres(f"{self.bin}/pg_ctl -D {self.data} -m immediate -w stop")
        shutil.rmtree(self.base, ignore_errors=True)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://meshops@127.0.0.1:{self.port}/{db}"

    def create(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def version(self) -> str:
        out = subprocess.run([str(self.bin / "postgres"), "--version"], capture_output=True,
                             text=True, check=False)
        return out.stdout.strip()


# -- the repository: example-repo, with identity keys this benchmark holds ---------------------
def _git(cwd: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@example.org",
               GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@example.org")
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def _with_identity(repo: Path, device: str) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from reconciler.pki.keys import private_to_pem

    key = Ed25519PrivateKey.generate()
    public = base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()
    path = repo / "orgs" / "acme" / "devices" / f"{device}.yaml"
    text = path.read_text()
    new = re.sub(r"(identity:\s*\n\s*public_key:\s*)\S+", lambda m: m.group(1) + public, text)
    assert new != text, f"{path}: no identity key to replace"
    path.write_text(new)
    return private_to_pem(key)


def _prepare(tmp: Path) -> tuple[Path, str, dict[str, str], str]:
    """(repo, gnupghome, private key PEM per device, head commit)."""
    from reconciler.hub.publish import example_gnupghome

    repo = tmp / "repo"
    shutil.copytree(ROOT / "example-repo", repo, ignore=shutil.ignore_patterns(".git"))
    keys = {d: _with_identity(repo, d) for d in (REPORTER, HOLDER)}
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "example with benchmark-held identity keys")
    home = example_gnupghome(ROOT / "example-repo", tmp / "gnupg")
    return repo, home, keys, _git(repo, "rev-parse", "HEAD")


# -- the hub processes and an mTLS client ----------------------------------------------------
class Hub:
    def __init__(self, tmp: Path, name: str, repo: Path, db: str, home: str,
                 extra: list[str]) -> None:
        self.port = _free_port()
        self.log = tmp / f"{name}.log"
        argv = [sys.executable, "-m", "reconciler", "hub", "serve", "--repo", str(repo),
                "--listen", f"127.0.0.1:{self.port}", "--db", db, "--state-dir",
                str(tmp / name), "--gnupghome", home, "--poll", "3600", *extra]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                         env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]


def _ctx(ca_pem: str, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca_pem)
    if cert:
        ctx.load_cert_chain(*cert)
    return ctx


class Client:
    """One aiohttp session per device (keep-alive, mTLS)."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=8))

    async def request(self, port: int, path: str, method: str = "GET",
                      body: Any = None) -> tuple[int, dict[str, str], bytes]:
        async with self.session.request(method, f"https://127.0.0.1:{port}{path}",
                                         server_hostname=SNI, json=body) as r:
            return r.status, dict(r.headers), await r.read()

    async def close(self) -> None:
        await self.session.close()


async def _wait_serving(hub: Hub, client: Client, commit: str) -> None:
    deadline = time.monotonic() + 90
    while True:
        if hub.proc.poll() is not None:
            raise RuntimeError(f"hub exited {hub.proc.returncode}:\n{hub.tail()}")
        try:
            status, _, body = await client.request(hub.port, "/v1/status")
            if status == 200 and json.loads(body)["serving_commit"] == commit:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"hub not serving {commit[:12]}:\n{hub.tail()}")
        await asyncio.sleep(0.3)


def _revision(envelope: bytes) -> int:
    return int(json.loads(base64.b64decode(json.loads(envelope)["payload"]))["revision"])


async def _measure(a: Hub, b: Hub, tmp: Path, ca: str, keys: dict[str, str], head: str,
                   reports: int, mode: str) -> dict[str, list[float]]:
    anonymous = Client(_ctx(ca))
    try:
        await asyncio.gather(_wait_serving(a, anonymous, head), _wait_serving(b, anonymous, head))
        clients: dict[str, Client] = {}
        for device, key_pem in keys.items():
            status, _, body = await anonymous.request(
                a.port, f"/v1/orgs/acme/devices/{device}/cert")
            assert status == 200, body
            cert, key = tmp / f"{mode}-{device}.crt", tmp / f"{mode}-{device}.key"
            cert.write_text(json.loads(body)["cert"])
            key.write_text(key_pem)
            key.chmod(0o600)
            clients[device] = Client(_ctx(ca, (str(cert), str(key))))
    finally:
        await anonymous.close()
    reporter, holder = clients[REPORTER], clients[HOLDER]
    jitter = random.Random(13)  # the same hold times in every mode and run
    out: dict[str, list[float]] = {"feed": [], "view": [], "feed_from_post": []}
    try:
        _, _, body = await holder.request(b.port, "/v1/orgs/acme/endpoints")
        since = _revision(body)
        _, head_v, _ = await holder.request(b.port, f"/v1/orgs/acme/devices/{HOLDER}/view")
        pos = (head_v["X-Meshops-Serial"], head_v["X-Meshops-Revision"])
        for i in range(reports):
            returned: dict[str, float] = {}

            feed = asyncio.create_task(_held(
                holder, b.port, f"/v1/orgs/acme/endpoints?since={since}&wait=30",
                returned, "feed"))
            view = asyncio.create_task(_held(
                holder, b.port, f"/v1/orgs/acme/devices/{HOLDER}/view?serial={pos[0]}"
                                f"&revision={pos[1]}&wait=30", returned, "view"))
            await asyncio.sleep(HOLD + jitter.uniform(0.0, 0.5))  # any phase of B's poll
            if feed.done() or view.done():
                raise RuntimeError(f"report {i}: a long-poll on B returned before the report")
            address = f"203.0.113.{1 + i % 250}:{20000 + i}"
            sent = time.perf_counter()
            status, _, body = await reporter.request(a.port, "/v1/orgs/acme/endpoints", "POST", {
                "device": REPORTER, "serial": 1, "mapping": "independent",
                "listen_port": 51820, "candidates": [{"kind": "stun", "address": address}]})
            accepted = time.perf_counter()
            if status != 200 or not json.loads(body)["changed"]:
                raise RuntimeError(f"report {i}: {status} {body[:300]!r}")
            (fs, _, fbody), (vs, vhead, vbody) = await asyncio.wait_for(
                asyncio.gather(feed, view), 40)
            if fs != 200 or vs != 200 or not all(address.encode() in base64.b64decode(
                    json.loads(x)["payload"]) for x in (fbody, vbody)):
                raise RuntimeError(f"report {i}: feed {fs}, view {vs}: the candidate is missing")
            out["feed"].append(returned["feed"] - accepted)
            out["view"].append(returned["view"] - accepted)
            out["feed_from_post"].append(returned["feed"] - sent)
            since = _revision(fbody)
            pos = (vhead["X-Meshops-Serial"], vhead["X-Meshops-Revision"])
    finally:
        for c in clients.values():
            await c.close()
    return out


async def _held(client: Client, port: int, path: str, returned: dict[str, float],
                kind: str) -> tuple[int, dict[str, str], bytes]:
    """One long-poll; notes when it returned."""
    answer = await client.request(port, path)
    returned[kind] = time.perf_counter()
    return answer


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(1000 * _pct(values, 0.5), 2), "p99_ms": round(
        1000 * _pct(values, 0.99), 2), "max_ms": round(1000 * max(values), 2),
        "min_ms": round(1000 * min(values), 2)}


def replica_wake() -> dict[str, Any]:
    reports = int(_env("MESHOPS_BENCH_REPLICA_REPORTS", 200))
    sys.path.insert(0, str(ROOT))
    modes = {"listen": [], "poll": ["--no-store-listen"]}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="meshops-bench-replica-") as tmp_s, Postgres() as pg:
        tmp = Path(tmp_s)
        repo, home, keys, head = _prepare(tmp)
        ca = (repo / "orgs" / "acme" / "ca.crt").read_text()
        try:
            for mode, extra in modes.items():
                db = pg.create(f"bench_{mode}")
                a = Hub(tmp, f"{mode}-a", repo, db, home, extra)
                b = Hub(tmp, f"{mode}-b", repo, db, home, extra)
                try:
                    started = time.monotonic()
                    delays = asyncio.run(_measure(a, b, tmp, ca, keys, head, reports, mode))
                    results[mode] = {kind: _summary(v) for kind, v in delays.items()}
                    results[mode]["reports"] = reports
                    results[mode]["elapsed_s"] = round(time.monotonic() - started, 1)
                finally:
                    a.stop()
                    b.stop()
        finally:
            subprocess.run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"],
                           capture_output=True, check=False)
        postgres = pg.version()
    return {
        "value": results["listen"]["feed"]["p99_ms"] / 1000,
        "unit": "s",
        "goal": 0.2,
        **results,
        "machine": {"cores": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version(), "postgres": postgres},
    }


BENCHMARKS = {"replica_wake": replica_wake}


if __name__ == "__main__":
    print(json.dumps(replica_wake(), indent=2))
