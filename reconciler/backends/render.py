"""Render backend: a wg-quick configuration file instead of a live device.

For devices no agent runs on (phones, routers): ``meshops agent render
--format wg-quick`` calls ``render_wg_quick(desired)``. ``RenderBackend``
(``open_backend("render", path=...)``) lets the agent's normal
observe/plan/apply loop maintain such a file: ``observe`` parses it,
``apply`` replays the operations on the parsed state
(``reconciler.converge.simulate``) and rewrites the file atomically, mode 0600
(it holds the private key).

Format (wg-quick(8)): ``[Interface]`` with ``PrivateKey``, ``Address``,
``ListenPort``, ``MTU``; one ``[Peer]`` per peer with a ``# name`` comment,
``PublicKey``, ``AllowedIPs``, ``Endpoint``, ``PersistentKeepalive``. Extra
routes become ``PostUp = ip route replace CIDR dev %i`` lines (wg-quick
already routes every peer's AllowedIPs). A relay (``forwarding``) gets
``PostUp = sysctl -w net.ipv4.ip_forward=1``, plus
``PostUp = sysctl -w net.ipv6.conf.all.forwarding=1`` when it has a global
IPv6 address; there is no ``PostDown`` undoing it (meshops never turns
forwarding off: the host may forward for other reasons).
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

HEADER = "# Written by meshops; changes are overwritten on the next run."
IPV4_FORWARD_UP = "sysctl -w net.ipv4.ip_forward=1"
IPV6_FORWARD_UP = "sysctl -w net.ipv6.conf.all.forwarding=1"


def _forwarding_lines(addresses: Sequence[str]) -> list[str]:
    """The relay's ``PostUp`` sysctls: IPv6 too only with a global IPv6 address
    (IPv6 forwarding makes Linux ignore router advertisements)."""
    lines = [f"PostUp = {IPV4_FORWARD_UP}"]
    for text in addresses:
        ip = ipaddress.ip_interface(text).ip
        if ip.version == 6 and not ip.is_link_local:
            lines.append(f"PostUp = {IPV6_FORWARD_UP}")
            break
    return lines


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
        lines += _forwarding_lines(addresses)
    lines += [f"PostUp = ip route replace {route} dev %i" for route in routes]
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
    forwarding: bool = False  # a PostUp turns net.ipv4.ip_forward on


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
                    keepalive=int(str(peer.get("PersistentKeepalive", "0"))),
                )
            )

    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if section == "peer" and "name" not in peer and "PublicKey" not in peer:
                peer["name"] = line[1:].strip()
            continue
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
                cfg.listen_port = int(value)
            elif key == "MTU":
                cfg.mtu = int(value)
            elif key == "Address":
                cfg.addresses += _split(value)
            elif key == "PostUp" and value.startswith("ip route replace "):
                cfg.routes.append(value.split()[3])
            elif key == "PostUp" and " ".join(value.split()) == IPV4_FORWARD_UP:
                cfg.forwarding = True
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
