"""``POST /v1/orgs/{org}/enroll`` end to end: ID tokens from the real OpenID
provider, a real git repository pushed to a real bare remote, and every refusal."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from oidc.fixture import make_oidc, oidc  # noqa: F401  (pytest fixtures)

from reconciler.cli import main
from reconciler.config import load
from reconciler.hub.api import make_app
from reconciler.hub.enroll import Enrollment
from reconciler.hub.feedstore import FeedStore
from reconciler.hub.serve import Hub
from reconciler.identity.http import UrllibTransport
from reconciler.identity.request import PAYLOAD_TYPE, canonical, make_body
from reconciler.pki.envelope import sign_envelope

from .conftest_serve import FakePipeline, make_org, run

EXAMPLE = Path(__file__).resolve().parents[2] / "example-repo"


def git(*args: str, cwd: Path | str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def user_yaml(name: str, issuer: str, sub: str, role: str = "member", extra: str = "") -> str:
    return (f"kind: User\nname: {name}\nemail: {name}@example.com\noidc:\n  issuer: {issuer}\n"
            f"  subject: {sub}\nrole: {role}\n{extra}")


class World:
    def __init__(self, tmp: Path, issuer: str, auto: str = "") -> None:
        src = tmp / "src"
        shutil.copytree(EXAMPLE, src)
        org = src / "orgs/acme/organization.yaml"
        org.write_text(org.read_text() + "  device_lifetime_days: 90\n"
                       f"enrollment:\n  issuer: {issuer}\n  client_id: meshops\n{auto}")
        users = src / "orgs/acme/users"
        (users / "alice.yaml").write_text(user_yaml("alice", issuer, "alice", "owner"))
        (users / "bob.yaml").write_text(user_yaml("bob", issuer, "bob"))
        (users / "carol.yaml").write_text(user_yaml("carol", issuer, "carol", "member",
                                                    "disabled: true\n"))
        (src / "orgs/globex/users/eve.yaml").write_text(user_yaml("eve", issuer, "mallory"))
        git("init", "-q", "-b", "main", cwd=src)
        git("add", "-A", cwd=src)
        git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init", cwd=src)
        assert load(src).repo is not None, load(src).problems
        self.remote = tmp / "remote.git"
        git("clone", "-q", "--bare", str(src), str(self.remote), cwd=tmp)
        self.mirror = tmp / "mirror.git"
        git("clone", "-q", "--bare", str(self.remote), str(self.mirror), cwd=tmp)
        self.base = git("rev-parse", "main", cwd=self.mirror)
        self.clock = [time.time()]

    def service(self, provider) -> Enrollment:
        return Enrollment(repo_path=str(self.mirror), push_url=str(self.remote), branch="main",
                          served_commit=lambda: self.base, now=lambda: self.clock[0],
                          transport=UrllibTransport(context=provider.ssl_context()))


def signed(org: str, name: str, token: str, *, ts: float, key=None, wg=None) -> bytes:
    """The DSSE envelope ``meshops agent enroll`` sends."""
    key = key or Ed25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    pub = base64.b64encode(key.public_key().public_bytes(
        raw, serialization.PublicFormat.Raw)).decode()
    wg_pub = base64.b64encode((wg or X25519PrivateKey.generate()).public_key().public_bytes(
        raw, serialization.PublicFormat.Raw)).decode()
    body = make_body(org=org, name=name, id_token=token, wireguard_public_key=wg_pub,
                     identity_public_key=pub, timestamp=int(ts))
    return sign_envelope(canonical(body), PAYLOAD_TYPE, key)


def tamper(envelope: bytes, **changes: object) -> bytes:
    """The same signature over a changed payload."""
    env = json.loads(envelope)
    body = json.loads(base64.b64decode(env["payload"]))
    body.update(changes)
    env["payload"] = base64.b64encode(canonical(body)).decode()
    return json.dumps(env).encode()


async def _client(service: Enrollment, tmp: Path):
    hub = Hub(pipeline=FakePipeline([make_org("acme", "10.20.0.0/16")]),
              store=FeedStore(f"sqlite:///{tmp}/hub.db"))
    await hub.start()
    client = TestClient(TestServer(make_app(hub, enroll=service)))
    await client.start_server()
    return client, hub


def _enroll(world: World, provider, tmp: Path, requests: list) -> list:
    async def go() -> list:
        client, hub = await _client(world.service(provider), tmp)
        out = []
        try:
            for org, doc in requests:
                resp = await client.post(f"/v1/orgs/{org}/enroll", data=doc)
                out.append((resp.status, await resp.json()))
        finally:
            await client.close()
            await hub.close()
        return out
    return run(go())


def test_enrollment_pushes_a_branch_with_the_device_file(oidc, tmp_path, capsys):  # noqa: F811
    world = World(tmp_path, oidc.issuer)
    token = oidc.device_token("bob")["id_token"]
    [(status, doc)] = _enroll(world, oidc, tmp_path,
                              [("acme", signed("acme", "bob-laptop", token, ts=world.clock[0]))])
    assert status == 201, doc
    assert doc["status"] == "pending-review" and doc["branch"] == "enroll/acme/bob-laptop"
    assert doc["owner"] == "bob" and doc["tunnel_ips"]
    # the branch is on the remote, one commit on top of the served commit, adding one file
    head = git("rev-parse", "refs/heads/enroll/acme/bob-laptop", cwd=world.remote)
    assert head == doc["commit"]
    assert git("rev-parse", f"{head}^", cwd=world.remote) == world.base
    changed = git("diff", "--name-status", world.base, head, cwd=world.remote)
    assert changed == "A\torgs/acme/devices/bob-laptop.yaml"
    text = git("show", f"{head}:orgs/acme/devices/bob-laptop.yaml", cwd=world.remote)
    assert "owner: bob" in text and "expires: " in text
    assert git("rev-parse", "main", cwd=world.remote) == world.base  # main untouched
    message = git("log", "-1", "--format=%B", head, cwd=world.remote)
    assert "Meshops-Enroll-User: bob" in message and token not in message
    # approval is merging the branch: `meshops plan` on it shows the new device
    assert load(str(world.remote), head).repo.orgs["acme"].devices["bob-laptop"].owner == "bob"
    assert main(["plan", str(world.remote), "--base", "main", "--head",
                 "enroll/acme/bob-laptop", "--format", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    [acme] = [o for o in plan["orgs"] if o["org"] == "acme"]
    assert [d["name"] for d in acme["devices"]["added"]] == ["bob-laptop"]
    assert any("bob-laptop" in r["src"] or "bob-laptop" in r["dst"]
               for r in acme["reachability"])  # and what it will reach


def test_auto_approval_commits_to_the_followed_branch(oidc, tmp_path):  # noqa: F811
    auto = "  auto_approve:\n    roles: [owner]\n    max_devices_per_user: 5\n"
    world = World(tmp_path, oidc.issuer, auto)
    owner = oidc.device_token("alice")["id_token"]
    member = oidc.device_token("bob")["id_token"]
    results = _enroll(world, oidc, tmp_path, [
        ("acme", signed("acme", "alice-2", owner, ts=world.clock[0])),
        ("acme", signed("acme", "bob-2", member, ts=world.clock[0]))])
    (s1, d1), (s2, d2) = results
    assert (s1, d1["status"], d1["branch"]) == (201, "approved", "main")
    assert git("rev-parse", "main", cwd=world.remote) == d1["commit"]
    assert (s2, d2["status"]) == (201, "pending-review")  # member: a branch for review


def test_refusals_each_have_their_own_reason(oidc, make_oidc, tmp_path):  # noqa: F811
    world = World(tmp_path, oidc.issuer)
    now = world.clock[0]
    bob = oidc.device_token("bob")["id_token"]
    other = make_oidc().device_token("bob")["id_token"]
    good = signed("acme", "bob-x", bob, ts=now)
    tampered = tamper(good, name="bob-y")
    other_key = json.loads(good)
    other_key["signatures"][0]["sig"] = base64.b64encode(Ed25519PrivateKey.generate().sign(
        b"x")).decode()
    cases = [
        ("acme", signed("acme", "dave-1", oidc.device_token("dave")["id_token"], ts=now),
         403, "unknown-user"),
        ("acme", signed("acme", "eve-1", oidc.device_token("mallory")["id_token"], ts=now),
         403, "other-org"),
        ("acme", signed("acme", "carol-1", oidc.device_token("carol")["id_token"], ts=now),
         403, "disabled-user"),
        ("acme", signed("acme", "bob-a", oidc.device_token("bob", "other-client")["id_token"],
                        ts=now), 401, "wrong-audience"),
        ("acme", signed("acme", "bob-b", other, ts=now), 401, "wrong-issuer"),
        ("acme", tampered, 401, "bad-request-signature"),
        ("acme", json.dumps(other_key).encode(), 401, "bad-request-signature"),
        ("acme", tamper(good, timestamp="now"), 400, "bad-request"),
        ("acme", tamper(good, extra=1), 400, "bad-request"),
        ("acme", signed("acme", "bob-c", bob, ts=now - 1000), 401, "stale-request"),
        ("globex", signed("globex", "bob-d", bob, ts=now), 404, "not-enabled"),
        ("globex", signed("acme", "bob-e", bob, ts=now), 400, "bad-request"),
        ("acme", b'{"payload": "not base64!", "signatures": []}', 400, "bad-request"),
        ("acme", signed("acme", "laptop-bob", bob, ts=now), 409, "device-exists"),
        ("acme", signed("acme", "Bad_Name", bob, ts=now), 400, "bad-request"),
        ("acme", good, 201, None),
        ("acme", signed("acme", "bob-y", bob, ts=now), 401, "token-used"),
        ("acme", signed("acme", "bob-x", oidc.device_token("bob")["id_token"], ts=now), 409,
         "enrollment-pending"),
    ]
    results = _enroll(world, oidc, tmp_path, [(org, doc) for org, doc, _, _ in cases])
    for (_, _, status, reason), (got, doc) in zip(cases, results, strict=True):
        assert got == status, (reason, doc)
        if reason:
            assert doc["error"] == reason, doc
    # refusals left nothing behind: only the one good branch exists
    heads = git("for-each-ref", "--format=%(refname)", "refs/heads", cwd=world.remote).split()
    assert sorted(heads) == ["refs/heads/enroll/acme/bob-x", "refs/heads/main"]


def test_a_pending_branch_is_never_overwritten(oidc, tmp_path):  # noqa: F811
    world = World(tmp_path, oidc.issuer)
    first = signed("acme", "bob-z", oidc.device_token("bob")["id_token"], ts=world.clock[0])
    second = signed("acme", "bob-z", oidc.device_token("bob")["id_token"], ts=world.clock[0])
    (s1, d1), (s2, d2) = _enroll(world, oidc, tmp_path, [("acme", first), ("acme", second)])
    assert s1 == 201
    assert (s2, d2["error"]) == (409, "enrollment-pending")
    assert git("rev-parse", "refs/heads/enroll/acme/bob-z", cwd=world.remote) == d1["commit"]


@pytest.mark.parametrize("body", [b"{", b"[" * 50 + b"]" * 50, b"x" * 40000])
def test_malformed_bodies(oidc, tmp_path, body):  # noqa: F811
    world = World(tmp_path, oidc.issuer)

    async def go():
        client, hub = await _client(world.service(oidc), tmp_path)
        try:
            resp = await client.post("/v1/orgs/acme/enroll", data=body)
            return resp.status, await resp.json()
        finally:
            await client.close()
            await hub.close()
    status, doc = run(go())
    assert (status, doc["error"]) in ((400, "bad-request"), (413, "too-large"))


def test_get_enroll_tells_issuer_and_client(oidc, tmp_path):  # noqa: F811
    world = World(tmp_path, oidc.issuer)

    async def go():
        client, hub = await _client(world.service(oidc), tmp_path)
        try:
            a = await client.get("/v1/orgs/acme/enroll")
            b = await client.get("/v1/orgs/globex/enroll")
            return a.status, await a.json(), b.status
        finally:
            await client.close()
            await hub.close()
    status, doc, other = run(go())
    assert status == 200 and doc == {"issuer": oidc.issuer, "client_id": "meshops",
                                     "scope": "openid email"}
    assert other == 404


def test_a_local_checkout_gets_a_review_branch_even_when_auto_approved(oidc, tmp_path):  # noqa: F811
    auto = "  auto_approve:\n    roles: [owner]\n"
    world = World(tmp_path, oidc.issuer, auto)
    checkout = tmp_path / "src"  # non-bare, main checked out
    world.remote = checkout
    token = oidc.device_token("alice")["id_token"]
    [(status, doc)] = _enroll(world, oidc, tmp_path,
                              [("acme", signed("acme", "alice-3", token, ts=world.clock[0]))])
    assert status == 201, doc
    assert (status, doc["status"], doc["branch"]) == (201, "pending-review",
                                                      "enroll/acme/alice-3")
    assert git("rev-parse", "main", cwd=checkout) == world.base
    assert git("status", "--porcelain", cwd=checkout) == ""  # the working tree is untouched


def test_an_old_login_is_refused(oidc, tmp_path):  # noqa: F811
    world = World(tmp_path, oidc.issuer)
    token = oidc.device_token("bob")["id_token"]
    world.clock[0] += 12 * 60  # the token is still valid (1 h), but the login is 12 min old
    [(status, doc)] = _enroll(world, oidc, tmp_path,
                              [("acme", signed("acme", "bob-old", token, ts=world.clock[0]))])
    assert (status, doc["error"]) == (401, "token-too-old")
