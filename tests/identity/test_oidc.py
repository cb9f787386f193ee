"""Discovery and the device authorization grant (RFC 8628): every token-endpoint
answer with a fake transport, then the whole grant against the real provider."""

from __future__ import annotations

import json
import time

import pytest

from reconciler.errors import ConfigError, IdentityRefused, InputRefused
from reconciler.identity import oidc as grant
from reconciler.identity.http import Response, UrllibTransport
from reconciler.identity.tokens import JwksCache, verify_id_token
from reconciler.identity.users import find_user
from reconciler.model.repo import Mesh, Organization, OrgState, Repo, User

ISS = "https://id.example.com"
META = grant.ProviderMetadata(ISS, f"{ISS}/jwks", f"{ISS}/token", f"{ISS}/device/auth")


class FakeTransport:
    """Answers from a script: each call pops the next (status, json) for its URL."""

    def __init__(self, script: dict[str, list[tuple[int, object]]]) -> None:
        self.script = script
        self.calls: list[tuple[str, str, dict | None]] = []

    def __call__(self, method, url, *, form=None):
        self.calls.append((method, url, dict(form) if form else None))
        status, doc = self.script[url].pop(0)
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        return Response(status, body, "application/json")


def auth(**kw) -> grant.DeviceAuthorization:
    base = {"device_code": "dc", "user_code": "ABCD-EFGH", "verification_uri": f"{ISS}/device",
                "verification_uri_complete": None, "expires_in": 600.0, "interval": 5.0}
    base.update(kw)
    return grant.DeviceAuthorization(**base)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


def test_pending_then_slow_down_then_tokens():
    clock = Clock()
    t = FakeTransport({META.token_endpoint: [
        (400, {"error": "authorization_pending"}),
        (400, {"error": "slow_down"}),
        (400, {"error": "authorization_pending"}),
        (200, {"id_token": "a.b.c", "access_token": "at"}),
    ]})
    tokens = grant.poll(META, "meshops", auth(), t, sleep=clock.sleep, now=clock.now)
    assert tokens.id_token == "a.b.c"
    assert clock.slept == [5.0, 5.0, 10.0, 10.0]  # slow_down adds 5 s for good
    assert t.calls[0][2] == {"grant_type": grant.DEVICE_GRANT, "device_code": "dc",
                             "client_id": "meshops"}


@pytest.mark.parametrize(("error", "reason"), [
    ("access_denied", "access-denied"), ("expired_token", "expired-code"),
    ("invalid_client", "oidc-error"), ("invalid_grant", "oidc-error")])
def test_terminal_errors_have_their_own_reason(error, reason):
    clock = Clock()
    t = FakeTransport({META.token_endpoint: [(400, {"error": error})]})
    with pytest.raises(IdentityRefused) as info:
        grant.poll(META, "meshops", auth(), t, sleep=clock.sleep, now=clock.now)
    assert info.value.reason == reason


def test_the_code_lifetime_bounds_the_loop_when_the_server_keeps_saying_pending():
    clock = Clock()
    t = FakeTransport({META.token_endpoint: [(400, {"error": "authorization_pending"})] * 100})
    with pytest.raises(IdentityRefused) as info:
        grant.poll(META, "meshops", auth(expires_in=30.0), t, sleep=clock.sleep, now=clock.now)
    assert info.value.reason == "expired-code"
    assert len(t.calls) == 6  # 6 polls 5 s apart, then the 7th wait passes the deadline


def test_a_token_response_without_id_token_is_refused():
    with pytest.raises(IdentityRefused, match="openid"):
        grant.next_step(200, {"access_token": "x"}, 5.0, ISS)


def test_slow_down_is_capped():
    assert grant.next_step(400, {"error": "slow_down"}, 58.0, ISS).interval == grant.MAX_INTERVAL


def test_discovery_checks_issuer_and_https():
    url = f"{ISS}/.well-known/openid-configuration"
    good = {"issuer": ISS, "jwks_uri": f"{ISS}/jwks", "token_endpoint": f"{ISS}/token",
            "device_authorization_endpoint": f"{ISS}/device/auth"}
    assert grant.discover(ISS, FakeTransport({url: [(200, good)]})) == META
    with pytest.raises(IdentityRefused) as info:
        grant.discover(ISS, FakeTransport({url: [(200, dict(good, issuer="https://evil"))]}))
    assert info.value.reason == "wrong-issuer"
    with pytest.raises(ConfigError, match="https"):
        grant.discover(ISS, FakeTransport({url: [(200, dict(good, token_endpoint="http://x/t"))]}))
    with pytest.raises(ConfigError, match="https"):
        grant.discover("http://id.example.com", FakeTransport({}))
    with pytest.raises(InputRefused):
        grant.discover(ISS, FakeTransport({url: [(200, b"[" * 100 + b"]" * 100)]}))


