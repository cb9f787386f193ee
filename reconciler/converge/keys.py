"""WireGuard key helpers for the pure planner.

``public_key(private_b64)`` derives the Curve25519 public key (RFC 7748 X25519
with the base point u=9, what ``wg pubkey`` prints) through ``cryptography``,
so the planner can compare a desired private key with the public key a
backend observes. ``cryptography`` does no I/O, so the purity contract
allows it; the agent loads it anyway for Ed25519 (manifest signatures), so on
the agent's path it costs nothing extra. Nothing here caches: a private key
lives only as long as the caller's string.

``decode_key(text, what)`` is the one strict check for 32-byte base64 keys
(also used by ``config.semantic``, ``pki`` and ``backends.uapi``, which
translate its ``ValueError``). ``short(key)`` is the abbreviated form used in
operation strings. Called by ``reconciler.converge.ops``, ``.planner`` and
``.simulate``, and by the backends and the agent's desired-state builder.
"""

from __future__ import annotations

import base64
import binascii

# Only the x25519 module: ``public_bytes_raw`` (cryptography >= 40) spares the
# serialization package, which would double the import cost of this package.
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey


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


def public_key(private_key_b64: str) -> str:
    """Base64 public key of a base64 private key (what ``wg pubkey`` prints).

    ``ValueError`` if the private key is not 32 bytes of base64. Any 32 bytes
    are a valid X25519 private key: the scalar is clamped (RFC 7748 section 5),
    as WireGuard does."""
    private = X25519PrivateKey.from_private_bytes(decode_key(private_key_b64, "WireGuard private key"))
    return base64.b64encode(private.public_key().public_bytes_raw()).decode("ascii")


def short(key: str) -> str:
    """The first four characters of a base64 key and an ellipsis, for humans."""
    return key[:4] + "…"
