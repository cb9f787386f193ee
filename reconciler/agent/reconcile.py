"""One level-based pass of the agent: ``reconcile_once(config, ...) -> Result``.

Called by ``meshops agent apply`` (one pass) and ``agent.loop`` (``agent
run``). Every pass reads the whole desired and observed state:

1. with a hub and no ``device.crt`` yet (or an expired one, which the hub's
   TLS handshake would refuse: it is dropped first): fetch this device's
   certificate (public on the hub), because the hub serves manifests over
   mTLS only;
   then fetch the manifest and verify it against the pinned trust and the last
   applied serial (``obtain_manifest``); the hub being unreachable falls
   back to the cached, still-valid manifest (fail-static); a refused manifest
   raises before the interface is touched; a new manifest from the hub
   re-fetches the certificate (renewals), and a hub refusing the manifest
   request (an expired/revoked local certificate) triggers one re-fetch and
   retry;
2. with a hub: fetch the signed endpoint feed and report this device's own
   endpoints and what its WireGuard sees of its peers (reflection);
3. compute the desired interface (``agent.desired``, pure);
4. observe, ``plan()``, apply (unless ``dry_run``);
5. re-observe and re-plan: anything left raises ``NotConverged``.

Moves: every pass with a hub compares the source address towards the hub
(``local_ip``) with the one discovery ran from. A change means the device
changed networks: that pass skips the long-poll, drops the fetcher's TLS
state, re-runs STUN discovery at once (from a spare port while WireGuard
holds its own) and reports the new endpoints. A public IP the hub or a peer's
WireGuard attributes to this device (reflection) that discovery does not
know triggers the same re-check, once per new address.

Effects are parameters: ``fetch`` (an ``agent.fetch.Fetcher``), ``backend``
(``reconciler.backends`` Protocol), ``now``, ``discover`` (STUN: while the
listen port is still free, and after a move), ``local_ip`` (the source
address towards the hub; default: a routing-table lookup) and ``report``
(posts the endpoint report; default: ``fetch.post_json`` to the hub).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from reconciler.agent import desired as desired_mod
from reconciler.agent import endpoints as endpoints_mod
from reconciler.agent import paths as paths_mod
from reconciler.agent.config import AgentConfig, read_private_key
from reconciler.agent.fetch import Response, route_source
from reconciler.agent.state import DEVICE_CERT, HUB_CA, CachedManifest, StateDir
from reconciler.backends.base import Backend
from reconciler.converge import (
    AddPeer,
    CreateInterface,
    Operation,
    SetListenPort,
    UpdatePeer,
    endpoint_needs_set,
    plan,
)
from reconciler.errors import ConfigError, FetchError, ManifestRefused, NotConverged, PkiError
from reconciler.model.endpoints import EndpointFeed
from reconciler.model.manifest import Manifest
from reconciler.model.wg import DesiredInterface, ObservedInterface
from reconciler.pki.certs import load_cert
from reconciler.pki.envelope import Trust, load_trust
from reconciler.pki.manifest import verify_manifest
from reconciler.policy import peers_allowed

log = logging.getLogger(__name__)


class FetchLike(Protocol):
    def get(self, url: str, *, etag: str | None = None, wait: int | None = None,
            params: Any = None) -> Response: ...

    def post_json(self, url: str, obj: Any) -> Any: ...


@dataclass(frozen=True)
class Result:
    """What one pass did. ``operations`` is the plan (applied unless dry-run)."""

    operations: tuple[Operation, ...]
    applied: int
    serial: int
    commit: str
    residual: tuple[Operation, ...] = ()
    source: str = "fetched"  # fetched | unchanged (304 / same bytes) | cache (hub unreachable)
    member: bool = True  # False: this device is not in the manifest; it got no peers
    warnings: tuple[str, ...] = ()
    peers: tuple[desired_mod.PeerSummary, ...] = field(default=(), repr=False)
    feed_revision: int | None = None


@dataclass(frozen=True)
class VerifiedManifest:
    manifest: Manifest
    envelope: bytes
    etag: str | None
    source: str
    warning: str | None = None


def load_pinned_trust(config: AgentConfig) -> Trust:
    try:
        data = Path(config.trust).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{config.trust}: cannot read the pinned trust file: "
                          f"{exc.strerror}") from exc
    return load_trust(data)


def verify_against_cache(envelope: bytes, trust: Trust, org: str, cached: CachedManifest | None,
                         last_serial: int, now: float) -> Manifest:
    """Verify ``envelope``; the rollback floor is the last applied serial.

    ``verify_manifest`` refuses ``serial <= last_serial``. Re-applying the
    manifest already applied (same serial) must work, so: the identical
    envelope is verified without the floor (signature, org and expiry still
    checked); any other envelope is verified against ``last_serial - 1`` and,
    if its serial equals the floor, must carry the same manifest as the cache
    (one serial, two contents is refused as a rollback/equivocation).
    """
    if cached is not None and envelope == cached.envelope:
        manifest = verify_manifest(envelope, trust, org, None, now)
        if manifest.serial < last_serial:
            raise ManifestRefused("rollback", f"cached serial {manifest.serial} is below the "
                                              f"last applied serial {last_serial}")
        return manifest
    floor = last_serial - 1 if last_serial > 0 else None
    manifest = verify_manifest(envelope, trust, org, floor, now)
    if last_serial and manifest.serial == last_serial:
        previous = verify_manifest(cached.envelope, trust, org, None, float("-inf")) \
            if cached is not None else None
        if previous is None or previous != manifest:
            raise ManifestRefused(
                "rollback", f"serial {manifest.serial} was already applied with other content")
    return manifest


def obtain_manifest(config: AgentConfig, fetch: FetchLike, trust: Trust, state: StateDir,
                    now: float, *, wait: int | None = None) -> VerifiedManifest:
    """Fetch + verify, or fall back to the cache when the source is unreachable."""
    cached = state.load_manifest()
    last = state.last_serial()
    url = config.source_url
    try:
        resp = fetch.get(url, etag=cached.etag if cached and not url.startswith("file:")
                         else None, wait=wait)
    except FetchError as exc:
        if cached is None:
            raise
        try:
            manifest = verify_against_cache(cached.envelope, trust, config.org, cached, last, now)
        except ManifestRefused as refused:
            raise FetchError(f"{exc}; the cached manifest (serial {cached.serial}) cannot be "
                             f"used: {refused}", exc.delay) from exc
        return VerifiedManifest(manifest, cached.envelope, cached.etag, "cache",
                                f"manifest source unreachable ({exc}); re-applied the cached "
                                f"manifest serial {manifest.serial}")
    if resp.status == 304:
        if cached is None:
            raise FetchError(f"{url}: 304 Not Modified but no cached manifest")
        envelope = cached.envelope
    else:
        envelope = resp.body
    manifest = verify_against_cache(envelope, trust, config.org, cached, last, now)
    unchanged = cached is not None and envelope == cached.envelope
    return VerifiedManifest(manifest, envelope, resp.etag, "unchanged" if unchanged else "fetched")


def _feed(config: AgentConfig, fetch: FetchLike, trust: Trust, state: StateDir,
          warnings: list[str]) -> EndpointFeed | None:
    """The endpoint feed (hub only); on failure the last good one from the state dir."""
    previous = state.load_feed()
    last = endpoints_mod.feed_from_dict(previous) if previous else None
    if config.feed_url is None:
        return None
    try:
        resp = fetch.get(config.feed_url)
        if resp.status == 304 or not resp.body:
            return last
        feed = endpoints_mod.open_feed(resp.body, trust, config.org)
    except (FetchError, ManifestRefused, ConfigError) as exc:
        warnings.append(f"endpoint feed not used: {exc}")
        return last
    if last is not None and feed.revision < last.revision:
        warnings.append(f"endpoint feed revision {feed.revision} is older than "
                        f"{last.revision}; kept the newer one")
        return last
    return feed


def reconcile_once(
    config: AgentConfig,
    *,
    fetch: FetchLike,
    backend: Backend,
    now: float,
    dry_run: bool = False,
    discover: Callable[[int], Any] | None = None,
    report: Callable[[dict[str, Any]], Any] | None = None,
    wait: int | None = None,
    local_ip: Callable[[], str | None] | None = None,
) -> Result:
    """One whole pass (see the module docstring). Raises ``ManifestRefused``
    (interface untouched), ``FetchError`` (no usable manifest), backend errors,
    or ``NotConverged`` with the residual operations."""
    state = StateDir(config.state_dir)
    trust = load_pinned_trust(config)
    warnings: list[str] = []
    if config.hub and not config.tls_ca and not dry_run:
        pin_hub_ca(config, trust, state)
    here = (local_ip or (lambda: hub_local_ip(config)))() if config.hub else None
    moved = endpoints_mod.SelfEndpoints.from_dict(state.load_discovery()).moved_from(here)
    if moved and not dry_run:
        wait = None  # a long-poll now would only delay the new endpoints' report
        reset = getattr(fetch, "reset_tls", None)
        if reset is not None:
            reset()
    fresh_cert = False  # device.crt written in this pass: no second fetch below
    if config.hub and not dry_run:  # the hub's manifest needs mTLS: a certificate first
        _drop_expired_cert(fetch, state, now)
        fresh_cert = _fetch_device_cert(config, fetch, state, refresh=False, warnings=warnings)
    got, renewed = _manifest_with_cert(config, fetch, trust, state, now, wait=wait,
                                       dry_run=dry_run, warnings=warnings)
    manifest = got.manifest
    if got.warning:
        warnings.append(got.warning)
    cached = state.load_manifest()
    if not dry_run and got.source != "cache" and (
            cached is None or cached.envelope != got.envelope or cached.etag != got.etag):
        state.save_manifest(CachedManifest(got.envelope, manifest.serial, manifest.commit,
                                           manifest.not_after, got.etag))
    private_key = read_private_key(config.private_key)
    if config.hub and got.source == "fetched" and not dry_run and not (fresh_cert or renewed):
        # a renewal ships with a publish: a new manifest re-reads the certificate
        _fetch_device_cert(config, fetch, state, refresh=True, warnings=warnings)
    feed = _feed(config, fetch, trust, state, warnings) if got.source != "cache" \
        else _last_feed(state)
    observed = backend.observe(config.interface)
    listen_port = config.listen_port or manifest.listen_port
    if moved and not dry_run and observed.exists and observed.listen_port:
        rebind(backend, config.interface, observed.listen_port)
    own = _own_endpoints(config, state, discover, observed, feed, listen_port, dry_run,
                         warnings, moved=moved, here=here)

    peering_state = state.load_peering()
    decision = paths_mod.decide(manifest, config.name, observed=observed, feed=feed,
                                state=peering_state, now=now, hysteresis=config.hysteresis,
                                own=own)
    allowed = peers_allowed(manifest, config.name)
    want = desired_mod.compute_desired(
        manifest, config.name, private_key=private_key, interface=config.interface,
        allowed=allowed, paths=decision.paths, my_relay=decision.my_relay,
        listen_port=listen_port,
    )
    if not want.member:
        warnings.append(f"device {config.name!r} is not in manifest serial {manifest.serial} "
                        f"of org {config.org!r}: removed or disabled in git; all peers dropped")
    ops = repoint(plan(want.interface, observed, now), want.interface, observed,
                  decision.repoint)
    common = {"serial": manifest.serial, "commit": manifest.commit, "source": got.source,
              "member": want.member, "peers": want.peers,
              "feed_revision": feed.revision if feed else None}
    if dry_run:
        return Result(ops, 0, warnings=tuple(warnings), **common)  # type: ignore[arg-type]

    if ops:
        for phase in phases(ops):
            backend.apply(phase)
        observed = backend.observe(config.interface)
        residual = plan(want.interface, observed, now)
        if residual:
            raise NotConverged(residual)
    if feed is not None:
        state.save_feed(endpoints_mod.feed_to_dict(feed))
    state.save_peering(decision.state)
    state.save_applied(applied_summary(config, manifest, want))
    if config.hub and got.source != "cache":
        heard = {name: float(v[1]) for name, v in
                 decision.state.get(paths_mod.LIVENESS_KEY, {}).items()}
        _report(config, fetch, report, manifest, want, observed, listen_port, own, warnings,
                here, heard)
    return Result(ops, len(ops), warnings=tuple(warnings), **common)  # type: ignore[arg-type]


def pin_hub_ca(config: AgentConfig, trust: Trust, state: StateDir) -> None:
    """The org CA from the pinned trust verifies the hub's TLS certificate."""
    org = trust.orgs.get(config.org)
    if org is not None and org.ca_pem:
        state.write_if_changed(HUB_CA, org.ca_pem.encode(), mode=0o644)


