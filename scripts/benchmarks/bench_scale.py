"""Scale test of ``hub serve``: thousands of held long-polls, per-device view
deltas against the full manifest + feed, one git change and a stream of
endpoint moves (issue 13, item 5). ``scripts/bench scale`` runs it;
tests/hub/test_scale_small.py runs the same code at 200 devices.

Processes (this machine has 2 cores, shared):

* the **hub**: a real ``python -m reconciler hub serve`` child per mode, on a
  git repository of ``MESHOPS_SCALE_DEVICES`` devices (``config.synth``: 20
  policy rules, tags, one relay), real publish (SOPS + gpg), SQLite store,
  mTLS on 127.0.0.1. Its CPU seconds (utime + stime from /proc/PID/stat) and
  memory (VmRSS sampled every second, VmHWM after resetting it through
  /proc/PID/clear_refs) are the figures;
* ``MESHOPS_SCALE_CLIENTS`` (2) **client processes**, each bare asyncio + ssl
  (no aiohttp: less client CPU), each holding its share of the agents: one
  mTLS connection per agent with the agent's own device certificate (two in
  full-manifest mode: manifest and feed), plus one per mover;
* this **parent** process: builds the repository, starts and stops the others,
  commits the change, samples the hub, and computes the table. It speaks to
  the clients over their stdin/stdout (one JSON line per command and answer).

Per mode (``view``: ``GET .../devices/NAME/view`` long-polls with deltas;
``full``: ``GET .../manifest`` + ``GET .../endpoints`` long-polls, as agents
without views do), on a fresh hub:

1. every agent connects and reports its endpoint once (the feed holds every device);
2. every poller holds a long-poll (``?wait=MESHOPS_SCALE_WAIT``, 120 s);
3. **(a)** one device's WireGuard key changes in a git commit; delivery time
   is from the end of ``git commit`` to each affected poller's receipt of the
   new serial (this includes the hub noticing the commit and publishing it);
   bytes are the body bytes on the wire (gzip where the agent asks for it, as
   ``reconciler.agent.fetch`` does); CPU is the hub's from just before the
   commit until every affected poller had it plus one second;
4. **(b)** ``MESHOPS_SCALE_MOVES_PER_S`` endpoint moves per second for
   ``MESHOPS_SCALE_SECONDS``, from ``MESHOPS_SCALE_MOVERS`` devices (each its own
   kept-open mTLS connection), while every poller keeps polling. POST latency is
   from the moment a move was due (no coordinated omission); delivery latency is
   measured by ``MESHOPS_SCALE_OBSERVERS`` pollers per client that parse what
   they receive (the others count bytes only); lost reports are the moves not
   accepted (errors, timeouts) plus accepted reports missing from the store.

Expected receivers in (a) are computed here with ``hub.views.OrgView`` from the
served manifest (the devices whose view holds the changed device); every one
must get the change, and in view mode no other poller gets anything.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import json
import os
import platform
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ORG = "org-00"
HUB_NAME = f"{ORG}.hub"


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _env(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# -- the world: a synthetic repository with real identity keys, CA, certificates ---------------
@dataclass
class World:
    base: Path
    repo: Path
    home: str  # GNUPGHOME holding the example hub key (SOPS)
    ca_pem: str
    certs: Path  # NAME.pem: certificate + identity private key
    trust_json: str
    names: list[str]


def identity_key(name: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"scale/{name}".encode()).digest())


def make_world(base: Path, devices: int) -> World:
    from cryptography.hazmat.primitives import serialization

    from reconciler.config.synth import git_init_commit, make_repo
    from reconciler.hub.publish import Publisher, example_gnupghome
    from reconciler.pki.keys import private_to_pem

    sys.path.insert(0, str(HERE))
    from bench_publish import EXAMPLE, init_synthetic_cas

    home = example_gnupghome(EXAMPLE, base / "gnupg")
    repo = make_repo(base / "repo", devices, orgs=1, rules=20, git=False)
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    names = []
    for path in sorted((repo / "orgs" / ORG / "devices").glob("*.yaml")):
        lines = path.read_text().splitlines()
        at = lines.index("identity:") + 1
        key = identity_key(path.stem)
        lines[at] = "  public_key: " + base64.b64encode(key.public_key().public_bytes(*raw)).decode()
        path.write_text("\n".join(lines) + "\n")
        names.append(path.stem)
    init_synthetic_cas(repo, home, time.time())
    git_init_commit(repo, "synthetic repository")
    # The device certificates the agents present: issued by the org CA here (a
    # second publisher on the same repository); the hub accepts any certificate
    # of the org's CA for the right device that is not revoked.
    with Publisher(repo, f"sqlite:///{base}/certs.db", home) as pub:
        result = pub.publish("HEAD", time.time())
    org = result.orgs[ORG]
    certs = base / "certs"
    certs.mkdir()
    for name in names:
        (certs / f"{name}.pem").write_text(org.certs[name] + private_to_pem(identity_key(name)))
    return World(base, repo, home, org.ca_pem, certs, result.trust_json.decode(), names)


def _git(repo: Path, *args: str) -> None:
    env = dict(os.environ, GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.invalid",
               GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.invalid")
    subprocess.run(["git", "-C", str(repo), "-c", "commit.gpgsign=false", *args], check=True,
                   capture_output=True, env=env)


def change_device(world: World, name: str, label: str) -> None:
    """A new WireGuard key for ``name``, committed."""
    path = world.repo / "orgs" / ORG / "devices" / f"{name}.yaml"
    lines = path.read_text().splitlines()
    at = lines.index("wireguard:") + 1
    lines[at] = "  public_key: " + base64.b64encode(
        hashlib.sha256(f"{name}/{label}".encode()).digest()).decode()
    path.write_text("\n".join(lines) + "\n")
    _git(world.repo, "commit", "-q", "-a", "-m", f"{name}: new key ({label})")


# -- plain HTTP/1.1 over mTLS on asyncio streams ------------------------------------------------
class Conn:
    """One keep-alive HTTP/1.1 connection over TLS (bare asyncio streams: a
    fraction of aiohttp's client CPU, which shares the cores with the hub)."""

    def __init__(self, port: int, ctx: ssl.SSLContext,
                 gate: asyncio.Semaphore | None = None) -> None:
        self.port, self.ctx, self.gate = port, ctx, gate
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=self.ctx, server_hostname=HUB_NAME,
            ssl_handshake_timeout=60, limit=1 << 20)

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: str = "") -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            if self.gate is None:
                await self._open()
            else:  # a few handshakes at a time: 10,000 at once time out
                async with self.gate:
                    await self._open()
        assert self.reader is not None and self.writer is not None
        head = (f"{method} {path} HTTP/1.1\r\nHost: {HUB_NAME}\r\n{headers}"
                f"Content-Length: {len(body)}\r\n\r\n")
        self.writer.write(head.encode() + body)
        line = await self.reader.readline()
        if not line:
            raise ConnectionResetError("the hub closed the connection")
        status = int(line.split()[1])
        got: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            key, _, value = line.decode("latin-1").partition(":")
            got[key.strip().lower()] = value.strip()
        data = b""
        if "content-length" in got:
            data = await self.reader.readexactly(int(got["content-length"]))
        elif got.get("transfer-encoding") == "chunked":
            parts = []
            while size := int((await self.reader.readline()).split(b";")[0], 16):
                parts.append(await self.reader.readexactly(size))
                await self.reader.readline()
            await self.reader.readline()
            data = b"".join(parts)
        if got.get("connection", "").lower() == "close":
            self.close()
        return status, got, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
            self.writer = self.reader = None


