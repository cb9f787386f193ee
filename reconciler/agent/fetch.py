"""The agent's only HTTP and file I/O towards the hub or a manifest server.

``Fetcher.get(url, etag=..., wait=...)`` reads ``file://`` paths and
``http(s)://`` URLs (ETag / If-None-Match, gzip, ``?wait=N`` long-poll, a
client certificate for mTLS); ``Fetcher.post_json`` sends endpoint reports.
All network I/O goes through one ``Transport`` callable, so tests swap in a
fake and run without sockets (the httpx pattern). Stdlib only (http.client +
ssl): an agent must not pay aiohttp's import time.

A request never wedges on a dead path: the TCP/TLS connect is bounded by
``connect_timeout`` (2 s), a long-poll's read by ``wait`` plus a small margin,
and while a response is awaited the transport checks every
``LIVENESS_STEP`` seconds that the connection's local address is still the
one the routing table picks towards the server. When the device moved (its
LAN address is gone or another one is used) the request fails at once with
``FetchError`` instead of waiting for a NAT that forgot the connection.
There is no persistent connection: every request opens (and closes) its own.

Errors are translated here: unreachable, timeouts, 5xx and 429 become
``FetchError`` (temporary); other 4xx become ``ConfigError`` (a human must fix
the URL, the certificate or the enrollment).

Called by ``agent.reconcile`` (manifest, feed, report) and ``agent.loop``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self
from urllib.parse import unquote, urlencode, urlsplit

from reconciler.errors import ConfigError, FetchError

USER_AGENT = "meshops-agent/0.1"
CONNECT_TIMEOUT = 2.0  # TCP connect + TLS handshake
LONG_POLL_MARGIN = 2.0  # a long-poll read may take ``wait`` plus this
LIVENESS_STEP = 0.25  # seconds between local-address checks while awaiting a response


@dataclass(frozen=True)
class Response:
    status: int  # 200, or 304 when If-None-Match matched
    body: bytes
    etag: str | None = None


@dataclass(frozen=True)
class TlsConfig:
    cert: str | None = None  # client certificate (PEM) for mTLS; used once the file exists
    key: str | None = None
    ca: str | None = None  # CA bundle for the server; None = system store
    server_name: str | None = None  # SNI + name to verify instead of the URL's host


class Transport(Protocol):
    def __call__(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None,
        timeout: float,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """Perform one request; return (status, lower-cased headers, raw body)."""


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
    """While a request is in flight, check ``alive()`` every ``step`` seconds; when
    it turns false, shut the socket down so the blocked read returns at once.

    A thread, because the read may block inside TLS (post-handshake messages make
    the socket readable before any response byte, so ``select`` cannot tell)."""

    def __init__(self, sock: Any, alive: Callable[[], bool], *,
                 step: float = LIVENESS_STEP) -> None:
        import threading

        self._sock = sock
        self._alive = alive
        self._step = step
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="meshops-fetch-watchdog",
                                        daemon=True)
        self.tripped = False

    def _watch(self) -> None:
        import socket

        while not self._done.wait(self._step):
            if not self._alive():
                self.tripped = True
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


class HttpTransport:
    """http.client transport with one TLS context (client cert when configured)."""

    def __init__(self, tls: TlsConfig | None = None, *,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self._tls = tls or TlsConfig()
        self._context: Any = None
        self.connect_timeout = connect_timeout

    def reset(self) -> None:
        """Drop the TLS context: the next request reloads the certificate files."""
        self._context = None

    def _ssl(self) -> Any:
        import ssl

        if self._context is None:
            try:
                ctx = ssl.create_default_context(cafile=self._tls.ca)
                if self._tls.cert and os.path.exists(self._tls.cert):
                    ctx.load_cert_chain(self._tls.cert, self._tls.key)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"TLS set-up failed (cert {self._tls.cert}, ca "
                                  f"{self._tls.ca}): {exc}") from exc
            self._context = ctx
        return self._context

    def __call__(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None,
        timeout: float,
    ) -> tuple[int, Mapping[str, str], bytes]:
        # imported here: a file:// agent never pays for http.client, email and ssl
        import ssl
        from http.client import HTTPConnection, HTTPException, HTTPSConnection

        parts = urlsplit(url)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        conn: HTTPConnection
        if parts.scheme == "https":
            sni = self._tls.server_name or parts.hostname or ""
            context = self._ssl()

            class _Https(HTTPSConnection):
                def connect(self) -> None:  # SNI/verification name may differ from the host
                    HTTPConnection.connect(self)
                    self.sock = context.wrap_socket(self.sock, server_hostname=sni)

            conn = _Https(parts.hostname or "", parts.port,
                          timeout=min(timeout, self.connect_timeout), context=context)
        else:
            conn = HTTPConnection(parts.hostname or "", parts.port,
                                  timeout=min(timeout, self.connect_timeout))
        dog: Watchdog | None = None
        try:
            conn.connect()
            assert conn.sock is not None
            local = conn.sock.getsockname()[0]
            remote = conn.sock.getpeername()
            conn.sock.settimeout(timeout)
            with Watchdog(conn.sock, lambda: route_source(remote[0], remote[1]) == local) as dog:
                conn.request(method, target, body=body, headers=dict(headers))
                resp = conn.getresponse()
                data = resp.read()
            if dog.tripped:
                raise OSError("connection shut down by the watchdog")
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        except ssl.SSLCertVerificationError as exc:
            raise ConfigError(f"{parts.scheme}://{parts.netloc}: TLS verification failed: "
                              f"{exc.verify_message}") from exc
        except (OSError, HTTPException) as exc:  # TimeoutError is an OSError
            if dog is not None and dog.tripped:
                raise FetchError(f"{parts.scheme}://{parts.netloc}: the local address of the "
                                 "connection is gone (the device moved or lost its network); "
                                 "request abandoned") from exc
            raise FetchError(f"{parts.scheme}://{parts.netloc}: {exc or type(exc).__name__}") \
                from exc
        finally:
            conn.close()


class Fetcher:
    """GET manifests/feeds and POST reports; ``transport`` is injectable."""

    def __init__(self, transport: Transport | None = None, *, timeout: float = 10.0,
                 tls: TlsConfig | None = None) -> None:
        self.transport: Transport = transport or HttpTransport(tls)
        self.timeout = timeout

    def reset_tls(self) -> None:
        """Reload client certificate files on the next request (after a renewal), and
        start afresh after a move: the TLS context (and its session cache) is dropped."""
        reset = getattr(self.transport, "reset", None)
        if reset is not None:
            reset()

    def get(self, url: str, *, etag: str | None = None, wait: int | None = None,
            params: Mapping[str, Any] | None = None) -> Response:
        if url.startswith("file://"):
            return _read_file(url)
        query = dict(params or {})
        if wait:
            query["wait"] = int(wait)
        if query:
            url += ("&" if "?" in url else "?") + urlencode(query)
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "gzip"}
        if etag:
            headers["If-None-Match"] = etag
        timeout = wait + min(self.timeout, LONG_POLL_MARGIN) if wait else self.timeout
        status, resp_headers, body = self.transport(
            "GET", url, headers=headers, body=None, timeout=timeout)
        _check_status(url, status, body)
        if resp_headers.get("content-encoding") == "gzip":
            import gzip
            import zlib

            try:
                body = gzip.decompress(body)
            except (OSError, EOFError, zlib.error) as exc:
                raise FetchError(f"{url}: corrupt gzip body") from exc
        return Response(status, body if status != 304 else b"", resp_headers.get("etag"))

    def post_json(self, url: str, obj: Any) -> Any:
        body = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
        headers = {"User-Agent": USER_AGENT, "Content-Type": "application/json"}
        status, _, data = self.transport("POST", url, headers=headers, body=body,
                                         timeout=self.timeout)
        _check_status(url, status, data)
        try:
            return json.loads(data) if data else None
        except ValueError as exc:
            raise FetchError(f"{url}: the hub answered with invalid JSON") from exc


def _read_file(url: str) -> Response:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ConfigError(f"{url}: file:// URLs must be local (file:///path)")
    path = Path(unquote(parts.path))
    try:
        data = path.read_bytes()
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise FetchError(f"{path}: manifest file not found") from exc
    except OSError as exc:
        raise FetchError(f"{path}: cannot read the manifest: {exc.strerror}") from exc
    return Response(200, data, f'"{st.st_mtime_ns:x}-{st.st_size:x}"')


def _check_status(url: str, status: int, body: bytes) -> None:
    if status in (200, 201, 202, 204, 304):
        return
    detail = _error_detail(body)
    if status >= 500 or status in (408, 429):
        raise FetchError(f"{url}: HTTP {status}{detail}")
    raise ConfigError(f"{url}: HTTP {status}{detail}")


def _error_detail(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return f": {data['error'][:200]}"
    return ""
