"""Kernel backend: WireGuard over generic netlink with pyroute2's ``WireGuard``.

Built by ``reconciler.backends.open_backend("kernel", links=..., netns=...)``
on hosts with the WireGuard module. The netlink calls sit behind one small
seam: ``wireguard_factory()`` returns an object with ``info(ifname)`` and
``set(ifname, private_key=, listen_port=, peer=)`` (pyroute2's
``WireGuard``), so unit tests feed recorded messages or fakes.

* ``decode_info(name, msgs)`` turns the ``WG_CMD_GET_DEVICE`` dump (one or
  more messages; big peer lists span several) into an ``ObservedInterface``.
* ``peer_request(op)`` turns a peer operation into pyroute2's peer dict.
  Allowed IPs are always replaced as a whole (``replace_allowed_ips``),
  like the UAPI backend.
* ``CreateInterface`` asks ``links.create_wireguard(name)`` for the link
  (``ip link add NAME type wireguard``), then sets key and port.

Without the module, pyroute2 raises ``NetlinkError(2)`` (the ``wireguard``
generic netlink family is missing): that becomes ``BackendUnavailable``
pointing at ``--backend userspace``.
"""

from __future__ import annotations

import base64
import errno
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from reconciler import structs
from reconciler.backends.base import LinkControl
from reconciler.backends.uapi import uapi_endpoint
from reconciler.converge.keys import public_key as derive_public_key
from reconciler.converge.ops import (
    LINK_OPS,
    ROUTING_OPS,
    WG_OPS,
    AddPeer,
    CreateInterface,
    Operation,
    RemovePeer,
    SetFwmark,
    SetListenPort,
    SetPrivateKey,
    UpdatePeer,
)
from reconciler.errors import BackendError, BackendUnavailable, ConfigError
from reconciler.model.endpoint import Endpoint
from reconciler.model.wg import ObservedInterface, ObservedPeer

NO_MODULE = (
    "the WireGuard kernel module is not available (generic netlink family "
    "'wireguard' not found); use --backend userspace (wireguard-go)"
)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("ascii")
    return str(value)


def _field(obj: Any, key: str, default: Any = None) -> Any:
    try:
        return obj[key]
    except (KeyError, TypeError, IndexError):
        return default


def _decode_peer(peer: Any) -> ObservedPeer:
    key = _text(peer.get_attr("WGPEER_A_PUBLIC_KEY"))
    endpoint = None
    ep = peer.get_attr("WGPEER_A_ENDPOINT")
    if ep is not None and _field(ep, "addr") and _field(ep, "port"):
        addr = _text(_field(ep, "addr"))
        port = int(_field(ep, "port"))
        endpoint = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
    hs = peer.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
    sec = int(_field(hs, "tv_sec", 0) or 0)
    nsec = int(_field(hs, "tv_nsec", 0) or 0)
    ips = []
    for allowed in peer.get_attr("WGPEER_A_ALLOWEDIPS") or ():
        addr = _field(allowed, "addr")
        if addr:
            ips.append(_text(addr))
    return ObservedPeer(
        public_key=key,
        allowed_ips=tuple(sorted(ips)),
        endpoint=endpoint,
        keepalive=int(peer.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0),
        last_handshake=(sec + nsec / 1e9) if (sec or nsec) else None,
        rx_bytes=int(peer.get_attr("WGPEER_A_RX_BYTES") or 0),
        tx_bytes=int(peer.get_attr("WGPEER_A_TX_BYTES") or 0),
    )


def decode_info(name: str, msgs: Iterable[Any]) -> ObservedInterface:
    """A ``WG_CMD_GET_DEVICE`` dump -> the WireGuard part of an ``ObservedInterface``.

    A peer split over two messages (many allowed IPs) is merged.
    """
    private = None
    port = fwmark = 0
    peers: dict[str, ObservedPeer] = {}
    for msg in msgs:
        pk = msg.get_attr("WGDEVICE_A_PRIVATE_KEY")
        if pk:
            private = _text(pk)
        port = int(msg.get_attr("WGDEVICE_A_LISTEN_PORT") or port)
        fwmark = int(msg.get_attr("WGDEVICE_A_FWMARK") or fwmark)
        for peer in msg.get_attr("WGDEVICE_A_PEERS") or ():
            decoded = _decode_peer(peer)
            old = peers.get(decoded.public_key)
            if old is not None:
                decoded = structs.replace(
                    old, allowed_ips=tuple(sorted(old.allowed_ips + decoded.allowed_ips))
                )
            peers[decoded.public_key] = decoded
    has_key = private is not None and base64.b64decode(private) != bytes(32)
    return ObservedInterface(
        name=name,
        exists=True,
        public_key=derive_public_key(private) if has_key and private else None,
        listen_port=port,
        fwmark=fwmark,
        peers=peers,
    )


def _endpoint_fields(endpoint: str) -> dict[str, Any]:
    parsed = Endpoint.parse(uapi_endpoint(endpoint))  # validates: IP literal + port
    return {"endpoint_addr": parsed.host, "endpoint_port": parsed.port}


