"""Following a branch: watchdog on a local checkout, periodic fetch of a remote."""

from __future__ import annotations

import asyncio
from pathlib import Path

from reconciler.hub.follow import LocalFollower, RemoteFollower, is_remote, mirror_dir, resolve

from .conftest_serve import run
from .test_serve_tls import commit, git, init_repo, wait_for


def test_is_remote() -> None:
    assert is_remote("https://git.example.org/org.git")
    assert is_remote("git@git.example.org:org/repo.git")
    assert is_remote("file:///srv/repo.git")
    assert not is_remote("/srv/org-repo")
    assert not is_remote("relative/dir")


def test_resolve_missing_branch_is_none(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "r")
    assert resolve(str(repo), "main") == git(repo, "rev-parse", "HEAD")
    assert resolve(str(repo), "nope") is None


def test_local_follower_sees_commits_through_watchdog(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "r")
    seen: list[str] = []

    async def on_commit(rev: str) -> None:
        seen.append(rev)

    async def go() -> None:
        follower = LocalFollower(str(repo), "main", on_commit, poll=600)  # poll: never
        await follower.start()
        try:
            await wait_for(lambda: len(seen) == 1)
            assert seen[0] == git(repo, "rev-parse", "HEAD")
            second = await asyncio.to_thread(commit, repo, "two")
            await wait_for(lambda: len(seen) == 2, 5)
            assert seen[1] == second
            # a commit on another branch does not publish anything
            await asyncio.to_thread(git, repo, "checkout", "-q", "-b", "other")
            await asyncio.to_thread(commit, repo, "three")
            await asyncio.sleep(0.5)
            assert len(seen) == 2
            # a packed ref update (git pack-refs) of main is still seen
            await asyncio.to_thread(git, repo, "checkout", "-q", "main")
            fourth = await asyncio.to_thread(commit, repo, "four")
            await asyncio.to_thread(git, repo, "pack-refs", "--all")
            await wait_for(lambda: seen[-1] == fourth, 5)
        finally:
            await follower.stop()

    run(go())


def test_remote_follower_fetches_on_the_poll_interval(tmp_path: Path) -> None:
    upstream = init_repo(tmp_path / "up")
    seen: list[str] = []

    async def on_commit(rev: str) -> None:
        seen.append(rev)

    async def go() -> None:
        url = f"file://{upstream}"
        follower = RemoteFollower(url, "main", on_commit, str(tmp_path / "cache"), poll=0.3)
        await follower.start()
        try:
            await wait_for(lambda: len(seen) == 1)
            assert seen[0] == git(upstream, "rev-parse", "HEAD")
            mirror = Path(mirror_dir(str(tmp_path / "cache"), url))
            assert (mirror / "HEAD").exists() and not (mirror / ".git").exists()  # bare
            second = await asyncio.to_thread(commit, upstream, "two")
            await wait_for(lambda: len(seen) == 2, 5)
            assert seen[1] == second
            assert resolve(str(mirror), "main") == second
        finally:
            await follower.stop()

    run(go())


def test_remote_follower_survives_an_unreachable_remote(tmp_path: Path) -> None:
    seen: list[str] = []

    async def on_commit(rev: str) -> None:
        seen.append(rev)

    async def go() -> None:
        follower = RemoteFollower(f"file://{tmp_path}/missing.git", "main", on_commit,
                                  str(tmp_path / "cache"), poll=0.1)
        await follower.start()
        await asyncio.sleep(0.5)
        assert follower._task is not None and not follower._task.done()
        await follower.stop()
        assert seen == []

    run(go())
