"""The commit gate's pure decision (``reconciler.hub.gate.judge``, ``trust_from``)
on hand-made facts: every signature status, path classification edge cases, the
scoped rules for hub-signed commits. tests/hub/test_gate.py runs the same rules
on real git commits signed with real gpg keys."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reconciler import structs
from reconciler.config import load
from reconciler.hub.gate import (
    ENROLL_ISSUER,
    ENROLL_SUBJECT,
    ENROLL_USER,
    Bootstrap,
    Facts,
    Scoped,
    Trust,
    device_path,
    judge,
    org_of,
    owners_of,
    trust_from,
)
from reconciler.hub.gitsig import CommitSignature
from reconciler.identity.rotation import PAYLOAD_TYPE, make_body
from reconciler.pki.envelope import sign_envelope
from reconciler.pki.keys import public_b64

from .test_publish import EXAMPLE_REPO

ALICE, DANA, ADMIN, HUB, EVE = ("A" * 40, "D" * 40, "F" * 40, "B" * 40, "E" * 40)
TRUST = Trust(enabled=True, anchor="c0", owners={"acme": frozenset({ALICE}),
                                                 "globex": frozenset({DANA}),
                                                 "keyless": frozenset()},
              admins=frozenset({ADMIN}), hub_keys=frozenset({HUB}))


def sig(key: str | None, status: str = "G") -> CommitSignature:
    return CommitSignature("c1", status if key else "N", key or "", key or "")


def facts(key: str | None, *paths: str, status: str = "G", parents=("c0",),
          scoped: Scoped | None = None) -> Facts:
    return Facts("c1", parents, sig(key, status), tuple(("M", p) for p in paths), scoped)


@pytest.mark.parametrize(("path", "org"), [
    ("orgs/acme/policy.yaml", "acme"),
    ("orgs/acme/devices/x.yaml", "acme"),
    ("orgs/acme", None),  # a file named like an org directory: mesh-level
    ("orgs//x.yaml", None),
    ("orgsx/acme/policy.yaml", None),
    ("mesh.yaml", None),
    ("secrets/acme-ca.sops.yaml", None),  # an org's secret is still mesh-level
])
def test_org_of(path, org):
    assert org_of(path) == org


@pytest.mark.parametrize(("path", "dev"), [
    ("orgs/acme/devices/db-1.yaml", ("acme", "db-1")),
    ("orgs/acme/devices/.yaml", None),
    ("orgs/acme/devices/sub/db-1.yaml", None),
    ("orgs/acme/users/db-1.yaml", None),
    ("orgs/acme/devices/db-1.yml", None),
])
def test_device_path(path, dev):
    assert device_path(path) == dev


@pytest.mark.parametrize(("status", "reason"), [
    ("B", "bad signature"), ("X", "expired"), ("Y", "expired key"), ("R", "revoked"),
    ("E", "cannot be checked"), ("Z", "unknown signature status Z"),
])
def test_every_bad_signature_status_is_refused(status, reason):
    refusal = judge(facts(ALICE, "orgs/acme/policy.yaml", status=status), TRUST)
    assert refusal is not None and refusal.reason == "bad-signature"
    assert reason in refusal.message


def test_good_and_unknown_trust_signatures_count():
    assert judge(facts(ALICE, "orgs/acme/policy.yaml"), TRUST) is None
    assert judge(facts(ALICE, "orgs/acme/policy.yaml", status="U"), TRUST) is None


@pytest.mark.parametrize(("key", "paths", "reason", "path"), [
    (None, ("orgs/acme/policy.yaml",), "unsigned", "orgs/acme/policy.yaml"),
    (DANA, ("orgs/acme/policy.yaml",), "not-owner", "orgs/acme/policy.yaml"),
    (ADMIN, ("orgs/acme/policy.yaml",), "not-owner", "orgs/acme/policy.yaml"),  # no override
    (ALICE, ("orgs/acme/a.yaml", "orgs/globex/b.yaml"), "two-orgs", "orgs/globex/b.yaml"),
    (ALICE, ("orgs/acme/a.yaml", "mesh.yaml"), "not-admin", "mesh.yaml"),
    (ALICE, ("orgs/newco/organization.yaml",), "not-admin", "orgs/newco/organization.yaml"),
    (ALICE, ("orgs/keyless/users/x.yaml",), "not-admin", "orgs/keyless/users/x.yaml"),
])
def test_refusals(key, paths, reason, path):
    refusal = judge(facts(key, *paths), TRUST)
    assert refusal is not None and (refusal.reason, refusal.path) == (reason, path)
    assert refusal.error().commit == "c1"


@pytest.mark.parametrize(("key", "paths"), [
    (ADMIN, ("mesh.yaml", "secrets/acme-ca.sops.yaml")),
    (ADMIN, ("orgs/newco/organization.yaml",)),  # admins create orgs
    (ADMIN, ("orgs/keyless/users/x.yaml",)),  # and govern orgs without a keyed owner
    (DANA, ("orgs/globex/users/x.yaml",)),
    (ALICE, ()),  # nothing the hub reads changed (empty, or outside the mesh directory)
    (EVE, ()),
    (None, ()),
])
def test_accepted(key, paths):
    assert judge(facts(key, *paths), TRUST) is None


def test_the_hub_key_never_counts_as_an_owner_or_admin():
    trust = Trust(enabled=True, anchor="c0", owners={"acme": frozenset({HUB})},
                  admins=frozenset({HUB}), hub_keys=frozenset({HUB}))
    refusal = judge(facts(HUB, "orgs/acme/policy.yaml"), trust)
    assert refusal is not None and refusal.reason == "hub-scope"
    refusal = judge(facts(HUB, "orgs/acme/devices/x.yaml", parents=("a", "b")), trust)
    assert refusal is not None and "merge or root" in refusal.message
    refusal = judge(facts(HUB), trust)  # even an empty one
    assert refusal is not None and "changes 0 files" in refusal.message


IDENTITY = Ed25519PrivateKey.from_private_bytes(bytes([5]) * 32)
DEVICE = {"kind": "Device", "name": "x", "owner": "bob",
          "wireguard": {"public_key": "old", "listen_port": 51820},
          "identity": {"public_key": public_b64(IDENTITY.public_key())},
          "tunnel_ips": ["10.10.0.9"]}


def _request(key: str = "new", signer: Ed25519PrivateKey = IDENTITY) -> str:
    """The device's signed rotation request, as the hub's commit trailer carries it."""
    body = make_body(org="acme", device="x", new_wireguard_public_key=key, issued_at=1)
    envelope = sign_envelope(json.dumps(body).encode(), PAYLOAD_TYPE, signer)
    return base64.b64encode(envelope).decode()


def _rotation(before, after, requests=None):
    trailers = {"Meshops-Rotate-Request": (_request(),) if requests is None else requests}
    return Facts("c1", ("c0",), sig(HUB), (("M", "orgs/acme/devices/x.yaml"),),
                 Scoped(trailers=trailers, parent=None, before=before, after=after,
                        mainline=True))


def _with(doc, **changes):
    out = {**doc, **changes}
    return out


@pytest.mark.parametrize(("after", "ok"), [
    (_with(DEVICE, wireguard={"public_key": "new", "listen_port": 51820}), True),
    (_with(DEVICE, wireguard={"public_key": "new", "listen_port": 51821}), False),
    (_with(DEVICE, wireguard={"public_key": "new"}), False),
    (_with(DEVICE, wireguard={"public_key": "old", "listen_port": 51820}), False),
    (_with(DEVICE, wireguard={"public_key": "new", "listen_port": 51820},
           identity={"public_key": "id2"}), False),
    (_with(DEVICE, wireguard={"public_key": "new", "listen_port": 51820}, owner="eve"), False),
    (_with(DEVICE, wireguard={"public_key": "new", "listen_port": 51820}, disabled=False),
     False),
    (_with(DEVICE, wireguard="new"), False),
    ("not a mapping", False),
])
def test_rotation_changes_only_the_wireguard_key(after, ok):
    refusal = judge(_rotation(DEVICE, after), TRUST)
    assert (refusal is None) is ok, refusal


@pytest.mark.parametrize(("requests", "match"), [
    ((), "needs exactly one"),
    ((_request(), _request()), "needs exactly one"),
    ((_request(signer=Ed25519PrivateKey.generate()),), "not signed by the device's identity"),
    ((_request(key="other"),), "another device or another key"),
    (("not base64!",), "not signed by the device's identity"),
])
def test_a_rotation_needs_the_devices_own_signed_request(requests, match):
    after = _with(DEVICE, wireguard={"public_key": "new", "listen_port": 51820})
    refusal = judge(_rotation(DEVICE, after, requests), TRUST)
    assert refusal is not None and match in refusal.message, refusal


def test_rotation_of_a_disabled_device_is_refused():
    before = _with(DEVICE, disabled=True)
    after = _with(before, wireguard={"public_key": "new", "listen_port": 51820})
    refusal = judge(_rotation(before, after), TRUST)
    assert refusal is not None and "disabled" in refusal.message


ENROLLED = {"kind": "Device", "name": "bob-9", "owner": "bob", "description": "enrolled by bob",
            "wireguard": {"public_key": "k"}, "identity": {"public_key": "i"},
            "tunnel_ips": ["10.10.0.9"]}


def _enroll(owner="bob", mainline=False, doc=None, **trailers):
    repo = load(EXAMPLE_REPO).repo
    bob = repo.orgs["acme"].users["bob"]
    values = {ENROLL_USER: ("bob",), ENROLL_ISSUER: (bob.oidc_issuer,),
              ENROLL_SUBJECT: (bob.oidc_subject,)}
    values.update(trailers)
    return Facts("c1", ("c0",), sig(HUB), (("A", "orgs/acme/devices/bob-9.yaml"),),
                 Scoped(trailers=values, parent=repo, before=None,
                        after=doc or {**ENROLLED, "owner": owner}, mainline=mainline))


def test_enrollment_rules():
    assert judge(_enroll(), TRUST) is None
    assert "owner is 'eve'" in judge(_enroll(owner="eve"), TRUST).message
    assert "trailer" in judge(_enroll(**{ENROLL_USER: ("bob", "bob")}), TRUST).message
    assert "trailer" in judge(_enroll(**{ENROLL_SUBJECT: ()}), TRUST).message
    assert "is not user bob's" in judge(_enroll(**{ENROLL_ISSUER: ("https://x",)}),
                                        TRUST).message
    for doc, why in [
        ({**ENROLLED, "tags": ["prod"]}, "also sets tags"),
        ({**ENROLLED, "relay": True, "endpoint": "203.0.113.1:51820"}, "also sets endpoint, relay"),
        ({**ENROLLED, "routes": ["0.0.0.0/0"]}, "also sets routes"),
        ({**ENROLLED, "wireguard": {"public_key": "k", "listen_port": 1}}, "public_key only"),
        ({**ENROLLED, "name": "web-1"}, "is not the file's name"),
        ({**ENROLLED, "description": "x"}, "enrolled by bob"),
    ]:
        refusal = judge(_enroll(doc=doc), TRUST)
        assert refusal is not None and why in refusal.message, (doc, refusal)
    # the example's acme has no enrollment: a straight-on-the-branch enrollment is refused
    assert "without review" in judge(_enroll(mainline=True), TRUST).message


def test_trust_comes_from_the_published_model_and_the_bootstrap():
    repo = load(EXAMPLE_REPO).repo
    boot = Bootstrap(admins=frozenset({ADMIN}), hub_keys=frozenset({HUB}))
    assert trust_from(None, None, Bootstrap()).enabled is False
    assert trust_from(None, None, boot).enabled is True
    t = trust_from(repo, "c0", Bootstrap())
    assert t.enabled is repo.mesh.require_signed_commits is False
    assert t.owners == {"acme": frozenset(), "globex": frozenset()}  # no pgp_fingerprint yet
    t = trust_from(repo, "c0", boot)
    assert t.enabled and t.admins == {ADMIN} and t.hub_keys == {HUB}


def test_owners_are_role_owner_or_listed_and_not_disabled():

    repo = load(EXAMPLE_REPO).repo
    acme = repo.orgs["acme"]
    users = dict(acme.users)
    users["alice"] = structs.replace(users["alice"], pgp_fingerprint=ALICE.lower())
    users["bob"] = structs.replace(users["bob"], pgp_fingerprint=EVE)  # admin, not owner
    users["carol"] = structs.replace(users["carol"], pgp_fingerprint=DANA, role="owner",
                                         disabled=True)
    assert owners_of(structs.replace(acme, users=users)) == {ALICE}
    org = structs.replace(acme.organization, owners=("alice", "bob"))
    assert owners_of(structs.replace(acme, users=users, organization=org)) == {ALICE, EVE}


def test_an_enrolled_device_has_the_orgs_lifetime():

    repo = load(EXAMPLE_REPO).repo
    acme = repo.orgs["acme"]
    org = structs.replace(acme.organization, defaults=structs.replace(
        acme.organization.defaults, device_lifetime_days=90))
    repo = structs.replace(repo, orgs={**repo.orgs,
                                           "acme": structs.replace(acme, organization=org)})
    facts = _enroll()
    without = structs.replace(facts, scoped=structs.replace(facts.scoped, parent=repo))
    refusal = judge(without, TRUST)
    assert refusal is not None and "expires" in refusal.message
    with_expiry = structs.replace(without, scoped=structs.replace(
        without.scoped, after={**ENROLLED, "expires": "2027-01-01T00:00:00Z"}))
    assert judge(with_expiry, TRUST) is None
