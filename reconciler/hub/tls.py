"""TLS for ``meshops hub serve``: the hub's server certificates and the mTLS context.

Called by ``reconciler.hub.daemon`` (a ``TlsManager`` whose ``update`` runs
after each publish swaps in a new snapshot) and ``reconciler.hub.api``
(reading the client certificate).

Several orgs, one listener: each org has its own CA, and a server certificate
chains to exactly one CA, so the hub issues itself one server certificate per
org CA (ECDSA P-256 key, 7 days, re-issued on every publish that changes the
CA, DNS SANs only: the org CAs' IP name constraints would forbid loopback or
public IP SANs). The certificate is chosen by SNI:

* SNI ``ORG.<anything>`` or exactly ``ORG``  -> org ``ORG``'s certificate;
* any other name, or no SNI                  -> the default org's certificate
  (the first org by name; a single-org mesh needs nothing else).

Each org certificate carries the SAN ``ORG.hub``, and ``<name>`` and
``ORG.<name>`` for every ``--tls-name`` (the daemon adds ``localhost``) that
the org CA's name constraints permit. A CA made by ``meshops ca init`` permits
the DNS subtrees ``ORG.hub`` and ``localhost`` only (reconciler.pki.ca), so a
public ``--tls-name`` is left out of its certificate, and the hub logs that
once per org and name. ``meshops agent`` sends and verifies ``ORG.hub``, so any
hub URL, even an IP address, works for it. ``--tls-cert/--tls-key`` replace
all of that with an operator certificate (for example from a public CA that
agents verify with the system store).

Certificates pass strict X.509 checks (Python 3.13's default
``VERIFY_X509_STRICT``, ``openssl s_client -x509_strict``): critical
basicConstraints (not a CA) and keyUsage (digitalSignature), serverAuth, a
Subject Key Identifier and an Authority Key Identifier equal to the org CA's.

Client certificates are optional at the TLS layer (``CERT_OPTIONAL``) so the
public endpoints work without one; every org CA is a client verify location,
verified strictly too, and OpenSSL refuses a presented certificate that is
expired or chains to no org CA during the handshake. Endpoints that need an
identity re-check the certificate against the *claimed* org's CA, the clock
and the revocation list (``reconciler.pki.certs.check_device_cert``).

During a CA rotation's overlap (``reconciler.pki.ca.OrgKeys.server_keys`` and
``ca_pems``) the org's server certificate stays under the **old** CA, because
agents that have not walked to the new trust root pin only it, and both CAs
are client verify locations (devices holding a certificate of either CA get
in). The first ``update`` at or after ``overlap_until`` issues the server
certificate under the new CA and drops the old one from the client CAs.

The hub's server keys never touch a file system: ``ssl`` loads a key only
from a path, so ``_load_chain`` writes the PEM into an anonymous memory file
(``memfd_create(2)``, Linux 3.17+) and hands OpenSSL its ``/proc/self/fd/N``
path; the file has no name in any directory and is closed right after the
load. Like all process memory it can reach swap; nothing else persists it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from reconciler.errors import ConfigError, PkiError
from reconciler.model.endpoint import IPAddress, parse_or_none
from reconciler.pki.ca import OrgKeys, authority_key_id, dns_permitted, key_usage

log = logging.getLogger(__name__)

SERVER_CERT_LIFETIME_S = 7 * 86400


@dataclass(frozen=True)
class ServerCert:
    org: str
    cert_pem: str
    key_pem: str = field(repr=False)  # never logged
    ca_pem: str
    not_after: float


def server_names(org: str, names: Iterable[str]) -> list[str]:
    """Candidate DNS SANs of org ``org``'s hub certificate, before name constraints."""
    out = [f"{org}.hub"]
    for name in names:
        if name and ip_literal(name) is None:
            out += [name, f"{org}.{name}"]
    return list(dict.fromkeys(out))


def ip_literal(name: str) -> IPAddress | None:
    """The address a ``--tls-name`` is when it is one (``198.51.100.10``,
    ``2001:db8::1``, ``[2001:db8::1]``), else None (a DNS name). Parsed by
    ``Endpoint``, the project's one address parser (a dummy port is added)."""
    bare = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    endpoint = parse_or_none(f"[{bare}]:1" if ":" in bare else f"{bare}:1", allow_names=True)
    return endpoint.ip if endpoint is not None else None


def issue_server_cert(keys: OrgKeys, names: Iterable[str], now: float) -> ServerCert:
    """A hub server certificate for ``keys.org`` signed by that org's CA, with the
    DNS SANs ``names`` (``PkiError`` if the CA's name constraints forbid one: use
    ``permitted_names`` first)."""
    dns_names = list(names)
    refused = [n for n in dns_names if not dns_permitted(keys.ca_cert, n)]
    if refused:
        raise PkiError(
            f"org {keys.org}: the CA's name constraints do not permit {', '.join(refused)}"
        )
    if not dns_names:
        raise PkiError(f"org {keys.org}: a server certificate needs at least one DNS name")
    key = ec.generate_private_key(ec.SECP256R1())
    start = dt.datetime.fromtimestamp(int(now), tz=dt.UTC) - dt.timedelta(minutes=5)
    end = start + dt.timedelta(seconds=SERVER_CERT_LIFETIME_S)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, keys.org),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"meshops hub ({keys.org})"),
                ]
            )
        )
        .issuer_name(keys.ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(authority_key_id(keys.ca_cert), critical=False)
        .sign(keys.ca_key, None)
    )
    return ServerCert(
        org=keys.org,
        cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii"),
        ca_pem=keys.ca_pem,
        not_after=end.timestamp(),
    )


