"""Choose, per peer, the path and endpoint of this pass: the adapter to ``agent.peering``.

``decide_paths(manifest, me, observed=..., feed=..., memory=..., now=...) -> PathDecision``
turns the manifest (relay flags, static endpoints) and the endpoint feed
(candidates, NAT mapping, public IP) into ``peering.PeerInfo`` values, reads
the last handshakes off the observed interface, runs the pure
``peering.decide`` (direct / lan / relay, rendezvous relay choice,
hysteresis), and returns one ``agent.desired.PeerPath`` per device, this
device's primary relay, the peers to re-point, and the new ``Memory``.

Pure: static endpoints that are host names were resolved by ``agent.gather``
(``resolved``: name -> address, None when it did not resolve); UAPI
``endpoint=`` takes IP literals only. Called by ``agent.decide``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from reconciler.agent import peering
from reconciler.agent.desired import PeerPath
from reconciler.agent.endpoints import SelfEndpoints
from reconciler.agent.memory import Heard, Memory, Situation
from reconciler.model.endpoint import Endpoint, is_canonical_v4_endpoint, parse_or_none
from reconciler.model.endpoints import Candidate, EndpointFeed, FeedEntry
from reconciler.model.manifest import Manifest, ManifestDevice
from reconciler.model.wg import ObservedInterface
from reconciler.structs import Record, field_names, replace

Resolved = Mapping[str, str | None]  # static endpoint host name -> IP literal (or None)


class PathDecision(Record):
    paths: Mapping[str, PeerPath]
    my_relay: str | None
    memory: Memory
    # peers whose situation changed (one side moved) and that were not heard from
    # since: their endpoint is set even over a session WireGuard believes fresh
    repoint: frozenset[str] = frozenset()


def literal_endpoint(endpoint: str | None, resolved: Resolved) -> str | None:
    """A static endpoint as ``ip:port`` (``[v6]:port``); host names through
    ``resolved``; None when it cannot be used."""
    if is_canonical_v4_endpoint(endpoint):
        return endpoint
    parsed = parse_or_none(endpoint, allow_names=True)
    if parsed is None:
        return None
    if parsed.is_literal:
        return str(parsed)
    address = resolved.get(parsed.host)
    return str(Endpoint.of(address, parsed.port)) if address else None


def peer_info(dev: ManifestDevice, entry: FeedEntry | None, resolved: Resolved) -> \
        peering.PeerInfo:
    static = literal_endpoint(dev.endpoint, resolved) if dev.endpoint else None
    if entry is None:  # 10,000 a pass; fields in order: name ... candidates
        return peering.PeerInfo(dev.name, dev.relay, static is not None, peering.UNKNOWN, None,
                                (Candidate("static", static),) if static else ())
    candidates = [Candidate("static", static)] if static else []
    candidates.extend(c for c in entry.candidates if c.kind != "static")
    return peering.PeerInfo(dev.name, dev.relay, static is not None, entry.mapping,
                            entry.public_ip, tuple(candidates))


def hysteresis_config(options: Mapping[str, Any] | None) -> peering.HysteresisConfig:
    """``AgentConfig.hysteresis`` (seconds, by field name) over the defaults."""
    known = set(field_names(peering.HysteresisConfig))
    values = {k: float(v) for k, v in (options or {}).items() if k in known}
    return peering.HysteresisConfig(**values)


def decide_paths(
    manifest: Manifest,
    me: str,
    *,
    observed: ObservedInterface,
    feed: EndpointFeed | None,
    memory: Memory,
    now: float,
    resolved: Resolved | None = None,
    hysteresis: Mapping[str, Any] | None = None,
    own: SelfEndpoints | None = None,
) -> PathDecision:
    """One ``PeerPath`` per other device, this device's primary relay, the
    peers to re-point, and the memory to keep."""
    resolved = resolved or {}
    mine = manifest.device(me)
    if mine is None:
        return PathDecision({}, None, memory)
    entries = {e.device: e for e in feed.entries} if feed else {}
    entry_of = entries.get
    names_by_key: dict[str, str] = {}
    others: list[peering.PeerInfo] = []
    relays: list[str] = []
    for d in manifest.devices:  # one walk over the 10,000 devices
        names_by_key[d.wireguard_public_key] = d.name
        if d.relay:
            relays.append(d.name)
        if d.name != me:
            others.append(peer_info(d, entry_of(d.name), resolved))
    heard = last_seen(observed, names_by_key, memory.heard, now)
    handshakes = {name: h.at for name, h in heard.items()}
    me_info = peer_info(mine, entry_of(me), resolved)
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
    my_ip, my_mapping = me_info.public_ip, me_info.mapping  # situation(), inline
    sits = {p.name: (my_ip, my_mapping, p.public_ip, p.mapping) for p in others}
    changed = {name for name, sit in sits.items()
               if name in memory.situations and memory.situations[name] != sit}
    changed_at = {**memory.changed_at, **{name: now for name in changed}}
    for name, at in list(changed_at.items()):
        if name not in sits or handshakes.get(name, 0.0) > at:
            del changed_at[name]  # gone, or heard from since the change
        else:
            handshakes[name] = 0.0
    previous = replace(memory.peering, paths={k: v for k, v in memory.peering.paths.items()
                                              if k not in changed}) \
        if changed else memory.peering
    # A peer heard last pass and not on the interface under its key now (its key
    # rotated, or the interface was re-created) gets a new entry this pass: a new
    # direct attempt, not a failed one. Only that transition restarts the grace
    # period, so a peer that is never on the interface does not rewrite the memory.
    missing = memory.heard.keys() - heard.keys()
    if missing:
        previous = restarted(previous, missing, now)
    out = peering.decide(me_info, others, relays, handshakes, now, previous,
                         hysteresis_config(hysteresis))
    paths = {name: PeerPath(name, c.kind, c.endpoint, c.via)
             for name, c in sorted(out.paths.items())}
    # until the peer is heard from again, its endpoint follows the decision (a
    # reflection of the new address may arrive a pass or two after the move)
    repoint = frozenset(name for name in changed_at
                        if paths.get(name) is not None and paths[name].path != "relay")
    return PathDecision(paths, out.my_relay, Memory(out.state, heard, sits, changed_at), repoint)


def restarted(state: peering.PeeringState, names: Iterable[str], now: float
              ) -> peering.PeeringState:
    """``state`` with the direct attempts and relay grace periods of ``names`` begun
    at ``now``: their entries are new, so silence so far says nothing about them.
    A peer held on the relay stays there (its retry is scheduled) and a relay that
    is down stays down."""
    paths = dict(state.paths)
    relays = dict(state.relays)
    for name in names:
        path = paths.get(name)
        if path is not None and path.mode == peering.DIRECT:
            paths[name] = replace(path, since=now)
        relay = relays.get(name)
        if relay is not None and not relay.down_until > now:
            relays[name] = replace(relay, since=now)
    return peering.PeeringState(paths, relays)


def situation(me: peering.PeerInfo, peer: peering.PeerInfo) -> Situation:
    """What a pair's path rests on: both public IPs and NAT mappings. Endpoint
    ports are left out (reflections of one mapping may list them in any order)."""
    return (me.public_ip, me.mapping, peer.public_ip, peer.mapping)


def last_seen(
    observed: ObservedInterface,
    names_by_key: Mapping[str, str],
    previous: Mapping[str, Heard],
    now: float,
) -> dict[str, Heard]:
    """When each peer was last heard from: ``Heard(rx_bytes, unix time)``.

    A handshake happens only every two minutes (REKEY_AFTER_TIME) on a healthy
    session, so its age cannot tell a dead path within seconds. Persistent
    keepalives can: a live peer sends at least one packet per keepalive
    interval, so the rx counter moves. A peer is seen at the later of its last
    handshake and the last pass where its rx counter grew; the counters are
    kept in the memory so one-shot runs see the progress too. A counter
    that went down (the interface was re-created) counts as progress.
    """
    seen: dict[str, Heard] = {}
    name_of, before_of = names_by_key.get, previous.get
    for key, peer in observed.peers.items():
        name = name_of(key)
        if name is None:
            continue
        handshake = peer.last_handshake or 0.0
        before = before_of(name)
        if before is None:
            at = handshake
        elif peer.rx_bytes != before.rx_bytes:
            at = now
        else:
            at = before.at
        seen[name] = Heard(peer.rx_bytes, max(at, handshake))
    return seen
