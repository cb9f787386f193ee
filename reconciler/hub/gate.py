"""The commit gate: which commits of the org repository the hub may publish.

Called by ``reconciler.hub.publish.Publisher.publish`` (``Gate.check``) before
anything is built; ``reconciler.hub.daemon`` and ``meshops hub publish``
(``reconciler.cli.hub``) give it the hub's own configuration (``Bootstrap``:
``--gate-signers FILE`` and the fingerprint of ``--commit-key``).
docs/security.md "The commit gate" states the rules for people.

Trust is never read from the commit being checked. It comes from:

* the **anchor**, the last commit this hub (or a replica sharing its store)
  published: its ``mesh.yaml`` ``require_signed_commits`` (the switch),
  ``admins`` (mesh administrators' PGP fingerprints) and each org's owners
  (users with role owner, or listed in ``owners:``, with a ``pgp_fingerprint``
  and not disabled);
* the ``Bootstrap``: ``--gate-signers FILE`` lists admin fingerprints and turns
  the gate on whatever the anchor says; ``--commit-key`` names the hub's key.

With the gate on, every commit between the anchor and the head
(``git rev-list HEAD ^ANCHOR``, merged branches included) is judged against
its first parent's diff (``judge``, pure):

* a path under ``orgs/X/`` needs a good signature by an owner of X (an org the
  anchor does not have, or one without a keyed owner, needs an admin); anything else (``mesh.yaml``,
  ``secrets/``, ...) needs an admin. One signature is one key: a commit that
  touches two orgs passes only if one key is an owner of both;
* a commit signed by the hub's key passes only as a *scoped* commit
  (``judge_hub``): it adds exactly one device file, owned by the user its
  ``Meshops-Enroll-*`` trailers name (enrollment; straight on the followed
  branch only when the org's ``auto_approve`` admits it), or it changes only
  ``wireguard.public_key`` of one existing device (rotation).

Nothing published yet and a bootstrap: the head itself must be signed by a
bootstrap signer; it becomes the first anchor. Nothing published, no bootstrap,
and a head that asks for the gate: refused, since no signer set can be trusted.

The first refused commit (oldest first) raises ``CommitRefused`` naming the
commit, the path and why; the hub keeps serving its last good commit.
``gather`` is the only part with effects (git and gpg through
``reconciler.hub.gitsig``, the loader through an injected ``load``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.errors import CommitRefused, ConfigError
from reconciler.hub import gitsig
from reconciler.hub.gitsig import CommitSignature
from reconciler.model.repo import OrgState, Repo

log = logging.getLogger(__name__)

ENROLL_USER = "Meshops-Enroll-User"
ENROLL_ISSUER = "Meshops-Enroll-Issuer"
ENROLL_SUBJECT = "Meshops-Enroll-Subject"
MAX_SIGNERS_FILE = 64 * 1024
MAX_RANGE = 10_000  # commits judged in one check; more means a lost anchor: re-anchor


# -- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bootstrap:
    """The hub's own gate configuration (never from git).

    ``admins``: from ``--gate-signers FILE``; non-empty turns the gate on.
    ``hub_keys``: fingerprints (primary and subkeys) of ``--commit-key``."""

    admins: frozenset[str] = frozenset()
    hub_keys: frozenset[str] = frozenset()

    @property
    def enabled(self) -> bool:
        return bool(self.admins)


def parse_signers(text: str, file: str) -> frozenset[str]:
    """``--gate-signers FILE``: one full PGP fingerprint per line (spaces allowed
    inside, ``#`` starts a comment, blank lines ignored)."""
    found: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].replace(" ", "").upper()
        if not line:
            continue
        if len(line) not in (40, 64) or any(c not in "0123456789ABCDEF" for c in line):
            raise ConfigError(f"{file}:{number}: {raw.strip()!r} is not a full PGP fingerprint "
                              "(40 hex digits, as `gpg --with-colons --fingerprint` prints "
                              "it); key ids and e-mail addresses are not accepted")
        found.add(line)
    if not found:
        raise ConfigError(f"{file}: lists no fingerprint; put one mesh administrator's PGP "
                          "fingerprint per line")
    return frozenset(found)


