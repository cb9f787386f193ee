"""Trust roots on the hub side: the chain in git, what a publish serves, ``ca rotate``.

Called by ``reconciler.hub.publish`` (``org_roots`` for every org at every
publish, ``initial_root`` from ``init_org_ca``) and ``reconciler.hub.carotate``
(``meshops ca rotate``: ``rotate_keys``). The chain itself is
``reconciler.pki.root``; the key generations are ``reconciler.pki.ca``.

The chain in git, ``orgs/ORG/roots/N.json``, is checked at every publish
(``check_chain``): root 1 must carry its own threshold of signatures, each
next root a threshold of its predecessor's root keys and of its own
(``pki.root.verify_next``), and the newest root must list exactly the keys
the org secret holds as its current generation. A root edited by hand, a
root signed only by a new key, a gap, or a secret that does not match the
roots is a ``ValidationError`` naming the file and the fix: nothing is
published.

What a publish serves (``OrgRoots``): roots 1..P where P is the last root of
the prefix whose ``issued_at`` is not after ``now`` (root 1 always counts).
``meshops ca rotate`` writes two roots at once: N+1 (old and new keys,
``issued_at`` now minus ``ISSUE_SKEW``) and N+2 (only the new keys, ``issued_at`` =
``overlap_until``), both signed by both generations while both private keys
are at hand. So the end of the overlap needs no operator action: the first
publish at or after ``overlap_until`` serves N+2, signs manifests with the new
key only (``manifest_signers``) and moves the hub's TLS certificate to the new
CA (``pki.ca.OrgKeys.server_keys``), all from the same clock.

Rotation policy: ``ca rotate`` refuses while a previous overlap still runs
(the secret holds one previous generation, and an agent must be able to walk
N+1 with the keys it pins); the next rotation after an overlap drops the
retired keys from the secret.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from reconciler.errors import ManifestRefused, PkiError, Problem, UsageError, ValidationError
from reconciler.model.repo import OrgState, Repo
from reconciler.pki import ca as pki_ca
from reconciler.pki.keys import keyid, private_from_pem
from reconciler.pki.root import TrustRoot, build_root, sign_root, verify_initial, verify_next

DAY = 86400
# Root N+1 is dated this much before the rotation, so a hub whose clock runs a
# little behind the operator's serves it at the first publish after the commit
# (until it does, the hub would issue certificates under a CA that no published
# root lists yet).
ISSUE_SKEW = 600


def root_relpath(org: str, version: int) -> str:
    return f"orgs/{org}/roots/{version}.json"


def root_of(org: str, version: int, issued_at: int, signing: Sequence[Ed25519PublicKey],
            cas: Sequence[x509.Certificate]) -> TrustRoot:
    """A root listing ``signing`` as manifest keys and ``cas`` as the org CAs."""
    ca_keys: list[Ed25519PublicKey] = []
    for cert in cas:
        pub = cert.public_key()
        if not isinstance(pub, Ed25519PublicKey):
            raise PkiError(f"org {org}: the CA key is not Ed25519")
        ca_keys.append(pub)
    return build_root(org, version, issued_at, manifest_keys=list(signing), ca_keys=ca_keys,
                      ca_pems=[pki_ca.cert_pem(c) for c in cas])


def initial_root(keys: pki_ca.OrgKeys, now: float) -> bytes:
    """Root 1 of the org's current keys, signed by both (``ca init``)."""
    root = root_of(keys.org, 1, int(now), [keys.signing_key.public_key()], [keys.ca_cert])
    return sign_root(root, [keys.signing_key, keys.ca_key])


def _problem(org: str, version: int, message: str, remedy: str,
             code: str = "E-ROOT-CHAIN") -> ValidationError:
    return ValidationError([Problem(root_relpath(org, version), 1, code, message, remedy)])


def check_chain(org: OrgState) -> tuple[TrustRoot, ...]:
    """Verify ``org.roots`` from 1 upward; ``ValidationError`` at the first bad file."""
    chain: list[TrustRoot] = []
    remedy = (f"restore {root_relpath(org.name, 0).rpartition('/')[0]}/ from git history: "
              "roots are signed and written only by `meshops ca init` and `meshops ca rotate`")
    for index, data in enumerate(org.roots):
        version = index + 1
        try:
            root = verify_initial(data, org.name) if not chain else verify_next(chain[-1], data)
        except ManifestRefused as exc:
            detail = str(exc).removeprefix(f"manifest refused ({exc.reason}): ")
            raise _problem(org.name, version, f"trust root refused ({exc.reason}): {detail}",
                           remedy) from exc
        if root.version != version:
            raise _problem(org.name, version,
                           f"the file holds trust root version {root.version}", remedy)
        chain.append(root)
    return tuple(chain)


def chain_problems(repo: Repo) -> list[Problem]:
    """Every org's chain checked as a publish would, without the secret
    (``meshops validate``: CI catches a root edited by hand before it merges)."""
    problems: list[Problem] = []
    for org in repo.orgs.values():
        try:
            check_chain(org)
        except ValidationError as exc:
            problems.extend(exc.problems)
    return problems


