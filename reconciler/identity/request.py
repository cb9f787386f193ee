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

import base64
import binascii
import json
from typing import Any

from reconciler.boundedjson import loads
from reconciler.errors import IdentityRefused, InputRefused

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


def open_request(data: bytes, *, payload_type: str | None, fields: tuple[str, ...],
                 int_fields: tuple[str, ...], what: str, max_bytes: int
                 ) -> tuple[dict[str, Any], bytes, dict[str, Any]]:
    """A signed request's payload, its bytes and the envelope, checked for shape
    only (bounded JSON, a DSSE envelope of ``payload_type`` when given, exactly
    ``fields``, ``int_fields`` integers and the rest strings); the signature is
    the caller's to check, against the key it trusts. Used by the hub's
    enrollment and key-rotation endpoints; refusals are ``IdentityRefused``
    with reason ``bad-request``."""
    try:
        env = loads(data, what=f"{what} envelope", max_bytes=max_bytes, max_depth=4)
    except InputRefused as exc:
        raise IdentityRefused("bad-request", str(exc)) from exc
    if not isinstance(env, dict) or not isinstance(env.get("payload"), str) or (
            payload_type is not None and env.get("payloadType") != payload_type):
        kind = f" of payload type {payload_type}" if payload_type else ""
        raise IdentityRefused("bad-request", f"the body must be a DSSE envelope{kind}")
    try:
        raw = base64.b64decode(env["payload"], validate=True)
        body = loads(raw, what=what, max_bytes=max_bytes, max_depth=2)
    except (binascii.Error, ValueError) as exc:
        raise IdentityRefused("bad-request", f"the envelope's payload is not base64: {exc}") \
            from exc
    except InputRefused as exc:
        raise IdentityRefused("bad-request", str(exc)) from exc
    if not isinstance(body, dict) or set(body) != set(fields):
        raise IdentityRefused("bad-request", f"the request must have exactly the fields "
                                             f"{', '.join(fields)}")
    for key in fields:
        want = int if key in int_fields else str
        if not isinstance(body[key], want) or isinstance(body[key], bool):
            raise IdentityRefused("bad-request", f"request field {key!r} must be a "
                                                 f"{want.__name__}")
    return body, raw, env