def read_signers(path: str | os.PathLike[str]) -> frozenset[str]:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SIGNERS_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"--gate-signers {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_SIGNERS_FILE:
        raise ConfigError(f"--gate-signers {path}: larger than {MAX_SIGNERS_FILE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--gate-signers {path}: not UTF-8 text") from exc
    return parse_signers(text, str(path))


def bootstrap(signers_file: str | os.PathLike[str] | None, commit_key: str | None,
              gnupghome: str | None) -> Bootstrap:
    """The hub's gate configuration from its options (``hub serve``, ``hub publish``):
    ``--gate-signers FILE`` and ``--commit-key KEYID`` (resolved in ``gnupghome``)."""
    admins = read_signers(signers_file) if signers_file else frozenset()
    hub_keys: frozenset[str] = frozenset()
    if commit_key:
        from reconciler.secrets.gpg import Gpg

        hub_keys = Gpg(gnupghome).key_fingerprints(commit_key)
    return Bootstrap(admins=admins, hub_keys=hub_keys)


@dataclass(frozen=True)
class Trust:
    """The signer sets a range is judged with (from the anchor and the bootstrap)."""

    enabled: bool
    anchor: str | None  # the last published commit; None: nothing published yet
    owners: Mapping[str, frozenset[str]] = field(default_factory=dict)  # org -> fingerprints
    admins: frozenset[str] = frozenset()
    hub_keys: frozenset[str] = frozenset()


def owners_of(org: OrgState) -> frozenset[str]:
    """Fingerprints of the org's owners (role owner or listed in ``owners:``) who
    are not disabled."""
    listed = set(org.organization.owners)
    return frozenset(u.pgp_fingerprint.upper() for u in org.users.values()
                     if (u.role == "owner" or u.name in listed) and u.pgp_fingerprint
                     and not u.disabled)


def trust_from(published: Repo | None, anchor: str | None, bootstrap: Bootstrap) -> Trust:
    """Pure: the switch and the signer sets, from the last published commit's model
    (``published``) and the hub's own configuration."""
    if published is None:
        return Trust(enabled=bootstrap.enabled, anchor=None, admins=bootstrap.admins,
                     hub_keys=bootstrap.hub_keys)
    return Trust(
        enabled=bootstrap.enabled or published.mesh.require_signed_commits,
        anchor=anchor,
        owners={name: owners_of(org) for name, org in published.orgs.items()},
        admins=frozenset(a.upper() for a in published.mesh.admins) | bootstrap.admins,
        hub_keys=bootstrap.hub_keys,
    )


# -- facts (gathered) and the pure decision ---------------------------------------------------


@dataclass(frozen=True)
class Scoped:
    """What a hub-signed commit is judged on besides its paths."""

    trailers: Mapping[str, tuple[str, ...]]
    parent: Repo | None  # the first parent's model; None: it does not load
    before: Any  # the device file at the first parent, parsed (None: absent or unreadable)
    after: Any  # the device file at the commit, parsed
    mainline: bool  # on the followed branch's first-parent chain (not brought in by a merge)


@dataclass(frozen=True)
class Facts:
    commit: str
    parents: tuple[str, ...]
    signature: CommitSignature
    changes: tuple[tuple[str, str], ...]  # (git status letter, path) against the first parent
    scoped: Scoped | None = None  # only for commits signed by the hub key


@dataclass(frozen=True)
class Refusal:
    commit: str
    path: str
    reason: str
    message: str

    def error(self) -> CommitRefused:
        return CommitRefused(self.commit, self.path, self.reason, self.message)


def org_of(path: str) -> str | None:
    """The org a repository path belongs to (``orgs/X/...``), None for mesh-level."""
    parts = path.split("/")
    return parts[1] if len(parts) >= 3 and parts[0] == "orgs" and parts[1] else None


def device_path(path: str) -> tuple[str, str] | None:
    """``(org, device)`` for ``orgs/ORG/devices/NAME.yaml``."""
    parts = path.split("/")
    if (len(parts) == 4 and parts[0] == "orgs" and parts[2] == "devices"
            and parts[3].endswith(".yaml") and len(parts[3]) > 5):
        return parts[1], parts[3][:-5]
    return None


