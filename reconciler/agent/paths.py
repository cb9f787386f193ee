"""Choose, per peer, the path and endpoint of this pass: the adapter to ``agent.peering``.

``decide(manifest, me, observed=..., feed=..., state=..., now=...) -> Decision``
turns the manifest (relay flags, static endpoints) and the endpoint feed
(candidates, NAT mapping, public IP) into ``peering.PeerInfo`` values, reads
the last handshakes off the observed interface, runs the pure
``peering.decide`` (direct / lan / relay, rendezvous relay choice,
hysteresis), and returns one ``agent.desired.PeerPath`` per device, this
device's primary relay, and the new hysteresis state to persist
(``peering.json``).

Static endpoints may be hostnames; UAPI ``endpoint=`` takes IP literals only,
so they are resolved here with the injected ``resolve``. Called by
``agent.reconcile`` and ``agent.render``.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from reconciler.agent import peering
from reconciler.agent.desired import PeerPath
from reconciler.agent.endpoints import SelfEndpoints
from reconciler.model.endpoints import Candidate, EndpointFeed, FeedEntry
from reconciler.model.manifest import Manifest, ManifestDevice
from reconciler.model.wg import ObservedInterface

Resolver = Callable[[str], str | None]


@dataclass(frozen=True)
class Decision:
    paths: Mapping[str, PeerPath]
    my_relay: str | None = None
    state: dict[str, Any] = field(default_factory=dict)
    # peers whose situation changed (one side moved) and that were not heard from
    # since: their endpoint is set even over a session WireGuard believes fresh
    repoint: frozenset[str] = frozenset()


def resolve_host(host: str) -> str | None:
    """First address of ``host`` (IPv4 preferred), or None when it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return None
    addrs = sorted({str(i[4][0]) for i in infos}, key=lambda a: (":" in a, a))
    return addrs[0] if addrs else None


def literal_endpoint(endpoint: str | None, resolve: Resolver = resolve_host) -> str | None:
    """``host:port`` -> ``ip:port`` (``[v6]:port``); None when it cannot be resolved."""
    if not endpoint:
        return None
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        resolved = resolve(host)
        if resolved is None:
            return None
        ip = ipaddress.ip_address(resolved)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def peer_info(dev: ManifestDevice, entry: FeedEntry | None, resolve: Resolver) -> \
        peering.PeerInfo:
    static = literal_endpoint(dev.endpoint, resolve)
    candidates = [Candidate("static", static)] if static else []
    if entry is not None:
        candidates.extend(c for c in entry.candidates if c.kind != "static")
    return peering.PeerInfo(
        name=dev.name,
        relay=dev.relay,
        public=static is not None,
        mapping=entry.mapping if entry is not None else peering.UNKNOWN,
        public_ip=entry.public_ip if entry is not None else None,
        candidates=tuple(candidates),
    )


def hysteresis_config(options: Mapping[str, Any] | None) -> peering.HysteresisConfig:
    """``AgentConfig.hysteresis`` (seconds, by field name) over the defaults."""
    known = {f.name for f in fields(peering.HysteresisConfig)}
    values = {k: float(v) for k, v in (options or {}).items() if k in known}
    return peering.HysteresisConfig(**values)


