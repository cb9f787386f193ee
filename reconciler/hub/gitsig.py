"""The hub's ``git`` command-line helpers: commit signatures, ranges, diffs, blobs.

Called by ``reconciler.hub.gate`` (the commit gate, which gathers its facts
here) and ``reconciler.hub.publish``. Apart from the enrollment service's
commits (``reconciler.hub.enroll``), this is the only hub module that runs the
``git`` command line; ``git`` itself calls ``gpg`` with ``GNUPGHOME`` set to
the hub's keyring, which must hold the owners', the admins' and the hub's
public keys.

``git log -1 --format=%G?%n%GF%n%GP`` gives the signature status (``G`` good,
``U`` good but of unknown trust; everything else is refused), the signing
(sub)key fingerprint and the primary key fingerprint. Either fingerprint may
match a ``User.pgp_fingerprint``.
"""

from __future__ import annotations

import os
import subprocess
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

    @property
    def keys(self) -> frozenset[str]:
        """The fingerprints this signature may be matched by (signing subkey, primary)."""
        return frozenset(k for k in (self.signing_key, self.primary_key) if k)

    def describe(self) -> str:
        return _STATUS.get(self.status, "unknown signature status " + self.status)


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


def _git(repo: str | os.PathLike[str], *args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            ["git", "-C", str(Path(repo)), *args], capture_output=True, timeout=60, check=False
        )
    except FileNotFoundError as exc:
        raise UsageError("git is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise PkiError(f"git {args[0]} timed out") from exc


def read_blob(repo: str | os.PathLike[str], rev: str, path: str, *,
              relative: bool = False) -> bytes | None:
    """The content of ``path`` at ``rev``, or None if it does not exist there.
    ``relative``: ``path`` is relative to ``repo`` (which may be a subdirectory of
    the git work tree), not to the top of the work tree."""
    proc = _git(repo, "cat-file", "blob", f"{rev}:./{path}" if relative else f"{rev}:{path}")
    return proc.stdout if proc.returncode == 0 else None


def _checked(repo: str | os.PathLike[str], *args: str) -> bytes:
    proc = _git(repo, *args)
    if proc.returncode != 0:
        raise UsageError(f"git {' '.join(args[:2])} failed in {repo}: "
                         f"{proc.stderr.decode('utf-8', 'replace').strip()[-300:]}")
    return proc.stdout


def rev_list(repo: str | os.PathLike[str], head: str, since: str | None, *,
             first_parent: bool = False) -> list[tuple[str, tuple[str, ...]]]:
    """Commits reachable from ``head`` and not from ``since`` (all of them when
    ``since`` is None), oldest first, each with its parents (first parent first).
    ``first_parent``: only the first-parent chain (what the branch itself went
    through, not what merges brought in)."""
    args = ["rev-list", "--reverse", "--parents"]
    if first_parent:
        args.append("--first-parent")
    args += [head] + ([f"^{since}"] if since else []) + ["--"]
    out = _checked(repo, *args).decode("ascii", "replace")
    rows = []
    for line in out.splitlines():
        ids = line.split()
        if ids:
            rows.append((ids[0], tuple(ids[1:])))
    return rows


def changed_paths(repo: str | os.PathLike[str], parent: str | None,
                  commit: str) -> tuple[tuple[str, str], ...]:
    """``(status, path)`` of every file ``commit`` changes against ``parent``
    (None: a root commit, against the empty tree); ``status`` is git's letter
    (A added, D deleted, M modified, T type changed). Renames are a delete and
    an add. Paths are relative to ``repo``; changes outside it are left out
    (``--relative``), since the loader never reads them."""
    base = [parent, commit] if parent else ["--root", commit]
    out = _checked(repo, "diff-tree", "-r", "-z", "--no-renames", "--no-commit-id",
                   "--relative", "--name-status", *base, "--")
    parts = out.split(b"\0")
    pairs = []
    for i in range(0, len(parts) - 1, 2):
        status = parts[i].decode("ascii", "replace")
        path = parts[i + 1].decode("utf-8", "surrogateescape")
        if status:
            pairs.append((status[0], path))
    return tuple(pairs)


def trailers(repo: str | os.PathLike[str], commit: str) -> dict[str, tuple[str, ...]]:
    """The trailers of ``commit``'s message (``Key: value`` lines of its last
    paragraph, as ``git interpret-trailers`` reads them), key -> values."""
    out = _checked(repo, "log", "-1", "--format=%(trailers:only=true,unfold=true)", commit,
                   "--").decode("utf-8", "replace")
    found: dict[str, list[str]] = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            found.setdefault(key.strip(), []).append(value.strip())
    return {k: tuple(v) for k, v in found.items()}


def resolve(repo: str | os.PathLike[str], rev: str) -> str | None:
    """The full commit id of ``rev``, or None when it does not resolve."""
    proc = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    return proc.stdout.decode().strip() if proc.returncode == 0 else None
