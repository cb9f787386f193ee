"""Build the endpoint feed of one org from stored reports and reflections (pure).

Called by ``reconciler.hub.serve`` whenever an org's feed may have changed (a
report changed something, a snapshot was swapped in, something expired); the
result is signed (DSSE, the org's manifest-signing key, payloadType
``application/vnd.meshops.feed+json``) and served by ``reconciler.hub.api``.

``build_entries`` merges, per device of the served snapshot (the rules and
constants are ``reconciler.hub.claims``'s):

* the device's own reported candidates, in the order the agent sent them, while
  its report counts (``claims.report_counts``: enabled device, certificate not
  revoked, younger than ``REPORT_TTL``);
* reflected candidates from relays (``claims.reflection_counts``), unless the
  device's own report is fresh and names a public candidate
  (``claims.own_report_outranks``): then the device's own word stands alone. At
  most ``MAX_REFLECTIONS``, newest address first (by ``since``, the hub's time
  it first saw that address), without duplicates;
* ``public_ip``: the host of the report connection's source address, as the
  hub saw it;
* ``updated_at``: when this entry's content last changed (the report's
  ``changed_at``, the newest ``since`` of the reflections shown), so repeating
  a report does not move it.

It also returns ``next_change``: the first time at which, with no new report,
the entries would change by time alone (a report or reflection expiring, a
fresh report turning stale). The hub rebuilds then, and long-polls wake.

``entries_digest`` is the digest the revision follows (``FeedStore.assign_revision``):
same entries, same revision. ``revision`` and ``generated_at`` (when the revision
was assigned) are not part of it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from reconciler.hub import claims
from reconciler.hub.claims import Authority
from reconciler.hub.feedstore import Reflection, StoredReport
from reconciler.model.endpoints import Candidate, EndpointFeed, FeedEntry

FEED_PAYLOAD_TYPE = "application/vnd.meshops.feed+json"


def build_entries(
    reports: Iterable[StoredReport],
    reflections: Iterable[Reflection],
    authority: Authority,
    now: float,
    *,
    reflection_ttl: int = claims.REFLECTION_TTL,
    report_ttl: int = claims.REPORT_TTL,
    own_fresh: int = claims.OWN_FRESH,
) -> tuple[tuple[FeedEntry, ...], float | None]:
    """The feed's entries at ``now``, and when they would next change by time alone."""
    deadlines: list[float] = []
    by_peer: dict[str, list[Reflection]] = {}
    for refl in reflections:
        if claims.reflection_counts(refl.reporter, refl.reporter_serial, refl.peer,
                                    refl.seen_at, authority, now, reflection_ttl):
            by_peer.setdefault(refl.peer, []).append(refl)
            deadlines.append(refl.seen_at + reflection_ttl + 1)
    stored: dict[str, StoredReport] = {}
    for row in reports:
        r = row.report
        if claims.report_counts(r.reported_at, r.cert_serial, r.device, authority, now,
                                report_ttl):
            stored[r.device] = row
            deadlines.append(r.reported_at + report_ttl + 1)
    entries = []
    for device in sorted(set(stored) | set(by_peer)):
        row = stored.get(device)
        report = row.report if row else None
        candidates: list[Candidate] = list(report.candidates) if report else []
        times = [row.changed_at] if row else []
        if claims.own_report_outranks(report, now, own_fresh):
            assert report is not None
            if by_peer.get(device):
                deadlines.append(report.reported_at + own_fresh + 1)  # then reflections show
        else:
            seen = {c.address for c in candidates}
            refls = sorted(by_peer.get(device, ()), key=lambda r: (-r.since, r.endpoint))
            added = 0
            for refl in refls:
                if refl.endpoint in seen:
                    continue
                if added == claims.MAX_REFLECTIONS:
                    break
                added += 1
                seen.add(refl.endpoint)
                candidates.append(Candidate("reflected", refl.endpoint))
                times.append(refl.since)
        if not candidates and report is None:
            continue
        entries.append(
            FeedEntry(
                device=device,
                candidates=tuple(candidates),
                mapping=report.mapping if report else "unknown",
                public_ip=claims.public_host(report.observed_addr) if report else None,
                updated_at=max(times) if times else 0,
            )
        )
    return tuple(entries), (min(deadlines) if deadlines else None)


def build_feed(org: str, revision: int, generated_at: int, entries: Iterable[FeedEntry]
               ) -> EndpointFeed:
    return EndpointFeed(org=org, revision=revision, generated_at=generated_at,
                        entries=tuple(entries))


def _entry_dict(e: FeedEntry) -> dict[str, Any]:
    return {
        "device": e.device,
        "candidates": [{"kind": c.kind, "address": c.address} for c in e.candidates],
        "mapping": e.mapping,
        "public_ip": e.public_ip,
        "updated_at": e.updated_at,
    }


def entries_digest(org: str, entries: Iterable[FeedEntry]) -> str:
    """SHA-256 of the canonical JSON of the org and its entries; ``""`` for no
    entries (the digest of a store that never showed anything)."""
    doc = {"org": org, "entries": [_entry_dict(e) for e in entries]}
    if not doc["entries"]:
        return ""
    return hashlib.sha256(
        json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def feed_to_dict(feed: EndpointFeed) -> dict[str, Any]:
    return {
        "org": feed.org,
        "revision": feed.revision,
        "generated_at": feed.generated_at,
        "entries": [_entry_dict(e) for e in feed.entries],
    }


def feed_payload(feed: EndpointFeed, root_version: int | None = None) -> bytes:
    """Canonical JSON (sorted keys, no spaces): the bytes that get signed.
    ``root_version``: the org's newest published trust root, signed in like the
    manifest's (left out for an org without trust roots)."""
    doc = feed_to_dict(feed)
    if root_version is not None:
        doc["root_version"] = root_version
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
