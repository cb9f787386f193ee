"""Two real ``python -m reconciler hub serve --db postgresql://…`` processes on one
PostgreSQL database (tests/hub/conftest.py starts the server): a report posted
over mTLS to one shows up in the signed feed of the other, and a hub killed
with SIGKILL and restarted still serves every accepted report.

The repository is a copy of example-repo (real SOPS + gpg publish) in which
web-1's identity key is replaced by one this test holds, so the certificate the
hubs issue for web-1 (fetched from the public certificate endpoint, as an agent
bootstraps) is usable as the test's mTLS client certificate.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reconciler.agent.endpoints import open_feed
from reconciler.hub.publish import publish
from reconciler.pki.envelope import load_trust
from reconciler.pki.keys import private_to_pem

from .conftest_serve import free_port, run
from .test_serve_tls import client_ctx, fetch, git

pytestmark = [pytest.mark.postgres, pytest.mark.root]

ROOT = Path(__file__).resolve().parents[2]
SNI = "acme.hub"
START_TIMEOUT = 60.0


@dataclass
class HubProcess:
    """One ``hub serve`` child: its command line, port and log file."""

    argv: list[str]
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                         env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=10) == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def _hub(tmp: Path, name: str, repo: Path, db: str, home: str) -> HubProcess:
    port = free_port()
    argv = [sys.executable, "-m", "reconciler", "hub", "serve", "--repo", str(repo),
            "--listen", f"127.0.0.1:{port}", "--db", db, "--state-dir", str(tmp / name),
            "--gnupghome", home, "--poll", "30"]
    return HubProcess(argv, port, tmp / f"{name}.log")


def _with_identity(repo: Path, device: str) -> str:
    """Give ``device`` a fresh identity key in the repo; return its private PEM."""
    key = Ed25519PrivateKey.generate()
    public = base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()
    path = repo / "orgs" / "acme" / "devices" / f"{device}.yaml"
    text = path.read_text()
    new = re.sub(r"(identity:\s*\n\s*public_key:\s*)\S+", lambda m: m.group(1) + public, text)
    assert new != text, f"{path}: no identity key to replace"
    path.write_text(new)
    return private_to_pem(key)


async def _wait_serving(hub: HubProcess, ca_pem: str, commit: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        assert hub.proc is not None
        assert hub.proc.poll() is None, f"hub exited {hub.proc.returncode}:\n{hub.tail()}"
        try:
            status, body = await fetch(hub.port, "/v1/status", client_ctx(ca_pem), SNI)
            if status == 200 and json.loads(body)["serving_commit"] == commit:
                return
        except OSError:  # aiohttp's connection errors are OSErrors: not listening yet
            pass
        assert time.monotonic() < deadline, f"hub not serving {commit[:12]}:\n{hub.tail()}"
        await asyncio.sleep(0.3)


def test_two_hub_processes_share_the_feed_and_survive_kill_9(
    tmp_path: Path, fresh_postgres_url: str, example_repo: Path, example_gnupghome: str
) -> None:
    repo = example_repo
    key_pem = _with_identity(repo, "web-1")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "example with a test-held identity key for web-1")
    head = git(repo, "rev-parse", "HEAD")
    ca_pem = (repo / "orgs" / "acme" / "ca.crt").read_text()
    trust = load_trust(publish(repo, state=f"sqlite:///{tmp_path}/trust.db", now=time.time(),
                               gpg_home=example_gnupghome).trust_json)

    one = _hub(tmp_path, "one", repo, fresh_postgres_url, example_gnupghome)
    two = _hub(tmp_path, "two", repo, fresh_postgres_url, example_gnupghome)
    candidate = {"kind": "stun", "address": "203.0.113.44:51820"}

    def web1_entry(body: bytes) -> tuple[int, list[dict[str, str]]]:
        feed = open_feed(body, trust, "acme")  # verified as an agent verifies it
        entry = next(e for e in feed.entries if e.device == "web-1")
        return feed.revision, [{"kind": c.kind, "address": c.address} for c in entry.candidates]

    async def go() -> None:
        await asyncio.gather(_wait_serving(one, ca_pem, head), _wait_serving(two, ca_pem, head))
        # bootstrap like an agent: the certificate endpoint is public
        status, body = await fetch(one.port, "/v1/orgs/acme/devices/web-1/cert",
                                   client_ctx(ca_pem), SNI)
        assert status == 200, body
        cert, key = tmp_path / "web-1.crt", tmp_path / "web-1.key"
        cert.write_text(json.loads(body)["cert"])
        key.write_text(key_pem)
        key.chmod(0o600)
        ctx = client_ctx(ca_pem, (str(cert), str(key)))
        # without the certificate, the manifest is refused; with it, served
        status, _ = await fetch(two.port, "/v1/orgs/acme/manifest", client_ctx(ca_pem), SNI)
        assert status == 401
        status, _ = await fetch(two.port, "/v1/orgs/acme/manifest", ctx, SNI)
        assert status == 200
        # a long-poll on process two wakes when process one accepts the report
        poll = asyncio.create_task(
            fetch(two.port, "/v1/orgs/acme/endpoints?since=0&wait=20", ctx, SNI))
        await asyncio.sleep(0.3)
        status, body = await fetch(one.port, "/v1/orgs/acme/endpoints", ctx, SNI, "POST",
                                   {"device": "web-1", "serial": 1, "mapping": "independent",
                                    "listen_port": 51820, "candidates": [candidate]})
        assert status == 200, body
        accepted = json.loads(body)["revision"]
        status, body = await asyncio.wait_for(poll, 25)
        assert status == 200, body
        revision, candidates = web1_entry(body)
        assert revision >= accepted and candidate in candidates
        # kill -9 process one, restart it on the same database: the report is still there
        one.kill9()
        one.start()
        await _wait_serving(one, ca_pem, head)
        status, body = await fetch(one.port, "/v1/orgs/acme/endpoints", ctx, SNI)
        assert status == 200, body
        revision, candidates = web1_entry(body)
        assert revision >= accepted and candidate in candidates

    one.start()
    two.start()
    try:
        run(go())
    finally:
        one.stop()
        two.stop()
