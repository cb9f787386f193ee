"""The versioned, signed trust root of one org, and the chain agents walk.

Modelled on TUF's root metadata (theupdateframework.io specification, "root
role" and the client workflow's "update the root role" step): a root lists
Ed25519 keys and, per role, which of them count and how many signatures
(threshold) a document of that role needs.

Roles:

* ``root``: signs the next root. Default: every manifest and CA key, all of
  them required, so a stolen manifest-signing key alone cannot re-key the org;
* ``manifest``: signs manifests and the endpoint feed (threshold 1; during a
  rotation's overlap both keys are listed and both sign);
* ``ca``: the org CAs (their Ed25519 keys); ``ca_pems`` holds the
  certificates agents pin for the hub's TLS and device certificates.

Root ``N+1`` is accepted on top of root ``N`` only when a threshold of
``N``'s root-role keys signs it **and** a threshold of its own root-role keys
signs it, and its version is exactly ``N+1``: an agent offline through several
rotations walks ``N+1, N+2, ...`` one by one (``walk``). A first, pinned root
must carry a threshold of its own root-role signatures (trust on first pin).

Roots travel as DSSE envelopes (``pki.envelope.pae``) with one signature per
key, payload type ``application/vnd.meshops.root+json``. Refusals are
``ManifestRefused`` with reasons ``root-malformed``, ``root-wrong-org``,
``root-version`` and ``root-threshold``. Called by ``hub.publish`` (building
and signing), the hub API and static hosting (serving), ``cli`` (``ca
rotate``) and the agent (walking the chain). ``now`` is never read here.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from reconciler.boundedjson import loads as bounded_loads
from reconciler.errors import InputRefused, ManifestRefused
from reconciler.pki.envelope import OrgTrust, pae
from reconciler.pki.keys import keyid, public_b64

ROOT_TYPE = "application/vnd.meshops.root+json"
ROLES = ("root", "manifest", "ca")
MAX_ROOT_BYTES = 1 << 20
MAX_KEYS = 64


@dataclass(frozen=True)
class Role:
    keyids: tuple[str, ...]
    threshold: int


@dataclass(frozen=True)
class TrustRoot:
    org: str
    version: int
    issued_at: int
    keys: Mapping[str, Ed25519PublicKey] = field(repr=False)
    roles: Mapping[str, Role]
    ca_pems: tuple[str, ...] = ()

    def role_keys(self, role: str) -> dict[str, Ed25519PublicKey]:
        return {k: self.keys[k] for k in self.roles[role].keyids}

    def org_trust(self) -> OrgTrust:
        """What manifest and feed verification pin: the manifest-role keys and
        the CA bundle (every CA of the root, so an overlap trusts both)."""
        return OrgTrust(keys=self.role_keys("manifest"),
                        ca_pem="".join(self.ca_pems) or None)


def build_root(org: str, version: int, issued_at: int, *,
               manifest_keys: Sequence[Ed25519PublicKey], ca_keys: Sequence[Ed25519PublicKey],
               ca_pems: Sequence[str], root_threshold: int | None = None) -> TrustRoot:
    """A root whose ``root`` role is every manifest and CA key; its threshold
    defaults to all of them."""
    keys = {keyid(k): k for k in (*manifest_keys, *ca_keys)}
    root_ids = tuple(sorted(keys))
    roles = {
        "root": Role(root_ids, root_threshold or len(root_ids)),
        "manifest": Role(tuple(sorted(keyid(k) for k in manifest_keys)), 1),
        "ca": Role(tuple(sorted(keyid(k) for k in ca_keys)), 1),
    }
    root = TrustRoot(org, version, issued_at, keys, roles, tuple(ca_pems))
    _check(root)
    return root


def root_to_dict(root: TrustRoot) -> dict[str, Any]:
    return {
        "_type": "root",
        "org": root.org,
        "version": root.version,
        "issued_at": root.issued_at,
        "keys": {k: {"keytype": "ed25519", "public_key": public_b64(v)}
                 for k, v in sorted(root.keys.items())},
        "roles": {name: {"keyids": list(r.keyids), "threshold": r.threshold}
                  for name, r in sorted(root.roles.items())},
        "ca": list(root.ca_pems),
    }


def canonical(root: TrustRoot) -> bytes:
    return json.dumps(root_to_dict(root), sort_keys=True, separators=(",", ":")).encode()


def sign_root(root: TrustRoot, keys: Iterable[Ed25519PrivateKey]) -> bytes:
    """The DSSE envelope of ``root`` with one signature per distinct key."""
    payload = canonical(root)
    message = pae(ROOT_TYPE, payload)
    sigs = {keyid(k.public_key()): k.sign(message) for k in keys}
    env = {"payload": base64.b64encode(payload).decode("ascii"), "payloadType": ROOT_TYPE,
           "signatures": [{"keyid": kid, "sig": base64.b64encode(sig).decode("ascii")}
                          for kid, sig in sorted(sigs.items())]}
    return json.dumps(env, sort_keys=True, separators=(",", ":")).encode()


def open_root(data: bytes, org: str) -> tuple[TrustRoot, bytes, dict[str, bytes]]:
    """Parse an envelope (no trust decision yet): the root, the signed message
    and the signatures by key id."""
    try:
        env = bounded_loads(data, what="trust root", max_bytes=MAX_ROOT_BYTES, max_depth=8)
        if not isinstance(env, dict) or env.get("payloadType") != ROOT_TYPE:
            raise ValueError(f"payloadType must be {ROOT_TYPE}")
        payload = base64.b64decode(env["payload"], validate=True)
        sigs_doc = env["signatures"]
        if not isinstance(sigs_doc, list) or not 0 < len(sigs_doc) <= MAX_KEYS:
            raise ValueError(f"1 to {MAX_KEYS} signatures are needed")
        sigs = {str(s["keyid"]): base64.b64decode(s["sig"], validate=True) for s in sigs_doc}
        root = root_from_dict(bounded_loads(payload, what="trust root payload",
                                            max_bytes=MAX_ROOT_BYTES, max_depth=6))
    except (InputRefused, ValueError, TypeError, KeyError, AttributeError,
            binascii.Error) as exc:
        raise ManifestRefused("root-malformed", f"trust root is not valid: {exc}") from exc
    if root.org != org:
        raise ManifestRefused("root-wrong-org", f"trust root is for org {root.org!r}, not {org!r}")
    return root, pae(ROOT_TYPE, payload), sigs


def root_from_dict(doc: Any) -> TrustRoot:
    if not isinstance(doc, dict) or doc.get("_type") != "root":
        raise ValueError('"_type" must be "root"')
    org, version, issued = doc["org"], doc["version"], doc["issued_at"]
    if not isinstance(org, str) or not _is_int(version) or version < 1 or not _is_int(issued):
        raise ValueError("org must be a string, version and issued_at positive integers")
    keys_doc = doc["keys"]
    if not isinstance(keys_doc, dict) or not 0 < len(keys_doc) <= MAX_KEYS:
        raise ValueError(f"1 to {MAX_KEYS} keys are needed")
    keys: dict[str, Ed25519PublicKey] = {}
    for kid, entry in keys_doc.items():
        if entry.get("keytype") != "ed25519":
            raise ValueError(f"key {kid[:16]}: only ed25519 keys are supported")
        raw = base64.b64decode(entry["public_key"], validate=True)
        if len(raw) != 32:
            raise ValueError(f"key {kid[:16]}: 32 bytes expected")
        pub = Ed25519PublicKey.from_public_bytes(raw)
        if keyid(pub) != kid:
            raise ValueError(f"key id {kid[:16]} does not match its key")
        keys[kid] = pub
    roles_doc = doc["roles"]
    if not isinstance(roles_doc, dict) or set(roles_doc) != set(ROLES):
        raise ValueError(f"roles must be exactly {', '.join(ROLES)}")
    roles = {name: Role(tuple(str(k) for k in r["keyids"]), r["threshold"])
             for name, r in roles_doc.items()}
    ca = doc["ca"]
    if not isinstance(ca, list) or not all(isinstance(p, str) for p in ca):
        raise ValueError("ca must be a list of PEM strings")
    root = TrustRoot(org, version, issued, keys, roles, tuple(ca))
    _check(root)
    return root


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _check(root: TrustRoot) -> None:
    for name, role in root.roles.items():
        if not _is_int(role.threshold) or not 1 <= role.threshold <= len(role.keyids):
            raise ValueError(f"role {name}: threshold must be 1 to {len(role.keyids)}")
        if len(set(role.keyids)) != len(role.keyids):
            raise ValueError(f"role {name}: a key is listed twice")
        unknown = [k for k in role.keyids if k not in root.keys]
        if unknown:
            raise ValueError(f"role {name}: key {unknown[0][:16]} is not in keys")


def _signed_by(message: bytes, sigs: Mapping[str, bytes], keys: Mapping[str, Ed25519PublicKey]
               ) -> int:
    good = 0
    for kid, pub in keys.items():
        sig = sigs.get(kid)
        if sig is None:
            continue
        try:
            pub.verify(sig, message)
        except InvalidSignature:
            continue
        good += 1
    return good


def _require(root: TrustRoot, signer: TrustRoot, message: bytes, sigs: Mapping[str, bytes],
             whose: str) -> None:
    role = signer.roles["root"]
    good = _signed_by(message, sigs, signer.role_keys("root"))
    if good < role.threshold:
        raise ManifestRefused(
            "root-threshold",
            f"trust root version {root.version} of org {root.org!r} carries {good} valid "
            f"signature(s) of {whose} root keys; {role.threshold} are required")


def verify_initial(data: bytes, org: str) -> TrustRoot:
    """A root pinned by hand (``agent init --trust``): its own threshold must sign it."""
    root, message, sigs = open_root(data, org)
    _require(root, root, message, sigs, f"version {root.version}'s own")
    return root


def verify_next(current: TrustRoot, data: bytes) -> TrustRoot:
    """Root ``current.version + 1``, signed by a threshold of ``current``'s root
    keys and of its own."""
    root, message, sigs = open_root(data, current.org)
    if root.version != current.version + 1:
        raise ManifestRefused(
            "root-version", f"trust root version {root.version} does not follow the pinned "
                            f"version {current.version}")
    _require(root, current, message, sigs, f"the pinned version {current.version}'s")
    _require(root, root, message, sigs, f"version {root.version}'s own")
    return root


def walk(current: TrustRoot, updates: Iterable[bytes]) -> TrustRoot:
    """Apply ``updates`` (versions ``current+1, current+2, ...`` in order)."""
    for data in updates:
        current = verify_next(current, data)
    return current
