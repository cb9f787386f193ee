"""The agent follows its org's trust root in band (issue 12, TUF-style): it
walks the chain when a rotation explains a refusal or the manifest says a newer
root exists, keeps each accepted root, and refuses a root the chain does not
vouch for."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reconciler.agent.reconcile import reconcile_once
from reconciler.agent.source import load_pinned, root_url
from reconciler.agent.state import ROOT, StateDir
from reconciler.errors import ManifestRefused
from reconciler.pki.envelope import trust_entry
from reconciler.pki.manifest import encode_manifest, sign_manifest
from reconciler.pki.root import build_root, sign_root

from .helpers import NOW, FakeBackend, FakeFetch, Org, device, write_agent


def key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


M1, M2, M3, CA = key(1 + 40), key(2 + 40), key(3 + 40), key(50)


def root(version: int, manifest_keys, ca_keys=(CA,)):
    return build_root("acme", version, int(NOW) + version,
                      manifest_keys=[k.public_key() for k in manifest_keys],
                      ca_keys=[k.public_key() for k in ca_keys], ca_pems=[])


V1 = sign_root(root(1, [M1]), [M1, CA])
V2 = sign_root(root(2, [M1, M2]), [M1, CA, M2])  # overlap: both signing keys
V3 = sign_root(root(3, [M2]), [M1, M2, CA])  # M1 retired
V4 = sign_root(root(4, [M3]), [M2, CA, M3])  # a second rotation


def agent_with_root(tmp_path, root_envelope: bytes = V1, **kw):
    org = Org()
    config = write_agent(tmp_path, org, **kw)
    trust = {"orgs": {"acme": {**trust_entry([M1.public_key()], None),
                               "root": root_envelope.decode()}}}
    (tmp_path / "trust.json").write_text(json.dumps(trust))
    return org, config


def manifest_signed_by(org: Org, signer: Ed25519PrivateKey, serial: int = 1) -> bytes:
    m = org.manifest([device("alpha", 1, "10.77.0.1"), device("beta", 2, "10.77.0.2")],
                     serial=serial)
    return sign_manifest(encode_manifest(m), signer)


def test_the_pin_is_the_root_and_its_keys_replace_the_trust_files(tmp_path) -> None:
    _, config = agent_with_root(tmp_path)
    pinned = load_pinned(config, StateDir(config.state_dir), [])
    assert pinned.root is not None and pinned.root.version == 1
    assert set(pinned.trust.orgs["acme"].keys) == set(pinned.root.role_keys("manifest"))


def test_an_agent_stopped_before_two_rotations_walks_the_chain_and_converges(tmp_path) -> None:
    org, config = agent_with_root(tmp_path)
    fetch = FakeFetch({config.source_url: manifest_signed_by(org, M3, serial=9),
                       root_url(config, 2): V2, root_url(config, 3): V3,
                       root_url(config, 4): V4})
    result = reconcile_once(config, fetch=fetch, backend=FakeBackend(), now=NOW)
    assert result.serial == 9
    assert any("version 1 -> 4" in w for w in result.warnings)
    state = StateDir(config.state_dir)
    assert (state.path / ROOT).read_bytes() == V4
    assert load_pinned(config, state, []).root.version == 4  # kept for the next pass


def test_a_root_signed_only_by_the_new_key_is_refused(tmp_path) -> None:
    org, config = agent_with_root(tmp_path)
    forged = sign_root(root(2, [M3]), [M3, CA])  # M1 never signed it
    fetch = FakeFetch({config.source_url: manifest_signed_by(org, M3),
                       root_url(config, 2): forged})
    with pytest.raises(ManifestRefused) as info:
        reconcile_once(config, fetch=fetch, backend=FakeBackend(), now=NOW)
    assert info.value.reason == "unknown-key"  # the manifest stays refused
    assert not (StateDir(config.state_dir).path / ROOT).exists()
    assert StateDir(config.state_dir).last_serial() == 0


def test_an_attacker_without_a_root_cannot_get_a_new_key_trusted(tmp_path) -> None:
    org, config = agent_with_root(tmp_path)
    fetch = FakeFetch({config.source_url: manifest_signed_by(org, key(99))})  # no roots at all
    with pytest.raises(ManifestRefused) as info:
        reconcile_once(config, fetch=fetch, backend=FakeBackend(), now=NOW)
    assert info.value.reason == "unknown-key"


def test_a_broken_chain_stops_at_the_last_good_root(tmp_path) -> None:
    org, config = agent_with_root(tmp_path)
    gap = sign_root(root(4, [M3]), [M1, CA, M3])  # version 3 is missing
    fetch = FakeFetch({config.source_url: manifest_signed_by(org, M2),
                       root_url(config, 2): V2, root_url(config, 3): gap})
    result = reconcile_once(config, fetch=fetch, backend=FakeBackend(), now=NOW)
    assert result.serial == 1  # M2 is trusted from version 2 on
    assert any("refused" in w and "root-version" in w for w in result.warnings)
    assert load_pinned(config, StateDir(config.state_dir), []).root.version == 2


def test_a_tampered_pinned_root_is_an_error(tmp_path) -> None:
    tampered = json.loads(V1)
    tampered["signatures"] = tampered["signatures"][:1]  # below its own threshold
    _, config = agent_with_root(tmp_path, json.dumps(tampered).encode())
    with pytest.raises(ManifestRefused) as info:
        load_pinned(config, StateDir(config.state_dir), [])
    assert info.value.reason == "root-threshold"


def test_static_roots_sit_beside_the_manifest(tmp_path) -> None:
    _, config = agent_with_root(tmp_path)
    assert root_url(config, 7) == config.source_url.rsplit("/", 1)[0] + "/roots/7.json"
    _, hub = agent_with_root(tmp_path / "h", hub="https://hub.example:8443")
    assert root_url(hub, 7) == "https://hub.example:8443/v1/orgs/acme/roots/7"
