"""The cross-platform WireGuard UAPI protocol (wireguard.com/xplatform).

Sans-I/O codec plus a tiny Unix-socket client. The userspace backend
(``reconciler.backends.userspace``) uses it to talk to wireguard-go.

* ``encode_get()`` / ``decode_get(name, reply)`` -> ``ObservedInterface``
  (WireGuard fields only: key, port, peers).
* ``transactions(ops)`` / ``set_lines(ops)`` / ``encode_set(lines)``: the
  ``set=1`` transactions for a batch of operations -- all peers in one,
  preceded by a device transaction when the listen port changes. Keys go on the wire as lowercase
  hex, not base64.
* ``reply_errno(reply)`` / ``check_errno(code, what)``: every reply ends with
  ``errno=N``. ``-98`` (EADDRINUSE: the listen port cannot be bound) is
  ``BackendUnavailable``; ``-22`` (EINVAL: bad line, key or value), ``-71``
  (EPROTO: a line without ``=``) and any other error are ``BackendError``.

Quirks handled here (checked against Debian's wireguard-go 0.0.20220316):

* a ``set`` is not atomic: lines before an error stay applied, so callers
  must re-observe after an error;
* ``allowed_ip=-CIDR`` (removing one allowed IP) is rejected, so a peer's
  allowed IPs are always sent as ``replace_allowed_ips=true`` + the full list;
* ``endpoint=`` takes IP literals only (``1.2.3.4:51820``, ``[2001:db8::1]:51820``);
* device keys must precede the first ``public_key=`` line (after it every
  key is read as a peer key);
* the listen port is set in its own transaction before the peers: a bind
  failure (-98) then costs nothing else, and the device is left without a
  port, which the next plan sets again.
"""

from __future__ import annotations

import binascii
import re
import socket
import struct
from collections.abc import Sequence

from reconciler.converge.keys import decode_key
from reconciler.converge.keys import public_key as derive_public_key
from reconciler.converge.ops import (
    AddPeer,
    CreateInterface,
    Operation,
    RemovePeer,
    SetFwmark,
    SetListenPort,
    SetPrivateKey,
    UpdatePeer,
)
from reconciler.errors import BackendError, BackendUnavailable
from reconciler.model.endpoint import Endpoint
from reconciler.model.wg import ObservedInterface, ObservedPeer

EADDRINUSE = 98
EINVAL = 22
EPROTO = 71


def key_to_hex(key_b64: str) -> str:
    """Base64 WireGuard key -> lowercase hex; ``BackendError`` if malformed."""
    try:
        return decode_key(key_b64).hex()
    except ValueError as exc:
        raise BackendError(str(exc)) from exc


def key_from_hex(key_hex: str) -> str:
    """Lowercase hex key (as UAPI prints it) -> base64."""
    try:
        raw = bytes.fromhex(key_hex)
    except ValueError as exc:
        raise BackendError("UAPI returned a key that is not hex") from exc
    return binascii.b2a_base64(raw, newline=False).decode("ascii")


def uapi_endpoint(endpoint: str) -> str:
    """Validate ``ip:port`` / ``[v6]:port`` (``model.endpoint``) and return the UAPI form."""
    try:
        parsed = Endpoint.parse(endpoint.strip())
    except ValueError as exc:
        raise BackendError(f"endpoint {endpoint!r} must be an IP literal with a port "
                           f"(wireguard-go does not resolve names): {exc}") from exc
    return str(parsed)


def encode_get() -> bytes:
    return b"get=1\n\n"