def _short(fprs: frozenset[str]) -> str:
    return ", ".join(sorted(f[-16:] for f in fprs)) or "none"


def judge(facts: Facts, trust: Trust) -> Refusal | None:
    """Pure: None when ``facts.commit`` may be published under ``trust``."""
    sig = facts.signature
    c = facts.commit
    hub_signed = sig.good and bool(sig.keys & trust.hub_keys)
    if not facts.changes and not hub_signed:
        return None  # nothing the hub reads changed: empty, or outside the repository's directory
    if sig.status == "N":
        return Refusal(c, facts.changes[0][1], "unsigned",
                       "the commit is not signed; under the commit gate every commit must be "
                       "signed (git commit -S) by an owner of each org it changes, or by a "
                       "mesh admin for mesh-level files")
    if not sig.good:
        return Refusal(c, "", "bad-signature", sig.describe())
    if hub_signed:
        return judge_hub(facts, trust)
    who = sig.primary_key or sig.signing_key
    orgs: dict[str, str] = {}  # org -> first path changed in it
    mesh_path = ""
    for _status, path in facts.changes:
        org = org_of(path)
        if org is None:
            mesh_path = mesh_path or path
        else:
            orgs.setdefault(org, path)
    if mesh_path and not sig.keys & trust.admins:
        return Refusal(c, mesh_path, "not-admin",
                       f"mesh-level files need a mesh admin's signature; key {who} is not in "
                       "mesh.yaml admins: of the last published commit nor in the hub's "
                       "--gate-signers")
    for org, path in sorted(orgs.items()):
        owners = trust.owners.get(org)
        if not owners:  # a new org, or one without a keyed owner: the admins govern it
            if not sig.keys & trust.admins:
                why = ("is new (not in the last published commit)" if owners is None else
                       "has no owner with a pgp_fingerprint in the last published commit")
                return Refusal(c, path, "not-admin",
                               f"org {org} {why}, so changing it needs a mesh admin's "
                               f"signature, and key {who} is not one")
            continue
        if not sig.keys & owners:
            two = f" (the commit changes {len(orgs)} orgs: {', '.join(sorted(orgs))}; one " \
                  "signature counts for one key, so split it per org)" if len(orgs) > 1 else ""
            return Refusal(c, path, "two-orgs" if len(orgs) > 1 else "not-owner",
                           f"changes to org {org} need a signature by one of its owners "
                           f"(as of the last published commit: {_short(owners)}); key {who} "
                           f"is not one{two}")
    return None


HUB_SCOPE = ("a commit signed by the hub's key may only add one device file "
             "(enrollment) or change one device's wireguard.public_key (rotation)")


def judge_hub(facts: Facts, trust: Trust) -> Refusal | None:
    """Pure: a commit signed by the hub's commit key, judged by its scope."""
    c, changes, scoped = facts.commit, facts.changes, facts.scoped
    if len(facts.parents) != 1:
        return Refusal(c, "", "hub-scope", f"{HUB_SCOPE}; this is a merge or root commit")
    if len(changes) != 1:
        listed = ", ".join(p for _s, p in changes[:5]) or "nothing"
        return Refusal(c, changes[0][1] if changes else "", "hub-scope",
                       f"{HUB_SCOPE}; this one changes {len(changes)} files ({listed})")
    status, path = changes[0]
    dev = device_path(path)
    if dev is None or status not in ("A", "M") or scoped is None:
        return Refusal(c, path, "hub-scope", f"{HUB_SCOPE}; this one "
                       f"{'adds' if status == 'A' else 'changes' if status == 'M' else 'removes'}"
                       f" {path}")
    if status == "A":
        return _enrollment(c, path, dev, scoped)
    return _rotation(c, path, scoped)


