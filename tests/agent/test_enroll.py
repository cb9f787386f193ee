"""``meshops agent enroll`` against a real hub (aiohttp on loopback), the real
OpenID provider and a real bare git remote: the function with injected effects,
the CLI as a process, and a real browser (Chromium driven by Playwright)
completing the login at the provider's pages."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from hub.test_enroll import World, git
from oidc.fixture import IN_CI, oidc  # noqa: F401  (pytest fixture)

from reconciler.agent.enroll import enroll
from reconciler.agent.fetch import HttpTransport
from reconciler.agent.keys import generate_keys
from reconciler.errors import IdentityRefused
from reconciler.hub.api import make_app
from reconciler.hub.feedstore import FeedStore
from reconciler.hub.serve import Hub
from reconciler.identity.http import UrllibTransport

REPO_ROOT = Path(__file__).resolve().parents[2]


class HubThread:
    """The hub's HTTP API with the enrollment service, on 127.0.0.1 in its own loop."""

    def __init__(self, world: World, provider, tmp: Path) -> None:
        self.world, self.provider, self.tmp = world, provider, tmp
        self.ready: queue.Queue[object] = queue.Queue()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.loop.run_forever()
        self.loop.run_until_complete(self._stop())
        self.loop.close()

    async def _start(self) -> None:
        from hub.conftest_serve import FakePipeline, make_org

        self.hub = Hub(pipeline=FakePipeline([make_org("acme", "10.20.0.0/16")]),
                       store=FeedStore(f"sqlite:///{self.tmp}/hub.db"))
        await self.hub.start()
        self.server = TestServer(make_app(self.hub, enroll=self.world.service(self.provider)),
                                 host="127.0.0.1")
        await self.server.start_server()
        self.ready.put(self.server.port)

    async def _stop(self) -> None:
        await self.server.close()
        await self.hub.close()

    def __enter__(self) -> str:
        self.thread.start()
        port = self.ready.get(timeout=30)
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


def test_enroll_runs_the_device_grant_and_pushes_a_branch(oidc, tmp_path):  # noqa: F811
    world = World(tmp_path, oidc.issuer)
    keys = generate_keys(str(tmp_path / "wg.key"), str(tmp_path / "id.key"))
    said: list[str] = []
    polls: list[float] = []

    def sleep(s: float) -> None:  # the person logs in while the agent waits
        polls.append(s)
        if len(polls) == 2:
            url = re.search(r"open (\S+)\)", said[1]).group(1)
            oidc.approve_device(url, "bob")

    with HubThread(world, oidc, tmp_path) as hub_url:
        result = enroll(hub_url=hub_url, org="acme", name="bob-phone",
                        wireguard_public_key=keys.wireguard_public_key,
                        identity_public_key=keys.identity_public_key,
                        identity_key_path=str(tmp_path / "id.key"), hub=HttpTransport(),
                        issuer=UrllibTransport(context=oidc.ssl_context()), sleep=sleep,
                        now=time.time, say=said.append)
    assert said[0].startswith(f"To enroll acme/bob-phone, open {oidc.issuer}/device and "
                              "enter the code ")
    assert (result.status, result.branch, result.owner) == ("pending-review",
                                                            "enroll/acme/bob-phone", "bob")
    text = git("show", f"{result.commit}:orgs/acme/devices/bob-phone.yaml", cwd=world.remote)
    assert keys.wireguard_public_key in text and keys.identity_public_key in text
    assert all(ip in text for ip in result.tunnel_ips)


def test_enroll_reports_the_hubs_reason(oidc, tmp_path):  # noqa: F811
    world = World(tmp_path, oidc.issuer)
    keys = generate_keys(str(tmp_path / "wg.key"), str(tmp_path / "id.key"))
    said: list[str] = []

    def sleep(s: float) -> None:
        if len(said) > 1:
            oidc.approve_device(re.search(r"open (\S+)\)", said[1]).group(1), "carol")
            said.clear()

    with HubThread(world, oidc, tmp_path) as hub_url, pytest.raises(IdentityRefused) as info:
        enroll(hub_url=hub_url, org="acme", name="carol-1",
               wireguard_public_key=keys.wireguard_public_key,
               identity_public_key=keys.identity_public_key,
               identity_key_path=str(tmp_path / "id.key"), hub=HttpTransport(),
               issuer=UrllibTransport(context=oidc.ssl_context()), sleep=sleep, now=time.time,
               say=said.append)
    assert info.value.reason == "disabled-user"
    assert "disabled" in str(info.value)


def _trust(tmp: Path) -> Path:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from reconciler.pki.envelope import trust_entry

    path = tmp / "trust.json"
    entry = trust_entry([Ed25519PrivateKey.generate().public_key()], None)
    path.write_text(json.dumps({"orgs": {"acme": entry}}))
    return path