def peer_request(op: AddPeer | RemovePeer | UpdatePeer) -> dict[str, Any]:
    """pyroute2 ``WireGuard.set(peer=...)`` dict for one peer operation."""
    if isinstance(op, RemovePeer):
        return {"public_key": op.public_key, "remove": True}
    if isinstance(op, AddPeer):
        p = op.peer
        req: dict[str, Any] = {
            "public_key": p.public_key,
            "replace_allowed_ips": True,
            "allowed_ips": list(p.allowed_ips),
            "persistent_keepalive": p.keepalive,
        }
        if p.endpoint is not None:
            req.update(_endpoint_fields(p.endpoint))
        return req
    req = {"public_key": op.public_key}
    if op.allowed_ips is not None:
        req["replace_allowed_ips"] = True
        req["allowed_ips"] = list(op.allowed_ips)
    if op.endpoint is not None:
        req.update(_endpoint_fields(op.endpoint))
    if op.keepalive is not None:
        req["persistent_keepalive"] = op.keepalive
    return req


def _default_factory(netns: str | None) -> Callable[[], Any]:
    def make() -> Any:
        from pyroute2 import WireGuard  # lazy: ~0.2 s to import

        if not netns:
            return WireGuard()
        from pyroute2.netns import popns, pushns

        # A netlink socket stays in the namespace it was created in.
        pushns(netns)
        try:
            return WireGuard()
        finally:
            popns()

    return make


def _translate(exc: Exception, what: str) -> BackendError | BackendUnavailable:
    code = getattr(exc, "code", None)
    if code == errno.ENOENT:
        return BackendUnavailable(f"{what}: {NO_MODULE}", delay=60.0)
    if code == errno.ENODEV:
        return BackendUnavailable(f"{what}: the interface does not exist (yet)")
    if code == errno.EPERM:
        return BackendError(f"{what}: permission denied (needs CAP_NET_ADMIN)")
    if code == errno.EADDRINUSE:
        return BackendUnavailable(f"{what}: listen port is already in use")
    detail = errno.errorcode.get(code, str(code)) if isinstance(code, int) else type(exc).__name__
    return BackendError(f"{what}: refused by the kernel ({detail})")


class KernelBackend:
    """WireGuard netlink + injected ``links`` (see module docstring)."""

    def __init__(
        self,
        *,
        links: LinkControl | None = None,
        netns: str | None = None,
        wireguard_factory: Callable[[], Any] | None = None,
    ) -> None:
        if links is None:
            raise ConfigError(
                "the kernel backend needs links= (reconciler.net.iproute.IPRouteLinks) "
                "for link creation, MTU, link state, addresses and routes"
            )
        self.links = links
        self.netns = netns
        self._factory = wireguard_factory or _default_factory(netns)
        self._wg: Any = None

    def _socket(self) -> Any:
        if self._wg is None:
            try:
                self._wg = self._factory()
            except (BackendError, BackendUnavailable):
                raise
            except Exception as exc:  # NetlinkError(2) without the module
                raise _translate(exc, "open WireGuard netlink") from exc
        return self._wg

    def observe(self, name: str) -> ObservedInterface:
        link = self.links.observe(name)
        if not link.exists:
            return ObservedInterface(name=name, exists=False)
        wg = self._socket()
        try:
            msgs = wg.info(name)
        except Exception as exc:
            if getattr(exc, "code", None) == errno.ENODEV:
                return ObservedInterface(name=name, exists=False)
            raise _translate(exc, f"read {name}") from exc
        state = decode_info(name, msgs)
        return structs.replace(
            state, up=link.up, mtu=link.mtu, addresses=link.addresses, routes=link.routes,
            forwarding=link.forwarding,
        )

    def apply(self, ops: Sequence[Operation]) -> None:
        for op in ops:
            if isinstance(op, CreateInterface):
                self.links.create_wireguard(op.interface)
        wg_ops = [op for op in ops if isinstance(op, WG_OPS)]
        wg = self._socket() if wg_ops else None
        for op in wg_ops:
            try:
                if isinstance(op, CreateInterface):
                    wg.set(op.interface, private_key=op.private_key, listen_port=op.listen_port)
                elif isinstance(op, SetPrivateKey):
                    wg.set(op.interface, private_key=op.private_key)
                elif isinstance(op, SetListenPort):
                    wg.set(op.interface, listen_port=op.listen_port)
                elif isinstance(op, SetFwmark):
                    wg.set(op.interface, fwmark=op.fwmark)
                elif isinstance(op, (AddPeer, RemovePeer, UpdatePeer)):
                    wg.set(op.interface, peer=peer_request(op))
            except (BackendError, BackendUnavailable):
                raise
            except ValueError as exc:  # pyroute2 key checks
                raise BackendError(f"{op}: {exc}") from exc
            except Exception as exc:
                raise _translate(exc, str(op)) from exc
        self.links.apply([op for op in ops if isinstance(op, LINK_OPS + ROUTING_OPS)])

    def close(self) -> None:
        if self._wg is not None:
            self._wg.close()
            self._wg = None
        self.links.close()
