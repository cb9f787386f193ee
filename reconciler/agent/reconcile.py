"""One level-based pass of the agent: ``reconcile_once(config, ...) -> Result``.

Called by ``meshops agent apply`` (one pass) and ``agent.loop`` (``agent
run``). A pass is three steps, each in its own module:

* ``agent.gather``: every read, once (trust, the verified manifest and its
  source, the feed, credentials, the observed interface, memory, own
  endpoints);
* ``agent.decide``: pure; the operations, the new memory, the report,
  warnings and the requeue delay;
* ``agent.commit``: apply in phases, re-observe and verify, write the state
  once, post the report.

``dry_run`` stops after decide: nothing is applied, persisted or reported
(gather may still refresh the public credentials the reads need: the hub CA
pin and the device certificate). Effects are parameters (``fetch``,
``backend``, ``discover``, ``report``, ``local_ip``, ``resolve``, and the host
``firewall`` and policy ``routing``, which the CLI always passes and unit
tests may leave out) and ``now`` is given, so tests drive a pass without root
or sockets.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from reconciler.agent.commit import Result, commit
from reconciler.agent.config import AgentConfig
from reconciler.agent.decide import decide
from reconciler.agent.fetch import FetchLike
from reconciler.agent.gather import Effects, Firewall, Routing, gather
from reconciler.backends.base import Backend

__all__ = ["FetchLike", "Result", "paused_gc", "quick_handoffs", "reconcile_once"]

HANDOFF = 0.0005  # seconds: the interpreter's switch interval during a pass (default 0.005)


@contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection inside: a pass at 10,000 peers allocates
    hundreds of thousands of small objects and makes no reference cycles worth
    collecting, and each automatic full collection walks the whole heap again
    (~40% of a no-op pass). Reference counting still frees everything; the
    collector is back on (if it was) when the block ends."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextmanager
def quick_handoffs(interval: float = HANDOFF) -> Iterator[None]:
    """A short interpreter switch interval inside: the pass's host reads run in
    threads (``reconciler.background``) that mostly wait on other processes
    (wireguard-go, ``ip``, ``nft``), and each time one of them comes back from
    a system call it needs the interpreter back from the busy main thread. At
    the default 5 ms a thread waits up to that long per system call; at
    10,000 peers the interface read then took 190 ms instead of 130-150 ms.
    The previous interval is restored when the block ends."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(interval)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def reconcile_once(
    config: AgentConfig,
    *,
    fetch: FetchLike,
    backend: Backend,
    now: float,
    dry_run: bool = False,
    discover: Callable[[int, Sequence[str]], Any] | None = None,
    report: Callable[[dict[str, Any]], Any] | None = None,
    wait: int | None = None,
    local_ip: Callable[[], str | None] | None = None,
    resolve: Callable[[str], str | None] | None = None,
    firewall: Firewall | None = None,
    routing: Routing | None = None,
    public_fetch: FetchLike | None = None,
    retain: list[Any] | None = None,
) -> Result:
    """One whole pass. Raises ``ManifestRefused`` (interface untouched),
    ``FetchError`` (no usable manifest), ``ConfigError``, backend errors, or
    ``NotConverged`` with the residual operations.

    ``retain``: the pass's inputs and decision are appended to it, so they
    live as long as the caller's list. ``agent apply`` passes one and leaves
    with ``os._exit`` (``cli.exit_quickly``): at 10,000 peers, freeing them
    object by object when the pass returns costs ~20 ms."""
    effects = Effects(fetch=fetch, backend=backend, discover=discover, report=report,
                      local_ip=local_ip, resolve=resolve, firewall=firewall, routing=routing,
                      public_fetch=public_fetch)
    with paused_gc(), quick_handoffs():
        inputs = gather(config, effects, now, wait=wait)
        decision = decide(inputs, now)
        if retain is not None:
            retain += (inputs, decision)
        if dry_run:
            return Result.of(inputs, decision, applied=0)
        return commit(inputs, decision, effects, state_dir=config.state_dir,
                      feed_url=config.feed_url, now=now, private_key_path=config.private_key)
