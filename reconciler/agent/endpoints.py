"""The agent's side of the endpoint feed: parse the signed feed, build the report.

``open_feed(data, trust, org)`` verifies the DSSE envelope (same org key as
the manifest, payloadType ``application/vnd.meshops.feed+json``) and returns
an ``EndpointFeed``; ``build_report(...)`` is the JSON body of
``POST /v1/orgs/{org}/endpoints`` (docs/architecture.md, "Hub HTTP API
shapes"): own candidates (STUN, local, static) and the reflection
observations (what this device's WireGuard sees as its peers' source
addresses). It does no I/O: the source address towards the hub (a LAN
candidate) comes from ``agent.fetch.route_source``.

Called by ``agent.gather`` (parse, own endpoints) and ``agent.decide`` (the report). The agent never imports ``reconciler.hub``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.errors import ManifestRefused
from reconciler.model.endpoint import host_of, is_routable_unicast, parse_or_none
from reconciler.model.endpoints import (
    MAX_CANDIDATES,
    MAX_OBSERVATIONS,
    Candidate,
    EndpointFeed,
    FeedEntry,
)
from reconciler.model.manifest import Manifest
from reconciler.model.wg import ObservedInterface
from reconciler.pki.envelope import Trust, open_envelope
from reconciler.structs import Record

FEED_PAYLOAD_TYPE = "application/vnd.meshops.feed+json"


def open_feed(data: bytes, trust: Trust, org: str) -> EndpointFeed:
    """Verify and parse a feed envelope; ``ManifestRefused`` when it does not verify."""
    opened = open_envelope(data, trust, FEED_PAYLOAD_TYPE, org=org)
    try:
        doc = opened.json("endpoint feed payload")
        entries = tuple(
            FeedEntry(
                device=str(e["device"]),
                candidates=tuple(Candidate(str(c["kind"]), str(c["address"]))
                                 for c in e.get("candidates", ())),
                mapping=str(e.get("mapping", "unknown")),
                public_ip=e.get("public_ip"),
                updated_at=int(e.get("updated_at", 0)),
            )
            for e in doc["entries"]
        )
        feed = EndpointFeed(str(doc["org"]), int(doc["revision"]), int(doc["generated_at"]),
                            entries)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ManifestRefused("schema", f"endpoint feed payload is invalid: {exc}") from exc
    if feed.org != org:
        raise ManifestRefused("wrong-org", f"endpoint feed is for org {feed.org!r}, not {org!r}")
    return feed


def feed_to_dict(feed: EndpointFeed) -> dict[str, Any]:
    """The feed in the state dir's form (``feed.json``), read back by ``feed_from_dict``."""
    return {
        "org": feed.org, "revision": feed.revision, "generated_at": feed.generated_at,
        "entries": [
            {"device": e.device, "mapping": e.mapping, "public_ip": e.public_ip,
             "updated_at": e.updated_at,
             "candidates": [{"kind": c.kind, "address": c.address} for c in e.candidates]}
            for e in feed.entries
        ],
    }


def feed_from_dict(doc: Any) -> EndpointFeed | None:
    """``feed.json`` as an ``EndpointFeed``; None when any field has the wrong
    type (the exact types ``feed_to_dict`` writes: no ``"4"`` for 4)."""
    def integer(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    try:
        entries = []
        for e in doc["entries"]:
            pub = e.get("public_ip")
            if not (isinstance(e["device"], str) and isinstance(e["mapping"], str)
                    and integer(e["updated_at"]) and (pub is None or isinstance(pub, str))
                    and isinstance(e["candidates"], list)):
                return None
            cands = tuple(Candidate(c["kind"], c["address"]) for c in e["candidates"])
            if not all(isinstance(c.kind, str) and isinstance(c.address, str) for c in cands):
                return None
            entries.append(FeedEntry(e["device"], cands, e["mapping"], pub, e["updated_at"]))
        if not (isinstance(doc["org"], str) and integer(doc["revision"])
                and integer(doc["generated_at"]) and isinstance(doc["entries"], list)):
            return None
        return EndpointFeed(doc["org"], doc["revision"], doc["generated_at"], tuple(entries))
    except (TypeError, KeyError, AttributeError):
        return None


class SelfEndpoints(Record):
    """What this device knows of its own endpoints (``discovery.json``).

    ``local_ip`` is the source address towards the hub when discovery last
    ran: another one now means the device moved (new LAN, new NAT).
    ``checked`` holds the foreign public IPs (the hub's view, reflections)
    that were present at the last re-check, so a stale reflection triggers
    one re-check, not one per pass."""

    candidates: tuple[Candidate, ...] = ()  # stun and local, best first
    mapping: str = "unknown"
    public_ip: str | None = None
    local_ip: str | None = None
    checked: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"candidates": [{"kind": c.kind, "address": c.address} for c in self.candidates],
                "mapping": self.mapping, "public_ip": self.public_ip,
                "local_ip": self.local_ip, "checked": list(self.checked)}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any] | None) -> SelfEndpoints:
        doc = doc or {}
        try:
            return cls(tuple(Candidate(str(c["kind"]), str(c["address"]))
                             for c in doc.get("candidates", ())),
                       str(doc.get("mapping", "unknown")), doc.get("public_ip"),
                       doc.get("local_ip"), tuple(str(h) for h in doc.get("checked", ())))
        except (TypeError, KeyError, AttributeError):
            return cls()

    def local_hosts(self) -> frozenset[str]:
        return frozenset(host_of(c.address) for c in self.candidates if c.kind == "local")

    def moved_from(self, here: str | None) -> bool:
        """True when ``here`` (today's source address towards the hub) is not the
        address discovery ran from: the device changed networks."""
        if here is None:
            return False  # no route right now: nothing to re-discover from
        if self.local_ip is not None:
            return here != self.local_ip
        return bool(self.local_hosts()) and here not in self.local_hosts()