def sync_get(port: int, path: str, ctx: ssl.SSLContext) -> tuple[int, dict[str, str], bytes]:
    async def go() -> tuple[int, dict[str, str], bytes]:
        conn = Conn(port, ctx)
        try:
            return await asyncio.wait_for(conn.request("GET", path,
                                                       headers="Accept-Encoding: gzip\r\n"), 120)
        finally:
            conn.close()
    return asyncio.run(go())


def client_ctx(ca_pem: str, pem: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca_pem)
    if pem is not None:
        ctx.load_cert_chain(pem)
    return ctx


def unpack(headers: dict[str, str], body: bytes) -> bytes:
    return gzip.decompress(body) if headers.get("content-encoding") == "gzip" else body


def payload_of(headers: dict[str, str], body: bytes) -> Any:
    from reconciler.pki.envelope import parse_envelope

    return json.loads(parse_envelope(unpack(headers, body), what="bench").payload)


# -- the client process -------------------------------------------------------------------------
class Agent:
    def __init__(self, name: str, ctx: ssl.SSLContext, port: int, observer: bool,
                 gate: asyncio.Semaphore) -> None:
        self.name, self.ctx, self.observer = name, ctx, observer
        self.conn = Conn(port, ctx, gate)
        self.feed_conn = Conn(port, ctx, gate)
        self.serial = 0  # the manifest serial held (view: the position's serial)
        self.revision = 0
        self.held: Any = None  # verify mode: the HeldView
        self.seen: set[tuple[str, str]] = set()  # observer: (device, address) pairs seen


