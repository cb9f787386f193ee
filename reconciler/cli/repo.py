"""``meshops validate [REPO] [--rev REV] [--format text|json|github]``.

Loads the org repository through ``reconciler.config.load`` and prints every
problem: one ``file:line: CODE: message (fix: remedy)`` line each (text),
GitHub Actions ``::error`` annotations (github), or one JSON object (json).
Exit codes: 0 valid, 1 invalid, 2 cannot run (not a repository, bad revision).

Also here: ``load_explained``, used by ``validate``, ``plan`` and ``device add``.
When a repository or revision cannot be read, it says why and names the fix: the
org repository below the directory given (``meshops plan . --base origin/main``
in a checkout that holds ``example-repo/``), a missing remote or remote branch,
a shallow clone, a repository without commits, a path that did not exist yet.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reconciler import structs

if TYPE_CHECKING:
    from reconciler.config.loader import LoadResult


def register(sub: Any) -> None:
    p = sub.add_parser("validate", help="check an org repository: schema, semantics, "
                       "policy tests",
                       description="Check an org repository (schema, semantic checks, every "
                       "policy test) and report all problems with file:line. Exit 0 valid, "
                       "1 invalid, 2 cannot run.")
    p.add_argument("repo", nargs="?", default=".", help="repository directory (default: .)")
    p.add_argument("--rev", help="validate this git revision (read from the object database, "
                   "no checkout) instead of the working tree")
    p.add_argument("--format", choices=("text", "json", "github"), default="text",
                   help="output format (default: text)")
    p.set_defaults(handler=validate)


def _github_escape(text: str, prop: bool = False) -> str:
    # https://github.com/actions/toolkit/blob/main/packages/core/src/command.ts
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def _prefixed(repo: str, file: str) -> str:
    """File path as seen from the current directory (GitHub resolves from the checkout)."""
    if repo in ("", "."):
        return file
    return f"{repo.rstrip('/')}/{file}"


def validate(args: argparse.Namespace) -> int:
    rev = f" --rev {args.rev}" if args.rev else ""
    result = load_explained(args.repo, args.rev,
                            redo=lambda p: f"meshops validate {p}{rev}")  # fmt: skip
    if result.repo is not None:  # trust-root signatures: pki sits above config
        from reconciler.config import LoadResult
        from reconciler.hub.rotation import chain_problems

        found = chain_problems(result.repo)
        if found:
            result = LoadResult(None, tuple(found), result.commit)
    problems = result.problems
    if result.repo is not None:  # warnings (exit code unchanged): devices expiring soon
        import time

        from reconciler.config.expiry import expiry_warnings

        problems = (*problems, *expiry_warnings(result.repo, time.time()))
    if args.format == "json":
        print(json.dumps({"valid": result.valid, "commit": result.commit,
                          "problems": [p.as_dict() for p in problems]}, indent=2))
    elif args.format == "github":
        for p in problems:
            file = _github_escape(_prefixed(args.repo, p.file), prop=True)
            text = f"{p.message} (fix: {p.remedy})" if p.remedy else p.message
            level = "warning" if p.severity == "warning" else "error"
            print(f"::{level} file={file},line={p.line},title={_github_escape(p.code, True)}::"
                  f"{_github_escape(text)}")
        if result.valid:
            print(f"meshops validate: {args.repo} is valid")
    else:
        for p in problems:
            print(f"warning: {p}" if p.severity == "warning" else str(p))
        where = args.repo + (f" at {args.rev}" if args.rev else "")
        if result.repo is not None:
            orgs = result.repo.orgs
            devices = sum(len(o.devices) for o in orgs.values())
            print(f"{where}: valid ({len(orgs)} org(s), {devices} device(s))")
        else:
            files = len({p.file for p in problems})
            print(f"{where}: {len(problems)} problem(s) in {files} file(s)")
    return 0 if result.valid else 1


# -- why a repository or revision cannot be read, and what to do -----------------------------
#
# config.load raises UsageError with what went wrong; the commands below (validate, plan,
# device add) call load_explained, which keeps the happy path untouched and, only on that
# error, looks at the directory and the git repository around it to name the fix. The
# facts come from the git CLI (read-only plumbing commands), not gitpython: gitpython
# stays owned by reconciler.config.source, and this is a diagnosis, not a read of the repo.

SKIP_DIRS = frozenset({".git", ".venv", "venv", "node_modules", "__pycache__", ".tox"})


@dataclass(frozen=True)
class GitFacts:
    """What the git CLI says about the repository around a path (``top`` None: none)."""

    top: str | None = None
    refused: str = ""  # git's own refusal (e.g. "dubious ownership"), when it gave one
    has_commits: bool = False
    remotes: tuple[str, ...] = ()
    branches: tuple[str, ...] = ()  # local branches
    remote_branches: tuple[str, ...] = ()  # "origin/main", without the "origin/HEAD" alias
    shallow: bool = False
    rev_ok: bool = False  # the revision names a commit
    path_at_rev: bool = False  # the path (relative to top) is a directory at that commit
    repo_at_rev: bool = False  # it holds mesh.yaml or orgs/ at that commit


@dataclass(frozen=True)
class DirFacts:
    """What the file system says about the directory given."""

    is_dir: bool = False
    repo_files: bool = False  # it holds mesh.yaml or orgs/ (in the working tree)
    below: tuple[str, ...] = ()  # repos_below(path)
    absolute: str = ""


def gather_dir(path: str) -> DirFacts:
    if not os.path.isdir(path):
        return DirFacts(absolute=os.path.abspath(path))
    return DirFacts(
        is_dir=True,
        repo_files=os.path.isfile(os.path.join(path, "mesh.yaml"))
        or os.path.isdir(os.path.join(path, "orgs")),
        below=tuple(repos_below(path)),
        absolute=os.path.abspath(path),
    )


def repos_below(path: str, depth: int = 2) -> list[str]:
    """Directories under ``path`` (at most ``depth`` levels, hidden ones skipped) that
    hold a mesh.yaml: the repository the user probably meant. Sorted, as typed paths."""
    found: list[str] = []

    def walk(directory: str, level: int) -> None:
        try:
            with os.scandir(directory) as it:
                subdirs = sorted(e.path for e in it if e.is_dir(follow_symlinks=False)
                                 and not e.name.startswith(".") and e.name not in SKIP_DIRS)
        except OSError:
            return
        for sub in subdirs:
            if os.path.isfile(os.path.join(sub, "mesh.yaml")):
                found.append(os.path.normpath(sub))
            elif level < depth:
                walk(sub, level + 1)

    walk(path, 1)
    return found


def _git(path: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    return subprocess.run(["git", "-C", path, *args], capture_output=True, text=True,
                          env=env, timeout=30, check=False)  # fmt: skip


def gather_git(path: str, rev: str | None) -> GitFacts:
    """Ask the git CLI about ``path`` and ``rev``; never raises (no git: ``top`` None)."""
    try:
        top = _git(path, "rev-parse", "--show-toplevel")
        if top.returncode != 0:
            refused = top.stderr.strip().splitlines()
            return GitFacts(refused=refused[0] if refused else "")
        prefix = _git(path, "rev-parse", "--show-prefix").stdout.strip()
        refs = _git(path, "for-each-ref", "--format=%(refname)", "refs/heads", "refs/remotes")
        names = refs.stdout.split()
        facts = GitFacts(
            top=top.stdout.strip(),
            has_commits=_git(path, "rev-parse", "--verify", "-q", "HEAD").returncode == 0,
            remotes=tuple(_git(path, "remote").stdout.split()),
            branches=tuple(n[len("refs/heads/"):] for n in names if n.startswith("refs/heads/")),
            remote_branches=tuple(n[len("refs/remotes/"):] for n in names
                                  if n.startswith("refs/remotes/") and not n.endswith("/HEAD")),
            shallow=_git(path, "rev-parse", "--is-shallow-repository").stdout.strip() == "true",
        )
        if rev is None or rev.startswith("-"):
            return facts
        ok = _git(path, "rev-parse", "--verify", "-q", f"{rev}^{{commit}}").returncode == 0
        here = f"{rev}:{prefix}"
        at_rev = ok and _git(path, "cat-file", "-e", here).returncode == 0
        repo_at_rev = at_rev and any(
            _git(path, "cat-file", "-e", f"{here}{name}").returncode == 0
            for name in ("mesh.yaml", "orgs"))
        return structs.replace(facts, rev_ok=ok, path_at_rev=at_rev,
                                   repo_at_rev=repo_at_rev)  # fmt: skip
    except (OSError, subprocess.SubprocessError):  # no git binary, or it hung
        return GitFacts()


def explain(path: str, rev: str | None, *, where: DirFacts, git: GitFacts | None,
            redo: Callable[[str], str]) -> str | None:
    """PURE: a message naming the problem and its fix, or None when nothing is known.

    ``where`` is ``gather_dir(path)``, ``git`` is ``gather_git(path, rev)`` (None when
    ``rev`` is None: git is not asked), ``redo(p)`` the user's command with ``p`` as
    the repository, for the fix line."""
    below = where.below
    suggest = (f"meshops repositories below it: {', '.join(below)}; run `{redo(below[0])}`"
               if below else "")
    if not where.is_dir:
        return (f"{path} is not a directory\n  fix: pass the org repository's directory "
                "(the one that holds mesh.yaml)")
    if rev is None:
        if where.repo_files:
            return None
        return (f"{path} is not a meshops repository (no mesh.yaml, no orgs/)\n  fix: "
                + (suggest or "run it in the org repository (the directory that holds "
                   "mesh.yaml); docs/repo-format.md describes one"))
    assert git is not None
    if git.top is None:
        why = f" ({git.refused})" if git.refused else ""
        fix = (f"run `git config --global --add safe.directory {where.absolute}`"
               if "dubious ownership" in git.refused
               else "make it one (`git init && git add -A && git commit -m init`), or "
               "compare directories of a repository that has the history")
        return (f"{path} is not inside a git repository{why}, so revision {rev!r} "
                f"cannot be read\n  fix: {fix}")
    if not git.has_commits:
        return (f"the git repository {git.top} has no commits yet, so {rev!r} does not exist"
                "\n  fix: commit first (`git add -A && git commit -m init`)")
    if not git.rev_ok:
        return f"revision {rev!r} does not resolve to a commit in {git.top}\n  fix: " + _rev_fix(
            rev, git)
    if not git.path_at_rev:
        return (f"{path} does not exist at revision {rev!r} (it was added or moved after "
                f"it)\n  fix: pick a revision that has it (`git log --oneline -- {path}`)")
    if not git.repo_at_rev:
        return (f"{path} at revision {rev!r} is not a meshops repository (no mesh.yaml, no "
                "orgs/ in that commit)\n  fix: "
                + (suggest or "pass the directory that holds mesh.yaml, or a revision "
                   "where it does"))
    return None


def _rev_fix(rev: str, git: GitFacts) -> str:
    local = ", ".join(git.branches[:8]) or "none"
    remote_name, slash, branch = rev.partition("/")
    if slash and remote_name and not git.remotes and rev not in git.branches:
        return (f"this repository has no remote, so there is no {rev!r}. Compare with a local "
                f"branch or commit instead (local branches: {local}; e.g. `--base HEAD~1`), "
                f"or add the remote: `git remote add {remote_name} URL && git fetch "
                f"{remote_name}`")
    if slash and remote_name in git.remotes:
        theirs = [b for b in git.remote_branches if b.startswith(remote_name + "/")]
        shallow = (" This is a shallow clone: in GitHub Actions, set `fetch-depth: 0` on "
                   "actions/checkout." if git.shallow else "")
        return (f"remote {remote_name!r} has no branch {branch!r} here (known: "
                f"{', '.join(theirs[:8]) or 'none fetched'}). Run `git fetch {remote_name} "
                f"{branch}`, or pick one of those.{shallow}")
    if slash and git.remotes and remote_name not in git.remotes and rev not in git.branches:
        return (f"there is no remote {remote_name!r} (remotes: {', '.join(git.remotes)}); "
                f"use one of them, or a local branch ({local})")
    return f"pass a branch, tag or commit that exists (local branches: {local}; or HEAD~1)"


def load_explained(path: str | os.PathLike[str], rev: str | None, *,
                   redo: Callable[[str], str]) -> LoadResult:
    """``reconciler.config.load(path, rev)``; a ``UsageError`` from it is re-raised with
    ``explain``'s message (problem and fix) when the diagnosis finds one."""
    from reconciler.config import load
    from reconciler.errors import UsageError

    try:
        return load(path, rev)
    except UsageError as exc:
        text = os.fspath(path)
        where = gather_dir(text)
        git = gather_git(text, rev) if rev is not None and where.is_dir else None
        message = explain(text, rev, where=where, git=git, redo=redo)
        if message is None:
            raise
        raise UsageError(message) from exc
