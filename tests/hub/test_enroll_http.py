"""``hub serve`` following a repository over git's smart HTTP (real ``git
http-backend`` behind a loopback server): an enrollment signed with the hub's
GPG key is pushed back over HTTP, and the hub then serves the commit it wrote."""

from __future__ import annotations

import asyncio
import http.server
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from oidc.fixture import oidc  # noqa: F401  (pytest fixture)

from reconciler.hub.daemon import ServeConfig, start

from .conftest_serve import FakePipeline, make_org, run
from .test_enroll import World, git, signed

HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"


class GitCgi(http.server.BaseHTTPRequestHandler):
    """Runs ``git http-backend`` (CGI) for each request under ``server.root``."""

    def _cgi(self) -> None:
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = {
            "GIT_PROJECT_ROOT": str(self.server.root),  # type: ignore[attr-defined]
            "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": path, "QUERY_STRING": query,
            "REQUEST_METHOD": self.command, "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)), "REMOTE_ADDR": "127.0.0.1",
            "PATH": os.environ.get("PATH", ""),
        }
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        proc = subprocess.run([HTTP_BACKEND], input=body, env=env, capture_output=True,
                              timeout=60, check=False)
        head, _, payload = proc.stdout.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _cgi

    def log_message(self, *args: object) -> None:
        pass


class GitHttp:
    def __init__(self, root: Path) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), GitCgi)
        self.server.root = root  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def gpg_key(home: Path) -> str:
    home.mkdir(mode=0o700)
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--passphrase", "",
                    "--quick-gen-key", "meshops hub <hub@meshops.invalid>", "ed25519", "sign",
                    "never"], check=True, capture_output=True, timeout=60)
    out = subprocess.run(["gpg", "--homedir", str(home), "--with-colons", "--list-keys"],
                         check=True, capture_output=True, text=True).stdout
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))


@pytest.mark.skipif(not Path(HTTP_BACKEND).exists() or not shutil.which("gpg"),
                    reason="needs git-http-backend (package git) and gpg")
def test_auto_approved_enrollment_over_git_http_signed_by_the_hub_key(oidc, tmp_path):  # noqa: F811
    auto = "  auto_approve:\n    roles: [owner]\n    max_devices_per_user: 5\n"
    world = World(tmp_path, oidc.issuer, auto)
    git("config", "http.receivepack", "true", cwd=world.remote)
    home = tmp_path / "gnupg"
    fpr = gpg_key(home)
    token = oidc.device_token("alice")["id_token"]

    async def go() -> tuple[int, dict, str]:
        import aiohttp

        with GitHttp(tmp_path) as base:
            running = await start(ServeConfig(
                repo=f"{base}/remote.git", listen="127.0.0.1:0", plain_http=True, poll=0.3,
                db=f"sqlite:///{tmp_path}/hub.db", state_dir=str(tmp_path / "state"),
                pipeline=FakePipeline([make_org("acme", "10.20.0.0/16")]),
                gnupghome=str(home), commit_key=fpr, oidc_ca_file=str(oidc.cert)))
            try:
                hub = running.hub
                deadline = time.monotonic() + 30
                while hub.snapshot is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                assert hub.snapshot is not None and hub.snapshot.commit == world.base
                async with aiohttp.ClientSession() as http:
                    resp = await http.post(
                        f"http://127.0.0.1:{running.port}/v1/orgs/acme/enroll",
                        data=signed("acme", "alice-http", token, ts=time.time()))
                    status, doc = resp.status, await resp.json()
                # the hub follows the remote: it picks up the commit it pushed
                deadline = time.monotonic() + 30
                while hub.snapshot.commit == world.base and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                return status, doc, hub.snapshot.commit
            finally:
                await running.stop()

    status, doc, served = run(go())
    assert status == 201, doc
    assert doc["status"] == "approved" and doc["branch"] == "main"
    assert served == doc["commit"] == git("rev-parse", "main", cwd=world.remote)
    verify = subprocess.run(["git", "verify-commit", "--raw", doc["commit"]], cwd=world.remote,
                            env=dict(os.environ, GNUPGHOME=str(home)), capture_output=True,
                            text=True, check=False)
    assert verify.returncode == 0 and f"VALIDSIG {fpr}" in verify.stderr, verify.stderr
    # the hub's worktrees are gone; the mirror is left as the follower keeps it
    mirror = next((tmp_path / "state" / "git").glob("mirror-*.git"))
    assert git("worktree", "list", "--porcelain", cwd=mirror).count("worktree ") == 1
