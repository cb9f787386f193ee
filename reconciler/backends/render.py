"""Render backend: a wg-quick configuration file instead of a live device.

For devices no agent runs on (phones, routers): ``meshops agent render
--format wg-quick`` calls ``render_wg_quick(desired)``. ``RenderBackend``
(``open_backend("render", path=...)``) lets the agent's normal
observe/plan/apply loop maintain such a file: ``observe`` parses it,
``apply`` replays the operations on the parsed state
(``reconciler.converge.simulate``) and rewrites the file atomically, mode 0600
(it holds the private key).

A device without an agent cannot enforce policy: nothing on it filters what
its peers send (no nftables rules, no re-check of the manifest), and its
owner can edit the file. The mesh still limits it from the other side: only
the peers the policy allows it get its key, and their agents enforce the
policy on what reaches them (docs/policy.md). The rendered file says so in
its header.

The file imports on the official phone apps and still works with
``wg-quick up`` and ``wg-quick strip | wg setconf``. So it uses only the keys
both apps accept, which are also the keys wg-quick knows:

* ``[Interface]``: ``PrivateKey``, ``ListenPort``, ``Address``, ``DNS``, ``MTU``
  (wireguard-apple ``Sources/Shared/Model/TunnelConfiguration+WgQuickConfig.swift``
  ``interfaceSectionKeys``; wireguard-android ``tunnel/.../config/Interface.java``
  ``parse`` also takes Included/ExcludedApplications, which iOS refuses);
* ``[Peer]``: ``PublicKey``, ``PresharedKey``, ``AllowedIPs``, ``Endpoint``,
  ``PersistentKeepalive`` (``peerSectionKeys``; ``Peer.java`` ``parse``).

Both apps refuse any other key, so there is no ``PostUp``/``PostDown``/``Table``.
Nothing is lost for routes: wg-quick and both apps route every peer's
``AllowedIPs`` themselves, and every extra route the agent plans
(``DesiredInterface.routes``: subnets that peers advertise) is part of some
peer's ``AllowedIPs``; a route outside all of them would carry nothing,
since WireGuard drops packets no peer accepts. Everything after ``#`` is a
comment to all three parsers, so the state the backend needs beyond the keys
lives in comments:

* ``# meshops: route CIDR`` for each extra route;
* ``# meshops: forwarding ...`` on a relay, saying which sysctls to turn on;
  without an agent nobody turns IP forwarding on (a phone cannot relay).

Files written by older versions with ``PostUp = ip route``/``sysctl`` lines
are read without them, so the next ``apply`` plans the routes and forwarding
again and rewrites the file in this form.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from reconciler.converge.keys import public_key
from reconciler.converge.ops import (
    AddPeer,
    CreateInterface,
    Operation,
    SetPrivateKey,
    UpdatePeer,
)
from reconciler.converge.simulate import simulate
from reconciler.errors import BackendError
from reconciler.fsio import atomic_write
from reconciler.model.wg import DesiredInterface, ObservedInterface, ObservedPeer

HEADER = (
    "# Written by meshops; changes are overwritten on the next run.\n"
    "# No meshops agent runs with this file: this device does not enforce the mesh policy."
)
# The keys the WireGuard iOS and Android apps accept (see the module docstring);
# anything else makes them refuse the whole file.
INTERFACE_KEYS = ("PrivateKey", "ListenPort", "Address", "DNS", "MTU")
PEER_KEYS = ("PublicKey", "PresharedKey", "AllowedIPs", "Endpoint", "PersistentKeepalive")
MARK = "# meshops:"
IPV4_FORWARD = "net.ipv4.ip_forward=1"
IPV6_FORWARD = "net.ipv6.conf.all.forwarding=1"


def _forwarding_line(addresses: Sequence[str]) -> str:
    """The relay's forwarding note: IPv6 too only with a global IPv6 address
    (IPv6 forwarding makes Linux ignore router advertisements)."""
    sysctls = [IPV4_FORWARD]
    if any(
        ipaddress.ip_interface(a).ip.version == 6 and not ipaddress.ip_interface(a).ip.is_link_local
        for a in addresses
    ):
        sysctls.append(IPV6_FORWARD)
    return f"{MARK} forwarding: this device relays; turn on {' and '.join(sysctls)}"


@dataclasses.dataclass(frozen=True)
class _RenderPeer:
    name: str
    public_key: str
    allowed_ips: tuple[str, ...]
    endpoint: str | None
    keepalive: int


def _render(
    private_key: str,
    listen_port: int,
    addresses: Sequence[str],
    mtu: int,
    routes: Sequence[str],
    peers: Sequence[_RenderPeer],
    forwarding: bool = False,
) -> str:
    lines = [HEADER, "[Interface]", f"PrivateKey = {private_key}"]
    if addresses:
        lines.append(f"Address = {', '.join(addresses)}")
    if listen_port:
        lines.append(f"ListenPort = {listen_port}")
    if mtu:
        lines.append(f"MTU = {mtu}")
    if forwarding:
        lines.append(_forwarding_line(addresses))
    lines += [f"{MARK} route {route}" for route in routes]
    for peer in sorted(peers, key=lambda p: (p.name, p.public_key)):
        lines.append("")
        lines.append("[Peer]")
        if peer.name:
            lines.append(f"# {peer.name}")
        lines.append(f"PublicKey = {peer.public_key}")
        if peer.allowed_ips:
            lines.append(f"AllowedIPs = {', '.join(peer.allowed_ips)}")
        if peer.endpoint:
            lines.append(f"Endpoint = {peer.endpoint}")
        if peer.keepalive:
            lines.append(f"PersistentKeepalive = {peer.keepalive}")
    return "\n".join(lines) + "\n"


def render_wg_quick(desired: DesiredInterface) -> str:
    """The wg-quick configuration text for ``desired`` (contains the private key)."""
    peers = [
        _RenderPeer(p.name, p.public_key, tuple(p.allowed_ips), p.endpoint, p.keepalive)
        for p in desired.peers.values()
    ]
    return _render(
        desired.private_key,
        desired.listen_port,
        desired.addresses,
        desired.mtu,
        desired.routes,
        peers,
        desired.forwarding,
    )


@dataclasses.dataclass
class ParsedConfig:
    """What ``parse_wg_quick`` reads back from a file."""

    private_key: str | None = None
    listen_port: int = 0
    mtu: int = 0
    addresses: list[str] = dataclasses.field(default_factory=list)
    routes: list[str] = dataclasses.field(default_factory=list)
    peers: list[_RenderPeer] = dataclasses.field(default_factory=list)
    forwarding: bool = False  # a "# meshops: forwarding" note


def _int(value: str, where: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise BackendError(f"{where}: {value!r} is not a whole number") from None


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def parse_wg_quick(text: str, where: str = "wg-quick config") -> ParsedConfig:
    """Parse a wg-quick file (the subset ``_render`` writes, plus any order)."""
    cfg = ParsedConfig()
    section = ""
    peer: dict[str, object] = {}

    def flush() -> None:
        if section == "peer":
            if "PublicKey" not in peer:
                raise BackendError(f"{where}: a [Peer] has no PublicKey")
            cfg.peers.append(
                _RenderPeer(
                    name=str(peer.get("name", "")),
                    public_key=str(peer["PublicKey"]),
                    allowed_ips=tuple(_split(str(peer.get("AllowedIPs", "")))),
                    endpoint=str(peer["Endpoint"]) if "Endpoint" in peer else None,
                    keepalive=_int(str(peer.get("PersistentKeepalive", "0")),
                                   f"{where}: PersistentKeepalive"),
                )
            )

    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith(MARK) and section == "interface":
            what = line[len(MARK):].split()
            if what[:1] == ["route"] and len(what) == 2:
                cfg.routes.append(what[1])
            elif what[:1] == ["forwarding:"]:
                cfg.forwarding = True
            continue
        if line.startswith("#"):
            if section == "peer" and "name" not in peer and "PublicKey" not in peer:
                peer["name"] = line[1:].strip()
            continue
        line = line.split("#", 1)[0].strip()  # wg-quick and the apps end a line at '#'
        if line.startswith("["):
            flush()
            section = line.strip("[]").strip().lower()
            peer = {}
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise BackendError(f"{where}:{number}: expected 'Key = Value'")
        key, value = key.strip(), value.strip()
        if section == "interface":
            if key == "PrivateKey":
                cfg.private_key = value
            elif key == "ListenPort":
                cfg.listen_port = _int(value, f"{where}:{number}: ListenPort")
            elif key == "MTU":
                cfg.mtu = _int(value, f"{where}:{number}: MTU")
            elif key == "Address":
                cfg.addresses += _split(value)
            # Anything else (PostUp from older meshops, DNS set by hand) is not
            # state this backend manages; the next apply rewrites the file.
        elif section == "peer":
            peer[key] = value
    flush()
    return cfg


class RenderBackend:
    """Keeps a wg-quick file as the "interface" (see module docstring)."""

    def __init__(self, *, path: str | os.PathLike[str], **_ignored: object) -> None:
        self.path = Path(path)

    def _read(self) -> ParsedConfig | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BackendError(f"cannot read {self.path}: {exc.strerror}") from exc
        return parse_wg_quick(text, str(self.path))

    def observe(self, name: str) -> ObservedInterface:
        cfg = self._read()
        if cfg is None:
            return ObservedInterface(name=name, exists=False)
        return ObservedInterface(
            name=name,
            exists=True,
            public_key=public_key(cfg.private_key) if cfg.private_key else None,
            listen_port=cfg.listen_port,
            addresses=tuple(cfg.addresses),
            routes=tuple(cfg.routes),
            up=True,  # a rendered interface is up whenever wg-quick brings it up
            mtu=cfg.mtu,
            forwarding=cfg.forwarding,
            peers={
                p.public_key: ObservedPeer(p.public_key, p.allowed_ips, p.endpoint, p.keepalive)
                for p in cfg.peers
            },
        )

    def apply(self, ops: Sequence[Operation]) -> None:
        if not ops:
            return
        cfg = self._read()
        name = ops[0].interface
        before = self.observe(name)
        private = cfg.private_key if cfg else None
        names = {p.public_key: p.name for p in cfg.peers} if cfg else {}
        for op in ops:
            if isinstance(op, (CreateInterface, SetPrivateKey)):
                private = op.private_key
            elif isinstance(op, AddPeer):
                names[op.peer.public_key] = op.peer.name
            elif isinstance(op, UpdatePeer) and op.name:
                names[op.public_key] = op.name
        if private is None:
            raise BackendError(f"{self.path}: no private key to render (plan has no key)")
        after = simulate(before, ops)
        peers = [
            _RenderPeer(names.get(k, ""), k, p.allowed_ips, p.endpoint, p.keepalive)
            for k, p in after.peers.items()
        ]
        text = _render(private, after.listen_port, after.addresses, after.mtu, after.routes, peers,
                       bool(after.forwarding))
        write_private(self.path, text)

    def close(self) -> None:
        return None


def write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically with mode 0600 (it contains a private key)."""
    try:
        atomic_write(path, text.encode(), mode=0o600)
    except OSError as exc:
        raise BackendError(f"cannot write {path}: {exc.strerror}") from exc