def _manifest_with_cert(config: AgentConfig, fetch: FetchLike, trust: Trust, state: StateDir,
                        now: float, *, wait: int | None, dry_run: bool,
                        warnings: list[str]) -> tuple[VerifiedManifest, bool]:
    """``obtain_manifest``; when the hub refuses the request (4xx: e.g. the local
    certificate expired or was revoked while the device was away) the current
    certificate is fetched once and, if it differs, the request retried. The flag
    says whether the certificate was replaced that way."""
    try:
        return obtain_manifest(config, fetch, trust, state, now, wait=wait), False
    except ConfigError:
        if not config.hub or dry_run or not _fetch_device_cert(
                config, fetch, state, refresh=True, warnings=warnings):
            raise
    return obtain_manifest(config, fetch, trust, state, now, wait=wait), True


def _drop_expired_cert(fetch: FetchLike, state: StateDir, now: float) -> bool:
    """Delete ``device.crt`` once it expired: the hub's TLS handshake refuses an
    expired client certificate outright, so the renewed one must be fetched
    without any (the certificate endpoint is public). True when dropped."""
    path = state.path / DEVICE_CERT
    try:
        not_after = load_cert(path.read_bytes()).not_valid_after_utc.timestamp()
    except (OSError, PkiError):
        return False  # none yet, or unreadable: the fetch below replaces it
    if not_after > now:
        return False
    path.unlink(missing_ok=True)
    reset = getattr(fetch, "reset_tls", None)
    if reset is not None:
        reset()
    return True


