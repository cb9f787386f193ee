"""The hub's HTTP API (the only aiohttp user). See docs/api.md for every endpoint.

``make_app(hub, peer_cert=...)`` is called by ``reconciler.hub.serve.run`` and
by tests (aiohttp's in-process test client). ``peer_cert(request)`` returns the
client certificate PEM of the request's TLS connection; tests inject their own
so the authorization matrix runs without sockets.

Identity checks (``_identify``): the certificate must chain to the CA of the org
in the URL (another org's device gets 403), be inside its validity at the
hub's ``now`` and not be revoked (401 with ``code`` ``expired``/``revoked``/
``bad-certificate``), and the SAN URI ``meshops://ORG/devices/NAME`` gives the
device name. No certificate on an identity endpoint: 401 ``no-certificate``.

Identity endpoints: the manifest, the endpoint feed and the endpoint report.
Public (no certificate needed): a device's certificate and the CRL (public
data; an agent fetches its certificate before its first mTLS request), and the
operator endpoints ``/v1/status`` and ``/metrics``, which must be reachable by
operators only (listen address / firewall; docs/security.md).

Hostile input: request bodies are read within ``Limits.body_timeout`` and
parsed by ``reconciler.boundedjson`` (size and nesting bounds, refusals are
4xx with the reason); integers in headers and query strings are ASCII digits
of bounded length, anything else is refused (query) or ignored
(``If-None-Match``). The body limit ``MAX_BODY`` is derived from the report
limits (``MAX_OBSERVATIONS`` and ``MAX_CANDIDATES`` entries of the largest
size each), so every report the limits allow fits. Connection-level limits
(handshake, anonymous cap and deadline, idle timeout) are in
``reconciler.hub.limits``.

Endpoint claims (``reconciler.hub.claims``): a report's ``device`` must be the
certificate's (403 otherwise); every candidate and observation address is
checked (``claims.check_address``), and the first refused one answers 400
``bad-candidate`` with ``reason``, ``field`` and ``candidate``; observations
are kept only from relays of the served snapshot, and the answer says how many
were dropped and why.

Large bodies (a manifest, a view snapshot, a feed) are written as a
``StreamResponse`` in ``CHUNK``-sized pieces, each drained into the TLS
transport before the next: written at once, a 1.8 MB body grew each
keep-alive connection's TLS buffers to the body's size and they kept that
memory afterwards (about 1 MB per held connection, >8 GB at 10,000 agents;
a bare asyncio TLS server sending 1.8 MB to 500 kept-open connections keeps
1,837 KB per connection written at once, 123 KB in 64 KiB pieces, 80 KB in
16 KiB pieces; docs/benchmarks.md, "scale"). Compressed forms are built once per
document and shared by every connection (the manifest's and a whole-org
view's by their owners, the feed's here, ``_FeedGzip``), never per request.

Every error is JSON ``{"error": CODE, "message": TEXT}`` (plus the fields
above for ``bad-candidate``); unexpected exceptions become 500 with the same
shape and are logged, the server keeps running.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import re
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from reconciler import boundedjson
from reconciler.errors import InputRefused, MeshopsError, PkiError, TemporaryError
from reconciler.hub import roots
from reconciler.hub.claims import (
    MAX_ADDRESS,
    ClaimRefused,
    Observation,
    accept_observations,
    check_address,
    check_candidates,
)
from reconciler.hub.enroll import Enrollment
from reconciler.hub.limits import Limits, RefusalLog
from reconciler.hub.metrics import CONTENT_TYPE
from reconciler.hub.rotate import add_routes as add_rotate_routes
from reconciler.hub.serve import Hub, authority
from reconciler.hub.snapshot import OrgSnapshot
from reconciler.hub.tls import peer_certificate_pem
from reconciler.model.endpoint import Endpoint, IPAddress
from reconciler.model.endpoints import (
    CANDIDATE_KINDS,
    MAPPINGS,
    MAX_CANDIDATES,
    MAX_OBSERVATIONS,
    Candidate,
    EndpointReport,
)
from reconciler.pki.certs import DeviceIdentity, check_device_cert

log = logging.getLogger(__name__)

MAX_WAIT = 300  # seconds a long-poll may ask for
MAX_NAME = 63  # a device name is a DNS label (reconciler/config/schema.py)
MAX_INT = 2**62  # serials, handshake times
REPORT_DEPTH = 8  # a report nests 3 levels deep
MAX_DIGITS = 19  # an ETag or a query integer: up to 2**63 - 1


def _json_size(value: Any) -> int:
    """Bytes of ``value`` as ``json.dumps`` writes it by default (", " and ": "
    separators), the roomier of the two usual forms (agents send the compact one)."""
    return len(json.dumps(value).encode())


def _max_body() -> int:
    """The largest report the limits allow, in bytes: every entry at its maximum
    size, as ``json.dumps`` writes it by default, rounded up to a KiB."""
    name, address = "n" * MAX_NAME, "a" * MAX_ADDRESS
    kind = max(CANDIDATE_KINDS, key=len)
    candidate = _json_size({"kind": kind, "address": address}) + len(", ")
    observation = _json_size({"peer": name, "endpoint": address,
                              "last_handshake": MAX_INT}) + len(", ")
    rest = _json_size({"device": name, "candidates": [], "mapping": max(MAPPINGS, key=len),
                       "listen_port": 65535, "serial": MAX_INT, "observations": []})
    total = rest + MAX_CANDIDATES * candidate + MAX_OBSERVATIONS * observation
    return -(-total // 1024) * 1024


MAX_BODY = _max_body()  # 200 KiB with the limits above
CHUNK = 16 * 1024  # larger bodies are streamed in pieces of this size (see the docstring)
BIG_SENDS = 64  # large bodies being written at once; the others wait their turn
SEND_DEADLINE_MIN = 30.0  # seconds any client may take to read a streamed body
SEND_MIN_RATE = 16 * 1024  # bytes/s: below this a large body's reader is cut off
GZIP_MIN = 4096  # smaller feeds are sent as they are
MANIFEST_TYPE = "application/vnd.meshops.manifest+json"
FEED_TYPE = "application/vnd.meshops.feed+json"

PeerCert = Callable[[web.Request], "str | None"]
HUB_KEY: web.AppKey[Hub] = web.AppKey("hub", Hub)
PEER_KEY: web.AppKey[PeerCert] = web.AppKey("peer_cert", object)  # type: ignore[arg-type]
LIMITS_KEY: web.AppKey[Limits] = web.AppKey("limits", Limits)
REFUSALS_KEY: web.AppKey[RefusalLog] = web.AppKey("refusals", RefusalLog)
CRASHES_KEY: web.AppKey[dict[tuple[str, str], float]] = web.AppKey("crashes", dict)


class _FeedGzip:
    """The gzip form of the latest signed feed per org, built once per revision."""

    def __init__(self) -> None:
        self._by_org: dict[str, tuple[int, bytes, bytes]] = {}

    def get(self, org: str, revision: int, body: bytes) -> bytes:
        held = self._by_org.get(org)
        if held is not None and held[0] == revision and held[1] is body:
            return held[2]
        packed = gzip.compress(body, 6, mtime=0)
        self._by_org[org] = (revision, body, packed)
        return packed


FEED_GZ_KEY: web.AppKey[_FeedGzip] = web.AppKey("feed_gzip", object)  # type: ignore[arg-type]
SENDS_KEY: web.AppKey[asyncio.Semaphore] = web.AppKey("big_sends", asyncio.Semaphore)

_DIGITS = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}", re.ASCII)
_SIGNED_DIGITS = re.compile(rf"-?[0-9]{{1,{MAX_DIGITS}}}", re.ASCII)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, close: bool = False,
                 detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.close = close  # also close the connection (the request was not read to its end)
        self.detail = detail or {}  # more fields of the JSON answer


def error_response(status: int, code: str, message: str,
                   detail: dict[str, Any] | None = None) -> web.Response:
    return web.json_response({**(detail or {}), "error": code, "message": message},
                             status=status)


_PEER_PEMS: weakref.WeakKeyDictionary[Any, str | None] = weakref.WeakKeyDictionary()


def tls_peer_cert(request: web.Request) -> str | None:
    """The connection's client certificate (PEM), converted once per connection:
    a kept-open agent connection carries thousands of long-polls."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport else None
    if ssl_object is None:
        return None
    try:
        return _PEER_PEMS[ssl_object]
    except KeyError:
        pem = _PEER_PEMS[ssl_object] = peer_certificate_pem(ssl_object)
        return pem


