"""Key generations (pki.ca ``previous``), the multi-key DSSE signer, CA bundles
and the manifest's ``root_version``: the pure pieces of in-band rotation."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reconciler.errors import ManifestRefused, PkiError
from reconciler.model.repo import Organization
from reconciler.pki import ca as pki_ca
from reconciler.pki.envelope import OrgTrust, open_envelope, parse_envelope, sign_envelope_multi
from reconciler.pki.keys import keyid, private_to_pem
from reconciler.pki.manifest import (
    MANIFEST_TYPE,
    build_manifest,
    check_manifest_dict,
    manifest_from_dict,
    manifest_to_dict,
    sign_manifest,
)
from reconciler.structs import replace

NOW = 1_780_000_000
ORG = Organization(name="acme", cidr_v4="10.9.0.0/16")


def key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


OLD, NEW, OTHER = key(1), key(2), key(3)


def test_multi_signer_signs_once_per_key_and_opens_with_either_trust() -> None:
    env = sign_envelope_multi(b'{"a":1}', "t", [OLD, NEW, OLD])
    sigs = parse_envelope(env).signatures
    assert [kid for kid, _ in sigs] == [keyid(OLD.public_key()), keyid(NEW.public_key())]
    for k in (OLD, NEW):
        trust = OrgTrust(keys={keyid(k.public_key()): k.public_key()})
        assert open_envelope(env, trust, "t", org="acme").payload == b'{"a":1}'
    with pytest.raises(ManifestRefused) as err:
        open_envelope(env, OrgTrust(keys={keyid(OTHER.public_key()): OTHER.public_key()}), "t")
    assert err.value.reason == "unknown-key"
    assert sign_envelope_multi(b"x", "t", [OLD, NEW]) == sign_envelope_multi(b"x", "t", [OLD, NEW])
    with pytest.raises(ValueError):
        sign_envelope_multi(b"x", "t", [])


def test_a_forged_second_signature_does_not_hide_a_good_one() -> None:
    env = json.loads(sign_envelope_multi(b"{}", "t", [OLD, NEW]))
    env["signatures"][0]["sig"] = base64.b64encode(b"\0" * 64).decode()  # OLD's is now bad
    data = json.dumps(env).encode()
    new_trust = OrgTrust(keys={keyid(NEW.public_key()): NEW.public_key()})
    assert open_envelope(data, new_trust, "t").payload == b"{}"
    old_trust = OrgTrust(keys={keyid(OLD.public_key()): OLD.public_key()})
    with pytest.raises(ManifestRefused) as err:
        open_envelope(data, old_trust, "t")
    assert err.value.reason == "bad-signature"


def _keys(previous: pki_ca.PreviousKeys | None = None) -> tuple[pki_ca.OrgKeys, str]:
    bundle = pki_ca.init_ca(ORG, NOW)
    doc = pki_ca.secret_doc("acme", bundle.key_pem, private_to_pem(NEW), previous)
    return pki_ca.org_keys_from_doc(doc, "acme", bundle.cert_pem), bundle.cert_pem


def test_secret_without_previous_still_loads() -> None:
    keys, _ = _keys()
    assert keys.previous is None and not keys.in_overlap(NOW)
    assert keys.ca_pems(NOW) == (keys.ca_pem,)
    assert keys.server_keys(NOW).ca_cert == keys.ca_cert


def test_previous_generation_round_trips_and_times_the_overlap() -> None:
    old_ca = pki_ca.init_ca(ORG, NOW - 100)
    old_key = pki_ca.load_ca_cert(old_ca.cert_pem)
    from reconciler.pki.keys import private_from_pem

    prev = pki_ca.PreviousKeys(NOW + 3600, signing_key=OLD,
                               ca_key=private_from_pem(old_ca.key_pem), ca_cert=old_key)
    keys, cert_pem = _keys(prev)
    again = pki_ca.org_keys_from_doc(pki_ca.keys_doc(keys), "acme", cert_pem)
    assert again.previous is not None and again.previous.overlap_until == NOW + 3600
    assert keyid(again.previous.signing_key.public_key()) == keyid(OLD.public_key())
    assert again.previous.ca_cert == old_key
    # in the overlap: TLS under the old CA, client certificates of both CAs
    assert keys.in_overlap(NOW)
    assert keys.server_keys(NOW).ca_cert == old_key
    assert keys.ca_pems(NOW) == (keys.ca_pem, old_ca.cert_pem)
    assert len(keys.private_keys()) == 4
    # at overlap_until the old generation is not used at all
    assert not keys.in_overlap(NOW + 3600)
    assert keys.server_keys(NOW + 3600).ca_cert == keys.ca_cert
    assert keys.ca_pems(NOW + 3600) == (keys.ca_pem,)


@pytest.mark.parametrize("block,needle", [
    ("not a mapping", "previous must be a mapping"),
    ({"manifest_signing_key": "x"}, "overlap_until"),
    ({"overlap_until": True, "manifest_signing_key": "x"}, "overlap_until"),
    ({"overlap_until": -5, "manifest_signing_key": "x"}, "overlap_until"),
    ({"overlap_until": 5}, "holds no key"),
    ({"overlap_until": 5, "ca_key": "x"}, "go together"),
    ({"overlap_until": 5, "manifest_signing_key": 7}, "PEM string"),
    ({"overlap_until": 5, "manifest_signing_key": "junk"}, "previous.manifest_signing_key"),
    ({"overlap_until": 5, "surprise": 1, "manifest_signing_key": "x"}, "previous.surprise"),
])
def test_a_malformed_previous_block_is_refused_with_its_field(block, needle) -> None:
    bundle = pki_ca.init_ca(ORG, NOW)
    doc = pki_ca.secret_doc("acme", bundle.key_pem, private_to_pem(NEW))
    doc["previous"] = block
    with pytest.raises(PkiError, match=needle) as err:
        pki_ca.org_keys_from_doc(doc, "acme", bundle.cert_pem)
    assert "secrets/acme-ca.sops.yaml" in str(err.value)
    assert "BEGIN" not in str(err.value)  # never a key in a message


def test_previous_ca_cert_must_match_its_key() -> None:
    a, b = pki_ca.init_ca(ORG, NOW), pki_ca.init_ca(ORG, NOW)
    doc = pki_ca.secret_doc("acme", a.key_pem, private_to_pem(NEW))
    doc["previous"] = {"overlap_until": NOW, "ca_key": a.key_pem, "ca_cert": b.cert_pem}
    with pytest.raises(PkiError, match="does not match previous.ca_key"):
        pki_ca.org_keys_from_doc(doc, "acme", a.cert_pem)


def test_check_device_cert_accepts_a_bundle_of_both_cas(org, devices) -> None:
    from reconciler.pki.certs import check_device_cert, issue_device_cert

    from .conftest import make_keys

    old, new = make_keys(org), make_keys(org)
    dev = devices("alpha", 1)
    old_cert = issue_device_cert(old, dev, 11, NOW, 86400)
    new_cert = issue_device_cert(new, dev, 12, NOW, 86400)
    bundle = new.ca_pem + old.ca_pem
    assert check_device_cert(old_cert, bundle, NOW + 60).serial == 11
    assert check_device_cert(new_cert, bundle, NOW + 60).serial == 12
    # after the overlap only the new CA counts: the old certificate is refused
    with pytest.raises(PkiError, match="another CA"):
        check_device_cert(old_cert, new.ca_pem, NOW + 60)
    with pytest.raises(PkiError, match="at most 8"):
        check_device_cert(new_cert, bundle * 5, NOW + 60)


def test_manifest_root_version_is_signed_optional_and_checked(org_state) -> None:
    m = build_manifest(org_state, commit="c", serial=5, now=NOW, lifetime_s=86400,
                       cert_fingerprints={d.name: "A" * 43 for d in org_state.enabled_devices()})
    assert m.root_version is None and "root_version" not in manifest_to_dict(m)
    m3 = replace(m, root_version=3)
    d = manifest_to_dict(m3)
    assert d["root_version"] == 3 and manifest_from_dict(d).root_version == 3
    for bad in (0, -1, "3", True, 1.5):
        with pytest.raises(ValueError, match="root_version"):
            check_manifest_dict({**d, "root_version": bad})
    env = sign_manifest(json.dumps(d).encode(), [OLD, NEW])
    assert len(parse_envelope(env).signatures) == 2
    assert parse_envelope(sign_manifest(b"{}", OLD)).payload_type == MANIFEST_TYPE