def _fetch_device_cert(config: AgentConfig, fetch: FetchLike, state: StateDir, *,
                       refresh: bool, warnings: list[str]) -> bool:
    """Keep ``device.crt`` (public; renewed by the hub) for mTLS with the identity
    key. The hub serves it without a client certificate, so a new device fetches
    it before its first manifest request. True when the file changed."""
    if not refresh and state.path.joinpath(DEVICE_CERT).exists():
        return False
    assert config.hub is not None
    url = f"{config.hub.rstrip('/')}/v1/orgs/{config.org}/devices/{config.name}/cert"
    try:
        doc = json.loads(fetch.get(url).body or b"{}")
        pem = doc["cert"]
        if not isinstance(pem, str) or "BEGIN CERTIFICATE" not in pem:
            raise ValueError("no PEM certificate")
    except (FetchError, ConfigError, ValueError, KeyError, TypeError) as exc:
        warnings.append(f"device certificate not fetched: {exc}")
        return False
    if not state.write_if_changed(DEVICE_CERT, pem.encode(), mode=0o644):
        return False
    reset = getattr(fetch, "reset_tls", None)
    if reset is not None:
        reset()
    return True


def hub_local_ip(config: AgentConfig) -> str | None:
    """The source address the routing table picks towards the hub (a LAN candidate)."""
    hub_host = (config.hub or "").split("://", 1)[-1].split("/", 1)[0]
    if hub_host.startswith("["):
        hub_host = hub_host[1:].split("]", 1)[0]
    elif hub_host.count(":") == 1:
        hub_host = hub_host.rsplit(":", 1)[0]
    return route_source(hub_host, 443) if hub_host else None


