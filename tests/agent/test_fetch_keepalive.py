"""Kept-open connections in the agent's ``HttpTransport``: the real ``Fetcher``
against a real HTTP(S) server on loopback (threads, raw sockets) that answers
several requests per connection and misbehaves on cue: it closes idle
connections, closes one as the next request arrives, says ``Connection:
close``, sends bytes nobody asked for, or stalls. Every case counts the TCP
connections the server accepted."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

from reconciler.agent.fetch import Fetcher, HttpTransport, TlsConfig
from reconciler.errors import FetchError

from .test_hostile_server import HostileServer, _pki

# What the server does with the n-th request it reads (counted across connections):
OK = "ok"  # answer, keep the connection
CLOSE_HEADER = "close-header"  # answer with "Connection: close", then close
THEN_FIN = "then-fin"  # answer without saying so, then close (an idle timeout)
DROP = "drop"  # read the request, close without an answer (closed as it arrived)
EXTRA = "extra"  # answer, then a forged second answer nobody asked for
STALL = "stall"  # read the request, answer nothing, keep the connection open


class KeepServer(HostileServer):
    """HTTP/1.1 on 127.0.0.1 with as many requests per connection as the client
    sends; ``plan[n]`` (default ``OK``) says what happens to request ``n``.
    Accepting, the ``with`` block and joining every thread are
    ``HostileServer``'s; ``connections`` counts the connections accepted."""

    def __init__(self, plan: dict[int, str] | None = None, tls: Any = None) -> None:
        super().__init__(lambda conn, stop: None, tls)
        self.plan = plan or {}
        self.lock = threading.Lock()
        self.connections = 0
        self.requests: list[tuple[int, str]] = []  # type: ignore[assignment]  # (connection, line)

    def _handle(self, conn: socket.socket) -> None:
        with self.lock:
            self.connections += 1
            number = self.connections
        self._serve_connection(conn, number)

    def _serve_connection(self, raw: socket.socket, number: int) -> None:
        conn: Any = raw
        try:
            raw.settimeout(5)
            if self.tls is not None:
                conn = self.tls.wrap_socket(raw, server_side=True)
            conn.settimeout(0.1)  # the stop event is checked between reads
            buf = b""
            while not self.stop.is_set():
                while b"\r\n\r\n" not in buf:
                    if self.stop.is_set():
                        return
                    try:
                        data = conn.recv(65536)
                    except TimeoutError:
                        continue
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                length = next((int(v) for k, _, v in (x.partition(":") for x in lines[1:])
                               if k.strip().lower() == "content-length"), 0)
                while len(buf) < length:
                    buf += conn.recv(65536)
                buf = buf[length:]
                with self.lock:
                    index = len(self.requests)
                    self.requests.append((number, lines[0]))
                what = self.plan.get(index, OK)
                if what in (DROP,):
                    return
                if what == STALL:
                    self.stop.wait(10)
                    return
                body = b'{"request": %d, "connection": %d}' % (index, number)
                extra = "Connection: close\r\n" if what == CLOSE_HEADER else ""
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n%s\r\n" % (len(body), extra.encode())
                             + body)
                if what == EXTRA:
                    forged = b'{"forged": true}'
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"
                                 % len(forged) + forged)
                if what in (CLOSE_HEADER, THEN_FIN):
                    return
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass


def fetcher(**kw: Any) -> tuple[Fetcher, HttpTransport]:
    transport = HttpTransport(kw.pop("tls", None), **kw)
    return Fetcher(transport, timeout=3), transport


def answers(fetch: Fetcher, server: KeepServer, n: int) -> list[dict[str, int]]:
    return [fetch.get(server.url(), kind="manifest").json() for _ in range(n)]


def wait_for(check: Callable[[], bool]) -> None:
    done = threading.Event()
    for _ in range(200):
        if check():
            return
        done.wait(0.01)
    raise AssertionError("the server never got there")


