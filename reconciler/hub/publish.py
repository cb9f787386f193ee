"""Turn a commit of the org repository into signed manifests and device certificates.

Called by ``meshops hub publish`` (reconciler.cli.hub), ``hub serve`` (which
keeps one ``Publisher`` and calls ``publish(rev, now)`` per new commit, with
``out_dir=None`` to build in memory) and ``meshops ca init`` (``init_org_ca``,
which also writes trust root 1).

One publish, per org:

1. load and validate with ``reconciler.config.load`` (the same code as
   ``meshops validate``); an invalid repo raises ``ValidationError`` and
   nothing is written;
2. the commit gate (``reconciler.hub.gate``): with the gate on (as of the
   last published commit, or by the hub's ``--gate-signers``), refuse the
   head unless every commit since the last published one is signed by whom
   it must be; a refusal raises ``CommitRefused`` and nothing is written;
3. decrypt ``secrets/ORG-ca.sops.yaml`` in memory (``reconciler.secrets``);
4. reuse each device's stored certificate while it still binds the same keys
   and IPs and is not due for renewal, else issue one with a fresh random
   63-bit serial (``reconciler.hub.store``); revoke the certificates of
   removed or disabled devices and of devices whose keys or IPs changed;
5. verify the org's trust roots (``orgs/ORG/roots/N.json``) from 1 upward and
   against the secret, and pick the published ones (``issued_at <= now``;
   ``reconciler.hub.rotation``); an org without roots keeps the legacy
   single-key trust.json;
6. build, encode and sign the manifest (``reconciler.pki.manifest``), with
   ``serial = max(now in ms, last serial + 1)``, ``root_version`` = the newest
   published root, signed by that root's manifest keys (both during a
   rotation's overlap);
7. write ``DIR/ORG/certs/NAME.pem``, ``DIR/ORG/ca.crt`` (the root's CA bundle),
   ``DIR/ORG/roots/N.json``, ``DIR/trust.json`` and last
   ``DIR/ORG/manifest.json``, each atomically (``reconciler.fsio``).
   Before writing, temp files that a killed publish left in those directories
   are removed (``fsio.remove_stale_temps``); a failed write removes its own.

Secrets are read without following symbolic links (``read_secret_file``): a
``secrets/`` directory or ``secrets/ORG-ca.sops.yaml`` that is a link, or
anything other than a regular file, is refused, in a working tree and in a
commit (tree entries of mode 120000), so a link can never make the hub read or
decrypt a file from outside the repository.

``Publisher`` keeps the config ``BlobCache``, decrypted keys, the store's
current certificates, the compiled policy and per-device manifest fragments,
so a one-device commit on a 10,000-device org costs milliseconds, not seconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets as _secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from reconciler.errors import PkiError, UsageError, ValidationError
from reconciler.fsio import atomic_write, atomic_write_many, fsync_dir, remove_stale_temps
from reconciler.hub import gate as commit_gate
from reconciler.hub.rotation import (
    OrgRoots,
    check_chain,
    initial_root,
    manifest_signers,
    org_roots,
    root_relpath,
)
from reconciler.hub.store import CertRecord, Store, open_store
from reconciler.model.manifest import Manifest, ManifestDevice
from reconciler.model.repo import Device, OrgState, Repo
from reconciler.pki import ca as pki_ca
from reconciler.pki import certs as pki_certs
from reconciler.pki.envelope import trust_entry
from reconciler.pki.keys import keyid
from reconciler.pki.manifest import build_manifest, encode_manifest, next_serial, sign_manifest

log = logging.getLogger(__name__)

DAY = 86400


def secrets_relpath(org: str) -> str:
    return f"secrets/{org}-ca.sops.yaml"


def ca_relpath(org: str) -> str:
    return f"orgs/{org}/ca.crt"


@dataclass(frozen=True)
class OrgPublish:
    """What one org's publish produced (all public data)."""

    org: str
    manifest: Manifest
    envelope: bytes
    certs: Mapping[str, str]  # device name -> PEM
    ca_pem: str  # the CA bundle device certificates are checked against (both in an overlap)
    issued: tuple[str, ...] = ()  # devices that got a new certificate
    revoked: tuple[int, ...] = ()  # serials revoked by this publish
    roots: tuple[bytes, ...] = ()  # published trust roots: roots[i] is version i + 1
    trust: Mapping[str, Any] = field(default_factory=dict)  # this org's trust.json entry
    signer_ids: tuple[str, ...] = ()  # key ids that signed the manifest (the feed follows)
    next_root_at: int | None = None  # when a root in git becomes due (end of an overlap)


