"""``meshops agent rotate-key``: make the next WireGuard key and ask the hub to
put its public half into git.

Called by ``reconciler.cli.agent`` (``rotate-key``). ``rotate_key`` does, in
order:

1. ``prepare_next_key``: a new X25519 key into ``wireguard.key.next``
   (``next_key_path``: the current key file's path plus ``.next``), mode 0600
   from its creation (``fsio.atomic_write``). A pending key is never
   overwritten unless ``force``; ``resend`` sends the pending key again (after
   a timeout the hub may or may not have committed it);
2. the request ``{"org", "device", "new_wireguard_public_key", "issued_at"}``
   (``identity.rotation``) in a DSSE envelope signed with the device's
   identity key (``sign_request``), which the hub checks against the identity
   key git records for this device;
3. ``POST HUB/v1/orgs/ORG/devices/NAME/rotate`` through the agent's
   ``Fetcher`` (``runtime.make_fetcher``: mTLS with the device certificate),
   ``post_json``. A refusal (HTTP 4xx, ``ConfigError``) of a key made by
   this call deletes it: nothing in git carries it. A resent key is kept
   whatever the answer (an earlier attempt may have been committed), and so is
   any key when the hub is unreachable or answers 5xx (``FetchError``), so
   ``--resend`` can try again.

The switch-over is the agent pass's (the lead's ``agent.gather``/``commit``):
it keeps the current key until the manifest carries the new public key, then
uses ``wireguard.key.next`` and renames it over ``wireguard.key``. The
private key never leaves the file and is never printed; only public keys
appear in results and messages.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path

from reconciler.agent.config import AgentConfig
from reconciler.agent.fetch import FetchLike
from reconciler.agent.keys import sign_with_identity
from reconciler.errors import ConfigError, FetchError, UsageError
from reconciler.fsio import atomic_write
from reconciler.structs import Record

NEXT_SUFFIX = ".next"


class Rotated(Record):
    new_public_key: str  # base64, what `wg pubkey` prints
    commit: str
    branch: str
    next_key_path: str


def next_key_path(private_key: str) -> str:
    """Where the pending key lives: ``wireguard.key`` -> ``wireguard.key.next``."""
    return private_key + NEXT_SUFFIX


def _public_of(path: str) -> str:
    from reconciler.converge.keys import public_key

    try:
        text = Path(path).read_text(encoding="ascii").strip()
        return public_key(text)
    except (OSError, UnicodeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable WireGuard private key (remove it, or pass "
                          "--force to make a new one)") from exc


def prepare_next_key(private_key: str, *, force: bool = False, resend: bool = False
                     ) -> tuple[str, str]:
    """(path, public key) of the next key: a new one, or the pending one with
    ``resend``. Refuses to replace a pending key unless ``force``."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    path = next_key_path(private_key)
    pending = os.path.lexists(path)
    if resend:
        if not pending:
            raise UsageError(f"{path} does not exist: no rotation is pending (run without "
                             "--resend)")
        return path, _public_of(path)
    if pending and not force:
        raise UsageError(f"{path} exists: a rotation is pending (public key "
                         f"{_public_of(path)}). Wait until the manifest carries it (the agent "
                         "then switches to it), pass --resend to send it again, or --force to "
                         "replace it with a new key")
    key = X25519PrivateKey.generate()
    private = base64.b64encode(key.private_bytes_raw()).decode("ascii")
    atomic_write(path, (private + "\n").encode("ascii"), mode=0o600)
    return path, base64.b64encode(key.public_key().public_bytes_raw()).decode("ascii")


def sign_request(identity_key_path: str, payload: bytes) -> bytes:
    """A DSSE envelope of type ``identity.rotation.PAYLOAD_TYPE`` over
    ``payload``, signed with the device's identity key."""
    from reconciler.identity.rotation import PAYLOAD_TYPE  # only when rotating

    return sign_with_identity(identity_key_path, payload, PAYLOAD_TYPE)


def rotate_url(config: AgentConfig) -> str:
    if not config.hub:
        raise UsageError("rotate-key needs a hub (`hub` in the agent config); with a static "
                         "manifest, put the new public key into the device file by hand")
    return f"{config.hub.rstrip('/')}/v1/orgs/{config.org}/devices/{config.name}/rotate"


def rotate_key(config: AgentConfig, *, fetch: FetchLike, now: Callable[[], float],
               force: bool = False, resend: bool = False) -> Rotated:
    from reconciler.identity.request import canonical  # imported only when rotating
    from reconciler.identity.rotation import make_body

    url = rotate_url(config)
    path, public = prepare_next_key(config.private_key, force=force, resend=resend)
    body = make_body(org=config.org, device=config.name, new_wireguard_public_key=public,
                     issued_at=int(now()))
    envelope = sign_request(config.identity_key, canonical(body))
    try:
        doc = fetch.post_json(url, json.loads(envelope))
    except ConfigError as exc:  # the hub refused (4xx)
        if resend:  # an earlier attempt may have been committed: keep the key
            raise ConfigError(f"{exc}; the key stays pending in {path} (`same-key` means "
                              "git carries it already: the agent switches to it)") from exc
        os.unlink(path)  # made by this call and refused: nothing in git carries it
        raise
    except FetchError as exc:
        raise FetchError(f"{exc}; the new key stays pending in {path}: run `meshops agent "
                         "rotate-key --resend` to send it again") from exc
    if not isinstance(doc, dict) or doc.get("status") != "committed" \
            or not isinstance(doc.get("commit"), str):
        raise FetchError(f"{url}: the hub's answer is not a committed rotation; the new key "
                         f"stays pending in {path} (--resend to send it again)")
    return Rotated(new_public_key=public, commit=doc["commit"],
                   branch=str(doc.get("branch", "")), next_key_path=path)