class Client:
    """The agents of one client process (``--client``); commands on stdin."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.port = cfg["port"]
        base = f"/v1/orgs/{ORG}"
        self.base = base
        certs = Path(cfg["certs"])
        self.gate = asyncio.Semaphore(32)  # TLS handshakes in flight
        self.agents = {n: Agent(n, client_ctx(cfg["ca"], certs / f"{n}.pem"), self.port,
                                k < cfg["observers"], self.gate)
                       for k, n in enumerate(cfg["names"])}
        self.movers = {n: Conn(self.port, self.agents[n].ctx if n in self.agents else
                               client_ctx(cfg["ca"], certs / f"{n}.pem"), self.gate)
                       for n in cfg["movers"]}
        self.events: list[list[Any]] = []  # [t, name, what, kind, serial, revision, bytes]
        self.observed: list[list[Any]] = []  # [t, observer, device, address]
        self.moves: list[list[Any]] = []  # [name, address, due, done, status]
        self.errors: dict[str, int] = {}
        self.verified = 0
        self.tasks: list[asyncio.Task[None]] = []
        self.stopping = False
        self.trust: Any = None
        if cfg.get("verify"):
            from reconciler.pki.envelope import load_trust

            self.trust = load_trust(cfg["trust"])

    def err(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    # commands
    async def report_all(self, _: dict[str, Any]) -> dict[str, Any]:
        sem = asyncio.Semaphore(64)
        ok = 0

        async def one(i: int, agent: Agent) -> None:
            nonlocal ok
            body = json.dumps({"device": agent.name, "mapping": "independent",
                               "listen_port": 51820, "candidates": [
                                   {"kind": "stun", "address": f"203.0.113.{i % 250 + 1}:51820"}]})
            async with sem:
                try:
                    status, _, _ = await asyncio.wait_for(agent.conn.request(
                        "POST", f"{self.base}/endpoints", body.encode(),
                        "Content-Type: application/json\r\n"), 60)
                except (OSError, ssl.SSLError, TimeoutError, ValueError,
                        asyncio.IncompleteReadError) as exc:
                    agent.conn.close()
                    self.err(f"report-{type(exc).__name__}")
                    return
                if status == 200:
                    ok += 1
                else:
                    self.err(f"report-http-{status}")

        idx = {n: i for i, n in enumerate(self.cfg["all_names"])}
        await asyncio.gather(*(one(idx[a.name], a) for a in self.agents.values()))
        return {"accepted": ok, "errors": self.errors}

    async def poll(self, cmd: dict[str, Any]) -> dict[str, Any]:
        mode, wait = cmd["mode"], cmd["wait"]
        for agent in self.agents.values():
            agent.serial, agent.revision = cmd["serial"], cmd["revision"]
        if self.trust is not None and mode == "view":
            sem = asyncio.Semaphore(32)

            async def snap(agent: Agent) -> None:
                from reconciler.pki.view import held_from_snapshot, open_view

                async with sem:
                    status, headers, body = await agent.conn.request(
                        "GET", f"{self.base}/devices/{agent.name}/view",
                        headers="Accept-Encoding: gzip\r\n")
                assert status == 200, status
                opened = open_view(unpack(headers, body), self.trust, ORG, agent.name)
                agent.held = held_from_snapshot(opened.doc)
                agent.serial, agent.revision = agent.held.position
            await asyncio.gather(*(snap(a) for a in self.agents.values()))
        for k, agent in enumerate(self.agents.values()):
            if mode == "view":
                self.tasks.append(asyncio.create_task(self._view_loop(agent, wait)))
            else:
                self.tasks.append(asyncio.create_task(self._manifest_loop(agent, wait)))
                if k < cmd["feed_pollers"]:
                    self.tasks.append(asyncio.create_task(self._feed_loop(agent, wait)))
        return {"started": len(self.tasks)}

    async def _long_poll(self, conn: Conn, path: str, headers: str, wait: int, what: str
                         ) -> tuple[float, dict[str, str], bytes] | None:
        """One long-poll GET: (receipt time, headers, body) on 200; None on 304
        or after an error (counted as ``what``-..., then a 1 s pause)."""
        try:
            status, got, body = await asyncio.wait_for(
                conn.request("GET", path, headers=headers), wait + 60)
        except (OSError, ssl.SSLError, TimeoutError, ValueError,
                asyncio.IncompleteReadError) as exc:
            conn.close()
            self.err(f"{what}-{type(exc).__name__}")
            await asyncio.sleep(1)
            return None
        if status == 200:
            return time.time(), got, body
        if status != 304:
            self.err(f"{what}-http-{status}")
            await asyncio.sleep(1)
        return None

    async def _view_loop(self, agent: Agent, wait: int) -> None:
        while not self.stopping:
            path = (f"{self.base}/devices/{agent.name}/view?serial={agent.serial}"
                    f"&revision={agent.revision}&wait={wait}")
            got = await self._long_poll(agent.conn, path, "Accept-Encoding: gzip\r\n",
                                        wait, "view")
            if got is None:
                continue
            now, headers, body = got
            kind = headers.get("x-meshops-view", "?")
            serial, revision = int(headers["x-meshops-serial"]), int(headers["x-meshops-revision"])
            self.events.append([now, agent.name, "view", kind, serial, revision, len(body)])
            if agent.held is not None:
                self._verify(agent, headers, body)
            if agent.observer:
                doc = payload_of(headers, body)
                entries = (doc["feed"]["upsert"] if doc["type"] == "delta"
                           else doc["feed"]["entries"])
                self._observe(agent, now, entries)
            agent.serial, agent.revision = serial, revision

    def _verify(self, agent: Agent, headers: dict[str, str], body: bytes) -> None:
        """The agent's own checks (``reconciler.agent.view``): signature, org,
        chain, schema, expiry, no rollback."""
        from reconciler.agent.view import check_manifest
        from reconciler.pki.view import apply_delta, held_from_snapshot, open_view

        opened = open_view(unpack(headers, body), self.trust, ORG, agent.name)
        new = (apply_delta(agent.held, opened.doc) if opened.kind == "delta"
               else held_from_snapshot(opened.doc))
        check_manifest(new, time.time(), agent.held.serial, max_skew=300.0, checked=True)
        agent.held = new
        self.verified += 1

    def _observe(self, agent: Agent, now: float, entries: list[dict[str, Any]]) -> None:
        for e in entries:
            for c in e.get("candidates", ()):
                key = (e["device"], c["address"])
                if key not in agent.seen:
                    agent.seen.add(key)
                    self.observed.append([now, agent.name, *key])

    async def _manifest_loop(self, agent: Agent, wait: int) -> None:
        while not self.stopping:
            got = await self._long_poll(
                agent.conn, f"{self.base}/manifest?wait={wait}",
                f'If-None-Match: "{agent.serial}"\r\nAccept-Encoding: gzip\r\n', wait,
                "manifest")
            if got is None:
                continue
            now, headers, body = got
            serial = int(headers["etag"].strip('"'))
            self.events.append([now, agent.name, "manifest", "full", serial, 0, len(body)])
            if self.trust is not None:
                from reconciler.pki.manifest import verify_manifest

                verify_manifest(unpack(headers, body), self.trust, ORG, None, time.time())
                self.verified += 1
            agent.serial = serial

    async def _feed_loop(self, agent: Agent, wait: int) -> None:
        while not self.stopping:
            got = await self._long_poll(
                agent.feed_conn, f"{self.base}/endpoints?since={agent.revision}&wait={wait}",
                "Accept-Encoding: gzip\r\n", wait, "feed")
            if got is None:
                continue
            now, headers, body = got
            revision = int(headers["x-feed-revision"])
            self.events.append([now, agent.name, "feed", "full", agent.serial, revision,
                                len(body)])
            if agent.observer:
                self._observe(agent, now, payload_of(headers, body)["entries"])
            agent.revision = revision

    async def count(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return {"n": sum(1 for a in self.agents.values() if a.serial > cmd["serial"])}

    async def open_movers(self, _: dict[str, Any]) -> dict[str, Any]:
        sem = asyncio.Semaphore(64)

        async def one(name: str, conn: Conn) -> None:
            async with sem:
                with contextlib.suppress(OSError, ssl.SSLError, TimeoutError, ValueError,
                                         asyncio.IncompleteReadError):
                    await conn.request("GET", f"{self.base}/crl")
        await asyncio.gather(*(one(n, c) for n, c in self.movers.items()))
        return {"movers": len(self.movers)}

    async def move(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """``rate`` moves per second for ``seconds`` from ``start_at`` (unix time),
        round-robin over this client's movers, each move a new address."""
        rate, seconds, start_at = cmd["rate"], cmd["seconds"], cmd["start_at"]
        names = sorted(self.movers)
        counts: dict[str, int] = {}
        locks = {n: asyncio.Lock() for n in names}
        idx = {n: i for i, n in enumerate(self.cfg["all_names"])}
        tasks: set[asyncio.Task[None]] = set()

        async def one(name: str, due: float) -> None:
            k = counts[name] = counts.get(name, 0) + 1
            address = f"203.0.113.{idx[name] % 250 + 1}:{20000 + k}"
            body = json.dumps({"device": name, "mapping": "independent", "listen_port": 51820,
                               "candidates": [{"kind": "stun", "address": address}]}).encode()
            status = 0
            async with locks[name]:  # one request at a time on the mover's connection
                try:
                    status, _, _ = await asyncio.wait_for(self.movers[name].request(
                        "POST", f"{self.base}/endpoints", body,
                        "Content-Type: application/json\r\n"), 30)
                except (OSError, ssl.SSLError, TimeoutError, ValueError,
                        asyncio.IncompleteReadError) as exc:
                    self.movers[name].close()
                    self.err(f"move-{type(exc).__name__}")
            self.moves.append([name, address, due, time.time(), status])

        total = int(rate * seconds)
        sent = 0
        while sent < total:
            now = time.time()
            while sent < total and start_at + sent / rate <= now:
                t = asyncio.create_task(one(names[sent % len(names)], start_at + sent / rate))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
                sent += 1
            await asyncio.sleep(0.005)
        if tasks:
            await asyncio.wait(tasks, timeout=40)
        return {"sent": sent}

    async def collect(self, _: dict[str, Any]) -> dict[str, Any]:
        out = {"events": self.events, "observed": self.observed, "moves": self.moves,
               "errors": self.errors, "verified": self.verified,
               "cpu_s": sum(os.times()[:2])}
        self.events, self.observed, self.moves, self.errors = [], [], [], {}
        return out

    async def stop(self, _: dict[str, Any]) -> dict[str, Any]:
        self.stopping = True
        for t in self.tasks:
            t.cancel()
        if self.tasks:  # 3.11's wait_for can swallow a cancellation: do not wait forever
            await asyncio.wait(self.tasks, timeout=5)
        self.tasks = []
        for a in self.agents.values():
            a.conn.close()
            a.feed_conn.close()
        for c in self.movers.values():
            c.close()
        return {"stopped": True}


