"""pki.root: the versioned trust root and the chain an agent walks."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reconciler.errors import ManifestRefused
from reconciler.pki.envelope import open_envelope, sign_envelope
from reconciler.pki.keys import keyid
from reconciler.pki.root import (
    build_root,
    root_to_dict,
    sign_root,
    verify_initial,
    verify_next,
    walk,
)


def key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


M1, M2, M3, C1, C2, EVIL = (key(s) for s in (1, 2, 3, 11, 12, 66))


def root(version, manifest, ca, *, org="acme", threshold=None):
    return build_root(org, version, 1_700_000_000 + version,
                      manifest_keys=[k.public_key() for k in manifest],
                      ca_keys=[k.public_key() for k in ca],
                      ca_pems=[f"PEM-{keyid(k.public_key())[:8]}\n" for k in ca],
                      root_threshold=threshold)


V1 = root(1, [M1], [C1])
V1_SIGNED = sign_root(V1, [M1, C1])


def test_a_pinned_root_needs_its_own_threshold() -> None:
    assert verify_initial(V1_SIGNED, "acme") == V1
    with pytest.raises(ManifestRefused) as err:
        verify_initial(sign_root(V1, [M1]), "acme")  # 1 of 2 required
    assert err.value.reason == "root-threshold"


def test_rotation_signing_key_then_ca_walks_and_overlaps() -> None:
    v2 = root(2, [M1, M2], [C1])  # overlap: both manifest keys
    v3 = root(3, [M2], [C1])  # old signing key retired
    v4 = root(4, [M2], [C1, C2])  # CA overlap
    v5 = root(5, [M2], [C2])
    chain = [sign_root(v2, [M1, C1, M2]), sign_root(v3, [M1, M2, C1]),
             sign_root(v4, [M2, C1, C2]), sign_root(v5, [M2, C1, C2])]
    assert walk(V1, chain) == v5
    assert set(verify_next(V1, chain[0]).org_trust().keys) == {keyid(M1.public_key()),
                                                               keyid(M2.public_key())}
    bundle = walk(V1, chain[:3]).org_trust().ca_pem
    assert bundle is not None and bundle.count("PEM-") == 2  # both CAs pinned in the overlap
    # a manifest signed by either key of the overlap opens
    trust = verify_next(V1, chain[0]).org_trust()
    for k in (M1, M2):
        assert open_envelope(sign_envelope(b"{}", "t", k), trust, "t", org="acme").payload == b"{}"


@pytest.mark.parametrize("signers,why", [
    ([M2, C1], "the pinned version 1's"),  # only the new key and the CA: M1 missing
    ([M2], "the pinned version 1's"),  # only the new key
    ([M1, C1], "version 2's own"),  # the new key never signed: it must prove possession
    ([EVIL, M1, C1], "version 2's own"),
])
def test_a_root_without_both_thresholds_is_refused(signers, why) -> None:
    v2 = root(2, [M2], [C1])
    with pytest.raises(ManifestRefused, match=why) as err:
        verify_next(V1, sign_root(v2, signers))
    assert err.value.reason == "root-threshold"


def test_an_attacker_root_listing_its_own_key_is_refused() -> None:
    evil = root(2, [EVIL], [EVIL])
    with pytest.raises(ManifestRefused) as err:
        verify_next(V1, sign_root(evil, [EVIL]))
    assert err.value.reason == "root-threshold"


@pytest.mark.parametrize("version", [1, 3, 10])
def test_versions_must_follow_one_by_one(version) -> None:
    with pytest.raises(ManifestRefused) as err:
        verify_next(V1, sign_root(root(version, [M1], [C1]), [M1, C1]))
    assert err.value.reason == "root-version"


def test_another_orgs_root_is_refused() -> None:
    other = root(2, [M1], [C1], org="globex")
    with pytest.raises(ManifestRefused) as err:
        verify_next(V1, sign_root(other, [M1, C1]))
    assert err.value.reason == "root-wrong-org"


def _tampered(doc_change) -> bytes:
    env = json.loads(V1_SIGNED)
    doc = json.loads(base64.b64decode(env["payload"]))
    doc_change(doc)
    env["payload"] = base64.b64encode(json.dumps(doc).encode()).decode()
    return json.dumps(env).encode()


@pytest.mark.parametrize("change,reason", [
    (lambda d: d.update(issued_at=d["issued_at"] + 1), "root-threshold"),  # signatures break
    (lambda d: d["roles"]["root"].update(threshold=1), "root-threshold"),
    (lambda d: d["roles"]["root"].update(threshold=0), "root-malformed"),
    (lambda d: d["roles"]["root"].update(threshold=3), "root-malformed"),
    (lambda d: d["roles"]["manifest"].update(keyids=["ab" * 32]), "root-malformed"),
    (lambda d: d.update(version=True), "root-malformed"),
    (lambda d: d.update(version=0), "root-malformed"),
    (lambda d: d["roles"].pop("ca"), "root-malformed"),
    (lambda d: d.update(ca="PEM"), "root-malformed"),
    (lambda d: d["keys"].update({"00" * 32: d["keys"][next(iter(d["keys"]))]}),
     "root-malformed"),  # key id that does not match its key
])
def test_tampered_or_malformed_roots_are_refused(change, reason) -> None:
    with pytest.raises(ManifestRefused) as err:
        verify_initial(_tampered(change), "acme")
    assert err.value.reason == reason


@pytest.mark.parametrize("data", [
    b"[" * 100_000 + b"]" * 100_000, b"{}", b"not json", b'{"payloadType": "x"}',
    json.dumps({"payload": "e30=", "payloadType": "application/vnd.meshops.root+json",
                "signatures": []}).encode(),
])
def test_hostile_envelopes_are_refused_cleanly(data) -> None:
    with pytest.raises(ManifestRefused) as err:
        verify_initial(data, "acme")
    assert err.value.reason == "root-malformed"


def test_dict_form_is_stable() -> None:
    doc = root_to_dict(V1)
    assert doc["roles"]["root"] == {"keyids": sorted(V1.keys), "threshold": 2}
    assert doc["roles"]["manifest"]["threshold"] == 1