@dataclass(frozen=True)
class Caller:
    org: str
    device: str
    serial: int


# -- helpers -------------------------------------------------------------------
def _hub(request: web.Request) -> Hub:
    return request.app[HUB_KEY]


def _org(request: web.Request) -> OrgSnapshot:
    name = request.match_info["org"]
    org = _hub(request).org(name)
    if org is None:
        raise ApiError(404, "unknown-org", f"org {name!r} is not served by this hub")
    return org


def _int_param(request: web.Request, name: str, lo: int, hi: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if not _SIGNED_DIGITS.fullmatch(raw):  # int() would take "²", "١٢" and 5,000 digits
        shown = raw if len(raw) <= 24 else f"{raw[:20]}… ({len(raw)} characters)"
        raise ApiError(400, "bad-parameter",
                       f"?{name}= must be an integer of at most {MAX_DIGITS} ASCII digits, "
                       f"got {shown!r}")
    value = int(raw)
    if not lo <= value <= hi:
        raise ApiError(400, "bad-parameter", f"?{name}= must be within {lo}..{hi}")
    return value


def _etag_serial(header: str | None) -> int | None:
    """``If-None-Match: "42"`` (or W/"42", or a list) -> 42.

    A tag that is not 1 to 19 ASCII digits (5,000 digits, "²", "١٢", "*",
    anything else) matches no serial and is ignored: the client gets the full
    answer, as for a stale ETag (RFC 9110 13.1.2 leaves no other outcome that
    helps it)."""
    if not header:
        return None
    best = None
    for part in header.split(","):
        tag = part.strip().removeprefix("W/").strip('"')
        if _DIGITS.fullmatch(tag):
            best = max(best or 0, int(tag))
    return best


_IDENTITY_CACHE: OrderedDict[tuple[str, str], DeviceIdentity] = OrderedDict()
IDENTITY_CACHE_SIZE = 50_000


def _checked_identity(pem: str, org: OrgSnapshot, now: float) -> DeviceIdentity:
    """``check_device_cert`` with the signature/constraint work cached per certificate.

    Agents open a fresh TLS connection per request, so the same certificate is
    checked every 30 s; only the clock and the revocation list can change the
    verdict of a certificate that passed once, and both are re-checked here."""
    key = (pem, org.ca_pem)
    ident = _IDENTITY_CACHE.get(key)
    if ident is None:
        ident = check_device_cert(pem, org.ca_pem, now, revoked=tuple(org.revoked))
        _IDENTITY_CACHE[key] = ident
        if len(_IDENTITY_CACHE) > IDENTITY_CACHE_SIZE:
            _IDENTITY_CACHE.popitem(last=False)
        return ident
    _IDENTITY_CACHE.move_to_end(key)
    if not ident.not_before <= now <= ident.not_after:
        raise PkiError("certificate is expired or not yet valid")
    if ident.serial in org.revoked:
        raise PkiError(f"certificate serial {ident.serial} is revoked")
    return ident


def _identify(request: web.Request, org: OrgSnapshot) -> Caller:
    hub = _hub(request)
    pem = request.app[PEER_KEY](request)
    if not pem:
        hub.metrics.auth_refused.labels("no-certificate").inc()
        raise ApiError(401, "no-certificate", "this endpoint needs a device client certificate")
    try:
        ident = _checked_identity(pem, org, hub.now())
    except PkiError as exc:
        text = str(exc)
        if "another CA" in text or "outside the CA" in text:
            hub.metrics.auth_refused.labels("other-org").inc()
            raise ApiError(403, "forbidden", f"certificate is not from org {org.org}: {text}") \
                from None
        code = "revoked" if "revoked" in text else "expired" if "expired" in text else (
            "bad-certificate"
        )
        hub.metrics.auth_refused.labels(code).inc()
        raise ApiError(401, code, text) from None
    if ident.org != org.org:
        hub.metrics.auth_refused.labels("other-org").inc()
        raise ApiError(403, "forbidden", f"certificate names org {ident.org}, not {org.org}")
    return Caller(ident.org, ident.name, ident.serial)


def _peer_addr(request: web.Request) -> str | None:
    """The connection's source address as ``ip:port`` (the hub's own view of a
    report), or None (a Unix socket, a closed transport)."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport else None
    if not peer or not isinstance(peer, tuple) or not peer[1]:
        return None
    try:  # a link-local source carries its zone ("fe80::1%eth0"): meaningless to others
        return str(Endpoint.of(str(peer[0]).split("%", 1)[0], int(peer[1])))
    except ValueError:
        return None


def _peer_host(request: web.Request) -> str:
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport else None
    return str(peer[0]) if peer else "unknown"


def _nonneg_int(doc: dict[str, Any], key: str, hi: int = MAX_INT) -> int:
    value = doc.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
        raise ApiError(400, "bad-report", f"{key} must be an integer within 0..{hi}")
    return value


def _refused(exc: ClaimRefused) -> ApiError:
    return ApiError(400, "bad-candidate", exc.message,
                    detail={"reason": exc.reason, "field": exc.field, "candidate": exc.value})


def parse_report(doc: Any, org: str, now: int, observed: str | None,
                 hub_addresses: frozenset[IPAddress] = frozenset(), cert_serial: int = 0,
                 *, may_reflect: bool = True) -> tuple[EndpointReport, list[Observation]]:
    """Validate a report body (docs/api.md) into model objects: ApiError(400)
    ``bad-report`` on a structural flaw, ``bad-candidate`` on an address no
    peer may be pointed at (``claims.check_address``). Observations of a
    reporter that may not reflect (not a relay) are only checked for shape:
    none of them is kept, so none can fail the device's own report."""
    if not isinstance(doc, dict):
        raise ApiError(400, "bad-report", "the body must be a JSON object")
    unknown = set(doc) - {"device", "candidates", "mapping", "listen_port", "serial",
                          "observations"}
    if unknown:
        raise ApiError(400, "bad-report", f"unknown field(s): {', '.join(sorted(unknown))}")
    device = doc.get("device")
    if not isinstance(device, str) or not device or len(device) > MAX_NAME:
        raise ApiError(400, "bad-report", f"device must be a name of 1 to {MAX_NAME} characters")
    cands = doc.get("candidates", [])
    if not isinstance(cands, list) or len(cands) > MAX_CANDIDATES:
        raise ApiError(400, "bad-report", f"candidates must be a list of at most {MAX_CANDIDATES}")
    candidates = []
    for i, c in enumerate(cands):
        if not isinstance(c, dict) or c.get("kind") not in CANDIDATE_KINDS:
            raise ApiError(400, "bad-report",
                           f"candidates[{i}].kind must be one of {', '.join(CANDIDATE_KINDS)}")
        candidates.append(Candidate(c["kind"], c.get("address")))  # checked below
    try:
        checked = check_candidates(candidates, hub_addresses)
    except ClaimRefused as exc:
        raise _refused(exc) from None
    mapping = doc.get("mapping", "unknown")
    if mapping not in MAPPINGS:
        raise ApiError(400, "bad-report", f"mapping must be one of {', '.join(MAPPINGS)}")
    listen_port = _nonneg_int(doc, "listen_port", 65535)
    serial = _nonneg_int(doc, "serial")
    obs_doc = doc.get("observations", [])
    if not isinstance(obs_doc, list) or len(obs_doc) > MAX_OBSERVATIONS:
        raise ApiError(400, "bad-report",
                       f"observations must be a list of at most {MAX_OBSERVATIONS}")
    observations = []
    for i, o in enumerate(obs_doc):
        if not isinstance(o, dict) or not isinstance(o.get("peer"), str) or not o["peer"] \
                or len(o["peer"]) > MAX_NAME:
            raise ApiError(400, "bad-report", f"observations[{i}].peer must be a device name "
                                              f"of 1 to {MAX_NAME} characters")
        endpoint = o.get("endpoint")
        if not isinstance(endpoint, str) or len(endpoint) > MAX_ADDRESS:
            raise ApiError(400, "bad-report", f"observations[{i}].endpoint must be an "
                                              f"\"ip:port\" string of at most {MAX_ADDRESS} "
                                              "characters")
        if may_reflect:
            try:
                endpoint = str(check_address(endpoint, f"observations[{i}].endpoint",
                                             hub_addresses))
            except ClaimRefused as exc:
                raise _refused(exc) from None
        observations.append(Observation(
            peer=o["peer"],
            endpoint=endpoint,
            last_handshake=_nonneg_int(o, "last_handshake"),
        ))
    report = EndpointReport(
        org=org,
        device=device,
        candidates=checked,
        mapping=mapping,
        listen_port=listen_port,
        serial=serial,
        observed_addr=observed,
        reported_at=now,
        cert_serial=cert_serial,
    )
    return report, observations


async def send_body(request: web.Request, body: bytes, headers: dict[str, str],
                    content_type: str) -> web.StreamResponse:
    """``body`` as the answer; above ``CHUNK`` bytes streamed piece by piece with
    backpressure, so no connection's buffers grow to the body's size, and at
    most ``BIG_SENDS`` such bodies at once, so 10,000 woken long-polls do not
    all hold their in-flight pieces at the same time."""
    if len(body) <= CHUNK or request.method == "HEAD":  # aiohttp sends no body on HEAD
        return web.Response(body=body, headers=headers, content_type=content_type)
    resp = web.StreamResponse(headers=headers)
    resp.content_type = content_type
    resp.content_length = len(body)
    view = memoryview(body)
    async with request.app[SENDS_KEY]:
        return await _stream(request, resp, view)


def send_deadline(size: int) -> float:
    """How long a client may take to read a streamed body: SEND_DEADLINE_MIN, or
    the body at SEND_MIN_RATE bytes/s. A client that reads slower (or not at all)
    is cut off, so it cannot hold one of the BIG_SENDS slots for ever."""
    return max(SEND_DEADLINE_MIN, size / SEND_MIN_RATE)


async def _stream(request: web.Request, resp: web.StreamResponse,
                  view: memoryview) -> web.StreamResponse:
    try:
        async with asyncio.timeout(send_deadline(len(view))):
            await resp.prepare(request)
            for at in range(0, len(view), CHUNK):
                await resp.write(view[at:at + CHUNK])
                await request.writer.drain()  # backpressure: the piece left before the next
            await resp.write_eof()
    except ConnectionError:  # the client went away (reset, or lost while paused)
        resp.force_close()
    except TimeoutError:
        log.info("%s: a client read %d bytes too slowly; connection closed",
                 request.path, len(view))
        resp.force_close()
        if request.transport is not None:
            request.transport.abort()  # its buffered pieces go with it
    return resp


# -- handlers ----------------------------------------------------------------------
async def get_manifest(request: web.Request) -> web.StreamResponse:
    org = _org(request)
    _identify(request, org)  # mTLS: only a valid device of this org reads its manifest
    have = _etag_serial(request.headers.get("If-None-Match"))
    wait = _int_param(request, "wait", 0, MAX_WAIT) or 0
    current = await _hub(request).wait_manifest(org.org, have, wait if have is not None else 0)
    if current is None:
        raise ApiError(404, "unknown-org", f"org {org.org!r} is no longer served")
    headers = {"ETag": f'"{current.serial}"', "Cache-Control": "no-cache", "Vary": "Accept-Encoding"}
    if have is not None and current.serial <= have:
        return web.Response(status=304, headers=headers)
    body = current.manifest
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        body = current.manifest_gz
        headers["Content-Encoding"] = "gzip"
    return await send_body(request, body, headers, MANIFEST_TYPE)


VIEW_TYPE = "application/vnd.meshops.view+json"


async def get_view(request: web.Request) -> web.StreamResponse:
    """This device's view: a snapshot, or with ``?serial=S&revision=R`` the delta
    from there, long-polled with ``&wait=N`` (reconciler.hub.views)."""
    hub = _hub(request)
    org = _org(request)
    caller = _identify(request, org)
    name = request.match_info["name"]
    if caller.device != name:  # a view is what one device may know: its own only
        hub.metrics.auth_refused.labels("other-device").inc()
        raise ApiError(403, "forbidden",
                       f"certificate is for device {caller.device}, not {name[:MAX_NAME]}")
    serial = _int_param(request, "serial", 0, MAX_INT)
    revision = _int_param(request, "revision", 0, MAX_INT)
    if (serial is None) != (revision is None):
        raise ApiError(400, "bad-parameter", "?serial= and ?revision= go together: the "
                                             "position of the view the device holds")
    wait = _int_param(request, "wait", 0, MAX_WAIT) or 0
    start = (serial, revision) if serial is not None and revision is not None else None
    try:
        answer = await hub.view(org.org, name, start, wait if start is not None else 0)
    except TemporaryError as exc:
        raise ApiError(503, "store-unavailable", str(exc)) from None
    if answer is None:
        pos = hub.views.position(org.org) or (0, 0)
        return web.Response(status=304, headers={
            "Cache-Control": "no-cache", "X-Meshops-Serial": str(pos[0]),
            "X-Meshops-Revision": str(pos[1])})
    transport = request.transport
    if transport is not None and hub.views.hold_until_answered(org.org,
                                                               transport.resume_reading):
        transport.pause_reading()  # its next request waits until the round is answered
        hub.metrics.view_held.inc()
    headers = {"Cache-Control": "no-cache", "Vary": "Accept-Encoding",
               "X-Meshops-View": answer.kind, "X-Meshops-Serial": str(answer.serial),
               "X-Meshops-Revision": str(answer.revision)}
    body = answer.body
    if answer.body_gz is not None and "gzip" in request.headers.get("Accept-Encoding", ""):
        body = answer.body_gz
        headers["Content-Encoding"] = "gzip"
    return await send_body(request, body, headers, VIEW_TYPE)


async def get_cert(request: web.Request) -> web.Response:
    org = _org(request)
    name = request.match_info["name"]
    pem = org.certs.get(name)
    if pem is None:
        raise ApiError(404, "unknown-device", f"org {org.org} has no device {name!r}")
    return web.json_response({"cert": pem, "ca": org.ca_pem})


async def post_endpoints(request: web.Request) -> web.Response:
    hub = _hub(request)
    org = _org(request)
    caller = _identify(request, org)
    too_large = (f"the body must be at most {MAX_BODY} bytes (a report of {MAX_OBSERVATIONS} "
                 f"observations and {MAX_CANDIDATES} candidates fits)")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, "too-large", f"Content-Length {request.content_length}: {too_large}",
                       close=True)
    limits = request.app[LIMITS_KEY]
    try:
        async with asyncio.timeout(limits.body_timeout):
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "too-large", too_large, close=True) from None
    except TimeoutError:
        request.app[REFUSALS_KEY].refused(_peer_host(request), "body-timeout",
                                          f"device {caller.device} sent no complete body "
                                          f"within {limits.body_timeout:g}s")
        raise ApiError(408, "body-timeout", f"the body did not arrive within "
                                            f"{limits.body_timeout:g}s", close=True) from None
    doc = boundedjson.loads(raw, what="the report body", max_bytes=MAX_BODY,
                            max_depth=REPORT_DEPTH)
    named = doc.get("device") if isinstance(doc, dict) else None
    if isinstance(named, str) and named != caller.device:
        # a device's own endpoints are claimed by that device only
        hub.metrics.auth_refused.labels("other-device").inc()
        raise ApiError(403, "forbidden",
                       f"certificate is for device {caller.device}, not {named[:MAX_NAME]}")
    observed = _peer_addr(request)
    now = hub.now()
    try:
        report, observations = parse_report(doc, org.org, int(now), observed,
                                            hub.hub_addresses, caller.serial,
                                            may_reflect=caller.device in org.relays)
    except ApiError as exc:
        if exc.code == "bad-candidate":
            hub.metrics.claims_refused.labels(exc.detail["reason"]).inc()
        raise
    if report.device not in org.devices:
        raise ApiError(404, "unknown-device", f"org {org.org} has no device {report.device!r}")
    kept, dropped = accept_observations(report.device, observations, authority(org), now)
    for reason, count in dropped.items():
        hub.metrics.reflections_dropped.labels(reason).inc(count)
    try:
        changed = await hub.report(report, kept)
    except TemporaryError as exc:
        raise ApiError(503, "store-unavailable", str(exc)) from None
    return web.json_response({
        "accepted": True, "observed": observed, "changed": changed,
        "revision": hub.revisions.get(org.org, 0),
        "reflections": {"kept": len(kept), "dropped": dict(sorted(dropped.items()))},
    })


