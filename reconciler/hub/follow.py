"""Follow a git branch: a local checkout (watchdog) or a remote (periodic fetch).

The only watchdog user. Called by ``reconciler.hub.serve.run``, which passes
``on_commit(rev)`` (``Hub.reconcile``). Both followers are level-based: each
wake-up re-reads the branch head and calls ``on_commit`` only when it moved,
so a burst of filesystem events costs one ``git rev-parse``.

* ``LocalFollower`` watches ``.git/refs/heads/`` (loose refs), ``.git``
  itself (``packed-refs``, ``HEAD``) and, as a safety net, polls every
  ``poll`` seconds (a ref updated by ``git gc`` or on a network filesystem
  may not raise an inotify event).
* ``RemoteFollower`` keeps a bare mirror in ``cache_dir`` and runs
  ``git fetch`` every ``poll`` seconds; the publish pipeline reads commits
  straight from the mirror's object database.

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
from pathlib import Path

from reconciler.errors import ConfigError, FetchError

log = logging.getLogger(__name__)

OnCommit = Callable[[str], Awaitable[object]]
GIT_TIMEOUT = 120.0


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


def mirror_dir(cache_root: str, url: str) -> str:
    """Where the bare mirror of ``url`` lives (stable per URL)."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return str(Path(cache_root) / f"mirror-{digest}.git")


class _Follower:
    def __init__(self, path: str, branch: str, on_commit: OnCommit, poll: float) -> None:
        self.path, self.branch, self.on_commit, self.poll = path, branch, on_commit, poll
        self.head: str | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    async def refresh(self) -> None:
        """Re-read the branch head; publish it if it moved."""
        rev = await asyncio.to_thread(resolve, self.path, self.branch)
        if rev is None:
            log.warning("branch %s not found in %s", self.branch, self.path)
            return
        if rev != self.head:
            self.head = rev
            await self.on_commit(rev)

    async def _step(self) -> None:
        await self.refresh()

    async def _run(self) -> None:
        while True:
            try:
                await self._step()
            except FetchError as exc:
                log.error("following %s: %s (retrying in %gs)", self.branch, exc, self.poll)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll)
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

    def __init__(self, checkout: str, branch: str, on_commit: OnCommit, poll: float = 30.0):
        super().__init__(checkout, branch, on_commit, poll)
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

    def __init__(self, url: str, branch: str, on_commit: OnCommit, cache_root: str,
                 poll: float = 60.0) -> None:
        super().__init__(mirror_dir(cache_root, url), branch, on_commit, poll)
        self.url = url

    def ensure_mirror(self) -> None:
        if not (Path(self.path) / "HEAD").exists():
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            _git(["init", "--bare", "--quiet", self.path])
        self.fetch()

    def fetch(self) -> None:
        refspec = f"+refs/heads/{self.branch}:refs/heads/{self.branch}"
        _git(["fetch", "--quiet", "--no-tags", self.url, refspec], cwd=self.path)

    async def _step(self) -> None:
        await asyncio.to_thread(self.ensure_mirror)
        await self.refresh()
