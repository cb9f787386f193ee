"""Who may claim which endpoint, and which addresses may be claimed at all (pure).

A *claim* is anything that ends up in the signed endpoint feed as a place to
send WireGuard traffic to. Called by ``reconciler.hub.api`` (a report's
candidates and observations, before anything is stored), by
``reconciler.hub.feedstore`` (what counts as a change of the feed) and by
``reconciler.hub.feed`` (what still holds when a feed is built). The rules
(docs/security.md "Endpoint claims", docs/nat-traversal.md "Ranking"):

* **Own endpoints** (a report's ``candidates``): only the device named in the
  client certificate reports them (``api.post_endpoints`` refuses any other
  ``device`` with 403). They stop counting when the device leaves the
  manifest or its certificate is revoked, and after ``REPORT_TTL``.
* **Reflections** (a report's ``observations``: where the reporter's WireGuard
  sees *another* device) are taken only from relays of the current snapshot.
  Everyone else's are dropped and counted in the answer (``not-a-relay``). The
  hub stamps a kept reflection with its own receipt time; the reporter's
  ``last_handshake`` can only make it *staler* (one older than
  ``REFLECTION_TTL`` by the hub's clock is dropped, ``stale``), never fresher,
  so a clock ten years ahead buys nothing. A reflection expires
  ``REFLECTION_TTL`` after the last report that carried it; a relay's report
  replaces its previous reflections; all of a reporter's reflections go as
  soon as it is no longer a relay of the served snapshot (removed, disabled,
  demoted) or its certificate is revoked.
* **The hub's own view** of a report is the source address of the report's
  connection: the entry's ``public_ip``, stamped by the hub.
* **Ranking**: an own report younger than ``OWN_FRESH`` that names a public
  candidate (``PUBLIC_KINDS``) is the whole truth about its device: no
  reflection is added to that entry. Otherwise (no report, an old one, or one
  with LAN candidates only) at most ``MAX_REFLECTIONS`` reflections follow the
  own candidates, newest address first.
* **Addresses**: ``check_address`` parses with ``Endpoint`` (no names, no zone
  id, port 1-65535), applies ``is_routable_unicast`` (global or private
  unicast only) and refuses the hub's own addresses. A refusal is a
  ``ClaimRefused`` carrying a short ``reason``, the field and the value.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import lru_cache

from reconciler.model.endpoint import Endpoint, EndpointError, IPAddress, unroutable_reason
from reconciler.model.endpoints import Candidate, EndpointReport

REFLECTION_TTL = 180  # s after the hub last received it (WireGuard's REJECT_AFTER_TIME)
REPORT_TTL = 24 * 3600  # an own report older than this is dropped from the feed
OWN_FRESH = 120  # s: an own report this young outranks every reflection (4 agent intervals)
MAX_REFLECTIONS = 8  # reflected candidates per device in the feed
MAX_ADDRESS = 64  # the longest "ip:port" accepted (the longest valid one has 53 characters)
PUBLIC_KINDS = frozenset({"static", "stun", "observed", "reflected"})


class ClaimRefused(Exception):
    """A candidate or observation that must not be signed into the feed."""

    def __init__(self, reason: str, field: str, value: object, message: str) -> None:
        super().__init__(message)
        self.reason, self.field, self.message = reason, field, message
        self.value = value if isinstance(value, str) and len(value) <= MAX_ADDRESS else None


@dataclass(frozen=True)
class Observation:
    """One reflection as reported: ``reporter``'s WireGuard saw ``peer`` at
    ``endpoint``; ``last_handshake`` is the reporter's clock."""

    peer: str
    endpoint: str
    last_handshake: int


@dataclass(frozen=True)
class Authority:
    """What the served snapshot says about an org's devices."""

    devices: frozenset[str]  # enabled devices in the manifest
    relays: frozenset[str]  # those with ``relay: true``
    revoked: frozenset[int]  # revoked certificate serials


