"""Device key generation for ``meshops agent init``.

Makes the WireGuard X25519 key pair and the Ed25519 identity key pair on the
device. Private keys go straight into 0600 files (``atomic_write`` creates the
temp file with that mode) and never leave this module in a message; callers
get the public halves as base64 (the form the device YAML holds).

The ``cryptography`` import is local to the functions, so ``agent apply`` does
not pay for it.
"""

from __future__ import annotations

import base64
from pathlib import Path

from reconciler.errors import ConfigError, PkiError, UsageError
from reconciler.fsio import atomic_write
from reconciler.structs import Record


class DeviceKeys(Record):
    wireguard_public_key: str  # base64, as `wg pubkey` prints it
    identity_public_key: str  # base64 of the raw 32-byte Ed25519 public key


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def generate_keys(wireguard_path: str, identity_path: str, *, force: bool = False) -> DeviceKeys:
    """Create both key files (mode 0600) and return the public keys.

    Refuses to overwrite an existing key unless ``force``: replacing a key cuts
    the device off until the new public key is merged into git.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    for path in (wireguard_path, identity_path):
        if Path(path).exists() and not force:
            raise UsageError(
                f"{path} already exists; refusing to replace a device key "
                "(pass --force to make new keys; the device must then be re-enrolled)"
            )
    raw = serialization.Encoding.Raw
    wg = X25519PrivateKey.generate()
    wg_private = wg.private_bytes(raw, serialization.PrivateFormat.Raw,
                                  serialization.NoEncryption())
    wg_public = wg.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    ident = Ed25519PrivateKey.generate()
    ident_pem = ident.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    ident_public = ident.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    atomic_write(wireguard_path, (_b64(wg_private) + "\n").encode(), mode=0o600)
    atomic_write(identity_path, ident_pem, mode=0o600)
    return DeviceKeys(_b64(wg_public), _b64(ident_public))


def public_keys(wireguard_path: str, identity_path: str) -> DeviceKeys:
    """Public halves of existing key files (``agent init`` re-run, ``agent render``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    raw = serialization.Encoding.Raw
    try:
        wg_raw = base64.b64decode(Path(wireguard_path).read_text().strip(), validate=True)
        wg = X25519PrivateKey.from_private_bytes(wg_raw)
        ident = serialization.load_pem_private_key(Path(identity_path).read_bytes(), None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the device keys ({wireguard_path}, {identity_path})") \
            from exc
    if not isinstance(ident, Ed25519PrivateKey):
        raise ConfigError(f"{identity_path}: not an Ed25519 private key")
    return DeviceKeys(
        _b64(wg.public_key().public_bytes(raw, serialization.PublicFormat.Raw)),
        _b64(ident.public_key().public_bytes(raw, serialization.PublicFormat.Raw)),
    )


def sign_with_identity(identity_key_path: str, payload: bytes, payload_type: str) -> bytes:
    """A DSSE envelope of ``payload_type`` over ``payload``, signed with the
    device's identity key (the enrollment and key-rotation requests)."""
    from reconciler.pki.envelope import sign_envelope
    from reconciler.pki.keys import private_from_pem

    try:
        pem = Path(identity_key_path).read_text(encoding="ascii")
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"cannot read the identity key {identity_key_path}") from exc
    try:
        key = private_from_pem(pem, identity_key_path)
    except PkiError as exc:
        raise ConfigError(str(exc)) from exc
    return sign_envelope(payload, payload_type, key)
