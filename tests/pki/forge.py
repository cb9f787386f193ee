"""A rogue signer for tests: certificates meshops itself refuses to make.

``forge`` builds a certificate with any SANs and any extension profile and
signs it with a CA's key, bypassing the checks in ``reconciler.pki`` and
``reconciler.hub.tls``. Tests use it to prove that OpenSSL (the relying party)
refuses what our issuers refuse, and that strict checks catch a missing
extension. Imported by tests/pki/test_strict_x509.py and
tests/hub/test_strict_tls.py.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from reconciler.pki.ca import OrgKeys, key_usage


def forge(
    keys: OrgKeys,
    now: float,
    *,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    uris: Sequence[str] = (),
    aki: bool = True,
    ski: bool = True,
    bc_critical: bool = True,
    ku: bool = True,
    cn: str = "forged",
) -> tuple[str, str]:
    """(certificate PEM, key PEM) for an ECDSA leaf signed by ``keys``' CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    sans += [x509.UniformResourceIdentifier(u) for u in uris]
    start = dt.datetime.fromtimestamp(int(now), tz=dt.UTC) - dt.timedelta(minutes=5)
    b: Any = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(keys.ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=bc_critical)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                   ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if ku:
        b = b.add_extension(key_usage(ca=False), critical=True)
    if ski:
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                            critical=False)
    if aki:
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(keys.ca_key.public_key()),
            critical=False)
    cert = b.sign(keys.ca_key, None)
    return (
        cert.public_bytes(serialization.Encoding.PEM).decode(),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()).decode(),
    )


def legacy_ca(keys: OrgKeys, now: float, *, bc_critical: bool = True,
              ski: bool = True) -> OrgKeys:
    """``keys`` with a CA certificate as meshops made it before strict X.509: the
    same key and constraints minus the DNS subtrees, and no AKI on the CA.
    ``bc_critical=False`` or ``ski=False`` make it a CA strict checks refuse."""
    old = keys.ca_cert
    nc = old.extensions.get_extension_for_class(x509.NameConstraints).value
    permitted = [n for n in nc.permitted_subtrees or () if not isinstance(n, x509.DNSName)]
    start = dt.datetime.fromtimestamp(int(now), tz=dt.UTC) - dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(old.subject)
        .public_key(keys.ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=bc_critical)
        .add_extension(key_usage(ca=True), critical=True)
        .add_extension(x509.NameConstraints(permitted_subtrees=permitted,
                                            excluded_subtrees=None), critical=True)
    )
    if ski:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(keys.ca_key.public_key()), critical=False)
    cert = builder.sign(keys.ca_key, None)
    return OrgKeys(org=keys.org, ca_key=keys.ca_key, ca_cert=cert, signing_key=keys.signing_key)
