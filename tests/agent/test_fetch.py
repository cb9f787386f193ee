"""Fetcher: file:// and HTTP through a fake transport (ETag, 304, gzip, errors)."""

from __future__ import annotations

import gzip

import pytest

from reconciler.agent.fetch import Fetcher
from reconciler.errors import ConfigError, FetchError


class Transport:
    def __init__(self, *responses):
        self.responses = list(responses)
        self.requests = []
        self.max_bytes = []

    def __call__(self, method, url, *, headers, body, timeout, max_bytes):
        self.requests.append((method, url, dict(headers), body, timeout))
        self.max_bytes.append(max_bytes)
        resp = self.responses.pop(0)
        if isinstance(resp, Exception):
            raise resp
        return resp


def test_file_url(tmp_path) -> None:
    path = tmp_path / "m.json"
    path.write_bytes(b"envelope")
    resp = Fetcher().get(f"file://{path}")
    assert (resp.status, resp.body) == (200, b"envelope") and resp.etag


def test_missing_file_is_temporary(tmp_path) -> None:
    with pytest.raises(FetchError, match="not found"):
        Fetcher().get(f"file://{tmp_path}/nope.json")


def test_http_etag_and_long_poll() -> None:
    t = Transport((200, {"etag": '"7"'}, b"body"), (304, {"etag": '"7"'}, b""))
    f = Fetcher(t, timeout=3)
    first = f.get("https://hub/v1/orgs/acme/manifest")
    assert (first.status, first.body, first.etag) == (200, b"body", '"7"')
    second = f.get("https://hub/v1/orgs/acme/manifest", etag='"7"', wait=30)
    assert second.status == 304 and second.body == b""
    _method, url, headers, _, timeout = t.requests[1]
    assert url.endswith("/manifest?wait=30") and headers["If-None-Match"] == '"7"'
    assert timeout == 32  # the long-poll wait plus a small margin (not the full timeout)


def test_gzip_body_is_decoded() -> None:
    t = Transport((200, {"content-encoding": "gzip"}, gzip.compress(b"hello")))
    assert Fetcher(t).get("http://hub/x").body == b"hello"


@pytest.mark.parametrize("status,error", [(503, FetchError), (429, FetchError),
                                          (403, ConfigError), (404, ConfigError)])
def test_status_classes(status, error) -> None:
    t = Transport((status, {}, b'{"error": "no such org"}'))
    with pytest.raises(error, match=str(status)):
        Fetcher(t).get("http://hub/x")


def test_post_json() -> None:
    t = Transport((200, {}, b'{"accepted": true}'))
    assert Fetcher(t).post_json("http://hub/r", {"a": 1}) == {"accepted": True}
    assert t.requests[0][0] == "POST" and t.requests[0][3] == b'{"a":1}'


def test_real_http_transport_unreachable_is_temporary() -> None:
    import socket

    with socket.socket() as s:  # a closed local port: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FetchError):
        Fetcher(timeout=2).get(f"http://127.0.0.1:{port}/v1/orgs/acme/manifest")


def test_a_blocked_read_ends_when_the_local_address_is_gone() -> None:
    import socket
    import time

    from reconciler.agent.fetch import Watchdog

    a, b = socket.socketpair()
    with a, b:
        checks = []

        def alive() -> bool:
            checks.append(1)
            return len(checks) < 3  # the route changes on the third check

        a.settimeout(30)
        start = time.monotonic()
        with Watchdog(a, alive, step=0.01) as dog:
            assert a.recv(10) == b""  # shut down under the blocked read
        assert dog.tripped and len(checks) == 3
        assert time.monotonic() - start < 5


def test_the_watchdog_leaves_a_live_connection_alone() -> None:
    import socket

    from reconciler.agent.fetch import Watchdog

    a, b = socket.socketpair()
    with a, b:
        a.settimeout(5)
        with Watchdog(a, lambda: True, step=0.01) as dog:
            b.sendall(b"HTTP/1.1 304 Not Modified\r\n\r\n")
            assert a.recv(100).startswith(b"HTTP/1.1 304")
        assert not dog.tripped


def test_a_long_poll_through_the_real_transport_gets_the_answer() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        resp = Fetcher(timeout=2).get(f"http://127.0.0.1:{server.server_port}/m", wait=1)
        assert (resp.status, resp.body) == (200, b"ok")
    finally:
        server.shutdown()
        server.server_close()