async def client_main(cfg_path: str) -> None:
    import gc

    from reconciler.hub.daemon import small_tls_buffers

    small_tls_buffers()  # the clients hold thousands of TLS connections too
    client = Client(json.loads(Path(cfg_path).read_text()))
    gc.collect()
    gc.freeze()  # 10,000 contexts: keep them out of every collection
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": len(client.agents)}), flush=True)
    _say(f"client {os.getpid()}: ready with {len(client.agents)} agents")
    while line := await reader.readline():
        cmd = json.loads(line)
        t0 = time.monotonic()
        answer = await getattr(client, cmd["cmd"])(cmd)
        if cmd["cmd"] not in ("count", "collect"):
            _say(f"client {os.getpid()}: {cmd['cmd']} took {time.monotonic() - t0:.1f} s")
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
        if cmd["cmd"] == "stop":
            return
    _say(f"client {os.getpid()}: stdin closed, leaving")


class Clients:
    """The client processes, driven over their stdin/stdout."""

    def __init__(self, world: World, port: int, pollers: list[str], movers: list[str],
                 count: int, observers: int, verify: bool, directory: Path) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        for k in range(count):
            cfg = {"port": port, "ca": world.ca_pem, "certs": str(world.certs),
                   "names": pollers[k::count], "movers": movers[k::count],
                   "all_names": world.names, "observers": observers, "verify": verify,
                   "trust": world.trust_json}
            path = directory / f"client-{k}.json"
            path.write_text(json.dumps(cfg))
            self.procs.append(subprocess.Popen(
                [sys.executable, __file__, "--client", str(path)], cwd=ROOT, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                env=dict(os.environ, PYTHONPATH=str(ROOT))))
        for p in self.procs:
            self._read(p)

    @staticmethod
    def _read(p: subprocess.Popen[str]) -> dict[str, Any]:
        assert p.stdout is not None
        line = p.stdout.readline()
        if not line:
            raise RuntimeError(f"client process {p.pid} ended (exit {p.poll()})")
        return dict(json.loads(line))

    def all(self, cmd: str, **args: Any) -> list[dict[str, Any]]:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
            p.stdin.flush()
        return [self._read(p) for p in self.procs]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.all("stop")
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# -- the hub process --------------------------------------------------------------------------
def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of every core since boot (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return total - idle, total


def _mem(pid: int) -> tuple[int, int]:
    rss = hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    return rss, hwm


def _reset_hwm(pid: int) -> None:
    with contextlib.suppress(OSError):  # root or the same user; Linux >= 4.0
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HubProcess:
    def __init__(self, world: World, directory: Path) -> None:
        self.port = _free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.log = (directory / "hub.log").open("w")
        self.db = f"sqlite:///{directory}/hub.db"
        profile = os.environ.get("MESHOPS_SCALE_PROFILE")  # cProfile the hub into this file
        prefix = ["-m", "cProfile", "-o", f"{profile}.{directory.name}"] if profile else []
        self.proc = subprocess.Popen(
            [sys.executable, *prefix, "-m", "reconciler", "-v", "hub", "serve",
             "--repo", str(world.repo),
             "--listen", f"127.0.0.1:{self.port}", "--db", self.db,
             "--state-dir", str(directory / "state"), "--gnupghome", world.home],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)))
        self.anon = client_ctx(world.ca_pem, None)
        try:
            self._wait_published(directory)
        except BaseException:
            self.proc.kill()  # it is ours: never leave a hub running after a failed start
            self.proc.wait()
            self.log.close()
            raise

    def _wait_published(self, directory: Path) -> None:
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub serve exited {self.proc.returncode}; see {directory}")
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError, ValueError,
                                     ConnectionError, asyncio.IncompleteReadError):
                status, _, body = sync_get(self.port, "/v1/status", self.anon)
                if status == 200 and json.loads(body).get("serving_commit"):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("hub serve did not publish within 300 s")
            time.sleep(0.5)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def metric(self, name: str, labels: str = "") -> float:
        """A summed metric of the hub; NaN when it does not answer (busy)."""
        try:
            _, _, body = sync_get(self.port, "/metrics", self.anon)
        except (OSError, ssl.SSLError, TimeoutError, ValueError,
                asyncio.IncompleteReadError):
            return float("nan")
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name) and labels in line and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def stored_reports(self) -> int:
        from reconciler.hub.feedstore import FeedStore

        store = FeedStore(self.db)
        try:
            return store.total_reports()
        finally:
            store.close()


