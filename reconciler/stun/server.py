"""A small STUN responder: answers Binding requests with the source address it saw.

``respond()`` is the pure core (datagram + source in, reply or None out).
``StunResponder`` runs it on a UDP socket in a background thread (tests, the lab,
``scripts/bench``); ``create_stun_endpoint()`` runs it as an asyncio datagram
endpoint inside ``meshops hub serve``.

What it answers (RFC 5389 section 7.3, RFC 3489 compatibility per section 12.2):

* RFC 5389 Binding request -> success with XOR-MAPPED-ADDRESS, MAPPED-ADDRESS (so
  RFC 3489 readers find an address too), SOFTWARE and FINGERPRINT.
* RFC 3489 Binding request (no magic cookie, e.g. pystun3) -> success with
  MAPPED-ADDRESS and SOFTWARE, the cookie field echoed as part of the 128-bit id.
* A CHANGE-REQUEST asking for another IP or port -> no answer: this responder has one
  address, and answering from the wrong one would make the client believe it is
  behind a full-cone NAT. (A silent drop is also what RFC 3489 clients expect when
  the changed answer is filtered; pystun3 hangs on error responses.)
* Unknown comprehension-required attributes -> 420 with UNKNOWN-ATTRIBUTES.
* Another method in an RFC 5389 request -> 400.
* Responses, indications, garbage, a wrong FINGERPRINT -> silently ignored.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any, Self

from reconciler.errors import ConfigError
from reconciler.stun import message as m

SOFTWARE = "meshops"
KNOWN_REQUEST_ATTRIBUTES = frozenset(
    {
        m.MAPPED_ADDRESS, m.RESPONSE_ADDRESS, m.CHANGE_REQUEST, m.SOURCE_ADDRESS,
        m.CHANGED_ADDRESS, m.USERNAME, m.MESSAGE_INTEGRITY, m.ERROR_CODE,
        m.UNKNOWN_ATTRIBUTES, m.REALM, m.NONCE, m.XOR_MAPPED_ADDRESS,
    }
)


@dataclass
class StunStats:
    """Counters the hub exports as metrics."""

    received: int = 0
    answered: int = 0
    errors_sent: int = 0
    ignored: int = 0


def _clean_source(source: tuple) -> tuple[str, int]:
    host, port = source[0], int(source[1])
    addr = ipaddress.ip_address(str(host).split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # dual-stack socket: report the IPv4 address
    return str(addr), port


def _software_value(software: str, classic: bool) -> bytes:
    value = software.encode()
    if classic:  # RFC 3489 readers (pystun3) step over attributes without padding
        value += b" " * (-len(value) % 4)
    return value


def _error(req: m.Message, code: int, reason: str, extra: list[tuple[int, bytes]]) -> bytes:
    attrs = [(m.ERROR_CODE, m.encode_error_code(code, reason)), *extra]
    attrs.append((m.SOFTWARE, _software_value(SOFTWARE, req.classic)))
    return m.encode(
        req.method, m.ERROR, req.transaction_id, attrs, cookie=req.cookie,
        add_fingerprint=not req.classic,
    )


def respond(data: bytes, source: tuple, *, software: str = SOFTWARE) -> bytes | None:
    """The reply to one datagram from ``source`` (``(host, port, ...)``), or None."""
    req = m.decode(data)
    if req is None or req.cls != m.REQUEST:
        return None
    if m.verify_fingerprint(req) is False:
        return None  # RFC 5389 section 7.3: not a STUN message after all
    if req.method != m.BINDING:
        return None if req.classic else _error(req, 400, "Bad Request", [])
    change = req.get(m.CHANGE_REQUEST)
    if change is not None and (len(change) != 4 or struct.unpack("!I", change)[0] & 0x6):
        return None
    unknown = sorted(
        {a.type for a in req.attributes if a.type < 0x8000} - KNOWN_REQUEST_ATTRIBUTES
    )
    if unknown:
        listed = b"".join(struct.pack("!H", t) for t in unknown)
        return _error(req, 420, "Unknown Attribute", [(m.UNKNOWN_ATTRIBUTES, listed)])
    try:
        ip, port = _clean_source(source)
    except (ValueError, IndexError, TypeError):
        return None
    attrs: list[tuple[int, bytes]] = []
    if not req.classic:
        attrs.append((m.XOR_MAPPED_ADDRESS, m.encode_xor_address(ip, port, req.transaction_id)))
    attrs.append((m.MAPPED_ADDRESS, m.encode_address(ip, port)))
    attrs.append((m.SOFTWARE, _software_value(software, req.classic)))
    return m.encode(
        m.BINDING, m.SUCCESS, req.transaction_id, attrs, cookie=req.cookie,
        add_fingerprint=not req.classic,
    )


def _handle(data: bytes, source: tuple, stats: StunStats, software: str) -> bytes | None:
    stats.received += 1
    try:
        reply = respond(data, source, software=software)
    except Exception:  # noqa: BLE001 - a datagram must never take the responder down
        reply = None
    if reply is None:
        stats.ignored += 1
    elif reply[0:2] == struct.pack("!H", m.message_type(m.BINDING, m.SUCCESS)):
        stats.answered += 1
    else:
        stats.errors_sent += 1
    return reply


def _bind_error(host: str, port: int, exc: OSError) -> ConfigError:
    why = {
        errno.EADDRINUSE: "the port is already in use",
        errno.EADDRNOTAVAIL: "the address is not on this host",
        errno.EACCES: "permission denied (ports below 1024 need root)",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    where = m.format_endpoint(host, port)
    return ConfigError(f"STUN responder cannot bind udp {where}: {why}; choose another --stun")


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class StunResponder:
    """A STUN responder on its own UDP socket and thread.

    ``StunResponder("127.0.0.1", 0).start()`` binds an ephemeral port (``.port``).
    Also a context manager. ``stop()`` returns within about ``poll`` seconds.
    """

    def __init__(self, host: str = "0.0.0.0", port: int = 3478, *, software: str = SOFTWARE,
                 poll: float = 0.2) -> None:
        self.host = host
        self.port = port
        self.software = software
        self.stats = StunStats()
        self._poll = poll
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> StunResponder:
        if self._thread is not None:
            return self
        sock = socket.socket(_family(self.host), socket.SOCK_DGRAM)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise _bind_error(self.host, self.port, exc) from exc
        sock.settimeout(self._poll)
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._serve, name=f"stun-{self.host}:{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def _serve(self) -> None:
        sock = self._sock
        assert sock is not None
        while not self._stopping.is_set():
            try:
                data, source = sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                continue  # e.g. ICMP errors surfaced on the socket
            reply = _handle(data, source, self.stats, self.software)
            if reply is not None:
                try:
                    sock.sendto(reply, source)
                except OSError:
                    self.stats.ignored += 1

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=self._poll * 5 + 1)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class StunProtocol(asyncio.DatagramProtocol):
    """The responder as an asyncio datagram protocol (embedded by the hub)."""

    def __init__(self, software: str = SOFTWARE) -> None:
        self.software = software
        self.stats = StunStats()
        self.transport: Any = None  # asyncio's _SelectorDatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        reply = _handle(data, addr, self.stats, self.software)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        self.stats.ignored += 1  # ICMP errors for earlier replies; nothing to do


async def create_stun_endpoint(
    loop: asyncio.AbstractEventLoop, host: str, port: int, *, software: str = SOFTWARE
) -> tuple[asyncio.DatagramTransport, StunProtocol]:
    """Serve STUN on ``host:port`` inside ``loop``; close the transport to stop."""
    try:
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: StunProtocol(software), local_addr=(host, port), family=_family(host)
        )
    except OSError as exc:
        raise _bind_error(host, port, exc) from exc
    return transport, protocol
