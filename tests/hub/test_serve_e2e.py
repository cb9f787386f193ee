"""``hub serve`` with the real publish pipeline on a copy of example-repo:
SOPS-decrypted CA keys (real gpg), signed manifests over TLS, a bad commit that
keeps the last good manifest serving, and recovery on the next good commit."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from reconciler.hub.daemon import ServeConfig, start
from reconciler.pki.envelope import load_trust, trust_entry
from reconciler.pki.manifest import verify_manifest

from .conftest_serve import mint_device, run, write_pem_files
from .test_serve_tls import client_ctx, fetch, git, wait_for

EXAMPLE = Path(__file__).resolve().parents[2] / "example-repo"


def commit_all(repo: Path, message: str) -> str:
    git(repo, "commit", "-q", "-a", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo_and_gpg(tmp_path: Path):
    if not (EXAMPLE / "keys" / "example-hub.sec.asc").exists():
        pytest.skip("example-repo with its example hub key is needed")
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE, repo)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "example")
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--import",
                    str(repo / "keys" / "example-hub.sec.asc")], check=True, capture_output=True)
    yield repo, str(home)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False,
                   capture_output=True)


def test_serve_real_pipeline_bad_commit_keeps_last_good(repo_and_gpg, tmp_path: Path) -> None:
    repo, home = repo_and_gpg

    async def go() -> None:
        running = await start(ServeConfig(
            repo=str(repo), listen="127.0.0.1:0", db=f"sqlite:///{tmp_path}/hub.db",
            state_dir=str(tmp_path / "state"), gnupghome=home, poll=30))
        hub = running.hub
        try:
            first = git(repo, "rev-parse", "HEAD")
            await wait_for(lambda: hub.snapshot is not None, 30)
            assert hub.snapshot.commit == first and set(hub.snapshot.orgs) == {"acme", "globex"}
            acme = hub.org("acme")
            anonymous = client_ctx(acme.ca_pem)
            status, _ = await fetch(running.port, "/v1/orgs/acme/manifest", anonymous,
                                    "acme.hub")
            assert status == 401  # the hub serves manifests over mTLS only
            web1 = mint_device(acme.keys, "acme", "web-1", "10.10.0.4", time.time())
            ctx = client_ctx(acme.ca_pem, write_pem_files(tmp_path, web1))
            status, body = await fetch(running.port, "/v1/orgs/acme/manifest", ctx, "acme.hub")
            assert status == 200
            trust = load_trust(json.dumps({"orgs": {"acme": trust_entry(
                [acme.keys.signing_key.public_key()], acme.ca_pem)}}))
            manifest = verify_manifest(body, trust, "acme", None, time.time())
            assert manifest.commit == first and manifest.device("web-1") is not None
            status, body = await fetch(running.port, "/v1/orgs/acme/devices/web-1/cert", ctx,
                                       "acme.hub")
            assert status == 200 and json.loads(body)["ca"] == acme.ca_pem
            # a bad commit: the tunnel IP is outside the org CIDR
            web = repo / "orgs" / "acme" / "devices" / "web-1.yaml"
            good_text = web.read_text()
            web.write_text(good_text.replace("10.10.0.4", "192.0.2.4"))
            bad = await asyncio.to_thread(commit_all, repo, "bad tunnel ip")
            await wait_for(lambda: hub.status.commit == bad and hub.status.error is not None, 30)
            status, body2 = await fetch(running.port, "/v1/orgs/acme/manifest", ctx, "acme.hub")
            assert status == 200 and verify_manifest(body2, trust, "acme", None,
                                                      time.time()).commit == first
            status, body = await fetch(running.port, "/v1/status", ctx, "acme.hub")
            doc = json.loads(body)
            assert doc["serving_commit"] == first and doc["branch_commit"] == bad
            assert "web-1.yaml" in doc["last_error"] and doc["healthy"] is False
            # the fix is published, with a higher serial
            web.write_text(good_text.replace("tags: [server, web]", "tags: [server, web, v2]"))
            fixed = await asyncio.to_thread(commit_all, repo, "fix")
            await wait_for(lambda: hub.snapshot.commit == fixed, 30)
            assert hub.status.error is None and hub.org("acme").serial > manifest.serial
        finally:
            await running.stop()

    run(go())


def test_serve_follows_a_remote_url_into_a_bare_mirror(repo_and_gpg, tmp_path: Path) -> None:
    repo, home = repo_and_gpg

    async def go() -> None:
        running = await start(ServeConfig(
            repo=f"file://{repo}", listen="127.0.0.1:0", db=f"sqlite:///{tmp_path}/hub.db",
            state_dir=str(tmp_path / "state"), gnupghome=home, poll=0.3))
        hub = running.hub
        try:
            first = git(repo, "rev-parse", "HEAD")
            await wait_for(lambda: hub.snapshot is not None, 30)
            assert hub.snapshot.commit == first
            assert any((tmp_path / "state" / "git").glob("mirror-*.git/HEAD"))
            web = repo / "orgs" / "acme" / "devices" / "web-1.yaml"
            web.write_text(web.read_text().replace("tags: [server, web]", "tags: [server, web, v3]"))
            second = await asyncio.to_thread(commit_all, repo, "retag")
            await wait_for(lambda: hub.snapshot.commit == second, 30)
            assert hub.org("acme").serial > 0 and hub.status.error is None
        finally:
            await running.stop()

    run(go())


def test_cli_hub_serve_runs_until_sigterm(repo_and_gpg, tmp_path: Path) -> None:
    import os
    import signal
    import sys
    import urllib.request

    from .conftest_serve import free_port

    repo, home = repo_and_gpg
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "hub", "serve", "--repo", str(repo),
         "--listen", f"127.0.0.1:{port}", "--db", f"sqlite:///{tmp_path}/hub.db",
         "--state-dir", str(tmp_path / "state"), "--gnupghome", home],
        cwd=Path(__file__).resolve().parents[2], stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        import ssl

        ctx = ssl.create_default_context()
        ctx.check_hostname = False  # we only need the status document here
        ctx.verify_mode = ssl.CERT_NONE
        deadline = time.monotonic() + 30
        doc = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/v1/status",
                                            context=ctx, timeout=2) as r:
                    doc = json.loads(r.read())
                if doc["serving_commit"]:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        assert doc is not None and doc["serving_commit"] == git(repo, "rev-parse", "HEAD")
        assert doc["healthy"] is True and set(doc["orgs"]) == {"acme", "globex"}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    assert code == 0, proc.stderr.read() if proc.stderr else ""
