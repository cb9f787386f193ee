"""Following a branch: watchdog on a local checkout, periodic fetch of a remote."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from reconciler.hub.follow import (
    Head,
    LocalFollower,
    RemoteFollower,
    is_remote,
    mirror_dir,
    resolve,
)

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

    async def on_commit(head: Head) -> None:
        if head.commit and (not seen or seen[-1] != head.commit):
            seen.append(head.commit)

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

    async def on_commit(head: Head) -> None:
        if head.commit and (not seen or seen[-1] != head.commit):
            seen.append(head.commit)

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

    async def on_commit(head: Head) -> None:
        if head.commit and (not seen or seen[-1] != head.commit):
            seen.append(head.commit)

    async def go() -> None:
        follower = RemoteFollower(f"file://{tmp_path}/missing.git", "main", on_commit,
                                  str(tmp_path / "cache"), poll=0.1)
        await follower.start()
        await asyncio.sleep(0.5)
        assert follower._task is not None and not follower._task.done()
        await follower.stop()
        assert seen == []

    run(go())


# -- which branch: the checked-out one by default (issue 10, the first hour) ---------------

def _serve(repo: str, tmp_path: Path, branch: str | None = None, poll: float = 30) -> Any:
    from reconciler.hub.daemon import ServeConfig, start

    from .conftest_serve import FakePipeline, make_org

    return start(ServeConfig(repo=repo, branch=branch, listen="127.0.0.1:0",
                             db=f"sqlite:///{tmp_path}/hub.db", state_dir=str(tmp_path / "st"),
                             poll=poll, plain_http=True,
                             pipeline=FakePipeline([make_org("acme")])))


def _plain_init(path: Path, *branch: str) -> Path:
    """``git init`` as a user runs it (``-b NAME`` only when given), one commit."""
    path.mkdir()
    git(path, "init", "-q", *(["-b", branch[0]] if branch else []))
    commit(path, "first")
    return path


@pytest.mark.parametrize("branch", ["master", "main", None])
def test_serve_follows_the_checked_out_branch_by_default(tmp_path: Path,
                                                         branch: str | None) -> None:
    """``None``: whatever plain ``git init`` makes here (``master`` on Debian)."""
    repo = _plain_init(tmp_path / "r", *([branch] if branch else []))
    name = git(repo, "symbolic-ref", "--short", "HEAD")

    async def go() -> None:
        running = await _serve(str(repo), tmp_path)
        try:
            head = git(repo, "rev-parse", "HEAD")
            await wait_for(lambda: running.hub.snapshot is not None)
            doc = await running.hub.status_doc()
            assert doc["serving_commit"] == head and doc["branch"] == name
            assert doc["healthy"] is True and doc["follow_error"] is None
            second = await asyncio.to_thread(commit, repo, "second")
            await wait_for(lambda: running.hub.snapshot.commit == second, 5)
        finally:
            await running.stop()

    run(go())


@pytest.mark.parametrize("branch", ["master", "main"])
def test_serve_follows_the_remote_default_branch(tmp_path: Path, branch: str) -> None:
    upstream = _plain_init(tmp_path / "up", branch)

    async def go() -> None:
        running = await _serve(f"file://{upstream}", tmp_path, poll=0.2)
        try:
            await wait_for(lambda: running.hub.snapshot is not None)
            doc = await running.hub.status_doc()
            assert doc["branch"] == branch and doc["healthy"] is True
            assert doc["serving_commit"] == git(upstream, "rev-parse", "HEAD")
        finally:
            await running.stop()

    run(go())


def test_a_missing_branch_is_on_status_and_logged_once(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    repo = _plain_init(tmp_path / "r", "master")

    async def go() -> None:
        running = await _serve(str(repo), tmp_path, branch="main", poll=0.02)
        hub = running.hub
        try:
            await wait_for(lambda: hub.status.follow_error is not None)
            await asyncio.sleep(0.5)  # ~25 passes
            doc = await hub.status_doc()
            assert doc["branch"] == "main" and doc["branch_commit"] is None
            assert doc["healthy"] is False and doc["serving_commit"] is None
            assert "'main' not found" in doc["follow_error"]
            assert "its branches: master" in doc["follow_error"]
            assert "meshops_hub_branch_found 0.0" in hub.metrics.render().decode()
            # the branch appears: served, the problem clears
            await asyncio.to_thread(git, repo, "branch", "main")
            await wait_for(lambda: hub.snapshot is not None)
            doc = await hub.status_doc()
            assert doc["follow_error"] is None and doc["healthy"] is True
            assert "meshops_hub_branch_found 1.0" in hub.metrics.render().decode()
        finally:
            await running.stop()

    with caplog.at_level(logging.INFO, logger="reconciler.hub.follow"):
        run(go())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert sum("is readable" in r.getMessage() for r in caplog.records) == 1


def test_a_detached_head_without_branch_says_so(tmp_path: Path) -> None:
    repo = _plain_init(tmp_path / "r", "main")
    git(repo, "checkout", "-q", "--detach")

    async def go() -> None:
        running = await _serve(str(repo), tmp_path, poll=0.05)
        try:
            await wait_for(lambda: running.hub.status.follow_error is not None)
            doc = await running.hub.status_doc()
            assert "HEAD is detached" in doc["follow_error"] and "--branch" in doc["follow_error"]
            assert doc["branch"] is None and doc["healthy"] is False
        finally:
            await running.stop()

    run(go())


def test_a_remote_without_the_branch_is_on_status(tmp_path: Path) -> None:
    upstream = _plain_init(tmp_path / "up", "master")

    async def go() -> None:
        running = await _serve(f"file://{upstream}", tmp_path, branch="main", poll=0.1)
        try:
            await wait_for(lambda: running.hub.status.follow_error is not None)
            doc = await running.hub.status_doc()
            assert "main" in doc["follow_error"] and doc["healthy"] is False
        finally:
            await running.stop()

    run(go())
