"""The per-org certificate authority and the org's secret document.

Called by ``meshops ca init`` (reconciler.cli.pki) and by the hub publisher
(reconciler.hub.publish), which decrypts ``secrets/ORG-ca.sops.yaml`` and hands
the plaintext document to ``org_keys_from_doc``. ``certs`` and ``hub.tls``
read a CA's name constraints back through ``dns_permitted``.

The CA is Ed25519 and passes strict X.509 checks (OpenSSL ``-x509_strict``,
Python 3.13's default ``VERIFY_X509_STRICT``): critical
``BasicConstraints(ca, pathlen 0)``, critical ``KeyUsage`` (keyCertSign,
cRLSign, digitalSignature), a Subject Key Identifier and an Authority Key
Identifier equal to it (RFC 5280 4.2.1.1/4.2.1.2). Its critical
``NameConstraints`` (RFC 5280 4.2.1.10) permit only:

- the URI host ``ORG``: device SAN URIs are ``meshops://ORG/devices/NAME`` and
  URI constraints match the host part; OpenSSL 3 applies exactly that (checked
  by tests/pki/test_certs.py with Python's ssl);
- the org's IPv4 and IPv6 CIDRs (IP SANs must fall inside them);
- the DNS subtrees ``ORG.hub`` (the hub's server name for the org, which
  agents send as SNI and verify, and any name below it) and ``localhost``
  (a hub reached on its own host; RFC 6761 keeps ``*.localhost`` on loopback).

A DNS subtree matches the name itself and every name below it. Once a CA has
any DNS subtree, OpenSSL refuses a DNS name outside them (and a dotted subject
CN with no DNS SAN), so an org CA cannot vouch for another org's hub or any
public host name. CAs made before the DNS subtrees existed have none, which
RFC 5280 reads as "any DNS name"; ``meshops ca init --force`` replaces them.

Key generations (``meshops ca rotate``, reconciler.hub.rotate): the secret's
top-level ``ca_key`` and ``manifest_signing_key`` are the current generation;
an optional ``previous`` block keeps the keys a rotation replaced until
``overlap_until`` (unix seconds)::

    previous:
      overlap_until: 1767225600
      manifest_signing_key: <PEM>     # when the signing key rotated
      ca_key: <PEM>                   # when the CA rotated, with
      ca_cert: <PEM>                  # the old CA certificate

During the overlap the hub's TLS server certificate stays under the old CA
(``OrgKeys.server_keys``) and client certificates of both CAs are accepted
(``OrgKeys.ca_pems``); which manifest keys sign is decided by the published
trust root (reconciler.hub.publish). Files without ``previous`` still load.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from reconciler.errors import PkiError
from reconciler.model.repo import Organization
from reconciler.pki.keys import private_from_pem, private_to_pem, raw_public

CA_LIFETIME_DAYS = 3650
SECRET_DOC_KIND = "OrgSecrets"
HUB_DNS_SUFFIX = "hub"  # the hub's name for org ORG is ORG.hub (reconciler.hub.tls)
LOOPBACK_DNS = "localhost"


def dns_subtrees(org: str) -> tuple[str, ...]:
    """The DNS subtrees an org CA permits (see the module docstring)."""
    return (f"{org}.{HUB_DNS_SUFFIX}", LOOPBACK_DNS)


@dataclass(frozen=True)
class CaBundle:
    """A freshly made CA: private key PEM (never logged) and self-signed certificate PEM."""

    key_pem: str = field(repr=False)
    cert_pem: str


@dataclass(frozen=True)
class PreviousKeys:
    """The generation a rotation replaced, kept until ``overlap_until``. A key that
    did not rotate is None here (the current one still serves)."""

    overlap_until: int
    signing_key: Ed25519PrivateKey | None = field(default=None, repr=False)
    ca_key: Ed25519PrivateKey | None = field(default=None, repr=False)
    ca_cert: x509.Certificate | None = None


@dataclass(frozen=True)
class OrgKeys:
    """An org's decrypted key material, held in memory by the hub only."""

    org: str
    ca_key: Ed25519PrivateKey = field(repr=False)
    ca_cert: x509.Certificate
    signing_key: Ed25519PrivateKey = field(repr=False)
    previous: PreviousKeys | None = None

    @property
    def ca_pem(self) -> str:
        return cert_pem(self.ca_cert)

    def in_overlap(self, now: float) -> bool:
        return self.previous is not None and now < self.previous.overlap_until

    def server_keys(self, now: float) -> OrgKeys:
        """The CA that signs the hub's TLS server certificate: the old CA until the
        overlap ends (agents that have not walked the new root yet pin only it)."""
        prev = self.previous
        if prev is not None and prev.ca_key is not None and prev.ca_cert is not None \
                and self.in_overlap(now):
            return OrgKeys(self.org, prev.ca_key, prev.ca_cert, self.signing_key)
        return OrgKeys(self.org, self.ca_key, self.ca_cert, self.signing_key)

    def ca_pems(self, now: float) -> tuple[str, ...]:
        """The CAs whose device certificates count: the current one, and during a CA
        overlap the old one too (devices that have not fetched a new certificate)."""
        prev = self.previous
        if prev is not None and prev.ca_cert is not None and self.in_overlap(now):
            return (self.ca_pem, cert_pem(prev.ca_cert))
        return (self.ca_pem,)

    def private_keys(self) -> tuple[Ed25519PrivateKey, ...]:
        """Every Ed25519 key held, current generation first (which of them sign a
        manifest is the published trust root's decision)."""
        out = [self.signing_key, self.ca_key]
        if self.previous is not None:
            out += [k for k in (self.previous.signing_key, self.previous.ca_key) if k]
        return tuple(out)


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def utc(now: float) -> dt.datetime:
    """Unix seconds as an aware UTC datetime, whole seconds (X.509 precision)."""
    return dt.datetime.fromtimestamp(int(now), tz=dt.UTC)


