"""The agent's only HTTP and file I/O towards the hub or a manifest server.

``Fetcher.get(url, etag=..., wait=..., kind=...)`` reads ``file://`` paths and
``http(s)://`` URLs (ETag / If-None-Match, gzip, ``?wait=N`` long-poll, a
client certificate for mTLS); ``Fetcher.post_json`` sends endpoint reports;
``Fetcher.reset_tls`` drops the TLS context and the kept-open connection,
``Fetcher.close`` the connection. ``FetchLike`` is that contract
as a Protocol: the agent's pass depends on it, tests pass fakes. All network
I/O goes through one ``Transport`` callable, so tests swap in a fake and run
without sockets (the httpx pattern). Stdlib only (http.client + ssl): an
agent must not pay aiohttp's import time.

Bounded reads: a server, a proxy or a captive portal may be broken or
hostile, so every request is bounded (docs/security.md, "Hostile input"):

- **a total deadline**: ``timeout`` seconds (a long-poll: ``wait`` plus a
  small margin) for the whole request -- name lookup, connect, TLS
  handshake, headers and body -- not per ``recv``: a server that drips one
  byte a second is cut off at the deadline (a watchdog thread shuts the
  socket down under a blocked read; the name lookup runs in a thread that
  is left behind). The TCP/TLS connect alone is also bounded by
  ``connect_timeout``;
- **a size cap per request kind** (``LIMITS``: manifest, feed, cert, report):
  a ``Content-Length`` over the cap is refused before the body is read, and a
  chunked or unframed body stops being read one byte past it;
- **gzip within bounds**: the hub gzips manifests (the agent asks for it:
  large manifests shrink 2-3x), so gzip stays, decompressed in steps: more
  than ``MAX_GZIP_RATIO``:1 (once past ``RATIO_FLOOR`` bytes) is a bomb, and
  the decompressed size has the kind's cap too. Only ``gzip`` and
  ``identity`` encodings are accepted;
- **a JSON content type** (or none, or ``application/octet-stream`` /
  ``text/plain`` from a plain file server): a 200 with ``text/html`` is a
  captive portal or a proxy's page, not a manifest;
- JSON answers (``Response.json``, ``post_json``, error details) are read with
  ``reconciler.boundedjson``: size, nesting depth, encoding; an ETag that is
  not short printable ASCII is neither kept nor sent back.

Error classes (the loop reads the retry class): unreachable, timeouts, the
deadline, a truncated body, a corrupt gzip stream, a non-JSON content type,
5xx and 429 are ``FetchError`` (temporary: the network or a portal may heal,
and the pass falls back to the cached manifest); a body over the cap, a gzip
bomb, an unknown encoding and invalid JSON are ``InputRefused`` (permanent:
the same server will send the same thing again; the loop retries at the
normal interval, the tunnels stay up); other 4xx and TLS verification
failures are ``ConfigError`` (a human must fix the URL, the certificate or
the enrollment).

A request never wedges on a dead path either: while a response is awaited,
the watchdog checks every ``LIVENESS_STEP`` seconds that the connection's
local address is still the one the routing table picks towards the server.
When the device moved (its LAN address is gone or another one is used) the
request fails at once with ``FetchError`` instead of waiting for a NAT that
forgot the connection.

Kept-open connections: a connection whose request ended cleanly (the whole
body read, no ``Connection: close``, no error, no watchdog trip) is kept, one
per server, and the next request to that server reuses it. ``agent run``
therefore long-polls, reports and long-polls again on one TLS connection:
no handshake per request for the device or the hub, and the hub answers the
agent's next long-poll in its own wake round (docs/api.md, "Answers before
re-polls"). A kept connection is dropped, never reused, when it is idle
longer than ``KEEP_IDLE`` (the hub closes idle ones at 75 s), when anything
can be read from it while idle (the server closed it, or sent bytes nobody
asked for: they are never taken as the next answer), after ``reset_tls``
(a renewed certificate or a move), and by ``close``. A GET that fails on a
reused connection before any answer arrived (the server closed it at that
moment) is sent once more on a new connection; a POST is not sent twice.

TLS: the context is verified against ``TlsConfig.ca`` (or the system store)
with ``ssl.VERIFY_X509_STRICT``, as Python 3.13's default context does, so an
agent behaves the same on 3.11 and on 3.13.

Called by ``agent.reconcile`` (manifest, feed, certificate, report),
``agent.loop`` and ``agent.runtime`` (which builds the ``Fetcher``).
"""

