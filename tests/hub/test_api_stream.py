"""``hub.api.send_body`` against real sockets: a client that stops reading is
cut off at its deadline and frees its slot, HEAD gets no body, and a client
that leaves mid-body ends the answer quietly."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from reconciler.hub import api
from reconciler.hub.api import SENDS_KEY, send_body, send_deadline

from .conftest_serve import run

BIG = bytes(range(256)) * (16 * 4096)  # 16 MiB: more than loopback's socket buffers


def _app(errors: list[BaseException]) -> web.Application:
    async def big(request: web.Request) -> web.StreamResponse:
        try:
            return await send_body(request, BIG, {}, "application/octet-stream")
        except Exception as exc:  # what would reach aiohttp's error middleware (a
            errors.append(exc)  # cancelled handler, the client gone, is not an error)
            raise

    app = web.Application()
    app[SENDS_KEY] = asyncio.Semaphore(1)  # one large body at a time
    app.router.add_get("/big", big)
    return app


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status = int((await reader.readline()).split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        key, _, value = line.decode().partition(":")
        headers[key.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


def test_the_deadline_grows_with_the_body() -> None:
    assert send_deadline(1000) == api.SEND_DEADLINE_MIN
    assert send_deadline(100 * api.SEND_MIN_RATE) == max(api.SEND_DEADLINE_MIN, 100.0)


def test_a_client_that_stops_reading_is_cut_off_and_frees_its_slot(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "SEND_DEADLINE_MIN", 1.0)
    monkeypatch.setattr(api, "SEND_MIN_RATE", 1 << 40)
    errors: list[BaseException] = []

    async def go() -> None:
        async with TestServer(_app(errors)) as server:
            stuck_r, stuck_w = await _open(server.port)
            stuck_w.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
            await asyncio.sleep(0.2)
            reader, writer = await _open(server.port)
            writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body = await asyncio.wait_for(_read_answer(reader), 20)
            assert status == 200 and body == BIG  # it got the slot once the first was cut
            writer.close()
            # the stuck client's connection was closed by the hub: reading drains
            # what was buffered, then ends before the whole body
            got = 0
            while chunk := await asyncio.wait_for(stuck_r.read(1 << 20), 10):
                got += len(chunk)
            assert got < len(BIG)
            stuck_w.close()
        assert errors == []

    run(go())


def test_head_gets_the_headers_and_no_body() -> None:
    errors: list[BaseException] = []

    async def go() -> None:
        async with TestServer(_app(errors)) as server:
            reader, writer = await _open(server.port)
            writer.write(b"HEAD /big HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"HEAD /big HTTP/1.1\r\nHost: x\r\n\r\n")
            for _ in range(2):  # the second answer starts right after the first's headers
                status = int((await reader.readline()).split()[1])
                assert status == 200
                headers: dict[str, Any] = {}
                while (line := await reader.readline()) != b"\r\n":
                    key, _, value = line.decode().partition(":")
                    headers[key.strip().lower()] = value.strip()
                assert int(headers["content-length"]) == len(BIG)
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
        assert errors == []

    run(go())


def test_a_client_that_leaves_mid_body_ends_the_answer_quietly() -> None:
    errors: list[BaseException] = []

    async def go() -> None:
        async with TestServer(_app(errors)) as server:
            for _ in range(3):
                reader, writer = await _open(server.port)
                writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
                await reader.readexactly(100_000)
                writer.transport.abort()
            await asyncio.sleep(0.5)
            reader, writer = await _open(server.port)  # the slot is free again
            writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body = await asyncio.wait_for(_read_answer(reader), 20)
            assert status == 200 and body == BIG
            writer.close()
        assert errors == []

    run(go())