# -- one mode ---------------------------------------------------------------------------------
@dataclass
class Params:
    devices: int
    pollers: int
    clients: int
    moves_per_s: float
    seconds: float
    movers: int
    observers: int
    wait: int
    verify: bool = False


def _wait_until(check: Any, timeout: float, step: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return bool(check())


def run_mode(world: World, mode: str, p: Params, label: str) -> dict[str, Any]:
    from reconciler.hub.views import OrgView
    from reconciler.pki.manifest import manifest_from_dict

    directory = world.base / mode
    out: dict[str, Any] = {"mode": mode, "load_start": _loadavg()}
    t_setup = time.monotonic()
    hub = HubProcess(world, directory)
    out["rss_start_bytes"] = _mem(hub.pid)[0]  # published, no agent connected yet
    pollers = world.names[:p.pollers]
    movers = [n for n in reversed(world.names) if n not in set(pollers[:1])][:p.movers]
    clients = None
    mem_samples: list[int] = []
    try:
        me = client_ctx(world.ca_pem, world.certs / f"{world.names[0]}.pem")
        clients = Clients(world, hub.port, pollers, movers, p.clients, p.observers, p.verify,
                          directory)
        _say(f"{mode}: hub up (pid {hub.pid}), clients ready")
        reported = clients.all("report_all")
        _say(f"{mode}: initial reports {reported}")
        accepted_initial = sum(r["accepted"] for r in reported)
        # where the pollers start: the served serial and the feed revision once settled
        _, headers, body = sync_get(hub.port, f"/v1/orgs/{ORG}/manifest", me)
        manifest = manifest_from_dict(payload_of(headers, body))
        serial = manifest.serial

        def position() -> int:
            if mode == "view":
                _, h, _ = sync_get(hub.port, f"/v1/orgs/{ORG}/devices/{world.names[0]}/view",
                                   me)
                return int(h["x-meshops-revision"])
            _, h, _ = sync_get(hub.port, f"/v1/orgs/{ORG}/endpoints", me)
            return int(h["x-feed-revision"])
        revision = position()
        while (again := position()) != revision:  # the feed settles after the reports
            revision = again
            time.sleep(1.0)
        # Full mode holds two connections per agent; the hub's open files limit (it
        # cannot be raised without privileges) may not allow a feed long-poll for all.
        import resource

        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        feed_pollers = min(p.pollers, max(0, nofile - p.pollers - p.movers - 600))
        out["feed_pollers"] = feed_pollers if mode == "full" else 0
        clients.all("poll", mode=mode, serial=serial, revision=revision, wait=p.wait,
                    feed_pollers=-(-feed_pollers // p.clients))
        kinds = ("view",) if mode == "view" else ("manifest", "feed")
        expected_polls = p.pollers + (feed_pollers if mode == "full" else 0)

        def held() -> float:
            return sum(hub.metric("meshops_hub_long_polls", f'kind="{k}"') for k in kinds)
        _say(f"{mode}: pollers started at serial {serial} revision {revision}")
        _wait_until(lambda: held() >= expected_polls, 300, 1.0)
        _say(f"{mode}: {held()} long-polls held, hub RSS {_mem(hub.pid)[0] / 1e6:.0f} MB")
        out["long_polls_held"] = held()
        time.sleep(2)
        out["setup_s"] = time.monotonic() - t_setup
        rss, _ = _mem(hub.pid)
        out["rss_held_bytes"] = rss
        clients.all("collect")  # drop what setting up produced

        # (a) one device changes in git
        target = world.names[17]
        seen_by = OrgView(manifest).viewers(target)
        expected = [n for n in pollers if mode == "full" or seen_by is None or n in seen_by]
        _reset_hwm(hub.pid)
        cpu0 = _cpu_seconds(hub.pid)
        client_cpu0 = sum(_cpu_seconds(p.pid) for p in clients.procs)
        busy0, total0 = _machine_ticks()
        change_device(world, target, f"{label}-{mode}")
        t0 = time.time()

        def delivered() -> int:
            return sum(r["n"] for r in clients.all("count", serial=serial))
        _wait_until(lambda: delivered() >= len(expected), 180, 0.25)
        t_all = time.time()
        busy1, total1 = _machine_ticks()
        client_cpu = sum(_cpu_seconds(p.pid) for p in clients.procs) - client_cpu0
        _say(f"{mode}: (a) delivered to {delivered()} of {len(expected)} in {t_all - t0:.2f} s")
        time.sleep(1.0)
        cpu1 = _cpu_seconds(hub.pid)
        rss, hwm = _mem(hub.pid)
        held_answers = hub.metric("meshops_hub_view_answers_held_total")
        collected = clients.all("collect")
        events = [e for c in collected for e in c["events"]]
        first: dict[str, float] = {}
        nbytes: dict[str, int] = {}
        for t, name, what, _kind, s, _r, size in events:
            if what in ("view", "manifest") and s > serial:
                first[name] = min(first.get(name, t), t)
            nbytes[name] = nbytes.get(name, 0) + size
        lat = [first[n] - t0 for n in expected if n in first]
        got = [nbytes.get(n, 0) for n in expected]
        out["a"] = {
            "target": target, "expected": len(expected), "delivered": len(lat),
            "missing": sorted(set(expected) - set(first))[:10],
            "unexpected": sorted(set(first) - set(expected))[:10],
            "unexpected_count": len(set(first) - set(expected)),
            "min_s": min(lat, default=0), "p50_s": _pct(lat, 0.5), "p99_s": _pct(lat, 0.99), "max_s": max(lat, default=0),
            "all_delivered_s": t_all - t0,
            "bytes_per_agent_mean": sum(got) / max(1, len(got)),
            "bytes_per_agent_max": max(got, default=0),
            "bytes_total": sum(nbytes.values()),
            "answers": sum(1 for e in events if e[2] in ("view", "manifest")),
            # answers whose connection was read again only after their round (views)
            "held": held_answers,
            "hub_cpu_s": cpu1 - cpu0, "rss_bytes": rss, "hwm_bytes": hwm,
            # until the last agent had it: the client processes' CPU and how busy
            # the whole machine was (1.0 = every core busy the whole time)
            "client_cpu_s": client_cpu,
            "machine_busy": (busy1 - busy0) / max(1, total1 - total0),
            "verified": sum(c["verified"] for c in collected),
            "errors": _merge(c["errors"] for c in collected),
            "load": _loadavg(),
        }
        new_serial = max((e[4] for e in events if e[2] in ("view", "manifest")), default=serial)

        # (b) endpoint moves
        clients.all("open_movers")
        time.sleep(1)
        clients.all("collect")
        _reset_hwm(hub.pid)
        cpu0 = _cpu_seconds(hub.pid)
        start_at = time.time() + 1.0
        stop_sampling = [False]
        import threading

        def sample() -> None:
            while not stop_sampling[0]:
                mem_samples.append(_mem(hub.pid)[0])
                time.sleep(1.0)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        load_during = []
        _say(f"{mode}: (b) moves start")
        sent = sum(r["sent"] for r in clients.all("move", rate=p.moves_per_s / p.clients,
                                                  seconds=p.seconds, start_at=start_at))
        load_during.append(_loadavg())
        time.sleep(3.0)  # the last moves' deliveries
        stop_sampling[0] = True
        sampler.join()
        cpu1 = _cpu_seconds(hub.pid)
        rss, hwm = _mem(hub.pid)
        collected = clients.all("collect")
        moves = [m for c in collected for m in c["moves"]]
        observed = [o for c in collected for o in c["observed"]]
        events = [e for c in collected for e in c["events"]]
        sent_at = {(m[0], m[1]): m[2] for m in moves if m[4] == 200}
        delivery = [t - sent_at[(d, a)] for t, _obs, d, a in observed if (d, a) in sent_at]
        post = [m[3] - m[2] for m in moves if m[4] == 200]
        accepted = len(post)
        elapsed = p.seconds + 3.0
        out["b"] = {
            "moves_sent": sent, "moves_accepted": accepted, "moves_failed": sent - accepted,
            "post_p50_s": _pct(post, 0.5), "post_p99_s": _pct(post, 0.99),
            "delivery_p50_s": _pct(delivery, 0.5), "delivery_p99_s": _pct(delivery, 0.99),
            "delivery_samples": len(delivery),
            "responses": len(events),
            "bytes_per_poller_per_s": sum(e[6] for e in events) / max(1, p.pollers) / elapsed,
            "bytes_per_feed_poller_per_s": sum(e[6] for e in events if e[2] != "manifest")
            / max(1, out["feed_pollers"] or p.pollers) / elapsed,
            "hub_cpu_s": cpu1 - cpu0, "hub_cpu_per_s": (cpu1 - cpu0) / elapsed,
            "rss_max_bytes": max(mem_samples, default=rss), "hwm_bytes": hwm,
            "errors": _merge(c["errors"] for c in collected), "load": load_during[-1],
            "verified": sum(c["verified"] for c in collected),
        }
        out["client_cpu_s"] = sum(c["cpu_s"] for c in collected)
        out["new_serial"] = new_serial
        total_accepted = accepted_initial + accepted
    finally:
        if clients is not None:
            clients.close()
        hub.stop()
    stored = hub.stored_reports()
    out["b"]["reports_accepted_total"] = total_accepted
    out["b"]["reports_stored"] = stored
    out["b"]["lost_accepted"] = max(0, total_accepted - stored)
    out["b"]["lost_reports"] = out["b"]["moves_failed"] + out["b"]["lost_accepted"]
    out["load_end"] = _loadavg()
    return out


def _merge(dicts: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def params_from_env() -> Params:
    devices = int(_env("MESHOPS_SCALE_DEVICES", 10_000))
    return Params(
        devices=devices,
        pollers=int(_env("MESHOPS_SCALE_POLLERS", devices)),
        clients=int(_env("MESHOPS_SCALE_CLIENTS", 2)),
        moves_per_s=_env("MESHOPS_SCALE_MOVES_PER_S", 100),
        seconds=_env("MESHOPS_SCALE_SECONDS", 60),
        movers=int(_env("MESHOPS_SCALE_MOVERS", 1000)),
        observers=int(_env("MESHOPS_SCALE_OBSERVERS", 10)),
        wait=int(_env("MESHOPS_SCALE_WAIT", 120)),
    )


def run_scale(p: Params, modes: tuple[str, ...] = ("view", "full"),
              base: Path | None = None) -> dict[str, Any]:
    """Both modes on one repository; returns every figure (``table`` prints them)."""
    sys.path.insert(0, str(ROOT))
    _raise_nofile(4 * p.pollers + 1024)  # full mode: 2 connections per agent on each side
    with contextlib.ExitStack() as stack:
        if base is None:
            base = Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix="meshops-bench-scale-")))
        t0 = time.monotonic()
        world = make_world(base, p.devices)
        _say(f"world of {p.devices} devices made in {time.monotonic() - t0:.0f} s")
        result: dict[str, Any] = {"params": p.__dict__, "world_s": time.monotonic() - t0,
                                  "machine": machine(), "modes": {}}
        try:
            for mode in modes:
                result["modes"][mode] = run_mode(world, mode, p, label=str(time.time_ns()))
                out = os.environ.get("MESHOPS_SCALE_JSON")
                if out:  # what was measured so far survives a later failure
                    Path(out).write_text(json.dumps(result, indent=2, default=str))
        finally:
            subprocess.run(["gpgconf", "--homedir", world.home, "--kill", "gpg-agent"],
                           capture_output=True, check=False)
    return result


def _raise_nofile(want: int) -> None:
    """The hub and the clients inherit this limit (hard limits rise as root only)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        _say(f"open files limited to {hard}: full mode needs {want} (run as root, or raise "
             "the hard limit)")


def machine() -> str:
    cpu = "unknown cpu"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (f"{os.cpu_count()} cores, {cpu}, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


ROWS = (
    ("a", "expected", "(a) pollers that see the changed device", "{:.0f}"),
    ("a", "delivered", "(a) of them that got it", "{:.0f}"),
    ("a", "unexpected_count", "(a) other pollers woken with an answer", "{:.0f}"),
    ("a", "min_s", "(a) first delivery from git commit, s", "{:.3f}"),
    ("a", "p50_s", "(a) delivery p50 from git commit, s", "{:.3f}"),
    ("a", "p99_s", "(a) delivery p99, s", "{:.3f}"),
    ("a", "bytes_per_agent_mean", "(a) bytes per affected agent (mean)", "{:,.0f}"),
    ("a", "bytes_per_agent_max", "(a) bytes per affected agent (max)", "{:,.0f}"),
    ("a", "answers", "(a) answers sent (all agents, until 1 s after the last had it)", "{:,.0f}"),
    ("a", "hub_cpu_s", "(a) hub CPU s for the change", "{:.2f}"),
    ("a", "client_cpu_s", "(a) client processes' CPU s until all had it", "{:.2f}"),
    ("a", "machine_busy", "(a) whole machine busy until all had it (1 = 2 cores)", "{:.2f}"),
    ("a", "hwm_bytes", "(a) hub peak RSS during the change, MB", "{:,.0f}"),
    ("b", "moves_accepted", "(b) moves accepted", "{:.0f}"),
    ("b", "lost_reports", "(b) lost reports", "{:.0f}"),
    ("b", "post_p99_s", "(b) report POST p99, s", "{:.3f}"),
    ("b", "delivery_p50_s", "(b) move delivery p50 (observers), s", "{:.3f}"),
    ("b", "delivery_p99_s", "(b) move delivery p99 (observers), s", "{:.3f}"),
    ("b", "bytes_per_feed_poller_per_s", "(b) bytes per endpoint poller per s", "{:,.0f}"),
    ("b", "hub_cpu_per_s", "(b) hub CPU s per s", "{:.2f}"),
    ("b", "rss_max_bytes", "(b) hub RSS max (sampled), MB", "{:,.0f}"),
    ("b", "hwm_bytes", "(b) hub peak RSS (VmHWM), MB", "{:,.0f}"),
)


def table(result: dict[str, Any]) -> str:
    modes = result["modes"]
    view, full = modes.get("view"), modes.get("full")
    lines = [f"machine: {result['machine']}", f"params: {result['params']}",
             f"{'figure':46} {'view':>14} {'full':>14} {'full/view':>10}"]
    for part, key, label, fmt in ROWS:
        vals = []
        for m in (view, full):
            v = m[part].get(key) if m else None
            if v is not None and "MB" in label:
                v = v / 1e6
            vals.append(v)
        shown = [fmt.format(v) if isinstance(v, (int, float)) else "-" for v in vals]
        ratio = "-"
        if all(isinstance(v, (int, float)) for v in vals) and vals[0]:
            ratio = f"{vals[1] / vals[0]:.1f}x"
        lines.append(f"{label:46} {shown[0]:>14} {shown[1]:>14} {ratio:>10}")
    for name, m in modes.items():
        lines.append(f"{name}: feed long-polls {m.get('feed_pollers')}, hub RSS after its "
                     "first publish "
                     f"{m.get('rss_start_bytes', 0) / 1e6:,.0f} MB, long-polls held "
                     f"{m.get('long_polls_held')}, RSS with them held "
                     f"{m.get('rss_held_bytes', 0) / 1e6:,.0f} MB, set-up {m.get('setup_s', 0):.0f} s, "
                     f"load {m['load_start']} -> {m['a']['load']} -> {m['b']['load']}, "
                     f"errors a={m['a']['errors']} b={m['b']['errors']}")
    return "\n".join(lines)


def scale() -> dict[str, Any]:
    p = params_from_env()
    result = run_scale(p, tuple(os.environ.get("MESHOPS_SCALE_MODES", "view,full").split(",")))
    print(table(result), file=sys.stderr)
    view = result["modes"]["view"]
    return {"value": view["a"]["p99_s"], "unit": "s", "goal": 2.0, **result}


BENCHMARKS = {"scale": scale}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--client":
        sys.path.insert(0, str(ROOT))
        if os.environ.get("MESHOPS_UVLOOP_CLIENT"):
            import uvloop
            uvloop.run(client_main(sys.argv[2]))
        else:
            asyncio.run(client_main(sys.argv[2]))
    else:
        modes = tuple(os.environ.get("MESHOPS_SCALE_MODES", "view,full").split(","))
        res = run_scale(params_from_env(), modes)
        print(table(res))
        out = os.environ.get("MESHOPS_SCALE_JSON")
        if out:
            Path(out).write_text(json.dumps(res, indent=2, default=str))