@dataclass(frozen=True)
class PublishResult:
    commit: str
    orgs: Mapping[str, OrgPublish]
    trust_json: bytes

    def envelope(self, org: str) -> bytes:
        return self.orgs[org].envelope


# -- small helpers ------------------------------------------------------------------------


def worktree_commit(repo: Repo) -> str:
    """A stable id for a working tree: SHA-256 over every object's file and blob id."""
    h = hashlib.sha256()
    sources = [repo.mesh.source]
    for org in repo.orgs.values():
        sources.append(org.organization.source)
        sources += [u.source for u in org.users.values()]
        sources += [d.source for d in org.devices.values()]
        if org.policy is not None:
            sources.append(org.policy.source)
        h.update((org.ca_cert_pem or "").encode())
        for data in org.roots:
            h.update(hashlib.sha256(data).digest())
    for s in sorted(sources, key=lambda s: s.file):
        h.update(f"{s.file}\0{s.blob}\n".encode())
    return "worktree-" + h.hexdigest()[:40]


MAX_SECRET_BYTES = 1024 * 1024  # a SOPS file holding two PEM keys is a few KiB


def read_secret_file(repo_path: Path, rev: str | None, rel: str,
                     trees: Any = None) -> bytes | None:
    """The bytes of ``rel`` (``secrets/ORG-ca.sops.yaml``) in the working tree or at
    ``rev``; None when it does not exist. ``PkiError`` when it, or a directory on the
    way to it, is a symbolic link or anything but a regular file, or when it is larger
    than ``MAX_SECRET_BYTES``. ``trees``: the config ``BlobCache.trees`` (git tree
    objects parsed by id), so a commit's trees are not parsed twice."""
    from reconciler.config.source import FILE, open_source

    source = open_source(repo_path, rev, trees)
    try:
        entry = source.lookup(rel)
        if entry is None:
            return None
        where = f" in commit {rev}" if rev is not None else ""
        if entry.type == "symlink":
            raise PkiError(f"{entry.path} is a symbolic link{where}; the hub never follows "
                           "links out of the repository: put the file itself there")
        if entry.type != FILE or entry.path != rel:
            what = {"dir": "a directory", "file": "a file", "submodule": "a git submodule"}.get(
                entry.type, "a FIFO, socket or device file")
            need = "a regular file" if entry.path == rel else "a directory"
            raise PkiError(f"{entry.path}{where} is {what}; the hub needs {need} there")
        data = source.read(entry)  # a working tree opens it with O_NOFOLLOW
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
    if len(data) > MAX_SECRET_BYTES:
        raise PkiError(f"{rel} is larger than {MAX_SECRET_BYTES} bytes: not a meshops secret")
    return data


def refuse_links(root: Path, rel: str) -> None:
    """``init_org_ca`` writes only through plain directories: a symlinked ``secrets/``
    would put the CA key wherever the link points."""
    from reconciler.config.source import WorkTreeSource

    entry = WorkTreeSource(root).lookup(rel)
    if entry is not None and entry.type == "symlink":
        raise UsageError(f"{entry.path} is a symbolic link; meshops writes secrets only into "
                         "the repository itself: replace the link with a directory or file")


def decrypt_org_keys(text: str, org: OrgState, gpg_home: str | None) -> pki_ca.OrgKeys:
    """Decrypt ``secrets/ORG-ca.sops.yaml`` in memory and check it against ``ca.crt``."""
    from reconciler.secrets.gpg import Gpg
    from reconciler.secrets.sops import decrypt

    if org.ca_cert_pem is None:
        raise PkiError(f"{ca_relpath(org.name)} is missing: run `meshops ca init --org {org.name}`")
    doc = decrypt(text, gpg=Gpg(gpg_home), fmt="yaml")
    return pki_ca.org_keys_from_doc(doc, org.name, org.ca_cert_pem)


