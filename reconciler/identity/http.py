"""The identity package's only network I/O: small HTTPS requests to an OpenID issuer.

``UrllibTransport`` (stdlib ``http.client`` + ``ssl``, so a device installs
nothing more) does one request per call: GET for discovery and the JWKS, POST
of a form for the device authorization and token endpoints. Every response
body is read with a size limit, so a hostile or broken issuer cannot make us
buffer gigabytes. Tests swap the transport for a fake (the httpx pattern) or
point it at the real provider with its CA file.

Errors are translated here: unreachable, timeouts and 5xx/429 become
``FetchError`` (temporary); a body over the limit is ``InputRefused``.
Responses with other statuses are returned, because the OAuth token endpoint
answers 400 with the device grant's ``authorization_pending``.

Called by ``identity.oidc`` (device grant, discovery) and ``identity.tokens``
(JWKS).
"""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlencode, urlsplit

from reconciler.errors import ConfigError, FetchError, InputRefused

USER_AGENT = "meshops/0.1"
DEFAULT_TIMEOUT = 10.0
MAX_RESPONSE = 256 * 1024  # discovery documents and JWKS are a few KiB


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = ""


class Transport(Protocol):
    def __call__(self, method: str, url: str, *,
                 form: Mapping[str, str] | None = None) -> Response: ...


def check_url(url: str, what: str) -> None:
    """Issuer endpoints must be https (OpenID Connect Discovery 1.0, section 3)."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(f"{what} {url!r} must be an https:// URL")


class UrllibTransport:
    """One HTTPS request per call. ``ca_file`` pins the issuer's CA bundle
    (default: the system store, which honours ``SSL_CERT_FILE``)."""

    def __init__(self, *, ca_file: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 max_bytes: int = MAX_RESPONSE, context: ssl.SSLContext | None = None) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        if context is None:
            try:
                context = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"CA file {ca_file}: {exc}") from exc
        self.context = context

    def __call__(self, method: str, url: str, *,
                 form: Mapping[str, str] | None = None) -> Response:
        check_url(url, "issuer endpoint")
        parts = urlsplit(url)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        body = urlencode(dict(form)).encode() if form is not None else None
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn = http.client.HTTPSConnection(parts.hostname or "", parts.port or 443,
                                           timeout=self.timeout, context=self.context)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read(self.max_bytes + 1)
            status, ctype = resp.status, resp.getheader("Content-Type", "")
        except (OSError, http.client.HTTPException) as exc:
            raise FetchError(f"{method} {url}: {exc}") from exc
        finally:
            conn.close()
        if len(data) > self.max_bytes:
            raise InputRefused("too-large", f"{method} {url}: response over {self.max_bytes} bytes")
        if status >= 500 or status == 429:
            raise FetchError(f"{method} {url}: HTTP {status}")
        return Response(status, data, ctype)
