"""PURE: the enrollment request and the exact bytes its signature covers.

``meshops agent enroll`` (``reconciler.agent.enroll``) builds the body, signs
``signing_input(body)`` with the new device's Ed25519 identity key and sends
``{"request": body, "signature": base64}``; the hub
(``reconciler.hub.enroll``) rebuilds the same bytes from the body it parsed
and checks the signature with the identity key the body carries, which
proves the sender holds that key. The body includes ``org``, ``name`` and a
``timestamp`` so a captured request cannot be replayed for another device or
much later (the hub allows ``MAX_AGE`` seconds either way).

Canonical form: JSON with sorted keys and no spaces, UTF-8, behind a context
string so the signature can never be taken for another meshops signature.
"""

from __future__ import annotations

import json
from typing import Any

CONTEXT = b"meshops-enroll-v1\n"
MAX_AGE = 300.0
FIELDS = ("org", "name", "id_token", "wireguard_public_key", "identity_public_key",
          "timestamp")


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def make_body(*, org: str, name: str, id_token: str, wireguard_public_key: str,
              identity_public_key: str, timestamp: int) -> dict[str, Any]:
    return {"org": org, "name": name, "id_token": id_token,
            "wireguard_public_key": wireguard_public_key,
            "identity_public_key": identity_public_key, "timestamp": timestamp}


def signing_input(body: dict[str, Any]) -> bytes:
    return CONTEXT + canonical({k: body[k] for k in FIELDS})
