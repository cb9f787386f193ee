"""PURE: the enrollment request: its fields, its canonical payload, its envelope type.

``meshops agent enroll`` (``reconciler.agent.enroll``) builds the body with
``make_body``, serialises it with ``canonical`` and signs it as a DSSE
envelope (``pki.envelope.sign_envelope``, payload type ``PAYLOAD_TYPE``) with
the new device's Ed25519 identity key. The hub (``reconciler.hub.enroll``)
reads the identity key from the payload and opens the envelope with exactly
that key (``pki.envelope.open_envelope``), which proves the sender holds it;
DSSE's pre-authentication encoding binds the payload type, so the signature
can never be taken for a manifest or a feed. The body includes ``org``,
``name`` and a ``timestamp``, so a captured request cannot be replayed for
another device or much later (the hub allows ``MAX_AGE`` seconds either way).
"""

from __future__ import annotations

import json
from typing import Any

PAYLOAD_TYPE = "application/vnd.meshops.enroll+json"
MAX_AGE = 300.0
FIELDS = ("org", "name", "id_token", "wireguard_public_key", "identity_public_key",
          "timestamp")


def canonical(obj: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def make_body(*, org: str, name: str, id_token: str, wireguard_public_key: str,
              identity_public_key: str, timestamp: int) -> dict[str, Any]:
    return {"org": org, "name": name, "id_token": id_token,
            "wireguard_public_key": wireguard_public_key,
            "identity_public_key": identity_public_key, "timestamp": timestamp}
