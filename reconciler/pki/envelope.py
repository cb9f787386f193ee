"""DSSE envelopes (Ed25519) and the trust anchors agents pin.

Spec: https://github.com/secure-systems-lab/dsse (envelope.md, protocol.md).
The signature covers ``PAE(payloadType, payload)``::

    "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body

with lengths as ASCII decimal byte counts. ``keyid`` is the hex SHA-256 of the
32-byte raw Ed25519 public key.

Called by ``pki.manifest`` (manifests), the hub's endpoint feed (signed with
the same org key, another payload type) and the agent, which imports this on
every run: keep the imports light (no jsonschema, no x509).

Everything parsed here may come from a hostile server or file before any
signature is checked, so every JSON document (the envelope, trust.json, a
payload through ``Opened.json``) is read with ``reconciler.boundedjson``:
size (``MAX_ENVELOPE_BYTES``), nesting depth and encoding are bounded and a
refusal is a ``ManifestRefused`` (``malformed`` for the envelope, ``schema``
for a payload) or, for trust.json, a ``ConfigError``; never a
``RecursionError`` or a ``MemoryError``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from reconciler.boundedjson import loads as bounded_loads
from reconciler.errors import ConfigError, InputRefused, ManifestRefused
from reconciler.pki.keys import keyid as _keyid
from reconciler.pki.keys import public_b64, raw_public
from reconciler.structs import Record, field

# The largest envelope accepted; reconciler.agent.fetch.LIMITS["manifest"] is the
# same number (a test keeps them in agreement). ~130,000 devices per manifest.
MAX_ENVELOPE_BYTES = 32 * 1024 * 1024
MAX_TRUST_BYTES = 4 * 1024 * 1024  # keys and a CA PEM per org
MAX_SIGNATURES = 16  # a key rotation signs with two keys; more is an attack


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def sign_envelope(payload: bytes, payload_type: str, key: Ed25519PrivateKey) -> bytes:
    """Sign ``payload`` and return the DSSE envelope as compact JSON bytes."""
    return sign_envelope_multi(payload, payload_type, (key,))


def sign_envelope_multi(payload: bytes, payload_type: str,
                        keys: Sequence[Ed25519PrivateKey]) -> bytes:
    """One DSSE envelope signed by every key of ``keys`` (a rotation's overlap signs
    with the old and the new key, so agents pinning either accept it). Signatures
    keep the order of ``keys``; a key given twice signs once. Ed25519 is
    deterministic: the same payload and keys give the same bytes."""
    if not keys:
        raise ValueError("an envelope needs at least one signing key")
    if len(keys) > MAX_SIGNATURES:
        raise ValueError(f"more than {MAX_SIGNATURES} signing keys")
    message = pae(payload_type, payload)
    sigs: dict[str, bytes] = {}
    for key in keys:
        kid = _keyid(key.public_key())
        if kid not in sigs:
            sigs[kid] = key.sign(message)
    env = {
        "payload": base64.b64encode(payload).decode("ascii"),
        "payloadType": payload_type,
        "signatures": [{"keyid": kid, "sig": base64.b64encode(sig).decode("ascii")}
                       for kid, sig in sigs.items()],
    }
    return json.dumps(env, sort_keys=True, separators=(",", ":")).encode("utf-8")


class OrgTrust(Record):
    """What an agent pins for one org: signing keys by key id, and the CA PEM."""

    keys: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)
    ca_pem: str | None = None


class Trust(Record):
    """Parsed trust.json: ``{"orgs": {ORG: {"keys": [{"keyid", "public_key"}], "ca": PEM}}}``.

    With trust roots (reconciler.pki.root) the hub adds ``"root"`` per org, the
    newest published root envelope as a JSON string; ``keys`` and ``ca`` then
    list every manifest key and CA of that root (both generations during a
    rotation's overlap), so an agent that reads only those keeps working.
    ``load_trust`` ignores ``root``: the agent's root pinning reads it."""

    orgs: Mapping[str, OrgTrust] = field(default_factory=dict)

    def find_key(self, kid: str) -> tuple[str, Ed25519PublicKey] | None:
        for org, ot in self.orgs.items():
            if kid in ot.keys:
                return org, ot.keys[kid]
        return None


def _b64(text: object) -> bytes:
    if not isinstance(text, str):
        raise TypeError("not a string")
    return base64.b64decode(text, validate=True)


def load_trust(data: bytes | str) -> Trust:
    """Parse trust.json bytes; a key whose keyid does not match its key is refused."""
    try:
        doc = bounded_loads(data, what="trust file", max_bytes=MAX_TRUST_BYTES)
    except InputRefused as exc:
        raise ConfigError(f"trust file is invalid: {exc}") from exc
    try:
        orgs_doc = doc["orgs"]
        if not isinstance(orgs_doc, dict):
            raise TypeError("orgs must be an object")
        orgs: dict[str, OrgTrust] = {}
        for org, entry in orgs_doc.items():
            keys: dict[str, Ed25519PublicKey] = {}
            for k in entry.get("keys", []):
                raw = _b64(k["public_key"])
                if len(raw) != 32:
                    raise ValueError(f"org {org}: public key must be 32 bytes")
                pub = Ed25519PublicKey.from_public_bytes(raw)
                if _keyid(pub) != k["keyid"]:
                    raise ValueError(f"org {org}: keyid {k['keyid']} does not match its key")
                keys[k["keyid"]] = pub
            ca = entry.get("ca")
            if ca is not None and not isinstance(ca, str):
                raise TypeError(f"org {org}: ca must be a PEM string")
            orgs[org] = OrgTrust(keys=keys, ca_pem=ca)
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error) as exc:
        raise ConfigError(f"trust file is invalid: {exc}") from exc
    return Trust(orgs=orgs)


