"""This host's interface addresses, read with one rtnetlink dump (stdlib only).

Used by ``reconciler.stun.client.discover`` for LAN candidates. A raw
``AF_NETLINK`` socket costs a few hundred microseconds and no imports, where
pyroute2 would cost the agent most of its start-up budget. Reads the current
network namespace. On a platform without netlink it returns nothing.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

# linux/rtnetlink.h, linux/netlink.h, linux/if_addr.h
RTM_NEWADDR, RTM_GETADDR = 20, 22
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_DADFAILED, IFA_F_TENTATIVE = 0x08, 0x40
NLMSG = struct.Struct("=IHHII")
IFADDRMSG = struct.Struct("=BBBBI")
RTATTR = struct.Struct("=HH")


@dataclass(frozen=True)
class InterfaceAddress:
    ifname: str
    address: str
    prefixlen: int


def _align(n: int) -> int:
    return (n + 3) & ~3


def _parse_addr(payload: bytes) -> tuple[int, int, int, str | None] | None:
    """(ifindex, prefixlen, flags, address) from one RTM_NEWADDR payload."""
    if len(payload) < IFADDRMSG.size:
        return None
    family, prefixlen, flags, _scope, index = IFADDRMSG.unpack_from(payload)
    attrs: dict[int, bytes] = {}
    pos = IFADDRMSG.size
    while pos + RTATTR.size <= len(payload):
        length, kind = RTATTR.unpack_from(payload, pos)
        if length < RTATTR.size:
            break
        attrs[kind] = payload[pos + RTATTR.size : pos + length]
        pos += _align(length)
    if IFA_FLAGS in attrs and len(attrs[IFA_FLAGS]) == 4:
        flags = struct.unpack("=I", attrs[IFA_FLAGS])[0]
    # IFA_LOCAL is the local side of a point-to-point IPv4 link; IFA_ADDRESS otherwise.
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    size = {socket.AF_INET: 4, socket.AF_INET6: 16}.get(family)
    if raw is None or size is None or len(raw) != size:
        return index, prefixlen, flags, None
    return index, prefixlen, flags, str(ipaddress.ip_address(raw))


def interface_addresses() -> tuple[InterfaceAddress, ...]:
    """Every usable address on every interface (tentative/failed DAD skipped)."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    except (AttributeError, OSError):
        return ()
    found: list[InterfaceAddress] = []
    names: dict[int, str] = {}
    try:
        sock.settimeout(1.0)
        sock.bind((0, 0))
        seq = os.getpid() & 0xFFFF
        body = IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        sock.send(NLMSG.pack(NLMSG.size + len(body), RTM_GETADDR,
                             NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
        done = False
        while not done:
            chunk = sock.recv(65536)
            pos = 0
            while pos + NLMSG.size <= len(chunk):
                length, kind, _flags, _seq, _pid = NLMSG.unpack_from(chunk, pos)
                if length < NLMSG.size:
                    done = True
                    break
                if kind in (NLMSG_DONE, NLMSG_ERROR):
                    done = True
                    break
                if kind == RTM_NEWADDR:
                    parsed = _parse_addr(chunk[pos + NLMSG.size : pos + length])
                    if parsed is not None and parsed[3] is not None:
                        index, prefixlen, flags, address = parsed
                        if not flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED):
                            if index not in names:
                                try:
                                    names[index] = socket.if_indextoname(index)
                                except OSError:
                                    names[index] = f"if{index}"
                            found.append(InterfaceAddress(names[index], address, prefixlen))
                pos += _align(length)
    except OSError:
        return tuple(found)
    finally:
        sock.close()
    return tuple(found)


def usable_for_peers(address: str) -> bool:
    """False for loopback, link-local, multicast, unspecified and reserved addresses."""
    ip = ipaddress.ip_address(address)
    return not (ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified
                or ip.is_reserved)


def lan_addresses(
    exclude_ifnames: Sequence[str] = (),
    exclude_networks: Sequence[str] = (),
    addresses: Sequence[InterfaceAddress] | None = None,
) -> tuple[str, ...]:
    """Addresses a peer on the same LAN could reach: IPv4 first, then IPv6.

    ``exclude_ifnames`` drops interfaces (the WireGuard interface itself);
    ``exclude_networks`` drops addresses inside CIDRs (the org's tunnel range).
    """
    nets = [ipaddress.ip_network(n, strict=False) for n in exclude_networks]
    seen: list[str] = []
    for entry in interface_addresses() if addresses is None else addresses:
        if entry.ifname in exclude_ifnames or not usable_for_peers(entry.address):
            continue
        ip = ipaddress.ip_address(entry.address)
        if any(ip.version == n.version and ip in n for n in nets):
            continue
        if entry.address not in seen:
            seen.append(entry.address)
    return tuple(sorted(seen, key=lambda a: ipaddress.ip_address(a).version))
