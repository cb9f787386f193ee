"""The hub against slow and unauthenticated clients, over real TLS on loopback
(issue 10): half-sent requests are closed within their timeout, held
connections without a client certificate are capped so a device still gets
its manifest, slow bodies end in 408, and all of it costs a few log lines, no
tracebacks. The limits are shortened through ``ServeConfig.limits``."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.hub.daemon import Running, ServeConfig, start
from reconciler.hub.limits import Limits, RefusalLog, anonymous_cap
from reconciler.hub.metrics import Metrics

from .conftest_serve import FakePipeline, make_org, run, write_pem_files
from .test_serve_tls import client_ctx, fetch, init_repo, wait_for

HALF_REQUEST = b"GET /v1/status HTTP/1.1\r\nHost: acme.hub\r\nX-Slow: "


class Setup:
    def __init__(self, tmp: Path) -> None:
        now = time.time()
        self.tmp = tmp
        self.acme = make_org("acme")
        self.laptop = self.acme.add_device("laptop", now)
        self.files = write_pem_files(tmp, self.laptop)
        self.pipeline = FakePipeline([self.acme])
        self.repo = init_repo(tmp / "repo")

    async def start(self, limits: Limits) -> Running:
        running = await start(ServeConfig(
            repo=str(self.repo), listen="127.0.0.1:0", db=f"sqlite:///{self.tmp}/hub.db",
            state_dir=str(self.tmp / "st"), poll=30, pipeline=self.pipeline, limits=limits))
        await wait_for(lambda: running.hub.snapshot is not None)
        return running

    def anonymous(self) -> ssl.SSLContext:
        return client_ctx(self.acme.keys.ca_pem)

    def device(self) -> ssl.SSLContext:
        return client_ctx(self.acme.keys.ca_pem, self.files)


async def open_tls(port: int, ctx: ssl.SSLContext) -> tuple[asyncio.StreamReader,
                                                             asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="acme.hub")


async def until_closed(reader: asyncio.StreamReader, limit: float) -> tuple[float, bytes]:
    """Seconds until the server closed the connection (``inf``: still open after
    ``limit``), and what it sent."""
    started, data = time.monotonic(), b""
    try:
        async with asyncio.timeout(limit):
            while chunk := await reader.read(65536):
                data += chunk
    except (ConnectionError, ssl.SSLError):
        pass
    except TimeoutError:
        return float("inf"), data
    return time.monotonic() - started, data


async def many(n: int, fn: Callable[[], Awaitable[Any]], parallel: int = 100) -> list[Any]:
    gate = asyncio.Semaphore(parallel)

    async def one() -> Any:
        async with gate:
            return await fn()

    return await asyncio.gather(*(one() for _ in range(n)))


def refused(running: Running, reason: str) -> float:
    text = running.hub.metrics.render().decode()
    for line in text.splitlines():
        if line.startswith(f'meshops_hub_connections_refused_total{{reason="{reason}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def noisy(records: list[logging.LogRecord]) -> list[str]:
    """Log records that are tracebacks or errors."""
    return [r.getMessage() for r in records if r.exc_info or r.levelno >= logging.ERROR]


def test_half_sent_requests_without_a_certificate_are_closed_in_time(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    setup = Setup(tmp_path)
    deadline = 1.5

    async def go() -> None:
        running = await setup.start(Limits(anonymous_deadline=deadline))
        conns = await many(300, lambda: open_tls(running.port, setup.anonymous()))
        try:
            for _, writer in conns:
                writer.write(HALF_REQUEST)
            waited = await asyncio.gather(*(until_closed(r, deadline + 10) for r, _ in conns))
            assert max(t for t, _ in waited) < deadline + 1.5
            assert all(data == b"" for _, data in waited)  # closed, not answered
            assert refused(running, "anonymous-deadline") == 300
            await wait_for(lambda: running.guard is not None
                           and running.guard.counts["anonymous"] == 0)
            # the hub still answers
            status, _ = await fetch(running.port, "/v1/status", setup.anonymous(), "acme.hub")
            assert status == 200
        finally:
            for _, writer in conns:
                writer.close()
            await running.stop()

    with caplog.at_level(logging.INFO):
        run(go())
    lines = [r for r in caplog.records if r.name == "reconciler.hub.limits"]
    assert len(lines) == 1 and "anonymous-deadline" in lines[0].getMessage()
    assert noisy(caplog.records) == []


def test_half_sent_requests_with_a_certificate_are_closed_by_the_idle_timeout(
        tmp_path: Path) -> None:
    setup = Setup(tmp_path)

    async def go() -> None:
        running = await setup.start(Limits(idle_timeout=1.0))
        conns = await many(20, lambda: open_tls(running.port, setup.device()))
        try:
            for _, writer in conns:
                writer.write(HALF_REQUEST)
            waited = await asyncio.gather(*(until_closed(r, 10) for r, _ in conns))
            assert max(t for t, _ in waited) < 2.5
            # a connection that sends nothing at all after the handshake: the same
            reader, writer = await open_tls(running.port, setup.device())
            took, _ = await until_closed(reader, 10)
            writer.close()
            assert took < 2.5
        finally:
            for _, writer in conns:
                writer.close()
            await running.stop()

    run(go())


def test_a_stalled_handshake_is_closed(tmp_path: Path) -> None:
    setup = Setup(tmp_path)

    async def go() -> None:
        running = await setup.start(Limits(handshake_timeout=1.0))
        try:
            conns = [await asyncio.open_connection("127.0.0.1", running.port) for _ in range(50)]
            for _, writer in conns[:25]:
                writer.write(b"\x16\x03\x01\x00\xff")  # half a TLS record
            waited = await asyncio.gather(*(until_closed(r, 10) for r, _ in conns))
            assert max(t for t, _ in waited) < 2.5
            for _, writer in conns:
                writer.close()
            await wait_for(lambda: running.guard is not None
                           and running.guard.counts["handshake"] == 0, 5)
        finally:
            await running.stop()

    run(go())


def test_a_slow_body_gets_408_and_the_connection_is_closed(tmp_path: Path) -> None:
    setup = Setup(tmp_path)

    async def go() -> None:
        running = await setup.start(Limits(body_timeout=1.0, lingering_time=0.5))
        try:
            head = (b"POST /v1/orgs/acme/endpoints HTTP/1.1\r\nHost: acme.hub\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"dev")
            # a device: its body times out, 408 with a JSON reason, then closed
            reader, writer = await open_tls(running.port, setup.device())
            writer.write(head)
            took, data = await until_closed(reader, 10)
            writer.close()
            assert data.startswith(b"HTTP/1.1 408") and b'"error": "body-timeout"' in data
            assert 0.9 < took < 2.5
            assert refused(running, "body-timeout") == 1
            # no certificate: 401 before any body is read, closed soon after
            reader, writer = await open_tls(running.port, setup.anonymous())
            writer.write(head)
            took, data = await until_closed(reader, 10)
            writer.close()
            assert data.startswith(b"HTTP/1.1 401") and b"no-certificate" in data
            assert took < 2.0
        finally:
            await running.stop()

    run(go())


def test_a_thousand_held_connections_do_not_starve_a_device(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    setup = Setup(tmp_path)
    cap, total, deadline = 100, 1000, 20.0

    async def go() -> None:
        running = await setup.start(Limits(max_anonymous=cap, anonymous_deadline=deadline))
        assert running.guard is not None and running.guard.max_anonymous == cap
        started = time.monotonic()
        conns = await many(total, lambda: open_tls(running.port, setup.anonymous()))
        try:
            for _, writer in conns:
                writer.write(HALF_REQUEST)
            # a real device request while the cap is hit
            assert running.guard.counts["anonymous"] == cap
            t0 = time.monotonic()
            status, body = await fetch(running.port, "/v1/orgs/acme/manifest", setup.device(),
                                       "acme.hub")
            device_took = time.monotonic() - t0
            assert status == 200 and body == running.hub.org("acme").manifest
            assert device_took < 5.0
            # everyone over the cap was answered 503 busy (JSON) and closed
            answers = await asyncio.gather(*(until_closed(r, 2.0) for r, _ in conns))
            busy = [d for _, d in answers if d.startswith(b"HTTP/1.1 503")]
            assert len(busy) == total - cap
            held = [t for t, d in answers if t == float("inf")]
            assert len(held) == cap  # the admitted ones wait for their deadline
            assert all(b'"error": "busy"' in d for d in busy)
            assert refused(running, "anonymous-cap") == total - cap
            assert time.monotonic() - started < deadline  # the cap, not the deadline, held
            assert running.guard.counts["anonymous"] == cap
        finally:
            for _, writer in conns:
                writer.close()
            await running.stop()

    with caplog.at_level(logging.INFO):
        run(go())
    lines = [r for r in caplog.records if r.name == "reconciler.hub.limits"]
    assert len(lines) == 1 and "anonymous-cap" in lines[0].getMessage()
    assert noisy(caplog.records) == []
    assert sum(len(r.getMessage()) for r in caplog.records) < 5_000


def test_refusal_log_writes_one_line_per_client_and_reason_per_window(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = [0.0]
    refusals = RefusalLog(Metrics(), window=60, clock=lambda: clock[0])
    with caplog.at_level(logging.WARNING, logger="reconciler.hub.limits"):
        for _ in range(500):
            refusals.refused("198.51.100.7", "anonymous-cap", "full")
        refusals.refused("198.51.100.8", "anonymous-cap", "full")
        refusals.refused("198.51.100.7", "anonymous-deadline", "slow")
        clock[0] = 61
        refusals.refused("198.51.100.7", "anonymous-cap", "full")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4
    assert "499 more since the last line" in messages[-1]


def test_anonymous_cap_leaves_most_file_descriptors_to_devices() -> None:
    assert anonymous_cap(Limits(max_anonymous=512), 1024) == 256
    assert anonymous_cap(Limits(max_anonymous=512), 65536) == 512
    assert anonymous_cap(Limits(max_anonymous=512), 2) == 1