def key_usage(*, ca: bool) -> x509.KeyUsage:
    """KeyUsage of a CA (signs certificates and CRLs) or of a device (signs only)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def init_ca(org: Organization, now: float, *, lifetime_days: int = CA_LIFETIME_DAYS) -> CaBundle:
    """Make an Ed25519 CA key and a self-signed CA certificate constrained to ``org``."""
    key = Ed25519PrivateKey.generate()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org.name),
            x509.NameAttribute(NameOID.COMMON_NAME, f"meshops {org.name} CA"),
        ]
    )
    permitted: list[x509.GeneralName] = [x509.UniformResourceIdentifier(org.name)]
    for cidr in (org.cidr_v4, org.cidr_v6):
        if cidr:
            permitted.append(x509.IPAddress(ipaddress.ip_network(cidr, strict=False)))
    permitted += [x509.DNSName(name) for name in dns_subtrees(org.name)]
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    start = utc(now) - dt.timedelta(minutes=5)  # tolerate small clock skew on devices
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=lifetime_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(ca=True), critical=True)
        .add_extension(
            x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, None)
    )
    return CaBundle(
        key_pem=private_to_pem(key),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
    )


def authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The AKI for certificates ``ca_cert`` signs: its own SKI, byte for byte (a CA
    made by an older meshops without one gets the RFC 5280 SHA-1 key id, which
    is what ``init_ca`` has always put in the SKI)."""
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def dns_permitted(ca_cert: x509.Certificate, name: str) -> bool:
    """Would ``ca_cert``'s name constraints let it certify DNS name ``name``?

    RFC 5280 4.2.1.10: with no DNS subtree every name is permitted; otherwise the
    name must equal a permitted subtree or end with ``.`` plus one, case-insensitively,
    and match no excluded subtree."""
    try:
        nc = ca_cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return True
    host = name.lower().rstrip(".")

    def within(subtree: str) -> bool:
        base = subtree.lower().lstrip(".")
        return host == base or host.endswith("." + base)

    permitted = [n.value for n in nc.permitted_subtrees or () if isinstance(n, x509.DNSName)]
    excluded = [n.value for n in nc.excluded_subtrees or () if isinstance(n, x509.DNSName)]
    if any(within(e) for e in excluded):
        return False
    return not permitted or any(within(p) for p in permitted)


def new_signing_key_pem() -> str:
    """A fresh Ed25519 manifest-signing key, PKCS#8 PEM."""
    return private_to_pem(Ed25519PrivateKey.generate())


def secret_doc(org: str, ca_key_pem: str, signing_key_pem: str,
               previous: PreviousKeys | None = None) -> dict[str, Any]:
    """The plaintext of ``secrets/ORG-ca.sops.yaml`` (encrypted by the caller with SOPS)."""
    doc: dict[str, Any] = {
        "kind": SECRET_DOC_KIND,
        "org": org,
        "ca_key": ca_key_pem,
        "manifest_signing_key": signing_key_pem,
    }
    if previous is not None:
        block: dict[str, Any] = {"overlap_until": int(previous.overlap_until)}
        if previous.signing_key is not None:
            block["manifest_signing_key"] = private_to_pem(previous.signing_key)
        if previous.ca_key is not None and previous.ca_cert is not None:
            block["ca_key"] = private_to_pem(previous.ca_key)
            block["ca_cert"] = cert_pem(previous.ca_cert)
        doc["previous"] = block
    return doc


