"""Fixtures for the ``hub serve`` tests: real org CAs, device certificates, a fake
publish pipeline (real signatures, no git). PostgreSQL comes from
tests/hub/conftest.py (``fresh_postgres_url``).

Imported by tests/hub/test_api.py, test_serve_*.py. The pipeline is faked so the
API tests do not depend on the whole config/publish stack; test_serve_e2e.py
runs the real ``Publisher``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from reconciler.errors import FetchError, Problem, ValidationError
from reconciler.hub.snapshot import OrgSnapshot, Snapshot
from reconciler.model.manifest import Manifest, ManifestDevice
from reconciler.model.repo import Device, Organization
from reconciler.pki.ca import init_ca, new_signing_key_pem, org_keys_from_doc, secret_doc
from reconciler.pki.certs import issue_device_cert
from reconciler.pki.envelope import sign_envelope
from reconciler.pki.keys import private_to_pem

NOW = 1_790_000_000.0
MANIFEST_TYPE = "application/vnd.meshops.manifest+json"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@dataclass
class DeviceCreds:
    org: str
    name: str
    cert_pem: str
    key_pem: str  # identity private key (mTLS client key)
    serial: int


@dataclass
class OrgFixture:
    name: str
    cidr: str
    keys: Any
    devices: dict[str, DeviceCreds] = field(default_factory=dict)
    next_serial: int = 1000
    relays: set[str] = field(default_factory=set)  # devices with ``relay: true``

    def add_device(self, name: str, now: float = NOW, lifetime: int = 30 * 86400,
                   relay: bool = False) -> DeviceCreds:
        ident = Ed25519PrivateKey.generate()
        wg = X25519PrivateKey.generate().public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        ip = f"{self.cidr.rsplit('.', 2)[0]}.0.{len(self.devices) + 1}"
        device = Device(
            name=name, org=self.name, owner="alice", wireguard_public_key=b64(wg),
            identity_public_key=b64(ident.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw)),
            tunnel_ips=(ip,),
        )
        self.next_serial += 1
        pem = issue_device_cert(self.keys, device, self.next_serial, now, lifetime)
        creds = DeviceCreds(self.name, name, pem, private_to_pem(ident), self.next_serial)
        self.devices[name] = creds
        if relay:
            self.relays.add(name)
        return creds


def mint_device(keys: Any, org: str, name: str, tunnel_ip: str, now: float,
                serial: int = 990_001) -> DeviceCreds:
    """A device certificate from an org's CA keys (e.g. a running hub's
    ``OrgSnapshot.keys``), with a fresh identity key: a client for mTLS tests
    against a hub whose devices' private keys the test does not hold."""
    ident = Ed25519PrivateKey.generate()
    wg = X25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    device = Device(
        name=name, org=org, owner="alice", wireguard_public_key=b64(wg),
        identity_public_key=b64(ident.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)),
        tunnel_ips=(tunnel_ip,),
    )
    pem = issue_device_cert(keys, device, serial, now - 60, 86400)
    return DeviceCreds(org, name, pem, private_to_pem(ident), serial)


def make_org(name: str, cidr: str = "10.20.0.0/16") -> OrgFixture:
    org = Organization(name=name, cidr_v4=cidr)
    bundle = init_ca(org, NOW - 86400)
    doc = secret_doc(name, bundle.key_pem, new_signing_key_pem())
    return OrgFixture(name, cidr, org_keys_from_doc(doc, name, bundle.cert_pem))


def _wg_public(seed: str) -> str:
    key = X25519PrivateKey.from_private_bytes(hashlib.sha256(seed.encode()).digest())
    return b64(key.public_key().public_bytes(serialization.Encoding.Raw,
                                             serialization.PublicFormat.Raw))


