"""WireGuard key helpers for the pure planner (stdlib only).

``public_key(private_b64)`` derives the Curve25519 public key (RFC 7748,
X25519 with the base point u=9), so the planner can compare a desired
private key with the public key a backend observes without any I/O or
third-party library. ``decode_key(text, what)`` is the one strict check
for 32-byte base64 keys (also used by ``config.semantic``, ``pki`` and
``backends.uapi``, which translate its ``ValueError``). ``short(key)`` is the
abbreviated form used in operation strings. Called by ``reconciler.converge.ops``
and ``.diff``.
"""

from __future__ import annotations

import base64
import binascii
from functools import lru_cache

_P = 2**255 - 19
_A24 = 121665


def _x25519_base(scalar: bytes) -> bytes:
    """RFC 7748 section 5: X25519(k, 9) with a constant-shape Montgomery ladder."""
    k = bytearray(scalar)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    n = int.from_bytes(k, "little")
    x1 = 9
    x2, z2, x3, z3 = 1, 0, x1, 1
    swap = 0
    for t in range(254, -1, -1):
        bit = (n >> t) & 1
        swap ^= bit
        if swap:
            x2, x3 = x3, x2
            z2, z3 = z3, z2
        swap = bit
        a = x2 + z2
        aa = a * a % _P
        b = x2 - z2
        bb = b * b % _P
        e = aa - bb
        c = x3 + z3
        d = x3 - z3
        da = d * a % _P
        cb = c * b % _P
        x3 = (da + cb) ** 2 % _P
        z3 = x1 * (da - cb) ** 2 % _P
        x2 = aa * bb % _P
        z2 = e * (aa + _A24 * e) % _P
    if swap:
        x2, x3 = x3, x2
        z2, z3 = z3, z2
    return (x2 * pow(z2, _P - 2, _P) % _P).to_bytes(32, "little")


def decode_key(key_b64: str, what: str = "WireGuard key") -> bytes:
    """Decode a strict standard-base64 32-byte key (WireGuard or raw Ed25519);
    ``ValueError`` naming ``what`` if it is not base64 or not 32 bytes."""
    try:  # what b64decode(validate=True) does, minus two call layers (config checks 20,000 keys)
        raw = binascii.a2b_base64(key_b64.encode("ascii"), strict_mode=True)
    except (binascii.Error, ValueError, AttributeError) as exc:  # AttributeError: not a str
        raise ValueError(f"{what} is not valid base64") from exc
    if len(raw) != 32:
        raise ValueError(f"{what} must be 32 bytes, got {len(raw)}")
    return raw


@lru_cache(maxsize=64)
def public_key(private_key_b64: str) -> str:
    """Base64 public key of a base64 private key (what ``wg pubkey`` prints)."""
    return base64.b64encode(_x25519_base(decode_key(private_key_b64))).decode("ascii")


def short(key: str) -> str:
    """The first four characters of a base64 key and an ellipsis, for humans."""
    return key[:4] + "…"
