"""``hub serve --repo relative/path``: the path is made absolute at start-up, so
enrollment pushes (git runs in a temporary worktree) reach the repository; a
push that fails anyway leaves its reason in the hub's log."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from reconciler.hub.daemon import ServeConfig, start
from reconciler.hub.enroll import Enrollment, GitFailed

from .conftest_serve import FakePipeline, make_org, run
from .test_serve_tls import git, init_repo, wait_for


def _push_from_a_worktree(enroll: Enrollment, repo: Path, tmp: Path, branch: str) -> None:
    """What an enrollment does: commit in a temporary worktree, push from there."""
    head = git(repo, "rev-parse", "HEAD")
    tree = tmp / "wt"
    git(repo, "worktree", "add", "--detach", "--quiet", str(tree), head)
    try:
        enroll._push(str(tree), head, head, branch, False)
    finally:
        git(repo, "worktree", "remove", "--force", str(tree))


def test_a_relative_repo_path_is_made_absolute(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    repo = init_repo(tmp_path / "repo")
    monkeypatch.chdir(tmp_path)

    async def go() -> Enrollment:
        running = await start(ServeConfig(
            repo="repo", listen="127.0.0.1:0", db=f"sqlite:///{tmp_path}/hub.db",
            state_dir=str(tmp_path / "state"), pipeline=FakePipeline([make_org("acme")]),
            plain_http=True))
        try:
            await wait_for(lambda: running.hub.snapshot is not None)
            assert running.enroll is not None
            return running.enroll
        finally:
            await running.stop()

    enroll = run(go())
    assert enroll.push_url == enroll.repo_path == str(repo)
    assert os.path.isabs(enroll.push_url)
    # pushed after the hub stopped: its inotify watch of refs/ is not part of this test
    _push_from_a_worktree(enroll, repo, tmp_path, "enroll/acme/new-1")
    assert git(repo, "rev-parse", "enroll/acme/new-1") == git(repo, "rev-parse", "HEAD")


def test_a_failed_push_logs_why(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    repo = init_repo(tmp_path / "repo")
    enroll = Enrollment(repo_path=str(repo), push_url=str(tmp_path / "missing.git"),
                        branch="main", served_commit=lambda: None)
    with caplog.at_level(logging.WARNING, logger="reconciler.hub.enroll"), \
            pytest.raises(GitFailed):
        _push_from_a_worktree(enroll, repo, tmp_path, "enroll/acme/new-2")
    assert "enrollment push of enroll/acme/new-2" in caplog.text
    assert "missing.git" in caplog.text and "does not appear to be a git repository" in \
        caplog.text


def test_store_watch_options_reach_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from reconciler.cli import build_parser
    from reconciler.hub import daemon

    seen: list[ServeConfig] = []
    monkeypatch.setattr(daemon, "run", lambda config: seen.append(config) or 0)
    parser = build_parser()
    for argv, expected in (
        ([], (0.5, 5.0, True)),
        (["--store-poll", "0.2", "--store-poll-listening", "10", "--no-store-listen"],
         (0.2, 10.0, False)),
    ):
        args = parser.parse_args(["hub", "serve", "--repo", "r", *argv])
        assert args.handler(args) == 0
        config = seen.pop()
        assert (config.store_poll, config.store_poll_listening, config.store_listen) == expected
    with pytest.raises(SystemExit):
        parser.parse_args(["hub", "serve", "--repo", "r", "--store-poll", "0"])