def _peer_lines(op: AddPeer | RemovePeer | UpdatePeer) -> list[str]:
    if isinstance(op, RemovePeer):
        return [f"public_key={key_to_hex(op.public_key)}", "remove=true"]
    if isinstance(op, AddPeer):
        p = op.peer
        lines = [f"public_key={key_to_hex(p.public_key)}", "replace_allowed_ips=true"]
        lines += [f"allowed_ip={cidr}" for cidr in p.allowed_ips]
        if p.endpoint is not None:
            lines.append(f"endpoint={uapi_endpoint(p.endpoint)}")
        lines.append(f"persistent_keepalive_interval={p.keepalive}")
        return lines
    lines = [f"public_key={key_to_hex(op.public_key)}"]
    if op.allowed_ips is not None:
        lines.append("replace_allowed_ips=true")
        lines += [f"allowed_ip={cidr}" for cidr in op.allowed_ips]
    if op.endpoint is not None:
        lines.append(f"endpoint={uapi_endpoint(op.endpoint)}")
    if op.keepalive is not None:
        lines.append(f"persistent_keepalive_interval={op.keepalive}")
    return lines


def set_lines(ops: Sequence[Operation]) -> list[str]:
    """The body lines of one ``set=1`` transaction for the WireGuard ops in ``ops``.

    Device keys (``private_key``, ``listen_port``) must come before the first
    ``public_key`` line: after it, wireguard-go reads every key as a peer key
    (``invalid UAPI peer key: listen_port``, -22). Peers follow in plan
    order. Link operations are skipped.
    """
    head: list[str] = []
    port: list[str] = []
    mark: list[str] = []
    peers: list[str] = []
    for op in ops:
        if isinstance(op, (CreateInterface, SetPrivateKey)):
            head = [f"private_key={key_to_hex(op.private_key)}"]
        if isinstance(op, (CreateInterface, SetListenPort)):
            port = [f"listen_port={op.listen_port}"]
        if isinstance(op, SetFwmark):
            mark = [f"fwmark={op.fwmark}"]  # 0 clears it (wireguard.com/xplatform)
        if isinstance(op, (AddPeer, RemovePeer, UpdatePeer)):
            peers += _peer_lines(op)
    return head + port + mark + peers


def transactions(ops: Sequence[Operation]) -> list[list[str]]:
    """The ``set=1`` transactions for one apply: device keys first, then peers.

    With a listen-port change the device keys (private key, port) go in a
    transaction of their own, first: when the port cannot bind (-98) the set
    stops at that line, and a busy port must not hold back the peers. Port
    first is also faster: rebinding after 1,000 peers exist makes
    wireguard-go revisit every peer. Empty transactions are left out.
    """
    device = [op for op in ops
              if isinstance(op, (CreateInterface, SetPrivateKey, SetListenPort, SetFwmark))]
    peers = [op for op in ops if isinstance(op, (AddPeer, RemovePeer, UpdatePeer))]
    if any(isinstance(op, (CreateInterface, SetListenPort)) for op in device):
        out = [set_lines(device), set_lines(peers)]
    else:
        out = [set_lines(device + peers)]
    return [lines for lines in out if lines]


def encode_set(lines: Sequence[str]) -> bytes:
    return ("set=1\n" + "".join(line + "\n" for line in lines) + "\n").encode("ascii")


def reply_errno(reply: str) -> int:
    """The ``errno=N`` of a reply (0 = success); ``BackendError`` if missing."""
    at = reply.rfind("errno=")  # the last line of a reply: found from the end
    if at == 0 or (at > 0 and reply[at - 1] == "\n"):
        line = reply[at + 6:].partition("\n")[0].strip()
        try:
            return int(line)
        except ValueError:
            pass
    for line in reversed(reply.splitlines()):  # the same, line by line
        if line.startswith("errno="):
            try:
                return int(line[6:])
            except ValueError:
                break
    raise BackendError("UAPI reply has no errno line")


def check_errno(code: int, what: str) -> None:
    """Raise the meshops error for a non-zero UAPI errno (wireguard-go replies -N or N)."""
    code = abs(code)
    if code == 0:
        return
    if code == EADDRINUSE:
        raise BackendUnavailable(
            f"{what}: listen port is already in use (errno -98); the device has no "
            "listen port now, the next run sets it again"
        )
    if code == EINVAL:
        raise BackendError(f"{what}: wireguard-go rejected a line, key or value (errno -22)")
    if code == EPROTO:
        raise BackendError(f"{what}: malformed UAPI request (errno -71)")
    raise BackendError(f"{what}: wireguard-go answered errno -{code}")


