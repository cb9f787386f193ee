"""Where the agent's verified inputs come from: trust, credentials, manifest, feed.

Called by ``agent.gather`` (every pass) and ``agent.render``. Every function
here reads; the only writes are the public credentials the reads need, kept
in the state dir: the org CA from the pinned trust (``hub-ca.pem``, the hub's
TLS anchor) and this device's certificate (``device.crt``, public, issued and
renewed by the hub), because the hub serves manifests over mTLS only.

* ``obtain_manifest`` fetches the manifest and verifies it against the pinned
  trust and the rollback floor (the last *applied* serial); the source being
  unreachable falls back to the cached, still-valid manifest (fail-static);
* ``manifest_with_cert``: a hub refusing the request (an expired or revoked
  local certificate) triggers one certificate re-fetch and retry;
* ``fetch_feed``: the signed endpoint feed; on failure the last good one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.agent import endpoints as endpoints_mod
from reconciler.agent.config import AgentConfig
from reconciler.agent.fetch import FetchLike
from reconciler.agent.inputs import VerifiedManifest
from reconciler.agent.state import DEVICE_CERT, HUB_CA, ROOT, CachedManifest, StateDir
from reconciler.boundedjson import loads as bounded_loads
from reconciler.errors import ConfigError, FetchError, InputRefused, ManifestRefused, PkiError
from reconciler.model.endpoints import EndpointFeed
from reconciler.model.manifest import Manifest
from reconciler.pki.envelope import Trust, load_trust
from reconciler.pki.manifest import DEFAULT_MAX_SKEW, verify_manifest
from reconciler.structs import Record

if TYPE_CHECKING:  # pki.root is imported where a trust root is used
    from reconciler.pki.root import TrustRoot


def read_pinned_trust(config: AgentConfig) -> bytes:
    try:
        return Path(config.trust).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{config.trust}: cannot read the pinned trust file: "
                          f"{exc.strerror}") from exc


def load_pinned_trust(config: AgentConfig) -> Trust:
    return load_trust(read_pinned_trust(config))


def verify_against_cache(envelope: bytes, trust: Trust, org: str, cached: CachedManifest | None,
                         last_serial: int, now: float,
                         warnings: list[str] | None = None, *,
                         max_skew: float = DEFAULT_MAX_SKEW) -> Manifest:
    """Verify ``envelope``; the rollback floor is the last applied serial.

    ``verify_manifest`` refuses ``serial <= last_serial``. Re-applying the
    manifest already applied (same serial) must work, so: the identical
    envelope is verified without the floor (signature, org and expiry still
    checked); any other envelope is verified against ``last_serial - 1`` and,
    if its serial equals the floor, must carry the same manifest as the cache
    (one serial, two contents is refused as a rollback/equivocation). A cache
    that is missing or no longer verifies (corrupt on disk: the state dir
    counts it as absent) cannot vouch for anything: the new envelope then only
    has to clear the floor, with a warning.
    """
    if cached is not None and envelope == cached.envelope:
        # the bytes this device verified and applied before: signature, org and
        # expiry are checked again, the schema check is not (docs/security.md)
        manifest = verify_manifest(envelope, trust, org, None, now, max_skew,
                                   schema_checked=True, parsed=cached.parsed)
        if manifest.serial < last_serial:
            raise ManifestRefused("rollback", f"cached serial {manifest.serial} is below the "
                                              f"last applied serial {last_serial}")
        return manifest
    floor = last_serial - 1 if last_serial > 0 else None
    manifest = verify_manifest(envelope, trust, org, floor, now, max_skew)
    if last_serial and manifest.serial == last_serial:
        try:
            if cached is None:
                raise ManifestRefused("malformed", "no readable cached manifest")
            previous = verify_manifest(cached.envelope, trust, org, None, float("-inf"), None)
        except ManifestRefused as exc:
            if warnings is not None:
                warnings.append(f"the cached manifest.dsse cannot vouch for serial "
                                f"{manifest.serial} ({exc}); accepted the fetched one, which "
                                "is at the rollback floor")
            return manifest
        if previous != manifest:
            raise ManifestRefused(
                "rollback", f"serial {manifest.serial} was already applied with other content")
    return manifest


def obtain_manifest(config: AgentConfig, fetch: FetchLike, trust: Trust, state: StateDir,
                    now: float, *, wait: int | None = None,
                    warnings: list[str] | None = None) -> VerifiedManifest:
    """Fetch + verify, or fall back to the cache when the source is unreachable."""
    cached = state.load_manifest()
    last = state.last_serial()
    url = config.source_url
    try:
        resp = fetch.get(url, etag=cached.etag if cached and not url.startswith("file:")
                         else None, wait=wait, kind="manifest")
    except FetchError as exc:
        if cached is None:
            raise
        try:
            manifest = verify_against_cache(cached.envelope, trust, config.org, cached, last, now,
                                            max_skew=config.max_clock_skew)
        except ManifestRefused as refused:
            raise FetchError(f"{exc}; the cached manifest (serial {cached.serial}) cannot be "
                             f"used: {refused}", exc.delay) from exc
        return VerifiedManifest(manifest, cached.envelope, cached.etag, "cache",
                                f"manifest source unreachable ({exc}); re-applied the cached "
                                f"manifest serial {manifest.serial}", cached.etag)
    if resp.status == 304:
        if cached is None:
            raise FetchError(f"{url}: 304 Not Modified but no cached manifest")
        envelope = cached.envelope
    else:
        envelope = resp.body
    manifest = verify_against_cache(envelope, trust, config.org, cached, last, now, warnings,
                                    max_skew=config.max_clock_skew)
    unchanged = cached is not None and envelope == cached.envelope
    return VerifiedManifest(manifest, envelope, resp.etag, "unchanged" if unchanged else "fetched",
                            cached_etag=cached.etag if cached is not None else None)


def obtain(config: AgentConfig, fetch: FetchLike, trust: Trust, state: StateDir, now: float,
           *, wait: int | None = None, warnings: list[str]) -> VerifiedManifest:
    """With a hub: this device's view (``agent.view``); the org manifest when the
    hub has no view endpoint (404), or when it is unreachable and no view is
    held yet (the manifest path then falls back to its own cache). Without a
    hub: the manifest at ``source_url``."""
    if config.hub:
        from reconciler.agent.view import obtain_view  # hub only (pki.view with it)

        try:
            return obtain_view(config, fetch, trust, state, now, wait=wait, warnings=warnings)
        except FetchError:
            if state.load_view(config.org, config.name) is not None:
                raise  # a held view that cannot be used any more: the error says why
        except ConfigError as exc:
            if "HTTP 404" not in str(exc):
                raise
    return obtain_manifest(config, fetch, trust, state, now, wait=wait, warnings=warnings)


def pin_hub_ca(config: AgentConfig, trust: Trust, state: StateDir) -> bool:
    """The org CA(s) of the pinned trust verify the hub's TLS certificate (every
    CA of the trust root during a CA rotation's overlap). True when it changed."""
    org = trust.orgs.get(config.org)
    if org is not None and org.ca_pem:
        return state.write_if_changed(HUB_CA, org.ca_pem.encode(), mode=0o644)
    return False


