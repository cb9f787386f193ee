"""Nebula in the NAT lab: certificates, one ``nebula`` per node, its own view of each path.

Called by ``scripts/benchmarks/bench_lab_vs_nebula.py`` (``scripts/bench
lab_vs_nebula``) and ``tests/lab/test_nebula.py``, which run the lab's topology
once with meshops (``reconciler.lab.runner``) and once with Nebula, to compare
the two in the same network. It drives Debian's ``nebula`` 1.6.1 and
``nebula-cert`` through their command lines, and OpenSSH's ``ssh`` to read each
node's host map from Nebula's debug SSH server (bound to loopback inside the
node's namespace).

The network is the meshops lab's own (``topology.build_network``): the same
namespaces, NAT gateways and addresses. The lighthouse runs in the hub's
namespace on the hub's address (no tun: like the meshops hub it is not a mesh
member); ``relay1`` and ``relay2`` are Nebula relays (``relay.am_relay``) and
every node behind a NAT lists them in ``relay.relays``. Each node's config is
rendered from the template in ``scripts/benchmarks/nebula/`` (passed in as
``templates``), whose comments say why each setting was chosen. The firewall is
generated from the lab org's compiled meshops policy (``inbound_rules``), so
both systems enforce the same policy.

A path is never assumed (as in ``reconciler.lab.matrix``): ``probe`` pings the
peer's Nebula IP, reads the source's host map (``currentRemote`` set: direct,
``lan`` when it is a site address; otherwise the relay in
``currentRelaysToMe``), and confirms it with traffic: a burst of pings must
cross exactly the relay the host map names (its WAN receive counter grows by
both directions of the burst) or, for a direct path, no relay.

Processes and namespaces are recorded in the same ``Ledger`` the meshops lab
uses, so ``down`` stops exactly the pids it started and removes exactly its
namespaces, also after a failure. Keys (Nebula's and the SSH ones) are 0600.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import string
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler import boundedjson
from reconciler.lab.matrix import ping
from reconciler.lab.netns import LabError, Ledger, Netns, Proc, in_ns, is_ours, run, teardown
from reconciler.lab.topology import Topology, attach_to_site, build_network
from reconciler.policy import CompiledPolicy

LIGHTHOUSE = "lighthouse"
TEMPLATE = "node.yml"
SSH_USER = "lab"
# The traffic confirmation of one path: BURST pings of PAYLOAD bytes. Large packets
# make a carrying relay stand out from tunnel tests, punches and lighthouse updates,
# which are all under 200 bytes; 1300 fits the tun MTU (1400) unfragmented.
BURST = 20
PAYLOAD = 1300
# Who lists the relays in ``relay.relays`` (and so may be reached through them):
# every node behind a NAT (no knowledge of NAT types, as meshops is given none), or
# only the nodes an operator knows sit behind a symmetric NAT.
RELAY_USERS = ("natted", "symmetric")

_ANY = {"port": "any", "proto": "any", "host": "any"}


# --------------------------------------------------------------------- policy -> firewall
def _source_match(selector: str) -> dict[str, str]:
    """A meshops selector label as a Nebula firewall match: ``*`` any host, ``d:NAME`` a
    certificate name, any other label (``g:``, ``t:``, ``u:``) a certificate group."""
    if selector == "*":
        return {"host": "any"}
    if selector.startswith("d:"):
        return {"host": selector[2:]}
    return {"group": selector}


def _selected(selectors: Iterable[str], name: str, labels: frozenset[str]) -> bool:
    return any(s == "*" or s in labels or (s.startswith("d:") and s[2:] == name) for s in selectors)


def inbound_rules(policy: CompiledPolicy | None, name: str) -> list[dict[str, str]]:
    """Nebula inbound rules for device ``name`` equivalent to the meshops policy.

    meshops accepts a flow when some rule selects its source and destination, the
    protocol matches and (for TCP/UDP) the port is in the rule's list; ICMP ignores
    ports (``policy.engine.port_matches``). Nebula's firewall is default-deny,
    stateful and allow-only, so the union of the rules naming ``name`` as a
    destination, one Nebula rule per source selector and port, is the same set.
    A rule ``proto: any`` with ports becomes TCP and UDP on those ports plus ICMP
    (Nebula gives ICMP no port, so ``any`` with a port would never match it).
    """
    if policy is None or policy.rules is None:
        return [dict(_ANY)]  # no policy.yaml: a full mesh
    labels = frozenset(policy.labels(name))
    out: list[dict[str, str]] = []
    for rule in policy.rules:
        if not _selected(rule["dst"], name, labels):
            continue
        proto = str(rule.get("proto", "any"))
        ports = [str(p) for p in rule.get("ports", ())]
        if proto == "icmp" or not ports:
            shapes = [(proto, "any")]
        elif proto == "any":
            shapes = [("tcp", p) for p in ports] + [("udp", p) for p in ports] + [("icmp", "any")]
        else:
            shapes = [(proto, p) for p in ports]
        for src in rule["src"]:
            for proto_, port in shapes:
                entry = {"port": port, "proto": proto_, **_source_match(str(src))}
                if entry not in out:
                    out.append(entry)
    return out


def cert_groups(policy: CompiledPolicy | None, name: str) -> tuple[str, ...]:
    """The certificate groups of ``name``: the meshops labels the policy uses."""
    return () if policy is None else tuple(policy.labels(name))


# --------------------------------------------------------------------- config
def render(template: str, values: Mapping[str, Any], *, where: str) -> str:
    """``template`` with each ``$name`` replaced; non-strings are written as JSON (YAML's
    flow style). A placeholder without a value is an error naming it."""
    text = {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}
    try:
        return string.Template(template).substitute(text)
    except KeyError as exc:
        raise LabError(f"{where}: template placeholder {exc} has no value; "
                       "reconciler/lab/nebula.py must supply it") from exc
    except ValueError as exc:  # a lone "$": write "$$" for a literal dollar sign
        raise LabError(f"{where}: {exc}; write $$ for a literal dollar sign") from exc


# --------------------------------------------------------------------- host map
_SITE_RANGES = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))


def is_site_address(udp_addr: str) -> bool:
    """``10.10.1.12:51820`` is a site (LAN) address; the lab's internet uses the
    documentation ranges, which ``ipaddress.is_private`` would also call private."""
    host = udp_addr.rsplit(":", 1)[0].strip("[]")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(addr in net for net in _SITE_RANGES if net.version == addr.version)


@dataclass(frozen=True)
class HostEntry:
    """One row of ``nebula`` ``list-hostmap -json``: a tunnel this node holds."""

    vpn_ip: str
    name: str
    current_remote: str | None  # the peer's UDP address for a direct tunnel
    relays_to_me: tuple[str, ...]  # relay VPN IPs when relayed
    message_counter: int


def _udp_addr(raw: object) -> str | None:
    """Nebula 1.6 prints a UDP address as ``{"ip": "...", "port": N}``."""
    if not raw:
        return None
    if isinstance(raw, dict) and "ip" in raw and "port" in raw:
        return f"{raw['ip']}:{int(raw['port'])}"
    raise LabError(f"nebula list-hostmap -json: unexpected address {str(raw)[:100]}")


def parse_hostmap(data: bytes | str) -> dict[str, HostEntry]:
    """The host map as Nebula's SSH server prints it, keyed by VPN IP."""
    raw = boundedjson.loads(data, what="nebula list-hostmap -json", max_bytes=4 << 20)
    if not isinstance(raw, list):
        raise LabError(f"nebula list-hostmap -json: expected a list, got {type(raw).__name__}")
    out: dict[str, HostEntry] = {}
    for row in raw:
        if not isinstance(row, dict) or "vpnIp" not in row:
            raise LabError(f"nebula list-hostmap -json: unexpected row {str(row)[:200]}")
        cert = row.get("cert") or {}
        details = cert.get("details") or {} if isinstance(cert, dict) else {}
        remote = _udp_addr(row.get("currentRemote"))
        out[str(row["vpnIp"])] = HostEntry(
            vpn_ip=str(row["vpnIp"]),
            name=str(details.get("name", "")),
            current_remote=remote,
            relays_to_me=tuple(str(r) for r in row.get("currentRelaysToMe") or ()),
            message_counter=int(row.get("messageCounter") or 0),
        )
    return out


