"""Fetcher: file:// and HTTP through a fake transport (ETag, 304, gzip, errors)."""

from __future__ import annotations

import gzip
import json

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


# -- bounds, unit level (the real server cases are in test_hostile_server.py) ----------
def test_the_manifest_cap_is_the_envelope_cap() -> None:
    from reconciler.agent.fetch import LIMITS
    from reconciler.pki.envelope import MAX_ENVELOPE_BYTES

    assert LIMITS["manifest"] == MAX_ENVELOPE_BYTES


@pytest.mark.parametrize("kind", ["manifest", "feed", "cert", "report"])
def test_each_kind_passes_its_own_cap_to_the_transport(kind) -> None:
    from reconciler.agent.fetch import LIMITS

    t = Transport((200, {}, b"{}"))
    f = Fetcher(t)
    if kind == "report":
        f.post_json("http://hub/r", {})
    else:
        f.get("http://hub/x", kind=kind)
    assert t.max_bytes == [LIMITS[kind]]


def test_limits_can_be_overridden_per_kind() -> None:
    t = Transport((200, {}, b"{}"))
    Fetcher(t, limits={"cert": 10}).get("http://hub/c", kind="cert")
    assert t.max_bytes == [10]


def test_the_fetcher_is_what_the_pass_expects() -> None:
    import inspect

    from reconciler.agent.fetch import FetchLike

    for name in ("get", "post_json", "reset_tls", "close"):
        want = inspect.signature(getattr(FetchLike, name))
        have = inspect.signature(getattr(Fetcher, name))
        assert list(want.parameters) == list(have.parameters), name
        assert all(want.parameters[p].default == have.parameters[p].default
                   for p in want.parameters), name


def test_reset_tls_drops_the_context() -> None:
    from reconciler.agent.fetch import HttpTransport

    transport = HttpTransport()
    f = Fetcher(transport)
    first = transport.ssl_context()
    assert transport.ssl_context() is first
    f.reset_tls()
    assert transport.ssl_context() is not first
    Fetcher(Transport()).reset_tls()  # a transport without reset(): nothing to drop


def test_gunzip_bounds() -> None:
    from reconciler.agent.fetch import gunzip
    from reconciler.errors import InputRefused

    assert gunzip(gzip.compress(b"x" * 1000), what="t", max_bytes=1000) == b"x" * 1000
    two = gzip.compress(b"ab") + gzip.compress(b"cd") + b"\0\0"  # members and padding
    assert gunzip(two, what="t", max_bytes=10) == b"abcd"
    with pytest.raises(InputRefused) as err:
        gunzip(gzip.compress(b"x" * 1001), what="t", max_bytes=1000)
    assert err.value.reason == "too-large"
    with pytest.raises(InputRefused) as err:
        gunzip(gzip.compress(bytes(4 << 20)), what="t", max_bytes=10 << 20)
    assert err.value.reason == "bomb" and "over 100:1" in str(err.value)
    # the same data under a laxer ratio is only bounded by size
    assert len(gunzip(gzip.compress(bytes(4 << 20)), what="t", max_bytes=10 << 20,
                      max_ratio=10_000)) == 4 << 20
    with pytest.raises(FetchError, match="truncated gzip"):
        gunzip(gzip.compress(b"x" * 100)[:-12], what="t", max_bytes=1000)
    with pytest.raises(FetchError, match="corrupt gzip"):
        gunzip(gzip.compress(b"ab") + b"junk", what="t", max_bytes=1000)


@pytest.mark.parametrize("ctype,ok", [
    (None, True), ("application/json", True), ("Application/JSON; charset=UTF-8", True),
    ("application/vnd.meshops.feed+json", True), ("application/octet-stream", True),
    ("text/plain", True), ("text/html", False), ("application/xml", False),
    ("multipart/form-data", False),
])
def test_content_types(ctype, ok) -> None:
    headers = {"content-type": ctype} if ctype else {}
    f = Fetcher(Transport((200, headers, b"{}")))
    if ok:
        assert f.get("http://hub/x").body == b"{}"
    else:
        with pytest.raises(FetchError, match="captive portal"):
            f.get("http://hub/x")


def test_a_304_skips_type_and_encoding_checks() -> None:
    t = Transport((304, {"content-type": "text/html", "content-encoding": "br"}, b""))
    assert Fetcher(t).get("http://hub/x", etag='"1"').status == 304