from __future__ import annotations

import json
import os
import stat
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol, Self
from urllib.parse import unquote, urlencode, urlsplit

from reconciler.boundedjson import loads as bounded_loads
from reconciler.errors import ConfigError, FetchError, InputRefused
from reconciler.structs import Record

USER_AGENT = "meshops-agent/0.1"
CONNECT_TIMEOUT = 2.0  # TCP connect + TLS handshake
LONG_POLL_MARGIN = 2.0  # a long-poll may take ``wait`` plus this
LIVENESS_STEP = 0.25  # seconds between watchdog checks while a request is in flight
READ_CHUNK = 64 * 1024
KEEP_IDLE = 60.0  # seconds a kept-open connection may idle before it is dropped

Kind = Literal["manifest", "feed", "cert", "report", "root"]
MiB = 1024 * 1024
# The largest body (after decompression) accepted per request kind. A manifest
# costs ~184 bytes per device (docs/benchmarks.md), 4/3 more in its base64
# envelope: 32 MiB holds ~130,000 devices. It must equal
# reconciler.pki.envelope.MAX_ENVELOPE_BYTES (a test keeps them in agreement).
LIMITS: Mapping[str, int] = {
    "manifest": 32 * MiB,
    "feed": 16 * MiB,  # a few hundred bytes per device entry
    "cert": 256 * 1024,  # {"cert": PEM, "ca": PEM}: a few KiB
    "report": 1 * MiB,  # the hub's answer to an endpoint report
    "root": 1 * MiB,  # a trust root (pki.root.MAX_ROOT_BYTES)
}
MAX_GZIP_RATIO = 100  # a real manifest envelope (base64 of JSON) compresses 2-4:1
RATIO_FLOOR = 1 * MiB  # smaller outputs cannot hurt; their ratio is not judged
ERROR_DETAIL_MAX = 64 * 1024  # an error body larger than this is not parsed
# Content types a manifest, feed or hub answer may carry: JSON, or what a plain
# file server says for a .json/.dsse file. Anything else (text/html above all)
# is a captive portal, a proxy's page or a wrong URL.
_GENERIC_TYPES = frozenset({"application/json", "text/json", "application/octet-stream",
                            "binary/octet-stream", "text/plain"})


class Response(Record):
    status: int  # 200, or 304 when If-None-Match matched
    body: bytes  # decompressed, at most the kind's limit
    etag: str | None = None
    url: str = ""  # names the source in refusal messages

    def json(self) -> Any:
        """The body as JSON, nesting depth bounded (``InputRefused``); its size was
        bounded when it was read."""
        return bounded_loads(self.body, what=self.url or "response",
                             max_bytes=max(len(self.body), 1))


class TlsConfig(Record):
    cert: str | None = None  # client certificate (PEM) for mTLS; used once the file exists
    key: str | None = None
    ca: str | None = None  # CA bundle for the server; None = system store
    server_name: str | None = None  # SNI + name to verify instead of the URL's host
    # False only for self-authenticating documents (trust roots, checked against
    # the pinned chain): a hub whose CA rotated while this device was away
    # cannot be verified until the new root is known (agent.source.walk_roots)
    verify: bool = True