async def get_endpoints(request: web.Request) -> web.StreamResponse:
    hub = _hub(request)
    org = _org(request)
    _identify(request, org)  # reading the feed needs a device of this org; any device may
    since = _int_param(request, "since", 0, 2**62)
    wait = _int_param(request, "wait", 0, MAX_WAIT) or 0
    try:
        signed = await hub.feed(org, since, wait if since is not None else 0)
    except TemporaryError as exc:
        raise ApiError(503, "store-unavailable", str(exc)) from None
    headers = {"ETag": f'"{signed.revision}"', "Cache-Control": "no-cache",
               "X-Feed-Revision": str(signed.revision), "Vary": "Accept-Encoding"}
    if since is not None and signed.revision <= since:
        return web.Response(status=304, headers=headers)
    body = await hub.feed_body(signed)
    if len(body) > GZIP_MIN and "gzip" in request.headers.get("Accept-Encoding", ""):
        body = request.app[FEED_GZ_KEY].get(org.org, signed.revision, body)
        headers["Content-Encoding"] = "gzip"
    return await send_body(request, body, headers, FEED_TYPE)


async def get_crl(request: web.Request) -> web.Response:
    org = _org(request)
    snap = _hub(request).snapshot
    return web.json_response({
        "org": org.org,
        "serial": org.serial,
        "commit": snap.commit if snap else None,
        "revoked": sorted(org.revoked),
        "signed_in": "manifest",
    })