def repoint(ops: tuple[Operation, ...], want: DesiredInterface, observed: ObservedInterface,
            names: frozenset[str]) -> tuple[Operation, ...]:
    """Set the endpoint of the peers in ``names`` (their pair's situation changed:
    a move) even where the planner would leave a fresh-looking session to
    roaming: the old session is dead, and waiting for it to go stale (180 s)
    would keep sending to a vanished address. Merged into the peer's
    ``UpdatePeer`` when the plan already has one."""
    if not names:
        return ops
    out = list(ops)
    for key, peer in sorted(want.peers.items()):
        seen = observed.peers.get(key)
        if peer.name not in names or peer.endpoint is None or seen is None:
            continue
        if not endpoint_needs_set(peer, seen, float("inf")):
            continue  # already there
        at = next((i for i, op in enumerate(out)
                   if isinstance(op, UpdatePeer) and op.public_key == key), None)
        if at is None:
            out.append(UpdatePeer(want.name, key, None, peer.endpoint, None, peer.name))
        else:
            out[at] = replace(out[at], endpoint=peer.endpoint)  # type: ignore[type-var]
    return tuple(out)


def rebind(backend: Backend, interface: str, listen_port: int) -> None:
    """After a move: make WireGuard re-open its UDP socket on the same port.

    wireguard-go remembers, per peer, the local source address it last used
    ("sticky sockets"); after a move that address is gone, every send fails
    and nothing goes out until a handshake times out (15 s). Setting the
    listen port (even to the same value) rebinds the socket and clears those
    cached sources; the kernel module treats it as a no-op."""
    backend.apply((SetListenPort(interface, listen_port),))


