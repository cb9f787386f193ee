"""Level-based publishing (issue 9): every pass reconciles the branch head.

``decide`` is tested as a pure table; ``Hub.reconcile`` with an injected clock
(no sleeping): the c1/c2 case where c2 fails temporarily and then succeeds on
a retry, a permanent failure that stays until c3, the backoff schedule, the
refresh of the served commit that must not hide a failing head, and what
``/v1/status`` and ``/metrics`` say meanwhile. The last test runs the real
follower on a real git checkout: the retry happens without any new commit or
filesystem event.
"""

from __future__ import annotations

import logging
import re
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from reconciler.hub.api import make_app
from reconciler.hub.feedstore import FeedStore
from reconciler.hub.follow import Head, LocalFollower
from reconciler.hub.serve import Decision, Failure, Hub, decide, retry_delay

from .conftest_serve import NOW, FakePipeline, make_org, run
from .test_serve_tls import git, init_repo, wait_for

REFRESH = 3600.0


def _failure(commit: str, retry_at: float | None, kind: str = "temporary") -> Failure:
    return Failure(commit, kind, "FetchError", "boom", NOW, 1, retry_at)


@pytest.mark.parametrize(("head", "serving", "failure", "refresh_at", "expected"), [
    # a new head is built
    ("c2", "c1", None, NOW + 10, Decision("c2")),
    ("c1", None, None, None, Decision("c1")),
    # the head is served: nothing until the refresh is due, then the served commit
    ("c1", "c1", None, NOW + 10, Decision(None, requeue=10.0)),
    ("c1", "c1", None, NOW, Decision("c1", refresh=True)),
    # a temporary failure of the head: wait for retry_at, then build it again
    ("c2", "c1", _failure("c2", NOW + 4), NOW + 10, Decision(None, requeue=4.0)),
    ("c2", "c1", _failure("c2", NOW), NOW + 10, Decision("c2")),
    # ...and a refresh that is due comes first while the retry is not
    ("c2", "c1", _failure("c2", NOW + 4), NOW - 1, Decision("c1", refresh=True)),
    # a permanent failure of the head: never again for this commit, refreshes go on
    ("c2", "c1", _failure("c2", None, "permanent"), NOW + 10, Decision(None, requeue=10.0)),
    ("c2", None, _failure("c2", None, "permanent"), None, Decision(None)),
    # a failure of an older commit does not hold a newer head back
    ("c3", "c1", _failure("c2", None, "permanent"), NOW + 10, Decision("c3")),
    ("c3", "c1", _failure("c2", NOW + 100), NOW + 10, Decision("c3")),
    # the branch cannot be read: keep refreshing what is served
    (None, "c1", None, NOW + 10, Decision(None, requeue=10.0)),
    (None, "c1", None, NOW, Decision("c1", refresh=True)),
    (None, None, None, None, Decision(None)),
])
def test_decide(head: str | None, serving: str | None, failure: Failure | None,
                refresh_at: float | None, expected: Decision) -> None:
    assert decide(head, serving, failure, refresh_at, NOW) == expected


def test_retry_delay_starts_at_the_hint_doubles_and_is_capped() -> None:
    assert [retry_delay(5, n, cap=60) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]
    assert retry_delay(0.0, 1) == 1.0  # at least the floor
    assert retry_delay(30, 1, cap=10) == 10
    assert retry_delay(5, 10_000, cap=300) == 300  # no overflow after many failures


class World:
    def __init__(self, tmp: Path) -> None:
        self.acme = make_org("acme")
        self.laptop = self.acme.add_device("laptop")
        self.pipeline = FakePipeline([self.acme])
        self.clock = [NOW]
        self.db = f"sqlite:///{tmp}/hub.db"

    def hub(self) -> Hub:
        return Hub(pipeline=self.pipeline, store=FeedStore(self.db), now=lambda: self.clock[0],
                   refresh_every=REFRESH, retry_cap=60.0)

    def tick(self, seconds: float) -> None:
        self.clock[0] += seconds


@asynccontextmanager
async def serving(w: World):
    hub = w.hub()
    await hub.start()
    async with TestClient(TestServer(make_app(hub))) as c:
        yield hub, c
    await hub.close()


async def status(c: TestClient) -> dict[str, Any]:
    return await (await c.get("/v1/status")).json()


async def metrics(c: TestClient) -> str:
    return await (await c.get("/metrics")).text()


