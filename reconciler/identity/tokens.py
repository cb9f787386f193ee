"""Hub-side OpenID Connect ID-token verification (the only PyJWT user).

Called by ``reconciler.hub.enroll``. ``verify_id_token(token, issuer=,
audience=, keys=, now=)`` returns the verified ``Claims`` or raises
``IdentityRefused`` with a stable reason:

* ``bad-token``: not a compact JWS, over ``MAX_TOKEN`` bytes, or missing a claim;
* ``bad-alg``: the header's ``alg`` is not on the allow-list (``none`` and
  every HMAC ``HS*`` are never on it, so a public key can never be used as an
  HMAC secret), or it differs from the ``alg`` the JWK is pinned to;
* ``unknown-key``: no key with that ``kid`` in the issuer's JWKS, even after
  one re-fetch; ``bad-signature``;
* ``wrong-issuer`` (``iss``), ``wrong-audience`` (``aud``, and ``azp`` when
  there are several audiences: OIDC Core 3.1.3.7), ``expired`` (``exp``),
  ``not-yet-valid`` (``iat``/``nbf`` in the future), each with ``skew`` seconds
  of tolerance; ``now`` is a parameter, PyJWT's own clock checks are off.

``JwksCache`` holds one issuer's keys: fetched once through discovery, read
with ``boundedjson`` (size and depth limits, at most ``MAX_KEYS`` keys), and
fetched again when a token names an unknown ``kid`` (the issuer rotated its
keys) but at most once per ``refetch_after`` seconds (10), so tokens with
made-up key ids cannot turn the hub into a load generator against the issuer.
A token signed with a key published less than that after the last fetch is
refused as ``unknown-key`` until the window passes; issuers publish new keys
before they sign with them, which hides this.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

from reconciler.boundedjson import loads
from reconciler.errors import IdentityRefused

from .http import Transport
from .oidc import ProviderMetadata, discover

ALLOWED_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                "ES512", "EdDSA")
MAX_TOKEN = 16 * 1024
MAX_JWKS = 64 * 1024
MAX_KEYS = 32
DEFAULT_SKEW = 60.0
REFETCH_AFTER = 10.0


@dataclass(frozen=True)
class Claims:
    issuer: str
    subject: str
    audience: tuple[str, ...]
    expires_at: float
    issued_at: float
    email: str | None = None


class JwksCache:
    """One issuer's signing keys, by ``kid``. Thread-safe (the hub verifies in a
    worker thread). ``now`` is injected for the re-fetch rate limit."""

    def __init__(self, issuer: str, transport: Transport, *, now: Callable[[], float],
                 refetch_after: float = REFETCH_AFTER) -> None:
        self.issuer = issuer
        self.transport = transport
        self.now = now
        self.refetch_after = refetch_after
        self._meta: ProviderMetadata | None = None
        self._keys: dict[str, dict[str, Any]] = {}
        self._fetched_at: float | None = None
        self._lock = threading.Lock()
        self.fetches = 0

    def key(self, kid: str) -> dict[str, Any]:
        """The JWK (a dict) with ``kid``, re-fetching the JWKS once if it is unknown."""
        with self._lock:
            found = self._keys.get(kid)
            if found is not None:
                return found
            due = self._fetched_at is None or self.now() - self._fetched_at >= self.refetch_after
            if due:
                self._refresh()
                found = self._keys.get(kid)
                if found is not None:
                    return found
        raise IdentityRefused("unknown-key", f"no key with kid {kid!r} in the JWKS of "
                                             f"{self.issuer}")

    def _refresh(self) -> None:
        if self._meta is None:
            self._meta = discover(self.issuer, self.transport)
        uri = self._meta.jwks_uri
        self._fetched_at = self.now()
        self.fetches += 1
        resp = self.transport("GET", uri)
        if resp.status != 200:
            raise IdentityRefused("oidc-error", f"JWKS {uri}: HTTP {resp.status}")
        doc = loads(resp.body, what=f"JWKS {uri}", max_bytes=MAX_JWKS, max_depth=8)
        entries = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            raise IdentityRefused("oidc-error", f"JWKS {uri}: no 'keys' list")
        if len(entries) > MAX_KEYS:
            raise IdentityRefused("oidc-error", f"JWKS {uri}: {len(entries)} keys, over "
                                                f"the limit of {MAX_KEYS}")
        keys: dict[str, dict[str, Any]] = {}
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
                continue  # a key without a kid cannot be chosen by a token
            if entry.get("use", "sig") != "sig" or entry.get("kty") == "oct":
                continue  # encryption keys and symmetric secrets never verify tokens
            try:
                jwt.PyJWK(entry)  # parses: the key type and curve are supported
                keys[entry["kid"]] = entry
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
                continue  # an algorithm this hub does not support: skip that key
        self._keys = keys


def _aud(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise IdentityRefused("bad-token", "the ID token's 'aud' is not a string or a list of strings")


def _time(claims: dict[str, Any], name: str, required: bool) -> float | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise IdentityRefused("bad-token", f"the ID token's {name!r} is missing or not a number")
    return float(value)


def verify_id_token(token: str, *, issuer: str, audience: str, keys: JwksCache,
                    now: float, skew: float = DEFAULT_SKEW) -> Claims:
    if len(token) > MAX_TOKEN or token.count(".") != 2:
        raise IdentityRefused("bad-token", f"the ID token is not a compact JWS of at most "
                                           f"{MAX_TOKEN} bytes")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise IdentityRefused("bad-token", f"the ID token's header is unreadable: {exc}") from exc
    alg = header.get("alg")
    if alg not in ALLOWED_ALGS:
        raise IdentityRefused("bad-alg", f"ID token algorithm {alg!r} is not allowed "
                                         f"(allowed: {', '.join(ALLOWED_ALGS)})")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise IdentityRefused("bad-token", "the ID token's header names no key ('kid')")
    try:  # refusing early on the unverified 'iss' only ever refuses
        claimed = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.PyJWTError as exc:
        raise IdentityRefused("bad-token", f"the ID token is unreadable: {exc}") from exc
    if claimed != issuer:
        raise IdentityRefused("wrong-issuer", f"the ID token is from {claimed!r}, this org "
                                              f"accepts {issuer}")
    if keys.issuer != issuer:
        raise IdentityRefused("wrong-issuer", f"keys of {keys.issuer} cannot verify tokens "
                                              f"for {issuer}")
    entry = keys.key(kid)
    if entry.get("alg", alg) != alg:
        raise IdentityRefused("bad-alg", f"key {kid!r} is for {entry['alg']}, the token "
                                         f"says {alg}")
    try:
        jwk = jwt.PyJWK(entry, algorithm=alg)
    except (jwt.PyJWKError, jwt.InvalidKeyError) as exc:
        raise IdentityRefused("bad-alg", f"key {kid!r} ({entry.get('kty')}) cannot verify "
                                         f"{alg}") from exc
    try:
        claims = jwt.decode(
            token, key=jwk.key, algorithms=[alg], audience=audience, issuer=issuer,
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                     "require": ["iss", "sub", "aud", "exp", "iat"]})
    except jwt.InvalidSignatureError as exc:
        raise IdentityRefused("bad-signature", "the ID token's signature does not verify "
                                               f"with key {kid!r} of {issuer}") from exc
    except jwt.InvalidIssuerError as exc:
        raise IdentityRefused("wrong-issuer", f"the ID token was not issued by {issuer}") \
            from exc
    except jwt.InvalidAudienceError as exc:
        raise IdentityRefused("wrong-audience", f"the ID token is not for client "
                                                f"{audience!r}") from exc
    except jwt.InvalidAlgorithmError as exc:
        raise IdentityRefused("bad-alg", f"ID token algorithm refused: {exc}") from exc
    except jwt.PyJWTError as exc:
        raise IdentityRefused("bad-token", f"the ID token is invalid: {exc}") from exc
    auds = _aud(claims["aud"])
    if len(auds) > 1 and claims.get("azp") != audience:
        raise IdentityRefused("wrong-audience", "the ID token has several audiences and its "
                                                f"'azp' is not {audience!r}")
    exp = _time(claims, "exp", True)
    iat = _time(claims, "iat", True)
    nbf = _time(claims, "nbf", False)
    assert exp is not None and iat is not None
    if now > exp + skew:
        raise IdentityRefused("expired", f"the ID token expired {now - exp:.0f} s ago; log in "
                                         "again")
    if iat > now + skew or (nbf is not None and nbf > now + skew):
        raise IdentityRefused("not-yet-valid", "the ID token was issued in the future; check "
                                               "the clocks of the hub and the issuer")
    sub = claims["sub"]
    if not isinstance(sub, str) or not sub:
        raise IdentityRefused("bad-token", "the ID token's 'sub' is empty")
    email = claims.get("email")
    return Claims(issuer=issuer, subject=sub, audience=auds, expires_at=exp, issued_at=iat,
                  email=email if isinstance(email, str) else None)
