"""ID-token verification against the real OpenID provider (npm oidc-provider 8):
tokens it issued through a real device grant, its JWKS, its key rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from reconciler.errors import IdentityRefused
from reconciler.identity.http import UrllibTransport
from reconciler.identity.tokens import JwksCache, verify_id_token


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


def cache_for(provider, clock=None) -> JwksCache:
    return JwksCache(provider.issuer, UrllibTransport(context=provider.ssl_context()),
                     now=clock or time.time)


def refused(reason: str, fn, *args, **kwargs) -> IdentityRefused:
    with pytest.raises(IdentityRefused) as info:
        fn(*args, **kwargs)
    assert info.value.reason == reason, str(info.value)
    return info.value


def test_a_real_token_verifies(oidc):
    token = oidc.device_token("alice")["id_token"]
    claims = verify_id_token(token, issuer=oidc.issuer, audience="meshops",
                             keys=cache_for(oidc), now=time.time())
    assert (claims.issuer, claims.subject, claims.audience) == (oidc.issuer, "alice", ("meshops",))
    assert claims.email == "alice@example.com"


def test_wrong_audience_is_refused(oidc):
    token = oidc.device_token("alice", client_id="other-client")["id_token"]
    refused("wrong-audience", verify_id_token, token, issuer=oidc.issuer, audience="meshops",
            keys=cache_for(oidc), now=time.time())


def test_a_token_of_another_issuer_is_refused(oidc, make_oidc):
    other = make_oidc()
    token = other.device_token("alice")["id_token"]
    refused("wrong-issuer", verify_id_token, token, issuer=oidc.issuer, audience="meshops",
            keys=cache_for(oidc), now=time.time())
    # and keys of the other issuer are never used to verify this org's tokens
    refused("wrong-issuer", verify_id_token, oidc.device_token("bob")["id_token"],
            issuer=oidc.issuer, audience="meshops", keys=cache_for(other), now=time.time())


def test_expiry_with_a_small_skew(oidc):
    token = oidc.device_token("alice")["id_token"]
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    keys = cache_for(oidc)
    verify_id_token(token, issuer=oidc.issuer, audience="meshops", keys=keys, now=exp + 59)
    err = refused("expired", verify_id_token, token, issuer=oidc.issuer, audience="meshops",
                  keys=keys, now=exp + 61)
    assert "log in again" in str(err)
    iat = jwt.decode(token, options={"verify_signature": False})["iat"]
    refused("not-yet-valid", verify_id_token, token, issuer=oidc.issuer, audience="meshops",
            keys=keys, now=iat - 120)


def test_rotated_key_is_fetched_once_and_old_tokens_keep_verifying(make_oidc):
    provider = make_oidc()
    clock = Clock()
    keys = cache_for(provider, clock)
    old = provider.device_token("alice")["id_token"]
    verify_id_token(old, issuer=provider.issuer, audience="meshops", keys=keys, now=clock.t)
    assert keys.fetches == 1
    new_kid = provider.rotate()
    new = provider.device_token("bob")["id_token"]
    assert jwt.get_unverified_header(new)["kid"] == new_kid
    refused("unknown-key", verify_id_token, new, issuer=provider.issuer, audience="meshops",
            keys=keys, now=clock.t)  # within the re-fetch window of the first fetch
    assert keys.fetches == 1
    clock.t += 11
    claims = verify_id_token(new, issuer=provider.issuer, audience="meshops", keys=keys,
                             now=clock.t)
    assert claims.subject == "bob" and keys.fetches == 2  # unknown kid: re-fetched once
    verify_id_token(old, issuer=provider.issuer, audience="meshops", keys=keys, now=clock.t)
    assert keys.fetches == 2


def test_a_dropped_key_stops_verifying_and_refetches_are_rate_limited(make_oidc):
    provider = make_oidc()
    clock = Clock()
    old = provider.device_token("alice")["id_token"]
    provider.rotate(drop_old=True)
    keys = cache_for(provider, clock)
    refused("unknown-key", verify_id_token, old, issuer=provider.issuer, audience="meshops",
            keys=keys, now=clock.t)
    assert keys.fetches == 1
    for _ in range(5):  # made-up or retired kids cannot make the hub hammer the issuer
        refused("unknown-key", verify_id_token, old, issuer=provider.issuer,
                audience="meshops", keys=keys, now=clock.t)
    assert keys.fetches == 1
    clock.t += 11
    refused("unknown-key", verify_id_token, old, issuer=provider.issuer, audience="meshops",
            keys=keys, now=clock.t)
    assert keys.fetches == 2


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _forge(token: str, header_changes: dict, payload_changes: dict | None = None) -> tuple:
    header = jwt.get_unverified_header(token)
    payload = jwt.decode(token, options={"verify_signature": False})
    header.update(header_changes)
    payload.update(payload_changes or {})
    return header, payload


def test_algorithm_attacks_are_refused(oidc):
    token = oidc.device_token("alice")["id_token"]
    keys = cache_for(oidc)
    kw = {"issuer": oidc.issuer, "audience": "meshops", "keys": keys, "now": time.time()}
    header, payload = _forge(token, {"alg": "none"})
    refused("bad-alg", verify_id_token, f"{_b64(header)}.{_b64(payload)}.", **kw)
    # HS256 keyed with the issuer's public key (the classic RS/HS confusion)
    jwk = json.loads(oidc.jwks.read_text())["keys"][0]
    public_pem = jwt.PyJWK({k: jwk[k] for k in ("kty", "n", "e")}).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header, payload = _forge(token, {"alg": "HS256"})
    signing = f"{_b64(header)}.{_b64(payload)}".encode()
    sig = base64.urlsafe_b64encode(hmac.new(public_pem, signing, hashlib.sha256).digest())
    forged = signing.decode() + "." + sig.rstrip(b"=").decode()
    refused("bad-alg", verify_id_token, forged, **kw)
    # an allowed algorithm that is not the one the key is for
    header, payload = _forge(token, {"alg": "ES256"})
    refused("bad-alg", verify_id_token, f"{_b64(header)}.{_b64(payload)}.AAAA", **kw)
    # a changed claim under the original signature
    head, _, sig_part = token.split(".")
    _, payload = _forge(token, {}, {"sub": "bob"})
    refused("bad-signature", verify_id_token, f"{head}.{_b64(payload)}.{sig_part}", **kw)
    # not a JWS at all, and one too large to read
    refused("bad-token", verify_id_token, "not-a-token", **kw)
    refused("bad-token", verify_id_token, "a." + "b" * 20000 + ".c", **kw)