def _enrollment(c: str, path: str, dev: tuple[str, str], s: Scoped) -> Refusal | None:
    org_name, dev_name = dev

    def no(message: str) -> Refusal:
        return Refusal(c, path, "hub-scope", f"hub enrollment commit: {message}")

    values = {k: s.trailers.get(k, ()) for k in (ENROLL_USER, ENROLL_ISSUER, ENROLL_SUBJECT)}
    missing = [k for k, v in values.items() if len(v) != 1]
    if missing:
        return no(f"needs exactly one of each trailer {', '.join(missing)}")
    user_name, issuer, subject = (v[0] for v in values.values())
    if s.parent is None:
        return no("its parent commit is not a valid repository")
    org = s.parent.orgs.get(org_name)
    if org is None:
        return no(f"org {org_name} does not exist in its parent commit")
    user = org.users.get(user_name)
    if user is None:
        return no(f"user {user_name} does not exist in org {org_name} of its parent commit")
    if user.disabled:
        return no(f"user {user_name} is disabled")
    if (user.oidc_issuer, user.oidc_subject) != (issuer, subject):
        return no(f"the login in its trailers ({issuer}, {subject}) is not user {user_name}'s")
    if not isinstance(s.after, Mapping) or s.after.get("owner") != user_name:
        owner = s.after.get("owner") if isinstance(s.after, Mapping) else None
        return no(f"the device's owner is {owner!r}, not the enrolled user {user_name!r}")
    problem = _enrolled_shape(s.after, dev_name, user_name,
                              org.organization.defaults.device_lifetime_days is not None)
    if problem:
        return no(problem)
    if s.mainline:  # straight on the followed branch: only what auto_approve admits
        settings = org.organization.enrollment
        if settings is None or user.role not in settings.auto_approve_roles:
            return no(f"it reached the followed branch without review, and org {org_name}'s "
                      f"auto_approve does not admit role {user.role}; merge enroll/ branches "
                      "with a merge commit signed by an owner (git merge --no-ff -S)")
        owned = sum(1 for d in org.devices.values() if d.owner == user_name)
        cap = settings.max_devices_per_user
        if cap is not None and owned >= cap:
            return no(f"it reached the followed branch without review, and user {user_name} "
                      f"owns {owned} devices already (auto_approve max_devices_per_user: {cap})")
    return None


# What ``reconciler.hub.enroll`` writes (``config.writer.render_device`` of a
# ``NewDevice`` with keys, owner, description and expiry only): no tags, routes,
# relay, endpoint or exit node can come in through an enrollment.
ENROLLED_FIELDS = frozenset({"kind", "name", "owner", "description", "wireguard", "identity",
                             "tunnel_ips", "expires"})


def _enrolled_shape(doc: Mapping[str, Any], name: str, user: str, lifetime: bool) -> str:
    extra = sorted(set(doc) - ENROLLED_FIELDS)
    if extra:
        return f"an enrolled device has only {', '.join(sorted(ENROLLED_FIELDS))}; this one " \
               f"also sets {', '.join(map(str, extra))}"
    for key in ("wireguard", "identity"):
        sub = doc.get(key)
        if not isinstance(sub, Mapping) or set(sub) != {"public_key"}:
            return f"{key}: must hold public_key only"
    if doc.get("name") != name:
        return f"name {doc.get('name')!r} is not the file's name {name!r}"
    if doc.get("description") != f"enrolled by {user}":
        return f"description must be 'enrolled by {user}'"
    if lifetime and not doc.get("expires"):
        return "the org sets defaults.device_lifetime_days, so an enrolled device has expires:"
    return ""


def _rotation(c: str, path: str, s: Scoped) -> Refusal | None:
    def no(message: str) -> Refusal:
        return Refusal(c, path, "hub-scope", f"hub rotation commit: {message}")

    before, after = s.before, s.after
    if not isinstance(before, Mapping) or not isinstance(after, Mapping):
        return no("the device file does not parse as a mapping before and after")
    if before.get("disabled") is True:
        return no("the device is disabled")
    old_key, new_key = _wg_key(before), _wg_key(after)
    if old_key is None or new_key is None or old_key == new_key:
        return no("wireguard.public_key must be present and change")
    if _without_wg_key(before) != _without_wg_key(after):
        return no("it changes more than wireguard.public_key")
    # the device itself asked for this key: its signed request rides in the commit,
    # so the hub's key alone (stolen, with write access) cannot re-key a device
    problem = _device_asked(s.trailers.get(ROTATE_REQUEST, ()), before, path, new_key)
    return no(problem) if problem else None