@dataclass(frozen=True)
class NebulaPair:
    """One ordered pair: Nebula's own view of the path and what the traffic showed."""

    src: str
    dst: str
    rtt_ms: float | None
    path: str  # from both host maps: "direct" | "lan" | "relay:<name>[+<name>]" | "none"
    traffic: str  # from relay counters: "direct" (no relay) | "relay:<name>[+<name>]" | "none"

    @property
    def ok(self) -> bool:
        return self.rtt_ms is not None

    @property
    def kind(self) -> str:
        return self.path.split(":", 1)[0]

    @property
    def confirmed(self) -> bool:
        """The traffic crossed exactly the relays the host maps name (none for a
        direct path)."""
        if self.path.startswith("relay:"):
            return self.traffic == self.path
        return self.path in ("direct", "lan") and self.traffic == "direct"


def relays_carrying(before: Mapping[str, int], after: Mapping[str, int], *, burst: int = BURST,
                    payload: int = PAYLOAD, ends: Iterable[str] = ()) -> str:
    """Which relays carried a burst of ``burst`` pings of ``payload`` bytes, from each
    relay's WAN receive byte counter: ``direct`` or ``relay:NAME`` (``relay:A+B`` when
    the echoes and the replies took different relays, which Nebula does: each side
    picks its own). A packet crossing a relay enters its WAN once, so a carrying
    relay receives at least ``burst * payload`` bytes per direction it carries; the
    background (tunnel tests, punches, lighthouse updates) is small packets. A relay
    that is one of the pair's ``ends`` receives the burst itself and is not counted."""
    skip = set(ends)
    floor = burst * payload
    carried = sorted(r for r in after if r not in skip and after[r] - before.get(r, after[r]) >= floor)
    return f"relay:{'+'.join(carried)}" if carried else "direct"


