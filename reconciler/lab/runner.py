"""Bring the NAT lab up and down, change it, and read its matrix.

Called by ``meshops lab`` (``reconciler.cli.lab``: ``scripts/lab``, ``scripts/demo``)
and by ``tests/lab`` (the e2e suite). It drives only real components through
their command lines: ``meshops ca init``, ``hub publish``, ``agent init``,
``device add``, ``hub serve``, ``agent run``, Debian's ``stund``, ``gpg``,
``git``, ``wireguard-go`` (started by the agents), iproute2 and iptables.

Layout of a lab's working directory (``.lab/<prefix>/`` by default)::

    ledger.json   namespaces and pids this lab created (for `down`)
    gnupg/        a throwaway PGP key the lab generates (secrets in its repo)
    repo/         the lab's org repository (a real git repo the hub follows)
    out/          trust.json from the first publish (pinned by agents)
    nodes/<n>/    agent config, keys (0600) and state
    logs/         one log per process
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from reconciler.lab import flows, matrix
from reconciler.lab.netns import LabError, Ledger, Netns, Proc, in_ns, run, stop_proc, teardown
from reconciler.lab.topology import Node, Topology, attach_to_site, build_network
from reconciler.model.repo import OrgState

MESHOPS = (sys.executable, "-m", "reconciler")

# Peering timers for the lab (seconds). Production defaults follow WireGuard's own
# timers (minutes); the lab shortens them so failover shows within the e2e goals.
LAB_HYSTERESIS = {
    "stale_after": 12.0,
    "establish_timeout": 10.0,
    "retry_initial": 20.0,
    "retry_max": 60.0,
    "stable_after": 60.0,
}


# The lab org's policy (issue 11): every pair pings, a few services are open,
# everything else is denied on the wire (receivers, relays, the subnet router).
LAB_POLICY = """\
kind: Policy
description: The NAT lab. Every pair pings; a few services are open; the rest is denied.
rules:
  - name: ping
    src: ["*"]
    dst: ["*"]
    proto: icmp
  - name: web-on-pub
    src: ["*"]
    dst: [device:pub]
    proto: tcp
    ports: [8080]
  - name: ssh-from-a1
    src: [device:a1]
    dst: ["*"]
    proto: tcp
    ports: [22]
  - name: dns-on-d1
    src: [device:b1, device:c1]
    dst: [device:d1]
    proto: udp
    ports: [5353]
  - name: site-a-lan-web
    src: [device:b1, device:d1]
    dst: ["route:{lan}.0/24"]
    proto: tcp
    ports: [80]
  - name: c1-internet
    src: [device:{client}]
    dst: [internet]
    proto: any
  - name: throughput  # iperf3 in scripts/bench lab_vs_nebula (direct a1-d1, relayed b1-c1)
    src: [device:a1, device:b1]
    dst: [device:d1, device:c1]
    proto: tcp
    ports: [5201]
tests:
  - {{src: b1, dst: c1, proto: tcp, port: 22, expect: deny}}
  - {{src: a1, dst: c1, proto: tcp, port: 22, expect: accept}}
  - {{src: c1, dst: d1, proto: udp, port: 5353, expect: accept}}
  - {{src: d1, dst: c1, proto: udp, port: 5353, expect: deny}}
  - {{src: c1, dst: b1, proto: tcp, port: 8080, expect: deny}}
"""
# Probes offered per pair for the demo's verdict column, in order of preference.
PROBES = (("tcp", 8080), ("tcp", 22), ("udp", 5353), ("tcp", 9090), ("udp", 9090))


def _device_keys(init_output: str) -> dict[str, str]:
    """The public keys from `meshops agent init`'s device YAML."""
    keys: dict[str, str] = {}
    section = ""
    for line in init_output.splitlines():
        if line.rstrip().endswith(":") and not line.startswith(" "):
            section = line.strip().rstrip(":")
        elif line.strip().startswith("public_key:") and section in ("wireguard", "identity"):
            keys[section] = line.split(":", 1)[1].strip()
    if set(keys) != {"wireguard", "identity"}:
        raise LabError(f"could not read the public keys from `meshops agent init`:\n{init_output}")
    return keys


@dataclass(frozen=True)
class Expectation:
    src: str
    dst: str
    kind: str  # direct | lan | relay