def manifest_model(org: OrgFixture, serial: int, commit: str,
                   revoked: frozenset[int] = frozenset(), gone: frozenset[str] = frozenset()
                   ) -> Manifest:
    """The manifest as data for per-device views (the fake envelope above is
    only compared byte for byte): one entry per device, a full mesh."""
    devices = tuple(
        ManifestDevice(name=name, wireguard_public_key=_wg_public(f"{org.name}/{name}"),
                       tunnel_ips=(f"{org.cidr.rsplit('.', 2)[0]}.0.{i + 1}",),
                       cert_sha256=base64.urlsafe_b64encode(
                           hashlib.sha256(creds.cert_pem.encode()).digest()).decode()[:43],
                       relay=name in org.relays)
        for i, (name, creds) in enumerate(sorted(org.devices.items())) if name not in gone)
    return Manifest(org=org.name, serial=serial, commit=commit, issued_at=int(NOW),
                    not_after=int(NOW) + 7 * 86400, cidr_v4=org.cidr, cidr_v6=None,
                    listen_port=51820, keepalive=25, devices=devices,
                    revoked=tuple(sorted(revoked)))


def org_snapshot(org: OrgFixture, serial: int, commit: str, revoked: frozenset[int] = frozenset()
                 ) -> OrgSnapshot:
    payload = json.dumps({"org": org.name, "serial": serial, "commit": commit,
                          "devices": sorted(org.devices)}, sort_keys=True).encode()
    return OrgSnapshot(
        model=manifest_model(org, serial, commit, revoked),
        org=org.name, serial=serial,
        manifest=sign_envelope(payload, MANIFEST_TYPE, org.keys.signing_key),
        ca_pem=org.keys.ca_pem,
        certs={n: d.cert_pem for n, d in org.devices.items()},
        devices=frozenset(org.devices), revoked=revoked, keys=org.keys,
        relays=frozenset(org.relays & set(org.devices)),
    )


class FakePipeline:
    """Builds a Snapshot of ``orgs`` for any commit, except: a commit in ``bad``
    fails with a ValidationError (permanent); a commit in ``flaky`` fails with
    a FetchError(delay=``flaky_delay``) that many more times (temporary); a
    commit in ``crash`` raises a RuntimeError (a bug)."""

    def __init__(self, orgs: list[OrgFixture]) -> None:
        self.orgs = orgs
        self.bad: set[str] = set()
        self.flaky: dict[str, int] = {}
        self.flaky_delay = 5.0
        self.crash: set[str] = set()
        self.revoked: dict[str, frozenset[int]] = {}  # org -> revoked serials
        self.removed: dict[str, set[str]] = {}  # org -> devices left out of the manifest
        self.serial = 0
        self.builds: list[str] = []

    def build(self, rev: str, now: float) -> Snapshot:
        self.builds.append(rev)
        if rev in self.bad:
            raise ValidationError([Problem("orgs/acme/devices/bad.yaml", 3, "schema",
                                           "tunnel_ips.0 is not an IP address")])
        if self.flaky.get(rev, 0) > 0:
            self.flaky[rev] -= 1
            raise FetchError(f"secrets/acme.sops.yaml: gpg-agent did not answer for {rev}",
                             self.flaky_delay)
        if rev in self.crash:
            raise RuntimeError(f"stage blew up on {rev}")
        self.serial += 1
        return Snapshot(
            commit=rev,
            orgs={o.name: self._snapshot(o, rev) for o in self.orgs},
            built_at=now,
        )


    def _snapshot(self, org: OrgFixture, rev: str) -> OrgSnapshot:
        snap = org_snapshot(org, self.serial, rev, self.revoked.get(org.name, frozenset()))
        gone = self.removed.get(org.name, set())
        if not gone:
            return snap
        from reconciler.structs import replace

        return replace(snap, devices=snap.devices - gone, relays=snap.relays - gone,
                       certs={n: p for n, p in snap.certs.items() if n not in gone},
                       model=manifest_model(org, self.serial, rev, snap.revoked,
                                            frozenset(gone)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_pem_files(tmp: Path, creds: DeviceCreds) -> tuple[str, str]:
    cert, key = tmp / f"{creds.org}-{creds.name}.crt", tmp / f"{creds.org}-{creds.name}.key"
    cert.write_text(creds.cert_pem)
    key.write_text(creds.key_pem)
    key.chmod(0o600)
    return str(cert), str(key)