def permitted_names(keys: OrgKeys, names: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split ``server_names(org, names)`` into (permitted, refused) by the CA's constraints."""
    candidates = server_names(keys.org, names)
    permitted = [n for n in candidates if dns_permitted(keys.ca_cert, n)]
    return permitted, [n for n in candidates if n not in permitted]


def _load_chain(ctx: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """``load_cert_chain`` reads only paths: give it a memfd's ``/proc/self/fd`` path.

    The key goes into an anonymous memory file (no directory entry, gone when
    closed); OpenSSL opens ``/proc/self/fd/N`` afresh, so it reads from offset 0."""
    fd = os.memfd_create("meshops-hub-tls", os.MFD_CLOEXEC)
    try:
        os.fchmod(fd, 0o600)
        data = (key_pem + cert_pem).encode("ascii")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")  # key and chain in one PEM file
    finally:
        os.close(fd)


def _server_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT  # client certificates, as Python 3.13 clients do
    return ctx


def _base_context(client_cas: Iterable[str]) -> ssl.SSLContext:
    ctx = _server_context()
    cas = "".join(client_cas)
    if cas:
        ctx.load_verify_locations(cadata=cas)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


class TlsManager:
    """Builds one SSL context per org plus an SNI callback that picks among them.

    ``update(org_keys, now)`` is called after every successful publish; the
    listener keeps the same front context, whose SNI callback reads the current
    per-org contexts, so new CAs and certificates apply to the next handshake."""

    def __init__(
        self,
        names: Iterable[str] = (),
        *,
        cert_file: str | None = None,
        key_file: str | None = None,
    ) -> None:
        self.names = tuple(names)
        self._fixed = (cert_file, key_file) if cert_file else None
        if cert_file and not key_file:
            raise ConfigError("--tls-cert needs --tls-key")
        if not cert_file and not hasattr(os, "memfd_create"):
            raise ConfigError(
                "hub-issued TLS certificates need memfd_create (Linux) to keep their keys "
                "off disk; on this system serve an operator certificate with "
                "--tls-cert/--tls-key"
            )
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._certs: dict[str, ServerCert] = {}
        self._cas: dict[str, str] = {}
        self._default: str | None = None
        self._warned: set[tuple[str, str]] = set()
        self.front = _server_context()
        if self._fixed:
            try:
                self.front.load_cert_chain(cert_file, key_file)  # type: ignore[arg-type]
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"--tls-cert {cert_file}: cannot load: {exc}") from exc
        self.front.sni_callback = self._pick

    def certificate(self, org: str) -> ServerCert | None:
        return self._certs.get(org)

    def update(self, org_keys: Mapping[str, OrgKeys], now: float) -> None:
        """Issue/refresh per-org server certificates and the client CA set.

        During a CA rotation's overlap (``OrgKeys.server_keys``/``ca_pems``) the
        server certificate stays under the old CA and client certificates of both
        CAs are accepted; the first update at or after ``overlap_until`` issues
        the certificate under the new CA and drops the old one."""
        cas = {org: "".join(keys.ca_pems(now)) for org, keys in org_keys.items()}
        contexts: dict[str, ssl.SSLContext] = {}
        certs: dict[str, ServerCert] = {}
        for org, all_keys in sorted(org_keys.items()):
            keys = all_keys.server_keys(now)
            old = self._certs.get(org)
            renew_at = (old.not_after - SERVER_CERT_LIFETIME_S / 3) if old else 0.0
            if old and old.ca_pem == keys.ca_pem and now < renew_at and cas == self._cas:
                contexts[org], certs[org] = self._contexts[org], old
                continue
            ctx = _base_context(cas.values())
            if self._fixed:
                ctx.load_cert_chain(*self._fixed)  # type: ignore[arg-type]
                cert = ServerCert(org, "", "", keys.ca_pem, float("inf"))
            else:
                cert = old if old and old.ca_pem == keys.ca_pem and now < renew_at else (
                    issue_server_cert(keys, self._names_for(keys), now)
                )
                _load_chain(ctx, cert.cert_pem + keys.ca_pem, cert.key_pem)
            contexts[org], certs[org] = ctx, cert
        self._contexts, self._certs, self._cas = contexts, certs, cas
        self._default = min(contexts) if contexts else None
        if self._default and not self._fixed:
            # The front context answers clients that never reach the SNI callback
            # (no SNI extension): give it the default org's chain and client CAs.
            cert = certs[self._default]
            _load_chain(self.front, cert.cert_pem + cert.ca_pem, cert.key_pem)
        if cas:
            self.front.load_verify_locations(cadata="".join(cas.values()))
            self.front.verify_mode = ssl.CERT_OPTIONAL

    def _names_for(self, keys: OrgKeys) -> list[str]:
        permitted, refused = permitted_names(keys, self.names)
        for name in refused:
            if (keys.org, name) not in self._warned:
                self._warned.add((keys.org, name))
                log.warning(
                    "hub certificate for org %s leaves out %s: the org CA's name constraints "
                    "do not permit it; agents use %s.hub, or serve an operator certificate "
                    "with --tls-cert/--tls-key", keys.org, name, keys.org)
        return permitted

    def org_for_sni(self, server_name: str | None) -> str | None:
        if server_name:
            first = server_name.split(".", 1)[0].lower()
            if first in self._contexts:
                return first
        return self._default

    def _pick(self, sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        org = self.org_for_sni(server_name)
        if org is not None:
            sslobj.context = self._contexts[org]


def peer_certificate_pem(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The client certificate of a TLS connection as PEM, or ``None``."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return ssl.DER_cert_to_PEM_cert(der) if der else None
