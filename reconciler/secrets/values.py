"""SOPS value cipher: one scalar <-> one ``ENC[AES256_GCM,...]`` string.

Used by ``reconciler.secrets.sops`` for every leaf and comment, and for the
MAC. This is the byte format of sops' ``aes/cipher.go``: AES-256-GCM with a
32-byte nonce, the tag split off the ciphertext, the value's Go type recorded
in ``type:`` and the key path (``a:b:c:``) as additional authenticated data.
Plaintext bytes follow Go's formatting (``strconv.Itoa``, ``FormatFloat(f,
'f', -1, 64)``, ``FormatBool``), and :func:`mac_bytes` follows sops'
``ToBytes`` (booleans hash as ``True``/``False``).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from reconciler.errors import SecretsError

NONCE_SIZE = 32  # sops uses cipher.NewGCMWithNonceSize(block, 32)
TAG_SIZE = 16
_ENC_RE = re.compile(r"^ENC\[AES256_GCM,data:(.+),iv:(.+),tag:(.+),type:(.+)\]$", re.DOTALL)


@dataclass(eq=False)
class Comment:
    """A YAML comment kept in the tree (sops encrypts comments too).

    Identity-hashed on purpose: a mapping may hold several equal comments, so a
    comment is stored as a *key* of a dict (with value ``None``) or as an item
    of a list, in document order. The text excludes the leading ``#``.
    """

    text: str


class Timestamp(str):
    """A YAML timestamp, held as Go's ``time.Time.MarshalText`` text (RFC 3339, nanoseconds).

    sops (go-yaml v3) decodes unquoted timestamps into ``time.Time``: they are
    encrypted with ``type:time`` and hashed into the MAC in this canonical form,
    so ``2001-12-14`` becomes ``2001-12-14T00:00:00Z``. It is a ``str``, so
    callers can treat it as text.
    """


class AuthenticationFailed(SecretsError):
    """AES-GCM refused a value: wrong key, altered ciphertext or wrong key path."""


def is_encrypted(value: object) -> bool:
    """True when ``value`` is a string in sops' ``ENC[AES256_GCM,...]`` form."""
    return isinstance(value, str) and _ENC_RE.match(value) is not None


def go_format_float(value: float) -> str:
    """Go's ``strconv.FormatFloat(value, 'f', -1, 64)``: shortest, never an exponent."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = format(Decimal(repr(value)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _plain_bytes(value: object) -> tuple[bytes, str]:
    if isinstance(value, Comment):
        return value.text.encode(), "comment"
    if isinstance(value, Timestamp):
        return value.encode(), "time"
    if isinstance(value, bool):
        return (b"true" if value else b"false"), "bool"
    if isinstance(value, int):
        return str(value).encode(), "int"
    if isinstance(value, float):
        return go_format_float(value).encode(), "float"
    if isinstance(value, str):
        return value.encode(), "str"
    if isinstance(value, bytes):
        return value, "bytes"
    raise SecretsError(f"cannot encrypt a value of type {type(value).__name__}")


def mac_bytes(value: object) -> bytes:
    """The bytes sops' ``ToBytes`` feeds into the MAC for one plaintext value."""
    if isinstance(value, bool):
        return b"True" if value else b"False"
    if isinstance(value, Comment):
        return value.text.encode()
    return _plain_bytes(value)[0]


def encrypt_value(
    value: object, key: bytes, aad: str, *, random: Callable[[int], bytes]
) -> str:
    """Encrypt one scalar (or comment) for the key path ``aad``; ``random(n)`` gives the nonce."""
    plain, kind = _plain_bytes(value)
    nonce = random(NONCE_SIZE)
    sealed = AESGCM(key).encrypt(nonce, plain, aad.encode())
    data, tag = sealed[:-TAG_SIZE], sealed[-TAG_SIZE:]
    b64 = base64.b64encode
    return (
        f"ENC[AES256_GCM,data:{b64(data).decode()},iv:{b64(nonce).decode()},"
        f"tag:{b64(tag).decode()},type:{kind}]"
    )


def _typed(plain: bytes, kind: str) -> object:
    if kind == "bytes":
        return plain
    text = plain.decode("utf-8")
    if kind == "str":
        return text
    if kind == "time":
        return Timestamp(text)
    if kind == "comment":
        return Comment(text)
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    if kind == "bool":
        if text in ("1", "t", "T", "TRUE", "true", "True"):
            return True
        if text in ("0", "f", "F", "FALSE", "false", "False"):
            return False
    raise ValueError(f"unknown type {kind!r}")


def decrypt_value(text: str, key: bytes, aad: str) -> object:
    """Decrypt one ``ENC[...]`` string; raise :class:`AuthenticationFailed` on a bad tag.

    Raises :class:`SecretsError` when ``text`` is not in the ENC format at all.
    """
    match = _ENC_RE.match(text)
    if match is None:
        raise SecretsError("not a sops-encrypted value (expected ENC[AES256_GCM,...])")
    try:
        data, nonce, tag = (base64.b64decode(match.group(i), validate=True) for i in (1, 2, 3))
    except (binascii.Error, ValueError) as exc:
        raise SecretsError(f"malformed base64 in encrypted value: {exc}") from exc
    if len(tag) != TAG_SIZE or len(nonce) < 8:
        raise SecretsError("malformed encrypted value: bad iv or tag length")
    try:
        plain = AESGCM(key).decrypt(nonce, data + tag, aad.encode())
    except InvalidTag as exc:
        raise AuthenticationFailed("authentication tag mismatch") from exc
    try:
        return _typed(plain, match.group(4))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SecretsError(
            f"encrypted value of type {match.group(4)!r} has unusable plaintext"
        ) from exc
