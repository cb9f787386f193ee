"""Wake this hub replica as soon as another one commits a feed change.

Created by ``reconciler.hub.daemon`` (``hub serve``), which hands it
``Hub.poll_store`` (read the store's change counters, wake the long-polls).
Two sources call that poll:

* the periodic store poll, the safety net: every ``fast`` seconds
  (``--store-poll``) while no listener is up, every ``slow`` seconds
  (``--store-poll-listening``) while one is;
* on PostgreSQL, a listener thread holding a ``FeedListener``
  (``reconciler.hub.feedstore``, the psycopg owner: ``LISTEN meshops_feed`` on a
  connection of its own). ``FeedStore.record`` sends ``pg_notify`` in the
  transaction that moved an org's change counter, so the notification arrives
  after the commit; the thread hands it to the event loop
  (``call_soon_threadsafe``), which polls at once. Notifications sent by this
  replica's own store connection are ignored (its commits already woke it).

Polls never overlap: a notification or tick during a poll marks it dirty and
one more poll runs right after it, so a burst costs at most two polls.

The listener is an accelerator, never the source of truth. A lost connection
(``TemporaryError``) drops back to the fast poll at once; the thread
reconnects with exponential backoff (``backoff_delay``), and every (re)connect
is followed by one poll that catches up on what was committed meanwhile.
``meshops_hub_store_listening`` and ``meshops_hub_store_notifications`` show
which mode runs (``reconciler.hub.metrics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from reconciler.errors import MeshopsError, TemporaryError
from reconciler.hub.metrics import Metrics

log = logging.getLogger(__name__)

BACKOFF_MIN = 0.5  # first reconnect delay after the listener failed
BACKOFF_MAX = 30.0
WAIT_SLICE = 0.5  # the thread looks at its stop flag this often
PING_EVERY = 15.0  # a round trip on a quiet listener, so a dead one is noticed


class Listener(Protocol):
    """What ``FeedListener`` offers (tests pass fakes). Errors: ``TemporaryError``."""

    def wait(self, timeout: float) -> list[tuple[str, int]]: ...  # (org, sender backend pid)

    def ping(self) -> None: ...

    def close(self) -> None: ...


def poll_interval(listening: bool, fast: float, slow: float) -> float:
    """Seconds until the next periodic store poll."""
    return slow if listening else fast


def backoff_delay(failures: int, low: float = BACKOFF_MIN, high: float = BACKOFF_MAX) -> float:
    """Wait before reconnect attempt ``failures + 1``: doubled per failure, capped."""
    return min(high, low * 2.0 ** max(0, min(failures - 1, 30)))


class StoreWatch:
    """The periodic store poll plus, when ``connect`` is given, the listener
    thread. ``start()`` on the event loop, ``stop()`` at shutdown."""

    def __init__(
        self,
        poll: Callable[[], Awaitable[None]],
        metrics: Metrics,
        *,
        fast: float,
        slow: float,
        connect: Callable[[], Listener] | None = None,
        own_pid: int | None = None,
        backoff: tuple[float, float] = (BACKOFF_MIN, BACKOFF_MAX),
        wait_slice: float = WAIT_SLICE,
        ping_every: float = PING_EVERY,
    ) -> None:
        self._poll = poll
        self._metrics = metrics
        self.fast, self.slow = fast, slow
        self._connect = connect
        self._own_pid = own_pid
        self._backoff = backoff
        self._slice = wait_slice
        self._ping_every = ping_every
        self.listening = False  # read and written on the event loop only
        self.polls = 0  # polls run (tests, logs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.Task[None] | None = None
        self._dirty = False
        self._mode_changed = asyncio.Event()
        self._periodic_task: asyncio.Task[None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        metrics.store_listening.set(0)

    # -- the event loop side ------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._periodic_task = self._loop.create_task(self._periodic(), name="store-poller")
        if self._connect is not None:
            self._thread = threading.Thread(target=self._listen, name="store-listen",
                                            daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        for task in (self._periodic_task, self._draining):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, self._slice + 5.0)

    def kick(self) -> None:
        """Poll now, or once more right after the poll that is running."""
        if self._draining is not None and not self._draining.done():
            self._dirty = True
            return
        assert self._loop is not None
        self._draining = self._loop.create_task(self._drain(), name="store-poll")

    async def _drain(self) -> None:
        while True:
            self._dirty = False
            self.polls += 1
            try:
                await self._poll()
            except MeshopsError as exc:  # a flaky database must not stop the hub
                log.warning("store poll failed: %s", exc)
            except Exception:  # a bug: logged; the next tick polls again
                log.exception("store poll crashed")
            if not self._dirty:
                return

    async def _periodic(self) -> None:
        while True:
            self._mode_changed.clear()
            wait = poll_interval(self.listening, self.fast, self.slow)
            try:
                await asyncio.wait_for(self._mode_changed.wait(), wait)
                continue  # the listener came or went: take the other interval now
            except TimeoutError:
                pass
            self.kick()

    def _set_listening(self, up: bool) -> None:
        if up == self.listening:
            return
        self.listening = up
        self._metrics.store_listening.set(1 if up else 0)
        self._mode_changed.set()
        if up:
            self.kick()  # catch up on whatever was committed while not listening

    def _notified(self, count: int) -> None:
        self._metrics.store_notifications.inc(count)
        self.kick()

    # -- the listener thread --------------------------------------------------------------
    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closing: nothing to wake
            self._loop.call_soon_threadsafe(fn, *args)

    def _listen(self) -> None:
        assert self._connect is not None
        failures = 0
        while not self._stop.is_set():
            if failures:
                delay = backoff_delay(failures, *self._backoff)
                if self._stop.wait(delay):
                    return
            try:
                listener = self._connect()
            except TemporaryError as exc:
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    log.warning("store listener: %s (attempt %d); polling every %gs "
                                "meanwhile", exc, failures, self.fast)
                continue
            if failures:
                log.info("store listener back after %d failed attempts", failures)
            failures = 0
            self._call(self._set_listening, True)
            try:
                self._serve(listener)
            except TemporaryError as exc:
                failures = 1
                log.warning("store listener: %s; polling every %gs until it is back",
                            exc, self.fast)
            finally:
                listener.close()
                self._call(self._set_listening, False)

    def _serve(self, listener: Listener) -> None:
        quiet_since = time.monotonic()
        while not self._stop.is_set():
            batch = listener.wait(self._slice)
            now = time.monotonic()
            heard = [org for org, pid in batch if pid != self._own_pid]
            if heard:
                self._call(self._notified, len(heard))
            if batch:
                quiet_since = now
            elif now - quiet_since >= self._ping_every:
                listener.ping()
                quiet_since = now
