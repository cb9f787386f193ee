"""The org CA: constraints, the secret document, key/cert pairing."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509

from reconciler.errors import PkiError
from reconciler.pki import ca as pki_ca

from .conftest import NOW, make_keys, make_org


def test_ca_is_constrained_to_org_uri_host_and_cidrs(org):
    bundle = pki_ca.init_ca(org, NOW)
    cert = x509.load_pem_x509_certificate(bundle.cert_pem.encode())
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    nc = cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical
    permitted = nc.value.permitted_subtrees
    assert x509.UniformResourceIdentifier("acme") in permitted
    assert x509.IPAddress(ipaddress.ip_network("10.9.0.0/16")) in permitted
    assert x509.IPAddress(ipaddress.ip_network("fd00:9::/48")) in permitted
    assert x509.DNSName("acme.hub") in permitted and x509.DNSName("localhost") in permitted
    assert len(permitted) == 5  # nothing else: no other URI host, network or DNS subtree
    assert cert.not_valid_before_utc.timestamp() <= NOW < cert.not_valid_after_utc.timestamp()


def test_ca_without_v6_has_only_v4_constraint():
    from reconciler.model.repo import Organization

    bundle = pki_ca.init_ca(Organization(name="solo", cidr_v4="10.1.0.0/24"), NOW)
    cert = x509.load_pem_x509_certificate(bundle.cert_pem.encode())
    nets = [n for n in cert.extensions.get_extension_for_class(x509.NameConstraints)
            .value.permitted_subtrees if isinstance(n, x509.IPAddress)]  # fmt: skip
    assert [str(n.value) for n in nets] == ["10.1.0.0/24"]


def test_repr_hides_private_keys(org):
    bundle = pki_ca.init_ca(org, NOW)
    assert "PRIVATE" not in repr(bundle)
    keys = make_keys(org)
    assert "PRIVATE" not in repr(keys)


def test_secret_doc_round_trip_and_mismatch(org):
    a, b = pki_ca.init_ca(org, NOW), pki_ca.init_ca(org, NOW)
    doc = pki_ca.secret_doc("acme", a.key_pem, pki_ca.new_signing_key_pem())
    keys = pki_ca.org_keys_from_doc(doc, "acme", a.cert_pem)
    assert keys.ca_pem == a.cert_pem
    with pytest.raises(PkiError, match="does not match") as err:
        pki_ca.org_keys_from_doc(doc, "acme", b.cert_pem)
    assert "PRIVATE KEY" not in str(err.value)
    with pytest.raises(PkiError, match="not the CA secrets of org"):
        pki_ca.org_keys_from_doc(doc, "other", a.cert_pem)


def test_garbage_key_message_does_not_echo_input(org):
    bundle = pki_ca.init_ca(org, NOW)
    secret_text = "-----BEGIN PRIVATE KEY-----\nSEKRIT\n-----END PRIVATE KEY-----\n"
    doc = pki_ca.secret_doc("acme", secret_text, secret_text)
    with pytest.raises(PkiError) as err:
        pki_ca.org_keys_from_doc(doc, "acme", bundle.cert_pem)
    assert "SEKRIT" not in str(err.value)


def test_two_orgs_get_distinct_cas():
    a, b = make_keys(make_org("acme")), make_keys(make_org("beta"))
    assert a.ca_cert.subject != b.ca_cert.subject