def drop_expired_cert(fetch: FetchLike, state: StateDir, now: float) -> bool:
    """Delete ``device.crt`` once it expired: the hub's TLS handshake refuses an
    expired client certificate outright, so the renewed one must be fetched
    without any (the certificate endpoint is public). True when dropped."""
    path = state.path / DEVICE_CERT
    if not path.exists():
        return False  # none yet: nothing to drop (and no x509 to import)
    from reconciler.pki.certs import load_cert  # cryptography.x509: ~25 ms to import

    try:
        not_after = load_cert(path.read_bytes()).not_valid_after_utc.timestamp()
    except (OSError, PkiError):
        return False  # none yet, or unreadable: the fetch replaces it
    if not_after > now:
        return False
    path.unlink(missing_ok=True)
    fetch.reset_tls()
    return True


def fetch_device_cert(config: AgentConfig, fetch: FetchLike, state: StateDir, *,
                      refresh: bool, warnings: list[str]) -> bool:
    """Keep ``device.crt`` (public; renewed by the hub) for mTLS with the identity
    key. The hub serves it without a client certificate, so a new device fetches
    it before its first manifest request. True when the file changed."""
    if not refresh and state.path.joinpath(DEVICE_CERT).exists():
        return False
    assert config.hub is not None
    url = f"{config.hub.rstrip('/')}/v1/orgs/{config.org}/devices/{config.name}/cert"
    try:
        doc = fetch.get(url, kind="cert").json()
        pem = doc["cert"]
        if not isinstance(pem, str) or "BEGIN CERTIFICATE" not in pem:
            raise ValueError("no PEM certificate")
    except (FetchError, ConfigError, InputRefused, ValueError, KeyError, TypeError) as exc:
        warnings.append(f"device certificate not fetched: {exc}")
        return False
    if not state.write_if_changed(DEVICE_CERT, pem.encode(), mode=0o644):
        return False
    fetch.reset_tls()
    return True