def sample(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, name
    return float(found.group(1))


def failure_series(text: str) -> list[str]:
    return re.findall(r"^meshops_hub_publish_failure\{.*$", text, re.MULTILINE)


def test_c2_fails_temporarily_stays_visible_and_is_retried_until_it_succeeds(
        tmp_path: Path) -> None:
    """The case from issue 9: c1, c2 fails with a TemporaryError, the refresh
    rebuilds c1. The failure of c2 must neither vanish nor stop c2's retries."""
    async def go() -> None:
        w = World(tmp_path)
        w.pipeline.flaky["c2"] = 2  # two temporary failures, then c2 builds
        async with serving(w) as (hub, c):
            assert await hub.reconcile("c1") == REFRESH
            requeue = await hub.reconcile("c2")
            assert requeue == 5.0  # the FetchError's delay
            doc = await status(c)
            assert doc["serving_commit"] == "c1" and doc["branch_commit"] == "c2"
            assert doc["healthy"] is False and "gpg-agent did not answer" in doc["last_error"]
            assert doc["failing_commit"] == "c2" and doc["error_kind"] == "temporary"
            assert doc["error_class"] == "FetchError" and doc["attempts"] == 1
            assert doc["next_retry_at"] == NOW + 5 and doc["last_error_at"] == NOW
            text = await metrics(c)
            assert "meshops_hub_publish_failing 1.0" in text
            assert failure_series(text) == [
                'meshops_hub_publish_failure{commit="c2",error="FetchError",kind="temporary"} 1.0']
            assert sample(text, "meshops_hub_publish_next_retry_timestamp") == NOW + 5

            # passes before the retry is due build nothing and say when to come back
            w.tick(3)
            assert await hub.reconcile("c2") == 2.0
            assert w.pipeline.builds == ["c1", "c2"]

            # the refresh of c1 comes due while c2 waits: c1 is re-published, the
            # failure of c2 stays (this is where it used to vanish)
            w.tick(2)  # the retry is due: the second attempt fails, backoff doubles
            assert await hub.reconcile("c2") == 10.0
            doc = await status(c)
            assert doc["attempts"] == 2 and doc["next_retry_at"] == NOW + 15
            w.tick(REFRESH)  # refresh of c1 and the retry of c2 are both due
            await hub.reconcile("c2")
            assert w.pipeline.builds == ["c1", "c2", "c2", "c2"]
            doc = await status(c)
            assert doc["serving_commit"] == "c2" and doc["healthy"] is True
            assert doc["last_error"] is None and doc["failing_commit"] is None
            assert doc["attempts"] == 0 and doc["next_retry_at"] is None
            text = await metrics(c)
            assert "meshops_hub_publish_failing 0.0" in text and failure_series(text) == []
            assert "meshops_hub_publish_retries_total 2.0" in text
    run(go())


def test_refresh_of_the_last_good_commit_does_not_hide_a_failing_head(tmp_path: Path) -> None:
    async def go() -> None:
        w = World(tmp_path)
        w.pipeline.flaky["c2"] = 100
        w.pipeline.flaky_delay = 5000.0  # the retry of c2 is due after the refresh of c1
        async with serving(w) as (hub, c):
            hub.retry_cap = 10 * REFRESH
            await hub.reconcile("c1")
            await hub.reconcile("c2")
            w.tick(REFRESH)
            assert await hub.reconcile("c2") == 5000.0 - REFRESH
            assert w.pipeline.builds == ["c1", "c2", "c1"]  # the sequence of issue 9
            doc = await status(c)
            assert doc == {**doc, "serving_commit": "c1", "branch_commit": "c2",
                           "healthy": False, "failing_commit": "c2"}
            assert doc["last_error"] is not None
    run(go())


def test_backoff_schedule_of_a_commit_that_keeps_failing(tmp_path: Path) -> None:
    async def go() -> None:
        w = World(tmp_path)
        w.pipeline.flaky["c2"] = 1000
        async with serving(w) as (hub, c):
            await hub.reconcile("c1")
            waits = []
            for _ in range(6):
                requeue = await hub.reconcile("c2")
                assert requeue is not None
                waits.append(requeue)
                w.tick(requeue)
            assert waits == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]  # capped at retry_cap
            assert (await status(c))["attempts"] == 6
            assert w.pipeline.builds.count("c2") == 6
    run(go())


def test_permanent_failure_stays_until_a_newer_commit_replaces_it(tmp_path: Path) -> None:
    async def go() -> None:
        w = World(tmp_path)
        w.pipeline.bad |= {"c2", "c3"}
        async with serving(w) as (hub, c):
            await hub.reconcile("c1")
            assert await hub.reconcile("c2") == REFRESH  # only the refresh is planned
            for _ in range(5):  # not retried for the same commit, however often we look
                w.tick(600)
                await hub.reconcile("c2")
            assert w.pipeline.builds == ["c1", "c2"]
            doc = await status(c)
            assert doc["failing_commit"] == "c2" and doc["error_kind"] == "permanent"
            assert doc["error_class"] == "ValidationError" and "bad.yaml:3" in doc["last_error"]
            assert doc["next_retry_at"] is None and doc["healthy"] is False
            assert failure_series(await metrics(c)) == [
                ('meshops_hub_publish_failure{commit="c2",error="ValidationError",'
                'kind="permanent"} 1.0')]
            # still visible after the refresh of c1
            w.tick(REFRESH)
            await hub.reconcile("c2")
            assert w.pipeline.builds == ["c1", "c2", "c1"]
            assert (await status(c))["failing_commit"] == "c2"
            # c3 fails too: its error replaces c2's
            await hub.reconcile("c3")
            doc = await status(c)
            assert doc["failing_commit"] == "c3" and doc["branch_commit"] == "c3"
            assert len(failure_series(await metrics(c))) == 1
            # c4 is good: everything clears
            await hub.reconcile("c4")
            doc = await status(c)
            assert doc["serving_commit"] == "c4" and doc["healthy"] is True
            assert doc["last_error"] is None and failure_series(await metrics(c)) == []
    run(go())