def test_start_refuses_bad_answers():
    url = META.device_authorization_endpoint
    with pytest.raises(IdentityRefused, match="unauthorized_client"):
        grant.start(META, "meshops", "openid", FakeTransport({url: [
            (400, {"error": "unauthorized_client"})]}))
    with pytest.raises(IdentityRefused, match="user_code"):
        grant.start(META, "meshops", "openid", FakeTransport({url: [
            (200, {"device_code": "d", "verification_uri": f"{ISS}/device"})]}))
    with pytest.raises(ConfigError, match="device authorization"):
        grant.start(grant.ProviderMetadata(ISS, "", "", None), "meshops", "openid",
                   FakeTransport({}))
    a = grant.start(META, "meshops", "openid", FakeTransport({url: [
        (200, {"device_code": "d", "user_code": "U", "verification_uri": f"{ISS}/device",
               "expires_in": 300})]}))
    assert a.interval == grant.DEFAULT_INTERVAL and a.expires_in == 300.0


def test_jwks_is_read_within_bounds():
    disc = f"{ISS}/.well-known/openid-configuration"
    doc = {"issuer": ISS, "jwks_uri": f"{ISS}/jwks", "token_endpoint": f"{ISS}/token"}
    keys = [{"kty": "oct", "k": "c2VjcmV0", "kid": f"k{i}"} for i in range(33)]
    cache = JwksCache(ISS, FakeTransport({disc: [(200, doc)], f"{ISS}/jwks": [
        (200, {"keys": keys})]}), now=time.time)
    with pytest.raises(IdentityRefused, match="over the limit"):
        cache.key("k1")
    cache = JwksCache(ISS, FakeTransport({disc: [(200, doc)], f"{ISS}/jwks": [
        (200, b'{"keys": "' + b"x" * 70000 + b'"}')]}), now=time.time)
    with pytest.raises(InputRefused):
        cache.key("k1")
    # a symmetric key in a JWKS is never used: HMAC with a published secret proves nothing
    cache = JwksCache(ISS, FakeTransport({disc: [(200, doc)], f"{ISS}/jwks": [
        (200, {"keys": keys[:1]})]}), now=time.time)
    with pytest.raises(IdentityRefused) as info:
        cache.key("k0")
    assert info.value.reason == "unknown-key"


# -- user mapping -------------------------------------------------------------------
def _repo() -> Repo:
    def user(name, org, sub, **kw):
        return User(name=name, org=org, email=f"{name}@x", oidc_issuer=ISS, oidc_subject=sub,
                    **kw)
    acme = OrgState(Organization("acme", "10.1.0.0/16"), users={
        "alice": user("alice", "acme", "s-alice"),
        "dave": user("dave", "acme", "s-dave", disabled=True)})
    beta = OrgState(Organization("beta", "10.2.0.0/16"), users={
        "bob": user("bob", "beta", "s-bob")})
    return Repo(Mesh(hub_url="https://hub"), orgs={"acme": acme, "beta": beta})


@pytest.mark.parametrize(("sub", "issuer", "reason"), [
    ("s-nobody", ISS, "unknown-user"), ("s-bob", ISS, "other-org"),
    ("s-dave", ISS, "disabled-user"), ("s-alice", "https://other.example", "unknown-user")])
def test_user_mapping_refusals(sub, issuer, reason):
    from reconciler.identity.tokens import Claims

    claims = Claims(issuer=issuer, subject=sub, audience=("m",), expires_at=0, issued_at=0)
    with pytest.raises(IdentityRefused) as info:
        find_user(_repo(), "acme", claims)
    assert info.value.reason == reason


def test_user_mapping_finds_the_user():
    from reconciler.identity.tokens import Claims

    claims = Claims(issuer=ISS, subject="s-alice", audience=("m",), expires_at=0, issued_at=0)
    assert find_user(_repo(), "acme", claims).name == "alice"


# -- the real provider ----------------------------------------------------------------
def test_device_grant_against_the_real_provider(oidc):
    transport = UrllibTransport(context=oidc.ssl_context())
    meta = grant.discover(oidc.issuer, transport)
    a = grant.start(meta, "meshops", "openid email", transport)
    assert a.verification_uri == f"{oidc.issuer}/device" and a.user_code
    polls: list[float] = []

    def sleep(s: float) -> None:  # the user logs in while the device waits
        polls.append(s)
        if len(polls) == 2:
            oidc.approve_device(a.verification_uri_complete, "carol")

    tokens = grant.poll(meta, "meshops", a, transport, sleep=sleep, now=time.time)
    assert len(polls) == 2  # the first poll really was answered authorization_pending
    claims = verify_id_token(tokens.id_token, issuer=oidc.issuer, audience="meshops",
                             keys=JwksCache(oidc.issuer, transport, now=time.time),
                             now=time.time())
    assert claims.subject == "carol"


def test_a_denied_login_at_the_real_provider(oidc):
    transport = UrllibTransport(context=oidc.ssl_context())
    meta = grant.discover(oidc.issuer, transport)
    a = grant.start(meta, "meshops", "openid", transport)

    def sleep(s: float) -> None:
        oidc.deny_device(a.verification_uri_complete)

    with pytest.raises(IdentityRefused) as info:
        grant.poll(meta, "meshops", a, transport, sleep=sleep, now=time.time)
    assert info.value.reason == "access-denied"


def test_a_provider_with_an_untrusted_certificate_is_refused(oidc):
    from reconciler.errors import FetchError

    with pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED"):
        grant.discover(oidc.issuer, UrllibTransport())