def load_org_for_keys(root: Path, org_name: str) -> tuple[Repo, OrgState, list[str]]:
    """The validated working tree, org ``org_name`` and the PGP recipients its
    key secret is encrypted to: what ``ca init`` and ``ca rotate`` start from."""
    from reconciler.config import load

    result = load(root)
    if result.repo is None:
        raise ValidationError(result.problems)
    org = result.repo.orgs.get(org_name)
    if org is None:
        raise UsageError(f"no org {org_name!r} in {root} (orgs/{org_name}/organization.yaml)")
    recipients = list(result.repo.mesh.pgp_recipients)
    if not recipients:
        raise UsageError("mesh.yaml has no pgp_recipients to encrypt the org keys to")
    return result.repo, org, recipients


def init_org_ca(
    repo_path: str | os.PathLike[str],
    org_name: str,
    *,
    now: float,
    gpg_home: str | None = None,
    force: bool = False,
) -> tuple[Path, Path]:
    """Make the org CA and manifest-signing key; write ``orgs/ORG/ca.crt`` and the
    SOPS file ``secrets/ORG-ca.sops.yaml`` encrypted to mesh.yaml's pgp_recipients.

    Refuses to overwrite an existing CA unless ``force``. Returns both paths."""
    from reconciler.secrets.gpg import Gpg
    from reconciler.secrets.sops import encrypt

    root = Path(repo_path)
    _, org, recipients = load_org_for_keys(root, org_name)
    cert_path, secret_path = root / ca_relpath(org_name), root / secrets_relpath(org_name)
    refuse_links(root, secrets_relpath(org_name))
    if not force and (cert_path.exists() or secret_path.exists()):
        raise UsageError(
            f"org {org_name} already has a CA ({cert_path.relative_to(root)}); "
            "pass --force to replace it (every device certificate is then reissued)"
        )
    bundle = pki_ca.init_ca(org.organization, now)
    doc = pki_ca.secret_doc(org_name, bundle.key_pem, pki_ca.new_signing_key_pem())
    keys = pki_ca.org_keys_from_doc(doc, org_name, bundle.cert_pem)
    text = encrypt(doc, recipients, gpg=Gpg(gpg_home), fmt="yaml")
    roots_dir = root / "orgs" / org_name / "roots"
    if roots_dir.is_dir() and not roots_dir.is_symlink():
        # --force: a new chain starts; agents pinned to the old one must be re-pinned
        stale = sorted(roots_dir.glob("*.json"))
        for path in stale:
            path.unlink()
        if stale:
            log.warning("org %s: removed %d trust root(s); every agent must be re-pinned "
                        "(`meshops agent init --trust`): use `meshops ca rotate` to replace "
                        "keys without that", org_name, len(stale))
    refuse_links(root, root_relpath(org_name, 1))
    atomic_write(secret_path, text.encode("utf-8"), mode=0o600)
    atomic_write(cert_path, bundle.cert_pem.encode("ascii"), mode=0o644)
    atomic_write(root / root_relpath(org_name, 1), initial_root(keys, now), mode=0o644)
    log.info("made CA for org %s (%d recipients)", org_name, len(recipients))
    return cert_path, secret_path


EXAMPLE_KEY_FILE = "keys/example-hub.sec.asc"


def example_gnupghome(repo_path: str | os.PathLike[str], home: str | os.PathLike[str]) -> str:
    """Make ``home`` a GnuPG home holding the example repo's throwaway key
    (``keys/example-hub.sec.asc``, EXAMPLE ONLY). For tests and ``scripts/demo``.

    The caller removes ``home`` afterwards (kill its agent first:
    ``gpgconf --homedir HOME --kill gpg-agent``)."""
    from reconciler.secrets.gpg import Gpg

    key_file = Path(repo_path) / EXAMPLE_KEY_FILE
    if not key_file.is_file():
        raise UsageError(f"{key_file} not found: not the meshops example repository?")
    home_path = Path(home)
    home_path.mkdir(parents=True, exist_ok=True)
    home_path.chmod(0o700)
    Gpg(str(home_path)).import_keys(key_file.read_text("ascii"))
    return str(home_path)


def default_serial_rng() -> int:
    """A random positive 63-bit certificate serial (fits a signed BIGINT)."""
    while True:
        n = _secrets.randbits(63)
        if n:
            return n


