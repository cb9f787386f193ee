"""``meshops ca rotate``: a new key generation written into the repository.

``rotate_org_keys(repo, org, now=..., signing=..., ca=...)`` reads the org's
secret (``hub.publish``'s readers), builds the new generation and the trust
roots N+1 and N+2 with the pure ``hub.rotation.rotate_keys``, and writes the
SOPS secret, the CA certificate and ``orgs/ORG/roots/N.json``: a commit the
hub then follows. Called by ``meshops ca rotate`` (``cli.pki``) and the lab.
It sits above both ``hub.publish`` and ``hub.rotation`` so neither imports the
other back.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reconciler.errors import UsageError
from reconciler.fsio import atomic_write
from reconciler.hub.rotation import (
    DAY,
    check_chain,
    check_matches_secret,
    initial_root,
    root_relpath,
    rotate_keys,
)
from reconciler.pki import ca as pki_ca
from reconciler.pki.root import verify_initial

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rotation:
    """What ``rotate_org_keys`` wrote (paths relative to the repository)."""

    org: str
    written: tuple[str, ...]
    versions: tuple[int, int]  # the overlap root and the root that retires the old keys
    overlap_until: int


def rotate_org_keys(repo_path: str | os.PathLike[str], org_name: str, *, now: float,
                    signing: bool, ca: bool, overlap_days: int | None = None,
                    gpg_home: str | None = None,
                    overlap_seconds: int | None = None) -> Rotation:
    """``meshops ca rotate``: new key(s), the old ones kept as ``previous`` until
    ``now + overlap``, the new CA certificate in ``orgs/ORG/ca.crt`` and roots
    N+1, N+2 in ``orgs/ORG/roots/``. A repository without roots first gets
    root 1 for the current keys (the legacy trust.json migrates in band)."""
    from reconciler.hub.publish import (
        ca_relpath,
        decrypt_org_keys,
        load_org_for_keys,
        read_secret_file,
        refuse_links,
        secrets_relpath,
    )
    from reconciler.secrets.gpg import Gpg
    from reconciler.secrets.sops import encrypt

    root = Path(repo_path)
    repo, org, recipients = load_org_for_keys(root, org_name)
    days = overlap_days if overlap_days is not None else repo.mesh.rotation_overlap_days
    if not 1 <= days <= 365:
        raise UsageError(f"--overlap-days {days}: must be 1 to 365")
    raw = read_secret_file(root, None, secrets_relpath(org_name))
    if raw is None:
        raise UsageError(f"{secrets_relpath(org_name)} is missing: run "
                         f"`meshops ca init --org {org_name}` first")
    keys = decrypt_org_keys(raw.decode("utf-8"), org, gpg_home)
    if keys.in_overlap(now):
        assert keys.previous is not None
        raise UsageError(
            f"org {org_name}: the previous rotation's overlap runs until "
            f"{pki_ca.utc(keys.previous.overlap_until).isoformat()}; rotate again after it "
            "(agents must be able to walk each root with the keys they pin)")
    written: list[str] = []
    if org.roots:
        chain = check_chain(org)
        check_matches_secret(org_name, chain[-1], keys)
        current = chain[-1]
    else:  # legacy: root 1 of today's keys first, so agents can pin and walk from it
        first = initial_root(keys, now)
        current = verify_initial(first, org_name)
        atomic_write(root / root_relpath(org_name, 1), first, mode=0o644)
        written.append(root_relpath(org_name, 1))
    if current.issued_at > now:
        raise UsageError(f"org {org_name}: trust root {current.version} is issued in the future "
                         f"({pki_ca.utc(current.issued_at).isoformat()}); check this clock")
    # overlap_seconds: the lab and its e2e tests, whose timers are seconds, not days
    overlap_until = int(now) + (overlap_seconds if overlap_seconds is not None else days * DAY)
    rotated, r1, r2 = rotate_keys(
        keys, current,
        new_signing=Ed25519PrivateKey.generate() if signing else None,
        new_ca=pki_ca.init_ca(org.organization, now) if ca else None,
        now=now, overlap_until=overlap_until)
    refuse_links(root, secrets_relpath(org_name))
    text = encrypt(pki_ca.keys_doc(rotated), recipients, gpg=Gpg(gpg_home), fmt="yaml")
    for version, data in ((current.version + 1, r1), (current.version + 2, r2)):
        atomic_write(root / root_relpath(org_name, version), data, mode=0o644)
        written.append(root_relpath(org_name, version))
    if ca:
        atomic_write(root / ca_relpath(org_name), rotated.ca_pem.encode("ascii"), mode=0o644)
        written.append(ca_relpath(org_name))
    atomic_write(root / secrets_relpath(org_name), text.encode("utf-8"), mode=0o600)
    written.append(secrets_relpath(org_name))
    log.info("rotated %s of org %s; overlap until %d",
             " and ".join(w for w, on in (("the signing key", signing), ("the CA", ca)) if on),
             org_name, overlap_until)
    return Rotation(org_name, tuple(written), (current.version + 1, current.version + 2),
                    overlap_until)
