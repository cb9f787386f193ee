"""The hub's limits against slow and unauthenticated clients, below HTTP.

Used by ``reconciler.hub.daemon``, which wraps aiohttp's protocol factory with
``ConnectionGuard.factory`` and hands the result to ``loop.create_server``
(with ``Limits.handshake_timeout``); ``reconciler.hub.api`` reads
``Limits.body_timeout`` and reports refusals through ``RefusalLog``. No
aiohttp here: the guard wraps any ``asyncio.Protocol`` factory.

What a connection may hold, by phase (docs/api.md, "Limits"):

* **TLS handshake**: at most ``handshake_timeout`` seconds (asyncio's
  ``ssl_handshake_timeout``). A device cannot be told apart from anyone else
  before the handshake, so this phase is bounded by time, not by count.
* **anonymous** (the handshake ended without a client certificate): at most
  ``max_anonymous`` such connections at once, each closed
  ``anonymous_deadline`` seconds after its handshake, whatever it is doing.
  Nothing an anonymous client may ask for (a certificate, the CRL, status,
  metrics) takes longer, and long-polls need a device certificate. A
  connection over the cap gets ``503 {"error": "busy"}`` and is closed
  without reaching aiohttp, so held anonymous connections cannot use up the
  file descriptors that devices need.
* **device** (a client certificate the handshake verified against an org
  CA): aiohttp's keep-alive timeout (``idle_timeout``) closes a connection
  that has not sent a complete request head that long after its handshake or
  its previous answer; ``body_timeout`` bounds reading a request body
  (``408 body-timeout``).

Refusals are logged by ``RefusalLog``: one line per client address and reason
per ``window`` seconds, never a traceback; every refusal is counted in
``meshops_hub_connections_refused_total{reason}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from reconciler.hub.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    handshake_timeout: float = 10.0
    anonymous_deadline: float = 15.0
    max_anonymous: int = 512
    idle_timeout: float = 75.0  # device connections: next request head within this
    body_timeout: float = 10.0
    lingering_time: float = 2.0  # reading an unread request body after the answer


def anonymous_cap(limits: Limits, nofile: int) -> int:
    """The anonymous cap for a process allowed ``nofile`` file descriptors: at
    most a quarter of them, so devices, the database and git keep the rest."""
    return max(1, min(limits.max_anonymous, nofile // 4))


class RefusalLog:
    """One log line per (client address, reason) per ``window`` seconds; the
    refusals in between are counted and mentioned on the next line."""

    def __init__(self, metrics: Metrics, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, remember: int = 4096) -> None:
        self._metrics = metrics
        self._window = window
        self._clock = clock
        self._remember = remember
        self._last: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()

    def refused(self, client: str, reason: str, detail: str) -> None:
        self._metrics.connections_refused.labels(reason).inc()
        key, now = (client, reason), self._clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self._window:
            self._last[key] = (last[0], last[1] + 1)
            return
        more = last[1] if last is not None else 0
        self._last[key] = (now, 0)
        self._last.move_to_end(key)
        while len(self._last) > self._remember:
            self._last.popitem(last=False)
        suffix = f" ({more} more since the last line)" if more else ""
        log.warning("refused %s (%s): %s%s", client, reason, detail, suffix)


def _client(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if peer else "unknown"


def _has_client_cert(transport: asyncio.BaseTransport) -> bool:
    ssl_object = transport.get_extra_info("ssl_object")
    return bool(ssl_object is not None and ssl_object.getpeercert(binary_form=True))


BUSY_BODY = json.dumps({"error": "busy", "message": "too many connections without a client "
                        "certificate; retry later"}).encode()
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        b"Retry-After: 5\r\nConnection: close\r\nContent-Length: "
        + str(len(BUSY_BODY)).encode() + b"\r\n\r\n" + BUSY_BODY)

HANDSHAKE, DEVICE, ANONYMOUS = "handshake", "device", "anonymous"


class ConnectionGuard:
    """Counts connections by phase and enforces ``Limits`` (see the module doc)."""

    def __init__(self, limits: Limits, metrics: Metrics, refusals: RefusalLog,
                 max_anonymous: int | None = None) -> None:
        self.limits = limits
        self.max_anonymous = limits.max_anonymous if max_anonymous is None else max_anonymous
        self.metrics = metrics
        self.refusals = refusals
        self.counts = {HANDSHAKE: 0, DEVICE: 0, ANONYMOUS: 0}

    def factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` around ``inner``."""
        return lambda: _Guarded(self, inner)

    def _move(self, old: str | None, new: str | None) -> None:
        for kind, step in ((old, -1), (new, 1)):
            if kind is not None:
                self.counts[kind] += step
                self.metrics.connections.labels(kind).set(self.counts[kind])


class _Guarded(asyncio.Protocol):
    """One connection: delegates to aiohttp's protocol once admitted."""

    def __init__(self, guard: ConnectionGuard, inner: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._make_inner = inner
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._kind: str | None = HANDSHAKE
        guard._move(None, HANDSHAKE)
        loop = asyncio.get_running_loop()
        # asyncio aborts a handshake after handshake_timeout without telling this
        # protocol (connection_lost only follows connection_made): uncount it then
        self._timer: asyncio.TimerHandle | None = loop.call_later(
            guard.limits.handshake_timeout + 1.0, self._handshake_over)

    def _handshake_over(self) -> None:
        self._timer = None
        if self._kind == HANDSHAKE:
            self._guard._move(HANDSHAKE, None)
            self._kind = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        guard = self._guard
        kind = DEVICE if _has_client_cert(transport) else ANONYMOUS
        if kind == ANONYMOUS and guard.counts[ANONYMOUS] >= guard.max_anonymous:
            guard._move(self._kind, None)
            self._kind = None
            guard.refusals.refused(_client(transport), "anonymous-cap",
                                   f"{guard.max_anonymous} connections without a client "
                                   "certificate are open; answered 503")
            transport.write(BUSY)
            transport.close()
            return
        guard._move(self._kind, kind)
        self._kind = kind
        if kind == ANONYMOUS:
            self._timer = asyncio.get_running_loop().call_later(
                guard.limits.anonymous_deadline, self._deadline)
        self._inner = self._make_inner()
        self._inner.connection_made(transport)

    def _deadline(self) -> None:
        self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            self._guard.refusals.refused(
                _client(self._transport), "anonymous-deadline",
                f"no client certificate and still open after "
                f"{self._guard.limits.anonymous_deadline:g}s; closed")
        if self._transport is not None:
            self._transport.abort()  # no TLS close_notify wait for a client that stalls

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._guard._move(self._kind, None)
        self._kind = None
        if self._inner is not None:
            self._inner.connection_lost(exc)
            self._inner = None
