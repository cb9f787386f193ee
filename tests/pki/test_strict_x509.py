"""Every certificate meshops makes passes strict X.509, and the org CA's DNS subtree holds.

Three independent checkers: the extension profile read back with
``cryptography``; ``openssl verify -x509_strict`` (the real OpenSSL command);
and real TLS handshakes over loopback with ``ssl.VERIFY_X509_STRICT`` (what
Python 3.13's default context sets), one-way and mTLS. Forged certificates
(tests/pki/forge.py) prove each checker refuses what it should, so a pass
means something.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from pki.forge import forge, legacy_ca
from reconciler.errors import PkiError
from reconciler.hub.tls import issue_server_cert, permitted_names, server_names
from reconciler.model.repo import Organization
from reconciler.pki import ca as pki_ca
from reconciler.pki import certs
from reconciler.pki.keys import private_to_pem

from .conftest import DeviceFactory, make_keys

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl command not installed")


@pytest.fixture(scope="module")
def now() -> float:
    return time.time()  # OpenSSL and ssl check validity against the real clock


@pytest.fixture(scope="module")
def acme(now):
    return make_keys(Organization(name="acme", cidr_v4="10.9.0.0/16", cidr_v6="fd00:9::/48"),
                     now - 3600)


@pytest.fixture(scope="module")
def beta(now):
    return make_keys(Organization(name="beta", cidr_v4="10.8.0.0/16"), now - 3600)


def device_pem(keys, name: str, index: int, now: float) -> tuple[str, str]:
    devices = DeviceFactory(keys.org)
    dev = devices(name, index, tunnel_ips=(f"10.{9 if keys.org == 'acme' else 8}.0.{index}",))
    pem = certs.issue_device_cert(keys, dev, 1000 + index, now)
    return pem, private_to_pem(devices.identity_keys[name])


def load(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def ext(cert: x509.Certificate, cls):
    return cert.extensions.get_extension_for_class(cls)


# -- the extension profile ---------------------------------------------------------------------


def test_ca_profile(acme):
    ca = acme.ca_cert
    bc, ku = ext(ca, x509.BasicConstraints), ext(ca, x509.KeyUsage)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    ski = ext(ca, x509.SubjectKeyIdentifier)
    aki = ext(ca, x509.AuthorityKeyIdentifier)
    assert not ski.critical and not aki.critical
    assert aki.value.key_identifier == ski.value.digest  # self-signed: AKI = SKI
    nc = ext(ca, x509.NameConstraints)
    assert nc.critical
    dns = [n.value for n in nc.value.permitted_subtrees if isinstance(n, x509.DNSName)]
    assert dns == ["acme.hub", "localhost"] == list(pki_ca.dns_subtrees("acme"))


@pytest.mark.parametrize("kind", ["device", "hub"])
def test_leaf_profiles(acme, now, kind):
    if kind == "device":
        cert = load(device_pem(acme, "laptop", 1, now)[0])
        usages = {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    else:
        cert = load(issue_server_cert(acme, ["acme.hub"], now).cert_pem)
        usages = {ExtendedKeyUsageOID.SERVER_AUTH}
    bc, ku = ext(cert, x509.BasicConstraints), ext(cert, x509.KeyUsage)
    assert bc.critical and not bc.value.ca
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert set(ext(cert, x509.ExtendedKeyUsage).value) == usages
    ca_ski = ext(acme.ca_cert, x509.SubjectKeyIdentifier).value.digest
    assert ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski
    assert ext(cert, x509.SubjectKeyIdentifier).value == \
        x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    assert cert.subject.rfc4514_string() and cert.version == x509.Version.v3


# -- the DNS subtree in our own code --------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ok"),
    [("acme.hub", True), ("ACME.HUB", True), ("api.acme.hub", True), ("localhost", True),
     ("acme.localhost", True), ("beta.hub", False), ("acme.hub.evil.example", False),
     ("xacme.hub", False), ("hub", False), ("acme", False), ("hub.example.com", False)],
)
def test_dns_permitted_follows_rfc5280_subtrees(acme, name, ok):
    assert pki_ca.dns_permitted(acme.ca_cert, name) is ok


def test_legacy_ca_without_dns_subtree_permits_any_name(acme, now):
    assert pki_ca.dns_permitted(legacy_ca(acme, now).ca_cert, "hub.example.com")


@pytest.mark.parametrize("name", ["beta.hub", "hub.example.com", "acme.hub.evil.example"])
def test_hub_issuer_refuses_names_outside_the_subtree(acme, now, name):
    with pytest.raises(PkiError, match="name constraints do not permit"):
        issue_server_cert(acme, ["acme.hub", name], now)


def test_tls_names_outside_the_subtree_are_left_out(acme, now):
    assert server_names("acme", ["hub.example.com", "localhost", "10.0.0.1"]) == [
        "acme.hub", "hub.example.com", "acme.hub.example.com", "localhost", "acme.localhost"]
    permitted, refused = permitted_names(acme, ["hub.example.com", "localhost"])
    assert permitted == ["acme.hub", "localhost", "acme.localhost"]
    assert refused == ["hub.example.com", "acme.hub.example.com"]
    old, _ = permitted_names(legacy_ca(acme, now), ["hub.example.com"])
    assert old == ["acme.hub", "hub.example.com", "acme.hub.example.com"]


@pytest.mark.parametrize(
    ("ips", "match"),
    [(("10.10.0.1",), "10.10.0.1 is outside"), (("fd00:8::1",), "fd00:8::1 is outside"),
     (("10.9.0.2", "192.0.2.1"), "192.0.2.1 is outside")],
)
def test_device_issuer_refuses_ips_outside_the_subtree(acme, now, ips, match):
    dev = DeviceFactory("acme")("odd", 7, tunnel_ips=ips)
    with pytest.raises(PkiError, match=f"device odd: certificate IP {match}"):
        certs.issue_device_cert(acme, dev, 7, now)


def test_hand_check_refuses_forged_dns_san(acme, now):
    pem, _ = forge(acme, now, dns=["evil.example"], uris=["meshops://acme/devices/x"],
                   ips=["10.9.0.5"])
    # forge has no WireGuard extension: the DNS check must come first or the
    # structure check; either way the certificate is refused
    with pytest.raises(PkiError):
        certs.check_device_cert(pem, acme.ca_pem, now)
    with pytest.raises(PkiError, match="'evil.example' is outside"):
        certs.check_names(acme.ca_cert, "acme", [], ["evil.example"])


# -- openssl verify -x509_strict ------------------------------------------------------------


def openssl_verify(tmp: Path, ca_pem: str, pem: str, *extra: str) -> subprocess.CompletedProcess:
    ca, leaf = tmp / "ca.pem", tmp / "leaf.pem"
    ca.write_text(ca_pem)
    leaf.write_text(pem)
    return subprocess.run([OPENSSL, "verify", "-x509_strict", *extra, "-CAfile", str(ca),
                           str(leaf)], check=False, capture_output=True, text=True, timeout=30)


@needs_openssl
@pytest.mark.parametrize("org", ["acme", "beta"])
@pytest.mark.parametrize(
    "kind", ["ca", "device-client", "device-server", "hub", "hub-localhost", "hub-legacy-ca"])
def test_openssl_x509_strict_accepts_every_kind(tmp_path, now, acme, beta, org, kind):
    keys = acme if org == "acme" else beta
    ca_pem = keys.ca_pem
    if kind == "ca":
        pem, purpose = keys.ca_pem, "any"
    elif kind.startswith("device"):
        pem = device_pem(keys, "laptop", 3, now)[0]
        purpose = "sslclient" if kind == "device-client" else "sslserver"
    elif kind == "hub":
        pem, purpose = issue_server_cert(keys, [f"{org}.hub"], now).cert_pem, "sslserver"
    elif kind == "hub-localhost":
        names, _ = permitted_names(keys, ["localhost", "hub.example.com"])
        pem, purpose = issue_server_cert(keys, names, now).cert_pem, "sslserver"
    else:  # a CA made before the DNS subtree: new leaves still pass strict checks
        old = legacy_ca(keys, now)
        ca_pem = old.ca_pem
        names, _ = permitted_names(old, ["hub.example.com"])
        pem, purpose = issue_server_cert(old, names, now).cert_pem, "sslserver"
    out = openssl_verify(tmp_path, ca_pem, pem, "-purpose", purpose)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().endswith(": OK")


@needs_openssl
@pytest.mark.parametrize("name", ["evil.example", "beta.hub", "acme.hub.evil.example", "hub"])
def test_openssl_refuses_dns_name_outside_the_subtree(tmp_path, now, acme, name):
    pem, _ = forge(acme, now, dns=["acme.hub", name])
    out = openssl_verify(tmp_path, acme.ca_pem, pem)
    assert out.returncode != 0
    assert "permitted subtree violation" in out.stdout + out.stderr


@needs_openssl
def test_openssl_refuses_a_dotted_cn_outside_the_subtree(tmp_path, now, acme):
    # no DNS SAN: OpenSSL checks a host-name-like CN against the DNS subtree
    pem, _ = forge(acme, now, ips=["10.9.0.9"], cn="www.evil.example")
    out = openssl_verify(tmp_path, acme.ca_pem, pem)
    assert "permitted subtree violation" in out.stdout + out.stderr


@needs_openssl
@pytest.mark.parametrize(
    ("where", "flaw", "message"),
    [("leaf", {"aki": False}, "Missing Authority Key Identifier"),
     ("ca", {"bc_critical": False}, "Basic Constraints of CA cert not marked critical"),
     ("ca", {"ski": False}, "Missing Subject Key Identifier")],
)
def test_openssl_strict_catches_what_a_lax_profile_lacks(tmp_path, now, acme, where, flaw,
                                                         message):
    # Each flaw passes without -x509_strict: the strict flag is what the tests rely on,
    # and our profile has what it asks for (the leaf AKI was the hub's bug).
    if where == "leaf":
        ca_pem, pem = acme.ca_pem, forge(acme, now, dns=["acme.hub"], **flaw)[0]
    else:
        bad = legacy_ca(acme, now, **flaw)
        ca_pem, pem = bad.ca_pem, issue_server_cert(bad, ["acme.hub"], now).cert_pem
    ca, leaf = tmp_path / "ca.pem", tmp_path / "leaf.pem"
    ca.write_text(ca_pem)
    leaf.write_text(pem)
    lax = subprocess.run([OPENSSL, "verify", "-CAfile", str(ca), str(leaf)],
                         check=False, capture_output=True, text=True)
    assert lax.returncode == 0, lax.stdout + lax.stderr
    strict = openssl_verify(tmp_path, ca_pem, pem)
    assert strict.returncode != 0
    assert message in strict.stdout + strict.stderr


# -- real TLS handshakes over loopback with VERIFY_X509_STRICT ---------------------------------


def strict_client(ca_pem: str, cert: tuple[str, str] | None, tmp: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca_pem)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN  # as 3.13
    if cert:
        ctx.load_cert_chain(*write_pair(tmp, "client", *cert))
    return ctx


def strict_server(ca_pem: str, cert: tuple[str, str], tmp: Path, *,
                  require_client: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_cert_chain(*write_pair(tmp, "server", *cert))
    ctx.load_verify_locations(cadata=ca_pem)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_NONE
    return ctx


def write_pair(tmp: Path, tag: str, cert_pem: str, key_pem: str) -> tuple[str, str]:
    c, k = tmp / f"{tag}.crt", tmp / f"{tag}.key"
    c.write_text(cert_pem)
    k.write_text(key_pem)
    k.chmod(0o600)
    return str(c), str(k)


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, sni: str) -> dict:
    """One TLS connection over TCP on 127.0.0.1; what each side saw or the error."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    out: dict = {}

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as s:
                out["server_saw"] = s.getpeercert()
                s.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            out["server_error"] = exc

    t = threading.Thread(target=serve)
    t.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=10) as raw, \
                client_ctx.wrap_socket(raw, server_hostname=sni) as c:
            out["client_saw"] = c.getpeercert()
            out["data"] = c.recv(2)
    except (ssl.SSLError, OSError) as exc:
        out["client_error"] = exc
    finally:
        t.join(10)
        listener.close()
    return out