ROTATE_REQUEST = "Meshops-Rotate-Request"


def _device_asked(values: tuple[str, ...], before: Mapping[str, Any], path: str,
                  new_key: str) -> str:
    """"" when ``values`` holds exactly one rotation request signed by the
    identity key the parent commit records for the device, for this device and
    this new key; else why not."""
    import base64
    import binascii

    from reconciler.errors import ManifestRefused, PkiError
    from reconciler.identity.rotation import PAYLOAD_TYPE
    from reconciler.pki.envelope import OrgTrust, open_envelope
    from reconciler.pki.keys import keyid, public_from_b64

    if len(values) != 1:
        return f"needs exactly one {ROTATE_REQUEST} trailer (the device's signed request)"
    identity = before.get("identity")
    text = identity.get("public_key") if isinstance(identity, Mapping) else None
    try:
        key = public_from_b64(text if isinstance(text, str) else "", "identity.public_key")
        envelope = base64.b64decode(values[0], validate=True)
        request = open_envelope(envelope, OrgTrust(keys={keyid(key): key}), PAYLOAD_TYPE,
                                max_bytes=8192).json("rotation request")
    except (PkiError, ManifestRefused, binascii.Error, ValueError) as exc:
        return f"the rotation request is not signed by the device's identity key ({exc})"
    parts = path.split("/")  # orgs/ORG/devices/NAME.yaml
    want = {"org": parts[1], "device": parts[3].removesuffix(".yaml"),
            "new_wireguard_public_key": new_key}
    if not isinstance(request, Mapping) or any(request.get(k) != v for k, v in want.items()):
        return "the signed request names another device or another key"
    return ""


def _wg_key(doc: Mapping[str, Any]) -> str | None:
    wg = doc.get("wireguard")
    key = wg.get("public_key") if isinstance(wg, Mapping) else None
    return key if isinstance(key, str) else None