def _last_feed(state: StateDir) -> EndpointFeed | None:
    """The last good feed: a pass on the cached manifest keeps its paths, it does
    not forget every peer's endpoints and relays."""
    previous = state.load_feed()
    return endpoints_mod.feed_from_dict(previous) if previous else None


def _own_endpoints(config: AgentConfig, state: StateDir, discover: Callable[[int], Any] | None,
                   observed: ObservedInterface, feed: EndpointFeed | None, listen_port: int,
                   dry_run: bool, warnings: list[str], *, moved: bool = False,
                   here: str | None = None) -> endpoints_mod.SelfEndpoints:
    """This device's own endpoints: STUN discovery from the WireGuard port while
    it is still free (interface absent), re-checked (from a spare port) at once
    when the device moved (``moved``: its source address changed) or when the
    hub or a peer saw it at a public IP discovery does not know (each such IP
    triggers one re-check)."""
    own = endpoints_mod.SelfEndpoints.from_dict(state.load_discovery())
    if dry_run:
        return own
    if discover is None:
        if here is not None and here != own.local_ip:  # remembered for move detection
            own = replace(own, local_ip=here)
            state.save_discovery(own.to_dict())
        return own
    entry = next((e for e in feed.entries if e.device == config.name), None) if feed else None
    foreign = endpoints_mod.foreign_ips(entry, own)
    suspicious = bool(set(foreign) - set(own.checked))
    if observed.exists and not moved and not suspicious:
        return own
    if moved:
        # the old STUN endpoints belong to the NAT this device left
        own = replace(own, candidates=(), public_ip=None, checked=())
    try:
        found = endpoints_mod.from_discovery(discover(listen_port), own)
    except (FetchError, ConfigError) as exc:
        warnings.append(f"STUN discovery failed: {exc}")
        return own
    found = replace(found, local_ip=here or found.local_ip,
                    checked=endpoints_mod.foreign_ips(entry, found))
    state.save_discovery(found.to_dict())
    return found


def phases(ops: tuple[Operation, ...]) -> tuple[tuple[Operation, ...], ...]:
    """Split a plan that creates the interface: first the interface (key, port,
    link), then the peers.

    wireguard-go binds a random port as soon as it starts and its device is
    up at once; peers added before ``listen_port`` is set would send their
    first handshake (keepalive) from that random port, and the remote side
    would roam to an address that dies a moment later. So peers go in only
    after the port is bound.
    """
    if not any(isinstance(op, CreateInterface) for op in ops):
        return (ops,)
    first = tuple(op for op in ops if not isinstance(op, AddPeer))
    rest = tuple(op for op in ops if isinstance(op, AddPeer))
    return (first, rest) if rest else (first,)


def _report(config: AgentConfig, fetch: FetchLike, report: Callable[[dict[str, Any]], Any] | None,
            manifest: Manifest, want: desired_mod.Desired, observed: ObservedInterface,
            listen_port: int, own: endpoints_mod.SelfEndpoints,
            warnings: list[str], local_ip: str | None,
            heard: dict[str, float] | None = None) -> None:
    # Reflections only of peers reached directly: what a LAN peer's WireGuard
    # sees is a private address, useless (and misleading) to everyone else.
    names = {p.public_key: p.name for p in want.peers if p.path == "direct"}
    body = endpoints_mod.build_report(
        manifest, config.name, observed, names_by_key=names, listen_port=listen_port,
        own=own,
        local=endpoints_mod.with_port(local_ip, listen_port),
        heard=heard,
    )
    try:
        if report is not None:
            report(body)
        else:
            assert config.feed_url is not None
            fetch.post_json(config.feed_url, body)
    except (FetchError, ConfigError) as exc:
        warnings.append(f"endpoint report not sent: {exc}")


def applied_summary(config: AgentConfig, manifest: Manifest,
                    want: desired_mod.Desired) -> dict[str, Any]:
    """What ``agent status`` reads back: no timestamps, so a no-op pass writes nothing."""
    return {
        "org": config.org,
        "device": config.name,
        "interface": config.interface,
        "serial": manifest.serial,
        "commit": manifest.commit,
        "not_after": manifest.not_after,
        "member": want.member,
        "relay": want.interface.forwarding,  # status checks the FORWARD chain for relays
        "addresses": list(want.interface.addresses),
        "listen_port": want.interface.listen_port,
        "peers": [
            {"name": p.name, "public_key": p.public_key, "tunnel_ips": list(p.tunnel_ips),
             "path": p.path, "via": p.via, "endpoint": p.endpoint}
            for p in want.peers
        ],
    }