NO_SELF_ENDPOINTS = SelfEndpoints()  # nothing discovered yet


def foreign_ips(entry: FeedEntry | None, own: SelfEndpoints) -> tuple[str, ...]:
    """Public IPs others attribute to this device (the hub's view of the report
    connection, the reflections of live WireGuard sessions) that are neither the
    IP discovery knows nor one of its LAN addresses."""
    if entry is None:
        return ()
    seen = [entry.public_ip] if entry.public_ip else []
    seen += [host_of(c.address) for c in entry.candidates if c.kind == "reflected"]
    skip = own.local_hosts() | {own.public_ip}
    return tuple(sorted({ip for ip in seen if ip not in skip}))


def from_discovery(discovery: Any, previous: SelfEndpoints) -> SelfEndpoints:
    """Merge a ``stun.client.Discovery``; a test run from an ephemeral port (the
    WireGuard port was busy) has no mapped addresses: keep the old STUN ones,
    unless the public IP changed (they belong to a NAT this device left)."""
    if discovery is None:
        return previous
    candidates = tuple(discovery.candidates())
    same_nat = previous.public_ip is None or discovery.public_ip == previous.public_ip
    if not any(c.kind == "stun" for c in candidates) and same_nat:
        candidates = tuple(c for c in previous.candidates if c.kind == "stun") + candidates
    return SelfEndpoints(candidates, discovery.mapping or "unknown", discovery.public_ip,
                         previous.local_ip, previous.checked)


def build_report(
    manifest: Manifest,
    me: str,
    observed: ObservedInterface,
    *,
    names_by_key: Mapping[str, str],
    listen_port: int,
    own: SelfEndpoints = NO_SELF_ENDPOINTS,
    local: str | None = None,
    heard: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The report body for ``POST /v1/orgs/{org}/endpoints``: own candidates
    (STUN, local, static) and the reflection observations.

    ``heard`` (peer name -> unix time its rx counter last grew) dates an
    observation when it is newer than the handshake: a peer that moved keeps
    its session (no new handshake) and WireGuard roams to its new address, so
    the handshake time would rank the new address below stale ones.

    At most ``MAX_OBSERVATIONS`` observations (the freshest) and
    ``MAX_CANDIDATES`` candidates are sent: the hub refuses more."""
    heard = heard or {}
    candidates = [{"kind": c.kind, "address": c.address} for c in own.candidates]
    if local and not any(c.kind == "local" for c in own.candidates):
        candidates.append({"kind": "local", "address": local})
    mine = manifest.device(me)
    if mine is not None and mine.endpoint:
        candidates.append({"kind": "static", "address": mine.endpoint})
    # offer only what a peer can use; the hub refuses the rest (loopback, link-local...)
    candidates = [c for c in candidates if _offerable(c["address"])]
    observations = [
        {"peer": names_by_key[key], "endpoint": peer.endpoint,
         "last_handshake": int(max(peer.last_handshake,
                                   float(heard.get(names_by_key[key], 0.0))))}
        for key, peer in sorted(observed.peers.items())
        if key in names_by_key and peer.endpoint and peer.last_handshake
    ] if mine is not None and mine.relay else []  # the hub takes reflections from relays only
    if len(observations) > MAX_OBSERVATIONS:  # the hub's limit: keep the freshest
        observations = sorted(observations, key=lambda o: (-o["last_handshake"], o["peer"]))
        observations = sorted(observations[:MAX_OBSERVATIONS], key=lambda o: o["peer"])
    return {
        "device": me,
        "candidates": candidates[:MAX_CANDIDATES],
        "mapping": own.mapping,
        "listen_port": listen_port,
        "serial": manifest.serial,
        "observations": observations,
    }


def _offerable(address: str) -> bool:
    """A candidate a peer could send to: a routable unicast IP literal with a port
    (static endpoints may be names; the hub resolves nothing, so they go as they are)."""
    parsed = parse_or_none(address, allow_names=True)
    if parsed is None:
        return False
    return parsed.ip is None or is_routable_unicast(parsed.ip)
