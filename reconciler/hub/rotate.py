"""WireGuard key rotation on the hub: ``POST /v1/orgs/{org}/devices/{name}/rotate``.

Registered by ``reconciler.hub.api.make_app`` (``add_routes``, next to the
enrollment routes, with the same ``hub.enroll.Enrollment`` service: its
repository, push URL, followed branch, commit key and lock); called by
``meshops agent rotate-key`` (``reconciler.agent.rotate``). docs/enrollment.md
("Rotating a WireGuard key") describes the flow, docs/api.md the endpoint.

The body is a DSSE envelope (payload type ``identity.rotation.PAYLOAD_TYPE``)
over ``{"org", "device", "new_wireguard_public_key", "issued_at"}``. In order:

1. the envelope and its payload are bounded JSON with exactly those fields,
   naming the org and device of the URL (``bad-request``);
2. ``issued_at`` is within ``MAX_AGE`` (5 min) of the hub's clock
   (``stale-request``);
3. the served commit has that device (``unknown-device``; a device of another
   org is unknown here);
4. the envelope verifies with the device's CURRENT identity key, the one its
   device file in the served commit records (``bad-request-signature``);
   possession of that key is the credential, so the endpoint needs no client
   certificate and no review;
5. the device is not ``disabled`` (``device-disabled``) or past ``expires``
   (``device-expired``);
6. the new key is 32 bytes of base64 and not a low-order point
   (``bad-key``), differs from the current one (``same-key``) and no other
   device of the org has it (``key-in-use``);
7. this hub process has not carried out the same signed request before
   (``request-used``: a replay within the 5 minutes, which would roll the
   key back after a second rotation);
8. git: in a throwaway worktree of the served commit, the ONE line that holds
   ``wireguard.public_key`` in the device file (its line from the loader's
   marks) gets the new key and nothing else changes; the repository must
   still load and the device must equal the old one but for that key
   (``config.load``); ``git diff --numstat`` must show one line out, one in.
   A commit authored ``meshops hub <hub@meshops.invalid>``, signed
   ``-S`` with the hub's commit key when one is set, with the trailer
   ``Meshops-Rotate-Device: NAME`` and ``Meshops-Rotate-Request:`` the signed
   request (base64 of the envelope's compact JSON with the device's signature,
   so a commit gate can check the device's own signature, not just the
   hub's), is pushed to the followed branch as a fast-forward from the served
   commit (``--force-with-lease``):
   ``branch-moved`` (409) when the branch moved, and the agent may retry;
   ``cannot-push`` (503) when the hub follows a checked-out branch of a
   non-bare repository, which git will not move.

Answer: 201 ``{"status": "committed", "commit": SHA, "device": NAME,
"branch": BRANCH}``. Every refusal is ``{"error": REASON, "message": ...}``
with the status in ``STATUS``. Nothing here logs a key or the request.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from reconciler import structs
from reconciler.errors import IdentityRefused, ManifestRefused, PkiError
from reconciler.hub.enroll import HUB_AUTHOR, Enrollment, GitFailed
from reconciler.identity.request import open_request
from reconciler.identity.rotation import FIELDS, MAX_AGE, PAYLOAD_TYPE, check_new_key
from reconciler.model.repo import Device, Repo
from reconciler.pki.envelope import OrgTrust, open_envelope
from reconciler.pki.keys import keyid, public_from_b64

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024  # a rotation envelope is under 1 KiB
KEY_FIELD = "wireguard.public_key"
TRAILER = "Meshops-Rotate-Device"
REQUEST_TRAILER = "Meshops-Rotate-Request"  # the signed request, for a commit gate

STATUS = {  # IdentityRefused.reason -> HTTP status
    "bad-request": 400, "bad-key": 400,
    "bad-request-signature": 401, "stale-request": 401, "request-used": 401,
    "device-disabled": 403, "device-expired": 403, "unknown-device": 404,
    "same-key": 409, "key-in-use": 409, "branch-moved": 409,
    "not-ready": 503, "cannot-push": 503,
}


@dataclass
class Rotation:
    """Key rotation on top of the enrollment service ``service`` (same
    repository, push URL, followed branch, commit key, clock and lock)."""

    service: Enrollment
    _used: dict[str, float] = field(default_factory=dict)  # sha256(payload) -> issued_at

    def rotate(self, org: str, name: str, data: bytes) -> dict[str, Any]:
        body, payload, env = parse_request(data, org, name)
        now = self.service.now()
        if abs(now - body["issued_at"]) > MAX_AGE:
            raise IdentityRefused("stale-request", f"the request was issued "
                                                   f"{now - body['issued_at']:+.0f} s off the "
                                                   f"hub's clock (at most {MAX_AGE:.0f}); send "
                                                   "a new one")
        base = self.service.served_commit()
        if base is None:
            raise IdentityRefused("not-ready", "the hub serves no commit yet; try again later")
        repo = self.service.served_repo()
        device = find_device(repo, org, name)
        request = check_signature(data, env, device)
        if device.disabled:
            raise IdentityRefused("device-disabled", f"device {org}/{name} is disabled in git "
                                                     f"({device.source.file}); it cannot "
                                                     "rotate its key")
        if device.expired(now):
            raise IdentityRefused("device-expired", f"device {org}/{name} expired at "
                                                    f"{device.expires} "
                                                    f"({device.source.file}); renew it in git")
        new_key = body["new_wireguard_public_key"]
        check_key(repo, device, new_key)
        digest = hashlib.sha256(payload).hexdigest()
        self._used = {k: at for k, at in self._used.items() if at + MAX_AGE >= now}
        if digest in self._used:
            raise IdentityRefused("request-used", "this request was carried out already; a "
                                                  "new rotation needs a new request")
        branch = self.service.followed_branch()
        if branch is None:
            raise IdentityRefused("not-ready", "the hub has not found the branch it follows "
                                               "yet; try again later")
        commit = self._commit_and_push(base, branch, device, new_key, request)
        self._used[digest] = float(body["issued_at"])
        log.info("rotated the WireGuard key of %s/%s: commit %s on %s", org, name, commit[:12],
                 branch)
        return {"status": "committed", "commit": commit, "device": name, "branch": branch}

    def _commit_and_push(self, base: str, branch: str, device: Device, new_key: str,
                         request: str) -> str:
        git = self.service._git
        rel = device.source.file
        with tempfile.TemporaryDirectory(prefix="meshops-rotate-") as tmp:
            tree = os.path.join(tmp, "tree")
            git(["worktree", "add", "--detach", "--quiet", tree, base], self.service.repo_path)
            try:
                path = os.path.join(tree, rel)
                with open(path, "rb") as fh:
                    before = fh.read()
                after = replace_key_line(before, device, new_key)
                with open(path, "wb") as fh:
                    fh.write(after)
                check_tree(tree, device, new_key)
                numstat = git(["diff", "--numstat", "--", rel], tree)
                if numstat != f"1\t1\t{rel}":  # belt and braces: one line out, one line in
                    raise IdentityRefused("bad-request", f"{rel}: the edit changed more than "
                                                         f"one line ({numstat!r})")
                git(["add", "--", rel], tree)
                env = {"GNUPGHOME": self.service.gnupghome} if self.service.gnupghome else {}
                key = self.service.commit_key
                sign = [f"-S{key}"] if key else ["--no-gpg-sign"]
                message = (f"rotate: new WireGuard key for device {device.org}/{device.name}\n\n"
                           f"{TRAILER}: {device.name}\n"
                           f"{REQUEST_TRAILER}: {request}\n")
                git(["-c", f"user.name={HUB_AUTHOR[0]}", "-c", f"user.email={HUB_AUTHOR[1]}",
                     "commit", "--quiet", *sign, "-m", message], tree, env=env)
                commit = git(["rev-parse", "HEAD"], tree)
                self._push(tree, commit, base, branch)
            finally:
                git(["worktree", "remove", "--force", tree], self.service.repo_path)
        return commit

    def _push(self, tree: str, commit: str, base: str, branch: str) -> None:
        ref = f"refs/heads/{branch}"
        # --force-with-lease=REF:BASE: only a fast-forward from the commit we built on
        lease = f"--force-with-lease={ref}:{base}"
        try:
            self.service._git(["push", "--quiet", "--porcelain", lease, self.service.push_url,
                               f"{commit}:{ref}"], tree)
        except GitFailed as exc:
            text = exc.output
            if "checked out" in text:
                raise IdentityRefused("cannot-push", f"{branch} is checked out in the "
                                                     "non-bare repository the hub follows; git "
                                                     "will not move it (follow a remote or a "
                                                     "bare repository)") from exc
            if "stale info" in text or "rejected" in text:
                raise IdentityRefused("branch-moved", f"{branch} moved while the hub "
                                                      "committed the rotation; run the "
                                                      "command again") from exc
            raise


def parse_request(data: bytes, org: str, name: str
                  ) -> tuple[dict[str, Any], bytes, dict[str, Any]]:
    """The payload of the envelope ``data`` (not yet verified), its bytes, and
    the envelope."""
    body, raw, env = open_request(data, payload_type=PAYLOAD_TYPE, fields=FIELDS,
                                  int_fields=("issued_at",), what="rotation request",
                                  max_bytes=MAX_BODY)
    if (body["org"], body["device"]) != (org, name):
        raise IdentityRefused("bad-request", f"the request is for {body['org']}/"
                                             f"{body['device']}, the URL names {org}/{name}")
    return body, raw, env


def find_device(repo: Repo, org: str, name: str) -> Device:
    state = repo.orgs.get(org)
    device = state.devices.get(name) if state is not None else None
    if device is None:
        raise IdentityRefused("unknown-device", f"the served commit has no device {org}/{name}"
                                                " (enroll it first)")
    return device


def check_signature(data: bytes, env: dict[str, Any], device: Device) -> str:
    """The envelope verifies with the identity key git records for ``device``;
    returns it as one line for the commit trailer: base64 of the compact JSON of
    the payload, its type and the device's signature (other entries dropped)."""
    try:
        key = public_from_b64(device.identity_public_key, "identity.public_key")
    except PkiError as exc:  # the repository validates keys; this is defence in depth
        raise IdentityRefused("bad-request-signature", str(exc)) from exc
    try:
        open_envelope(data, OrgTrust(keys={keyid(key): key}), PAYLOAD_TYPE,
                      max_bytes=MAX_BODY)
    except ManifestRefused as exc:
        raise IdentityRefused("bad-request-signature", f"the request is not signed by the "
                                                       f"identity key of {device.org}/"
                                                       f"{device.name} in git ({exc.reason})"
                              ) from exc
    trust = OrgTrust(keys={keyid(key): key})
    for sig in env["signatures"]:  # the first entry that verifies on its own
        if not isinstance(sig, dict):
            continue
        line = json.dumps({"payload": env["payload"], "payloadType": env["payloadType"],
                           "signatures": [{"keyid": sig.get("keyid"), "sig": sig.get("sig")}]},
                          sort_keys=True, separators=(",", ":"))
        try:
            open_envelope(line.encode(), trust, PAYLOAD_TYPE, max_bytes=MAX_BODY)
        except ManifestRefused:
            continue
        return base64.b64encode(line.encode()).decode("ascii")
    raise IdentityRefused("bad-request-signature", "no single signature of the envelope "
                                                   "verifies")  # open_envelope said one did


