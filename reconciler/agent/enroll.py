"""``meshops agent enroll``: log in with the org's OpenID provider, send the
hub the new device's public keys, signed with its identity key.

Called by ``reconciler.cli.agent`` (``enroll``), after it wrote the agent
config and the keys (as ``agent init`` does). One call, in order:

1. ``GET HUB/v1/orgs/ORG/enroll``: the org's issuer, client id and scope (the
   hub reads them from ``enrollment:`` in ``organization.yaml`` of the commit
   it serves, so git stays the only place they are set);
2. the device authorization grant (RFC 8628) at that issuer
   (``identity.oidc``): ``say`` prints the verification URL and the user code,
   then the token endpoint is polled until the user logged in;
3. ``POST HUB/v1/orgs/ORG/enroll`` with the request (``identity.request``)
   in a DSSE envelope signed with the identity key on disk.

Effects are parameters: ``hub`` (a ``Fetcher``'s transport), ``issuer``
(an ``identity.http.Transport``), ``sleep``, ``now`` and ``say``. The ID
token is never printed or stored. A refusal by the hub becomes
``IdentityRefused`` with the hub's reason; an unreachable hub or issuer is a
``FetchError`` (temporary).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reconciler.agent.fetch import USER_AGENT
from reconciler.agent.fetch import Transport as HubTransport
from reconciler.agent.keys import sign_with_identity
from reconciler.boundedjson import loads
from reconciler.errors import FetchError, IdentityRefused, InputRefused
from reconciler.identity import oidc
from reconciler.identity.http import Transport as IssuerTransport
from reconciler.identity.request import PAYLOAD_TYPE, canonical, make_body

MAX_REPLY = 64 * 1024
HUB_TIMEOUT = 60.0  # the hub verifies, commits and pushes before it answers


@dataclass(frozen=True)
class Enrolled:
    status: str  # "approved" (committed to the followed branch) | "pending-review"
    branch: str
    commit: str
    owner: str
    tunnel_ips: tuple[str, ...]
    expires: str | None


def _call(hub: HubTransport, method: str, url: str, data: bytes | None = None
          ) -> tuple[int, Any]:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    status, _, raw = hub(method, url, headers=headers, body=data, timeout=HUB_TIMEOUT,
                         max_bytes=MAX_REPLY)
    if status >= 500 and status != 502:
        raise FetchError(f"{url}: HTTP {status}")
    try:
        doc = loads(raw, what=f"the hub's answer to {method} {url}", max_bytes=MAX_REPLY,
                    max_depth=8)
    except InputRefused as exc:
        raise FetchError(f"{url}: HTTP {status}, not a meshops answer: {exc}") from exc
    if not isinstance(doc, dict):
        raise FetchError(f"{url}: HTTP {status}, not a JSON object")
    if status >= 400:
        reason = str(doc.get("error", "refused"))
        raise IdentityRefused(reason, f"the hub refused ({reason}): "
                                      f"{str(doc.get('message', ''))[:300]}")
    return status, doc


def sign(identity_key_path: str, payload: bytes) -> bytes:
    """A DSSE envelope over ``payload``, signed with the device's identity key."""
    return sign_with_identity(identity_key_path, payload, PAYLOAD_TYPE)


def enroll(*, hub_url: str, org: str, name: str, wireguard_public_key: str,
           identity_public_key: str, identity_key_path: str, hub: HubTransport,
           issuer: IssuerTransport, sleep: Callable[[float], None], now: Callable[[], float],
           say: Callable[[str], None]) -> Enrolled:
    base = f"{hub_url.rstrip('/')}/v1/orgs/{org}/enroll"
    _, settings = _call(hub, "GET", base)
    iss, client_id = settings.get("issuer"), settings.get("client_id")
    scope = settings.get("scope", "openid email")
    if not isinstance(iss, str) or not isinstance(client_id, str) or not isinstance(scope, str):
        raise FetchError(f"{base}: the hub's answer lacks issuer or client_id")
    meta = oidc.discover(iss, issuer)
    auth = oidc.start(meta, client_id, scope, issuer)
    say(f"To enroll {org}/{name}, open {auth.verification_uri} and enter the code "
        f"{auth.user_code}")
    if auth.verification_uri_complete:
        say(f"  (or open {auth.verification_uri_complete})")
    say(f"Waiting for the login (the code expires in {auth.expires_in:.0f} s)...")
    tokens = oidc.poll(meta, client_id, auth, issuer, sleep=sleep, now=now)
    body = make_body(org=org, name=name, id_token=tokens.id_token,
                     wireguard_public_key=wireguard_public_key,
                     identity_public_key=identity_public_key, timestamp=int(now()))
    envelope = sign(identity_key_path, canonical(body))
    _, doc = _call(hub, "POST", base, envelope)
    ips = doc.get("tunnel_ips")
    return Enrolled(status=str(doc.get("status")), branch=str(doc.get("branch")),
                    commit=str(doc.get("commit")), owner=str(doc.get("owner")),
                    tunnel_ips=tuple(str(i) for i in ips) if isinstance(ips, list) else (),
                    expires=doc.get("expires") if isinstance(doc.get("expires"), str) else None)