def manifest_with_cert(config: AgentConfig, fetch: FetchLike, trust: Trust, state: StateDir,
                       now: float, *, wait: int | None,
                       warnings: list[str]) -> VerifiedManifest:
    """The verified manifest, with the hub credentials it needs kept current.

    With a hub: the org CA is pinned, an expired certificate dropped and a
    missing one fetched first; a hub refusing the request (4xx: e.g. the
    local certificate expired or was revoked while the device was away)
    triggers one certificate re-fetch and, if it changed, a retry; a new
    manifest re-fetches the certificate (renewals ship with a publish)."""
    if not config.hub:
        return obtain(config, fetch, trust, state, now, wait=wait, warnings=warnings)
    if not config.tls_ca and pin_hub_ca(config, trust, state):
        fetch.reset_tls()
    drop_expired_cert(fetch, state, now)
    fresh = fetch_device_cert(config, fetch, state, refresh=False, warnings=warnings)
    try:
        got = obtain(config, fetch, trust, state, now, wait=wait, warnings=warnings)
    except ConfigError:
        # the hub refused the request or the TLS handshake: the local certificate
        # may be expired, revoked or from a CA the hub no longer accepts (a CA
        # rotation while this device was away). It is public and re-fetchable, so
        # it is dropped first: presenting it again would fail the handshake again.
        (state.path / DEVICE_CERT).unlink(missing_ok=True)
        fetch.reset_tls()
        if not fetch_device_cert(config, fetch, state, refresh=True, warnings=warnings):
            raise
        return obtain(config, fetch, trust, state, now, wait=wait, warnings=warnings)
    if got.source == "fetched" and not fresh:
        fetch_device_cert(config, fetch, state, refresh=True, warnings=warnings)
    return got


def fetch_feed(config: AgentConfig, fetch: FetchLike, trust: Trust,
               last: EndpointFeed | None, warnings: list[str]) -> EndpointFeed | None:
    """The endpoint feed (hub only); on failure, or when older, ``last``."""
    if config.feed_url is None:
        return last
    try:
        resp = fetch.get(config.feed_url, kind="feed")
        if resp.status == 304 or not resp.body:
            return last
        feed = endpoints_mod.open_feed(resp.body, trust, config.org)
    except (FetchError, ManifestRefused, ConfigError, InputRefused) as exc:
        warnings.append(f"endpoint feed not used: {exc}")
        return last
    if last is not None and feed.revision < last.revision:
        warnings.append(f"endpoint feed revision {feed.revision} is older than "
                        f"{last.revision}; kept the newer one")
        return last
    return feed


# -- the trust root (pki.root): pinned, walked, followed --------------------------

MAX_WALK = 32  # root versions followed in one pass


class Pinned(Record):
    """What this pass trusts: the pinned trust file, and the org's trust root
    when the org has one (then its manifest keys and CAs replace the file's)."""

    trust: Trust
    root: TrustRoot | None = None

    def with_root(self, root: TrustRoot) -> Pinned:
        return Pinned(Trust(orgs={**self.trust.orgs, root.org: root.org_trust()}), root)


def load_pinned(config: AgentConfig, state: StateDir, warnings: list[str]) -> Pinned:
    """The pinned trust file and, when its org entry carries a ``root`` (or the
    state dir holds a newer root walked to before), that root."""
    data = read_pinned_trust(config)  # read once: the keys, and the root beside them
    trust = load_trust(data)
    root = None
    try:
        doc = bounded_loads(data, what=config.trust, max_bytes=4 << 20, max_depth=8)
        pinned = doc["orgs"][config.org].get("root")
    except (KeyError, TypeError, AttributeError, InputRefused):
        pinned = None
    if isinstance(pinned, str):
        from reconciler.pki.root import verify_initial  # only for an org with a trust root

        root = verify_initial(pinned.encode(), config.org)  # refused: a broken pin is an error
    walked = None
    try:
        walked_bytes = (state.path / ROOT).read_bytes()
    except OSError:
        walked_bytes = None  # no root walked to yet
    if walked_bytes is not None:
        from reconciler.pki.root import verify_initial

        try:
            walked = verify_initial(walked_bytes, config.org)
        except ManifestRefused as exc:
            warnings.append(f"{state.path / ROOT}: ignored ({exc}); walking again from the pin")
    if walked is not None and (root is None or walked.version > root.version):
        root = walked
    return Pinned(trust, None).with_root(root) if root is not None else Pinned(trust)


