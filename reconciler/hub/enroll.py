"""Self-service enrollment on the hub: ``POST /v1/orgs/{org}/enroll``.

Registered by ``reconciler.hub.api.make_app`` when it is given an
``Enrollment`` service (``reconciler.hub.daemon`` builds one); called by
``meshops agent enroll`` (``reconciler.agent.enroll``). docs/enrollment.md
draws the flow.

* ``GET /v1/orgs/{org}/enroll`` (public): the org's issuer, client id and
  scope, from ``enrollment:`` in ``orgs/ORG/organization.yaml`` of the commit
  the hub serves. 404 ``not-enabled`` when the org has none.
* ``POST /v1/orgs/{org}/enroll`` (public, the token is the credential): the
  body is a DSSE envelope (payload type ``identity.request.PAYLOAD_TYPE``)
  over the request (``identity.request``). In order:
  1. the envelope and its payload are bounded JSON, the payload has exactly
     the expected fields;
  2. ``timestamp`` is within ``MAX_AGE`` of the hub's clock (``stale-request``);
  3. the envelope's Ed25519 signature verifies with the identity key in the
     payload (``pki.envelope.open_envelope``), which proves the sender holds
     it (``bad-request-signature``);
  4. the ID token verifies against the issuer's JWKS (``identity.tokens``), was
     issued at most ``MAX_TOKEN_AGE`` (10 min) ago (``token-too-old``) and has
     not enrolled a device on this hub process yet (``token-used``: one device
     per login; each hub replica remembers its own, until the token expires);
  5. ``(iss, sub)`` is a user of this org who is not disabled (``identity.users``);
  6. the device file is written as ``meshops device add`` writes it
     (``config.writer.add_device``: lowest free tunnel IPs, keys unique,
     the repository still validates), with ``expires:`` when the org has
     ``defaults.device_lifetime_days``;
  7. git: a commit on top of the served commit, signed with ``git commit -S``
     when a hub commit key is configured (GNUPGHOME = the hub's
     ``gnupghome``), pushed to the repository the hub follows:
     - to a new branch ``enroll/ORG/NAME`` (approval = merging it), refused
       with 409 ``enrollment-pending`` when that branch exists already;
     - or, when the org's ``auto_approve`` admits the user's role and the
       user owns fewer than ``max_devices_per_user`` devices, straight to
       the followed branch (a fast-forward; 409 ``branch-moved`` if it moved,
       and the agent may simply retry). A hub that follows a local, non-bare
       checkout cannot move its checked-out branch; the enrollment then goes
       to the review branch and the answer says ``pending-review``.

Every refusal is ``{"error": REASON, "message": ...}`` with 400 (bad body),
401 (token, signature, time), 403 (user), 404 (org) or 409 (name/branch).
The ID token never appears in a log or a commit; the commit records the user
name and the token's issuer and subject as trailers.

git runs as a subprocess in a throwaway worktree of the hub's repository
(no shell; arguments are a list), one enrollment at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from reconciler.config.writer import AddedDevice, NewDevice, add_device
from reconciler.errors import (
    IdentityRefused,
    ManifestRefused,
    PkiError,
    TemporaryError,
    UsageError,
    ValidationError,
)
from reconciler.hub.serve import redact
from reconciler.identity.http import Transport, UrllibTransport
from reconciler.identity.request import FIELDS, MAX_AGE, PAYLOAD_TYPE, open_request
from reconciler.identity.tokens import JwksCache, verify_id_token
from reconciler.identity.users import find_user
from reconciler.model.repo import Enrollment as OrgEnrollment
from reconciler.model.repo import Repo, User
from reconciler.pki.envelope import OrgTrust, open_envelope
from reconciler.pki.keys import keyid, public_from_b64

log = logging.getLogger(__name__)

MAX_BODY = 32 * 1024
MAX_TOKEN_AGE = 600.0  # an ID token older than this (by iat) is refused: log in again
SCOPE = "openid email"
GIT_TIMEOUT = 120.0
HUB_AUTHOR = ("meshops hub", "hub@meshops.invalid")

STATUS = {  # IdentityRefused.reason -> HTTP status
    "bad-request": 400, "bad-token": 401, "bad-alg": 401, "unknown-key": 401,
    "bad-signature": 401, "wrong-issuer": 401, "wrong-audience": 401, "expired": 401,
    "not-yet-valid": 401, "bad-request-signature": 401, "stale-request": 401,
    "token-too-old": 401, "token-used": 401,
    "unknown-user": 403, "other-org": 403, "disabled-user": 403, "not-enabled": 404,
    "device-exists": 409, "enrollment-pending": 409, "branch-moved": 409, "oidc-error": 502,
}


class GitFailed(TemporaryError):
    """git could not commit or push (network, credentials, a remote hook); the
    API answers 500 and the agent may retry."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output  # git's whole stdout and stderr, to tell refusals apart