async def get_status(request: web.Request) -> web.Response:
    try:
        doc = await _hub(request).status_doc()
    except TemporaryError as exc:
        raise ApiError(503, "store-unavailable", str(exc)) from None
    return web.json_response(doc, dumps=lambda o: json.dumps(o, sort_keys=True))


async def get_metrics(request: web.Request) -> web.Response:
    resp = web.Response(body=_hub(request).metrics.render())
    resp.headers["Content-Type"] = CONTENT_TYPE
    return resp


# -- middleware and app ----------------------------------------------------------------
@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    hub = request.app[HUB_KEY]
    route = request.match_info.route.resource.canonical if request.match_info.route.resource \
        else "unmatched"
    started = time.monotonic()
    try:
        response = await handler(request)
    except ApiError as exc:
        response = error_response(exc.status, exc.code, exc.message, exc.detail)
        if exc.close:
            response.force_close()
    except InputRefused as exc:  # a body over the limits: too large, too deep, not JSON
        status, code = _REFUSED.get(exc.reason, (400, exc.reason))
        response = error_response(status, code, str(exc))
    except web.HTTPException as exc:  # aiohttp's own 404/405/413
        code = {404: "not-found", 405: "method-not-allowed", 413: "too-large"}.get(
            exc.status, "http-error")
        response = error_response(exc.status, code, exc.reason)
    except MeshopsError as exc:
        response = error_response(500, "hub-error", str(exc))
    except Exception as exc:  # noqa: BLE001 - never crash the server; log and answer 500
        _log_crash(request, route, exc)
        response = error_response(500, "internal", "internal error; see the hub log")
    if _anonymous_tls(request):
        response.force_close()  # one request per anonymous connection (hub/limits.py)
    long_poll = "wait" in request.query
    if not long_poll:
        hub.metrics.latency.labels(route).observe(time.monotonic() - started)
    hub.metrics.requests.labels(route, str(response.status)).inc()
    return response


