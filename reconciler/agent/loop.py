"""``meshops agent run``: ``reconcile_once`` in a loop, with jitter, backoff and long-poll.

Called by the CLI. Everything time-related is injected (``clock``, ``sleep``,
``rng``), so tests drive the loop deterministically. Rules:

* after a good pass, wait ``interval`` +/- ``jitter`` (a fraction) -- or,
  when the manifest comes from a hub, go straight back into a long-poll
  (``?wait=long_poll`` with ``If-None-Match``), which returns as soon as a
  newer serial exists; a minimum gap keeps a hub without long-poll from
  being hammered;
* a ``TemporaryError`` (hub down, backend busy, not converged) backs off
  exponentially from ``max(exc.delay, 1 s)`` up to ``max_backoff``, with
  jitter; the interface keeps its last good state meanwhile;
* a pass whose decision asks to be requeued (``Result.requeue_after``: it fell
  back to the cached manifest because the hub did not answer, being down, or
  this device just moved and its connection died with the old NAT) retries
  quickly: after that delay, doubling up to one interval, without long-poll,
  so a move is reported within a second;
* a ``PermanentError`` (refused manifest, bad config of one pass) is
  reported and retried at the normal interval: a later commit may fix it,
  and the tunnels stay up;
* with ``key_rotation_days``, a good pass (not one that asked to be requeued)
  is followed by ``rotate`` (default: ``agent.autorotate.rotate_if_due``),
  which starts or re-sends a WireGuard key rotation when the pure
  ``agent.keyage`` says so; what it did goes to ``on_rotation``, a failure of
  its own to ``on_error``, and the loop's cadence is unchanged (the long-poll
  sees the hub's commit at once, and the next pass switches keys);
* ``stop()`` (SIGTERM, SIGINT) ends the loop after the current step;
  nothing is torn down -- the tunnels stay up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from reconciler.agent.autorotate import Rotation, rotate_if_due
from reconciler.agent.config import AgentConfig
from reconciler.agent.fetch import FetchLike, Kind
from reconciler.agent.gather import Firewall, Routing
from reconciler.agent.reconcile import Result, reconcile_once
from reconciler.backends.base import Backend
from reconciler.errors import MeshopsError, PermanentError, TemporaryError, UsageError

log = logging.getLogger(__name__)
LONG_POLL_MIN_GAP = 1.0


class Rng(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


@dataclass
class LoopStats:
    passes: int = 0
    failures: int = 0  # consecutive temporary failures
    last_error: str | None = None


def jittered(value: float, jitter: float, rng: Rng) -> float:
    return max(0.0, value * (1 + rng.uniform(-jitter, jitter)))


def quick_retry_delay(failures: int, first: float, config: AgentConfig, rng: Rng) -> float:
    """After a pass that asked to be requeued (``Result.requeue_after``, e.g. it
    ran on the cached manifest): ``first * 2**(failures-1)``, at most one
    interval, jittered."""
    base = first * 2 ** max(failures - 1, 0)
    return jittered(min(base, config.interval), config.jitter, rng)


def backoff_delay(failures: int, hint: float, config: AgentConfig, rng: Rng) -> float:
    """Exponential backoff: ``max(hint, 1) * 2**(failures-1)``, capped, jittered."""
    base = max(hint, 1.0) * 2 ** max(failures - 1, 0)
    return jittered(min(base, config.max_backoff), config.jitter, rng)


class AgentLoop:
    def __init__(
        self,
        config: AgentConfig,
        *,
        fetch: FetchLike,
        backend: Backend,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        rng: Rng,
        discover: Callable[[int, Sequence[str]], Any] | None = None,
        on_result: Callable[[Result], None] | None = None,
        on_error: Callable[[MeshopsError], None] | None = None,
        firewall: Firewall | None = None,
        routing: Routing | None = None,
        public_fetch: FetchLike | None = None,
        rotate: Callable[[float], Rotation] | None = None,
        on_rotation: Callable[[Rotation], None] | None = None,
    ) -> None:
        self.config = config
        self.fetch = fetch
        self.backend = backend
        self.clock = clock
        self.sleep = sleep
        self.rng = rng
        self.discover = discover
        self.firewall = firewall
        self.routing = routing
        self.public_fetch = public_fetch
        self.on_result = on_result
        self.on_error = on_error
        self.on_rotation = on_rotation
        if rotate is None and config.key_rotation_days:
            rotate = lambda now: rotate_if_due(config, fetch=fetch, now=now)
        self.rotate = rotate
        self.stats = LoopStats()
        self._stopped = False
        # True while blocked in a sleep or a long-poll: a signal handler may
        # then abort the wait at once (nothing is half-applied).
        self.interruptible = False

    def stop(self) -> None:
        self._stopped = True

    @property
    def stopped(self) -> bool:
        return self._stopped

    def _wait(self) -> int:
        """Long-poll at most one interval: the pass must still run every interval
        (path liveness and hysteresis need fresh observations), and the
        long-poll makes a new manifest apply at once in between."""
        return max(1, min(self.config.long_poll, round(self.config.interval)))

    def step(self) -> float:
        """One pass; returns how long to wait before the next one."""
        cfg = self.config
        long_poll = bool(cfg.hub) and self.stats.failures == 0 and self.stats.passes > 0
        started = self.clock()
        try:
            result = reconcile_once(
                cfg, fetch=_MarkWaits(self.fetch, self), backend=self.backend, now=started,
                discover=self.discover, wait=self._wait() if long_poll else None,
                firewall=self.firewall, routing=self.routing, public_fetch=self.public_fetch,
            )
        except UsageError:
            raise
        except TemporaryError as exc:
            self.stats.failures += 1
            self.stats.last_error = str(exc)
            if self.on_error:
                self.on_error(exc)
            return backoff_delay(self.stats.failures, exc.delay, cfg, self.rng)
        except PermanentError as exc:
            self.stats.failures = 0
            self.stats.last_error = str(exc)
            if self.on_error:
                self.on_error(exc)
            return jittered(cfg.interval, cfg.jitter, self.rng)
        finally:
            self.stats.passes += 1
        if self.on_result:
            self.on_result(result)
        if result.requeue_after is not None:  # the pass ran on the cached manifest
            self.stats.failures += 1
            self.stats.last_error = next(iter(result.warnings), "manifest source unreachable")
            return quick_retry_delay(self.stats.failures, result.requeue_after, cfg, self.rng)
        self.stats.failures = 0
        self.stats.last_error = None
        self._maybe_rotate()
        if cfg.hub:
            # the next pass long-polls; keep a small gap in case the hub answers at once
            elapsed = self.clock() - started
            return max(0.0, LONG_POLL_MIN_GAP - elapsed) + self.rng.uniform(0, cfg.jitter)
        return jittered(cfg.interval, cfg.jitter, self.rng)

    def _maybe_rotate(self) -> None:
        """After a good pass: a key rotation when it is due (never fatal)."""
        if self.rotate is None:
            return
        try:
            rotation = self.rotate(self.clock())
        except MeshopsError as exc:  # e.g. an unreadable key file: the next pass says more
            if self.on_error:
                self.on_error(exc)
            return
        if self.on_rotation:
            self.on_rotation(rotation)

    def run(self, max_passes: int | None = None) -> LoopStats:
        while not self._stopped:
            delay = self.step()
            if self._stopped or (max_passes is not None and self.stats.passes >= max_passes):
                break
            log.debug("next pass in %.1fs", delay)
            self.interruptible = True
            try:
                self.sleep(delay)
            finally:
                self.interruptible = False
        return self.stats


class _MarkWaits:
    """Marks the loop interruptible while a long-poll GET blocks."""

    def __init__(self, inner: FetchLike, loop: AgentLoop) -> None:
        self._inner = inner
        self._loop = loop

    def get(self, url: str, *, etag: str | None = None, wait: int | None = None,
            params: Any = None, kind: Kind = "manifest") -> Any:
        if not wait:
            return self._inner.get(url, etag=etag, params=params, kind=kind)
        self._loop.interruptible = True
        try:
            return self._inner.get(url, etag=etag, wait=wait, params=params, kind=kind)
        finally:
            self._loop.interruptible = False

    def post_json(self, url: str, obj: Any) -> Any:
        return self._inner.post_json(url, obj)

    def reset_tls(self) -> None:
        self._inner.reset_tls()

    def close(self) -> None:
        self._inner.close()
