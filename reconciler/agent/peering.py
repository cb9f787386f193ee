"""PURE peering decisions: direct, LAN or relayed path per peer; relay choice; hysteresis.

Called by the agent's reconcile pass (``reconciler.agent``) after it has the
verified manifest and the endpoint feed, before it builds the desired interface.
Stdlib and ``reconciler.model`` only; no clock, no I/O: ``now`` and handshake times
come in as arguments, and the state goes out as a ``PeeringState`` value that
``agent.memory`` persists between one-shot runs. docs/nat-traversal.md explains the rules with examples.

The static rule (``choose_path``), symmetric in its two sides:

1. either side is a relay or public (static endpoint, no NAT)      -> direct
2. both sides show the same public IP (same site)                  -> lan
3. either side has endpoint-dependent ("symmetric") mapping        -> relay
4. otherwise (cone/unknown on both sides)                          -> direct
   Both sides send to each other's STUN endpoint with keepalives: the first packets
   open each NAT's mapping for the other (simultaneous open, no server help).
   "unknown" is tried direct; the hysteresis falls back to the relay if it fails.

Relayed traffic to a peer P goes through P's primary relay: each device holds the
org CIDR as a catch-all on its own primary relay (so it accepts relayed traffic from
anyone through it) and each relayed peer's /32 on that peer's relay. Both directions
of a pair then agree without coordination. Relays are picked by rendezvous (HRW)
hashing, so adding or removing one relay moves only the devices that hashed to it.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Collection, Mapping, Sequence
from operator import attrgetter

from reconciler.model.endpoint import host_of
from reconciler.model.endpoints import Candidate
from reconciler.structs import Record, field, replace

DIRECT, LAN, RELAY = "direct", "lan", "relay"
INDEPENDENT, DEPENDENT, UNKNOWN = "independent", "dependent", "unknown"
# Which candidate kinds name a device's public endpoint, best first: the manifest's
# static endpoint, then what relays/the hub saw on live WireGuard sessions, then STUN.
PUBLIC_KINDS = ("static", "reflected", "observed", "stun")


class PeerInfo(Record):
    """One side of a pair, as the manifest and the endpoint feed describe it."""

    name: str
    relay: bool = False
    public: bool = False  # has a static endpoint and sits behind no NAT
    mapping: str = UNKNOWN  # independent | dependent | unknown
    public_ip: str | None = None
    candidates: tuple[Candidate, ...] = ()


class PathChoice(Record):
    kind: str  # direct | lan | relay
    endpoint: str | None  # where to send to this peer (direct/lan); None = learn by roaming
    via: str | None  # the relay device for kind "relay"; None if no relay is available


# -- the static rule ---------------------------------------------------------


def _first(candidates: Sequence[Candidate], kinds: Sequence[str]) -> str | None:
    for kind in kinds:
        for c in candidates:
            if c.kind == kind:
                return c.address
    return None


def _lan_endpoint(me: PeerInfo, peer: PeerInfo) -> str | None:
    """The peer's LAN candidate sharing the longest prefix with one of mine."""
    mine = [ipaddress.ip_address(host_of(c.address)) for c in me.candidates if c.kind == "local"]
    best: tuple[int, int, str] | None = None
    for order, c in enumerate(x for x in peer.candidates if x.kind == "local"):
        theirs = ipaddress.ip_address(host_of(c.address))
        common = 0
        for own in mine:
            if own.version == theirs.version:
                diff = int(own) ^ int(theirs)
                common = max(common, own.max_prefixlen - diff.bit_length())
        key = (-common, order, c.address)
        if best is None or key < best:
            best = key
    return best[2] if best else None


def _has_local(info: PeerInfo) -> bool:
    return any(c.kind == "local" for c in info.candidates)


