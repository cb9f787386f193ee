"""The `agent run` loop with an injected clock, sleep and rng."""

from __future__ import annotations

import random

from reconciler.agent.loop import AgentLoop, backoff_delay
from reconciler.errors import FetchError

from .helpers import NOW, FakeBackend, FakeFetch, Org, device, write_agent

ORG = Org()


class Clock:
    def __init__(self) -> None:
        self.t = NOW
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


class NoJitter:
    def uniform(self, a: float, b: float) -> float:
        return 0.0


def make(tmp_path, **kw):
    config = write_agent(tmp_path, ORG, **kw)
    manifest = ORG.manifest([device("alpha", 1, "10.77.0.1"), device("beta", 2, "10.77.0.2")])
    fetch = FakeFetch({config.source_url: ORG.sign(manifest)})
    clock = Clock()
    results, errors = [], []
    loop = AgentLoop(config, fetch=fetch, backend=FakeBackend(), clock=clock.now,
                     sleep=clock.sleep, rng=NoJitter(), on_result=results.append,
                     on_error=errors.append)
    return loop, fetch, clock, results, errors


def test_polls_at_the_interval_and_applies_once(tmp_path) -> None:
    loop, fetch, clock, results, _ = make(tmp_path)
    loop.run(max_passes=3)
    assert [r.applied > 0 for r in results] == [True, False, False]
    assert clock.sleeps == [30.0, 30.0]
    assert all(wait is None for _, _, wait in fetch.calls)  # file:// never long-polls


def test_backs_off_exponentially_then_recovers(tmp_path) -> None:
    loop, fetch, clock, results, errors = make(tmp_path)
    good = fetch.bodies[loop.config.source_url]
    fetch.bodies[loop.config.source_url] = FetchError("down", delay=2.0)
    loop.run(max_passes=4)
    assert clock.sleeps == [2.0, 4.0, 8.0]
    assert len(errors) == 4 and loop.stats.failures == 4
    fetch.bodies[loop.config.source_url] = good
    loop.run(max_passes=5)
    assert results and loop.stats.failures == 0


def test_backoff_is_capped() -> None:
    class Cfg:
        max_backoff = 300.0
        jitter = 0.0

    assert backoff_delay(20, 5.0, Cfg(), NoJitter()) == 300.0  # type: ignore[arg-type]


def test_hub_long_polls_after_the_first_pass(tmp_path) -> None:
    loop, fetch, clock, _results, _ = make(tmp_path, hub="https://hub.example")
    loop.run(max_passes=3)
    manifest_calls = [c for c in fetch.calls if c[0] == loop.config.source_url]
    # long-poll, but never longer than one interval: passes keep their rhythm
    assert loop.config.interval == 30 and loop.config.long_poll == 55
    assert [wait for _, _, wait in manifest_calls] == [None, 30, 30]
    assert all(s <= 1.0 for s in clock.sleeps)  # straight back into the long-poll


def test_refused_manifest_keeps_running_at_the_interval(tmp_path) -> None:
    loop, fetch, clock, _results, errors = make(tmp_path)
    fetch.bodies[loop.config.source_url] = Org(key_seed=42).sign(
        ORG.manifest([device("alpha", 1, "10.77.0.1")]))
    loop.run(max_passes=2)
    assert len(errors) == 2 and "refused" in str(errors[0])
    assert clock.sleeps == [30.0]
    assert loop.backend.applied == []  # type: ignore[attr-defined]


def test_stop_ends_the_loop(tmp_path) -> None:
    loop, _fetch, _clock, _results, _ = make(tmp_path)

    def sleep(s: float) -> None:
        loop.stop()

    loop.sleep = sleep
    stats = loop.run()
    assert stats.passes == 1 and loop.stopped


def test_jitter_stays_within_the_fraction(tmp_path) -> None:
    loop, *_ = make(tmp_path)
    loop.rng = random.Random(1)
    delays = [loop.step() for _ in range(20)]
    assert all(27.0 <= d <= 33.0 for d in delays) and len(set(delays)) > 1


def test_a_pass_on_the_cached_manifest_retries_quickly_without_long_poll(tmp_path) -> None:
    loop, fetch, clock, results, _ = make(tmp_path, hub="https://hub.example")
    loop.run(max_passes=1)
    good = fetch.bodies[loop.config.source_url]
    fetch.bodies[loop.config.source_url] = FetchError("The read operation timed out")
    clock.sleeps.clear()
    loop.run(max_passes=1 + 9)
    assert [r.source for r in results[1:]] == ["cache"] * 9
    # 0.25 s first, doubling, never more than one interval (30 s)
    assert clock.sleeps == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    fetch.bodies[loop.config.source_url] = good
    fetch.calls.clear()
    loop.run(max_passes=loop.stats.passes + 2)
    waits = [wait for url, _, wait in fetch.calls if url == loop.config.source_url]
    assert waits == [None, 30]  # a plain GET first, then back to long-polling
    assert loop.stats.failures == 0


def test_key_rotation_runs_after_good_passes_only(tmp_path) -> None:
    """``key_rotation_days``: the loop asks ``rotate(now)`` after each good pass
    (not after one on the cached manifest), reports it, and a failure of its own
    is an error report, never the end of the loop."""
    from reconciler.agent.autorotate import Rotation
    from reconciler.agent.keyage import Due
    from reconciler.errors import ConfigError

    loop, fetch, _, _, errors = make(tmp_path, hub="https://hub.example")
    asked: list[float] = []
    said: list[Rotation] = []

    def rotate(now: float) -> Rotation:
        asked.append(now)
        if len(asked) == 2:
            raise ConfigError("wireguard.key.next: readable by others")
        return Rotation(Due("none", "not due"))

    loop.rotate, loop.on_rotation = rotate, said.append
    loop.run(max_passes=1)
    good = fetch.bodies[loop.config.source_url]
    fetch.bodies[loop.config.source_url] = FetchError("timed out")
    loop.run(max_passes=2)  # on the cached manifest: no rotation
    fetch.bodies[loop.config.source_url] = good
    loop.run(max_passes=4)
    assert len(asked) == 3 and len(said) == 2
    assert any("readable by others" in str(e) for e in errors)
    assert loop.stats.passes == 4


def test_the_loop_rotates_by_itself_when_configured(tmp_path) -> None:
    config = write_agent(tmp_path, ORG, hub="https://hub.example")
    assert config.key_rotation_days is None
    from reconciler.structs import replace

    loop = AgentLoop(replace(config, key_rotation_days=30), fetch=FakeFetch({}),
                     backend=FakeBackend(), clock=Clock().now, sleep=Clock().sleep,
                     rng=NoJitter())
    assert loop.rotate is not None
    plain = AgentLoop(config, fetch=FakeFetch({}), backend=FakeBackend(), clock=Clock().now,
                      sleep=Clock().sleep, rng=NoJitter())
    assert plain.rotate is None