_FIELD = re.compile(r"^([^=\n]*)=(.*)$", re.MULTILINE)  # key=value, as line.partition("=")
_ALLOWED_IP = re.compile(r"^allowed_ip=(.*)$", re.MULTILINE)
_NO_EQUALS = re.compile(r"\n[^=\n]+\n")  # a non-empty line without "=" (after a "\n")
# One peer as wireguard-go (device/uapi.go, IpcGetOperation) prints it, in its order.
_PEER = re.compile(
    r"public_key=([0-9a-f]{64})\n(?:preshared_key=[0-9a-f]{64}\n)?"
    r"(?:protocol_version=[0-9]+\n)?(?:endpoint=([^\n]*)\n)?"
    r"last_handshake_time_sec=([0-9]+)\nlast_handshake_time_nsec=([0-9]+)\n"
    r"tx_bytes=([0-9]+)\nrx_bytes=([0-9]+)\npersistent_keepalive_interval=([0-9]+)\n"
    r"((?:allowed_ip=[^\n]*\n)*)")


def decode_get(name: str, reply: str) -> ObservedInterface:
    """Parse a ``get=1`` reply into the WireGuard part of an ``ObservedInterface``.

    At 10,000 peers the reply is ~3 MB, so it is not read line by line in
    Python: the peers are matched by one regex in wireguard-go's own order
    (``_PEER``), and only when those matches do not cover the peer section
    exactly (another implementation, another order) is each peer's block
    read key by key."""
    check_errno(reply_errno(reply), f"get {name}")
    first = reply.find("public_key=")
    first = len(reply) if first < 0 else first
    if first and reply[first - 1] != "\n":
        first = reply.find("\npublic_key=") + 1 or len(reply)
    peers = _peers_in_order(reply, first)  # every line it covers has the right shape
    if _NO_EQUALS.search("\n" + (reply[:first] if peers is not None else reply)):
        raise BackendError(f"get {name}: malformed UAPI line")
    if peers is None:
        peers = _peers_any_order(reply[first:])
    device = dict(_FIELD.findall(reply, 0, first))
    private_hex = device.get("private_key")
    return ObservedInterface(
        name=name,
        exists=True,
        public_key=derive_public_key(key_from_hex(private_hex)) if private_hex else None,
        listen_port=int(device.get("listen_port", 0)),
        fwmark=int(device.get("fwmark", 0)),
        peers=peers,
    )


def _peers_in_order(reply: str, start: int) -> dict[str, ObservedPeer] | None:
    """The peers from ``start`` on, when ``_PEER`` matches them back to back up
    to the ``errno=`` line; None otherwise."""
    peers: dict[str, ObservedPeer] = {}
    pos = start
    to_b64, from_hex = binascii.b2a_base64, bytes.fromhex  # the regex matched 64 hex digits
    for m in _PEER.finditer(reply, start):  # 10,000 times a pass: kept lean
        if m.start() != pos:
            return None
        pos = m.end()
        key_hex, endpoint, sec, nsec, tx, rx, keepalive, ips = m.groups()
        key = to_b64(from_hex(key_hex), newline=False).decode()
        if not ips:
            allowed: tuple[str, ...] = ()
        elif ips.count("\n") == 1:  # one allowed IP, the common case
            allowed = (ips[11:-1],)
        else:
            allowed = tuple(sorted(ips[11:-1].split("\nallowed_ip=")))
        seconds, nanos = int(sec), int(nsec)
        peers[key] = ObservedPeer(  # fields in order: public_key ... tx_bytes
            key, allowed, endpoint, int(keepalive),
            seconds + nanos / 1e9 if seconds or nanos else None,  # 0/0: never
            int(rx), int(tx))
    return peers if reply.startswith("errno=", pos) else None


def _handshake(sec: int, nsec: int) -> float | None:
    return (sec + nsec / 1e9) if (sec or nsec) else None  # 0/0: never