def expected_kind(topo: Topology, a: Node, b: Node) -> str:
    """What issue 6 asks of each pair: public/relay involved -> direct; cone <->
    cone across sites -> direct; same site -> lan; any symmetric NAT between two
    NATed nodes -> relay."""
    if a.public or b.public or a.relay or b.relay:
        return "direct"
    if a.site == b.site:
        return "lan"
    if topo.site(a.site).symmetric or topo.site(b.site).symmetric:
        return "relay"
    return "direct"


class Lab:
    def __init__(
        self,
        topo: Topology,
        workdir: Path,
        *,
        agent_interval: float = 1.0,
        log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True),
    ) -> None:
        self.topo = topo
        self.dir = workdir
        self.ledger = Ledger.load(workdir / "ledger.json")
        self.nn = Netns(self.ledger)
        self.agent_interval = agent_interval
        self.log = log
        self.gnupg = workdir / "gnupg"
        self.repo = workdir / "repo"
        self.out = workdir / "out"
        self.logs = workdir / "logs"
        self.keys: dict[str, dict[str, str]] = {}  # node -> {"wireguard": pub, "identity": pub}
        self.tunnel_ip: dict[str, str] = {}
        self.moved: dict[str, str] = {}  # node -> site it was moved to

    # ------------------------------------------------------------------ helpers
    def meshops(self, *args: str, ns: str | None = None, check: bool = True) -> str:
        cmd = [*MESHOPS, *args]
        env = {**os.environ, "GNUPGHOME": str(self.gnupg)}
        proc = subprocess.run(
            in_ns(ns, *cmd) if ns else cmd, capture_output=True, text=True, env=env, timeout=120,
            check=False,
        )
        if check and proc.returncode != 0:
            raise LabError(f"`meshops {' '.join(args)}` failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
        return proc.stdout

    def git(self, *args: str) -> str:
        return run(["git", "-C", str(self.repo), *args])

    def node_dir(self, name: str) -> Path:
        return self.dir / "nodes" / name

    # ------------------------------------------------------------------ up
    def up(self) -> None:
        if self.ledger.namespaces:
            raise LabError(f"a lab is already up in {self.dir}; run `scripts/lab down` first")
        if self.dir.exists():
            self._kill_gpg_agent()
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.log("lab: building namespaces, internet bridge and NAT gateways")
        build_network(self.topo, self.nn)
        self.log("lab: generating a throwaway PGP key and the org repository")
        fpr = self._gpg_key()
        self._write_repo(fpr)
        self.meshops("ca", "init", "--org", self.topo.org, "--repo", str(self.repo), "--gnupghome", str(self.gnupg))
        self.git("add", "-A")
        self.git("commit", "-qm", "lab: mesh, org and CA")
        self.meshops("hub", "publish", str(self.repo), "--out", str(self.out), "--gnupghome", str(self.gnupg))
        self.log("lab: enrolling devices (agent init + device add), policy, router, exit node")
        for node in self.topo.nodes:
            self.enroll(node)
        self._write_policy_and_roles()
        self.git("add", "-A")
        self.git("commit", "-qm", "lab: enroll devices, policy, subnet router and exit node")
        self.log("lab: starting stund, the hub and the agents")
        self._start_services()
        for node in self.topo.nodes:
            self.start_agent(node.name)

    def _gpg_key(self) -> str:
        self.gnupg.mkdir(mode=0o700)
        env = {**os.environ, "GNUPGHOME": str(self.gnupg)}
        subprocess.run(
            ["gpg", "--batch", "--passphrase", "", "--quick-gen-key",
             "meshops lab (throwaway) <lab@example.invalid>", "ed25519", "cert,sign", "never"],
            check=True, capture_output=True, env=env,
        )
        listing = subprocess.run(
            ["gpg", "--batch", "--with-colons", "--list-secret-keys"],
            check=True, capture_output=True, text=True, env=env,
        ).stdout
        fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
        subprocess.run(
            ["gpg", "--batch", "--passphrase", "", "--quick-add-key", fpr, "cv25519", "encr", "never"],
            check=True, capture_output=True, env=env,
        )
        return fpr

    def _write_repo(self, fpr: str) -> None:
        t = self.topo
        org = self.repo / "orgs" / t.org
        (org / "users").mkdir(parents=True)
        (org / "devices").mkdir()
        (self.repo / "mesh.yaml").write_text(
            "kind: Mesh\n"
            f"hub_url: {t.hub_url}\n"
            "stun_servers:\n" + "".join(f"  - \"{s}\"\n" for s in t.stun_servers) +
            "cert_lifetime_days: 30\n"
            "manifest_lifetime_days: 7\n"
            f"pgp_recipients:\n  - \"{fpr}\"\n"
        )
        (org / "organization.yaml").write_text(
            f"kind: Organization\nname: {t.org}\ncidr_v4: {t.org_cidr}\nowners:\n  - admin\n"
            f"defaults:\n  listen_port: {t.wg_port}\n  keepalive: 5\n"
        )
        (org / "users" / "admin.yaml").write_text(
            "kind: User\nname: admin\nemail: admin@example.com\n"
            "oidc:\n  issuer: https://accounts.example.com\n  subject: \"lab-admin\"\nrole: owner\n"
        )
        run(["git", "init", "-q", "-b", "main", str(self.repo)])
        self.git("config", "user.email", "lab@example.invalid")
        self.git("config", "user.name", "meshops lab")

    def device_file(self, name: str) -> Path:
        return self.repo / "orgs" / self.topo.org / "devices" / f"{name}.yaml"

    def _write_policy_and_roles(self) -> None:
        t = self.topo
        (self.repo / "orgs" / t.org / "policy.yaml").write_text(
            LAB_POLICY.format(lan=t.router_lan, client=t.exit_client))
        with self.device_file(t.router).open("a") as f:
            f.write(f"routes:\n  - {t.router_lan}.0/24\n")
        with self.device_file(t.exit_node).open("a") as f:
            f.write("exit_node: true\n")
        self.set_exit_node(t.exit_client, t.exit_node, commit=False)

    def set_exit_node(self, name: str, exit_node: str | None, *, commit: bool = True) -> None:
        """``use_exit_node: EXIT`` in ``name``'s device file (None: the line goes)."""
        path = self.device_file(name)
        lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("use_exit_node:")]
        if exit_node is not None:
            lines.append(f"use_exit_node: {exit_node}")
        path.write_text("\n".join(lines) + "\n")
        if commit:
            self.git("add", "-A")
            self.git("commit", "-qm", f"lab: {name} uses exit node {exit_node}")

    def commit_policy(self, text: str, message: str) -> None:
        (self.repo / "orgs" / self.topo.org / "policy.yaml").write_text(text)
        self.git("add", "-A")
        self.git("commit", "-qm", message)

    def enroll(self, node: Node) -> None:
        d = self.node_dir(node.name)
        d.mkdir(parents=True, exist_ok=True)
        cfg = d / "agent.json"
        out = self.meshops(
            "agent", "init", "--org", self.topo.org, "--name", node.name,
            "--hub", self.topo.hub_url, "--trust", str(self.out / "trust.json"),
            "--config", str(cfg), "--state-dir", str(d / "state"),
            "--backend", "userspace", "--interface", self.topo.ifname(node.name),
            *[a for s in self.topo.stun_servers for a in ("--stun", s)],
        )
        info = _device_keys(out)
        self.keys[node.name] = {"wireguard": info["wireguard"], "identity": info["identity"]}
        # lab timers: seconds, not minutes (see docs/nat-traversal.md)
        conf = json.loads(cfg.read_text())
        conf.update(interval=self.agent_interval, jitter=0.0, long_poll=20, hysteresis=dict(LAB_HYSTERESIS))
        cfg.write_text(json.dumps(conf, indent=2))
        args = [
            "device", "add", "--repo", str(self.repo), "--org", self.topo.org, node.name,
            "--wireguard-key", info["wireguard"], "--identity-key", info["identity"],
            "--owner", "admin",
        ]
        if node.relay:
            args += ["--relay", "--tag", "relay"]
        if node.public:
            args += ["--endpoint", f"{node.ip}:{self.topo.wg_port}"]
        self.meshops(*args)
        dev = (self.repo / "orgs" / self.topo.org / "devices" / f"{node.name}.yaml").read_text()
        for line in dev.splitlines():
            stripped = line.strip().lstrip("- ").strip('"')
            if stripped.startswith("10.99."):
                self.tunnel_ip[node.name] = stripped.split("/")[0]
                break

    def _start_services(self) -> None:
        t = self.topo
        self.nn.spawn("stund", t.ns("stun"), ["stund", "-h", t.stun_ips[0], "-a", t.stun_ips[1]], log_dir=self.logs)
        self.nn.spawn(
            "hub",
            t.ns("hub"),
            [*MESHOPS, "hub", "serve", "--repo", str(self.repo), "--branch", "main",
             "--listen", f"{t.hub_ip}:{t.hub_port}", "--stun", f"{t.hub_ip}:{t.stun_port}",
             "--db", f"sqlite:///{self.dir / 'hub.db'}", "--gnupghome", str(self.gnupg),
             "--poll", "1"],
            log_dir=self.logs,
            env={"GNUPGHOME": str(self.gnupg)},
        )
        self._wait_tcp(t.ns("hub"), t.hub_ip, t.hub_port)

    def _wait_tcp(self, ns: str, host: str, port: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        probe = f"import socket; socket.create_connection(('{host}', {port}), 1).close()"
        while time.monotonic() < deadline:
            probe_cmd = in_ns(ns, sys.executable, "-c", probe)
            if subprocess.run(probe_cmd, capture_output=True, check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise LabError(f"{host}:{port} did not come up in {timeout:g}s; see {self.logs}/hub.log")

    def start_agent(self, name: str) -> Proc:
        d = self.node_dir(name)
        return self.nn.spawn(
            f"agent-{name}", self.topo.ns(name),
            [*MESHOPS, "agent", "run", "--config", str(d / "agent.json")],
            log_dir=self.logs,
        )

    # ------------------------------------------------------------------ observe
    def names_by_key(self) -> dict[str, str]:
        return {k["wireguard"]: n for n, k in self.keys.items()}

    def probe(self, src: str, dst: str) -> matrix.PairResult:
        rtt, path, age = matrix.probe_pair(
            self.topo.ns(src), self.topo.ifname(src), self.tunnel_ip[dst],
            self.keys[dst]["wireguard"], self.names_by_key(),
        )
        return matrix.PairResult(src, dst, rtt, path, age)

    def reachable(self, src: str, dst: str, timeout: float = 0.3) -> bool:
        """One ping with a short timeout: the fine-grained check the timed
        scenarios poll (a full ``probe`` retries for up to 3 s, which would
        make the measurement that coarse)."""
        return matrix.ping(self.topo.ns(src), self.tunnel_ip[dst], timeout=timeout) is not None

    # ------------------------------------------------------------------ policy on the wire
    def org_state(self) -> OrgState:
        """The lab org at the repository's HEAD (what the hub serves)."""
        from reconciler.config import load

        result = load(self.repo, "HEAD")
        if result.repo is None:
            raise LabError("the lab repository does not validate: "
                           + "; ".join(str(p) for p in result.problems[:3]))
        return result.repo.orgs[self.topo.org]

    def address(self, name: str) -> str:
        """Where flows to ``name`` go: a node's tunnel IP, the LAN host's address."""
        if name == self.topo.lan_host:
            return self.topo.lan_host_ip
        return self.tunnel_ip[name]

    def send(self, flow_list: Iterable[flows.Flow], timeout: float = 1.0) -> dict[flows.Flow, bool]:
        return flows.run_flows(list(flow_list), ns_of=self.topo.ns, addr_of=self.address,
                               timeout=timeout)

    def verdict_probes(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], tuple[
            flows.Flow | None, flows.Flow | None]]:
        """Per pair, one flow the policy allows and one it denies (engine's view)."""
        org = self.org_state()
        out = {}
        for a, b in pairs:
            candidates = [flows.Flow(a, b, proto, port) for proto, port in PROBES]
            verdict = flows.engine_verdicts(org, candidates)
            allowed = next((f for f in candidates if verdict[f]), None)
            denied = next((f for f in candidates if not verdict[f]), None)
            out[(a, b)] = (allowed, denied)
        return out

    def applied_serials(self) -> dict[str, int]:
        """The manifest serial each running node last applied (its ``applied.json``)."""
        out = {}
        for name in self.keys:
            try:
                doc = json.loads((self.node_dir(name) / "state" / "applied.json").read_text())
                out[name] = int(doc["serial"])
            except (OSError, ValueError, KeyError, TypeError):
                out[name] = 0
        return out

    def wait_applied(self, before: dict[str, int], timeout: float = 60) -> float | None:
        """Seconds until every node applied a serial above ``before``'s."""
        return self.wait_until(lambda: all(self.applied_serials()[n] > s
                                           for n, s in before.items()), timeout, step=0.3)

    def seen_source(self, name: str, timeout: float = 2.0) -> str | None:
        """The source address the lab-internet host ``web`` sees from ``name``."""
        return flows.whoami(self.topo.ns(name), self.topo.ns("web"), self.topo.web_ip,
                            timeout=timeout)

    def pairs(self, names: Iterable[str] | None = None) -> list[tuple[str, str]]:
        nodes = [n for n in (names or self.keys) if n in self.keys]
        return [(a, b) for a in nodes for b in nodes if a != b]

    def table(self) -> list[matrix.PairResult]:
        return [self.probe(a, b) for a, b in self.pairs()]

    def expectations(self) -> list[Expectation]:
        out = []
        for a, b in self.pairs():
            na, nb = self._effective(a), self._effective(b)
            out.append(Expectation(a, b, expected_kind(self.topo, na, nb)))
        return out

    def _effective(self, name: str) -> Node:
        node = self.topo.node(name) if name in {n.name for n in self.topo.nodes} else Node(name, "a", "")
        if name in self.moved:
            node = Node(node.name, self.moved[name], node.ip, node.relay, node.public)
        return node

    def wait_until(self, check: Callable[[], bool], timeout: float, step: float = 0.2) -> float | None:
        """Seconds until ``check()`` held, or None after ``timeout``."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if check():
                return time.monotonic() - start
            time.sleep(step)
        return None

    # ------------------------------------------------------------------ changes
    def add_device(self, name: str, site: str, ip: str) -> None:
        """A new node behind ``site``'s NAT: namespace, enrollment, commit, agent."""
        self.nn.add_ns(self.topo.ns(name))
        attach_to_site(self.topo, self.nn, name, self.topo.site(site), ip, create_ns=False)
        self.enroll(Node(name, site, ip))
        self.git("add", "-A")
        self.git("commit", "-qm", f"lab: add {name}")
        self.start_agent(name)

    def remove_device(self, name: str) -> None:
        (self.repo / "orgs" / self.topo.org / "devices" / f"{name}.yaml").unlink()
        self.git("add", "-A")
        self.git("commit", "-qm", f"lab: remove {name}")

    def move(self, name: str, site: str, ip: str) -> None:
        """IP mobility: unplug ``name`` from its LAN and plug it into ``site``'s."""
        ns = self.topo.ns(name)
        run(in_ns(ns, "ip", "link", "del", "eth0"))
        attach_to_site(self.topo, self.nn, name, self.topo.site(site), ip, create_ns=False)
        self.moved[name] = site

    def stop_agent(self, name: str) -> None:
        """Stop ``name``'s agent only; its tunnel keeps its last state."""
        for proc in list(self.ledger.procs):
            if proc.name == f"agent-{name}":
                stop_proc(proc)
                self.ledger.procs.remove(proc)

    def rotate(self, *, signing: bool, ca: bool, overlap_seconds: int) -> int:
        """``meshops ca rotate`` as a commit the hub follows, with an overlap of
        seconds (the lab's timers are seconds, not days). Returns the newest root
        version it wrote (the old keys retire when it is published)."""
        from reconciler.hub.carotate import rotate_org_keys

        done = rotate_org_keys(self.repo, self.topo.org, now=time.time(), signing=signing,
                               ca=ca, gpg_home=str(self.gnupg), overlap_seconds=overlap_seconds)
        self.git("add", "-A")
        self.git("commit", "-qm", f"lab: rotate (signing={signing}, ca={ca})")
        return done.versions[1]

    def root_version(self, name: str) -> int:
        """The trust-root version ``name``'s agent walked to (0: none yet)."""
        from reconciler.pki.root import verify_initial

        try:
            data = (self.node_dir(name) / "state" / "root.dsse").read_bytes()
        except OSError:
            return 0
        return verify_initial(data, self.topo.org).version

    def kill_agent_and_tunnel(self, name: str) -> None:
        """Take a node off the mesh: stop its agent and its wireguard-go."""
        for proc in list(self.ledger.procs):
            if proc.name == f"agent-{name}":
                stop_proc(proc)
        run(in_ns(self.topo.ns(name), "ip", "link", "del", self.topo.ifname(name)), check=False)

    # ------------------------------------------------------------------ down
    def down(self) -> list[str]:
        notes = teardown(self.ledger, wg_prefix=self.topo.wg_prefix)
        self._kill_gpg_agent()
        return notes

    def _kill_gpg_agent(self) -> None:
        """gpg starts an agent for the lab's GNUPGHOME; stop it (by its home, which
        only this lab uses) before the directory goes away."""
        if self.gnupg.exists():
            subprocess.run(["gpgconf", "--homedir", str(self.gnupg), "--kill", "gpg-agent"],
                           capture_output=True, check=False)