def _cli(tmp: Path, hub_url: str, provider, name: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler", "agent", "enroll", "--hub", hub_url, "--org",
         "acme", "--name", name, "--trust", str(_trust(tmp)), "--config",
         str(tmp / "agent" / "agent.json"), "--state-dir", str(tmp / "state"),
         "--oidc-ca-file", str(provider.cert)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _read_url(proc: subprocess.Popen[str]) -> tuple[str, list[str]]:
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        found = re.search(r"\(or open (\S+)\)", line)
        if found:
            return found.group(1), lines
    raise AssertionError(f"no verification URL printed: {lines} {proc.stderr.read()}")


def test_the_cli_prints_the_code_and_enrolls(oidc, tmp_path):  # noqa: F811
    world = World(tmp_path, oidc.issuer)
    with HubThread(world, oidc, tmp_path) as hub_url:
        proc = _cli(tmp_path, hub_url, oidc, "bob-cli")
        url, lines = _read_url(proc)
        oidc.approve_device(url, "bob")
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert any(re.match(r"To enroll acme/bob-cli, open https://\S+/device and enter the code "
                        r"[A-Z]{4}-[A-Z]{4}", line) for line in lines)
    assert "awaits review: branch enroll/acme/bob-cli" in out
    agent_dir = tmp_path / "agent"
    assert (agent_dir / "identity.key").stat().st_mode & 0o777 == 0o600
    assert (agent_dir / "wireguard.key").stat().st_mode & 0o777 == 0o600
    assert git("rev-parse", "--verify", "refs/heads/enroll/acme/bob-cli", cwd=world.remote)
    private = (agent_dir / "wireguard.key").read_text().strip()
    assert private not in out + err  # the private key is never printed


class DaemonThread:
    """``hub serve`` (``hub.daemon.start``) with TLS, following ``repo``, in its own loop."""

    def __init__(self, config) -> None:
        self.config = config
        self.ready: queue.Queue[object] = queue.Queue()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from reconciler.hub.daemon import start

        async def begin() -> None:
            try:
                self.running = await start(self.config)
                deadline = time.monotonic() + 30
                while self.running.hub.snapshot is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                self.ready.put(self.running.port)
            except Exception as exc:  # noqa: BLE001 (re-raised in the test thread)
                self.ready.put(exc)

        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(begin())
        self.loop.run_forever()
        if hasattr(self, "running"):
            self.loop.run_until_complete(self.running.stop())
        self.loop.close()

    def __enter__(self) -> int:
        self.thread.start()
        port = self.ready.get(timeout=60)
        if isinstance(port, Exception):
            raise port
        return int(port)

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


def test_the_cli_enrolls_through_a_tls_hub_pinned_by_the_trust_file(oidc, tmp_path):  # noqa: F811
    from hub.conftest_serve import FakePipeline, make_org

    from reconciler.hub.daemon import ServeConfig
    from reconciler.pki.envelope import trust_entry

    world = World(tmp_path, oidc.issuer)
    acme = make_org("acme", "10.20.0.0/16")
    config = ServeConfig(
        repo=f"file://{world.remote}", listen="127.0.0.1:0", poll=30,
        db=f"sqlite:///{tmp_path}/hub.db", state_dir=str(tmp_path / "hub-state"),
        pipeline=FakePipeline([acme]), oidc_ca_file=str(oidc.cert))
    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps({"orgs": {"acme": trust_entry(
        [acme.keys.signing_key.public_key()], acme.keys.ca_pem)}}))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    with DaemonThread(config) as port:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "agent", "enroll", "--hub",
             f"https://127.0.0.1:{port}", "--org", "acme", "--name", "bob-tls", "--trust",
             str(trust), "--config", str(tmp_path / "agent" / "agent.json"), "--state-dir",
             str(tmp_path / "state"), "--oidc-ca-file", str(oidc.cert)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        url, _ = _read_url(proc)
        oidc.approve_device(url, "bob")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "enroll/acme/bob-tls" in out
        # a trust file with another org CA: the hub's certificate is refused
        other = make_org("acme", "10.20.0.0/16")
        trust.write_text(json.dumps({"orgs": {"acme": trust_entry(
            [other.keys.signing_key.public_key()], other.keys.ca_pem)}}))
        bad = subprocess.run(
            [sys.executable, "-m", "reconciler", "agent", "enroll", "--hub",
             f"https://127.0.0.1:{port}", "--org", "acme", "--name", "bob-tls2", "--trust",
             str(trust), "--config", str(tmp_path / "agent2" / "agent.json"), "--state-dir",
             str(tmp_path / "state2")], check=False, capture_output=True, text=True, env=env,
            timeout=60)
    assert bad.returncode == 1 and "TLS verification failed" in bad.stderr, bad.stderr


BROWSER = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--ignore-certificate-errors"]


def test_a_real_browser_completes_the_login(oidc, tmp_path):  # noqa: F811
    why = None
    if not Path(BROWSER).exists():
        why = "Debian chromium is not installed (scripts/test installs it)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        why = "playwright is not installed (pip install -e .[test])"
    if why:
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)
    world = World(tmp_path, oidc.issuer)
    with HubThread(world, oidc, tmp_path) as hub_url:
        proc = _cli(tmp_path, hub_url, oidc, "bob-browser")
        try:
            url, _ = _read_url(proc)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=BROWSER, headless=True,
                                            args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page(ignore_https_errors=True)
                    # nothing leaves loopback (the success page asks for a web font)
                    page.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/]).*"),
                               lambda route: route.abort())
                    page.goto(url)  # the first page submits the code by itself
                    page.wait_for_selector("input[name=confirm]", state="attached")
                    page.click("button[type=submit]:not([name=abort])")  # "yes, it's my code"
                    page.fill("input[name=login]", "bob")
                    page.fill("input[name=password]", "correct horse")
                    page.click("button[type=submit]")
                    page.click("button[type=submit]")  # consent
                    page.wait_for_selector("text=Sign-in Success", timeout=15000)
                    page.screenshot(path=str(tmp_path / "success.png"))
                finally:
                    browser.close()
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    assert "enroll/acme/bob-browser" in out
    assert (tmp_path / "success.png").stat().st_size > 0
