"""Manifests: canonical JSON, schema agreement, DSSE, and every refusal reason."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import jsonschema
import pytest

from reconciler import structs
from reconciler.config.schema import ecma_validator
from reconciler.errors import ManifestRefused
from reconciler.pki import manifest as pm
from reconciler.pki.envelope import load_trust, pae, trust_entry

from .conftest import NOW, make_keys, make_org

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "schemas" / "manifest.schema.json").read_text()
)
DAY = 86400
FP = "A" * 43


def _fps(org_state):
    return {d.name: FP for d in org_state.enabled_devices()}


def _build(org_state, serial=1_763_776_800_000, now=NOW, **kw):
    return pm.build_manifest(
        org_state, commit="c0ffee", serial=serial, now=now, lifetime_s=7 * DAY,
        cert_fingerprints=_fps(org_state), revoked=kw.pop("revoked", (7, 3, 7)), **kw,
    )  # fmt: skip


def _trust(*keysets) -> pm.Trust:
    doc = {"orgs": {k.org: trust_entry([k.signing_key.public_key()], k.ca_pem) for k in keysets}}
    return load_trust(json.dumps(doc).encode())


def _signed(keys, m) -> bytes:
    return pm.sign_manifest(pm.canonical_json(pm.manifest_to_dict(m)), keys.signing_key)


def test_canonical_json():
    assert pm.canonical_json({"b": 1, "a": ["é", 2]}) == '{"a":["é",2],"b":1}'.encode()


def test_build_skips_disabled_and_sorts(org_state):
    m = _build(org_state)
    assert [d.name for d in m.devices] == ["alpha", "beta"]
    assert m.revoked == (3, 7)
    assert m.not_after == int(NOW) + 7 * DAY
    assert m.policy is None


def test_round_trip_and_schema_agreement(org_state):
    m = _build(org_state)
    d = pm.manifest_to_dict(m)
    ecma_validator(SCHEMA).validate(d)
    assert pm.manifest_from_dict(json.loads(pm.canonical_json(d))) == m
    beta = d["devices"][1]
    assert beta["relay"] is True and beta["endpoint"] == "203.0.113.5:51820"
    assert "relay" not in d["devices"][0] and "tags" not in beta


def test_encode_with_fragment_cache_is_byte_identical(org_state):
    m = _build(org_state)
    cache: dict = {}
    plain = pm.canonical_json(pm.manifest_to_dict(m))
    assert pm.encode_manifest(m, cache) == plain
    assert len(cache) == 2
    assert pm.encode_manifest(m, cache) == plain


def test_per_device_size_under_goal(org_state):
    m = _build(org_state)
    sizes = [len(pm.canonical_json(pm.device_to_dict(d))) for d in m.devices]
    assert max(sizes) <= 200, sizes


BAD_DOCS = [
    ("extra top key", lambda d: d.update(surprise=1)),
    ("missing serial", lambda d: d.pop("serial")),
    ("serial as string", lambda d: d.update(serial="12")),
    ("serial bool", lambda d: d.update(serial=True)),
    ("bad org", lambda d: d.update(org="Not A Label")),
    ("version", lambda d: d.update(version=2)),
    ("device extra key", lambda d: d["devices"][0].update(x=1)),
    ("device bad wg", lambda d: d["devices"][0].update(wg="short")),
    ("device bad ip type", lambda d: d["devices"][0].update(ips=[1])),
    ("device empty ips", lambda d: d["devices"][0].update(ips=[])),
    ("device relay false", lambda d: d["devices"][0].update(relay=False)),
    ("device bad fp", lambda d: d["devices"][0].update(fp="zz")),
    ("revoked negative", lambda d: d.update(revoked=[-1])),
    ("policy list", lambda d: d.update(policy=[])),
    ("port too big", lambda d: d.update(listen_port=70000)),
    ("org with a trailing newline", lambda d: d.update(org="acme\n")),
    ("root_version zero", lambda d: d.update(root_version=0)),
    ("root_version string", lambda d: d.update(root_version="2")),
    ("root_version bool", lambda d: d.update(root_version=True)),
    ("device name with a trailing newline", lambda d: d["devices"][0].update(name="alpha\n")),
    ("wg with a trailing newline", lambda d: d["devices"][0].update(wg=d["devices"][0]["wg"] + "\n")),
    ("fp with a trailing newline", lambda d: d["devices"][0].update(fp="A" * 43 + "\n")),
    ("endpoint with a trailing newline",
     lambda d: d["devices"][1].update(endpoint="203.0.113.5:51820\n")),
    ("policy port with a trailing newline", lambda d: d.update(
        policy={"version": 1, "rules": [{"src": ["*"], "dst": ["*"], "proto": "tcp",
                                          "ports": ["22\n"]}]})),
    ("policy without rules", lambda d: d.update(policy={"version": 1})),
    ("policy extra key", lambda d: d.update(policy={"version": 1, "rules": [], "x": 1})),
    ("policy version 0", lambda d: d.update(policy={"version": 0, "rules": []})),
    ("policy rule bad proto", lambda d: d.update(policy={"version": 1, "rules": [
        {"src": ["*"], "dst": ["*"], "proto": "sctp"}]})),
    ("policy rule src string", lambda d: d.update(policy={"version": 1, "rules": [
        {"src": "*", "dst": ["*"], "proto": "any"}]})),
    ("policy rule port number", lambda d: d.update(policy={"version": 1, "rules": [
        {"src": ["*"], "dst": ["*"], "proto": "tcp", "ports": [22]}]})),
    ("policy rule extra key", lambda d: d.update(policy={"version": 1, "rules": [
        {"src": ["*"], "dst": ["*"], "proto": "tcp", "action": "drop"}]})),
    ("hub_url not a URL", lambda d: d.update(hub_url="hub.example.com:8443")),
    ("hub_url ftp", lambda d: d.update(hub_url="ftp://hub.example.com")),
    ("hub_url trailing newline", lambda d: d.update(hub_url="https://hub.example.com\n")),
    ("hub_url with a space", lambda d: d.update(hub_url="https://hub example.com")),
    ("hub_url number", lambda d: d.update(hub_url=8443)),
    ("stun_servers string", lambda d: d.update(stun_servers="203.0.113.1:3478")),
    ("stun_servers no port", lambda d: d.update(stun_servers=["203.0.113.1"])),
    ("stun_servers trailing newline", lambda d: d.update(stun_servers=["203.0.113.1:3478\n"])),
    ("stun_servers repeated", lambda d: d.update(stun_servers=["h:1", "h:1"])),
    ("stun_servers number", lambda d: d.update(stun_servers=[3478])),
]


@pytest.mark.parametrize("label,mutate", BAD_DOCS, ids=[b[0] for b in BAD_DOCS])
def test_hand_check_and_jsonschema_both_refuse(org_state, label, mutate):
    d = json.loads(pm.canonical_json(pm.manifest_to_dict(_build(org_state))))
    mutate(d)
    with pytest.raises(jsonschema.ValidationError):
        ecma_validator(SCHEMA).validate(d)  # JSON Schema's $ is the end of the string
    with pytest.raises(pm.SchemaViolation):
        pm.check_manifest_dict(d)


def test_next_serial_strictly_increases_even_after_state_loss():
    assert pm.next_serial(1000.0, None) == 1_000_000
    assert pm.next_serial(1000.0, 5_000_000) == 5_000_001  # clock behind: still increases
    assert pm.next_serial(1000.5, 1_000_000) == 1_000_500


def test_envelope_is_dsse(keys, org_state):
    env = json.loads(_signed(keys, _build(org_state)))
    assert env["payloadType"] == "application/vnd.meshops.manifest+json"
    (sig,) = env["signatures"]
    payload = base64.b64decode(env["payload"])
    keys.signing_key.public_key().verify(
        base64.b64decode(sig["sig"]), pae(env["payloadType"], payload)
    )
    assert pae("t", b"ab") == b"DSSEv1 1 t 2 ab"


# -- verification: accept, then every refusal with its reason ----------------------------------


def test_verify_accepts(keys, org_state):
    m = _build(org_state)
    got = pm.verify_manifest(_signed(keys, m), _trust(keys), "acme", None, NOW + 60)
    assert got == m
    assert pm.verify_manifest(_signed(keys, m), _trust(keys), "acme", m.serial - 1, NOW) == m


def _refused(data, trust, org="acme", last=None, now=NOW + 60) -> str:
    with pytest.raises(ManifestRefused) as err:
        pm.verify_manifest(data, trust, org, last, now)
    return err.value.reason


def _mutate_env(data: bytes, fn) -> bytes:
    env = json.loads(data)
    fn(env)
    return json.dumps(env).encode()


def test_flipped_payload_byte(keys, org_state):
    def flip(env):
        raw = bytearray(base64.b64decode(env["payload"]))
        raw[len(raw) // 2] ^= 0x01
        env["payload"] = base64.b64encode(bytes(raw)).decode()

    assert _refused(_mutate_env(_signed(keys, _build(org_state)), flip), _trust(keys)) == (
        "bad-signature"
    )


def test_flipped_signature_byte(keys, org_state):
    def flip(env):
        raw = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
        raw[5] ^= 0x80
        env["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()

    assert _refused(_mutate_env(_signed(keys, _build(org_state)), flip), _trust(keys)) == (
        "bad-signature"
    )


def test_different_signing_key(keys, org_state):
    rogue = make_keys(make_org())
    assert _refused(_signed(rogue, _build(org_state)), _trust(keys)) == "unknown-key"


def test_forged_keyid_with_other_key_is_bad_signature(keys, org_state):
    rogue = make_keys(make_org())
    real_kid = json.loads(_signed(keys, _build(org_state)))["signatures"][0]["keyid"]

    def fake(env):
        env["signatures"][0]["keyid"] = real_kid

    assert _refused(_mutate_env(_signed(rogue, _build(org_state)), fake), _trust(keys)) == (
        "bad-signature"
    )


def test_replayed_older_manifest(keys, org_state):
    old = _signed(keys, _build(org_state, serial=100))
    assert _refused(old, _trust(keys), last=200) == "rollback"
    assert _refused(old, _trust(keys), last=100) == "rollback"  # same serial: replay


def test_expired(keys, org_state):
    m = _build(org_state)
    assert _refused(_signed(keys, m), _trust(keys), now=m.not_after + 1) == "expired"


def test_another_orgs_manifest(keys, org_state, devices):
    beta_keys = make_keys(make_org("beta"))
    beta_state = structs.replace(org_state, organization=make_org("beta"))
    data = _signed(beta_keys, _build(beta_state))
    assert _refused(data, _trust(keys, beta_keys)) == "wrong-org"
    assert _refused(data, _trust(keys)) == "unknown-key"
    # signed by acme's own key but claims another org
    assert _refused(_signed(keys, _build(beta_state)), _trust(keys)) == "wrong-org"
    assert _refused(_signed(keys, _build(org_state)), _trust(keys), org="nobody") == "wrong-org"


def test_schema_violation_under_valid_signature(keys, org_state):
    d = pm.manifest_to_dict(_build(org_state))
    d["devices"][0]["wg"] = "not-a-key"
    data = pm.sign_manifest(pm.canonical_json(d), keys.signing_key)
    assert _refused(data, _trust(keys)) == "schema"
    data = pm.sign_manifest(b"\xff not json", keys.signing_key)
    assert _refused(data, _trust(keys)) == "schema"


@pytest.mark.parametrize(
    "data",
    [b"", b"[]", b"{}", b'{"payload":"!!","payloadType":"x","signatures":[]}', b"\x00\x01"],
)
def test_malformed_envelopes(keys, data):
    assert _refused(data, _trust(keys)) == "malformed"


def test_wrong_payload_type(keys, org_state):
    payload = pm.canonical_json(pm.manifest_to_dict(_build(org_state)))
    data = pm.sign_envelope(payload, "application/other", keys.signing_key)
    assert _refused(data, _trust(keys)) == "malformed"


def test_trust_with_mismatched_keyid_is_refused(keys):
    from reconciler.errors import ConfigError

    entry = trust_entry([keys.signing_key.public_key()], None)
    entry["keys"][0]["keyid"] = "00" * 32
    with pytest.raises(ConfigError, match="does not match"):
        load_trust(json.dumps({"orgs": {"acme": entry}}).encode())


def test_tag_labels_implied_by_tags_are_not_repeated(org_state):
    policy = {"version": 1, "rules": [{"src": ["t:web"], "dst": ["g:ops"], "proto": "any"}]}
    alpha = structs.replace(_build(org_state).devices[0], labels=("g:ops", "t:web"))
    assert alpha.tags == ("web",)
    m = structs.replace(_build(org_state), policy=policy, devices=(alpha,))
    d = pm.manifest_to_dict(m)
    assert d["devices"][0]["labels"] == ["g:ops"]
    assert pm.manifest_from_dict(json.loads(pm.canonical_json(d))) == m
    assert pm.encode_manifest(m, {}) == pm.canonical_json(d)
    # a non-canonical label list is kept verbatim
    odd = structs.replace(m, devices=(structs.replace(alpha, labels=("t:web", "g:ops")),))
    assert pm.manifest_to_dict(odd)["devices"][0]["labels"] == ["t:web", "g:ops"]


def test_every_optional_field_passes_both_checks(org_state):
    full = structs.replace(
        _build(org_state).devices[1],
        routes=("192.168.50.0/24",),
        labels=("g:ops",),
        keepalive=15,
        exit_node=True,
    )
    m = structs.replace(
        _build(org_state),
        devices=(full,),
        policy={"version": 1, "rules": []},
        extra={"note": "x"},
        cidr_v6=None,
    )
    d = json.loads(pm.canonical_json(pm.manifest_to_dict(m)))
    ecma_validator(SCHEMA).validate(d)
    pm.check_manifest_dict(d)
    assert pm.manifest_from_dict(d) == m
    assert {"routes", "relay", "endpoint", "keepalive", "exit", "labels"} <= set(d["devices"][0])


def test_open_envelope_for_other_payload_types(keys):
    from reconciler.pki.envelope import OrgTrust, open_envelope

    data = pm.sign_envelope(b'{"feed":1}', "application/vnd.meshops.feed+json", keys.signing_key)
    trust = OrgTrust(keys={k: v for k, v in _trust(keys).orgs["acme"].keys.items()})
    opened = open_envelope(data, trust, "application/vnd.meshops.feed+json", org="acme")
    assert opened.payload == b'{"feed":1}' and opened.signer_org == "acme"
    with pytest.raises(ManifestRefused) as err:
        open_envelope(data, trust, pm.MANIFEST_TYPE)
    assert err.value.reason == "malformed"


HUB = "https://hub.example.com:8443"
STUN = ("203.0.113.1:3478", "[2001:db8::1]:3478", "stun.example.net:3478")


def _mesh(hub_url=HUB, stun=STUN, lines=None):
    from reconciler.model.repo import Mesh, Source

    return Mesh(hub_url=hub_url, stun_servers=tuple(stun),
                source=Source("mesh.yaml", lines or {}))  # fmt: skip


def test_mesh_endpoints_are_signed_into_the_manifest_and_round_trip(keys, org_state):
    m = _build(org_state, mesh=_mesh())
    assert m.hub_url == HUB and m.stun_servers == STUN
    d = pm.manifest_to_dict(m)
    assert d["hub_url"] == HUB and d["stun_servers"] == list(STUN)  # order kept
    ecma_validator(SCHEMA).validate(d)
    assert pm.encode_manifest(m, {}) == pm.canonical_json(d)
    got = pm.verify_manifest(_signed(keys, m), _trust(keys), "acme", None, NOW)
    assert got == m
    assert (got.hub_url, got.stun_servers) == (HUB, STUN)


def test_unset_mesh_endpoints_are_left_out(keys, org_state):
    m = _build(org_state)
    d = pm.manifest_to_dict(m)
    assert "hub_url" not in d and "stun_servers" not in d
    got = pm.verify_manifest(_signed(keys, m), _trust(keys), "acme", None, NOW)
    assert got.hub_url is None and got.stun_servers == ()
    # a mesh without STUN servers leaves the key out, never an empty list
    d = pm.manifest_to_dict(_build(org_state, mesh=_mesh(stun=())))
    assert d["hub_url"] == HUB and "stun_servers" not in d


def test_signature_covers_the_mesh_endpoints(keys, org_state):
    """A man in the middle cannot point agents at his hub or STUN server."""
    m = _build(org_state, mesh=_mesh())
    envelope = json.loads(_signed(keys, m))
    payload = base64.b64decode(envelope["payload"])
    for old, new in ((b"hub.example.com", b"hub.attacker.ex"), (b"203.0.113.1:", b"203.0.113.9:")):
        assert old in payload
        forged = dict(envelope, payload=base64.b64encode(payload.replace(old, new)).decode())
        with pytest.raises(ManifestRefused) as err:
            pm.verify_manifest(json.dumps(forged).encode(), _trust(keys), "acme", None, NOW)
        assert err.value.reason == "bad-signature"


@pytest.mark.parametrize("url", [
    "http://10.0.0.1:8443", "https://hub.example.com", "https://[2001:db8::1]:8443/base/",
])  # fmt: skip
def test_hub_url_forms_pass_both_checks(org_state, url):
    d = pm.manifest_to_dict(_build(org_state, mesh=_mesh(hub_url=url)))
    ecma_validator(SCHEMA).validate(d)
    assert pm.manifest_from_dict(d).hub_url == url


def test_example_repo_mesh_endpoints_fit_the_manifest_schema():
    """What mesh.yaml accepts must fit the manifest, or agents would refuse it."""
    from reconciler.config import load

    repo = load(Path(__file__).resolve().parents[2] / "example-repo").repo
    assert repo is not None
    doc = {"hub_url": repo.mesh.hub_url, "stun_servers": list(repo.mesh.stun_servers)}
    for key, value in doc.items():
        ecma_validator(SCHEMA["properties"][key]).validate(value)
    assert doc["stun_servers"]


@pytest.mark.parametrize("hub_url,stun,where", [
    ("https://hub.example.com trailing", (), ("hub_url", 4)),
    ("https://hub.example.com\n", (), ("hub_url", 4)),
    (HUB, ("203.0.113.1:3478", "203.0.113.2"), ("stun_servers.1", 7)),
    (HUB, ("203.0.113.1:3478\n",), ("stun_servers.0", 6)),
    (HUB, ("h:1", "h:1"), ("stun_servers", 5)),
])  # fmt: skip
def test_publisher_never_signs_endpoints_agents_would_refuse(org_state, hub_url, stun, where):
    """Whatever mesh.yaml's own checks let through, the builder refuses it with
    mesh.yaml:line instead of signing a manifest every agent of the org refuses."""
    from reconciler.errors import ValidationError

    lines = {"hub_url": 4, "stun_servers": 5, "stun_servers.0": 6, "stun_servers.1": 7}
    mesh = _mesh(hub_url=hub_url, stun=stun, lines=lines)
    with pytest.raises(ValidationError) as err:
        _build(org_state, mesh=mesh)
    (problem,) = err.value.problems
    assert (problem.file, problem.line, problem.code) == ("mesh.yaml", where[1], "E-MANIFEST-FIELD")
    assert problem.message.startswith(f"{where[0]} ") and problem.remedy
    assert pm.mesh_endpoint_problems(mesh) == [problem]


def test_good_mesh_endpoints_have_no_problems():
    assert pm.mesh_endpoint_problems(_mesh()) == []