def _peers_any_order(section: str) -> dict[str, ObservedPeer]:
    """The peers of ``section`` (from the first ``public_key=`` line), each
    block read key by key in any order; unknown keys are ignored."""
    peers: dict[str, ObservedPeer] = {}
    for block in ("\n" + section).split("\npublic_key=")[1:]:
        key_hex, _, rest = block.partition("\n")
        key = key_from_hex(key_hex)
        fields = dict(_FIELD.findall(rest))
        sec = int(fields.get("last_handshake_time_sec", 0))
        nsec = int(fields.get("last_handshake_time_nsec", 0))
        peers[key] = ObservedPeer(
            public_key=key,
            allowed_ips=tuple(sorted(_ALLOWED_IP.findall(rest))),
            endpoint=fields.get("endpoint"),
            keepalive=int(fields.get("persistent_keepalive_interval", 0)),
            last_handshake=_handshake(sec, nsec),
            rx_bytes=int(fields.get("rx_bytes", 0)),
            tx_bytes=int(fields.get("tx_bytes", 0)),
        )
    return peers


class UapiClient:
    """One request per connection on ``/var/run/wireguard/IFNAME.sock``."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout

    def alive(self) -> bool:
        """Whether a daemon accepts connections on the socket."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.path)
            return True
        except OSError:
            return False

    def request(self, data: bytes) -> str:
        """Send ``data``, return the whole reply (up to the blank line after errno).

        One request per connection: the write side is shut after it, so the
        daemon answers, reads end-of-file and closes. The reply is then read
        with ``MSG_WAITALL`` in chunks of up to 4 MiB, each one blocking system
        call that returns when the chunk is full or at end-of-file. A ``get``
        reply at 10,000 peers is ~3.4 MB and reaches the socket ~200 KB at a
        time: read piece by piece, the reading thread (``agent.gather``'s
        ``Background``) had to win the GIL back from the busy main thread for every
        piece (5 ms each, ``sys.getswitchinterval``), and the read took 3-5x
        as long as wireguard-go needs to answer. ``timeout`` bounds the connect
        and the send, and each wait for data (``SO_RCVTIMEO``)."""
        return self.receive(self.send(data))

    def send(self, data: bytes) -> socket.socket:
        """Connect, send ``data`` and shut the write side: the daemon starts
        answering while the caller does something else; ``receive`` reads the
        reply (and closes the socket). ``BackendUnavailable`` when nothing
        listens (the daemon is not running) or the send fails."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:
            sock.close()
            if isinstance(exc, OSError):
                raise self._unavailable(exc) from exc
            raise
        return sock

    def receive(self, sock: socket.socket) -> str:
        """The whole reply to what ``send`` sent on ``sock``, which it closes."""
        try:
            with sock:
                sock.settimeout(None)  # blocking: MSG_WAITALL waits in the kernel ...
                seconds = max(self.timeout, 0.001)  # ... at most this long (0 would be none)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack(
                    "ll", int(seconds), int(seconds % 1 * 1e6)))
                chunks: list[bytes] = []
                while chunk := sock.recv(1 << 22, socket.MSG_WAITALL):
                    chunks.append(chunk)
        except OSError as exc:
            raise self._unavailable(exc) from exc
        return b"".join(chunks).decode("ascii", errors="replace")

    def _unavailable(self, exc: OSError) -> BackendUnavailable:
        if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
            return BackendUnavailable(f"wireguard-go is not listening on {self.path}")
        if isinstance(exc, BlockingIOError):  # SO_RCVTIMEO expired with nothing read
            return BackendUnavailable(f"UAPI socket {self.path}: no reply within "
                                      f"{self.timeout:g} s")
        return BackendUnavailable(f"UAPI socket {self.path}: {exc.strerror or exc}")

    def get(self, name: str) -> ObservedInterface:
        return decode_get(name, self.request(encode_get()))

    def set(self, lines: Sequence[str], what: str) -> None:
        if not lines:
            return
        check_errno(reply_errno(self.request(encode_set(lines))), what)
