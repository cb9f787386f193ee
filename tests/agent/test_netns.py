"""Real agents, real wireguard-go, real network namespaces (root).

A copy of the example repository (a git repo in tmp, acme's devices replaced
by n1..n3 enrolled with ``meshops agent init`` + ``meshops device add``) is
published with ``reconciler.hub.publish`` (real SOPS + gpg) to a directory;
agents in their own namespaces converge from ``file://`` manifests and ping
each other through the tunnels. Then the journeys of issue 4: a second run
is a no-op, an added peer, a removed device is cut off, a route change, a
key change, a killed wireguard-go comes back, manual drift is corrected.

Underlay: a bridge namespace and one veth per node on 10.250.X.0/24, inside
our namespaces only. Teardown deletes the namespaces and kills only the
wireguard-go pids our agents started (their pid files).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler.agent.config import load_config
from reconciler.agent.reconcile import reconcile_once
from reconciler.agent.runtime import make_fetcher, make_host, open_agent_backend
from reconciler.cli import main

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "example-repo"
PID = os.getpid()
PREFIX = f"mo-ag-{PID}"
SUBNET = f"10.250.{PID % 250}"


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=60)


def ns_exec(ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *cmd, check=check)


class Lab:
    """Namespaces, the org repo, the publisher and one agent config per node."""

    def __init__(self, tmp: Path, gnupghome: str) -> None:
        self.tmp = tmp
        self.gnupghome = gnupghome
        self.repo = tmp / "repo"
        self.out = tmp / "pub"
        self.namespaces: list[str] = []
        self.configs: dict[str, Path] = {}
        self.bridge = f"{PREFIX}-br"

    # -- underlay -----------------------------------------------------------
    def add_ns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        ns_exec(name, "ip", "link", "set", "lo", "up")

    def build_bridge(self) -> None:
        self.add_ns(self.bridge)
        ns_exec(self.bridge, "ip", "link", "add", "br0", "type", "bridge")
        ns_exec(self.bridge, "ip", "link", "set", "br0", "up")

    def node_ns(self, node: str) -> str:
        return f"{PREFIX}-{node}"

    def add_node(self, node: str, index: int) -> None:
        ns = self.node_ns(node)
        self.add_ns(ns)
        outer, inner = f"mo{PID % 100000}{node}b", f"mo{PID % 100000}{node}a"
        sh("ip", "link", "add", outer, "netns", self.bridge, "type", "veth", "peer", "name",
           inner, "netns", ns)
        ns_exec(self.bridge, "ip", "link", "set", outer, "master", "br0", "up")
        ns_exec(ns, "ip", "link", "set", inner, "name", "eth0")
        ns_exec(ns, "ip", "addr", "add", f"{SUBNET}.{index}/24", "dev", "eth0")
        ns_exec(ns, "ip", "link", "set", "eth0", "up")

    # -- the org repository ---------------------------------------------------
    def make_repo(self) -> None:
        shutil.copytree(EXAMPLE, self.repo, ignore=shutil.ignore_patterns(".git"))
        for path in (self.repo / "orgs" / "acme" / "devices").glob("*.yaml"):
            path.unlink()
        (self.repo / "orgs" / "acme" / "policy.yaml").unlink()  # full mesh
        self.git("init", "-q", "-b", "main")
        self.commit("start")

    def git(self, *args: str) -> None:
        sh("git", "-C", str(self.repo), "-c", "user.name=t", "-c", "user.email=t@example.com",
           *args)

    def commit(self, message: str) -> None:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)

    def publish(self) -> None:
        from reconciler.hub.publish import publish

        publish(self.repo, out_dir=self.out, state=f"sqlite:///{self.tmp}/hub.db",
                now=time.time(), gpg_home=self.gnupghome)

    def enroll(self, node: str, index: int, *, force: bool = False,
               hub: str | None = None) -> dict[str, str]:
        """`meshops agent init` for ``node``; returns its public keys."""
        etc = self.tmp / "etc" / node
        config = etc / "agent.json"
        trust = self.tmp / "trust-bootstrap.json"
        if not trust.exists():
            shutil.copy(self.out / "trust.json", trust)
        source = ["--hub", hub] if hub else [
            "--manifest-url", f"file://{self.out}/acme/manifest.json"]
        argv = ["agent", "init", "--org", "acme", "--name", node, *source,
                "--trust", str(trust), "--config", str(config),
                "--state-dir", str(self.tmp / "state" / node),
                "--interface", f"ag{PID % 100000}{node}", "--netns", self.node_ns(node)]
        if force:
            argv.append("--force")
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main(argv) == 0
        self.configs[node] = config
        keys = [line.split()[-1] for line in buf.getvalue().splitlines()
                if line.strip().startswith("public_key:")]
        return {"wireguard": keys[0], "identity": keys[1]}

    def add_device(self, node: str, index: int, keys: dict[str, str]) -> None:
        argv = ["device", "add", node, "--org", "acme", "--wireguard-key", keys["wireguard"],
                "--identity-key", keys["identity"], "--endpoint", f"{SUBNET}.{index}:51820",
                "--repo", str(self.repo)]
        assert main(argv) == 0, f"device add {node} failed"

    def device_file(self, node: str) -> Path:
        return self.repo / "orgs" / "acme" / "devices" / f"{node}.yaml"

    def tunnel_ip(self, node: str) -> str:
        for line in self.device_file(node).read_text().splitlines():
            text = line.strip().lstrip("- ").strip()
            if text.startswith("10.10."):
                return text
        raise AssertionError(f"no IPv4 tunnel IP in {node}.yaml")

    # -- agents ----------------------------------------------------------------
    def apply(self, node: str) -> int:
        return self.apply_result(node).applied

    def apply_result(self, node: str) -> Any:
        config = load_config(self.configs[node])
        backend = open_agent_backend(config)
        firewall, routing = make_host(config)  # as `meshops agent apply` does
        try:
            return reconcile_once(config, fetch=make_fetcher(config), backend=backend,
                                  now=time.time(), firewall=firewall, routing=routing)
        finally:
            backend.close()
            routing.close()

    def interface(self, node: str) -> str:
        return load_config(self.configs[node]).interface

    def wg_pid(self, node: str) -> int | None:
        config = load_config(self.configs[node])
        pid_file = Path(config.state_dir) / "wireguard" / f"{config.interface}.pid"
        try:
            return int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def ping(self, src: str, dst_ip: str, attempts: int = 10) -> bool:
        for _ in range(attempts):
            if ns_exec(self.node_ns(src), "ping", "-c", "1", "-W", "1", dst_ip,
                       check=False).returncode == 0:
                return True
        return False

    def debug(self, node: str) -> str:
        ns, iface = self.node_ns(node), self.interface(node)
        parts = [ns_exec(ns, *cmd, check=False) for cmd in (
            ("wg", "show", iface), ("ip", "addr"), ("ip", "route"))]
        return "\n".join(p.stdout + p.stderr for p in parts)

    def teardown(self) -> None:
        for node in list(self.configs):
            pid = self.wg_pid(node)
            if pid is not None and _is_our_wireguard_go(pid, self.interface(node)):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)  # tolerates "already gone"


def _is_our_wireguard_go(pid: int, interface: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(b"wireguard-go" in part for part in cmdline) and interface.encode() in cmdline


@pytest.fixture
def lab(tmp_path):
    from reconciler.hub.publish import example_gnupghome

    home = tmp_path / "gnupg"
    example_gnupghome(EXAMPLE, home)
    lab = Lab(tmp_path, str(home))
    try:
        lab.build_bridge()
        lab.make_repo()
        lab.publish()  # trust.json for enrollment (no devices yet)
        yield lab
    finally:
        lab.teardown()
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                       capture_output=True, check=False)


def wg_show(lab: Lab, node: str, what: str) -> str:
    return ns_exec(lab.node_ns(node), "wg", "show", lab.interface(node), what).stdout


def test_agents_converge_and_follow_git(lab: Lab) -> None:
    keys = {}
    for index, node in ((1, "n1"), (2, "n2")):
        lab.add_node(node, index)
        keys[node] = lab.enroll(node, index)
        lab.add_device(node, index, keys[node])
    lab.commit("n1 and n2")
    lab.publish()
    assert lab.apply("n1") > 0 and lab.apply("n2") > 0
    ip = {n: lab.tunnel_ip(n) for n in ("n1", "n2")}
    assert lab.ping("n1", ip["n2"]), lab.debug("n1") + lab.debug("n2")
    assert lab.ping("n2", ip["n1"])

    # the second run applies nothing, also as a separate process through the CLI
    assert lab.apply("n1") == 0
    cli = subprocess.run([sys.executable, "-m", "reconciler", "agent", "apply", "--config",
                          str(lab.configs["n2"]), "--format", "json"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["operations"] == 0

    # an added peer converges
    lab.add_node("n3", 3)
    keys["n3"] = lab.enroll("n3", 3)
    lab.add_device("n3", 3, keys["n3"])
    lab.commit("add n3")
    lab.publish()
    for node in ("n1", "n2", "n3"):
        assert lab.apply(node) > 0
    ip["n3"] = lab.tunnel_ip("n3")
    assert lab.ping("n3", ip["n1"]) and lab.ping("n3", ip["n2"])

    # an advertised route (allowed IP) change reaches the peers
    text = lab.device_file("n3").read_text()
    lab.device_file("n3").write_text(text + "routes:\n  - 192.168.77.0/24\n")
    lab.commit("n3 routes")
    lab.publish()
    assert lab.apply("n1") > 0
    n3_key = keys["n3"]["wireguard"]
    n3_line = next(line for line in wg_show(lab, "n1", "allowed-ips").splitlines()
                   if line.startswith(n3_key))
    assert "192.168.77.0/24" in n3_line
    routes = ns_exec(lab.node_ns("n1"), "ip", "route", "show", "192.168.77.0/24").stdout
    assert lab.interface("n1") in routes

    # manual drift with `wg set` is corrected on the next run
    ns_exec(lab.node_ns("n1"), "wg", "set", lab.interface("n1"), "peer", n3_key,
            "allowed-ips", "10.99.0.0/24")
    assert lab.apply("n1") > 0
    assert lab.apply("n1") == 0
    assert lab.ping("n1", ip["n3"])

    # a key change: n3 makes new keys, git gets the new public key
    new = lab.enroll("n3", 3, force=True)
    text = lab.device_file("n3").read_text()
    lab.device_file("n3").write_text(text.replace(keys["n3"]["wireguard"], new["wireguard"])
                                     .replace(keys["n3"]["identity"], new["identity"]))
    lab.commit("n3 key rotation")
    lab.publish()
    for node in ("n3", "n1", "n2"):
        assert lab.apply(node) > 0
    assert new["wireguard"] in wg_show(lab, "n1", "peers")
    assert keys["n3"]["wireguard"] not in wg_show(lab, "n1", "peers")
    assert lab.ping("n1", ip["n3"]) and lab.ping("n3", ip["n2"])

    # a killed wireguard-go is restarted by the next run
    pid = lab.wg_pid("n1")
    assert pid is not None and _is_our_wireguard_go(pid, lab.interface("n1"))
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lab.apply("n1") > 0
    assert lab.wg_pid("n1") != pid
    assert lab.ping("n1", ip["n2"])

    # a device removed from git loses connectivity
    lab.device_file("n2").unlink()
    lab.commit("remove n2")
    lab.publish()
    for node in ("n1", "n3", "n2"):
        lab.apply(node)
    assert keys["n2"]["wireguard"] not in wg_show(lab, "n1", "peers")
    assert wg_show(lab, "n2", "peers").strip() == ""
    assert not lab.ping("n1", ip["n2"], attempts=2)
    assert not lab.ping("n2", ip["n3"], attempts=2)
    assert lab.ping("n1", ip["n3"])


def test_agent_run_converges_then_sigterm_leaves_the_tunnel_up(lab: Lab) -> None:
    lab.add_node("n1", 1)
    keys = lab.enroll("n1", 1)
    lab.add_device("n1", 1, keys)
    lab.commit("n1")
    lab.publish()
    proc = subprocess.Popen([sys.executable, "-m", "reconciler", "agent", "run", "--config",
                             str(lab.configs["n1"])], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if ns_exec(lab.node_ns("n1"), "ip", "-br", "addr", "show", "dev",
                       lab.interface("n1"), check=False).stdout.count("10.10.") == 1:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("agent run did not converge in 30 s")
        time.sleep(0.5)  # now sleeping until the next pass
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "operation(s) applied" in out
    # the tunnel outlives the agent
    shown = ns_exec(lab.node_ns("n1"), "wg", "show", lab.interface("n1"))
    assert "listening port: 51820" in shown.stdout
    pid = lab.wg_pid("n1")
    assert pid is not None and _is_our_wireguard_go(pid, lab.interface("n1"))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_agents_converge_through_the_hub_over_mtls(lab: Lab) -> None:
    """`meshops hub serve` on loopback; agents fetch their device certificate,
    verify the hub against the pinned org CA, long-poll-capable manifest GETs,
    report endpoints over mTLS and read each other from the signed feed."""
    url = f"https://127.0.0.1:{_free_port()}"
    keys = {}
    for index, node in ((1, "n1"), (2, "n2")):
        lab.add_node(node, index)
        keys[node] = lab.enroll(node, index, hub=url)
        lab.add_device(node, index, keys[node])
    lab.commit("n1 and n2")
    log = (lab.tmp / "hub.log").open("w")
    hub = subprocess.Popen([sys.executable, "-m", "reconciler", "hub", "serve", "--repo",
                            str(lab.repo), "--listen", url.removeprefix("https://"),
                            "--gnupghome", lab.gnupghome, "--state-dir", str(lab.tmp / "hub"),
                            "--poll", "1"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                first = lab.apply_result("n1")
                break
            except Exception:  # the hub is still publishing its first commit
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert first.applied > 0
        assert first.warnings == ()  # cert fetched first: feed and report over mTLS worked
        assert lab.apply("n2") > 0
        for node in ("n1", "n2"):  # second passes: both have reported by now
            result = lab.apply_result(node)
            assert result.applied == 0 and result.warnings == (), result.warnings
        # the hub rebuilds its feed at most twice a second: poll until both reports show
        state = Path(load_config(lab.configs["n1"]).state_dir)
        deadline = time.monotonic() + 10
        while True:
            assert lab.apply_result("n1").feed_revision is not None
            # with a hub the feed entries arrive in the device's view (agent.view)
            feed = json.loads((state / "view.json").read_bytes().partition(b"\n")[2])["feed"]
            if {e["device"] for e in feed["entries"]} >= {"n1", "n2"}:
                break
            assert time.monotonic() < deadline, feed
            time.sleep(0.5)
        n2_entry = next(e for e in feed["entries"] if e["device"] == "n2")
        assert {"kind": "static", "address": f"{SUBNET}.2:51820"} in n2_entry["candidates"]
        assert (state / "device.crt").read_text().startswith("-----BEGIN CERTIFICATE-----")
        assert lab.ping("n1", lab.tunnel_ip("n2")) and lab.ping("n2", lab.tunnel_ip("n1"))
    finally:
        hub.terminate()
        try:
            hub.wait(timeout=10)
        except subprocess.TimeoutExpired:
            hub.kill()
            hub.wait()
        log.close()
