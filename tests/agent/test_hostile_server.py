"""The agent against a hostile or broken manifest server: a real HTTP(S) server on
loopback (threads) that sends what an attacker or a broken proxy would, and the
real ``Fetcher`` / ``HttpTransport``. Each class of attack has several cases:
deep JSON, gzip bombs, huge Content-Length, endless chunked bodies, slow drips
(measured against the deadline with a monotonic clock), truncated bodies,
wrong content types, header floods, and strict X.509 on a real handshake. The
same hostile documents go to ``meshops manifest verify`` as files."""

from __future__ import annotations

import datetime
import gzip
import ipaddress
import os
import socket
import ssl
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import pytest

from reconciler.agent.fetch import Fetcher, TlsConfig
from reconciler.errors import ConfigError, FetchError, InputRefused, ManifestRefused

from .helpers import NOW, FakeBackend, Org, device, write_agent

ORG = Org()
DEEP = 200_000
Script = Callable[[socket.socket, threading.Event], None]


class HostileServer:
    """Accepts connections on 127.0.0.1, reads one request's head, then runs
    ``script(conn, stop)``. ``stop`` is set when the test leaves the block; every
    script returns soon after, and every thread is joined."""

    def __init__(self, script: Script, tls: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.tls = tls
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.requests: list[bytes] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)

    def url(self, path: str = "/v1/orgs/acme/manifest") -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> Self:
        self._accept.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._accept.join(5)
        self.listener.close()
        for t in self.threads:
            t.join(5)
        assert not any(t.is_alive() for t in self.threads), "a server thread did not end"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            t = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            # read the request body too: closing with unread bytes sends a RST, which
            # could reach the agent before the answer does
            top, _, rest = head.partition(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in top.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(rest) < length:
                data = conn.recv(65536)
                if not data:
                    return
                rest += data
            self.requests.append(head)
            self.script(conn, self.stop)
        except (OSError, ssl.SSLError):
            pass  # the agent hung up: that is the point of most tests
        finally:
            conn.close()


# -- scripts ---------------------------------------------------------------------
def answer(body: bytes, *, status: str = "200 OK", headers: dict[str, str] | None = None,
           length: bool = True) -> Script:
    def script(conn: socket.socket, stop: threading.Event) -> None:
        head = [f"HTTP/1.1 {status}", "Connection: close"]
        hdrs = {"Content-Type": "application/vnd.meshops.manifest+json", **(headers or {})}
        if length:
            hdrs.setdefault("Content-Length", str(len(body)))
        head += [f"{k}: {v}" for k, v in hdrs.items()]
        conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    return script


def then_hold(first: Script) -> Script:
    """``first``, then keep the connection open, silent, until the test ends."""
    def script(conn: socket.socket, stop: threading.Event) -> None:
        first(conn, stop)
        stop.wait(30)
    return script


def drip(data: bytes, interval: float) -> Script:
    """``data`` one byte at a time, ``interval`` seconds apart."""
    def script(conn: socket.socket, stop: threading.Event) -> None:
        for i in range(len(data)):
            conn.sendall(data[i:i + 1])
            if stop.wait(interval):
                return
    return script


def endless(head: bytes, piece: bytes) -> Script:
    """``head``, then ``piece`` again and again until the agent hangs up."""
    def script(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(head)
        while not stop.is_set():
            conn.sendall(piece)
    return script


def silent(conn: socket.socket, stop: threading.Event) -> None:
    stop.wait(30)


def hang_up(conn: socket.socket, stop: threading.Event) -> None:
    return


def head(headers: str = "Content-Type: application/json") -> bytes:
    return f"HTTP/1.1 200 OK\r\n{headers}\r\n\r\n".replace("\r\n\r\n\r\n", "\r\n\r\n").encode()


def fetch_with(script: Script, fetcher: Fetcher | None = None, **get: Any) -> Any:
    with HostileServer(script) as server:
        return (fetcher or Fetcher(timeout=5)).get(server.url(), **get)


def refused(script: Script, error: type[Exception], fetcher: Fetcher | None = None,
            **get: Any) -> tuple[Exception, float]:
    """The error ``script`` causes, and how long the agent took to give up."""
    start = time.monotonic()
    with pytest.raises(error) as err:
        fetch_with(script, fetcher, **get)
    return err.value, time.monotonic() - start


# -- 1. nesting depth: the real agent pass, then every JSON a server supplies ------
def _deep(kind: str) -> bytes:
    if kind == "arrays":
        return b"[" * DEEP + b"]" * DEEP
    if kind == "objects":
        return b'{"a":' * DEEP + b"1" + b"}" * DEEP
    if kind == "mixed":
        return b'[{"a":' * (DEEP // 2) + b"1" + b"}]" * (DEEP // 2)
    # a well-formed envelope with a deep extra member: parsed before any signature
    return (b'{"payload":"e30=","payloadType":"application/vnd.meshops.manifest+json",'
            b'"signatures":[{"keyid":"x","sig":"AA=="}],"x":' + b"[" * DEEP + b"]" * DEEP
            + b"}")


@pytest.mark.parametrize("kind", ["arrays", "objects", "mixed", "inside-envelope"])
@pytest.mark.parametrize("gzipped", [False, True])
def test_agent_apply_refuses_a_deep_manifest_without_a_traceback(tmp_path, kind,
                                                                 gzipped) -> None:
    """``agent apply`` is one ``reconcile_once``: the real Fetcher against the
    server, the manifest refused before the interface is touched."""
    from reconciler.agent.reconcile import reconcile_once

    body = _deep(kind)
    headers = {"Content-Encoding": "gzip"} if gzipped else {}
    with HostileServer(answer(gzip.compress(body) if gzipped else body,
                              headers=headers)) as server:
        config = write_agent(tmp_path, ORG, manifest_url=server.url("/acme/manifest.json"))
        backend = FakeBackend()
        with pytest.raises((ManifestRefused, InputRefused)) as err:
            reconcile_once(config, fetch=Fetcher(timeout=5), backend=backend, now=NOW)
    # gzipped, the brackets compress over 100:1: refused as a bomb before parsing
    assert err.value.reason in (("malformed", "bomb") if gzipped else ("malformed",))
    assert "levels deep, over the limit of 64" in str(err.value) or \
        "decompression bomb" in str(err.value)
    assert backend.applied == [] and backend.observes == 0


def test_agent_run_survives_a_deep_manifest_and_converges_when_it_is_fixed(tmp_path) -> None:
    """``agent run``: the loop reports the refusal and carries on; the next
    good manifest applies."""
    import random

    from reconciler.agent.loop import AgentLoop

    good = ORG.sign(ORG.manifest([device("alpha", 1, "10.77.0.1"),
                                  device("beta", 2, "10.77.0.2")]))
    bodies = [_deep("arrays"), good]

    def script(conn: socket.socket, stop: threading.Event) -> None:
        answer(bodies[0] if len(server.requests) == 1 else bodies[1])(conn, stop)

    errors: list[Exception] = []
    with HostileServer(script) as server:
        config = write_agent(tmp_path, ORG, manifest_url=server.url("/m.json"))
        backend = FakeBackend()
        loop = AgentLoop(config, fetch=Fetcher(timeout=5), backend=backend,
                         clock=lambda: NOW, sleep=lambda s: None, rng=random.Random(1),
                         on_error=errors.append)
        loop.run(max_passes=2)
    assert [type(e) for e in errors] == [ManifestRefused]
    assert loop.stats.passes == 2 and loop.stats.last_error is None
    assert len(backend.state.peers) == 1


def test_a_deep_signed_payload_is_a_schema_refusal(tmp_path) -> None:
    """A signed payload can be hostile too (a leaked key, a publisher bug)."""
    from reconciler.pki.envelope import load_trust
    from reconciler.pki.manifest import sign_manifest, verify_manifest

    for payload in (b"[" * DEEP + b"]" * DEEP, b"\xff\xfe", b'{"serial": NaN}',
                    b'{"serial": 1' + b"0" * 5000 + b"}"):
        envelope = sign_manifest(payload, ORG.key)
        with HostileServer(answer(envelope)) as server:
            got = Fetcher(timeout=5).get(server.url())
        with pytest.raises(ManifestRefused) as err:
            verify_manifest(got.body, load_trust(ORG.trust), "acme", None, NOW)
        assert err.value.reason == "schema"


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000,
                                  b'{"a":' * 40_000 + b"1" + b"}" * 40_000,
                                  b'{"cert": [' * 100])
def test_deep_or_broken_json_from_the_cert_endpoint_and_the_report(body) -> None:
    got = fetch_with(answer(body, headers={"Content-Type": "application/json"}), kind="cert")
    with pytest.raises(InputRefused) as err:
        got.json()
    assert err.value.reason in ("too-deep", "not-json")
    with HostileServer(answer(body, headers={"Content-Type": "application/json"})) as server, \
            pytest.raises(InputRefused) as err:
        Fetcher(timeout=5).post_json(server.url("/v1/orgs/acme/endpoints"), {"a": 1})
    assert err.value.reason in ("too-deep", "not-json")


def test_a_deep_error_body_is_only_left_out_of_the_message() -> None:
    for status, error in (("500 Oops", FetchError), ("403 Forbidden", ConfigError)):
        exc, _ = refused(answer(_deep("objects"), status=status), error)
        assert str(exc).endswith(status.split()[0])


# -- 2. gzip bombs ------------------------------------------------------------------
def _zeros_gzip_members(members: int, size: int = 1 << 20) -> bytes:
    one = gzip.compress(bytes(size), 9)
    return one * members


def _zeros_gzip_single(total: int) -> bytes:
    """One gzip member that would expand to ``total`` zero bytes: 1 MiB of zeros
    deflated once with a full flush (byte-aligned, no shared window), repeated.
    The trailer is never reached by a bounded reader."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = comp.compress(bytes(1 << 20)) + comp.flush(zlib.Z_FULL_FLUSH)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + block * (total >> 20) + b"\x03\x00" + bytes(8)


@pytest.mark.parametrize("bomb", [
    pytest.param(lambda: _zeros_gzip_members(2048), id="2GiB-in-2048-members"),
    pytest.param(lambda: _zeros_gzip_single(2 << 30), id="2GiB-single-member"),
    pytest.param(lambda: gzip.compress(bytes(64 << 20)), id="64MiB-zeros"),
    pytest.param(lambda: gzip.compress(b'{"a":"' + b"A" * (40 << 20) + b'"}'),
                 id="40MiB-json-string"),
])
def test_gzip_bombs_are_refused_early_in_bounded_memory(bomb) -> None:
    body = bomb()
    tracemalloc.start()
    try:
        exc, elapsed = refused(answer(body, headers={"Content-Encoding": "gzip"}), InputRefused)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert exc.reason == "bomb" and "decompression bomb" in str(exc)
    assert peak < len(body) * 3 + (16 << 20)  # the body, and a few MiB of output at most
    assert elapsed < 10


def test_a_low_ratio_body_over_the_cap_once_decompressed_is_too_large() -> None:
    data = os.urandom(3 << 20).hex().encode()  # compresses about 2:1, under the ratio cap
    body = gzip.compress(data)
    fetcher = Fetcher(timeout=10, limits={"manifest": 4 << 20})
    assert len(body) < 4 << 20
    exc, _ = refused(answer(body, headers={"Content-Encoding": "gzip"}), InputRefused, fetcher)
    assert exc.reason == "too-large" and "once decompressed" in str(exc)


def test_gzip_inside_gzip_is_decoded_once() -> None:
    inner = gzip.compress(bytes(64 << 20))
    got = fetch_with(answer(gzip.compress(inner), headers={"Content-Encoding": "gzip"}))
    assert got.body == inner  # the inner bomb is not expanded; it then fails as JSON
    with pytest.raises(InputRefused, match="not UTF-8|not JSON"):
        got.json()


@pytest.mark.parametrize("body,match", [
    (b"\x1f\x8b\x08\x00garbage-garbage", "corrupt gzip"),
    (gzip.compress(b'{"a": 1}' * 1000)[:-30], "truncated gzip"),
    (b"not gzip at all", "corrupt gzip"),
])
def test_broken_gzip_is_a_temporary_error(body, match) -> None:
    exc, _ = refused(answer(body, headers={"Content-Encoding": "gzip"}), FetchError)
    assert match in str(exc)


@pytest.mark.parametrize("encoding", ["br", "deflate", "gzip, gzip", "x" * 500])
def test_an_encoding_that_was_not_asked_for_is_refused(encoding) -> None:
    exc, _ = refused(answer(b"{}", headers={"Content-Encoding": encoding}), InputRefused)
    assert exc.reason == "encoding" and "gzip only" in str(exc)


def test_a_normal_gzip_manifest_still_works() -> None:
    envelope = ORG.sign(ORG.manifest([device(f"d{i}", i % 250 + 1, f"10.77.{i // 250}.{i % 250 + 1}")
                                      for i in range(2000)]))
    got = fetch_with(answer(gzip.compress(envelope), headers={"Content-Encoding": "gzip"}))
    assert got.body == envelope


# -- 3. huge or lying Content-Length, plain huge bodies ---------------------------
@pytest.mark.parametrize("length", [str(2 << 30), "9" * 40, str((32 << 20) + 1)])
def test_a_huge_content_length_is_refused_before_reading(length) -> None:
    exc, elapsed = refused(then_hold(lambda c, s: c.sendall(
        head(f"Content-Type: application/json\r\nContent-Length: {length}") + b"{")),
        InputRefused)
    assert exc.reason == "too-large" and "Content-Length" in str(exc)
    assert elapsed < 2  # not read, not waited for


def test_exactly_the_cap_is_accepted_and_one_more_byte_is_not() -> None:
    fetcher = Fetcher(timeout=5, limits={"manifest": 1000})
    assert len(fetch_with(answer(b" " * 1000), fetcher).body) == 1000
    exc, _ = refused(answer(b" " * 1001), InputRefused, fetcher)
    assert exc.reason == "too-large"
    exc, _ = refused(answer(b" " * 1001, length=False), InputRefused, fetcher)
    assert exc.reason == "too-large"


@pytest.mark.parametrize("length", ["abc", "-5", ""])
def test_a_plain_endless_body_stops_at_the_cap(length) -> None:
    hdr = "Content-Type: application/json" + (f"\r\nContent-Length: {length}" if length else "")
    fetcher = Fetcher(timeout=20, limits={"manifest": 4 << 20})
    exc, _ = refused(endless(head(hdr), bytes(65536)), InputRefused, fetcher)
    assert exc.reason == "too-large" and "not read further" in str(exc)


def test_a_2gib_plain_body_ends_at_the_default_cap_in_bounded_memory() -> None:
    tracemalloc.start()
    try:
        exc, _ = refused(endless(head(f"Content-Type: application/json\r\nContent-Length: "
                                      f"{2 << 30}"), bytes(65536)), InputRefused)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert exc.reason == "too-large" and peak < 1 << 20  # refused on the header alone
    tracemalloc.start()
    try:
        exc, _ = refused(endless(head(), bytes(65536)), InputRefused, Fetcher(timeout=30))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert exc.reason == "too-large" and peak < (32 << 20) * 3


# -- 4. chunked bodies ------------------------------------------------------------
CHUNKED = "Content-Type: application/json\r\nTransfer-Encoding: chunked"


@pytest.mark.parametrize("piece", [
    b"10000\r\n" + bytes(0x10000) + b"\r\n",  # 64 KiB chunks forever
    b"1\r\n \r\n",  # tiny chunks forever
])
def test_an_endless_chunked_body_stops_at_the_cap(piece) -> None:
    fetcher = Fetcher(timeout=20, limits={"manifest": 64 << 10})
    exc, _ = refused(endless(head(CHUNKED), piece), InputRefused, fetcher)
    assert exc.reason == "too-large"


def test_one_enormous_chunk_stops_at_the_cap() -> None:
    fetcher = Fetcher(timeout=20, limits={"manifest": 1 << 20})
    exc, _ = refused(endless(head(CHUNKED) + b"ffffffffffffff\r\n", bytes(65536)),
                     InputRefused, fetcher)
    assert exc.reason == "too-large"


def test_a_chunk_size_line_that_never_ends_is_a_protocol_error() -> None:
    exc, _ = refused(endless(head(CHUNKED) + b"1", b"0" * 65536), FetchError)
    assert "chunk" in str(exc).lower() or "line" in str(exc).lower()


# -- 5. slow servers: the total deadline ------------------------------------------
TIMEOUT = 3.0
SLACK = 1.5  # watchdog step (0.25 s), thread start-up, a loaded CI machine


@pytest.mark.parametrize("script", [
    pytest.param(drip(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", 1.0), id="status"),
    pytest.param(lambda c, s: (c.sendall(b"HTTP/1.1 200 OK\r\n"),
                               drip(b"X-Slow: " + b"a" * 100 + b"\r\n\r\n", 1.0)(c, s)),
                 id="headers"),
    pytest.param(lambda c, s: (c.sendall(head("Content-Type: application/json\r\n"
                                              "Content-Length: 100")),
                               drip(b" " * 100, 1.0)(c, s)), id="body-1-byte-per-s"),
    pytest.param(lambda c, s: (c.sendall(head(CHUNKED)),
                               drip(b"1\r\n \r\n" * 100, 0.2)(c, s)), id="chunked-drip"),
    pytest.param(lambda c, s: (c.sendall(head("Content-Type: application/json")),
                               drip(b" " * 100, 0.5)(c, s)), id="unframed-drip"),
    pytest.param(silent, id="silent"),
    pytest.param(drip(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", 4.0),
                 id="one-byte-every-4s"),
])
def test_a_slow_server_is_abandoned_at_the_deadline(script) -> None:
    exc, elapsed = refused(script, FetchError, Fetcher(timeout=TIMEOUT))
    assert "deadline" in str(exc) and "too slow or stalled" in str(exc)
    assert TIMEOUT - 0.3 <= elapsed <= TIMEOUT + SLACK, elapsed


def test_a_long_poll_deadline_is_wait_plus_the_margin() -> None:
    exc, elapsed = refused(silent, FetchError, Fetcher(timeout=TIMEOUT), wait=1)
    assert "deadline" in str(exc)
    assert 3.0 - 0.3 <= elapsed <= 3.0 + SLACK, elapsed  # wait 1 + min(timeout, 2)


def test_a_silent_tls_server_is_abandoned_in_time() -> None:
    """Accepts TCP but never answers the ClientHello."""
    with HostileServer(silent) as server:  # no TLS on the server side: it never speaks
        start = time.monotonic()
        with pytest.raises(FetchError):
            Fetcher(timeout=1.5).get(server.url().replace("http:", "https:"))
        assert time.monotonic() - start <= 1.5 + SLACK


def test_a_drip_that_finishes_in_time_is_accepted() -> None:
    body = b'{"ok": true}'
    got = fetch_with(drip(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 12\r\n\r\n" + body, 0.005), Fetcher(timeout=5))
    assert got.body == body and got.json() == {"ok": True}


# -- 6. truncated answers -----------------------------------------------------------
@pytest.mark.parametrize("script,match", [
    (lambda c, s: c.sendall(head("Content-Type: application/json\r\nContent-Length: 1000")
                            + b"{" * 10), "truncated answer: 10 of 1000"),
    (lambda c, s: c.sendall(head(CHUNKED) + b"64\r\n" + b" " * 10), "truncated"),
    (lambda c, s: c.sendall(head(CHUNKED) + b"2\r\n{}\r\n"), "truncated"),
    (lambda c, s: c.sendall(b"HTTP/1.1 200 OK\r\nContent-Le"), "before any body"),
    (hang_up, "Remote end closed"),
    (lambda c, s: c.sendall(b"\x16\x03\x01 not http at all\r\n\r\n"), ""),
])
def test_a_truncated_answer_is_a_temporary_error(script, match) -> None:
    exc, elapsed = refused(script, FetchError)
    assert match in str(exc) or not match
    assert elapsed < 3


# -- 7. wrong content types -----------------------------------------------------------
@pytest.mark.parametrize("ctype", ["text/html; charset=utf-8", "application/xml",
                                   "image/png", "text/html"])
def test_a_captive_portal_page_is_a_temporary_error(ctype) -> None:
    exc, _ = refused(answer(b"<html>Log in to the hotel wifi</html>",
                            headers={"Content-Type": ctype}), FetchError)
    assert "captive portal" in str(exc) and ctype.split(";")[0] in str(exc)


@pytest.mark.parametrize("ctype", [None, "application/json; charset=utf-8",
                                   "application/vnd.meshops.manifest+json",
                                   "application/octet-stream", "text/plain"])
def test_json_and_plain_file_server_types_are_accepted(ctype) -> None:
    headers = {"Content-Type": ctype} if ctype else {}

    def script(conn: socket.socket, stop: threading.Event) -> None:
        hdr = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        conn.sendall(f"HTTP/1.1 200 OK\r\n{hdr}Content-Length: 2\r\n\r\n{{}}".encode())

    assert fetch_with(script).body == b"{}"


# -- 8. header floods -------------------------------------------------------------------
@pytest.mark.parametrize("flood", [
    b"".join(b"X-%d: y\r\n" % i for i in range(200)),  # more than http.client's 100
    b"X-Long: " + b"a" * 70000 + b"\r\n",  # over its 64 KiB line limit
])
def test_a_header_flood_is_refused(flood) -> None:
    exc, elapsed = refused(lambda c, s: c.sendall(b"HTTP/1.1 200 OK\r\n" + flood + b"\r\n"),
                           FetchError)
    assert "header" in str(exc).lower() or "line" in str(exc).lower()
    assert elapsed < 3


# -- 9. strict X.509 on a real handshake ---------------------------------------------------
def _pki(tmp_path: Path, *, leaf_aki: bool) -> tuple[ssl.SSLContext, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hostile test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .add_extension(ca_ski, critical=False)
          .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
              ca_ski), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
               .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(hours=1))
               .add_extension(x509.SubjectAlternativeName(
                   [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                   critical=False)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                              critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False))
    if leaf_aki:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False)
    leaf = builder.sign(ca_key, hashes.SHA256())
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (tmp_path / "leaf.key").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    return server, str(tmp_path / "ca.pem")


def test_the_agent_context_is_strict() -> None:
    from reconciler.agent.fetch import HttpTransport

    ctx = HttpTransport(TlsConfig()).ssl_context()
    assert ctx.verify_flags & ssl.VERIFY_X509_STRICT
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_a_strict_clean_chain_verifies_and_one_without_aki_does_not(tmp_path) -> None:
    (tmp_path / "good").mkdir()
    good, ca = _pki(tmp_path / "good", leaf_aki=True)
    with HostileServer(answer(b"{}"), tls=good) as server:
        assert Fetcher(tls=TlsConfig(ca=ca), timeout=5).get(server.url()).body == b"{}"
    (tmp_path / "bad").mkdir()
    bad, ca = _pki(tmp_path / "bad", leaf_aki=False)
    with HostileServer(answer(b"{}"), tls=bad) as server, \
            pytest.raises(ConfigError, match="Missing Authority Key Identifier"):
        Fetcher(tls=TlsConfig(ca=ca), timeout=5).get(server.url())


def test_hostile_answers_over_tls_are_bounded_the_same_way(tmp_path) -> None:
    ctx, ca = _pki(tmp_path, leaf_aki=True)
    fetcher = Fetcher(tls=TlsConfig(ca=ca), timeout=TIMEOUT)
    with HostileServer(lambda c, s: (c.sendall(head("Content-Type: application/json\r\n"
                                                    "Content-Length: 100")),
                                     drip(b" " * 100, 1.0)(c, s)), tls=ctx) as server:
        start = time.monotonic()
        with pytest.raises(FetchError, match="deadline"):
            fetcher.get(server.url())
        assert time.monotonic() - start <= TIMEOUT + SLACK
    with HostileServer(answer(gzip.compress(bytes(64 << 20)),
                              headers={"Content-Encoding": "gzip"}), tls=ctx) as server, \
            pytest.raises(InputRefused, match="decompression bomb"):
        fetcher.get(server.url())


# -- 10. the same hostile documents as files to `meshops manifest verify` -------------------
@pytest.mark.parametrize("content,match", [
    (_deep("arrays"), "nested 200000 levels deep"),
    (_deep("objects"), "nested 200000 levels deep"),
    (_deep("inside-envelope"), "nested 200001 levels deep"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b"<html>captive portal</html>", "not JSON"),
    (b'{"payload": 1}', "not a DSSE envelope"),
])
def test_manifest_verify_refuses_hostile_files(tmp_path, capsys, content, match) -> None:
    from reconciler.cli import main

    (tmp_path / "trust.json").write_bytes(ORG.trust)
    (tmp_path / "m.json").write_bytes(content)
    rc = main(["manifest", "verify", str(tmp_path / "m.json"), "--trust",
               str(tmp_path / "trust.json"), "--org", "acme"])
    err = capsys.readouterr().err
    assert rc == 1 and match in err and str(tmp_path / "m.json") in err
    assert "Traceback" not in err and len(err) < 1000


def test_manifest_verify_refuses_a_huge_file_without_reading_it_all(tmp_path, capsys) -> None:
    from reconciler.cli import main

    (tmp_path / "trust.json").write_bytes(ORG.trust)
    with open(tmp_path / "m.json", "wb") as fh:  # sparse: 2 GiB, no disk used
        fh.truncate(2 << 30)
    tracemalloc.start()
    try:
        rc = main(["manifest", "verify", str(tmp_path / "m.json"), "--trust",
                   str(tmp_path / "trust.json"), "--org", "acme"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rc == 1 and "over the limit" in capsys.readouterr().err
    assert peak < 200 << 20


@pytest.mark.parametrize("which", ["manifest", "trust"])
@pytest.mark.parametrize("special", ["/dev/zero", "fifo", "dir"])
def test_manifest_verify_refuses_special_files(tmp_path, capsys, which, special) -> None:
    from reconciler.cli import main

    trust, manifest = tmp_path / "trust.json", tmp_path / "m.json"
    trust.write_bytes(ORG.trust)
    manifest.write_bytes(ORG.sign(ORG.manifest([device("alpha", 1, "10.77.0.1")])))
    target = tmp_path / "special"
    if special == "fifo":
        os.mkfifo(target)
    elif special == "dir":
        target.mkdir()
    else:
        target = Path(special)
    args = {"manifest": target if which == "manifest" else manifest,
            "trust": target if which == "trust" else trust}
    start = time.monotonic()
    rc = main(["manifest", "verify", str(args["manifest"]), "--trust", str(args["trust"]),
               "--org", "acme"])
    assert rc == 2 and time.monotonic() - start < 5
    assert str(target) in capsys.readouterr().err


def test_manifest_verify_names_a_hostile_trust_file(tmp_path, capsys) -> None:
    from reconciler.cli import main

    (tmp_path / "trust.json").write_bytes(_deep("objects"))
    (tmp_path / "m.json").write_bytes(b"{}")
    rc = main(["manifest", "verify", str(tmp_path / "m.json"), "--trust",
               str(tmp_path / "trust.json"), "--org", "acme"])
    err = capsys.readouterr().err
    assert rc == 1 and str(tmp_path / "trust.json") in err and "levels deep" in err
