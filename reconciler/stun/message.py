"""Sans-I/O STUN message codec (RFC 5389, with RFC 3489 "classic" responses).

Pure bytes in, bytes out: no sockets, no clock. Used by ``reconciler.stun.server``
(the hub's responder) to answer Binding requests and by ``reconciler.stun.client``
to validate and read the answers pystun3 receives. Golden-tested against the
RFC 5769 test vectors (``tests/stun/vectors.py``).

A message is RFC 5389 when its magic cookie field holds 0x2112A442 (RFC 5389
section 6); anything else with a sane header is an RFC 3489 message whose 128-bit
transaction id covers the cookie field too (RFC 5389 section 12).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from reconciler.errors import ConfigError

MAGIC_COOKIE = 0x2112A442
MAGIC_BYTES = struct.pack("!I", MAGIC_COOKIE)
FINGERPRINT_XOR = 0x5354554E  # RFC 5389 section 15.5: "STUN"
HEADER = struct.Struct("!HHI12s")

# Methods and classes (RFC 5389 section 6: the class bits are C1=0x100, C0=0x010).
BINDING = 0x001
REQUEST, INDICATION, SUCCESS, ERROR = 0, 1, 2, 3
CLASS_NAMES = ("request", "indication", "success", "error")

# Attributes (RFC 5389 section 18.2, RFC 3489 section 11.2, RFC 5780 section 7).
MAPPED_ADDRESS = 0x0001
RESPONSE_ADDRESS = 0x0002
CHANGE_REQUEST = 0x0003
SOURCE_ADDRESS = 0x0004
CHANGED_ADDRESS = 0x0005
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
UNKNOWN_ATTRIBUTES = 0x000A
REALM = 0x0014
NONCE = 0x0015
XOR_MAPPED_ADDRESS = 0x0020
XOR_MAPPED_ADDRESS_OLD = 0x8020  # pre-RFC drafts; some RFC 3489 servers send it
SOFTWARE = 0x8022
ALTERNATE_SERVER = 0x8023
FINGERPRINT = 0x8028
RESPONSE_ORIGIN = 0x802B
OTHER_ADDRESS = 0x802C

FAMILY_V4, FAMILY_V6 = 0x01, 0x02


@dataclass(frozen=True)
class Attribute:
    type: int
    value: bytes
    offset: int  # offset of the attribute header inside ``Message.raw``


@dataclass(frozen=True)
class Message:
    method: int
    cls: int
    cookie: int
    transaction_id: bytes  # the 12 bytes after the cookie field
    attributes: tuple[Attribute, ...]
    raw: bytes

    @property
    def classic(self) -> bool:
        """True for an RFC 3489 message (no magic cookie)."""
        return self.cookie != MAGIC_COOKIE

    @property
    def full_id(self) -> bytes:
        """The 16 bytes after type and length: RFC 3489's transaction id."""
        return struct.pack("!I", self.cookie) + self.transaction_id

    def get(self, attr_type: int) -> bytes | None:
        for attr in self.attributes:
            if attr.type == attr_type:
                return attr.value
        return None

    def find(self, attr_type: int) -> Attribute | None:
        for attr in self.attributes:
            if attr.type == attr_type:
                return attr
        return None


def message_type(method: int, cls: int) -> int:
    """Interleave method and class bits (RFC 5389 section 6, figure 3)."""
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((cls & 0b01) << 4)
        | ((cls & 0b10) << 7)
    )


def split_type(msg_type: int) -> tuple[int, int]:
    method = (msg_type & 0x000F) | ((msg_type & 0x00E0) >> 1) | ((msg_type & 0x3E00) >> 2)
    cls = ((msg_type >> 4) & 0b01) | ((msg_type >> 7) & 0b10)
    return method, cls


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


def parse(data: bytes) -> Message | str:
    """Decode one datagram: a ``Message``, or a short reason why it is not STUN."""
    if len(data) < HEADER.size:
        return "shorter than the 20-byte header"
    msg_type, length, cookie, txid = HEADER.unpack_from(data)
    if msg_type & 0xC000:
        return "the two most significant bits are not zero"
    if length % 4:
        return "length is not a multiple of 4"
    if HEADER.size + length != len(data):
        return f"length field {length} does not match the datagram ({len(data) - HEADER.size})"
    raw = bytes(data)
    attrs: list[Attribute] = []
    pos, end = HEADER.size, HEADER.size + length
    seen_integrity = seen_fingerprint = False
    while pos < end:
        if end - pos < 4:
            return "truncated attribute header"
        a_type, a_len = struct.unpack_from("!HH", raw, pos)
        value_end = pos + 4 + a_len
        if value_end > end:
            return f"attribute 0x{a_type:04x} overruns the message"
        # RFC 5389 section 15.4/15.5: ignore everything after MESSAGE-INTEGRITY
        # except FINGERPRINT, and everything after FINGERPRINT.
        if not seen_fingerprint and (not seen_integrity or a_type == FINGERPRINT):
            attrs.append(Attribute(a_type, raw[pos + 4 : value_end], pos))
        seen_integrity = seen_integrity or a_type == MESSAGE_INTEGRITY
        seen_fingerprint = seen_fingerprint or a_type == FINGERPRINT
        pos = value_end + _pad(a_len)
    if pos > end:
        return "attribute padding overruns the message"
    method, cls = split_type(msg_type)
    return Message(method, cls, cookie, txid, tuple(attrs), raw)