def check_key(repo: Repo, device: Device, new_key: str) -> None:
    try:
        check_new_key(new_key)
    except ValueError as exc:
        raise IdentityRefused("bad-key", f"{exc}: send what `wg pubkey` prints") from exc
    if new_key == device.wireguard_public_key:
        raise IdentityRefused("same-key", f"{device.org}/{device.name} has that WireGuard key "
                                          "already")
    for other in repo.orgs[device.org].devices.values():  # disabled ones too
        if other.wireguard_public_key == new_key:
            raise IdentityRefused("key-in-use", f"device {device.org}/{other.name} has that "
                                                "WireGuard key; make a new one")


def replace_key_line(text: bytes, device: Device, new_key: str) -> bytes:
    """``text`` (the device file) with the old key replaced by ``new_key`` on the
    one line that holds ``wireguard.public_key``; every other byte is kept."""
    where = f"{device.source.file}:{device.source.lines.get(KEY_FIELD, '?')}"
    number = device.source.lines.get(KEY_FIELD)
    lines = text.splitlines(keepends=True)
    old = device.wireguard_public_key.encode()
    if number is None or not 1 <= number <= len(lines) or lines[number - 1].count(old) != 1:
        raise IdentityRefused("bad-request", f"{where}: cannot find the one line that holds "
                                             "wireguard.public_key; edit the file by hand")
    lines[number - 1] = lines[number - 1].replace(old, new_key.encode())
    return b"".join(lines)