class Transport(Protocol):
    def __call__(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None,
        timeout: float, max_bytes: int,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """Perform one request; return (status, lower-cased headers, raw body).

        ``timeout`` bounds the whole request (connect, send, headers, body);
        the raw (maybe compressed) body is at most ``max_bytes``. Raises
        ``FetchError`` (unreachable, deadline, truncated), ``InputRefused``
        (``too-large``) or ``ConfigError`` (TLS set-up or verification)."""


class FetchLike(Protocol):
    """What the agent's pass needs from its HTTP client (``Fetcher`` is the real one).

    Error contract: ``FetchError`` when the source cannot give an answer now
    (retry; fall back to the cache), ``InputRefused`` when the answer was
    refused by a bound (too large, a bomb, not JSON), ``ConfigError`` for a 4xx
    or a TLS failure."""

    def get(self, url: str, *, etag: str | None = None, wait: int | None = None,
            params: Mapping[str, Any] | None = None, kind: Kind = "manifest") -> Response:
        """GET ``url`` (``file://`` or ``http(s)://``), bounded by ``kind``'s limit;
        a 304 has an empty body. ``wait`` long-polls (the deadline grows by it)."""
        ...

    def post_json(self, url: str, obj: Any) -> Any:
        """POST ``obj`` as JSON; the answer parsed (bounded), or None when empty."""
        ...

    def reset_tls(self) -> None:
        """Forget the TLS context: the next request reloads the client certificate
        and starts without a session (after a renewal or a move)."""
        ...

    def close(self) -> None:
        """Close a kept-open connection (the agent is done with the server)."""
        ...


def route_source(host: str, port: int) -> str | None:
    """The source IP the routing table picks towards ``host`` (no packet is sent)."""
    import socket

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((host, port or 9))
            return str(sock.getsockname()[0])
    except OSError:
        return None


class Watchdog:
    """While a request is in flight, check every ``step`` seconds that ``alive()``
    still holds and that ``deadline`` (on ``clock``) has not passed; when either
    fails, shut the socket down so the blocked read returns at once. ``reason``
    says which: ``"moved"`` or ``"deadline"``; ``tripped`` is true after either.

    A thread, because the read may block inside TLS (post-handshake messages make
    the socket readable before any response byte, so ``select`` cannot tell) or
    inside http.client's header parsing, which a per-``recv`` timeout cannot
    bound. ``sock`` may be a ``dup()`` of the connection's socket: shutdown(2)
    acts on the socket, not the descriptor, so it reaches the TLS wrapper too."""

    def __init__(self, sock: Any, alive: Callable[[], bool], *,
                 step: float = LIVENESS_STEP, deadline: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        import threading

        self._sock = sock
        self._alive = alive
        self._step = step
        self._deadline = deadline
        self._clock = clock
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="meshops-fetch-watchdog",
                                        daemon=True)
        self.reason: str | None = None

    @property
    def tripped(self) -> bool:
        return self.reason is not None

    def _wait_step(self) -> float:
        if self._deadline is None:
            return self._step
        return max(0.0, min(self._step, self._deadline - self._clock()))

    def _watch(self) -> None:
        import socket

        while not self._done.wait(self._wait_step()):
            if self._deadline is not None and self._clock() >= self._deadline:
                self.reason = "deadline"
            elif not self._alive():
                self.reason = "moved"
            else:
                continue
            try:  # the plain socket's shutdown: the TLS object stays with the reader
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
            except OSError:
                pass
            return

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


class _Kept(Record):
    """An idle kept-open connection (``HttpTransport``)."""

    origin: tuple[str, str, int]  # scheme, host, port
    conn: Any  # http.client.HTTPConnection whose ``sock`` is open
    since: float  # idle since (transport clock)


class HttpTransport:
    """http.client transport with one TLS context (client cert when configured)
    and at most one kept-open connection (see the module docstring)."""

    def __init__(self, tls: TlsConfig | None = None, *,
                 connect_timeout: float = CONNECT_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic,
                 getaddrinfo: Callable[..., list[Any]] | None = None,
                 keep_idle: float = KEEP_IDLE) -> None:
        import threading

        self._tls = tls or TlsConfig()
        self._getaddrinfo = getaddrinfo
        self._context: Any = None
        self.connect_timeout = connect_timeout
        self._clock = clock
        self.keep_idle = keep_idle
        self._kept: _Kept | None = None
        self._lock = threading.Lock()
        self.connections = 0  # connections opened so far (the tests count them)

    def reset(self) -> None:
        """Drop the TLS context and the kept connection: the next request
        reloads the certificate files and connects afresh."""
        self._context = None
        self.close()

    def close(self) -> None:
        """Close the kept-open connection, if any."""
        with self._lock:
            kept, self._kept = self._kept, None
        if kept is not None:
            kept.conn.close()

    def _take(self, origin: tuple[str, str, int]) -> Any:
        """The kept connection to ``origin`` when it may be reused, else None
        (a kept connection that may not is closed)."""
        import select

        with self._lock:
            kept, self._kept = self._kept, None
        if kept is None:
            return None
        sock = kept.conn.sock
        fresh = kept.origin == origin and sock is not None and \
            self._clock() - kept.since < self.keep_idle
        if fresh:
            try:  # readable while idle: closed by the server, or bytes nobody asked for
                fresh = not select.select([sock], [], [], 0)[0] and \
                    not getattr(sock, "pending", lambda: 0)()
                remote = sock.getpeername()  # and still the route's source address
                fresh = fresh and route_source(remote[0], remote[1]) == sock.getsockname()[0]
            except (OSError, ValueError):
                fresh = False
        if not fresh:
            kept.conn.close()
            return None
        return kept.conn

    def _keep(self, origin: tuple[str, str, int], conn: Any) -> None:
        with self._lock:
            if self._kept is not None:  # another thread's: keep the newer one
                self._kept.conn.close()
            self._kept = _Kept(origin, conn, self._clock())

    def ssl_context(self) -> Any:
        """The client context: system or ``ca`` trust, strict X.509, mTLS cert if present."""
        import ssl

        if self._context is None:
            try:
                if not self._tls.verify:
                    ctx = ssl.create_default_context()
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                    self._context = ctx
                    return ctx
                ctx = ssl.create_default_context(cafile=self._tls.ca)
                # Python 3.13's default; refuses e.g. a CA without a key identifier
                ctx.verify_flags |= ssl.VERIFY_X509_STRICT
                if self._tls.cert and os.path.exists(self._tls.cert):
                    ctx.load_cert_chain(self._tls.cert, self._tls.key)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"TLS set-up failed (cert {self._tls.cert}, ca "
                                  f"{self._tls.ca}): {exc}") from exc
            self._context = ctx
        return self._context

    def __call__(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None,
        timeout: float, max_bytes: int,
    ) -> tuple[int, Mapping[str, str], bytes]:
        deadline = self._clock() + timeout
        try:
            return self._request(method, url, headers=headers, body=body, timeout=timeout,
                                 max_bytes=max_bytes, deadline=deadline, reuse=True)
        except _StaleKept:  # closed by the server as the request went out: once more, afresh
            return self._request(method, url, headers=headers, body=body, timeout=timeout,
                                 max_bytes=max_bytes, deadline=deadline, reuse=False)

    def _request(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None,
        timeout: float, max_bytes: int, deadline: float, reuse: bool,
    ) -> tuple[int, Mapping[str, str], bytes]:
        # imported here: a file:// agent never pays for http.client, email and ssl
        import socket
        import ssl
        from http.client import (
            HTTPConnection,
            HTTPException,
            HTTPSConnection,
            IncompleteRead,
            RemoteDisconnected,
        )

        parts = urlsplit(url)
        where = f"{parts.scheme}://{parts.netloc}"
        https = parts.scheme == "https"
        host = parts.hostname or ""
        try:
            port = parts.port or (443 if https else 80)
        except ValueError as exc:
            raise ConfigError(f"{url}: {exc}") from exc
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        context = self.ssl_context() if https else None
        origin = (parts.scheme, host, port)
        reused = self._take(origin) if reuse else None
        conn = reused or (HTTPSConnection(host, port, context=context) if https
                          else HTTPConnection(host, port))
        kept = False

        def remaining() -> float:
            left = deadline - self._clock()
            if left <= 0:
                raise TimeoutError("deadline")
            return left

        dog: Watchdog | None = None
        watch: socket.socket | None = None
        resp: Any = None
        try:
            if reused is None:
                self.connections += 1
                sock = self._connect(host, port, remaining)
                conn.sock = sock  # http.client sends on it as is; close() closes it
            # a plain socket on a copy of the descriptor, for the watchdog's shutdown
            # (an SSLSocket cannot be dup()ed; shutdown(2) reaches the TLS layer too)
            watch = socket.socket(fileno=os.dup(conn.sock.fileno()))
            local, remote = conn.sock.getsockname()[0], conn.sock.getpeername()
            dog = Watchdog(watch, lambda: route_source(remote[0], remote[1]) == local,
                           deadline=deadline, clock=self._clock)
            with dog:
                if context is not None and reused is None:
                    sni = self._tls.server_name or host
                    conn.sock.settimeout(min(self.connect_timeout, remaining()))
                    conn.sock = context.wrap_socket(conn.sock, server_hostname=sni)
                live = conn.sock  # getresponse() drops conn.sock when the server closes
                live.settimeout(remaining())
                try:
                    conn.request(method, target, body=body, headers=dict(headers))
                    resp = conn.getresponse()
                except (RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                        ConnectionAbortedError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
                    if reused is not None and method == "GET" and not dog.tripped:
                        raise _StaleKept() from None
                    raise
                resp_headers = {k.lower(): v for k, v in resp.getheaders()}
                declared = resp.length  # None when chunked or unframed
                if declared is not None and declared > max_bytes:
                    raise InputRefused("too-large", f"{url}: the server announces "
                                       f"{declared} bytes (Content-Length), over the limit "
                                       f"of {max_bytes} bytes")
                data = bytearray()
                while not resp.isclosed():  # closed: the whole body has arrived
                    live.settimeout(remaining())
                    chunk = resp.read(min(READ_CHUNK, max_bytes + 1 - len(data)))
                    if not chunk:
                        break
                    data += chunk
                    if len(data) > max_bytes:
                        raise InputRefused("too-large", f"{url}: the body is over the limit "
                                           f"of {max_bytes} bytes; not read further")
            if dog.tripped:  # an EOF caused by the shutdown is not the end of the body
                raise OSError("connection shut down by the watchdog")
            if declared is not None and len(data) < declared:
                raise FetchError(f"{url}: truncated answer: {len(data)} of {declared} "
                                 "bytes, then the connection closed")
            if declared is None and not resp.chunked and not data and method == "GET" \
                    and resp.status == 200:
                # unframed: only EOF ends it, so a head cut short looks like this
                raise FetchError(f"{url}: truncated answer: the connection closed before "
                                 "any body (no Content-Length)")
            # the whole answer, and the server keeps the connection: keep it too
            kept = resp.isclosed() and not resp.will_close and conn.sock is not None
            if kept:
                self._keep(origin, conn)
            return resp.status, resp_headers, bytes(data)
        except ssl.SSLCertVerificationError as exc:
            raise ConfigError(f"{where}: TLS verification failed: "
                              f"{exc.verify_message}") from exc
        except (OSError, HTTPException) as exc:  # TimeoutError is an OSError
            if (dog is not None and dog.reason == "deadline") or str(exc) == "deadline" \
                    or (isinstance(exc, TimeoutError) and self._clock() >= deadline - 0.05):
                raise FetchError(f"{where}: no complete answer within the {timeout:g} s "
                                 "deadline (the server is too slow or stalled); request "
                                 "abandoned") from exc
            if dog is not None and dog.reason == "moved":
                raise FetchError(f"{where}: the local address of the connection is gone "
                                 "(the device moved or lost its network); request "
                                 "abandoned") from exc
            if isinstance(exc, IncompleteRead):
                raise FetchError(f"{url}: truncated answer: the connection closed inside "
                                 "the body") from exc
            raise FetchError(f"{where}: {exc or type(exc).__name__}") from exc
        finally:
            if not kept:
                if resp is not None:
                    resp.close()
                conn.close()
            if watch is not None:
                watch.close()


    def _connect(self, host: str, port: int, remaining: Callable[[], float]) -> Any:
        """A TCP connection to the first address of ``host`` that answers, each try
        bounded by ``connect_timeout`` and the name lookup by the deadline too."""
        import socket

        error: OSError = OSError(f"{host} has no address")
        for family, kind, proto, _, address in resolve(host, port, remaining(),
                                                      self._getaddrinfo):
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(min(self.connect_timeout, remaining()))
                sock.connect(address)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
                if str(exc) == "deadline":
                    break
        raise error


class _StaleKept(Exception):
    """A reused connection failed before any answer: the server had closed it."""


def resolve(host: str, port: int, timeout: float,
            getaddrinfo: Callable[..., list[Any]] | None = None) -> list[Any]:
    """``getaddrinfo`` for a TCP connection, within ``timeout`` seconds.

    The C resolver cannot be interrupted and may take resolv.conf's timeout
    times its attempts per server, so it runs in a daemon thread that is left
    behind when the deadline passes. An IP literal is not looked up."""
    import ipaddress
    import socket
    import threading

    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]
    lookup = getaddrinfo or socket.getaddrinfo
    out: list[Any] = []
    failed: list[OSError] = []
    done = threading.Event()

    def work() -> None:
        try:
            out.extend(lookup(host, port, 0, socket.SOCK_STREAM))
        except OSError as exc:
            failed.append(exc)
        except UnicodeError as exc:  # an IDNA label that cannot be encoded
            failed.append(OSError(f"{host!r} is not a valid host name ({exc})"))
        done.set()

    threading.Thread(target=work, name="meshops-resolve", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError("deadline")
    if failed:
        raise failed[0]
    return out


class Fetcher:
    """GET manifests/feeds/certificates and POST reports within bounds (see the
    module docstring); ``transport`` is injectable, ``limits`` overrides ``LIMITS``."""

    def __init__(self, transport: Transport | None = None, *, timeout: float = 10.0,
                 tls: TlsConfig | None = None, limits: Mapping[str, int] | None = None,
                 max_gzip_ratio: int = MAX_GZIP_RATIO) -> None:
        self.transport: Transport = transport or HttpTransport(tls)
        self.timeout = timeout
        self.limits: dict[str, int] = {**LIMITS, **(limits or {})}
        self.max_gzip_ratio = max_gzip_ratio

    def reset_tls(self) -> None:
        """Reload client certificate files on the next request (after a renewal), and
        start afresh after a move: the TLS context (and its session cache) is dropped."""
        reset = getattr(self.transport, "reset", None)  # a fake transport has none
        if reset is not None:
            reset()

    def close(self) -> None:
        """Close the kept-open connection (``agent run`` on its way out)."""
        close = getattr(self.transport, "close", None)
        if close is not None:
            close()

    def get(self, url: str, *, etag: str | None = None, wait: int | None = None,
            params: Mapping[str, Any] | None = None, kind: Kind = "manifest") -> Response:
        max_bytes = self.limits[kind]
        if url.startswith("file://"):
            return _read_file(url, max_bytes)
        query = dict(params or {})
        if wait:
            query["wait"] = int(wait)
        if query:
            url += ("&" if "?" in url else "?") + urlencode(query)
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "gzip",
                   "Accept": "application/json, application/*+json;q=0.9"}
        if etag and _sane_etag(etag):
            headers["If-None-Match"] = etag
        timeout = wait + min(self.timeout, LONG_POLL_MARGIN) if wait else self.timeout
        status, resp_headers, body = self.transport(
            "GET", url, headers=headers, body=None, timeout=timeout, max_bytes=max_bytes)
        _check_status(url, status, body)
        tag = resp_headers.get("etag")
        tag = tag if tag is not None and _sane_etag(tag) else None
        if status == 304:
            return Response(status, b"", tag, url)
        _check_content_type(url, resp_headers.get("content-type"))
        encoding = resp_headers.get("content-encoding", "identity").strip().lower()
        if encoding == "gzip":
            body = gunzip(body, what=url, max_bytes=max_bytes, max_ratio=self.max_gzip_ratio)
        elif encoding not in ("identity", ""):
            raise InputRefused("encoding", f"{url}: Content-Encoding {encoding[:40]!r} was "
                                           "not asked for (the agent accepts gzip only)")
        return Response(status, body, tag, url)

    def post_json(self, url: str, obj: Any) -> Any:
        body = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
        headers = {"User-Agent": USER_AGENT, "Content-Type": "application/json"}
        max_bytes = self.limits["report"]
        status, resp_headers, data = self.transport(
            "POST", url, headers=headers, body=body, timeout=self.timeout, max_bytes=max_bytes)
        _check_status(url, status, data)
        if data:
            _check_content_type(url, resp_headers.get("content-type"))
        if resp_headers.get("content-encoding", "identity").strip().lower() not in (
                "identity", ""):
            raise InputRefused("encoding", f"{url}: the hub's answer is encoded; the agent "
                                           "did not ask for that")
        return bounded_loads(data, what=f"{url}: the hub's answer",
                             max_bytes=max_bytes) if data else None