def check_address(value: object, field: str, hub_addresses: Collection[IPAddress] = ()
                  ) -> Endpoint:
    """``value`` as an ``Endpoint`` a peer may be pointed at; ``ClaimRefused`` with
    the reason (``malformed``, ``zone-id``, ``bad-port``, ``unspecified``,
    ``loopback``, ``link-local``, ``multicast``, ``broadcast``, ``reserved``,
    ``hub-address``) otherwise."""
    if not isinstance(value, str) or len(value) > MAX_ADDRESS or not value.isascii():
        raise ClaimRefused("malformed", field, value,
                           f"{field} must be an \"ip:port\" string of at most {MAX_ADDRESS} "
                           "ASCII characters")
    try:
        endpoint = Endpoint.parse(value)
    except EndpointError as exc:
        reason = {"zone-id": "zone-id", "port": "bad-port"}.get(exc.reason, "malformed")
        raise ClaimRefused(reason, field, value, f"{field}: {exc}") from None
    ip = endpoint.ip
    assert ip is not None  # no allow_names: always a literal
    why = unroutable_reason(ip)
    if why is not None:
        raise ClaimRefused(why, field, value,
                           f"{field} {value!r} is a {why} address: only global or private "
                           "unicast addresses can be claimed")
    mapped = ip.ipv4_mapped if ip.version == 6 else None  # [::ffff:198.51.100.10]
    if ip in hub_addresses or (mapped is not None and mapped in hub_addresses):
        raise ClaimRefused("hub-address", field, value,
                           f"{field} {value!r} is an address of the hub itself")
    return endpoint


def check_candidates(candidates: Sequence[Candidate], hub_addresses: Collection[IPAddress] = ()
                     ) -> tuple[Candidate, ...]:
    """Every candidate checked and written canonically; duplicates (same address)
    keep their first, best-ranked kind."""
    out: list[Candidate] = []
    seen: set[str] = set()
    for i, c in enumerate(candidates):
        address = str(check_address(c.address, f"candidates[{i}].address", hub_addresses))
        if address not in seen:
            seen.add(address)
            out.append(Candidate(c.kind, address))
    return tuple(out)


def accept_observations(reporter: str, observations: Sequence[Observation], authority: Authority,
                        now: float, ttl: int = REFLECTION_TTL
                        ) -> tuple[tuple[Observation, ...], dict[str, int]]:
    """The reflections the hub keeps from ``reporter``'s (already address-checked)
    observations, and how many it dropped, by reason: ``not-a-relay``,
    ``self``, ``unknown-peer``, ``stale``, ``duplicate``."""
    dropped: dict[str, int] = {}

    def drop(reason: str) -> None:
        dropped[reason] = dropped.get(reason, 0) + 1

    if reporter not in authority.relays:
        if observations:
            dropped["not-a-relay"] = len(observations)
        return (), dropped
    kept: dict[str, Observation] = {}
    for obs in observations:
        if obs.peer == reporter:
            drop("self")
        elif obs.peer not in authority.devices:
            drop("unknown-peer")
        elif now - obs.last_handshake > ttl:
            drop("stale")
        elif obs.peer in kept:
            drop("duplicate")
        else:
            kept[obs.peer] = obs
    return tuple(kept[p] for p in sorted(kept)), dropped


# -- what holds at a given time (feed building and change detection) ------------------------
def report_counts(at: int, cert_serial: int, device: str, authority: Authority, now: float,
                  ttl: int = REPORT_TTL) -> bool:
    """An own report still reaches the feed."""
    return device in authority.devices and cert_serial not in authority.revoked \
        and now - at <= ttl


def reflection_counts(reporter: str, reporter_serial: int, peer: str, seen_at: int,
                      authority: Authority, now: float, ttl: int = REFLECTION_TTL) -> bool:
    """A stored reflection still reaches the feed: its reporter is a relay of the
    served snapshot with an unrevoked certificate, and the hub heard it lately."""
    return (reporter in authority.relays and reporter_serial not in authority.revoked
            and peer in authority.devices and peer != reporter and now - seen_at <= ttl)


def own_report_outranks(report: EndpointReport | None, now: float, fresh: int = OWN_FRESH) -> bool:
    """True when ``report`` outranks every reflection of its device: young, and
    naming at least one public candidate."""
    return report is not None and now - report.reported_at <= fresh and any(
        c.kind in PUBLIC_KINDS for c in report.candidates)


@lru_cache(maxsize=65536)  # every feed build asks again for each device's stored address
def public_host(observed_addr: str | None) -> str | None:
    """The host of the report connection's source address (the hub's own view)."""
    if not observed_addr:
        return None
    try:
        return Endpoint.parse(observed_addr).host
    except EndpointError:
        return None
