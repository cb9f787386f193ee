"""TLS for ``meshops hub serve``: the hub's server certificates and the mTLS context.

Called by ``reconciler.hub.serve`` (building and refreshing the context after
each publish) and ``reconciler.hub.api`` (reading the client certificate).

Several orgs, one listener: each org has its own CA, and a server certificate
chains to exactly one CA, so the hub issues itself one server certificate per
org CA (ECDSA P-256 key, 7 days, re-issued on every publish that changes the
CA, DNS SANs only: the org CAs' IP name constraints would forbid loopback or
public IP SANs). The certificate is chosen by SNI:

* SNI ``ORG.<anything>`` or exactly ``ORG``  -> org ``ORG``'s certificate;
* any other name, or no SNI                  -> the default org's certificate
  (the first org by name; a single-org mesh needs nothing else).

Each org certificate carries the SANs ``ORG``, ``ORG.hub``, ``ORG.<name>`` and
``<name>`` for every ``--tls-name`` (plus ``localhost``). ``meshops agent`` sends
and verifies ``ORG.hub``, so any hub URL, even an IP address, works for it.
``--tls-cert/--tls-key`` replace all of that with an operator certificate
(for example from a public CA that agents verify with the system store).

Client certificates are optional at the TLS layer (``CERT_OPTIONAL``) so the
public endpoints work without one; every org CA is a client verify location,
and OpenSSL refuses a presented certificate that is expired or chains to no
org CA during the handshake. Endpoints that need an identity re-check the
certificate against the *claimed* org's CA, the clock and the revocation list
(``reconciler.pki.certs.check_device_cert``).

The hub's server keys live in memory only.
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from reconciler.errors import ConfigError
from reconciler.model.endpoint import IPAddress, parse_or_none
from reconciler.pki.ca import OrgKeys

SERVER_CERT_LIFETIME_S = 7 * 86400


@dataclass(frozen=True)
class ServerCert:
    org: str
    cert_pem: str
    key_pem: str  # never logged
    ca_pem: str
    not_after: float


def server_names(org: str, names: Iterable[str]) -> list[str]:
    out = [org, f"{org}.hub"]
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
    """A hub server certificate for ``keys.org`` signed by that org's CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = dt.datetime.fromtimestamp(int(now), tz=dt.UTC) - dt.timedelta(minutes=5)
    end = start + dt.timedelta(seconds=SERVER_CERT_LIFETIME_S)
    dns = [x509.DNSName(n) for n in server_names(keys.org, names)]
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
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(dns), critical=False)
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


def _load_chain(ctx: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """``load_cert_chain`` wants files: write them to a private temp dir, then remove."""
    with tempfile.TemporaryDirectory(prefix="meshops-hub-tls-") as tmp:
        cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        with open(cert_path, "w", encoding="ascii") as f:
            f.write(cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(key_pem)
        ctx.load_cert_chain(cert_path, key_path)


def _base_context(client_cas: Iterable[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
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
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._certs: dict[str, ServerCert] = {}
        self._cas: dict[str, str] = {}
        self._default: str | None = None
        self.front = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.front.minimum_version = ssl.TLSVersion.TLSv1_2
        if self._fixed:
            try:
                self.front.load_cert_chain(cert_file, key_file)  # type: ignore[arg-type]
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"--tls-cert {cert_file}: cannot load: {exc}") from exc
        self.front.sni_callback = self._pick

    def certificate(self, org: str) -> ServerCert | None:
        return self._certs.get(org)

    def update(self, org_keys: Mapping[str, OrgKeys], now: float) -> None:
        """Issue/refresh per-org server certificates and the client CA set."""
        cas = {org: keys.ca_pem for org, keys in org_keys.items()}
        contexts: dict[str, ssl.SSLContext] = {}
        certs: dict[str, ServerCert] = {}
        for org, keys in sorted(org_keys.items()):
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
                    issue_server_cert(keys, self.names, now)
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
