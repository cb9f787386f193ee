"""Step one of a pass: read everything the decision needs, once.

``gather(config, effects, now, wait=...) -> Inputs`` is called by
``agent.reconcile.reconcile_once`` (and ``agent.loop`` through it). It reads,
in this order, and nothing twice:

1. the pinned trust (and the org's trust root, walked in band when the
   manifest says a newer one exists or a rotation explains a refusal:
   ``agent.source.manifest_and_trust``) and this device's own endpoints
   (``discovery.json``);
2. the source address towards the hub (``effects.local_ip``): another one
   than discovery ran from means the device moved, and the fetcher's TLS
   state is dropped (its connections died with the old network) and the
   long-poll skipped;
3. the verified manifest and its source, with the hub credentials it needs
   (``agent.source.manifest_with_cert``);
4. the state dir's memory (``peering.json``) and last feed, then the endpoint
   feed (a pass on the cached manifest keeps the last one);
5. the local private key, the observed interface (``effects.backend``), the
   ``inet meshops`` table (``effects.firewall``) and the exit-node policy
   routing (``effects.routing``): these host reads start in threads
   (``reconciler.background``) as soon as the manifest is verified, and
   overlap the memory, feed and key reads (at 10,000 peers wireguard-go takes a while to answer);
6. STUN discovery against the config's servers, else the signed manifest's
   (mesh.yaml ``stun_servers``, ``agent.meshconfig``), only while the listen
   port is free (no interface yet), after a move, or when others see this
   device at a public IP discovery does not know (once per such IP);
7. addresses of static endpoints written as host names (``effects.resolve``).

``Inputs`` (``agent.inputs``) is plain data; ``agent.decide`` turns it into operations without
further I/O. Errors: ``ManifestRefused`` (nothing touched), ``FetchError``
(no usable manifest), ``ConfigError`` (trust, key or config), backend errors.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from reconciler.agent import endpoints as endpoints_mod
from reconciler.agent.config import AgentConfig, read_private_key
from reconciler.agent.endpoints import SelfEndpoints
from reconciler.agent.fetch import FetchLike, route_source
from reconciler.agent.inputs import Inputs, VerifiedManifest
from reconciler.agent.memory import Memory
from reconciler.agent.meshconfig import effective_endpoints
from reconciler.agent.rotate import next_key_path
from reconciler.agent.source import fetch_feed, manifest_and_trust
from reconciler.agent.state import FEED, PEERING, StateDir
from reconciler.backends.base import Backend
from reconciler.background import Background
from reconciler.converge import Operation, public_key
from reconciler.errors import ConfigError, FetchError
from reconciler.model.endpoint import Endpoint, is_canonical_v4_endpoint, parse_or_none
from reconciler.model.endpoints import EndpointFeed
from reconciler.model.firewall import Ruleset
from reconciler.model.manifest import Manifest
from reconciler.model.routing import EXIT_TABLE, PolicyRouting
from reconciler.model.wg import ObservedInterface
from reconciler.pki.envelope import Trust
from reconciler.structs import Record, replace

Discover = Callable[[int, Sequence[str]], Any]  # (listen port, servers) -> Discovery


class Firewall(Protocol):
    """The host firewall (``net.nftables.Nftables``): one table, replaced whole."""

    def observe(self) -> Ruleset: ...

    def apply(self, ruleset: Ruleset) -> None: ...


class Routing(Protocol):
    """Policy routing for the exit-node client (``net.iproute.IPRouteLinks``)."""

    def observe_routing(self, table: int, fwmark: int = 0) -> PolicyRouting: ...

    def apply(self, ops: Sequence[Operation]) -> None: ...


class Effects(Record):
    """Everything a pass does to the world, injected (tests pass fakes)."""

    fetch: FetchLike
    backend: Backend
    discover: Discover | None = None  # STUN from the WireGuard port
    report: Callable[[dict[str, Any]], Any] | None = None  # default: POST to the feed URL
    local_ip: Callable[[], str | None] | None = None  # default: a routing-table lookup
    resolve: Callable[[str], str | None] | None = None  # default: getaddrinfo
    firewall: Firewall | None = None  # None: the firewall is not managed (unit tests)
    public_fetch: FetchLike | None = None  # no TLS verification: trust roots only
    routing: Routing | None = None  # None: exit-node routing is not managed


def gather(config: AgentConfig, effects: Effects, now: float, *,
           wait: int | None = None) -> Inputs:
    state = StateDir(config.state_dir)
    warnings: list[str] = []
    own = SelfEndpoints.from_dict(state.load_discovery())
    here = (effects.local_ip or (lambda: hub_local_ip(config)))() if config.hub else None
    moved = own.moved_from(here)
    if moved:
        wait = None  # a long-poll now would only delay the new endpoints' report
        effects.fetch.reset_tls()
    got, trust = manifest_and_trust(config, effects.fetch, effects.public_fetch, state, now,
                                    wait=wait, warnings=warnings)
    # The host reads (step 5) wait on wireguard-go (a 10,000-peer get=1 reply
    # is megabytes), ip and nft: they start now, in a thread, and overlap the
    # memory, feed and key reads. Now: after any long-poll (fresh), and after
    # the manifest verified (a refused one leaves the interface unasked).
    early = Background(observe_host, config, effects, name="meshops-observe")
    try:
        return _gather_rest(config, effects, state, warnings, own, here, moved, got, trust,
                            early)
    finally:
        early.join()


def _gather_rest(config: AgentConfig, effects: Effects, state: StateDir, warnings: list[str],
                 own: SelfEndpoints, here: str | None, moved: bool, got: VerifiedManifest,
                 trust: Trust, early: Background) -> Inputs:
    read_first: list[str] = []  # the state files' warnings come first, as read first
    memory, last_feed, memory_stored = read_memory_and_feed(state, read_first)
    warnings[:0] = read_first
    if got.warning:
        warnings.append(got.warning)
    if got.view is not None:  # a per-device view carries its peers' feed entries
        feed = got.feed
    else:
        feed = last_feed if got.source == "cache" else \
            fetch_feed(config, effects.fetch, trust, last_feed, warnings)
    private_key, key_switch = choose_private_key(config.private_key, got.manifest, config.name)
    resolved = resolve_static(got.manifest, effects.resolve or resolve_host)  # may wait on DNS
    observed, firewall, routing = early.result()
    listen_port = config.listen_port or got.manifest.listen_port
    servers = effective_endpoints(config.hub, config.stun_servers, got.manifest).stun_servers
    stun = effects.discover
    own = discover_own(config.name, own,
                       (lambda port: stun(port, servers)) if stun and servers else None,
                       observed, feed, listen_port, here, moved, warnings)
    warnings.extend(state.warnings)  # corrupt state files, each named
    return Inputs(
        me=config.name, org=config.org, interface=config.interface, listen_port=listen_port,
        hysteresis=dict(config.hysteresis or {}), hub=bool(config.hub),
        manifest=got.manifest, source=got, feed=feed, observed=observed, memory=memory,
        own=own, private_key=private_key, here=here, moved=moved,
        was_member=observed.exists or bool((state.load_applied() or {}).get("member")),
        resolved=resolved,
        firewall=firewall, routing=routing, key_switch=key_switch,
        bypass=bypass_addresses(config.hub, servers),
        warnings=tuple(warnings), memory_stored=memory_stored,
        feed_stored=feed is not None and feed is last_feed,
    )


def observe_host(config: AgentConfig, effects: Effects
                 ) -> tuple[ObservedInterface, Ruleset | None, PolicyRouting | None]:
    """The interface (``effects.backend``), the ``inet meshops`` table and the
    exit-node policy routing, as they are now (read only). The table and the
    routing are read in threads of their own, side by side with the interface:
    each read mostly waits on another process (``nft``, ``ip``, wireguard-go)."""
    firewall = Background(effects.firewall.observe) if effects.firewall is not None else None
    routing = Background(effects.routing.observe_routing, EXIT_TABLE) \
        if effects.routing is not None else None
    try:
        observed = effects.backend.observe(config.interface)
    finally:
        for early in (firewall, routing):
            if early is not None:
                early.join()
    return (observed, firewall.result() if firewall is not None else None,
            routing.result() if routing is not None else None)


def read_memory_and_feed(state: StateDir, warnings: list[str]
                         ) -> tuple[Memory, EndpointFeed | None, bool]:
    """``peering.json`` and ``feed.json`` through their typed readers (the state
    dir checks only their size and nesting: at 10,000 peers a generic schema
    walk costs half a second); a file they refuse counts as absent, named in a
    warning. ``peering.json`` is read straight into ``Memory``
    (``Memory.decode``); only when that fails is it parsed again, to say why."""
    data = state.load_peering_bytes()
    memory = Memory.decode(data) if data is not None else None
    raw_memory: dict[str, Any] | None = None
    if data is not None and memory is None:  # corrupt (the state dir says so) or mistyped
        raw_memory = state.load_peering()
        memory = Memory.parse(raw_memory) if raw_memory else None
    raw_feed = state.load_feed()
    feed = endpoints_mod.feed_from_dict(raw_feed) if raw_feed else None
    for name, raw, parsed in ((PEERING, raw_memory, memory), (FEED, raw_feed, feed)):
        if raw and parsed is None:
            warnings.append(f"{state.path / name}: wrong types; treated as absent (the "
                            "next pass rewrites it)")
    return memory or Memory(), feed, memory is not None


def discover_own(me: str, own: SelfEndpoints, discover: Callable[[int], Any] | None,
                 observed: ObservedInterface, feed: EndpointFeed | None, listen_port: int,
                 here: str | None, moved: bool, warnings: list[str]) -> SelfEndpoints:
    """This device's own endpoints: STUN discovery from the WireGuard port while
    it is still free (interface absent), re-checked (from a spare port) at once
    after a move or when the hub or a peer saw this device at a public IP
    discovery does not know (each such IP triggers one re-check). ``here`` is
    remembered for move detection."""
    if discover is None:
        return replace(own, local_ip=here) if here is not None else own
    entry = next((e for e in feed.entries if e.device == me), None) if feed else None
    foreign = endpoints_mod.foreign_ips(entry, own)
    suspicious = bool(set(foreign) - set(own.checked))
    if observed.exists and not moved and not suspicious:
        return own
    if moved:  # the old STUN endpoints belong to the NAT this device left
        own = replace(own, candidates=(), public_ip=None, checked=())
    try:
        found = endpoints_mod.from_discovery(discover(listen_port), own)
    except (FetchError, ConfigError) as exc:
        warnings.append(f"STUN discovery failed: {exc}")
        return own  # local_ip unchanged: a moved device retries next pass
    return replace(found, local_ip=here or found.local_ip,
                   checked=endpoints_mod.foreign_ips(entry, found))


def choose_private_key(path: str, manifest: Manifest, me: str) -> tuple[str, bool]:
    """The WireGuard private key this pass uses, and whether it is a switch.

    After ``meshops agent rotate-key`` the new key waits in ``PATH.next`` while
    the hub commits its public half to git; the old key stays in use until the
    manifest carries the new public key, and then the pass switches in one go
    (``agent.commit`` renames the pending file over the key once converged)."""
    current = read_private_key(path)
    pending_path = next_key_path(path)
    if not os.path.exists(pending_path):
        return current, False
    pending = read_private_key(pending_path)
    mine = manifest.device(me)
    if mine is not None and mine.wireguard_public_key == public_key(pending):
        return pending, True
    return current, False


def bypass_addresses(hub: str | None, stun_servers: Sequence[str]) -> tuple[str, ...]:
    """The hub's and the STUN servers' addresses (IP literals only; names are
    not resolved here), which keep the host's own routes when an exit node
    takes the default route: the hub connection and STUN must not loop."""
    out = []
    netloc = (hub or "").split("://", 1)[-1].split("/", 1)[0]
    for text in (netloc if ":" in netloc.rpartition("]")[2] else f"{netloc}:443", *stun_servers):
        parsed = parse_or_none(text)
        if parsed is not None and parsed.ip is not None:
            out.append(f"{parsed.ip}/{parsed.ip.max_prefixlen}")
    return tuple(sorted(set(out)))


def hub_local_ip(config: AgentConfig) -> str | None:
    """The source address the routing table picks towards the hub (a LAN candidate)."""
    netloc = (config.hub or "").split("://", 1)[-1].split("/", 1)[0]
    parsed = parse_or_none(netloc if ":" in netloc.rpartition("]")[2] else f"{netloc}:443",
                           allow_names=True)
    return route_source(parsed.host, parsed.port) if parsed else None


def resolve_host(host: str) -> str | None:
    """First address of ``host`` (IPv4 preferred), or None when it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return None
    addrs = sorted({str(i[4][0]) for i in infos}, key=lambda a: (":" in a, a))
    return addrs[0] if addrs else None


def resolve_static(manifest: Manifest, resolve: Callable[[str], str | None]) \
        -> dict[str, str | None]:
    """Host name -> address for every static endpoint written as a name."""
    out: dict[str, str | None] = {}
    for dev in manifest.devices:
        if not dev.endpoint or is_canonical_v4_endpoint(dev.endpoint):
            continue  # nothing to resolve (the common case, without parsing)
        parsed = parse_or_none(dev.endpoint, allow_names=True)
        if parsed is not None and not parsed.is_literal and parsed.host not in out:
            address = resolve(parsed.host)
            out[parsed.host] = address if _usable(address) else None
    return out


def _usable(address: str | None) -> bool:
    try:
        ip = Endpoint.of(address or "", 1).ip
    except ValueError:
        return False
    return ip is not None and not ip.is_unspecified