def trust_entry(public_keys: Sequence[Ed25519PublicKey], ca_pem: str | None,
                root: bytes | None = None) -> dict[str, Any]:
    """One org's trust.json entry (what the hub writes); ``root``: the newest
    published trust-root envelope, stored as a JSON string."""
    entry: dict[str, Any] = {
        "keys": [{"keyid": _keyid(k), "public_key": public_b64(k)} for k in public_keys]
    }
    if ca_pem is not None:
        entry["ca"] = ca_pem
    if root is not None:
        entry["root"] = root.decode("utf-8")
    return entry


class Envelope(Record):
    """A DSSE envelope's fields, parsed but not verified."""

    payload_type: str
    payload: bytes
    signatures: tuple[tuple[str, bytes], ...]  # (keyid, signature)


def parse_envelope(data: bytes, *, what: str = "DSSE envelope",
                   max_bytes: int = MAX_ENVELOPE_BYTES) -> Envelope:
    """The structure of a DSSE envelope, within bounds, without verifying it:
    ``ManifestRefused("malformed")`` when ``data`` is not one. ``open_envelope``
    verifies; the agent's state dir uses this to tell a corrupt cache file."""
    try:
        env = bounded_loads(data, what=what, max_bytes=max_bytes)
    except InputRefused as exc:
        raise ManifestRefused("malformed", str(exc)) from exc
    try:
        if not isinstance(env, dict):
            raise TypeError("envelope is not a JSON object")
        ptype, sigs = env["payloadType"], env["signatures"]
        if not isinstance(ptype, str):
            raise TypeError("payloadType is not a string")
        payload = _b64(env["payload"])
        if not isinstance(sigs, list) or not sigs:
            raise ValueError("no signatures")
        if len(sigs) > MAX_SIGNATURES:  # each costs a verification
            raise ValueError(f"{len(sigs)} signatures, more than {MAX_SIGNATURES}")
        parsed = tuple((str(s.get("keyid", "")), _b64(s["sig"])) for s in sigs)
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error) as exc:
        raise ManifestRefused("malformed", f"not a DSSE envelope: {exc}") from exc
    return Envelope(ptype, payload, parsed)


class Opened(Record):
    """A verified envelope: the payload and the org whose key signed it."""

    payload: bytes
    signer_org: str
    keyid: str

    def json(self, what: str) -> Any:
        """The payload as JSON within bounds; ``ManifestRefused("schema")`` when it is
        not (too deep, not UTF-8, not JSON). Signed does not mean well-formed: a
        signing key that leaked, or a publisher bug, must not crash an agent."""
        try:
            return bounded_loads(self.payload, what=what,
                                 max_bytes=max(len(self.payload), 1))
        except InputRefused as exc:
            raise ManifestRefused("schema", str(exc)) from exc


def open_envelope(
    data: bytes, trust: Trust | OrgTrust, payload_type: str, *, org: str | None = None,
    max_bytes: int = MAX_ENVELOPE_BYTES, parsed: Envelope | None = None,
) -> Opened:
    """Verify a DSSE envelope against pinned keys; return the payload.

    With a ``Trust`` every org's keys are tried, so a valid signature by another
    org's key is reported as ``wrong-org`` (when ``org`` is given) rather than
    ``unknown-key``. Refusals: ``malformed``, ``unknown-key``, ``bad-signature``,
    ``wrong-org``. An envelope over ``max_bytes``, nested too deep or not JSON
    is ``malformed`` too, and so is one whose signature list is absurdly long.

    ``parsed``: ``parse_envelope(data)``, when the caller holds it (the agent's
    state dir parsed its cached envelope on reading it); it is not parsed
    again. The signatures are checked over its payload all the same."""
    parsed_env = parsed or parse_envelope(data, what=f"DSSE envelope ({payload_type})",
                                          max_bytes=max_bytes)
    ptype, payload, parsed = parsed_env.payload_type, parsed_env.payload, parsed_env.signatures
    if ptype != payload_type:
        raise ManifestRefused("malformed", f"payloadType {ptype!r}, expected {payload_type!r}")
    if isinstance(trust, OrgTrust):
        trust = Trust(orgs={org or "": trust})
    message = pae(payload_type, payload)
    seen_known = False
    for kid, sig in parsed:
        found = trust.find_key(kid)
        if found is None:
            continue
        seen_known = True
        signer_org, pub = found
        try:
            pub.verify(sig, message)
        except InvalidSignature:
            continue
        if org is not None and signer_org != org and signer_org != "":
            raise ManifestRefused(
                "wrong-org", f"signed by a key of org {signer_org!r}, expected org {org!r}"
            )
        return Opened(payload=payload, signer_org=signer_org or (org or ""), keyid=kid)
    if not seen_known:
        kids = ", ".join(k[:16] for k, _ in parsed)
        raise ManifestRefused("unknown-key", f"signed by key(s) {kids}… that are not trusted")
    raise ManifestRefused("bad-signature", "signature does not verify with the trusted key")


__all__ = [
    "MAX_ENVELOPE_BYTES",
    "Envelope",
    "Opened",
    "OrgTrust",
    "Trust",
    "load_trust",
    "open_envelope",
    "pae",
    "parse_envelope",
    "raw_public",
    "sign_envelope",
    "sign_envelope_multi",
    "trust_entry",
]