def decode(data: bytes) -> Message | None:
    """Decode one datagram, or None when it is not a well-formed STUN message."""
    result = parse(data)
    return result if isinstance(result, Message) else None


# -- addresses --------------------------------------------------------------


def _split_ip(ip: str) -> tuple[int, bytes]:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return (FAMILY_V4 if addr.version == 4 else FAMILY_V6), addr.packed


def encode_address(ip: str, port: int) -> bytes:
    """MAPPED-ADDRESS value (RFC 5389 section 15.1)."""
    family, packed = _split_ip(ip)
    return struct.pack("!BBH", 0, family, port) + packed


def decode_address(value: bytes) -> tuple[str, int] | None:
    if len(value) < 4:
        return None
    family, port = value[1], struct.unpack_from("!H", value, 2)[0]
    size = {FAMILY_V4: 4, FAMILY_V6: 16}.get(family)
    if size is None or len(value) != 4 + size:
        return None
    return str(ipaddress.ip_address(value[4:])), port


def _xor_key(transaction_id: bytes, family: int) -> bytes:
    return MAGIC_BYTES if family == FAMILY_V4 else MAGIC_BYTES + transaction_id


def encode_xor_address(ip: str, port: int, transaction_id: bytes) -> bytes:
    """XOR-MAPPED-ADDRESS value (RFC 5389 section 15.2)."""
    family, packed = _split_ip(ip)
    key = _xor_key(transaction_id, family)
    xored = bytes(a ^ b for a, b in zip(packed, key))
    return struct.pack("!BBH", 0, family, port ^ (MAGIC_COOKIE >> 16)) + xored


def decode_xor_address(value: bytes, transaction_id: bytes) -> tuple[str, int] | None:
    plain = decode_address(value)
    if plain is None:
        return None
    family = value[1]
    key = _xor_key(transaction_id, family)
    packed = bytes(a ^ b for a, b in zip(value[4:], key))
    return str(ipaddress.ip_address(packed)), plain[1] ^ (MAGIC_COOKIE >> 16)