def test_error_details_are_short_and_printable() -> None:
    t = Transport((403, {}, json.dumps({"error": "\x1b[31mred" + "x" * 500}).encode()))
    with pytest.raises(ConfigError) as err:
        Fetcher(t).get("http://hub/x")
    assert "\x1b" not in str(err.value) and len(str(err.value)) < 260


def test_response_json_is_bounded() -> None:
    from reconciler.agent.fetch import Response
    from reconciler.errors import InputRefused

    assert Response(200, b'{"cert": "x"}', url="u").json() == {"cert": "x"}
    for body in (b"[" * 1000 + b"]" * 1000, b"", b"\xff"):
        with pytest.raises(InputRefused, match="^u: "):
            Response(200, body, url="u").json()


# -- file:// within bounds ------------------------------------------------------------
def test_a_huge_manifest_file_is_refused_without_reading_it(tmp_path) -> None:
    from reconciler.errors import InputRefused

    path = tmp_path / "m.json"
    with open(path, "wb") as fh:
        fh.truncate(2 << 30)  # sparse
    with pytest.raises(InputRefused, match="over the limit") as err:
        Fetcher().get(f"file://{path}")
    assert err.value.reason == "too-large"
    small = Fetcher(limits={"manifest": 10})
    path.write_bytes(b"x" * 11)
    with pytest.raises(InputRefused):
        small.get(f"file://{path}")
    path.write_bytes(b"x" * 10)
    assert small.get(f"file://{path}").body == b"x" * 10


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_a_device_or_fifo_as_the_manifest_is_refused_at_once(tmp_path, special) -> None:
    import os
    import time

    from reconciler.errors import InputRefused

    path = special
    if special == "fifo":
        path = str(tmp_path / "fifo")
        os.mkfifo(path)
    start = time.monotonic()
    with pytest.raises(InputRefused, match="not a regular file"):
        Fetcher().get(f"file://{path}")
    assert time.monotonic() - start < 2


def test_a_directory_as_the_manifest_is_refused(tmp_path) -> None:
    from reconciler.errors import InputRefused

    with pytest.raises(InputRefused, match="not a regular file"):
        Fetcher().get(f"file://{tmp_path}")


@pytest.mark.parametrize("tag", ['"a\rb"', '"' + "9" * 300 + '"', '"ünï"', "", "\x00"])
def test_a_hostile_etag_is_neither_kept_nor_sent(tag) -> None:
    t = Transport((200, {"etag": tag}, b"{}"), (200, {}, b"{}"))
    f = Fetcher(t)
    assert f.get("http://hub/x").etag is None
    f.get("http://hub/x", etag=tag)  # e.g. from a corrupt state file
    assert "If-None-Match" not in t.requests[1][2]


def test_a_slow_name_lookup_is_bounded_by_the_deadline() -> None:
    import threading
    import time

    from reconciler.agent.fetch import HttpTransport

    release = threading.Event()

    def slow_lookup(*args):
        release.wait(30)  # a resolver that never answers in time
        raise OSError("late")

    f = Fetcher(HttpTransport(getaddrinfo=slow_lookup), timeout=1.0)
    start = time.monotonic()
    try:
        with pytest.raises(FetchError, match="deadline"):
            f.get("http://hub.example:8443/v1/orgs/acme/manifest")
        assert time.monotonic() - start < 2.0
    finally:
        release.set()


def test_name_lookup_failures_and_literals() -> None:
    import socket

    from reconciler.agent.fetch import resolve

    def fails(*args):
        raise socket.gaierror(-2, "Name or service not known")

    with pytest.raises(OSError, match="not known"):
        resolve("nowhere.example", 80, 1.0, fails)
    assert resolve("127.0.0.1", 80, 1.0, fails)[0][4] == ("127.0.0.1", 80)
    assert resolve("::1", 80, 1.0, fails)[0][0] == socket.AF_INET6
    assert resolve("localhost", 80, 5.0)  # the real resolver


def test_a_portal_page_answering_a_report_is_temporary() -> None:
    t = Transport((200, {"content-type": "text/html"}, b"<html>login</html>"))
    with pytest.raises(FetchError, match="captive portal"):
        Fetcher(t).post_json("http://hub/r", {"a": 1})