def combine_legs(forward: str, back: str) -> str:
    """One path for a round trip from its two legs (see ``NebulaLab.state_path``)."""
    if "none" in (forward, back):
        return "none"
    relays = sorted({leg.split(":", 1)[1] for leg in (forward, back) if leg.startswith("relay:")})
    if relays:
        return f"relay:{'+'.join(relays)}"
    return forward


# --------------------------------------------------------------------- the lab
class NebulaLab:
    """The lab's topology run by Nebula. ``up`` builds the network and starts the
    lighthouse; ``start_nodes`` starts every node (so a caller can time from it)."""

    def __init__(
        self,
        topo: Topology,
        workdir: Path,
        *,
        templates: Path,
        policy: CompiledPolicy | None = None,
        relay_users: str = "natted",
        log: Callable[[str], None] = lambda _msg: None,
    ) -> None:
        if relay_users not in RELAY_USERS:
            raise LabError(f"relay_users {relay_users!r}: use one of {', '.join(RELAY_USERS)}")
        self.relay_users = relay_users
        self.topo = topo
        self.dir = workdir
        self.ledger = Ledger.load(workdir / "ledger.json")
        self.nn = Netns(self.ledger)
        self.template = (templates / TEMPLATE).read_text()
        self.template_path = templates / TEMPLATE
        self.policy = policy
        self.log = log
        self.pki = workdir / "pki"
        self.logs = workdir / "logs"
        net = ipaddress.ip_network(topo.org_cidr)
        self._hosts = list(net.hosts())
        self.prefixlen = net.prefixlen
        self.vpn_ip: dict[str, str] = {LIGHTHOUSE: str(self._hosts[-1])}
        self.fingerprint: dict[str, str] = {}
        self.blocked: set[str] = set()
        self.procs: dict[str, Proc] = {}
        self.sites: dict[str, str | None] = {}  # node -> site (None: public)
        for node in topo.nodes:
            self._assign(node.name, node.site)

    # ------------------------------------------------------------------ identities
    def _assign(self, name: str, site: str | None) -> None:
        used = set(self.vpn_ip.values())
        self.vpn_ip[name] = next(str(ip) for ip in self._hosts if str(ip) not in used)
        self.sites[name] = site

    @property
    def members(self) -> list[str]:
        """Mesh nodes (not the lighthouse), in the order they were added."""
        return [n for n in self.vpn_ip if n != LIGHTHOUSE]

    def relays(self) -> list[str]:
        return [n.name for n in self.topo.nodes if n.relay]

    def node_dir(self, name: str) -> Path:
        return self.dir / "nebula" / name

    def _cert(self, name: str) -> None:
        d = self.node_dir(name)
        d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.pki / "ca.crt", d / "ca.crt")
        for leftover in ("host.crt", "host.key"):
            (d / leftover).unlink(missing_ok=True)
        args = ["nebula-cert", "sign", "-ca-crt", str(self.pki / "ca.crt"), "-ca-key", str(self.pki / "ca.key"),
                "-name", name, "-ip", f"{self.vpn_ip[name]}/{self.prefixlen}",
                "-out-crt", str(d / "host.crt"), "-out-key", str(d / "host.key")]
        groups = cert_groups(self.policy, name)
        if groups:
            args += ["-groups", ",".join(groups)]
        run(args)
        os.chmod(d / "host.key", 0o600)
        printed = boundedjson.loads(run(["nebula-cert", "print", "-json", "-path", str(d / "host.crt")]),
                                    what=f"nebula-cert print {name}", max_bytes=1 << 20)
        self.fingerprint[name] = str(printed["fingerprint"])

    def lists_relays(self, name: str) -> bool:
        """``name`` lists the relays in ``relay.relays``, so peers may reach it through them."""
        site = self.sites.get(name)
        return site is not None and (self.relay_users == "natted" or self.topo.site(site).symmetric)

    def possible_kinds(self, a: str, b: str, expected: str) -> frozenset[str]:
        """The paths Nebula 1.6.1 may settle on for a pair whose NAT types give
        ``expected`` (``runner.expected_kind``). Nebula sends its relay requests
        alongside the first direct handshake and keeps whichever completes first, and
        it never moves a relayed tunnel back to direct. So where hole punching works
        but one side lists relays, the pair may end up relayed, depending on which
        relay tunnels already exist; where neither side lists one, only the punched
        path is possible; where punching cannot work (``relay``), only a relay."""
        if expected in ("relay", "none"):
            return frozenset({expected})
        if self.lists_relays(a) or self.lists_relays(b):
            return frozenset({expected, "relay"})
        return frozenset({expected})

    def _config(self, name: str) -> Path:
        d = self.node_dir(name)
        lighthouse = name == LIGHTHOUSE
        lists_relays = not lighthouse and self.lists_relays(name)
        node = next((n for n in self.topo.nodes if n.name == name), None)
        values = {
            "dir": str(d),
            "blocklist": sorted(self.fingerprint[b] for b in self.blocked),
            "static_host_map": {self.vpn_ip[LIGHTHOUSE]: [f"{self.topo.hub_ip}:{self.topo.wg_port}"]},
            "am_lighthouse": lighthouse,
            "lighthouse_hosts": [] if lighthouse else [self.vpn_ip[LIGHTHOUSE]],
            "port": self.topo.wg_port,
            "relays": [self.vpn_ip[r] for r in self.relays()] if lists_relays else [],
            "am_relay": bool(node and node.relay),
            "tun_disabled": lighthouse,
            "dev": self.topo.ifname("lh" if lighthouse else name),
            "sshd_enabled": True,
            "ssh_host_key": str(self.pki / "ssh_host_ed25519_key"),
            "ssh_authorized_keys": [(self.pki / "ssh_client.pub").read_text().strip()],
            "inbound": [dict(_ANY)] if lighthouse else inbound_rules(self.policy, name),
        }
        path = d / "config.yml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(render(self.template, values, where=str(self.template_path)))
        os.replace(tmp, path)  # a SIGHUP never reads half a file
        return path

    def _check_config(self, name: str, path: Path) -> None:
        proc = subprocess.run(["nebula", "-test", "-config", str(path)], capture_output=True, text=True,
                              timeout=30, check=False)
        if proc.returncode != 0:
            raise LabError(f"{path}: nebula -test refused the config for {name}: "
                           f"{(proc.stderr or proc.stdout).strip()[-500:]}")

    # ------------------------------------------------------------------ up
    def up(self) -> None:
        """``prepare``, then the namespaces and NAT (the meshops lab's own) and the
        lighthouse, running. The nodes start with ``start_nodes``."""
        if self.ledger.namespaces:
            raise LabError(f"a Nebula lab is already up in {self.dir}; call down() first")
        self.prepare()
        self.log("nebula lab: building namespaces, internet bridge and NAT gateways")
        build_network(self.topo, self.nn)
        self._start(LIGHTHOUSE, self.topo.ns("hub"))
        self._wait_udp(self.topo.ns("hub"), self.topo.wg_port)

    def prepare(self) -> None:
        """The CA, SSH keys, every node's certificate and config, each config checked
        with ``nebula -test``. Touches no network (no root needed)."""
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.pki.mkdir(parents=True)
        self.ledger.save()
        self.log("nebula lab: CA, certificates and configs")
        run(["nebula-cert", "ca", "-name", f"meshops lab {self.topo.prefix}", "-duration", "48h",
             "-out-crt", str(self.pki / "ca.crt"), "-out-key", str(self.pki / "ca.key")])
        os.chmod(self.pki / "ca.key", 0o600)
        for key in ("ssh_host_ed25519_key", "ssh_client"):
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"meshops nebula lab {key}",
                 "-f", str(self.pki / key)])
        for name in [LIGHTHOUSE, *self.members]:
            self._cert(name)
        for name in [LIGHTHOUSE, *self.members]:
            self._check_config(name, self._config(name))

    def start_nodes(self) -> None:
        for name in self.members:
            self._start(name, self.topo.ns(name))

    def _start(self, name: str, ns: str) -> Proc:
        proc = self.nn.spawn(f"nebula-{name}", ns, ["nebula", "-config", str(self.node_dir(name) / "config.yml")],
                             log_dir=self.logs)
        self.procs[name] = proc
        return proc

    def _wait_udp(self, ns: str, port: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if f":{port} " in run(in_ns(ns, "ss", "-H", "-uln"), check=False) + " ":
                return
            time.sleep(0.05)
        raise LabError(f"nebula did not bind UDP {port} in {ns} within {timeout:g}s; see {self.logs}")

    def wait_ssh(self, name: str, timeout: float = 15) -> None:
        """Wait until ``name``'s debug SSH server answers (it starts after the tun)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                self.hostmap(name)
                return
            except LabError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise LabError(f"nebula on {name}: SSH did not answer within {timeout:g}s: {last}")

    # ------------------------------------------------------------------ changes
    def add_node(self, name: str, site: str, ip: str) -> None:
        """A new node behind ``site``'s NAT: namespace, certificate, config, nebula.
        Nothing else changes: the lighthouse learns of it when it reports."""
        self.nn.add_ns(self.topo.ns(name))
        attach_to_site(self.topo, self.nn, name, self.topo.site(site), ip, create_ns=False)
        self._assign(name, site)
        self._cert(name)
        self._check_config(name, self._config(name))
        self._start(name, self.topo.ns(name))

    def block(self, name: str) -> None:
        """Cut ``name`` off: its fingerprint goes into every other node's (and the
        lighthouse's) ``pki.blocklist``, then each reloads on SIGHUP."""
        self.blocked.add(name)
        targets = [n for n in [LIGHTHOUSE, *self.members] if n not in self.blocked]
        for target in targets:
            self._config(target)
        for target in targets:
            self.reload(target)

    def reload(self, name: str) -> None:
        proc = self.procs[name]
        if not is_ours(proc):
            raise LabError(f"nebula on {name} (pid {proc.pid}) is not running; see {proc.log}")
        os.kill(proc.pid, signal.SIGHUP)

    # ------------------------------------------------------------------ observe
    def ssh(self, name: str, *command: str, timeout: float = 10) -> str:
        ns = self.topo.ns("hub" if name == LIGHTHOUSE else name)
        argv = ["ssh", "-q", "-p", "2222", "-i", str(self.pki / "ssh_client"),
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "ConnectTimeout=3", f"{SSH_USER}@127.0.0.1", *command]
        try:
            return run(in_ns(ns, *argv), timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"nebula on {name}: `{' '.join(command)}` over SSH timed out") from exc

    def hostmap(self, name: str) -> dict[str, HostEntry]:
        return parse_hostmap(self.ssh(name, "list-hostmap", "-json"))

    def names_by_ip(self) -> dict[str, str]:
        return {ip: n for n, ip in self.vpn_ip.items()}

    def relay_rx(self) -> dict[str, int]:
        """Each relay's WAN receive byte counter."""
        out: dict[str, int] = {}
        for relay in self.relays():
            raw = boundedjson.loads(run(in_ns(self.topo.ns(relay), "ip", "-j", "-s", "link", "show", "dev", "wan")),
                                    what=f"ip -j -s link ({relay})", max_bytes=1 << 20)
            out[relay] = int(raw[0]["stats64"]["rx"]["bytes"])
        return out

    def leg(self, src: str, dst: str) -> str:
        """How ``src`` sends to ``dst``, from ``src``'s host map: ``direct``, ``lan``,
        ``relay:NAME`` or ``none``."""
        entry = self.hostmap(src).get(self.vpn_ip[dst])
        if entry is None:
            return "none"
        if entry.current_remote:
            return "lan" if is_site_address(entry.current_remote) else "direct"
        if entry.relays_to_me:
            return f"relay:{self.names_by_ip().get(entry.relays_to_me[0], entry.relays_to_me[0])}"
        return "none"

    def state_path(self, src: str, dst: str) -> str:
        """The round trip's path from both host maps: Nebula's two sides choose
        independently, so one may send directly while the other uses a relay. Direct
        (or ``lan``) only when both legs are; else the relays of either leg."""
        return combine_legs(self.leg(src, dst), self.leg(dst, src))

    def probe(self, src: str, dst: str, *, attempts: int = 3, readings: int = 2) -> NebulaPair:
        """Ping ``dst`` (up to ``attempts`` times), then read the path from both host
        maps around a burst. A tunnel can be replaced while it is read (a relayed one
        by a direct one, or the reverse); when the host maps and the traffic disagree
        the reading is taken again, up to ``readings`` times, and the last one stands."""
        ns, ip = self.topo.ns(src), self.vpn_ip[dst]
        rtt = None
        for _ in range(attempts):
            rtt = ping(ns, ip)
            if rtt is not None:
                break
        if rtt is None:
            return NebulaPair(src, dst, None, self.state_path(src, dst), "none")
        result = NebulaPair(src, dst, rtt, "none", "none")
        for _ in range(readings):
            before = self.relay_rx()
            out = run(in_ns(ns, "ping", "-n", "-q", "-c", str(BURST), "-s", str(PAYLOAD), "-i", "0.01", "-W", "1",
                            ip), check=False)
            after = self.relay_rx()
            traffic = relays_carrying(before, after, ends=(src, dst)) if f" {BURST} received" in out else "none"
            result = NebulaPair(src, dst, rtt, self.state_path(src, dst), traffic)
            if result.confirmed:
                break
        return result

    def pairs(self, names: Sequence[str] | None = None) -> list[tuple[str, str]]:
        nodes = [n for n in (names or self.members) if n not in self.blocked]
        return [(a, b) for a in nodes for b in nodes if a != b]

    def table(self) -> list[NebulaPair]:
        return [self.probe(a, b) for a, b in self.pairs()]

    def pids(self, names: Iterable[str]) -> list[int]:
        return [self.procs[n].pid for n in names if n in self.procs and is_ours(self.procs[n])]

    # ------------------------------------------------------------------ down
    def down(self) -> list[str]:
        """Stop every nebula this lab started (by pid) and delete its namespaces."""
        return teardown(self.ledger)