def gunzip(data: bytes, *, what: str, max_bytes: int, max_ratio: int = MAX_GZIP_RATIO) -> bytes:
    """Decompress a gzip body (RFC 1952, one or more members) in steps, refusing
    more than ``max_bytes`` of output (``too-large``) and, once past
    ``RATIO_FLOOR`` bytes, more than ``max_ratio`` output bytes per input byte
    (``bomb``). A corrupt or truncated stream is a ``FetchError`` (a broken
    transfer)."""
    out = bytearray()
    rest = memoryview(data)
    used_before = 0  # input bytes of the members already finished
    while rest.nbytes:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing
        pending: bytes | memoryview = rest
        try:
            while True:
                chunk = inflater.decompress(pending, READ_CHUNK)
                out += chunk
                pending = inflater.unconsumed_tail
                used = used_before + rest.nbytes - len(pending) - len(inflater.unused_data)
                if len(out) > RATIO_FLOOR and len(out) > max_ratio * max(used, 1):
                    raise InputRefused("bomb", f"{what}: gzip body expands over {max_ratio}:1 "
                                       f"({used} bytes gave {len(out)} and more); refused "
                                       "as a decompression bomb")
                if len(out) > max_bytes:
                    raise InputRefused("too-large", f"{what}: over the limit of {max_bytes} "
                                       "bytes once decompressed; not decompressed further")
                if inflater.eof or (not chunk and not pending):
                    break
        except zlib.error as exc:
            raise FetchError(f"{what}: corrupt gzip body: {exc}") from exc
        if not inflater.eof:
            raise FetchError(f"{what}: truncated gzip body (the stream ends early)")
        tail = inflater.unused_data
        used_before += rest.nbytes - len(tail)
        if not tail.strip(b"\0"):  # zero padding after the last member (as gzip(1) allows)
            break
        rest = memoryview(tail)
    return bytes(out)


