"""OpenID discovery and the OAuth 2.0 Device Authorization Grant (RFC 8628).

Called by ``reconciler.agent.enroll`` (``meshops agent enroll``) and, for
discovery, by ``identity.tokens`` on the hub. Standard library only: no JOSE
here, so a device does not install PyJWT to log in.

* ``discover(issuer, transport)`` reads ``ISSUER/.well-known/openid-configuration``
  and checks that its ``issuer`` is exactly the one asked for (OIDC Discovery
  1.0, 4.3: otherwise a document could speak for another issuer) and that
  every endpoint is https.
* ``start(meta, client_id, scope, transport)`` asks for a device code
  (RFC 8628 3.1-3.2).
* ``poll(meta, client_id, auth, transport, sleep=, now=)`` polls the token
  endpoint (3.4-3.5). Each reply is turned into a ``Step`` by the pure
  ``next_step``: ``authorization_pending`` waits ``interval``; ``slow_down``
  adds 5 s to the interval for this and every later poll; ``access_denied``
  and ``expired_token`` end the grant with their own reason; the code's
  ``expires_in`` bounds the whole loop even if the server never says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reconciler.boundedjson import loads
from reconciler.errors import ConfigError, IdentityRefused

from .http import Response, Transport, check_url

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_INTERVAL = 5.0  # RFC 8628 3.2: "If no value is provided, clients MUST use 5"
SLOW_DOWN_STEP = 5.0  # RFC 8628 3.5: "the interval MUST be increased by 5 seconds"
MAX_INTERVAL = 60.0
MAX_DOC = 64 * 1024


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    jwks_uri: str
    token_endpoint: str
    device_authorization_endpoint: str | None


@dataclass(frozen=True)
class DeviceAuthorization:
    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float


@dataclass(frozen=True)
class Tokens:
    id_token: str
    access_token: str | None = None


@dataclass(frozen=True)
class Step:
    """What to do after one token-endpoint reply: ``done`` (with tokens), or
    ``wait`` ``interval`` seconds and poll again. Errors are raised instead."""

    done: bool
    interval: float
    tokens: Tokens | None = None


def _json(resp: Response, what: str) -> dict[str, Any]:
    doc = loads(resp.body, what=what, max_bytes=MAX_DOC, max_depth=16)
    if not isinstance(doc, dict):
        raise IdentityRefused("oidc-error", f"{what}: expected a JSON object")
    return doc


def _str(doc: dict[str, Any], key: str, what: str, *, required: bool = True) -> str | None:
    value = doc.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise IdentityRefused("oidc-error", f"{what}: {key!r} is missing or not a string")
    return value


def discover(issuer: str, transport: Transport) -> ProviderMetadata:
    check_url(issuer, "issuer")
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    resp = transport("GET", url)
    if resp.status != 200:
        raise IdentityRefused("oidc-error", f"{url}: HTTP {resp.status}")
    what = f"discovery document {url}"
    doc = _json(resp, what)
    if doc.get("issuer") != issuer:
        raise IdentityRefused("wrong-issuer", f"{what} speaks for issuer "
                                              f"{doc.get('issuer')!r}, not {issuer!r}")
    meta = ProviderMetadata(
        issuer=issuer,
        jwks_uri=str(_str(doc, "jwks_uri", what)),
        token_endpoint=str(_str(doc, "token_endpoint", what)),
        device_authorization_endpoint=_str(doc, "device_authorization_endpoint", what,
                                           required=False),
    )
    for name in ("jwks_uri", "token_endpoint", "device_authorization_endpoint"):
        value = getattr(meta, name)
        if value is not None:
            check_url(value, f"{what}: {name}")
    return meta


def _number(doc: dict[str, Any], key: str, default: float, what: str) -> float:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise IdentityRefused("oidc-error", f"{what}: {key!r} must be a positive number")
    return float(value)


def start(meta: ProviderMetadata, client_id: str, scope: str,
          transport: Transport) -> DeviceAuthorization:
    """RFC 8628 3.1: ask for a device code and a user code."""
    if not meta.device_authorization_endpoint:
        raise ConfigError(f"issuer {meta.issuer} offers no device authorization endpoint "
                          "(RFC 8628); enable the device grant for client "
                          f"{client_id!r} at the identity provider")
    resp = transport("POST", meta.device_authorization_endpoint,
                     form={"client_id": client_id, "scope": scope})
    what = f"device authorization response from {meta.issuer}"
    doc = _json(resp, what)
    if resp.status != 200:
        raise IdentityRefused("oidc-error", f"{what}: HTTP {resp.status}: "
                                            f"{doc.get('error', '?')}: "
                                            f"{str(doc.get('error_description', ''))[:200]}")
    uri = str(_str(doc, "verification_uri", what))
    check_url(uri, f"{what}: verification_uri")
    complete = _str(doc, "verification_uri_complete", what, required=False)
    if complete is not None:
        check_url(complete, f"{what}: verification_uri_complete")
    return DeviceAuthorization(
        device_code=str(_str(doc, "device_code", what)),
        user_code=str(_str(doc, "user_code", what)),
        verification_uri=uri,
        verification_uri_complete=complete,
        expires_in=_number(doc, "expires_in", 600.0, what),
        interval=min(_number(doc, "interval", DEFAULT_INTERVAL, what), MAX_INTERVAL),
    )


def next_step(status: int, doc: dict[str, Any], interval: float, issuer: str) -> Step:
    """PURE: one token-endpoint reply (RFC 8628 3.5) -> the next step."""
    if status == 200:
        token = doc.get("id_token")
        if not isinstance(token, str) or not token:
            raise IdentityRefused("oidc-error", f"{issuer} returned no id_token; ask for the "
                                                "'openid' scope")
        access = doc.get("access_token")
        return Step(True, interval, Tokens(token, access if isinstance(access, str) else None))
    error = doc.get("error")
    if error == "authorization_pending":
        return Step(False, interval)
    if error == "slow_down":
        return Step(False, min(interval + SLOW_DOWN_STEP, MAX_INTERVAL))
    if error == "access_denied":
        raise IdentityRefused("access-denied", f"the login at {issuer} was denied")
    if error == "expired_token":
        raise IdentityRefused("expired-code", f"the user code expired before the login at "
                                              f"{issuer} finished; run the command again")
    text = str(doc.get("error_description", ""))[:200]
    raise IdentityRefused("oidc-error", f"{issuer} token endpoint: HTTP {status} "
                                        f"{error or 'without an error code'}: {text}")


def poll(meta: ProviderMetadata, client_id: str, auth: DeviceAuthorization,
         transport: Transport, *, sleep: Callable[[float], None],
         now: Callable[[], float]) -> Tokens:
    """Poll the token endpoint until the user finished (or refused) the login."""
    deadline = now() + auth.expires_in
    interval = auth.interval
    form = {"grant_type": DEVICE_GRANT, "device_code": auth.device_code,
            "client_id": client_id}
    while True:
        sleep(interval)  # RFC 8628 3.5: wait at least `interval` between requests
        if now() > deadline:
            raise IdentityRefused("expired-code", f"the user code expired after "
                                                  f"{auth.expires_in:.0f} s; run the "
                                                  "command again")
        resp = transport("POST", meta.token_endpoint, form=form)
        doc = _json(resp, f"token response from {meta.issuer}")
        step = next_step(resp.status, doc, interval, meta.issuer)
        if step.done:
            assert step.tokens is not None
            return step.tokens
        interval = step.interval