def format_endpoint(ip: str, port: int) -> str:
    """``ip:port``, with IPv6 in brackets as WireGuard expects."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


# -- ERROR-CODE --------------------------------------------------------------


def encode_error_code(code: int, reason: str) -> bytes:
    """ERROR-CODE value (RFC 5389 section 15.6): class in hundreds, number 0-99."""
    if not 300 <= code <= 699:
        raise ValueError(f"STUN error code {code} is outside 300-699")
    return struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode()


def decode_error_code(value: bytes) -> tuple[int, str] | None:
    if len(value) < 4:
        return None
    klass, number = value[2] & 0x07, value[3]
    if not 3 <= klass <= 6 or number > 99:
        return None
    return klass * 100 + number, value[4:].decode("utf-8", "replace")


# -- integrity and fingerprint ----------------------------------------------


def saslprep(text: str) -> str:
    """SASLprep (RFC 4013) for STUN passwords (RFC 5389 section 15.4)."""
    import stringprep  # deferred: only long-term/short-term keys need it
    import unicodedata

    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c for c in text if not stringprep.in_table_b1(c)
    )
    norm = unicodedata.normalize("NFKC", mapped)
    checks = (
        stringprep.in_table_c12, stringprep.in_table_c21, stringprep.in_table_c22,
        stringprep.in_table_c3, stringprep.in_table_c4, stringprep.in_table_c5,
        stringprep.in_table_c6, stringprep.in_table_c7, stringprep.in_table_c8,
        stringprep.in_table_c9, stringprep.in_table_a1,
    )
    for c in norm:
        if any(check(c) for check in checks):
            raise ConfigError(f"STUN credential contains prohibited character U+{ord(c):04X}")
    bidi = any(stringprep.in_table_d1(c) for c in norm)
    if bidi and (any(stringprep.in_table_d2(c) for c in norm)
                 or not (stringprep.in_table_d1(norm[0]) and stringprep.in_table_d1(norm[-1]))):
        raise ConfigError("STUN credential fails the SASLprep bidi rule")
    return norm


def short_term_key(password: str) -> bytes:
    return saslprep(password).encode()


def long_term_key(username: str, realm: str, password: str) -> bytes:
    text = f"{username}:{realm}:{saslprep(password)}".encode()
    return hashlib.md5(text, usedforsecurity=False).digest()


def _with_length(raw: bytes, upto: int, length: int) -> bytes:
    return raw[:2] + struct.pack("!H", length) + raw[4:upto]


def verify_integrity(msg: Message, key: bytes) -> bool | None:
    """Check MESSAGE-INTEGRITY (RFC 5389 section 15.4); None when absent."""
    attr = msg.find(MESSAGE_INTEGRITY)
    if attr is None:
        return None
    if len(attr.value) != 20:
        return False
    signed = _with_length(msg.raw, attr.offset, attr.offset - HEADER.size + 24)
    expect = hmac.new(key, signed, hashlib.sha1).digest()
    return hmac.compare_digest(expect, attr.value)


def fingerprint(prefix: bytes) -> bytes:
    return struct.pack("!I", (binascii.crc32(prefix) & 0xFFFFFFFF) ^ FINGERPRINT_XOR)


def verify_fingerprint(msg: Message) -> bool | None:
    """Check FINGERPRINT (RFC 5389 section 15.5); None when absent."""
    attr = msg.find(FINGERPRINT)
    if attr is None:
        return None
    if len(attr.value) != 4 or attr.offset + 8 != len(msg.raw):
        return False
    signed = _with_length(msg.raw, attr.offset, attr.offset - HEADER.size + 8)
    return fingerprint(signed) == attr.value


# -- encoding ----------------------------------------------------------------


def encode(
    method: int,
    cls: int,
    transaction_id: bytes,
    attributes: Sequence[tuple[int, bytes]] = (),
    *,
    cookie: int = MAGIC_COOKIE,
    integrity_key: bytes | None = None,
    add_fingerprint: bool = False,
) -> bytes:
    """Build a message; MESSAGE-INTEGRITY and FINGERPRINT go last, in that order."""
    if len(transaction_id) != 12:
        raise ValueError("a STUN transaction id is 12 bytes (after the cookie)")
    body = b"".join(
        struct.pack("!HH", a_type, len(value)) + value + b"\0" * _pad(len(value))
        for a_type, value in attributes
    )
    head = struct.pack("!HHI", message_type(method, cls), 0, cookie) + transaction_id
    msg = head + body
    if integrity_key is not None:
        signed = _with_length(msg, len(msg), len(msg) - HEADER.size + 24)
        mac = hmac.new(integrity_key, signed, hashlib.sha1).digest()
        msg += struct.pack("!HH", MESSAGE_INTEGRITY, 20) + mac
    if add_fingerprint:
        signed = _with_length(msg, len(msg), len(msg) - HEADER.size + 8)
        msg += struct.pack("!HH", FINGERPRINT, 4) + fingerprint(signed)
    return _with_length(msg, len(msg), len(msg) - HEADER.size)


def binding_request(transaction_id: bytes, *, software: str | None = None) -> bytes:
    """An RFC 5389 Binding request with FINGERPRINT."""
    attrs = [(SOFTWARE, software.encode())] if software else []
    return encode(BINDING, REQUEST, transaction_id, attrs, add_fingerprint=True)


# -- reading a Binding response ----------------------------------------------


@dataclass(frozen=True)
class BindingResponse:
    """What a Binding success or error response says, from either RFC."""

    transaction_id: bytes
    mapped: tuple[str, int] | None  # XOR-MAPPED-ADDRESS when present, else MAPPED-ADDRESS
    changed: tuple[str, int] | None  # RFC 3489 CHANGED-ADDRESS or RFC 5780 OTHER-ADDRESS
    software: str | None
    error: tuple[int, str] | None  # ERROR-CODE of an error response


def read_binding_response(msg: Message) -> BindingResponse | None:
    """Interpret a decoded Binding response; None for anything else."""
    if msg.method != BINDING or msg.cls not in (SUCCESS, ERROR):
        return None
    mapped = None
    if not msg.classic:  # an XOR key needs the magic cookie; RFC 3489 servers that send
        # 0x8020 (stund) xor with the client's random id bytes instead
        for xor_type in (XOR_MAPPED_ADDRESS, XOR_MAPPED_ADDRESS_OLD):
            value = msg.get(xor_type)
            if value is not None and mapped is None:
                mapped = decode_xor_address(value, msg.transaction_id)
    if mapped is None and (value := msg.get(MAPPED_ADDRESS)) is not None:
        mapped = decode_address(value)
    changed_raw = msg.get(OTHER_ADDRESS) or msg.get(CHANGED_ADDRESS)
    software_raw = msg.get(SOFTWARE)
    error = None
    if msg.cls == ERROR:
        raw_error = msg.get(ERROR_CODE)
        error = (decode_error_code(raw_error) if raw_error else None) or (0, "no ERROR-CODE")
    return BindingResponse(
        transaction_id=msg.transaction_id,
        mapped=mapped,
        changed=decode_address(changed_raw) if changed_raw else None,
        software=software_raw.decode("utf-8", "replace") if software_raw is not None else None,
        error=error,
    )
