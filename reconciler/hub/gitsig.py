"""The hub's ``git`` command-line helpers: commit signatures and blobs at a rev.

Called by ``reconciler.hub.publish`` when ``mesh.yaml`` says
``require_signed_commits: true``. This is the only hub module that runs the
``git`` command line; ``git`` itself calls ``gpg`` with ``GNUPGHOME`` set to
the hub's keyring, which must hold the org owners' public keys.

``git log -1 --format=%G?%n%GF%n%GP`` gives the signature status (``G`` good,
``U`` good but of unknown trust; everything else is refused), the signing
(sub)key fingerprint and the primary key fingerprint. Either fingerprint may
match a ``User.pgp_fingerprint``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import PkiError, UsageError

_STATUS = {
    "G": "good signature",
    "U": "good signature (key of unknown trust)",
    "B": "bad signature",
    "X": "good signature that has expired",
    "Y": "good signature made by an expired key",
    "R": "good signature made by a revoked key",
    "E": "signature cannot be checked (public key missing from the hub's GNUPGHOME?)",
    "N": "no signature",
}


@dataclass(frozen=True)
class CommitSignature:
    commit: str
    status: str
    signing_key: str
    primary_key: str

    @property
    def good(self) -> bool:
        return self.status in ("G", "U")


def read_signature(
    repo: str | os.PathLike[str], commit: str, gnupghome: str | None
) -> CommitSignature:
    """Ask git (and gpg) about ``commit``'s signature."""
    env = dict(os.environ)
    if gnupghome:
        env["GNUPGHOME"] = str(gnupghome)
    env["LC_ALL"] = "C"
    try:
        out = subprocess.run(
            ["git", "-C", str(Path(repo)), "log", "-1", "--format=%H%n%G?%n%GF%n%GP", commit, "--"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        ).stdout
    except FileNotFoundError as exc:
        raise UsageError("git is not installed; it is needed to check commit signatures") from exc
    except subprocess.CalledProcessError as exc:
        raise UsageError(f"cannot read commit {commit}: {exc.stderr.strip()}") from exc
    except subprocess.TimeoutExpired as exc:
        raise PkiError(f"checking the signature of {commit} timed out") from exc
    lines = (out.splitlines() + ["", "", "", ""])[:4]
    return CommitSignature(
        commit=lines[0].strip(),
        status=lines[1].strip() or "N",
        signing_key=lines[2].strip().upper(),
        primary_key=lines[3].strip().upper(),
    )


def require_signed(
    repo: str | os.PathLike[str],
    commit: str,
    allowed: Collection[str],
    gnupghome: str | None,
) -> CommitSignature:
    """Return the signature of ``commit`` if it is good and by an ``allowed`` fingerprint.

    Raises ``PkiError`` naming the commit and why it is refused."""
    if not allowed:
        raise PkiError(
            f"commit {commit[:12]}: require_signed_commits is on but no org owner has a "
            "pgp_fingerprint; add one to an owner's user file"
        )
    sig = read_signature(repo, commit, gnupghome)
    if not sig.good:
        raise PkiError(
            f"commit {commit[:12]} refused: {_STATUS.get(sig.status, 'unknown status ' + sig.status)}"
        )
    allowed_up = {a.upper() for a in allowed}
    if sig.signing_key not in allowed_up and sig.primary_key not in allowed_up:
        raise PkiError(
            f"commit {commit[:12]} refused: signed by key {sig.primary_key or sig.signing_key}, "
            "which is not an org owner's pgp_fingerprint"
        )
    return sig


def _git(repo: str | os.PathLike[str], *args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            ["git", "-C", str(Path(repo)), *args], capture_output=True, timeout=60, check=False
        )
    except FileNotFoundError as exc:
        raise UsageError("git is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise PkiError(f"git {args[0]} timed out") from exc


def read_blob(repo: str | os.PathLike[str], rev: str, path: str) -> bytes | None:
    """The content of ``path`` at ``rev``, or None if it does not exist there."""
    proc = _git(repo, "cat-file", "blob", f"{rev}:{path}")
    return proc.stdout if proc.returncode == 0 else None


def resolve(repo: str | os.PathLike[str], rev: str) -> str | None:
    """The full commit id of ``rev``, or None when it does not resolve."""
    proc = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    return proc.stdout.decode().strip() if proc.returncode == 0 else None