def path_kind(me: PeerInfo, peer: PeerInfo) -> str:
    """The rule alone: direct, lan or relay. Symmetric: ``path_kind(a, b) == path_kind(b, a)``."""
    if me.relay or peer.relay or me.public or peer.public:
        return DIRECT
    if me.public_ip is not None and me.public_ip == peer.public_ip:
        # Same site: hairpinning through the NAT is unreliable, the LAN is not.
        return LAN if _has_local(me) or _has_local(peer) else RELAY
    if me.mapping == DEPENDENT or peer.mapping == DEPENDENT:
        return RELAY
    return DIRECT


def choose_path(me: PeerInfo, peer: PeerInfo, relays: Sequence[str] = (),
                down: Collection[str] = frozenset()) -> PathChoice:
    """Kind, endpoint and relay for ``peer`` as seen from ``me``."""
    kind = path_kind(me, peer)
    if kind == DIRECT:
        return PathChoice(DIRECT, _first(peer.candidates, PUBLIC_KINDS), None)  # the hot path
    if kind == LAN:
        return PathChoice(LAN, _lan_endpoint(me, peer), None)
    return PathChoice(RELAY, None, choose_relay(pair_key(me.name, peer.name), relays, down))


# -- rendezvous hashing --------------------------------------------------------


def _score(device: str, relay: str) -> bytes:
    return hashlib.sha256(f"{device}\0{relay}".encode()).digest()


def pair_key(a: str, b: str) -> str:
    """The rendezvous key of a relayed pair. Both ends must put each other's
    prefixes on the SAME relay: WireGuard checks a packet's source against the
    allowed-ips of the peer it arrived from, so if a->c went through c's relay
    and c->a through a's, each side would drop the other's traffic."""
    return "\0".join(sorted((a, b)))


def relay_order(device: str, relays: Sequence[str]) -> tuple[str, ...]:
    """All relays, best first, for ``device`` (highest random weight first)."""
    return tuple(sorted(set(relays), key=lambda r: (_score(device, r), r), reverse=True))


def choose_relay(device: str, relays: Sequence[str],
                 down: Collection[str] = frozenset()) -> str | None:
    """``device``'s primary relay, skipping those in ``down``. When every relay is
    down the best one is still returned (a doubtful path beats none); None only
    when there is no relay at all."""
    order = relay_order(device, [r for r in relays if r != device])
    for relay in order:
        if relay not in down:
            return relay
    return order[0] if order else None


# -- hysteresis ------------------------------------------------------------------


class HysteresisConfig(Record):
    """Timers, in seconds. Defaults suit WireGuard's own timers; the lab shortens them.

    ``stale_after`` is 180 s, WireGuard's REJECT_AFTER_TIME: an idle but healthy
    session with a 25 s keepalive re-handshakes every 120-150 s (REKEY_AFTER_TIME plus
    up to one keepalive interval plus REKEY_TIMEOUT retries), so a tighter value such
    as 135 s would flap; past 180 s WireGuard itself refuses the old keys, so the
    session is certainly gone.
    """

    stale_after: float = 180.0
    establish_timeout: float = 30.0  # a new direct attempt must handshake within this
    retry_initial: float = 120.0  # first wait before trying direct again
    retry_max: float = 1920.0  # the wait doubles up to this
    stable_after: float = 600.0  # direct healthy this long forgets past failures


DEFAULT_HYSTERESIS = HysteresisConfig()


class PathState(Record):
    mode: str  # direct | relay (what the hysteresis currently allows)
    since: float  # when this mode was entered
    failures: int = 0  # consecutive failed direct attempts
    retry_at: float = 0.0  # mode relay: when to try direct again


class RelayState(Record):
    since: float  # when this relay became the one in use
    failures: int = 0
    down_until: float = 0.0  # skipped by choose_relay until then


class PeeringState(Record):
    """Everything the hysteresis remembers (persisted by ``agent.memory``)."""

    paths: Mapping[str, PathState] = field(default_factory=dict)
    relays: Mapping[str, RelayState] = field(default_factory=dict)


def _backoff(failures: int, cfg: HysteresisConfig) -> float:
    return min(cfg.retry_initial * (2 ** max(failures - 1, 0)), cfg.retry_max)