CRASH_LOG_WINDOW = 60.0


def _log_crash(request: web.Request, route: str, exc: Exception) -> None:
    """A bug a client can trigger must not flood the log: one traceback per
    route and exception type per minute, one line for the others."""
    crashes = request.app[CRASHES_KEY]
    key, now = (route, type(exc).__name__), time.monotonic()
    last = crashes.get(key)
    if last is None or now - last >= CRASH_LOG_WINDOW:
        crashes[key] = now
        log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    else:
        log.error("unhandled error on %s %s: %s: %s (traceback logged at most once a minute)",
                  request.method, request.path[:200], type(exc).__name__, str(exc)[:200])


_REFUSED = {"too-large": (413, "too-large"), "too-deep": (400, "too-deep"),
            "not-json": (400, "bad-json")}


def _anonymous_tls(request: web.Request) -> bool:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport else None
    if ssl_object is None:
        return False
    pem = _PEER_PEMS.get(ssl_object)
    return not (pem or ssl_object.getpeercert(binary_form=True))


def make_app(hub: Hub, *, peer_cert: PeerCert = tls_peer_cert, limits: Limits | None = None,
             refusals: RefusalLog | None = None,
             enroll: Enrollment | None = None) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY)
    app[HUB_KEY] = hub
    app[PEER_KEY] = peer_cert
    app[LIMITS_KEY] = limits or Limits()
    app[REFUSALS_KEY] = refusals or RefusalLog(hub.metrics)
    app[CRASHES_KEY] = {}  # (route, exception type) -> when its traceback was last logged
    app[FEED_GZ_KEY] = _FeedGzip()
    app[SENDS_KEY] = asyncio.Semaphore(BIG_SENDS)
    app.router.add_get("/v1/orgs/{org}/manifest", get_manifest)
    app.router.add_get("/v1/orgs/{org}/devices/{name}/cert", get_cert)
    app.router.add_get("/v1/orgs/{org}/devices/{name}/view", get_view)
    app.router.add_post("/v1/orgs/{org}/endpoints", post_endpoints)
    app.router.add_get("/v1/orgs/{org}/endpoints", get_endpoints)
    app.router.add_get("/v1/orgs/{org}/crl", get_crl)
    app.router.add_get("/v1/orgs/{org}/roots/{version}", roots.handler(HUB_KEY))
    app.router.add_get("/v1/status", get_status)
    app.router.add_get("/metrics", get_metrics)
    if enroll is not None:  # GET/POST /v1/orgs/{org}/enroll (reconciler.hub.enroll)
        enroll.add_routes(app)
        add_rotate_routes(app, enroll)  # POST /v1/orgs/{org}/devices/{name}/rotate
    return app