# -- the publisher ------------------------------------------------------------------------


@dataclass
class _OrgCache:
    keys: pki_ca.OrgKeys | None = None
    keys_digest: str = ""
    certs: dict[str, CertRecord] | None = None  # store's current certs, kept in step
    fragments: dict[str, tuple[frozenset[str], ManifestDevice, bytes]] = field(default_factory=dict)
    entries: dict[str, Any] = field(default_factory=dict)  # name -> build_manifest memo
    bound: dict[str, tuple[Device, int]] = field(default_factory=dict)  # checked bindings
    policy_key: Any = None
    compiled: Any = None
    written: dict[str, str] = field(default_factory=dict)  # name -> fingerprint on disk
    written_dir: Path | None = None
    # the verified trust-root chain and the envelopes it was verified from (a chain of
    # a few roots costs milliseconds of signature checks: not at every publish)
    roots_src: tuple[bytes, ...] = ()
    chain: tuple[Any, ...] = ()


class Publisher:
    """A long-lived publisher (``hub serve``); ``publish()`` below is the one-shot form."""

    def __init__(
        self,
        repo_path: str | os.PathLike[str],
        state: Store | str | None = None,
        gpg_home: str | None = None,
        *,
        cache: Any = None,
        serial_rng: Callable[[], int] = default_serial_rng,
        freeze_caches: bool = False,
        gate: commit_gate.Bootstrap | None = None,
    ) -> None:
        """``freeze_caches``: for long-lived publishers (``hub serve``). After a publish
        that filled the caches (the first, or one that re-parsed many files), collect
        garbage once and ``gc.freeze()`` what is left, so later generation-2
        collections do not rescan 10,000 devices' worth of cached objects (they made
        incremental publishes vary between 0.06 and 0.25 s). It touches the process-wide
        collector, hence off by default."""
        from reconciler.config import BlobCache

        self.repo_path = Path(repo_path)
        if isinstance(state, Store):
            self.store = state
            self._own_store = False
        else:
            self.store = open_store(state or "sqlite:///:memory:")
            self._own_store = True
        self.gpg_home = gpg_home
        self.cache = cache if cache is not None else BlobCache()
        self.serial_rng = serial_rng
        self._orgs: dict[str, _OrgCache] = {}
        self.timings: dict[str, float] = {}  # seconds per phase of the last publish (metrics)
        self.freeze_caches = freeze_caches
        self._frozen_at = 0  # BlobCache size at the last freeze (0: never frozen)
        self.gate = commit_gate.Gate(gate)  # the hub's own bootstrap of the commit gate

    def keys_for(self, org: str) -> pki_ca.OrgKeys | None:
        """The org's decrypted keys from the last publish (in memory only), if any."""
        cache = self._orgs.get(org)
        return cache.keys if cache is not None else None

    def close(self) -> None:
        if self._own_store:
            self.store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- pipeline ---------------------------------------------------------------------------
    def publish(
        self,
        rev: str | None = None,
        now: float = 0.0,
        out_dir: str | os.PathLike[str] | None = None,
    ) -> PublishResult:
        from reconciler.config import load
        from reconciler.config.expiry import without_expired

        t0 = time.perf_counter()
        repo_mesh_rev = rev
        result = load(self.repo_path, rev, cache=self.cache)
        if result.repo is None:
            raise ValidationError(result.problems)
        repo = result.repo
        trust = self.gate.trust(self.repo_path, self.store.last_published(), self._load_commit)
        if (repo.mesh.require_signed_commits or trust.enabled) and rev is None:
            # publish exactly the signed commit, never uncommitted files
            repo_mesh_rev = "HEAD"
            result = load(self.repo_path, repo_mesh_rev, cache=self.cache)
            if result.repo is None:
                raise ValidationError(result.problems)
            repo = result.repo
        commit = result.commit or worktree_commit(repo)
        self.gate.check(self.repo_path, commit, repo.mesh.require_signed_commits, trust,
                        self._load_commit, self.gpg_home)
        published = repo
        repo = without_expired(repo, now)  # expired devices are out, as disabled ones
        t1 = time.perf_counter()
        outcome = {
            name: self._publish_org(org, repo, commit, repo_mesh_rev, now)
            for name, org in sorted(repo.orgs.items())
        }
        trust = {"orgs": {n: o.trust for n, o in outcome.items()}}
        trust_json = json.dumps(trust, sort_keys=True, indent=2).encode("utf-8") + b"\n"
        pub = PublishResult(commit=commit, orgs=outcome, trust_json=trust_json)
        t2 = time.perf_counter()
        if out_dir is not None:
            self._write(pub, Path(out_dir))
        for name, org_pub in outcome.items():
            self.store.set_last_serial(name, org_pub.manifest.serial, commit, int(now))
        self.gate.published(commit, published)
        if self.freeze_caches:
            self._maybe_freeze()
        t3 = time.perf_counter()
        self.timings = {"load": t1 - t0, "build": t2 - t1, "write": t3 - t2, "total": t3 - t0}
        log.info(
            "published commit %s: %s",
            commit[:12],
            ", ".join(
                f"{n} serial {o.manifest.serial} ({len(o.issued)} issued, {len(o.revoked)} revoked)"
                for n, o in outcome.items()
            ),
        )
        return pub

    def _maybe_freeze(self) -> None:
        size = len(self.cache)
        if self._frozen_at and getattr(self.cache, "misses", size) * 10 < size:
            return  # less than 10% of the files were parsed again: nothing worth freezing
        import gc

        gc.collect()
        gc.freeze()
        self._frozen_at = size

    def _load_commit(self, rev: str) -> Repo | None:
        """The commit gate's view of a commit: its validated model, or None."""
        from reconciler.config import load

        return load(self.repo_path, rev, cache=self.cache).repo

    def _org_keys(self, org: OrgState, rev: str | None) -> pki_ca.OrgKeys:
        cache = self._orgs.setdefault(org.name, _OrgCache())
        raw = read_secret_file(self.repo_path, rev, secrets_relpath(org.name),
                               getattr(self.cache, "trees", None))
        if raw is None:
            raise PkiError(
                f"{secrets_relpath(org.name)} is missing: run `meshops ca init --org {org.name}`"
            )
        digest = hashlib.sha256(raw + b"\0" + (org.ca_cert_pem or "").encode()).hexdigest()
        if cache.keys is None or cache.keys_digest != digest:
            cache.keys = decrypt_org_keys(raw.decode("utf-8"), org, self.gpg_home)
            cache.keys_digest = digest
            cache.certs = None  # a new CA invalidates every stored certificate
        return cache.keys

    def _compiled(self, org: OrgState, cache: _OrgCache) -> Any:
        from reconciler.policy import compile_policy

        # labels depend on the policy and each enabled device's name, owner and tags only
        key = (org.policy, tuple((d.name, d.owner, d.tags) for d in org.enabled_devices()))
        if cache.compiled is None or cache.policy_key != key:
            cache.compiled = compile_policy(org)
            cache.policy_key = key
        return cache.compiled

    def _publish_org(
        self, org: OrgState, repo: Repo, commit: str, rev: str | None, now: float
    ) -> OrgPublish:
        keys = self._org_keys(org, rev)
        cache = self._orgs[org.name]
        if org.roots and org.roots != cache.roots_src:
            cache.chain, cache.roots_src = check_chain(org), org.roots
        # ValidationError naming the root file
        roots = org_roots(org, keys, now, cache.chain if org.roots else None)
        mesh = repo.mesh
        if cache.certs is None:
            cache.certs = {
                n: c for n, c in self.store.current_certs(org.name).items()
                if self._issued_by(c, keys)
            }  # fmt: skip
        current = cache.certs
        lifetime = mesh.cert_lifetime_days * DAY
        enabled = {d.name: d for d in org.enabled_devices()}
        issued: list[str] = []
        revoked: list[int] = []
        with self.store.transaction():
            for name in sorted(set(current) - set(enabled)):  # removed or disabled
                revoked += self.store.revoke_device(org.name, name, int(now))
                del current[name]
            for name, dev in enabled.items():
                rec = current.get(name)
                if rec is not None and self._still_binds(cache, rec, dev):
                    if not _renewal_due(rec, now, mesh.cert_renew_fraction):
                        continue
                elif rec is not None:  # keys or IPs changed: the old binding is void
                    revoked += self.store.revoke_device(org.name, name, int(now))
                new = self._issue(keys, dev, now, lifetime)
                current[name] = new
                cache.bound[name] = (dev, new.serial)
                issued.append(name)
        revoked_all = self.store.revoked_serials(org.name, now)
        last = self.store.last_serial(org.name)
        serial = next_serial(now, last[0] if last else None)
        manifest = build_manifest(
            org,
            commit=commit,
            serial=serial,
            now=now,
            lifetime_s=mesh.manifest_lifetime_days * DAY,
            cert_fingerprints={n: c.fingerprint for n, c in current.items()},
            revoked=revoked_all,
            compiled=self._compiled(org, cache),
            entries=cache.entries,
            mesh=mesh,
            root_version=roots.newest.version if roots is not None else None,
        )
        if len(cache.entries) > len(enabled):
            cache.entries = {n: e for n, e in cache.entries.items() if n in enabled}
        payload = encode_manifest(manifest, cache.fragments)
        if len(cache.fragments) > len(manifest.devices):
            live = {d.name for d in manifest.devices}
            cache.fragments = {n: f for n, f in cache.fragments.items() if n in live}
        signers, ca_pem, trust = _trust_of(keys, roots)
        envelope = sign_manifest(payload, signers)
        return OrgPublish(
            org=org.name,
            manifest=manifest,
            envelope=envelope,
            certs={n: current[n].pem for n in sorted(enabled) if n in current},
            ca_pem=ca_pem,
            issued=tuple(issued),
            revoked=tuple(revoked),
            roots=roots.envelopes if roots is not None else (),
            trust=trust,
            signer_ids=tuple(keyid(k.public_key()) for k in signers),
            next_root_at=roots.next_due if roots is not None else None,
        )

    @staticmethod
    def _still_binds(cache: _OrgCache, rec: CertRecord, dev: Device) -> bool:
        memo = cache.bound.get(dev.name)
        if memo is not None and memo[1] == rec.serial and (memo[0] is dev or memo[0] == dev):
            return True
        if not _binds(rec, dev):
            return False
        cache.bound[dev.name] = (dev, rec.serial)
        return True

    @staticmethod
    def _issued_by(rec: CertRecord, keys: pki_ca.OrgKeys) -> bool:
        try:
            return pki_certs.issued_by(rec.pem, keys.ca_cert)
        except PkiError:
            return False

    def _issue(self, keys: pki_ca.OrgKeys, dev: Device, now: float, lifetime: int) -> CertRecord:
        for _ in range(16):
            serial = self.serial_rng()
            pem = pki_certs.issue_device_cert(keys, dev, serial, now, lifetime)
            cert = pki_certs.load_cert(pem)
            rec = CertRecord(
                org=dev.org,
                device=dev.name,
                serial=serial,
                fingerprint=pki_certs.fingerprint(cert),
                not_before=int(cert.not_valid_before_utc.timestamp()),
                not_after=int(cert.not_valid_after_utc.timestamp()),
                pem=pem,
                identity_key=dev.identity_public_key,
                wg_key=dev.wireguard_public_key,
                ips=_norm_ips(dev.tunnel_ips),
                issued_at=int(now),
            )
            if self.store.add_cert(rec):
                return rec
            log.warning(
                "certificate serial collision for %s/%s; drawing another", dev.org, dev.name
            )
        raise PkiError("could not find a free certificate serial after 16 tries")

    # -- output -----------------------------------------------------------------------------
    def _write(self, pub: PublishResult, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        # a publish killed mid-write (SIGKILL, power loss) left temp files: every name
        # in these directories is ours, so earlier versions' temp names go too (orgs
        # that are no longer in the repository included)
        orgs = set(pub.orgs) | {e.name for e in os.scandir(out)
                                if e.is_dir(follow_symlinks=False)}
        for directory in [out] + [d for n in sorted(orgs) for d in (out / n, out / n / "certs")]:
            removed = remove_stale_temps(directory, legacy=True)
            if removed:
                log.info("removed %d temp file(s) of an interrupted publish in %s",
                         removed, directory)
        for name, org_pub in pub.orgs.items():
            cache = self._orgs[name]
            org_dir = out / name
            cert_dir = org_dir / "certs"
            cert_dir.mkdir(parents=True, exist_ok=True)
            if cache.written_dir != org_dir.resolve():  # first write here: scan the directory
                cache.written = {p.stem: "" for p in cert_dir.glob("*.pem")}
                cache.written_dir = org_dir.resolve()
            fps = {d.name: d.cert_sha256 for d in org_pub.manifest.devices}
            changed = [dev for dev in org_pub.certs if cache.written.get(dev) != fps.get(dev)]
            atomic_write_many(
                [(cert_dir / f"{dev}.pem", org_pub.certs[dev].encode("ascii")) for dev in changed]
            )
            for dev in changed:
                cache.written[dev] = fps.get(dev, "")
            for dev in set(cache.written) - set(org_pub.certs):  # removed or disabled
                (cert_dir / f"{dev}.pem").unlink(missing_ok=True)
                del cache.written[dev]
            atomic_write(org_dir / "ca.crt", org_pub.ca_pem.encode("ascii"))
            fsync_dir(cert_dir)  # the unlinks above
            self._write_roots(org_dir, org_pub.roots)
        atomic_write(out / "trust.json", pub.trust_json)
        for name, org_pub in pub.orgs.items():  # manifests last: they point at the certs
            atomic_write(out / name / "manifest.json", org_pub.envelope)


    @staticmethod
    def _write_roots(org_dir: Path, roots: tuple[bytes, ...]) -> None:
        """``ORG/roots/N.json`` for every published root, before trust.json names the
        newest; a root whose file already holds the same bytes is not rewritten, and
        files of versions not published (a repository rewound) are removed."""
        root_dir = org_dir / "roots"
        if not roots and not root_dir.is_dir():
            return
        root_dir.mkdir(exist_ok=True)
        remove_stale_temps(root_dir, legacy=True)
        want = {f"{i + 1}.json": data for i, data in enumerate(roots)}
        for name, data in want.items():
            path = root_dir / name
            try:
                same = path.read_bytes() == data
            except OSError:
                same = False
            if not same:
                atomic_write(path, data)
        for path in root_dir.glob("*.json"):
            if path.name not in want:
                path.unlink()
        fsync_dir(root_dir)


def _trust_of(keys: pki_ca.OrgKeys, roots: OrgRoots | None
              ) -> tuple[tuple[Any, ...], str, dict[str, Any]]:
    """(manifest signers, CA bundle, trust.json entry) for one org. With roots, all
    three follow the newest published root: during an overlap both keys sign, both
    CAs count and trust.json lists both (agents that read only ``keys``/``ca`` keep
    working); after it, only the new ones. Without roots: today's single key and CA."""
    if roots is None:
        return (keys.signing_key,), keys.ca_pem, trust_entry(
            [keys.signing_key.public_key()], keys.ca_pem)
    newest = roots.newest
    signers = manifest_signers(newest, keys)
    pubs = [newest.keys[k] for k in newest.roles["manifest"].keyids]
    ca_pem = "".join(newest.ca_pems)
    return signers, ca_pem, trust_entry(pubs, ca_pem, roots.envelopes[-1])


def _norm_ips(ips: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    import ipaddress

    return tuple(sorted(str(ipaddress.ip_address(ip)) for ip in ips))


def _binds(rec: CertRecord, dev: Device) -> bool:
    return (
        rec.identity_key == dev.identity_public_key
        and rec.wg_key == dev.wireguard_public_key
        and tuple(sorted(rec.ips)) == _norm_ips(dev.tunnel_ips)
    )


def _renewal_due(rec: CertRecord, now: float, fraction: float) -> bool:
    return pki_certs.renewal_due(rec.not_before, rec.not_after, now, fraction)


def publish(
    repo_path: str | os.PathLike[str],
    *,
    rev: str | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    state: Store | str | None = None,
    now: float,
    gpg_home: str | None = None,
    cache: Any = None,
    gate: commit_gate.Bootstrap | None = None,
) -> PublishResult:
    """One-shot publish (``meshops hub publish``); ``out_dir=None`` builds in memory."""
    with Publisher(repo_path, state, gpg_home, cache=cache, gate=gate) as publisher:
        return publisher.publish(rev, now, out_dir)
