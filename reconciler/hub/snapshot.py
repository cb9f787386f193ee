"""What ``hub serve`` swaps in after each good publish: one immutable ``Snapshot``.

``reconciler.hub.serve`` asks a ``Pipeline`` to build a snapshot for a commit
(in a worker thread), and swaps it in with one assignment when it succeeds; the
API (``reconciler.hub.api``) only ever reads the current snapshot object, so a
request sees either the old or the new publish, never a mix.

``PublisherPipeline`` adapts the long-lived, incremental
``reconciler.hub.publish.Publisher`` (owned by the PKI work) to this shape.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reconciler.errors import PkiError
from reconciler.model.manifest import Manifest
from reconciler.pki.ca import OrgKeys
from reconciler.pki.envelope import parse_envelope
from reconciler.pki.manifest import manifest_from_dict


@dataclass(frozen=True)
class OrgSnapshot:
    org: str
    serial: int
    manifest: bytes  # the signed DSSE envelope, served as is
    ca_pem: str
    certs: Mapping[str, str]  # device name -> current certificate PEM
    devices: frozenset[str]  # enabled devices in the manifest (feed entries are limited to these)
    revoked: frozenset[int]
    keys: OrgKeys = field(repr=False)  # CA key (hub server cert) + manifest-signing key (feed)
    manifest_gz: bytes = b""
    relays: frozenset[str] = frozenset()  # devices with ``relay: true``: they may reflect others
    # published trust roots (roots[i] is version i + 1; empty: legacy trust.json),
    # served by reconciler.hub.roots
    roots: tuple[bytes, ...] = ()
    # the keys that sign the feed: the published root's manifest keys (both during
    # a rotation's overlap), like the manifest
    signers: tuple[Ed25519PrivateKey, ...] = field(default=(), repr=False)
    # the manifest as data (per-device views, reconciler.hub.views); parsed from
    # ``manifest`` on first use when the pipeline did not pass it
    model: Manifest | None = field(default=None, repr=False, compare=False)

    @property
    def manifest_model(self) -> Manifest:
        if self.model is None:
            payload = parse_envelope(self.manifest, what="the served manifest").payload
            object.__setattr__(self, "model", manifest_from_dict(json.loads(payload)))
        assert self.model is not None
        return self.model

    @property
    def root_version(self) -> int | None:
        return len(self.roots) or None

    @property
    def feed_signers(self) -> tuple[Ed25519PrivateKey, ...]:
        return self.signers or (self.keys.signing_key,)

    def __post_init__(self) -> None:
        if not self.manifest_gz:
            object.__setattr__(self, "manifest_gz", gzip.compress(self.manifest, 6, mtime=0))


@dataclass(frozen=True)
class Snapshot:
    commit: str
    orgs: Mapping[str, OrgSnapshot]
    built_at: float
    # the earliest time a trust root in git becomes due (a rotation's overlap ends):
    # the hub re-publishes then, so the old keys retire on time (reconciler.hub.serve)
    next_change_at: float | None = None


class Pipeline(Protocol):
    def build(self, rev: str, now: float) -> Snapshot:
        """Load, validate, issue, sign for commit ``rev``. Raises ``MeshopsError``."""


def signers_of(signer_ids: tuple[str, ...], keys: OrgKeys) -> tuple[Ed25519PrivateKey, ...]:
    """The held keys with these key ids (the ones that signed the manifest): the
    feed is signed by the same ones, so it verifies wherever the manifest does."""
    from reconciler.pki.keys import keyid

    by_id = {keyid(k.public_key()): k for k in keys.private_keys()}
    return tuple(by_id[k] for k in signer_ids if k in by_id)


class PublisherPipeline:
    """``Pipeline`` over ``reconciler.hub.publish.Publisher(repo_path, state, gpg_home)``.

    The publisher keeps its own caches (parsed blobs, decrypted keys, issued
    certificates, serials) across commits, which is what makes a one-device
    commit cheap. ``state`` is the store URL (the same database as the feed)."""

    def __init__(self, repo_path: str, state: str, gpg_home: str | None,
                 gate: Any = None) -> None:
        """``gate``: the commit gate's ``reconciler.hub.gate.Bootstrap``."""
        from reconciler.hub.publish import Publisher

        # a long-lived hub: freeze the filled caches so full collections skip them
        self._publisher = Publisher(repo_path, state, gpg_home, freeze_caches=True, gate=gate)

    def build(self, rev: str, now: float) -> Snapshot:
        result = self._publisher.publish(rev, now)
        orgs: dict[str, OrgSnapshot] = {}
        for name, pub in result.orgs.items():
            keys = self._keys(name)
            orgs[name] = OrgSnapshot(
                org=name,
                serial=pub.manifest.serial,
                manifest=pub.envelope,
                ca_pem=pub.ca_pem,
                certs=dict(pub.certs),
                devices=frozenset(d.name for d in pub.manifest.devices),
                revoked=frozenset(pub.manifest.revoked),
                keys=keys,
                relays=frozenset(d.name for d in pub.manifest.devices if d.relay),
                roots=pub.roots,
                signers=signers_of(pub.signer_ids, keys),
                model=pub.manifest,
            )
        due = [p.next_root_at for p in result.orgs.values() if p.next_root_at is not None]
        return Snapshot(commit=result.commit, orgs=orgs, built_at=now,
                        next_change_at=min(due) if due else None)

    def _keys(self, org: str) -> OrgKeys:
        # The publisher decrypted the org's keys for this publish and caches them;
        # the hub needs the same keys to sign the feed and its TLS certificate.
        keys = self._publisher.keys_for(org)
        if keys is None:
            raise PkiError(f"org {org}: the publisher kept no keys for it")
        return keys

    def close(self) -> None:
        self._publisher.close()