def _without_wg_key(doc: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(doc)
    wg = dict(out["wireguard"])
    del wg["public_key"]
    out["wireguard"] = wg
    return out


# -- effects: gather the facts, run the check ---------------------------------------------------


Loader = Callable[[str], Repo | None]  # commit -> validated model, None when invalid


def _parsed(repo_path: Path, rev: str, path: str) -> Any:
    from reconciler.config.yamlload import Document, load_yaml

    data = gitsig.read_blob(repo_path, rev, path, relative=True)
    if data is None:
        return None
    doc = load_yaml(data, path)
    return doc.value if isinstance(doc, Document) else None


def gather(repo_path: Path, commit: str, parents: tuple[str, ...], trust: Trust,
           gnupghome: str | None, load: Loader, mainline: frozenset[str]) -> Facts:
    sig = gitsig.read_signature(repo_path, commit, gnupghome)
    changes = gitsig.changed_paths(repo_path, parents[0] if parents else None, commit)
    scoped = None
    if sig.good and sig.keys & trust.hub_keys and len(parents) == 1 and len(changes) == 1:
        path = changes[0][1]
        if device_path(path) is not None:
            scoped = Scoped(trailers=gitsig.trailers(repo_path, commit),
                            parent=load(parents[0]),
                            before=_parsed(repo_path, parents[0], path),
                            after=_parsed(repo_path, commit, path),
                            mainline=commit in mainline)
    return Facts(commit, parents, sig, changes, scoped)


class Gate:
    """The commit gate of one publisher: the bootstrap, the trust read from the
    current anchor, and the commits already accepted under it.

    ``Publisher.publish`` calls ``trust`` (before choosing between HEAD and a
    working tree), ``check``, and ``published`` after a successful publish (so
    the next check need not load the anchor again)."""

    def __init__(self, bootstrap: Bootstrap | None = None) -> None:
        self.bootstrap = bootstrap or Bootstrap()
        self._trust: tuple[str | None, Trust] | None = None
        self._accepted: set[tuple[str | None, str]] = set()

    def trust(self, repo_path: str | os.PathLike[str], anchor: str | None,
              load: Loader) -> Trust:
        """The trust for the last published commit ``anchor`` (the store's)."""
        if anchor is not None and (anchor.startswith("worktree-")
                                   or gitsig.resolve(repo_path, anchor) is None):
            if not anchor.startswith("worktree-"):
                log.warning("the last published commit %s is not in %s any more; the gate "
                            "reads no switch or signers from it", anchor[:12], repo_path)
            anchor = None
        if self._trust is not None and self._trust[0] == anchor:
            return self._trust[1]
        published = load(anchor) if anchor is not None else None
        if anchor is not None and published is None:
            log.warning("the last published commit %s does not load; the gate reads no "
                        "switch or signers from it", anchor[:12])
            anchor = None
        trust = trust_from(published, anchor, self.bootstrap)
        self._trust = (anchor, trust)
        return trust

    def published(self, commit: str, repo: Repo) -> None:
        """``commit`` (model ``repo``) was published: it is the next anchor."""
        if commit.startswith("worktree-"):
            self._trust = (None, trust_from(None, None, self.bootstrap))
        else:
            self._trust = (commit, trust_from(repo, commit, self.bootstrap))
        self._accepted.clear()

    def check(self, repo_path: str | os.PathLike[str], head: str, head_asks: bool,
              trust: Trust, load: Loader, gnupghome: str | None) -> None:
        """Raise ``CommitRefused`` unless ``head`` may be published under ``trust``.

        ``head_asks``: the head's own ``require_signed_commits``; it can only make
        the gate stricter (refuse when no signer set is known), never turn it off."""
        path = Path(repo_path)
        if not trust.enabled:
            if head_asks and trust.anchor is None:
                raise CommitRefused(head, "mesh.yaml", "no-signers",
                                    "mesh.yaml asks for signed commits, but this hub has "
                                    "published nothing yet and has no --gate-signers: no "
                                    "signer set can be trusted (a commit cannot vouch for "
                                    "itself); start the hub with --gate-signers FILE listing "
                                    "the mesh admins' PGP fingerprints")
            return  # the gate was off at the last publish: this commit may turn it on
        if head.startswith("worktree-"):
            raise CommitRefused(head, "", "no-commit", "the commit gate is on: publish a "
                                "commit (--rev), never a working tree")
        if trust.anchor is None:
            self._check_first(path, head, gnupghome)
            return
        todo = gitsig.rev_list(path, head, trust.anchor)
        if len(todo) > MAX_RANGE:
            raise CommitRefused(head, "", "anchor",
                                f"{len(todo)} commits since the last published commit "
                                f"{trust.anchor[:12]} (at most {MAX_RANGE}); re-anchor with "
                                "--gate-signers and a head signed by one of them")
        todo = [(c, p) for c, p in todo if (trust.anchor, c) not in self._accepted]
        if not todo:
            return
        mainline = frozenset(c for c, _p in gitsig.rev_list(path, head, trust.anchor,
                                                             first_parent=True))
        for commit, parents in todo:  # oldest first: the message names the first bad one
            facts = gather(path, commit, parents, trust, gnupghome, load, mainline)
            refusal = judge(facts, trust)
            if refusal is not None:
                raise refusal.error()
            self._accepted.add((trust.anchor, commit))

    def _check_first(self, path: Path, head: str, gnupghome: str | None) -> None:
        """Nothing published yet: the head must be signed by a bootstrap signer; it
        vouches for its whole tree and history and becomes the first anchor."""
        sig = gitsig.read_signature(path, head, gnupghome)
        if not sig.good:
            raise CommitRefused(head, "", "unsigned" if sig.status == "N" else "bad-signature",
                                f"{sig.describe()}; the first commit this hub publishes must "
                                "be signed by a key listed in --gate-signers")
        if not sig.keys & self.bootstrap.admins:
            raise CommitRefused(head, "", "not-admin",
                                f"the first commit this hub publishes must be signed by a key "
                                f"listed in --gate-signers; key "
                                f"{sig.primary_key or sig.signing_key} is not")