def root_url(config: AgentConfig, version: int) -> str:
    """Root ``version`` of the org: ``/v1/orgs/ORG/roots/N`` on the hub, or
    ``roots/N.json`` beside a static manifest."""
    if config.hub:
        return f"{config.hub.rstrip('/')}/v1/orgs/{config.org}/roots/{version}"
    return f"{config.source_url.rsplit('/', 1)[0]}/roots/{version}.json"


def walk_roots(config: AgentConfig, fetch: FetchLike, public_fetch: FetchLike | None,
               current: TrustRoot, state: StateDir, warnings: list[str]) -> TrustRoot:
    """Follow the chain from ``current`` as far as the source has it: each next
    version must be signed by a threshold of the previous root's keys and of
    its own (``pki.root.verify_next``). Roots are self-authenticating, so when
    the hub's TLS cannot be verified with the pinned CA (its CA rotated while
    this device was away) they are fetched with ``public_fetch`` (no TLS
    verification). Each accepted root is kept in the state dir at once."""
    for _ in range(MAX_WALK):
        url = root_url(config, current.version + 1)
        try:
            body = _get_root(fetch, public_fetch, url)
        except (FetchError, ConfigError, InputRefused) as exc:
            if "HTTP 404" not in str(exc):
                warnings.append(f"trust root {current.version + 1} not fetched: {exc}")
            break
        try:
            from reconciler.pki.root import verify_next

            current = verify_next(current, body)
        except ManifestRefused as exc:
            warnings.append(f"trust root from {url} refused: {exc}")
            break
        state.write_if_changed(ROOT, body, mode=0o644)
    return current


def _get_root(fetch: FetchLike, public_fetch: FetchLike | None, url: str) -> bytes:
    try:
        return fetch.get(url, kind="root").body
    except ConfigError as exc:
        if public_fetch is None or "HTTP 4" in str(exc):
            raise
        return public_fetch.get(url, kind="root").body


def manifest_and_trust(config: AgentConfig, fetch: FetchLike, public_fetch: FetchLike | None,
                       state: StateDir, now: float, *, wait: int | None,
                       warnings: list[str]) -> tuple[VerifiedManifest, Trust]:
    """The verified manifest and the trust it verified with, following the org's
    trust root in band (TUF-style):

    * a manifest (or the hub's TLS, or the hub itself) refused in a way a
      rotation explains (``unknown-key``, ``bad-signature``, a TLS or 4xx
      refusal) makes the agent walk the root chain and try once more;
    * a verified manifest whose signed ``root_version`` is above the pinned
      root makes the agent walk now, while the old keys still work (the
      overlap), so it never depends on the fallback above."""
    pinned = load_pinned(config, state, warnings)
    try:
        got = manifest_with_cert(config, fetch, pinned.trust, state, now, wait=wait,
                                 warnings=warnings)
    except (ManifestRefused, ConfigError) as exc:
        if pinned.root is None or (isinstance(exc, ManifestRefused) and exc.reason not in
                                   ("unknown-key", "bad-signature")):
            raise
        walked = walk_roots(config, fetch, public_fetch, pinned.root, state, warnings)
        if walked.version == pinned.root.version:
            raise
        warnings.append(f"trust root of org {config.org!r} rotated: version "
                        f"{pinned.root.version} -> {walked.version}")
        pinned = pinned.with_root(walked)
        got = manifest_with_cert(config, fetch, pinned.trust, state, now, wait=None,
                                 warnings=warnings)
        return got, pinned.trust
    newest = got.manifest.root_version or 0
    if pinned.root is not None and newest > pinned.root.version:
        walked = walk_roots(config, fetch, public_fetch, pinned.root, state, warnings)
        if walked.version > pinned.root.version:
            warnings.append(f"trust root of org {config.org!r} rotated: version "
                            f"{pinned.root.version} -> {walked.version}")
            pinned = pinned.with_root(walked)
            if config.hub and not config.tls_ca and pin_hub_ca(config, pinned.trust, state):
                fetch.reset_tls()
    return got, pinned.trust
