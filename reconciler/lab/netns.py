"""Network-namespace plumbing for the lab: namespaces, veths, bridges, NAT, processes.

Called by ``reconciler.lab.topology`` (which decides *what* to build) and by the
e2e tests. Everything goes through iproute2/iptables inside namespaces this
module created; nothing is ever added to the root namespace's addresses or
routes. Every created namespace and started process is recorded in a
``Ledger`` (persisted as JSON) so ``down`` removes exactly what ``up`` made and
kills only its own pids (checked against ``/proc/PID/cmdline`` first).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.errors import PermanentError


class LabError(PermanentError):
    """A lab command failed; the message names the command and its stderr."""


def run(cmd: Sequence[str], *, check: bool = True, timeout: float = 30) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def in_ns(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


@dataclass
class Proc:
    name: str
    pid: int
    ns: str
    argv0: str
    log: str


@dataclass
class Ledger:
    """What a lab made: namespaces (in creation order) and processes."""

    path: Path
    namespaces: list[str] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Ledger:
        if not path.exists():
            return cls(path)
        raw = json.loads(path.read_text())
        return cls(path, list(raw["namespaces"]), [Proc(**p) for p in raw["procs"]])

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {"namespaces": self.namespaces, "procs": [p.__dict__ for p in self.procs]},
                indent=2,
            )
        )
        os.replace(tmp, self.path)


class Netns:
    """Builds namespaces and links, recording each in the ledger as it goes."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    # namespaces -----------------------------------------------------------
    def add_ns(self, ns: str, *, forward: bool = False) -> str:
        if ns in existing_namespaces():
            raise LabError(f"namespace {ns} already exists; run `scripts/lab down` first")
        run(["ip", "netns", "add", ns])
        self.ledger.namespaces.append(ns)
        self.ledger.save()
        run(in_ns(ns, "ip", "link", "set", "lo", "up"))
        self.sysctl(ns, "net.ipv4.ip_forward", "1" if forward else "0")
        # rp_filter would drop asymmetric relay paths; WireGuard does its own source checks
        self.sysctl(ns, "net.ipv4.conf.all.rp_filter", "0")
        return ns

    def sysctl(self, ns: str, key: str, value: str) -> None:
        run(in_ns(ns, "sysctl", "-qw", f"{key}={value}"))

    def bridge(self, ns: str, name: str) -> None:
        run(in_ns(ns, "ip", "link", "add", name, "type", "bridge"))
        run(in_ns(ns, "ip", "link", "set", name, "up"))

    def veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str, *, master_b: str | None = None) -> None:
        """A veth pair with ``if_a`` in ``ns_a`` and ``if_b`` in ``ns_b`` (optionally
        enslaved to bridge ``master_b``). Created inside ``ns_a`` so the root
        namespace never holds either end."""
        run(in_ns(ns_a, "ip", "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b))
        run(in_ns(ns_a, "ip", "link", "set", if_a, "up"))
        if master_b:
            run(in_ns(ns_b, "ip", "link", "set", if_b, "master", master_b))
        run(in_ns(ns_b, "ip", "link", "set", if_b, "up"))

    def addr(self, ns: str, ifname: str, cidr: str) -> None:
        run(in_ns(ns, "ip", "addr", "add", cidr, "dev", ifname))

    def route(self, ns: str, dst: str, *, via: str | None = None, dev: str | None = None) -> None:
        cmd = ["ip", "route", "replace", dst]
        if via:
            cmd += ["via", via]
        if dev:
            cmd += ["dev", dev]
        run(in_ns(ns, *cmd))

    def iptables(self, ns: str, *args: str) -> None:
        run(in_ns(ns, "iptables", "-w", *args))

    def nat(self, ns: str, wan: str, *, symmetric: bool) -> None:
        """Port-restricted cone NAT (endpoint-independent mapping), or symmetric
        (endpoint-dependent mapping) with ``--random-fully``. See PLATFORM-NOTES."""
        masq = ["-t", "nat", "-A", "POSTROUTING", "-o", wan, "-j", "MASQUERADE"]
        self.iptables(ns, *(masq + (["--random-fully"] if symmetric else [])))
        for chain in ("INPUT", "FORWARD"):
            self.iptables(ns, "-A", chain, "-i", wan, "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP")

    # processes ------------------------------------------------------------
    def spawn(self, name: str, ns: str, argv: Sequence[str], *, log_dir: Path, env: dict | None = None) -> Proc:
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                in_ns(ns, *argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        # `ip netns exec` execs the program, so the pid is the program's own
        proc = Proc(name=name, pid=popen.pid, ns=ns, argv0=os.path.basename(argv[0]), log=str(log))
        self.ledger.procs.append(proc)
        self.ledger.save()
        _until_exec(popen, proc)
        return proc


def _until_exec(popen: subprocess.Popen, proc: Proc, timeout: float = 5.0) -> None:
    """Wait (milliseconds) until ``ip netns exec`` has become the program, or ended.
    While it execs, its command line can read empty, and a teardown in that moment
    would take it for a stranger and leave the program running."""
    deadline = time.monotonic() + timeout
    while popen.poll() is None and time.monotonic() < deadline:
        argv = _cmdline(proc.pid)
        if argv and argv[:4] != ["ip", "netns", "exec", proc.ns] and started_as(argv, proc):
            return
        time.sleep(0.002)


def existing_namespaces() -> set[str]:
    out = run(["ip", "netns", "list"], check=False)
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [p.decode(errors="replace") for p in raw.split(b"\0") if p]


def is_ours(proc: Proc) -> bool:
    """The pid is still the process we started (not a recycled pid)."""
    return started_as(_cmdline(proc.pid), proc)


def started_as(argv: Sequence[str], proc: Proc) -> bool:
    """``argv`` (a command line) is ``proc``'s: its program, or, in the moment after
    ``spawn`` and before ``ip netns exec`` execs it, the ``ip netns exec <ns> <program>``
    that will become it. Without the second form a teardown right after a spawn took
    the process for a stranger and left it running (the program then lived on in a
    namespace without a name)."""
    if len(argv) > 4 and os.path.basename(argv[0]) == "ip" and list(argv[1:4]) == ["netns", "exec", proc.ns]:
        argv = argv[4:]
    return any(os.path.basename(a) == proc.argv0 for a in argv[:3])


def stop_proc(proc: Proc, *, grace: float = 3.0) -> None:
    if not is_ours(proc):
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not is_ours(proc):
            _reap(proc.pid)
            return
        _reap(proc.pid)
        time.sleep(0.05)
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(proc.pid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def ns_pids(ns: str) -> list[int]:
    out = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def teardown(ledger: Ledger, *, wg_prefix: str = "") -> list[str]:
    """Stop the ledger's processes (newest first), then any wireguard-go that an
    agent of ours started inside one of our namespaces (argv names an interface
    with ``wg_prefix``), then delete our namespaces. Tolerates "already gone"."""
    notes: list[str] = []
    for proc in reversed(ledger.procs):
        stop_proc(proc)
    ours = set(ledger.namespaces) & existing_namespaces()
    for ns in ours:
        for pid in ns_pids(ns):
            argv = _cmdline(pid)
            if argv and os.path.basename(argv[0]) == "wireguard-go" and (
                not wg_prefix or any(a.startswith(wg_prefix) for a in argv[1:])
            ):
                stop_proc(Proc("wireguard-go", pid, ns, "wireguard-go", ""))
    for ns in reversed(ledger.namespaces):
        if ns in ours:
            left = ns_pids(ns)
            if left:
                notes.append(f"{ns}: processes we did not start are still inside: {left}")
            run(["ip", "netns", "del", ns], check=False)
    ledger.procs.clear()
    ledger.namespaces.clear()
    ledger.save()
    return notes