def keys_doc(keys: OrgKeys) -> dict[str, Any]:
    """``keys`` as the plaintext secret document (the inverse of ``org_keys_from_doc``)."""
    return secret_doc(keys.org, private_to_pem(keys.ca_key), private_to_pem(keys.signing_key),
                      keys.previous)


def load_ca_cert(pem: str | bytes, what: str = "CA certificate") -> x509.Certificate:
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise PkiError(f"{what} is not a PEM certificate") from exc


def org_keys_from_doc(doc: Mapping[str, Any], org: str, ca_cert_pem: str) -> OrgKeys:
    """Check and load a decrypted secret document against ``orgs/ORG/ca.crt``."""
    where = f"secrets/{org}-ca.sops.yaml"
    if doc.get("kind") != SECRET_DOC_KIND or doc.get("org") != org:
        raise PkiError(f"{where}: not the CA secrets of org {org!r}")
    ca_pem, sign_pem = doc.get("ca_key"), doc.get("manifest_signing_key")
    if not isinstance(ca_pem, str) or not isinstance(sign_pem, str):
        raise PkiError(f"{where}: ca_key and manifest_signing_key must be PEM strings")
    ca_key = private_from_pem(ca_pem, f"{where}: ca_key")
    signing_key = private_from_pem(sign_pem, f"{where}: manifest_signing_key")
    cert = load_ca_cert(ca_cert_pem, f"orgs/{org}/ca.crt")
    cert_key = cert.public_key()
    if not isinstance(cert_key, Ed25519PublicKey) or raw_public(cert_key) != raw_public(
        ca_key.public_key()
    ):
        raise PkiError(
            f"orgs/{org}/ca.crt does not match the CA key in {where}; "
            "re-run `meshops ca init --force` or restore the matching pair"
        )
    return OrgKeys(org=org, ca_key=ca_key, ca_cert=cert, signing_key=signing_key,
                   previous=_previous_from_doc(doc.get("previous"), where))


def _previous_from_doc(block: Any, where: str) -> PreviousKeys | None:
    """The optional ``previous`` block (see the module docstring)."""
    if block is None:
        return None
    fix = "`meshops ca rotate` writes it; restore the file from git history"
    if not isinstance(block, Mapping):
        raise PkiError(f"{where}: previous must be a mapping; {fix}")
    unknown = sorted(set(block) - {"overlap_until", "manifest_signing_key", "ca_key", "ca_cert"})
    if unknown:
        raise PkiError(f"{where}: unknown field previous.{unknown[0]}; {fix}")
    until = block.get("overlap_until")
    if not isinstance(until, int) or isinstance(until, bool) or not 0 < until < 2**63:
        raise PkiError(f"{where}: previous.overlap_until must be unix seconds; {fix}")
    for name in ("manifest_signing_key", "ca_key", "ca_cert"):
        if name in block and not isinstance(block[name], str):
            raise PkiError(f"{where}: previous.{name} must be a PEM string; {fix}")
    if ("ca_key" in block) != ("ca_cert" in block):
        raise PkiError(f"{where}: previous.ca_key and previous.ca_cert go together; {fix}")
    if "manifest_signing_key" not in block and "ca_key" not in block:
        raise PkiError(f"{where}: previous holds no key; {fix}")
    signing = (private_from_pem(block["manifest_signing_key"],
                                f"{where}: previous.manifest_signing_key")
               if "manifest_signing_key" in block else None)
    ca_key = ca_cert = None
    if "ca_key" in block:
        ca_key = private_from_pem(block["ca_key"], f"{where}: previous.ca_key")
        ca_cert = load_ca_cert(block["ca_cert"], f"{where}: previous.ca_cert")
        cert_key = ca_cert.public_key()
        if not isinstance(cert_key, Ed25519PublicKey) or raw_public(cert_key) != raw_public(
                ca_key.public_key()):
            raise PkiError(f"{where}: previous.ca_cert does not match previous.ca_key; {fix}")
    return PreviousKeys(overlap_until=until, signing_key=signing, ca_key=ca_key,
                        ca_cert=ca_cert)