def step_path(state: PathState | None, last_handshake: float, now: float,
              cfg: HysteresisConfig = DEFAULT_HYSTERESIS) -> PathState:
    """Advance one peer's direct/relay hysteresis. ``last_handshake`` is unix seconds
    (0 = never) of the latest handshake on the *direct* WireGuard peer."""
    if state is None:
        return PathState(DIRECT, now)
    fresh = last_handshake > 0 and now - last_handshake <= cfg.stale_after
    if state.mode == DIRECT:
        if fresh:
            if state.failures and now - state.since >= cfg.stable_after:
                return replace(state, failures=0)
            return state
        if now - state.since < cfg.establish_timeout:
            return state  # still within the grace period of this attempt
        failures = state.failures + 1
        return PathState(RELAY, now, failures, now + _backoff(failures, cfg))
    # mode relay: the direct session came back by itself (the peer retried) ...
    if last_handshake > state.since and fresh:
        return PathState(DIRECT, now, state.failures)
    # ... or it is time to try again.
    if now >= state.retry_at:
        return PathState(DIRECT, now, state.failures)
    return state


def step_relay(state: RelayState | None, last_handshake: float, now: float,
               cfg: HysteresisConfig = DEFAULT_HYSTERESIS) -> RelayState:
    """Advance one relay's health: it goes down when its handshake goes stale."""
    if state is None:
        return RelayState(now)
    if state.down_until > now:
        return state
    if state.down_until:  # its down time is over: give it a new chance
        return RelayState(now, state.failures)
    if last_handshake > 0 and now - last_handshake <= cfg.stale_after:
        return replace(state, failures=0) if state.failures else state
    if now - state.since < cfg.establish_timeout:
        return state
    failures = state.failures + 1
    return RelayState(state.since, failures, now + _backoff(failures, cfg))


class Decision(Record):
    paths: Mapping[str, PathChoice]  # peer name -> path
    my_relay: str | None  # where this device's org-CIDR catch-all goes
    state: PeeringState


def decide(
    me: PeerInfo,
    peers: Sequence[PeerInfo],
    relays: Sequence[str],
    handshakes: Mapping[str, float],
    now: float,
    state: PeeringState | None = None,
    cfg: HysteresisConfig = DEFAULT_HYSTERESIS,
) -> Decision:
    """One reconcile pass: the static rule, then the hysteresis on top of it.

    ``relays`` names every relay device of the org; ``handshakes`` maps a peer or
    relay name to its last handshake (unix seconds, 0/missing = never).
    """
    state = state or PeeringState()
    relay_states: dict[str, RelayState] = {}
    for relay in relays:
        if relay != me.name:
            relay_states[relay] = step_relay(state.relays.get(relay),
                                             handshakes.get(relay, 0.0), now, cfg)
    down = frozenset(r for r, s in relay_states.items() if s.down_until > now)
    path_states: dict[str, PathState] = {}
    out: dict[str, PathChoice] = {}
    state_of, handshake_of = state.paths.get, handshakes.get
    # without relays (or all of them down the same way) each relayed pair's
    # relay is computed once per key; with none at all it is None
    relay_of = (lambda _key: None) if not relays else \
        (lambda key: choose_relay(key, relays, down))
    for peer in sorted(peers, key=attrgetter("name")):  # 10,000 times a pass
        name = peer.name
        choice = choose_path(me, peer, relays, down)
        if choice.kind != RELAY and not (me.relay or peer.relay):
            path = step_path(state_of(name), handshake_of(name, 0.0), now, cfg)
            path_states[name] = path
            if path.mode == RELAY:
                choice = PathChoice(RELAY, choice.endpoint, relay_of(pair_key(me.name, name)))
        out[name] = choice
    my_relay = None if me.relay else choose_relay(me.name, relays, down)
    return Decision(out, my_relay, PeeringState(path_states, relay_states))