def test_strict_mtls_hub_certificate_and_device_client(tmp_path, now, acme):
    hub = issue_server_cert(acme, ["acme.hub"], now)
    server = strict_server(acme.ca_pem, (hub.cert_pem + acme.ca_pem, hub.key_pem), tmp_path,
                           require_client=True)
    client = strict_client(acme.ca_pem, device_pem(acme, "laptop", 1, now), tmp_path)
    out = handshake(server, client, "acme.hub")
    assert out.get("data") == b"ok", out
    assert ("URI", "meshops://acme/devices/laptop") in out["server_saw"]["subjectAltName"]
    assert ("DNS", "acme.hub") in out["client_saw"]["subjectAltName"]


def test_strict_mtls_between_two_devices(tmp_path, now, acme):
    server = strict_server(acme.ca_pem, device_pem(acme, "db", 2, now), tmp_path,
                           require_client=True)
    client = strict_client(acme.ca_pem, device_pem(acme, "laptop", 1, now), tmp_path)
    client.check_hostname = False  # devices are named by their SAN URI, not a host name
    out = handshake(server, client, "db")
    assert out.get("data") == b"ok", out
    assert ("URI", "meshops://acme/devices/db") in out["client_saw"]["subjectAltName"]


@pytest.mark.parametrize("org", ["acme", "beta"])
def test_strict_client_refuses_another_orgs_hub(tmp_path, now, acme, beta, org):
    # acme's agent pins acme's CA: beta's hub certificate (or acme's CA signing
    # beta.hub, which it now cannot) never verifies.
    keys = beta if org == "beta" else acme
    if org == "beta":
        cert = issue_server_cert(beta, ["beta.hub"], now)
        pair = (cert.cert_pem, cert.key_pem)
    else:
        pair = forge(acme, now, dns=["beta.hub"])
    server = strict_server(keys.ca_pem, pair, tmp_path, require_client=False)
    client = strict_client(acme.ca_pem, None, tmp_path)
    out = handshake(server, client, "beta.hub")
    assert "client_error" in out
    assert "certificate verify failed" in str(out["client_error"])


def test_strict_client_refuses_a_hub_certificate_without_aki(tmp_path, now, acme):
    pair = forge(acme, now, dns=["acme.hub"], aki=False)
    server = strict_server(acme.ca_pem, pair, tmp_path, require_client=False)
    lax = ssl.create_default_context(cadata=acme.ca_pem)
    lax.verify_flags &= ~ssl.VERIFY_X509_STRICT
    assert handshake(server, lax, "acme.hub").get("data") == b"ok"
    out = handshake(server, strict_client(acme.ca_pem, None, tmp_path), "acme.hub")
    assert "Missing Authority Key Identifier" in str(out.get("client_error"))


def test_strict_server_refuses_a_device_certificate_from_another_ca(tmp_path, now, acme, beta):
    hub = issue_server_cert(acme, ["acme.hub"], now)
    server = strict_server(acme.ca_pem, (hub.cert_pem, hub.key_pem), tmp_path,
                           require_client=True)
    client = strict_client(acme.ca_pem, device_pem(beta, "phone", 4, now), tmp_path)
    out = handshake(server, client, "acme.hub")
    assert "server_saw" not in out
    assert "server_error" in out