class _CheckedOut(GitFailed):
    """The followed branch is checked out in a non-bare repository (git refuses
    to move it under someone's working tree)."""


@dataclass
class Enrollment:
    """The enrollment service: where the repository is and how to commit.

    ``repo_path``: the hub's git directory (a checkout or the remote mirror);
    ``push_url``: the repository it follows (the remote URL, or the checkout
    path); ``branch``: the followed branch, or a callable giving it (``hub
    serve`` follows the checked-out branch by default and learns its name from
    the follower)."""

    repo_path: str
    push_url: str
    branch: str | Callable[[], str | None]
    served_commit: Callable[[], str | None]
    now: Callable[[], float] = time.time
    commit_key: str | None = None  # GPG key id/fingerprint for `git commit -S`
    gnupghome: str | None = None
    transport: Transport = field(default_factory=UrllibTransport)
    _jwks: dict[str, JwksCache] = field(default_factory=dict)

    def followed_branch(self) -> str | None:
        return self.branch() if callable(self.branch) else self.branch
    _used: dict[str, float] = field(default_factory=dict)  # sha256(token) -> its exp
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _repo: tuple[str, Repo] | None = None

    def add_routes(self, app: web.Application) -> None:
        app[ENROLL_KEY] = self
        app.router.add_get("/v1/orgs/{org}/enroll", get_enroll)
        app.router.add_post("/v1/orgs/{org}/enroll", post_enroll)

    # -- reading the served commit ------------------------------------------------
    def served_repo(self) -> Repo:
        commit = self.served_commit()
        if commit is None:
            raise IdentityRefused("not-enabled", "the hub serves no commit yet")
        if self._repo is None or self._repo[0] != commit:
            from reconciler.config import load

            result = load(self.repo_path, commit)
            if result.repo is None:
                raise ValidationError(result.problems)
            self._repo = (commit, result.repo)
        return self._repo[1]

    def settings(self, org: str) -> tuple[Repo, OrgEnrollment]:
        repo = self.served_repo()
        state = repo.orgs.get(org)
        if state is None or state.organization.enrollment is None:
            raise IdentityRefused("not-enabled", f"org {org!r} does not offer self-service "
                                                 "enrollment (no enrollment: in its "
                                                 "organization.yaml)")
        return repo, state.organization.enrollment

    def jwks(self, issuer: str) -> JwksCache:
        cache = self._jwks.get(issuer)
        if cache is None:
            cache = self._jwks[issuer] = JwksCache(issuer, self.transport, now=self.now)
        return cache

    # -- the whole enrollment, in a worker thread -------------------------------------
    def enroll(self, org: str, data: bytes) -> dict[str, Any]:
        body = parse_request(data, org)
        now = self.now()
        if abs(now - body["timestamp"]) > MAX_AGE:
            raise IdentityRefused("stale-request", f"the request's timestamp is "
                                                   f"{now - body['timestamp']:+.0f} s off the "
                                                   f"hub's clock (at most {MAX_AGE:.0f})")
        check_signature(data, body)
        repo, settings = self.settings(org)
        claims = verify_id_token(body["id_token"], issuer=settings.issuer,
                                 audience=settings.client_id, keys=self.jwks(settings.issuer),
                                 now=now)
        if now - claims.issued_at > MAX_TOKEN_AGE + 60:  # 60: the verifier's clock skew
            raise IdentityRefused("token-too-old", f"the ID token was issued "
                                                   f"{now - claims.issued_at:.0f} s ago (at most "
                                                   f"{MAX_TOKEN_AGE:.0f}); log in again")
        digest = hashlib.sha256(body["id_token"].encode()).hexdigest()
        self._used = {k: exp for k, exp in self._used.items() if exp + 60 >= now}
        if digest in self._used:
            raise IdentityRefused("token-used", "this ID token already enrolled a device; "
                                                "log in again for another one")
        user = find_user(repo, org, claims)
        state = repo.orgs[org]
        if body["name"] in state.devices:
            raise IdentityRefused("device-exists", f"org {org!r} already has a device "
                                                   f"{body['name']!r}; pick another name")
        owned = sum(1 for d in state.devices.values() if d.owner == user.name)
        auto = (user.role in settings.auto_approve_roles and
                (settings.max_devices_per_user is None or owned < settings.max_devices_per_user))
        commit, added, target = self._commit_and_push(org, body, user, claims.subject, now,
                                                      auto)
        self._used[digest] = claims.expires_at  # one device per login
        approved = target == self.followed_branch()
        log.info("enrolled %s/%s for user %s: %s %s", org, body["name"], user.name,
                 "committed to" if approved else "pushed branch", target)
        return {"status": "approved" if approved else "pending-review", "branch": target,
                "commit": commit, "device": body["name"], "owner": user.name,
                "tunnel_ips": list(added.tunnel_ips), "expires": added.expires}

    def _git(self, args: list[str], cwd: str, *, env: dict[str, str] | None = None) -> str:
        full_env = dict(os.environ, GIT_TERMINAL_PROMPT="0", LC_ALL="C", **(env or {}))
        try:
            proc = subprocess.run(["git", *args], cwd=cwd, env=full_env, capture_output=True,
                                  text=True, timeout=GIT_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise GitFailed(f"git {args[0]}: {exc}") from exc
        if proc.returncode != 0:
            text = (proc.stdout + "\n" + proc.stderr).strip()  # push --porcelain: stdout
            raise GitFailed(f"git {args[0]} failed: {text[-400:]}", text)
        return proc.stdout.strip()

    def _commit_and_push(self, org: str, body: dict[str, Any], user: User, subject: str,
                         now: float, auto: bool) -> tuple[str, AddedDevice, str]:
        """Commit the device file on top of the served commit and push it; returns
        (commit, the device written, the branch it went to)."""
        base = self.served_commit()
        assert base is not None
        name = body["name"]
        followed = self.followed_branch()
        if auto and followed is None:
            raise IdentityRefused("branch-moved", "the hub has not found the branch it follows "
                                                  "yet; run the command again")
        target = followed if auto and followed else f"enroll/{org}/{name}"
        with tempfile.TemporaryDirectory(prefix="meshops-enroll-") as tmp:
            tree = os.path.join(tmp, "tree")
            self._git(["worktree", "add", "--detach", "--quiet", tree, base], self.repo_path)
            try:
                try:
                    added = add_device(tree, NewDevice(
                        org=org, name=name, wireguard_key=body["wireguard_public_key"],
                        identity_key=body["identity_public_key"], owner=user.name,
                        description=f"enrolled by {user.name}"), now=now)
                except (ValidationError, UsageError) as exc:
                    raise IdentityRefused("bad-request", str(exc)) from exc
                self._git(["add", added.rel_path], tree)
                env = {"GNUPGHOME": self.gnupghome} if self.gnupghome else {}
                sign = [f"-S{self.commit_key}"] if self.commit_key else ["--no-gpg-sign"]
                message = (f"enroll: add device {org}/{name} for {user.name}\n\n"
                           f"Meshops-Enroll-User: {user.name}\n"
                           f"Meshops-Enroll-Issuer: {user.oidc_issuer}\n"
                           f"Meshops-Enroll-Subject: {subject}\n")
                self._git(["-c", f"user.name={HUB_AUTHOR[0]}", "-c",
                           f"user.email={HUB_AUTHOR[1]}", "commit", "--quiet", *sign, "-m",
                           message], tree, env=env)
                commit = self._git(["rev-parse", "HEAD"], tree)
                try:
                    self._push(tree, commit, base, target, auto)
                except _CheckedOut:
                    # a hub following a local checkout cannot move its checked-out
                    # branch: the enrollment goes to a branch for review instead
                    log.warning("%s is checked out at %s; enrollment of %s/%s pushed as a "
                                "branch for review", self.followed_branch(), self.push_url, org, name)
                    target = f"enroll/{org}/{name}"
                    self._push(tree, commit, base, target, False)
            finally:
                self._git(["worktree", "remove", "--force", tree], self.repo_path)
        return commit, added, target

    def _push(self, tree: str, commit: str, base: str, target: str, auto: bool) -> None:
        ref = f"refs/heads/{target}"
        # --force-with-lease=REF:EXPECTED: create only if absent (empty), or fast-forward
        # only from the commit we built on; never overwrite someone else's work
        lease = f"--force-with-lease={ref}:{base if auto else ''}"
        try:
            self._git(["push", "--quiet", "--porcelain", lease, self.push_url,
                       f"{commit}:{ref}"], tree)
        except GitFailed as exc:
            text = exc.output
            if "checked out" in text:
                raise _CheckedOut(text) from exc
            if "stale info" in text or "rejected" in text or "already exists" in text:
                if auto:
                    raise IdentityRefused("branch-moved", f"{target} moved while enrolling; "
                                                          "run the command again") from exc
                raise IdentityRefused("enrollment-pending", f"branch {target} exists already: "
                                                            "an enrollment of this name "
                                                            "awaits review") from exc
            # the API answers 500: the reason must be in the hub's log (tokens redacted)
            log.warning("%s", redact(f"enrollment push of {target} to {self.push_url} "
                                     f"failed: {exc}"))
            raise


ENROLL_KEY: web.AppKey[Enrollment] = web.AppKey("enroll", Enrollment)


def parse_request(data: bytes, org: str) -> dict[str, Any]:
    """The request inside the envelope, checked for shape and signed by the
    identity key it carries."""
    body, _, _ = open_request(data, payload_type=None, fields=FIELDS,
                              int_fields=("timestamp",), what="enrollment request",
                              max_bytes=MAX_BODY)
    if body["org"] != org:
        raise IdentityRefused("bad-request", f"the request is for org {body['org']!r}, the "
                                             f"URL names {org!r}")
    return body


def check_signature(data: bytes, body: dict[str, Any]) -> None:
    """The envelope verifies with the identity key the request carries."""
    try:
        key = public_from_b64(body["identity_public_key"], "identity_public_key")
    except PkiError as exc:
        raise IdentityRefused("bad-request", str(exc)) from exc
    try:
        open_envelope(data, OrgTrust(keys={keyid(key): key}), PAYLOAD_TYPE)
    except ManifestRefused as exc:
        raise IdentityRefused("bad-request-signature", "the request is not signed by the "
                                                       f"identity key it carries ({exc.reason})"
                          ) from exc


def _refusal(exc: IdentityRefused) -> web.Response:
    return web.json_response({"error": exc.reason, "message": str(exc)},
                             status=STATUS.get(exc.reason, 400))


async def get_enroll(request: web.Request) -> web.Response:
    service = request.app[ENROLL_KEY]
    try:
        _, settings = await asyncio.to_thread(service.settings, request.match_info["org"])
    except IdentityRefused as exc:
        return _refusal(exc)
    return web.json_response({"issuer": settings.issuer, "client_id": settings.client_id,
                              "scope": SCOPE})


async def post_enroll(request: web.Request) -> web.Response:
    service = request.app[ENROLL_KEY]
    org = request.match_info["org"]
    if request.content_length is not None and request.content_length > MAX_BODY:
        return web.json_response({"error": "too-large", "message": f"at most {MAX_BODY} "
                                  "bytes"}, status=413)
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        return web.json_response({"error": "too-large", "message": f"at most {MAX_BODY} "
                                  "bytes"}, status=413)
    async with service._lock:  # one worktree and one push at a time
        try:
            result = await asyncio.to_thread(service.enroll, org, raw)
        except IdentityRefused as exc:
            return _refusal(exc)
    return web.json_response(result, status=201)