def test_requests_reuse_one_connection() -> None:
    with KeepServer() as server:
        fetch, transport = fetcher()
        got = answers(fetch, server, 3)
        assert fetch.post_json(server.url("/v1/orgs/acme/endpoints"), {"a": 1}) == {
            "request": 3, "connection": 1}
        fetch.get(server.url(), wait=1)  # a long-poll too
        assert [a["connection"] for a in got] == [1, 1, 1]
        assert server.connections == 1 and transport.connections == 1
        fetch.close()
        wait_for(lambda: not any(t.is_alive() for t in server.threads))


def test_tls_requests_reuse_one_handshake(tmp_path) -> None:
    context, ca = _pki(tmp_path, leaf_aki=True)
    with KeepServer(tls=context) as server:
        fetch, transport = fetcher(tls=TlsConfig(ca=ca, server_name="localhost"))
        got = answers(fetch, server, 4)
        assert [a["connection"] for a in got] == [1, 1, 1, 1]
        assert server.connections == 1 and transport.connections == 1
        fetch.reset_tls()  # a renewed certificate or a move: a new connection
        assert fetch.get(server.url()).json()["connection"] == 2
        assert server.connections == 2


@pytest.mark.parametrize("how", [CLOSE_HEADER, THEN_FIN])
def test_a_connection_the_server_closes_is_not_reused(how) -> None:
    with KeepServer({0: how}) as server:
        fetch, transport = fetcher()
        first = fetch.get(server.url()).json()
        wait_for(lambda: not server.threads[0].is_alive())  # closed on the server's side
        second = fetch.get(server.url()).json()
        assert (first["connection"], second["connection"]) == (1, 2)
        assert transport.connections == 2 and len(server.requests) == 2


def test_a_get_on_a_connection_closed_as_it_went_out_is_sent_again_once() -> None:
    with KeepServer({1: DROP}) as server:
        fetch, transport = fetcher()
        assert fetch.get(server.url()).json()["connection"] == 1
        second = fetch.get(server.url()).json()
        assert second == {"request": 2, "connection": 2}
        assert [r[0] for r in server.requests] == [1, 1, 2]
        assert transport.connections == 2


def test_a_post_is_never_sent_twice() -> None:
    with KeepServer({1: DROP}) as server:
        fetch, _ = fetcher()
        fetch.get(server.url())
        with pytest.raises(FetchError):
            fetch.post_json(server.url("/v1/orgs/acme/endpoints"), {"a": 1})
        assert [r[1].split()[0] for r in server.requests] == ["GET", "POST"]
        assert fetch.get(server.url()).json()["connection"] == 2  # and the next one works


def test_bytes_nobody_asked_for_are_never_taken_as_the_next_answer() -> None:
    with KeepServer({0: EXTRA}) as server:
        fetch, transport = fetcher()
        assert fetch.get(server.url()).json() == {"request": 0, "connection": 1}
        # The forged answer is either still in the socket (the idle connection is
        # readable: dropped) or was read ahead into the first answer's buffer, which
        # went with it; either way the second request gets the server's real answer.
        for n in range(1, 4):
            assert fetch.get(server.url()).json()["request"] == n
        assert len(server.requests) == 4 and transport.connections <= 2


def test_an_idle_connection_past_keep_idle_is_dropped() -> None:
    now = [100.0]
    with KeepServer() as server:
        fetch, transport = fetcher(clock=lambda: now[0], keep_idle=60)
        fetch.get(server.url())
        now[0] += 59
        assert fetch.get(server.url()).json()["connection"] == 1
        now[0] += 61
        assert fetch.get(server.url()).json()["connection"] == 2
        assert transport.connections == 2


def test_a_request_that_failed_leaves_nothing_kept() -> None:
    with KeepServer({1: STALL}) as server:
        fetch, transport = fetcher()
        fetch.get(server.url())
        fetch.timeout = 0.5
        with pytest.raises(FetchError, match="deadline"):
            fetch.get(server.url())
        fetch.timeout = 3
        assert fetch.get(server.url()).json() == {"request": 2, "connection": 2}
        assert transport.connections == 2


def test_another_server_gets_its_own_connection() -> None:
    with KeepServer() as one, KeepServer() as two:
        fetch, transport = fetcher()
        fetch.get(one.url())
        fetch.get(two.url())
        fetch.get(one.url())
        assert (one.connections, two.connections, transport.connections) == (2, 1, 3)