def _read_file(url: str, max_bytes: int) -> Response:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ConfigError(f"{url}: file:// URLs must be local (file:///path)")
    path = Path(unquote(parts.path))
    try:
        # O_NONBLOCK: a FIFO put in the manifest's place must not block the open
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise FetchError(f"{path}: manifest file not found") from exc
    except OSError as exc:
        raise FetchError(f"{path}: cannot read the manifest: {exc.strerror}") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise InputRefused("not-a-file", f"{path}: not a regular file (a directory, a "
                                         "device, a FIFO or a socket); point manifest_url "
                                         "at the file")
    with os.fdopen(fd, "rb") as fh:
        if st.st_size > max_bytes:
            raise InputRefused("too-large", f"{path}: {st.st_size} bytes is over the limit "
                                            f"of {max_bytes} bytes")
        try:
            data = fh.read(max_bytes + 1)  # the file may grow while it is read
        except OSError as exc:
            raise FetchError(f"{path}: cannot read the manifest: {exc.strerror}") from exc
    if len(data) > max_bytes:
        raise InputRefused("too-large", f"{path}: over the limit of {max_bytes} bytes")
    return Response(200, data, f'"{st.st_mtime_ns:x}-{st.st_size:x}"', str(path))


def _sane_etag(tag: str) -> bool:
    """An ETag worth keeping and sending back: short printable ASCII (RFC 9110
    8.8.3), so a hostile value never reaches a request header or the state dir."""
    return 0 < len(tag) <= 256 and tag.isascii() and tag.isprintable()


def _check_content_type(url: str, value: str | None) -> None:
    if value is None:
        return
    media = value.split(";", 1)[0].strip().lower()
    if not media or media in _GENERIC_TYPES or media.endswith("+json"):
        return
    raise FetchError(f"{url}: the server answered with Content-Type {media[:60]!r}, not JSON "
                     "(a captive portal, a proxy's page or a wrong URL?); will retry")


def _check_status(url: str, status: int, body: bytes) -> None:
    if status in (200, 201, 202, 204, 304):
        return
    detail = _error_detail(body)
    if status >= 500 or status in (408, 429):
        raise FetchError(f"{url}: HTTP {status}{detail}")
    raise ConfigError(f"{url}: HTTP {status}{detail}")


def _error_detail(body: bytes) -> str:
    """The hub's ``{"error": ...}`` text, short and printable; nothing for anything else."""
    try:
        data = bounded_loads(body, what="error body", max_bytes=ERROR_DETAIL_MAX)
    except InputRefused:
        return ""
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        text = "".join(c if c.isprintable() else "?" for c in data["error"][:200])
        return f": {text}"
    return ""
