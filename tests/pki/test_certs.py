"""Device certificates: profile, read-back, renewal, hand chain check, real mTLS."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from reconciler import structs
from reconciler.errors import PkiError
from reconciler.pki import certs
from reconciler.pki.keys import private_to_pem

from .conftest import NOW, make_keys, make_org

DAY = 86400


def test_profile(keys, devices):
    dev = devices("laptop-7", 7)
    pem = certs.issue_device_cert(keys, dev, 12345, NOW, 30 * DAY)
    cert = certs.load_cert(pem)
    assert cert.serial_number == 12345
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "meshops://acme/devices/laptop-7"
    ]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["10.9.0.7", "fd00:9::7"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    ext = cert.extensions.get_extension_for_oid(certs.WG_KEY_OID)
    assert not ext.critical
    assert ext.value.value[:2] == b"\x04\x20"  # DER OCTET STRING, 32 bytes
    ident = certs.device_identity(pem)
    assert (ident.org, ident.name) == ("acme", "laptop-7")
    assert ident.wireguard_public_key == dev.wireguard_public_key
    assert ident.identity_public_key == dev.identity_public_key
    assert ident.not_after == int(NOW) + 30 * DAY
    assert certs.matches_device(pem, dev)
    assert not certs.matches_device(pem, structs.replace(dev, tunnel_ips=("10.9.0.8",)))


def test_fingerprint_is_base64url_sha256(keys, devices):
    pem = certs.issue_device_cert(keys, devices("a", 1), 1, NOW)
    fp = certs.fingerprint(pem)
    assert len(fp) == 43 and "=" not in fp and "+" not in fp and "/" not in fp


def test_needs_renewal_at_two_thirds(keys, devices):
    pem = certs.issue_device_cert(keys, devices("a", 1), 1, NOW, 30 * DAY)
    assert not certs.needs_renewal(pem, NOW, 2 / 3)
    assert not certs.needs_renewal(pem, NOW + 19 * DAY, 2 / 3)
    assert certs.needs_renewal(pem, NOW + 21 * DAY, 2 / 3)
    assert certs.needs_renewal(pem, NOW + 31 * DAY, 2 / 3)
    assert certs.needs_renewal(pem, NOW - DAY, 2 / 3)  # not yet valid


def test_check_device_cert_accepts_and_refuses(keys, devices):
    dev = devices("a", 1)
    pem = certs.issue_device_cert(keys, dev, 99, NOW)
    assert certs.check_device_cert(pem, keys.ca_pem, NOW).name == "a"
    other = make_keys(make_org())
    with pytest.raises(PkiError, match="another CA"):
        certs.check_device_cert(pem, other.ca_pem, NOW)
    with pytest.raises(PkiError, match="expired"):
        certs.check_device_cert(pem, keys.ca_pem, NOW + 40 * DAY)
    with pytest.raises(PkiError, match="revoked"):
        certs.check_device_cert(pem, keys.ca_pem, NOW, revoked=[99])


def rogue_issue(monkeypatch, *args):
    """Issue as a CA that ignores its own name constraints (ours refuses to)."""
    with pytest.raises(PkiError, match="outside the CA's name constraints"):
        certs.issue_device_cert(*args)
    with monkeypatch.context() as m:
        m.setattr(certs, "check_names", lambda *_: None)
        return certs.issue_device_cert(*args)


def test_hand_check_enforces_name_constraints(keys, devices, monkeypatch):
    evil = structs.replace(keys, org="evil")
    pem = rogue_issue(monkeypatch, evil, structs.replace(devices("x", 1), org="evil"), 5, NOW)
    with pytest.raises(PkiError, match="name constraints"):
        certs.check_device_cert(pem, keys.ca_pem, NOW)
    outside = devices("y", 2, tunnel_ips=("10.10.0.1",))
    pem = rogue_issue(monkeypatch, keys, outside, 6, NOW)
    with pytest.raises(PkiError, match="10.10.0.1 is outside"):
        certs.check_device_cert(pem, keys.ca_pem, NOW)


def test_issue_refuses_bad_keys(keys, devices):
    dev = structs.replace(devices("a", 1), identity_public_key="AAAA")
    with pytest.raises(PkiError, match="identity public key"):
        certs.issue_device_cert(keys, dev, 1, NOW)
    with pytest.raises(PkiError, match="belongs to org"):
        certs.issue_device_cert(keys, structs.replace(devices("b", 2), org="x"), 1, NOW)


# -- real TLS 1.3 mTLS with Python's ssl (OpenSSL 3); OpenSSL checks validity against the
# real clock, so these certificates are issued at time.time() ----------------------------------


def _files(tmp: Path, tag: str, pem: str, key) -> tuple[str, str]:
    c, k = tmp / f"{tag}.crt", tmp / f"{tag}.key"
    c.write_text(pem)
    k.write_text(private_to_pem(key))
    k.chmod(0o600)
    return str(c), str(k)


def _ctx(server: bool, cert: tuple[str, str], ca_file: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(*cert)
    ctx.load_verify_locations(ca_file)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = False  # identity is the SAN URI, checked by the application
    return ctx


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext):
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    out: dict = {}

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                out["server_saw"] = s.getpeercert()
                s.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            out["server_error"] = exc

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client_ctx.wrap_socket(b) as c:
            out["client_saw"] = c.getpeercert()
            out["version"] = c.version()
            out["data"] = c.recv(2)
    except (ssl.SSLError, OSError) as exc:
        out["client_error"] = exc
    finally:
        t.join(10)
        a.close()
        b.close()
    return out


def _uri(peercert: dict) -> list[str]:
    return [v for k, v in peercert.get("subjectAltName", ()) if k == "URI"]


def test_mtls_between_two_devices(tmp_path, keys, devices):
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text(keys.ca_pem)
    a, b = devices("alpha", 1), devices("beta", 2)
    ca_ = _files(
        tmp_path,
        "a",
        certs.issue_device_cert(keys, a, 1, time.time()),
        devices.identity_keys["alpha"],
    )
    cb = _files(
        tmp_path,
        "b",
        certs.issue_device_cert(keys, b, 2, time.time()),
        devices.identity_keys["beta"],
    )
    out = _handshake(_ctx(True, ca_, str(ca_file)), _ctx(False, cb, str(ca_file)))
    assert "client_error" not in out and "server_error" not in out, out
    assert out["version"] == "TLSv1.3"
    assert out["data"] == b"ok"
    assert _uri(out["server_saw"]) == ["meshops://acme/devices/beta"]
    assert _uri(out["client_saw"]) == ["meshops://acme/devices/alpha"]


def test_mtls_refuses_cert_from_another_ca(tmp_path, keys, devices):
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text(keys.ca_pem)
    rogue = make_keys(make_org())  # same org name, different CA key
    a, m = devices("alpha", 1), devices("mallory", 9)
    ca_ = _files(
        tmp_path,
        "a",
        certs.issue_device_cert(keys, a, 1, time.time()),
        devices.identity_keys["alpha"],
    )
    cm = _files(
        tmp_path,
        "m",
        certs.issue_device_cert(rogue, m, 3, time.time()),
        devices.identity_keys["mallory"],
    )
    rogue_ca = tmp_path / "rogue.crt"
    rogue_ca.write_text(rogue.ca_pem)
    out = _handshake(_ctx(True, ca_, str(ca_file)), _ctx(False, cm, str(rogue_ca)))
    assert "server_saw" not in out
    assert "server_error" in out
    assert (
        "certificate verify failed" in str(out["server_error"])
        or "unknown ca" in str(out["server_error"]).lower()
    )


def test_openssl_enforces_uri_name_constraint(tmp_path, keys, devices, monkeypatch):
    """The CA permits URI host 'acme': OpenSSL rejects meshops://evil/... from the same CA."""
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text(keys.ca_pem)
    a = devices("alpha", 1)
    ca_ = _files(
        tmp_path,
        "a",
        certs.issue_device_cert(keys, a, 1, time.time()),
        devices.identity_keys["alpha"],
    )
    evil_dev = structs.replace(devices("x", 5), org="evil")
    evil_pem = rogue_issue(
        monkeypatch, structs.replace(keys, org="evil"), evil_dev, 4, time.time()
    )
    ce = _files(tmp_path, "e", evil_pem, devices.identity_keys["x"])
    out = _handshake(_ctx(True, ca_, str(ca_file)), _ctx(False, ce, str(ca_file)))
    assert "server_error" in out
    assert "permitted subtree violation" in str(out["server_error"])
