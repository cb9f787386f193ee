"""Userspace backend: wireguard-go, owned by meshops, configured over UAPI.

Built by ``reconciler.backends.open_backend("userspace", ...)`` for the
agent. What it does:

* **Owns the daemon.** ``CreateInterface`` starts ``wireguard-go -f IFNAME``
  (``ip netns exec NS wireguard-go -f IFNAME`` with ``netns``; ``ip netns
  exec`` execs, so ``Popen.pid`` is wireguard-go's own pid) in a new session
  with output to ``STATE_DIR/IFNAME.log``, so it outlives the agent process.
  The pid goes to ``STATE_DIR/IFNAME.pid``. A later run (a new process, e.g.
  ``meshops agent apply`` from a timer) trusts that pid only if
  ``/proc/PID/cmdline`` is wireguard-go for that interface (and, with a
  namespace, ``/proc/PID/ns/net`` is that namespace). ``apply`` never stops
  a daemon; ``stop(name)`` (tests, lab, decommissioning) SIGTERMs only a
  verified pid of ours.
* **Restarts it.** If wireguard-go died, the socket is gone, ``observe``
  reports ``exists=False``, the plan starts with ``CreateInterface`` and
  ``apply`` starts a new daemon: restart is just level-based reconcile.
* **Configures it** over ``/var/run/wireguard/IFNAME.sock`` (``/run`` is
  shared by all namespaces, so interface names must be unique per host).
  All WireGuard operations of one ``apply`` go into ONE ``set=1``
  transaction (1,000 peers in one round trip); a listen-port change goes
  first in a transaction of its own, so a busy port cannot hold back the peers. Since a set is not atomic,
  an ``EINVAL`` reply makes the backend retry each operation in its own
  transaction, so one bad peer does not block the others, then raise
  ``BackendError`` naming the refused ones. ``-98`` (port busy) raises
  ``BackendUnavailable`` after everything else, link operations included, ran.
* Link state (MTU, up, addresses, routes) goes to the injected
  ``links`` (``reconciler.net.iproute.IPRouteLinks``).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from reconciler import structs
from reconciler.backends.base import DEFAULT_RUN_DIR, DEFAULT_STATE_DIR, LinkControl
from reconciler.backends.uapi import UapiClient, decode_get, encode_get, set_lines, transactions
from reconciler.background import Background
from reconciler.converge.ops import LINK_OPS, ROUTING_OPS, WG_OPS, CreateInterface, Operation
from reconciler.errors import BackendError, BackendUnavailable, ConfigError
from reconciler.model.wg import ObservedInterface

IFNAMSIZ = 15
LOG_ROTATE_BYTES = 1 << 20
_log = logging.getLogger(__name__)


def check_ifname(name: str) -> None:
    """Linux interface names: 1-15 bytes, no ``/``, whitespace or ``:``."""
    if not name or len(name.encode()) > IFNAMSIZ or any(c in name for c in "/: \t\n"):
        raise ConfigError(
            f"interface name {name!r} is not a valid Linux interface name (1-15 chars, no / : or spaces)"
        )


def proc_cmdline(pid: int) -> list[str]:
    """argv of ``pid`` from ``/proc`` (empty for zombies and missing processes)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _same_netns(pid: int, netns: str | None) -> bool:
    """Whether ``pid`` lives in the named namespace (or the root one's for ``None``)."""
    try:
        proc = os.stat(f"/proc/{pid}/ns/net")
        ref = os.stat(f"/run/netns/{netns}") if netns else os.stat("/proc/1/ns/net")
    except OSError:
        return False
    return (proc.st_dev, proc.st_ino) == (ref.st_dev, ref.st_ino)


def is_wireguard_go_for(pid: int, name: str, netns: str | None, binary: str) -> bool:
    """Is ``pid`` a live wireguard-go serving interface ``name`` in ``netns``?"""
    argv = proc_cmdline(pid)
    if len(argv) < 2 or argv[-1] != name:
        return False
    prog = os.path.basename(argv[0])
    if prog not in ("wireguard-go", os.path.basename(binary)):
        return False
    return _same_netns(pid, netns)


