"""Endpoint discovery: the mapping test from the WireGuard listen port (pystun3 inside).

Called by the agent (``reconciler.agent``) before it starts or re-binds its
WireGuard interface: ``discover(listen_port, servers)`` binds the listen port,
sends one Binding request to each STUN server from it, and compares what the
servers saw. Different mapped addresses mean endpoint-dependent ("symmetric")
mapping; the same address everywhere means endpoint-independent mapping. It also
lists the LAN candidates. pystun3's own NAT classification (``get_ip_info``) is
never used: Linux conntrack makes it call plain MASQUERADE "Symmetric NAT".

This is the only module that imports pystun3. How pystun3 is kept safe:

* It is always given a host (``stun_test(sock, host, port, ...)``), so it never
  touches its list of public servers.
* It gets a socket proxy, not the socket. The proxy sends only to the resolved
  server address, enforces one hard deadline per server (every ``recvfrom`` waits at
  most the time left, and a ``sendto`` after the deadline raises), and hands pystun3
  only well-formed Binding responses for its own transaction from that server.
  pystun3 loops forever on an error response; the proxy records the error and ends
  the exchange instead. So the timeout is hard without threads.
* When pystun3 finds no MAPPED-ADDRESS (an RFC 5389-only server sends just
  XOR-MAPPED-ADDRESS) our own codec reads the same response.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.errors import BackendUnavailable, ConfigError
from reconciler.model.endpoint import Endpoint
from reconciler.model.endpoints import Candidate
from reconciler.stun import message as m
from reconciler.stun.localaddr import lan_addresses

MAPPING_INDEPENDENT = "independent"
MAPPING_DEPENDENT = "dependent"
MAPPING_UNKNOWN = "unknown"
ATTEMPTS = 4  # pystun3 sends a request up to 4 times before giving up

Clock = Callable[[], float]


@dataclass(frozen=True)
class Discovery:
    """What discovery learned. ``mapped`` pairs a server ("host:port") with the
    address it saw ("ip:port"); ``local`` holds LAN candidates ("ip:port")."""

    mapped: tuple[tuple[str, str], ...]
    mapping: str  # independent | dependent | unknown
    public_ip: str | None
    local: tuple[str, ...]
    note: str = ""  # why the mapping is unknown, or what was degraded
    problems: tuple[str, ...] = field(default=())  # per-server failures, for logs

    def candidates(self) -> tuple[Candidate, ...]:
        """STUN then local candidates, without duplicates, for the endpoint report."""
        out: list[Candidate] = []
        for _server, address in self.mapped:
            if all(c.address != address for c in out):
                out.append(Candidate("stun", address))
        out.extend(Candidate("local", a) for a in self.local if all(c.address != a for c in out))
        return tuple(out)


@dataclass(frozen=True)
class BindingAnswer:
    server: str  # "host:port" as configured
    mapped: tuple[str, int] | None
    error: str | None  # why there is no mapped address


class _ExchangeEnded(Exception):
    """Raised into pystun3 (from ``sendto``, which it does not catch) to stop it."""


class _GuardedSocket:
    """The socket pystun3 sees: one server, one deadline, only valid answers."""

    def __init__(self, sock: socket.socket, server: tuple[Any, ...], deadline: float,
                 attempt: float, clock: Clock) -> None:
        self._sock, self._server, self._deadline = sock, server, deadline
        self._attempt, self._clock = attempt, clock
        self._sent_id: bytes | None = None
        self.response: m.BindingResponse | None = None
        self.error: str | None = None

    def sendto(self, data: bytes, _addr: object) -> int:
        if self.error is not None:
            raise _ExchangeEnded(self.error)
        if self._clock() >= self._deadline:
            raise _ExchangeEnded("no answer before the deadline")
        self._sent_id = bytes(data[4:20])
        return self._sock.sendto(data, self._server)

    def recvfrom(self, size: int) -> tuple[bytes, Any]:
        while True:
            left = self._deadline - self._clock()
            if left <= 0 or self.error is not None:
                raise TimeoutError("deadline")
            self._sock.settimeout(min(self._attempt, left))
            data, addr = self._sock.recvfrom(size)
            if not _same_address(addr, self._server):
                continue  # not from the server we asked: never shown to pystun3
            msg = m.decode(data)
            if msg is None or msg.full_id != self._sent_id:
                continue
            answer = m.read_binding_response(msg)
            if answer is None:
                continue
            if answer.error is not None:
                code, reason = answer.error
                self.error = f"error response {code} {reason}".rstrip()
                raise TimeoutError(self.error)
            self.response = answer
            return data, addr


def _same_address(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    try:
        return ipaddress.ip_address(a[0]) == ipaddress.ip_address(b[0]) and a[1] == b[1]
    except (ValueError, IndexError):
        return False


def split_server(server: str | tuple[str, int], default_port: int = 3478) -> tuple[str, int]:
    """``"host:port"``, ``"[v6]:port"``, ``"host"`` or ``(host, port)`` -> ``(host, port)``."""
    if isinstance(server, tuple):
        return server[0], int(server[1])
    text = server.strip()
    try:
        parsed = Endpoint.parse(text, allow_names=True)
    except ValueError:
        bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
        parsed = Endpoint.parse(f"[{bare}]:{default_port}" if ":" in bare
                                else f"{bare}:{default_port}", allow_names=True)
    return parsed.host, parsed.port


def _resolve(host: str, port: int, family: int) -> tuple[Any, ...]:
    infos = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"{host} has no address")
    return infos[0][4]


def binding(sock: socket.socket, server: str | tuple[str, int], *, timeout: float = 2.0,
            clock: Clock = time.monotonic) -> BindingAnswer:
    """One Binding request via pystun3 from ``sock`` to ``server``, within ``timeout``."""
    import stun  # pystun3; deferred so importing this module stays cheap

    host, port = split_server(server)
    label = m.format_endpoint(host, port)
    try:
        target = _resolve(host, port, sock.family)
    except (OSError, UnicodeError) as exc:
        return BindingAnswer(label, None, f"cannot resolve: {exc}")
    deadline = clock() + timeout
    guarded = _GuardedSocket(sock, target, deadline, max(timeout / ATTEMPTS, 0.05), clock)
    stun._initialize()
    local_ip, local_port = sock.getsockname()[:2]
    try:
        result = stun.stun_test(guarded, target[0], target[1], local_ip, local_port)
    except _ExchangeEnded as exc:
        return BindingAnswer(label, None, str(exc))
    except OSError as exc:
        return BindingAnswer(label, None, f"socket error: {exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001 - pystun3 parses bytes; keep its failures ours
        return BindingAnswer(label, None, f"pystun3 failed: {type(exc).__name__}")
    if not result.get("Resp") or guarded.response is None:
        return BindingAnswer(label, None, guarded.error or "no answer")
    mapped = guarded.response.mapped  # our codec: XOR-MAPPED-ADDRESS first
    if mapped is None and result.get("ExternalIP"):
        mapped = (str(result["ExternalIP"]), int(result["ExternalPort"]))
    if mapped is None:
        return BindingAnswer(label, None, "the response carries no mapped address")
    return BindingAnswer(label, mapped, None)


def classify(answers: Sequence[tuple[str, int]]) -> str:
    """The mapping behaviour from the addresses distinct servers saw."""
    if len(answers) < 2:
        return MAPPING_UNKNOWN
    return MAPPING_INDEPENDENT if len(set(answers)) == 1 else MAPPING_DEPENDENT


def _open(bind_ip: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in bind_ip else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as exc:
        raise BackendUnavailable(f"cannot open a UDP socket for STUN: {exc.strerror}") from exc
    # No SO_REUSEADDR: a port held by wireguard-go must fail to bind, not be shared.
    try:
        sock.bind((bind_ip, port))
    except OSError:
        sock.close()
        raise
    return sock


def discover(
    listen_port: int,
    servers: Sequence[str | tuple[str, int]],
    *,
    timeout: float = 2.0,
    bind_ip: str = "0.0.0.0",
    exclude_ifnames: Sequence[str] = (),
    exclude_networks: Sequence[str] = (),
    clock: Clock = time.monotonic,
) -> Discovery:
    """Mapping test from ``listen_port`` against ``servers`` (the first two distinct).

    Call it before wireguard-go binds ``listen_port``. ``timeout`` bounds the
    whole test. When the port is already bound (wireguard-go is running), the test
    runs from an ephemeral port instead: the mapping behaviour and public IP are a
    property of the NAT and stay valid, but the mapped addresses are not the
    WireGuard port's, so ``mapped`` is empty and ``note`` says why.
    Raises ``ConfigError`` for an unusable ``bind_ip``/``listen_port``.
    """
    if not 0 < listen_port < 65536:
        raise ConfigError(f"listen port {listen_port} is not a UDP port (1-65535)")
    local = tuple(
        m.format_endpoint(a, listen_port)
        for a in lan_addresses(exclude_ifnames, exclude_networks)
    )
    if not servers:
        return Discovery((), MAPPING_UNKNOWN, None, local, "no STUN servers configured")
    note = ""
    try:
        sock = _open(bind_ip, listen_port)
        on_listen_port = True
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            where = m.format_endpoint(bind_ip, listen_port)
            raise ConfigError(
                f"cannot bind udp {where} for STUN: {exc.strerror}; check bind_ip/listen_port"
            ) from exc
        note = (f"udp port {listen_port} is in use (wireguard-go is running); "
                "mapping tested from an ephemeral port, no STUN candidates")
        try:
            sock = _open(bind_ip, 0)
        except OSError as exc2:
            raise BackendUnavailable(f"cannot bind an ephemeral UDP port: {exc2}") from exc2
        on_listen_port = False
    answers: list[BindingAnswer] = []
    try:
        chosen = _distinct(servers)[:2]
        start = clock()
        for i, server in enumerate(chosen):
            left = timeout - (clock() - start)
            answers.append(binding(sock, server, timeout=max(left / (len(chosen) - i), 0.0),
                                   clock=clock))
    finally:
        sock.close()
    seen = [(a.server, a.mapped) for a in answers if a.mapped is not None]
    problems = tuple(f"{a.server}: {a.error}" for a in answers if a.error)
    mapping = classify([mapped for _, mapped in seen])
    if mapping == MAPPING_UNKNOWN and not note:
        note = f"{len(seen)} of {len(answers)} STUN server(s) answered; need two to compare"
    mapped_out = tuple((s, m.format_endpoint(*addr)) for s, addr in seen) if on_listen_port else ()
    public_ip = seen[0][1][0] if seen else None
    return Discovery(mapped_out, mapping, public_ip, local, note, problems)


def _distinct(servers: Sequence[str | tuple[str, int]]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for server in servers:
        pair = split_server(server)
        if pair not in out:
            out.append(pair)
    return out