def test_a_branch_reset_to_the_served_commit_clears_the_failure(tmp_path: Path) -> None:
    async def go() -> None:
        w = World(tmp_path)
        w.pipeline.bad.add("c2")
        async with serving(w) as (hub, c):
            await hub.reconcile("c1")
            await hub.reconcile("c2")
            assert (await status(c))["failing_commit"] == "c2"
            assert await hub.reconcile("c1") == REFRESH  # git reset --hard c1; push --force
            doc = await status(c)
            assert doc["healthy"] is True and doc["failing_commit"] is None
            assert w.pipeline.builds == ["c1", "c2"] and failure_series(await metrics(c)) == []
    run(go())


def test_a_crash_is_retried_and_its_traceback_logged_once(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        w = World(tmp_path)
        w.pipeline.crash.add("c2")
        async with serving(w) as (hub, c):
            await hub.reconcile("c1")
            for _ in range(3):
                requeue = await hub.reconcile("c2")
                assert requeue is not None
                w.tick(requeue)
            doc = await status(c)
            assert doc["error_kind"] == "internal" and doc["error_class"] == "RuntimeError"
            assert doc["attempts"] == 3 and "stage blew up" in doc["last_error"]
            w.pipeline.crash.clear()
            await hub.reconcile("c2")
            assert (await status(c))["healthy"] is True
    with caplog.at_level(logging.ERROR, logger="reconciler.hub.serve"):
        run(go())
    assert sum(1 for r in caplog.records if r.exc_info) == 1


def test_a_failed_refresh_of_the_served_head_is_shown_and_retried(tmp_path: Path) -> None:
    async def go() -> None:
        w = World(tmp_path)
        async with serving(w) as (hub, c):
            await hub.reconcile("c1")
            w.pipeline.flaky["c1"] = 1
            w.tick(REFRESH)
            assert await hub.reconcile("c1") == 5.0
            doc = await status(c)
            assert doc["serving_commit"] == "c1" and doc["healthy"] is False
            assert doc["failing_commit"] == "c1" and doc["next_retry_at"] == NOW + REFRESH + 5
            w.tick(5)
            assert await hub.reconcile("c1") == REFRESH
            assert (await status(c))["healthy"] is True
            assert w.pipeline.builds == ["c1", "c1", "c1"]
    run(go())


def test_follower_retries_a_temporary_failure_without_a_new_commit(tmp_path: Path) -> None:
    """The real follower (watchdog, poll 600 s) on a real checkout: the retry of
    c2 is driven by the requeue delay alone."""
    repo = init_repo(tmp_path / "r")
    acme = make_org("acme")
    pipeline = FakePipeline([acme])
    pipeline.flaky_delay = 0.2

    async def go() -> None:
        hub = Hub(pipeline=pipeline, store=FeedStore(f"sqlite:///{tmp_path}/hub.db"),
                  retry_min=0.1)
        await hub.start()

        async def on_head(head: Head) -> float | None:
            hub.follow_state(head.branch, head.problem)
            return await hub.reconcile(head.commit)

        follower = LocalFollower(str(repo), None, on_head, poll=600)
        await follower.start()
        try:
            c1 = git(repo, "rev-parse", "HEAD")
            await wait_for(lambda: hub.snapshot is not None and hub.snapshot.commit == c1)
            # make c2 without moving the branch, so the pipeline knows it before the follower
            (repo / "next").write_text("x")
            git(repo, "add", "next")
            c2 = git(repo, "commit-tree", git(repo, "write-tree"), "-p", c1, "-m", "two")
            pipeline.flaky[c2] = 2
            git(repo, "update-ref", "refs/heads/main", c2)
            await wait_for(lambda: hub.status.failure is not None)
            assert hub.status.failure.commit == c2 and hub.snapshot.commit == c1
            await wait_for(lambda: hub.snapshot.commit == c2, 10)
            assert pipeline.builds == [c1, c2, c2, c2] and hub.status.failure is None
        finally:
            await follower.stop()
            await hub.close()

    run(go())