def decide(
    manifest: Manifest,
    me: str,
    *,
    observed: ObservedInterface,
    feed: EndpointFeed | None,
    state: Mapping[str, Any],
    now: float,
    resolve: Resolver = resolve_host,
    hysteresis: Mapping[str, Any] | None = None,
    own: SelfEndpoints | None = None,
) -> Decision:
    """One ``PeerPath`` per other device, this device's primary relay, and the
    peering state to keep."""
    mine = manifest.device(me)
    if mine is None:
        return Decision({}, None, dict(state))
    entries = {e.device: e for e in feed.entries} if feed else {}
    names_by_key = {d.wireguard_public_key: d.name for d in manifest.devices}
    state = dict(state)
    seen = last_seen(observed, names_by_key, state.pop(LIVENESS_KEY, {}), now)
    handshakes = {name: at for name, (_, at) in seen.items()}
    others = [peer_info(d, entries.get(d.name), resolve) for d in manifest.devices
              if d.name != me]
    relays = [d.name for d in manifest.devices if d.relay]
    me_info = peer_info(mine, entries.get(me), resolve)
    if own is not None and (own.candidates or own.mapping != peering.UNKNOWN):
        # this device's own, fresh discovery beats what the feed said last time
        extra = tuple(c for c in own.candidates if c not in me_info.candidates)
        me_info = replace(me_info, candidates=me_info.candidates + extra,
                          mapping=own.mapping if own.mapping != peering.UNKNOWN
                          else me_info.mapping,
                          public_ip=own.public_ip or me_info.public_ip)
    # A pair whose situation changed (either side's public IP or mapping: a
    # move) starts afresh: its hysteresis is forgotten, and handshakes from
    # before the change do not vouch for the new path.
    sits = {p.name: situation(me_info, p) for p in others}
    before = state.pop(SITUATION_KEY, {})
    changed_at = dict(state.pop(CHANGED_KEY, {}))
    changed = {name for name, sit in sits.items() if name in before and before[name] != sit}
    for name in changed:
        changed_at[name] = now
    for name, at in list(changed_at.items()):
        if name not in sits or handshakes.get(name, 0.0) > float(at):
            del changed_at[name]  # gone, or heard from since the change
        else:
            handshakes[name] = 0.0
    previous = peering.PeeringState.from_json(json.dumps(dict(state)) if state else None)
    previous = replace(previous, paths={k: v for k, v in previous.paths.items()
                                        if k not in changed})
    out = peering.decide(me_info, others, relays,
                         handshakes, now, previous, hysteresis_config(hysteresis))
    paths = {name: PeerPath(name, c.kind, c.endpoint, c.via)
             for name, c in sorted(out.paths.items())}
    kept = json.loads(out.state.to_json())
    kept[LIVENESS_KEY] = {name: [rx, at] for name, (rx, at) in sorted(seen.items())}
    kept[SITUATION_KEY] = {name: sit for name, sit in sorted(sits.items())}
    if changed_at:
        kept[CHANGED_KEY] = dict(sorted(changed_at.items()))
    # until the peer is heard from again, its endpoint follows the decision (a
    # reflection of the new address may arrive a pass or two after the move)
    repoint = frozenset(name for name in changed_at
                        if paths.get(name) is not None and paths[name].path != "relay")
    return Decision(paths, out.my_relay, kept, repoint)


SITUATION_KEY = "situation"
CHANGED_KEY = "changed_at"


def situation(me: peering.PeerInfo, peer: peering.PeerInfo) -> list[Any]:
    """What a pair's path rests on: both public IPs and NAT mappings. Endpoint
    ports are left out (reflections of one mapping may list them in any order)."""
    return [me.public_ip, me.mapping, peer.public_ip, peer.mapping]


LIVENESS_KEY = "liveness"


def last_seen(
    observed: ObservedInterface,
    names_by_key: Mapping[str, str],
    previous: Mapping[str, Any],
    now: float,
) -> dict[str, tuple[int, float]]:
    """When each peer was last heard from: ``(rx_bytes, unix time)``.

    A handshake happens only every two minutes (REKEY_AFTER_TIME) on a healthy
    session, so its age cannot tell a dead path within seconds. Persistent
    keepalives can: a live peer sends at least one packet per keepalive
    interval, so the rx counter moves. A peer is seen at the later of its last
    handshake and the last pass where its rx counter grew; the counters are
    kept in the peering state so one-shot runs see the progress too. A counter
    that went down (the interface was re-created) counts as progress.
    """
    seen: dict[str, tuple[int, float]] = {}
    for key, peer in observed.peers.items():
        name = names_by_key.get(key)
        if name is None:
            continue
        handshake = peer.last_handshake or 0.0
        before = previous.get(name)
        if before is None:
            at = handshake
        elif peer.rx_bytes != int(before[0]):
            at = now
        else:
            at = float(before[1])
        seen[name] = (peer.rx_bytes, max(at, handshake))
    return seen
