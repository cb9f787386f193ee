"""PURE: the WireGuard key rotation request: its fields, payload type and key check.

``meshops agent rotate-key`` (``reconciler.agent.rotate``) builds the body
with ``make_body``, serialises it with ``identity.request.canonical`` and
signs it as a DSSE envelope (payload type ``PAYLOAD_TYPE``) with the
device's Ed25519 identity key. The hub (``reconciler.hub.rotate``) opens the
envelope with the identity key that the device file of the served commit
records, never with a key the request carries. The payload type is its own,
so the signature can never be taken for an enrollment, a manifest or a feed
(DSSE's pre-authentication encoding binds it). ``org``, ``device`` and
``issued_at`` bind a captured request to one device and ``MAX_AGE`` seconds
either way of the hub's clock.

``check_new_key`` is the one check of the proposed public key, used by both
sides: strict base64 of 32 bytes (``converge.keys.decode_key``) that is not a
low-order X25519 point (those give every peer the all-zero shared secret,
which WireGuard refuses: RFC 7748 section 6.1).
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from reconciler.converge.keys import decode_key

PAYLOAD_TYPE = "application/vnd.meshops.rotate+json"
MAX_AGE = 300.0
FIELDS = ("org", "device", "new_wireguard_public_key", "issued_at")

# A fixed scalar for the low-order test: any scalar gives the all-zero shared
# secret with a low-order point, and with no other point.
_PROBE = X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def make_body(*, org: str, device: str, new_wireguard_public_key: str,
              issued_at: int) -> dict[str, Any]:
    return {"org": org, "device": device,
            "new_wireguard_public_key": new_wireguard_public_key, "issued_at": issued_at}


def check_new_key(text: str) -> None:
    """``ValueError`` saying what is wrong when ``text`` is not a usable
    WireGuard public key (what ``wg pubkey`` prints)."""
    raw = decode_key(text, "new_wireguard_public_key")
    try:
        _PROBE.exchange(X25519PublicKey.from_public_bytes(raw))
    except ValueError as exc:  # OpenSSL refuses the all-zero shared secret
        raise ValueError("new_wireguard_public_key is a low-order X25519 point: no peer "
                         "could agree a key with it") from exc
