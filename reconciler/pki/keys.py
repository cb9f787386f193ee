"""Ed25519 key helpers shared by the CA, certificates and envelopes.

Called by ``pki.ca``, ``pki.certs``, ``pki.envelope`` and the hub. Private keys
are handled as ``Ed25519PrivateKey`` objects or PEM text and are never put in
messages or ``repr``.
"""

from __future__ import annotations

import base64
import hashlib

# Only the ed25519 module at import: the serialization package (PEM, with its
# SSH, cipher and RSA modules, ~8 ms) is imported by the two PEM helpers, which
# the CA and the hub use; the agent verifies envelopes with raw keys only.
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from reconciler.converge.keys import decode_key
from reconciler.errors import PkiError


def raw_public(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key."""
    return key.public_bytes_raw()


def keyid(key: Ed25519PublicKey) -> str:
    """Key id used in DSSE signatures and trust.json: hex SHA-256 of the raw public key."""
    return hashlib.sha256(raw_public(key)).hexdigest()


def public_b64(key: Ed25519PublicKey) -> str:
    return base64.b64encode(raw_public(key)).decode("ascii")


def public_from_b64(text: str, what: str = "public key") -> Ed25519PublicKey:
    """Parse a standard-base64 raw 32-byte Ed25519 public key."""
    try:
        raw = decode_key(text, what)
    except ValueError as exc:
        raise PkiError(str(exc)) from exc
    return Ed25519PublicKey.from_public_bytes(raw)


def private_to_pem(key: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def private_from_pem(pem: str, what: str = "private key") -> Ed25519PrivateKey:
    """Load an unencrypted PKCS#8 Ed25519 private key (the message never echoes the input)."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeError) as exc:
        raise PkiError(f"{what} is not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise PkiError(f"{what} is not an Ed25519 key")
    return key
