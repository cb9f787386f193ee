"""The whole ``hub serve`` process wiring over real TLS on loopback: follower
(watchdog on a real git checkout), per-org server certificates chosen by SNI,
mTLS identity, the embedded STUN responder."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from reconciler.hub.daemon import ServeConfig, start

from .conftest_serve import FakePipeline, make_org, run, write_pem_files


def git(cwd: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.org")
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def commit(repo: Path, name: str) -> str:
    (repo / name).write_text(name)
    git(repo, "add", name)
    git(repo, "commit", "-q", "-m", name)
    return git(repo, "rev-parse", "HEAD")


def init_repo(path: Path) -> Path:
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    commit(path, "first")
    return path


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def client_ctx(ca_pem: str, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca_pem)
    if cert:
        ctx.load_cert_chain(*cert)
    return ctx


async def fetch(port: int, path: str, ctx: ssl.SSLContext, sni: str, method: str = "GET",
                json_body: Any = None) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.request(
        method, f"https://127.0.0.1:{port}{path}", ssl=ctx, server_hostname=sni, json=json_body
    ) as r:
        return r.status, await r.read()


def stun_binding(port: int) -> tuple[str, int]:
    """A raw RFC 5389 Binding request; returns the XOR-MAPPED-ADDRESS."""
    txid = os.urandom(12)
    cookie = 0x2112A442
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.bind(("127.0.0.1", 0))
        s.sendto(struct.pack("!HHI", 0x0001, 0, cookie) + txid, ("127.0.0.1", port))
        data, _ = s.recvfrom(2048)
        mine = s.getsockname()
    mtype, length, got_cookie = struct.unpack("!HHI", data[:8])
    assert mtype == 0x0101 and got_cookie == cookie and data[8:20] == txid
    pos = 20
    while pos < 20 + length:
        atype, alen = struct.unpack("!HH", data[pos:pos + 4])
        value = data[pos + 4:pos + 4 + alen]
        if atype == 0x0020:
            xport = struct.unpack("!H", value[2:4])[0] ^ (cookie >> 16)
            xip = struct.unpack("!I", value[4:8])[0] ^ cookie
            ip = socket.inet_ntoa(struct.pack("!I", xip))
            assert (ip, xport) == mine
            return ip, xport
        pos += 4 + alen + (-alen % 4)
    raise AssertionError("no XOR-MAPPED-ADDRESS")


def test_serve_over_mtls_with_follow_and_stun(tmp_path: Path) -> None:
    real_now = time.time()  # the daemon uses the real clock, so do the certificates
    acme, beta = make_org("acme", "10.20.0.0/16"), make_org("beta", "10.30.0.0/16")
    laptop, server = acme.add_device("laptop", real_now), acme.add_device("server", real_now)
    phone = beta.add_device("phone", real_now)
    old = acme.add_device("old", now=real_now - 10 * 86400, lifetime=86400)
    stolen = acme.add_device("stolen", now=real_now)
    pipeline = FakePipeline([acme, beta])
    pipeline.revoked["acme"] = frozenset({stolen.serial})
    repo = init_repo(tmp_path / "repo")
    files = {n: write_pem_files(tmp_path, c) for n, c in
             (("laptop", laptop), ("server", server), ("phone", phone), ("old", old),
              ("stolen", stolen))}

    async def go() -> None:
        config = ServeConfig(repo=str(repo), listen="127.0.0.1:0", stun="127.0.0.1:0",
                             db=f"sqlite:///{tmp_path}/hub.db", state_dir=str(tmp_path / "st"),
                             poll=30, pipeline=pipeline)
        running = await start(config)
        try:
            hub, port = running.hub, running.port
            head = git(repo, "rev-parse", "HEAD")
            await wait_for(lambda: hub.snapshot is not None and hub.snapshot.commit == head)
            acme_ctx = client_ctx(acme.keys.ca_pem, files["laptop"])
            # the manifest (mTLS) with SNI acme.hub, chained to acme's CA
            status, body = await fetch(port, "/v1/orgs/acme/manifest", acme_ctx, "acme.hub")
            assert status == 200 and body == hub.org("acme").manifest
            # SNI beta.hub gets beta's certificate (acme's CA cannot verify it)
            beta_ctx = client_ctx(beta.keys.ca_pem, files["phone"])
            status, _ = await fetch(port, "/v1/orgs/beta/manifest", beta_ctx, "beta.hub")
            assert status == 200
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await fetch(port, "/v1/orgs/acme/manifest", client_ctx(acme.keys.ca_pem),
                            "beta.hub")
            # mTLS report: accepted, the hub saw our loopback source address
            status, body = await fetch(
                port, "/v1/orgs/acme/endpoints", acme_ctx, "acme.hub", "POST",
                {"device": "laptop", "candidates": [{"kind": "local",
                 "address": "192.168.1.5:51820"}], "mapping": "unknown", "listen_port": 51820,
                 "serial": 1})
            assert status == 200 and b'"observed": "127.0.0.1:' in body
            # another device's report: 403; org B's device reading org A: 403
            status, _ = await fetch(port, "/v1/orgs/acme/endpoints", acme_ctx, "acme.hub",
                                    "POST", {"device": "server", "candidates": []})
            assert status == 403
            phone_in_acme = client_ctx(acme.keys.ca_pem, files["phone"])
            status, _ = await fetch(port, "/v1/orgs/acme/endpoints", phone_in_acme, "acme.hub")
            assert status == 403
            # revoked: refused by the API; expired: refused by the TLS handshake
            status, body = await fetch(port, "/v1/orgs/acme/endpoints",
                                       client_ctx(acme.keys.ca_pem, files["stolen"]), "acme.hub")
            assert status == 401 and b"revoked" in body
            # the manifest over real TLS: no client certificate 401, org B's device 403,
            # revoked 401; the device certificate itself is public (agent bootstrap)
            anonymous = client_ctx(acme.keys.ca_pem)
            status, body = await fetch(port, "/v1/orgs/acme/manifest", anonymous, "acme.hub")
            assert status == 401 and b"no-certificate" in body
            status, _ = await fetch(port, "/v1/orgs/acme/manifest", phone_in_acme, "acme.hub")
            assert status == 403
            status, body = await fetch(port, "/v1/orgs/acme/manifest",
                                       client_ctx(acme.keys.ca_pem, files["stolen"]), "acme.hub")
            assert status == 401 and b"revoked" in body
            status, body = await fetch(port, "/v1/orgs/acme/devices/laptop/cert", anonymous,
                                       "acme.hub")
            assert status == 200 and laptop.cert_pem.encode() in body.replace(b"\\n", b"\n")
            with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
                await fetch(port, "/v1/orgs/acme/endpoints",
                            client_ctx(acme.keys.ca_pem, files["old"]), "acme.hub")
            status, _ = await fetch(port, "/v1/orgs/acme/endpoints",
                                    client_ctx(acme.keys.ca_pem, files["server"]), "acme.hub")
            assert status == 200
            # STUN in the same loop
            assert running.stun_port
            await asyncio.to_thread(stun_binding, running.stun_port)
            # a new commit on the watched checkout is picked up (watchdog, poll is 30 s)
            new = await asyncio.to_thread(commit, repo, "second")
            await wait_for(lambda: hub.snapshot is not None and hub.snapshot.commit == new, 5)
            assert hub.org("acme").serial == 2
        finally:
            await running.stop()

    run(go())