class UserspaceBackend:
    """wireguard-go + UAPI (see module docstring)."""

    def __init__(
        self,
        *,
        links: LinkControl | None = None,
        netns: str | None = None,
        run_dir: str = DEFAULT_RUN_DIR,
        state_dir: str = DEFAULT_STATE_DIR,
        wireguard_go: str = "wireguard-go",
        start_timeout: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if links is None:
            raise ConfigError(
                "the userspace backend needs links= (reconciler.net.iproute.IPRouteLinks) "
                "for MTU, link state, addresses and routes"
            )
        self.links = links
        self.netns = netns
        self.run_dir = run_dir
        self.state_dir = Path(state_dir)
        self.wireguard_go = wireguard_go
        self.start_timeout = start_timeout
        self._sleep = sleep
        self._clock = clock
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # -- paths -------------------------------------------------------------
    def socket_path(self, name: str) -> str:
        return os.path.join(self.run_dir, f"{name}.sock")

    def pid_path(self, name: str) -> Path:
        return self.state_dir / f"{name}.pid"

    def log_path(self, name: str) -> Path:
        return self.state_dir / f"{name}.log"

    def _client(self, name: str) -> UapiClient:
        return UapiClient(self.socket_path(name))

    # -- daemon ownership ----------------------------------------------------
    def owned_pid(self, name: str) -> int | None:
        """The pid of the wireguard-go we started for ``name``, if it still runs."""
        child = self._children.get(name)
        if child is not None and child.poll() is not None:  # reap our own zombie
            self._children.pop(name, None)
        try:
            pid = int(self.pid_path(name).read_text().strip())
        except (OSError, ValueError):
            return None
        if is_wireguard_go_for(pid, name, self.netns, self.wireguard_go):
            return pid
        return None

    def _write_pid(self, name: str, pid: int) -> None:
        tmp = self.pid_path(name).with_suffix(".pid.tmp")
        tmp.write_text(f"{pid}\n")
        os.replace(tmp, self.pid_path(name))

    def ensure_daemon(self, name: str) -> int | None:
        """Start wireguard-go for ``name`` unless a daemon already serves it.

        Returns the pid we own, or ``None`` when another daemon (not ours)
        answers on the socket.
        """
        check_ifname(name)
        pid = self.owned_pid(name)
        client = self._client(name)
        if client.alive():
            return pid  # ours, or None: another daemon answers on the socket
        if pid is None:
            pid = self._start(name)
        deadline = self._clock() + self.start_timeout
        while not client.alive():
            child = self._children.get(name)
            if child is not None and child.poll() is not None:
                self._children.pop(name, None)
                raise BackendError(
                    f"wireguard-go for {name} exited with status {child.returncode}: "
                    f"{self._log_tail(name)} (log: {self.log_path(name)})"
                )
            if self._clock() > deadline:
                raise BackendUnavailable(
                    f"wireguard-go pid {pid} for {name} did not open {self.socket_path(name)} "
                    f"within {self.start_timeout:g}s"
                )
            self._sleep(0.01)
        return pid

    def _start(self, name: str) -> int:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        cmd = [self.wireguard_go, "-f", name]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        self._rotate_log(name)
        log = open(self.log_path(name), "ab")  # noqa: SIM115 - handed to the child
        try:
            child = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survive the agent process and its signals
                close_fds=True,
            )
        except OSError as exc:
            raise BackendError(
                f"cannot start {self.wireguard_go} for {name}: {exc.strerror or exc}"
            ) from exc
        finally:
            log.close()
        self._children[name] = child
        self._write_pid(name, child.pid)
        return child.pid

    def stop(self, name: str, timeout: float = 5.0) -> bool:
        """SIGTERM the wireguard-go we own for ``name`` (never anyone else's).

        wireguard-go removes its socket and TUN on SIGTERM. Returns whether a
        daemon was stopped. For tests, the lab and decommissioning; ``apply``
        never stops a daemon.
        """
        pid = self.owned_pid(name)
        if pid is None:
            return False
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        deadline = self._clock() + timeout
        while self._clock() < deadline:
            child = self._children.get(name)
            if child is not None and child.poll() is not None:
                break
            if not is_wireguard_go_for(pid, name, self.netns, self.wireguard_go):
                break
            self._sleep(0.02)
        self._children.pop(name, None)
        try:
            self.pid_path(name).unlink()
        except FileNotFoundError:
            pass
        return True

    def _rotate_log(self, name: str) -> None:
        """Keep one previous log: wireguard-go logs every failed handshake."""
        path = self.log_path(name)
        try:
            if path.stat().st_size > LOG_ROTATE_BYTES:
                os.replace(path, path.with_suffix(".log.1"))
        except FileNotFoundError:
            pass

    def _log_tail(self, name: str) -> str:
        try:
            lines = self.log_path(name).read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1] if lines else "no output"

    # -- Backend protocol ------------------------------------------------------
    def observe(self, name: str) -> ObservedInterface:
        """The interface as it is. The ``get`` goes out first, so wireguard-go
        (tens of milliseconds for 10,000 peers) answers while ``ip`` is read in
        a thread; nothing listening on the socket is an absent interface,
        unless our wireguard-go still runs (then it does not answer: an error)."""
        client = self._client(name)
        try:
            asked = client.send(encode_get())
        except BackendUnavailable:
            pid = self.owned_pid(name)
            if pid is not None:
                raise BackendUnavailable(
                    f"wireguard-go pid {pid} for {name} runs but does not answer on "
                    f"{self.socket_path(name)}"
                ) from None
            return ObservedInterface(name=name, exists=False)
        reading = Background(self.links.observe, name, name="meshops-link")  # ``ip``, meanwhile
        try:
            wg = decode_get(name, client.receive(asked))
        except BackendUnavailable:
            reading.join()  # not needed any more
            # The daemon died between the probe and the request: absent once it is gone.
            if self.owned_pid(name) is None and not client.alive():
                return ObservedInterface(name=name, exists=False)
            raise
        link = reading.result()
        return structs.replace(
            wg,
            up=link.up,
            mtu=link.mtu,
            addresses=link.addresses,
            routes=link.routes,
            forwarding=link.forwarding,
        )

    def apply(self, ops: Sequence[Operation]) -> None:
        by_iface: dict[str, list[Operation]] = {}
        for op in ops:
            by_iface.setdefault(op.interface, []).append(op)
        for name, group in by_iface.items():
            self._apply_one(name, group)

    def _apply_one(self, name: str, ops: list[Operation]) -> None:
        if any(isinstance(op, CreateInterface) for op in ops):
            self.ensure_daemon(name)
        wg_ops = [op for op in ops if isinstance(op, WG_OPS)]
        link_ops = [op for op in ops if isinstance(op, LINK_OPS + ROUTING_OPS)]
        client = self._client(name)
        error: BackendError | BackendUnavailable | None = None
        for lines in transactions(wg_ops):
            try:
                client.set(lines, f"set {name}")
            except BackendUnavailable as exc:  # -98: only the port is missing; go on
                error = exc
            except BackendError:
                try:
                    self._apply_singly(client, name, wg_ops)
                except (BackendError, BackendUnavailable) as exc:
                    error = exc
                break
        self.links.apply(link_ops)  # link state does not depend on the WireGuard config
        if error is not None:
            raise error

    def _apply_singly(self, client: UapiClient, name: str, ops: list[Operation]) -> None:
        """After a refused batch (a set is not atomic): one transaction per op."""
        refused: list[str] = []
        busy: BackendUnavailable | None = None
        for op in ops:
            try:
                client.set(set_lines([op]), f"set {name}")
            except BackendUnavailable as exc:
                busy = exc
            except BackendError as exc:
                refused.append(f"{op} ({exc})")
        if not refused:
            _log.warning("wireguard-go refused the batch for %s but accepted each operation", name)
        if refused:
            raise BackendError(
                f"wireguard-go refused {len(refused)} operation(s) on {name}: "
                + "; ".join(refused[:5])
            )
        if busy is not None:
            raise busy

    def close(self) -> None:
        self.links.close()