def check_matches_secret(org: str, newest: TrustRoot, keys: pki_ca.OrgKeys) -> None:
    """The newest root in git lists exactly the secret's current keys."""
    want_manifest = {keyid(keys.signing_key.public_key())}
    want_ca = {keyid(keys.ca_key.public_key())}
    have_manifest = set(newest.roles["manifest"].keyids)
    have_ca = set(newest.roles["ca"].keyids)
    for role, have, want in (("manifest", have_manifest, want_manifest),
                             ("ca", have_ca, want_ca)):
        if have != want:
            raise _problem(
                org, newest.version,
                f"the newest trust root lists {role} key(s) "
                f"{', '.join(sorted(k[:16] for k in have))} but secrets/{org}-ca.sops.yaml "
                f"holds {', '.join(k[:16] for k in sorted(want))}",
                "commit the roots and the secret that `meshops ca rotate` wrote together "
                "(or restore both from the same commit)", code="E-ROOT-SECRET")


@dataclass(frozen=True)
class OrgRoots:
    """The org's verified chain and the part of it a publish at ``now`` serves."""

    chain: tuple[TrustRoot, ...]
    envelopes: tuple[bytes, ...]  # the published ones: envelopes[i] is version i + 1

    @property
    def newest(self) -> TrustRoot:
        return self.chain[len(self.envelopes) - 1]

    @property
    def next_due(self) -> int | None:
        """When the next root in git is due (the end of a rotation's overlap): the
        hub re-publishes then (``Snapshot.next_change_at``)."""
        later = self.chain[len(self.envelopes):]
        return later[0].issued_at if later else None


def org_roots(org: OrgState, keys: pki_ca.OrgKeys, now: float,
              chain: tuple[TrustRoot, ...] | None = None) -> OrgRoots | None:
    """``None`` for an org without roots (legacy trust.json); else the checked chain
    (``chain``: the result of ``check_chain(org)`` a caller kept for these bytes)."""
    if not org.roots:
        return None
    if chain is None:
        chain = check_chain(org)
    check_matches_secret(org.name, chain[-1], keys)
    published = 1
    while published < len(chain) and chain[published].issued_at <= now:
        published += 1
    return OrgRoots(chain=chain, envelopes=tuple(org.roots[:published]))


def manifest_signers(root: TrustRoot, keys: pki_ca.OrgKeys) -> tuple[Ed25519PrivateKey, ...]:
    """The held private keys that ``root`` lists for the manifest role: both
    generations during an overlap, the new one alone after it."""
    listed = set(root.roles["manifest"].keyids)
    out: dict[str, Ed25519PrivateKey] = {}
    for key in keys.private_keys():
        kid = keyid(key.public_key())
        if kid in listed:
            out.setdefault(kid, key)
    if not out:
        raise PkiError(
            f"org {keys.org}: secrets/{keys.org}-ca.sops.yaml holds none of the manifest keys "
            f"of trust root {root.version}; restore the secret from the commit that wrote "
            f"{root_relpath(keys.org, root.version)}")
    return tuple(out.values())


# -- meshops ca rotate --------------------------------------------------------------------


def rotate_keys(keys: pki_ca.OrgKeys, current: TrustRoot, *, new_signing: Ed25519PrivateKey | None,
                new_ca: pki_ca.CaBundle | None, now: float, overlap_until: int
                ) -> tuple[pki_ca.OrgKeys, bytes, bytes]:
    """Pure: the next key generation and roots N+1 (overlap) and N+2 (new only),
    both signed by every old and new key, and checked to walk from ``current``."""
    if new_signing is None and new_ca is None:
        raise UsageError("nothing to rotate: pass --signing-key, --ca or both")
    prev = pki_ca.PreviousKeys(
        overlap_until=overlap_until,
        signing_key=keys.signing_key if new_signing is not None else None,
        ca_key=keys.ca_key if new_ca is not None else None,
        ca_cert=keys.ca_cert if new_ca is not None else None,
    )
    ca_key, ca_cert = keys.ca_key, keys.ca_cert
    if new_ca is not None:
        ca_key = private_from_pem(new_ca.key_pem, "new CA key")
        ca_cert = pki_ca.load_ca_cert(new_ca.cert_pem, "new CA certificate")
    signing = new_signing or keys.signing_key
    rotated = pki_ca.OrgKeys(keys.org, ca_key, ca_cert, signing, prev)
    old_pubs = [keys.signing_key.public_key()]
    if new_signing is not None:
        old_pubs.append(signing.public_key())
    cas = [keys.ca_cert] + ([ca_cert] if new_ca is not None else [])
    overlap = root_of(keys.org, current.version + 1, max(int(now) - ISSUE_SKEW, 0),
                      old_pubs, cas)
    final = root_of(keys.org, current.version + 2, overlap_until, [signing.public_key()],
                    [ca_cert])
    signers = [keys.signing_key, keys.ca_key, signing, ca_key]
    first, second = sign_root(overlap, signers), sign_root(final, signers)
    verify_next(verify_next(current, first), second)  # what every agent will do
    return rotated, first, second