def check_tree(tree: str, device: Device, new_key: str) -> None:
    """The edited worktree still validates and ``device`` differs only in its key."""
    from reconciler.config import load

    result = load(tree)
    if result.repo is None:
        problems = "; ".join(str(p) for p in result.problems)[:600]
        raise IdentityRefused("bad-request", f"the repository would not validate with the "
                                             f"new key: {problems}")
    state = result.repo.orgs.get(device.org)
    edited = state.devices.get(device.name) if state is not None else None
    if edited != structs.replace(device, wireguard_public_key=new_key):
        raise IdentityRefused("bad-request", f"{device.source.file}: the edit changed more "
                                             "than wireguard.public_key; edit it by hand")


ROTATE_KEY: web.AppKey[Rotation] = web.AppKey("rotate", Rotation)


def add_routes(app: web.Application, service: Enrollment) -> None:
    """Called by ``reconciler.hub.api.make_app`` next to ``service.add_routes``."""
    app[ROTATE_KEY] = Rotation(service)
    app.router.add_post("/v1/orgs/{org}/devices/{name}/rotate", post_rotate)


async def post_rotate(request: web.Request) -> web.Response:
    rotation = request.app[ROTATE_KEY]
    org, name = request.match_info["org"], request.match_info["name"]
    if request.content_length is not None and request.content_length > MAX_BODY:
        return web.json_response({"error": "too-large", "message": f"at most {MAX_BODY} "
                                  "bytes"}, status=413)
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        return web.json_response({"error": "too-large", "message": f"at most {MAX_BODY} "
                                  "bytes"}, status=413)
    async with rotation.service._lock:  # one worktree and one push at a time, as enrollment
        try:
            result = await asyncio.to_thread(rotation.rotate, org, name, raw)
        except IdentityRefused as exc:
            return web.json_response({"error": exc.reason, "message": str(exc)},
                                     status=STATUS.get(exc.reason, 400))
    return web.json_response(result, status=201)
