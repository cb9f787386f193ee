"""Follow a git branch: a local checkout (watchdog) or a remote (periodic fetch).

The only watchdog user. Called by ``reconciler.hub.daemon``, which passes
``on_head(Head)`` (it feeds ``Hub.follow_state`` and ``Hub.reconcile``).

Level-based: every pass reads the branch head and hands it to ``on_head``,
whether it moved or not; ``on_head`` returns the seconds until the next pass is
due at the latest (a retry or a refresh), and the follower sleeps until then,
until ``poll`` seconds passed, or until it is woken (a filesystem event),
whichever comes first. A burst of filesystem events costs one
``git rev-parse`` and one pure decision.

* ``LocalFollower`` watches ``.git/refs/heads/`` (loose refs), ``.git``
  itself (``packed-refs``, ``HEAD``) and, as a safety net, polls every
  ``poll`` seconds (a ref updated by ``git gc`` or on a network filesystem
  may not raise an inotify event).
* ``RemoteFollower`` keeps a bare mirror in ``cache_dir`` and runs
  ``git fetch`` every ``poll`` seconds; the publish pipeline reads commits
  straight from the mirror's object database. When a fetch fails, the
  mirror's last head is still reconciled and the failure is reported.

Which branch: ``branch=None`` follows the branch checked out in the local
checkout (``git symbolic-ref HEAD``; a bare repository's ``HEAD``), or the
remote's default branch (``git ls-remote --symref URL HEAD``). It is looked up
on each pass until found, then kept. A branch that cannot be read is a
``Head`` with ``commit=None`` and a ``problem`` that says why (logged once
per change, not per pass).

git runs as a subprocess (no shell; arguments are a list).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import ConfigError, FetchError, MeshopsError
from reconciler.hub.serve import redact

log = logging.getLogger(__name__)

GIT_TIMEOUT = 120.0


@dataclass(frozen=True)
class Head:
    """What one pass read: the branch followed (``None``: not known yet), its
    head commit (``None``: cannot be read) and, if something is wrong, why."""

    branch: str | None
    commit: str | None
    problem: str | None = None


OnHead = Callable[[Head], Awaitable["float | None"]]


def _git(args: list[str], cwd: str | None = None, timeout: float = GIT_TIMEOUT) -> str:
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    try:
        proc = subprocess.run(
            ["git", *args], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FetchError(f"git {args[0]}: {exc}") from exc
    if proc.returncode != 0:
        raise FetchError(f"git {args[0]} failed: {proc.stderr.strip()[:400]}")
    return proc.stdout.strip()


def is_remote(repo: str) -> bool:
    """A URL (``https://``, ``ssh://``, ``git@host:path``, ``file://``) versus a local path."""
    if "://" in repo:
        return True
    return ":" in repo and "@" in repo.split(":", 1)[0] and not os.path.exists(repo)


def resolve(git_dir_or_tree: str, branch: str) -> str | None:
    """The commit ``refs/heads/BRANCH`` points at, or ``None`` if the branch is missing."""
    try:
        return _git(["rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}"],
                    cwd=git_dir_or_tree, timeout=30)
    except FetchError:
        return None


def branches(git_dir_or_tree: str) -> list[str]:
    """The local branch names, sorted (empty when none or unreadable)."""
    try:
        out = _git(["for-each-ref", "--format=%(refname:short)", "refs/heads/"],
                   cwd=git_dir_or_tree, timeout=30)
    except FetchError:
        return []
    return sorted(line for line in out.splitlines() if line)


def checked_out_branch(git_dir_or_tree: str) -> str:
    """The branch ``HEAD`` names (a checkout's current branch, a bare
    repository's default branch). FetchError when ``HEAD`` is detached."""
    try:
        return _git(["symbolic-ref", "--quiet", "--short", "HEAD"], cwd=git_dir_or_tree,
                    timeout=30)
    except FetchError:
        raise FetchError(f"{git_dir_or_tree}: HEAD is detached, no branch is checked out; "
                         "check one out or pass --branch") from None


def remote_default_branch(url: str, cwd: str) -> str:
    """The branch a remote's ``HEAD`` points at (``git ls-remote --symref``)."""
    out = _git(["ls-remote", "--symref", url, "HEAD"], cwd=cwd)
    for line in out.splitlines():
        ref, _, name = line.partition("\t")
        if ref.startswith("ref: refs/heads/") and name == "HEAD":
            return ref.removeprefix("ref: refs/heads/")
    raise FetchError(f"{url}: the remote names no default branch (no HEAD); pass --branch")


def mirror_dir(cache_root: str, url: str) -> str:
    """Where the bare mirror of ``url`` lives (stable per URL)."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return str(Path(cache_root) / f"mirror-{digest}.git")


class _Follower:
    def __init__(self, path: str, branch: str | None, on_head: OnHead, poll: float) -> None:
        self.path, self.branch, self.on_head, self.poll = path, branch, on_head, poll
        self.head: str | None = None
        self.problem: str | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    async def _prepare(self) -> None:
        """Before reading the head: find the branch, fetch (remote)."""
        if self.branch is None:
            self.branch = await asyncio.to_thread(checked_out_branch, self.path)
            log.info("following branch %s (checked out in %s)", self.branch, self.path)

    def _missing(self, branch: str) -> str | None:
        """Why ``branch`` has no head (``None``: it exists after all)."""
        have = branches(self.path)
        if branch in have:
            return None
        listed = ", ".join(have[:10]) if have else "none"
        return (f"branch {branch!r} not found in {self.where()} (its branches: {listed}); "
                "pass --branch, or leave it out to follow the checked-out branch")

    def where(self) -> str:
        return self.path

    async def read_head(self) -> Head:
        """One look at the branch: its head, or why there is none."""
        problem = None
        try:
            await self._prepare()
        except FetchError as exc:
            problem = str(exc)
        commit = None
        if self.branch is not None:
            commit = await asyncio.to_thread(resolve, self.path, self.branch)
            if commit is None and problem is None:
                problem = await asyncio.to_thread(self._missing, self.branch)
            if commit is None and problem is None:  # created while we looked: read it again
                commit = await asyncio.to_thread(resolve, self.path, self.branch)
                problem = None if commit else f"branch {self.branch!r} cannot be read"
        self._note(problem)
        self.head = commit
        return Head(self.branch, commit, problem)

    def _note(self, problem: str | None) -> None:
        """Log a problem when it appears or changes, and once when it clears."""
        if problem == self.problem:
            return
        if problem is not None:  # URLs in git's messages may hold tokens: redacted
            log.warning("%s", redact(f"following {self.where()}: {problem}"))
        else:
            log.info("%s", redact(f"following {self.where()}: branch {self.branch} is readable"))
        self.problem = problem

    async def refresh(self) -> float | None:
        """One pass: read the head and reconcile it; the requeue delay."""
        return await self.on_head(await self.read_head())

    async def _run(self) -> None:
        while True:
            requeue: float | None = None
            try:
                requeue = await self.refresh()
            except MeshopsError as exc:  # on_head failed: keep following
                log.error("%s", redact(f"following {self.where()}: {exc} (again in {self.poll:g}s)"))
            timeout = self.poll if requeue is None else max(0.0, min(self.poll, requeue))
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="git-follower")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class LocalFollower(_Follower):
    """Watch a local checkout's refs with watchdog (plus a slow poll)."""

    def __init__(self, checkout: str, branch: str | None, on_head: OnHead, poll: float = 30.0):
        super().__init__(checkout, branch, on_head, poll)
        git_dir = Path(checkout) / ".git"
        if not git_dir.exists() and (Path(checkout) / "HEAD").exists():
            git_dir = Path(checkout)  # a bare repository
        if not git_dir.exists():
            raise ConfigError(f"--repo {checkout}: not a git checkout (no .git)")
        self.git_dir = git_dir
        self._observer: object | None = None

    async def start(self) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        loop = asyncio.get_running_loop()
        follower = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                path = os.fsdecode(event.src_path)
                dest = os.fsdecode(getattr(event, "dest_path", "") or "")
                if any(_relevant(p) for p in (path, dest) if p):
                    loop.call_soon_threadsafe(follower.wake)

        heads = self.git_dir / "refs" / "heads"
        heads.mkdir(parents=True, exist_ok=True)
        observer = Observer()
        observer.schedule(Handler(), str(heads), recursive=True)
        observer.schedule(Handler(), str(self.git_dir), recursive=False)  # packed-refs, HEAD
        observer.daemon = True
        observer.start()
        self._observer = observer
        await super().start()

    async def stop(self) -> None:
        observer = self._observer
        if observer is not None:
            observer.stop()  # type: ignore[attr-defined]
            await asyncio.to_thread(observer.join, 5)  # type: ignore[attr-defined]
        await super().stop()


def _relevant(path: str) -> bool:
    name = os.path.basename(path)
    return "/refs/heads" in path or name in ("packed-refs", "HEAD") or name.endswith(".lock")


class RemoteFollower(_Follower):
    """``git fetch`` a remote branch into a bare mirror every ``poll`` seconds."""

    def __init__(self, url: str, branch: str | None, on_head: OnHead, cache_root: str,
                 poll: float = 60.0) -> None:
        super().__init__(mirror_dir(cache_root, url), branch, on_head, poll)
        self.url = url

    def where(self) -> str:
        return self.url

    def _missing(self, branch: str) -> str | None:
        return (f"branch {branch!r} has not been fetched from {self.url} yet; pass --branch, "
                "or leave it out to follow the remote's default branch")

    def ensure_mirror(self) -> None:
        if not (Path(self.path) / "HEAD").exists():
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            _git(["init", "--bare", "--quiet", self.path])
        if self.branch is None:
            self.branch = remote_default_branch(self.url, self.path)
            log.info("following branch %s (the default branch of the remote)", self.branch)
        self.fetch()

    def fetch(self) -> None:
        refspec = f"+refs/heads/{self.branch}:refs/heads/{self.branch}"
        _git(["fetch", "--quiet", "--no-tags", self.url, refspec], cwd=self.path)

    async def _prepare(self) -> None:
        await asyncio.to_thread(self.ensure_mirror)
