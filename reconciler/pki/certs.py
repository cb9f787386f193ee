"""Device certificates: issue, renew, read back, and check against the org CA.

Called by the hub publisher (reconciler.hub.publish) to issue and renew, and by
anything that needs to authenticate a device over mTLS (the hub's endpoint API,
services on the mesh) through ``check_device_cert``.

A device certificate binds (docs/security.md has the full profile):

- subject key: the device's Ed25519 identity key (made on the device);
- SAN URI ``meshops://ORG/devices/NAME`` and IP SANs for its tunnel IPs;
- its WireGuard public key, in the non-critical extension ``WG_KEY_OID``
  whose value is a DER OCTET STRING holding the 32 raw key bytes;
- EKU clientAuth + serverAuth, so it works for mTLS both ways;
- the strict X.509 profile: critical ``BasicConstraints(ca=False)``, critical
  ``KeyUsage(digitalSignature)``, a Subject Key Identifier and an Authority
  Key Identifier equal to the CA's SKI.

``issue_device_cert`` refuses to sign a name the CA's name constraints do not
permit (OpenSSL would refuse the certificate anyway; this says why, earlier).

``cryptography``'s own verifier refuses Ed25519 (WebPKI profile), so
``check_device_cert`` checks the chain by hand: issuer signature, validity,
the CA's name constraints and the EKU. OpenSSL (Python ``ssl``) verifies the
same certificates natively.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from reconciler.converge.keys import decode_key
from reconciler.errors import PkiError
from reconciler.model.repo import Device
from reconciler.pki.ca import OrgKeys, authority_key_id, dns_permitted, key_usage, utc
from reconciler.pki.keys import public_b64, public_from_b64

# Private enterprise arc chosen for meshops (documented in docs/security.md).
# A UUID-derived OID (ITU-T X.667 / RFC 4122 section 4 "2.25.<uuid as integer>"):
# globally unique without registering an enterprise number. UUID
# 87b9e04d-c7ae-4ecc-98d4-24b3423c1178, "meshops WireGuard public key".
WG_KEY_OID = x509.ObjectIdentifier("2.25.180410903771910559691615590208786665848")
URI_SCHEME = "meshops"
DEFAULT_LIFETIME_S = 30 * 86400
DEFAULT_RENEW_FRACTION = 2 / 3


@dataclass(frozen=True)
class DeviceIdentity:
    """What a device certificate says about its holder."""

    org: str
    name: str
    tunnel_ips: tuple[str, ...]
    wireguard_public_key: str
    identity_public_key: str
    serial: int
    not_before: int
    not_after: int


def device_uri(org: str, name: str) -> str:
    return f"{URI_SCHEME}://{org}/devices/{name}"


def _der_octet_string(data: bytes) -> bytes:
    if len(data) > 127:
        raise PkiError("octet string too long for the short form")
    return bytes([0x04, len(data)]) + data


def _parse_der_octet_string(der: bytes) -> bytes:
    if len(der) < 2 or der[0] != 0x04 or der[1] != len(der) - 2:
        raise PkiError("WireGuard key extension is not a DER OCTET STRING")
    return der[2:]


def issue_device_cert(
    ca: OrgKeys,
    device: Device,
    serial: int,
    now: float,
    lifetime_s: int = DEFAULT_LIFETIME_S,
) -> str:
    """Issue a PEM certificate for ``device`` signed by the org CA."""
    if device.org != ca.org:
        raise PkiError(f"device {device.name} belongs to org {device.org}, not {ca.org}")
    subject_key = public_from_b64(
        device.identity_public_key, f"device {device.name}: identity public key"
    )
    try:
        wg_raw = decode_key(
            device.wireguard_public_key, f"device {device.name}: WireGuard public key"
        )
    except ValueError as exc:
        raise PkiError(str(exc)) from exc
    ips = [ipaddress.ip_address(ip) for ip in device.tunnel_ips]
    try:
        check_names(ca.ca_cert, ca.org, ips, ())
    except PkiError as exc:
        raise PkiError(f"device {device.name}: {exc}") from None
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(device_uri(ca.org, device.name))]
    sans += [x509.IPAddress(ip) for ip in ips]
    start = utc(now) - dt.timedelta(minutes=5)  # clock-skew allowance
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, ca.org),
                    x509.NameAttribute(NameOID.COMMON_NAME, device.name),
                ]
            )
        )
        .issuer_name(ca.ca_cert.subject)
        .public_key(subject_key)
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(utc(now) + dt.timedelta(seconds=lifetime_s))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key), critical=False)
        .add_extension(authority_key_id(ca.ca_cert), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(WG_KEY_OID, _der_octet_string(wg_raw)), critical=False
        )
    )
    cert = builder.sign(ca.ca_key, None)
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def load_cert(pem: str | bytes) -> x509.Certificate:
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise PkiError("not a PEM certificate") from exc


def fingerprint(cert: x509.Certificate | str) -> str:
    """SHA-256 of the DER certificate, base64url without padding (43 characters)."""
    c = load_cert(cert) if isinstance(cert, str) else cert
    digest = hashlib.sha256(c.public_bytes(serialization.Encoding.DER)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def renewal_due(not_before: float, not_after: float, now: float, fraction: float) -> bool:
    """True unless ``not_before <= now < not_before + fraction * lifetime``."""
    return not (not_before <= now < not_before + (not_after - not_before) * fraction)


def needs_renewal(
    cert: x509.Certificate | str, now: float, fraction: float = DEFAULT_RENEW_FRACTION
) -> bool:
    """True once ``fraction`` of the lifetime has passed (or the cert is not yet/no longer valid)."""
    c = load_cert(cert) if isinstance(cert, str) else cert
    return renewal_due(
        c.not_valid_before_utc.timestamp(), c.not_valid_after_utc.timestamp(), now, fraction
    )


def wireguard_key(cert: x509.Certificate) -> str:
    """The WireGuard public key (base64) carried in ``WG_KEY_OID``."""
    try:
        ext = cert.extensions.get_extension_for_oid(WG_KEY_OID)
    except x509.ExtensionNotFound as exc:
        raise PkiError("certificate has no WireGuard key extension") from exc
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise PkiError("unexpected WireGuard key extension type")
    raw = _parse_der_octet_string(value.value)
    if len(raw) != 32:
        raise PkiError("WireGuard key extension must hold 32 bytes")
    return base64.b64encode(raw).decode("ascii")


def device_identity(cert: x509.Certificate | str) -> DeviceIdentity:
    """Read org, name, tunnel IPs and keys from a device certificate (no chain check)."""
    c = load_cert(cert) if isinstance(cert, str) else cert
    try:
        san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise PkiError("certificate has no subjectAltName") from exc
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier)]
    prefix = f"{URI_SCHEME}://"
    found = [u for u in uris if u.startswith(prefix)]
    if len(found) != 1:
        raise PkiError("certificate must carry exactly one meshops:// SAN URI")
    org, sep, rest = found[0][len(prefix) :].partition("/devices/")
    if not sep or not org or not rest or "/" in rest:
        raise PkiError(f"malformed device URI {found[0]!r}")
    key = c.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise PkiError("device certificate key is not Ed25519")
    ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    return DeviceIdentity(
        org=org,
        name=rest,
        tunnel_ips=ips,
        wireguard_public_key=wireguard_key(c),
        identity_public_key=public_b64(key),
        serial=c.serial_number,
        not_before=int(c.not_valid_before_utc.timestamp()),
        not_after=int(c.not_valid_after_utc.timestamp()),
    )


def matches_device(cert: x509.Certificate | str, device: Device) -> bool:
    """True if ``cert`` still describes ``device`` (keys, name, IPs)."""
    ident = device_identity(cert)
    ips = tuple(str(ipaddress.ip_address(ip)) for ip in device.tunnel_ips)
    return (
        ident.org == device.org
        and ident.name == device.name
        and ident.wireguard_public_key == device.wireguard_public_key
        and ident.identity_public_key == device.identity_public_key
        and sorted(ident.tunnel_ips) == sorted(ips)
    )


def _permitted(ca: x509.Certificate) -> tuple[set[str], list[ipaddress._BaseNetwork]]:
    try:
        nc = ca.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound as exc:
        raise PkiError("CA certificate has no name constraints") from exc
    hosts: set[str] = set()
    nets: list[ipaddress._BaseNetwork] = []
    for name in nc.permitted_subtrees or ():
        if isinstance(name, x509.UniformResourceIdentifier):
            hosts.add(name.value)
        elif isinstance(name, x509.IPAddress):
            nets.append(name.value)  # type: ignore[arg-type]
    return hosts, nets


def check_names(
    ca: x509.Certificate,
    org: str,
    ips: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address],
    dns: Sequence[str],
) -> None:
    """``PkiError`` unless ``ca``'s name constraints permit the URI host ``org``,
    every IP and every DNS name (the checks OpenSSL applies during a handshake)."""
    hosts, nets = _permitted(ca)
    if org not in hosts:
        raise PkiError(f"certificate names org {org!r}, outside the CA's name constraints")
    for addr in ips:
        if not any(addr.version == n.version and addr in n for n in nets):
            raise PkiError(f"certificate IP {addr} is outside the CA's name constraints")
    for name in dns:
        if not dns_permitted(ca, name):
            raise PkiError(f"certificate DNS name {name!r} is outside the CA's name constraints")


def issued_by(pem: str | bytes | x509.Certificate, ca: x509.Certificate) -> bool:
    """True if ``ca`` issued and signed the certificate (no validity or name checks)."""
    cert = pem if isinstance(pem, x509.Certificate) else load_cert(pem)
    ca_key = ca.public_key()
    if cert.issuer != ca.subject or not isinstance(ca_key, Ed25519PublicKey):
        return False
    try:
        ca_key.verify(cert.signature, cert.tbs_certificate_bytes)
    except InvalidSignature:
        return False
    return True


def _load_bundle(ca_pem: str | bytes) -> list[x509.Certificate]:
    data = ca_pem.encode("ascii") if isinstance(ca_pem, str) else ca_pem
    try:
        cas = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise PkiError("not a PEM certificate") from exc
    if len(cas) > 8:  # an org has one CA, two during a rotation
        raise PkiError(f"CA bundle holds {len(cas)} certificates; at most 8 are accepted")
    return cas


def _issuing_ca(cert: x509.Certificate, cas: list[x509.Certificate]) -> x509.Certificate:
    """The CA of ``cas`` that signed ``cert``, with the reason when none did."""
    named = [ca for ca in cas if cert.issuer == ca.subject]
    if not named:
        raise PkiError("certificate was issued by another CA")
    for ca in named:
        ca_key = ca.public_key()
        if not isinstance(ca_key, Ed25519PublicKey):
            raise PkiError("CA key is not Ed25519")
        try:
            ca_key.verify(cert.signature, cert.tbs_certificate_bytes)
        except InvalidSignature:
            continue
        return ca
    raise PkiError("certificate was issued by another CA (signature does not verify)")


def check_device_cert(
    pem: str | bytes,
    ca_pem: str | bytes,
    now: float,
    *,
    revoked: Sequence[int] = (),
) -> DeviceIdentity:
    """Verify a device certificate against its org CA; return who it names.

    ``ca_pem`` may be a bundle of several CA certificates (during a CA rotation's
    overlap the org has two, with the same subject): the one that signed the
    certificate is used. Raises ``PkiError`` with a short reason: another CA,
    bad signature, expired, name constraints violated, wrong usage, or revoked."""
    cert = load_cert(pem)
    ca = _issuing_ca(cert, _load_bundle(ca_pem))
    for c, what in ((ca, "CA certificate"), (cert, "certificate")):
        if not c.not_valid_before_utc.timestamp() <= now <= c.not_valid_after_utc.timestamp():
            raise PkiError(f"{what} is expired or not yet valid")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound as exc:
        raise PkiError("certificate has no extended key usage") from exc
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise PkiError("certificate is not valid for TLS client authentication")
    ident = device_identity(cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    check_names(ca, ident.org, [ipaddress.ip_address(ip) for ip in ident.tunnel_ips],
                san.get_values_for_type(x509.DNSName))
    if ident.serial in set(revoked):
        raise PkiError(f"certificate serial {ident.serial} is revoked")
    return ident
