"""Build the endpoint feed of one org from stored reports and reflections (pure).

Called by ``reconciler.hub.serve`` whenever an org's feed revision changes;
the result is signed (DSSE, the org's manifest-signing key, payloadType
``application/vnd.meshops.feed+json``) and served by ``reconciler.hub.api``.

Merging rules, per device present in the org's current manifest:

* the device's own reported candidates (stun, local, static, reflected) come
  first, in the order the agent sent them;
* reflected candidates: what *other* devices' WireGuard saw as this device's
  source address (``wg show … endpoints``), kept only while the handshake is
  fresher than ``reflection_ttl`` (180 s = WireGuard's REJECT_AFTER_TIME, after
  which a session is dead), newest first;
* ``public_ip`` is the source address the hub saw on the report connection;
* ``updated_at`` is the newest of the report time and the reflections used.

Reports older than ``report_ttl`` are dropped: a device silent for that long
is better reached through its relay than through a guessed address.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from reconciler.hub.feedstore import Reflection, StoredReport
from reconciler.model.endpoints import Candidate, EndpointFeed, FeedEntry

FEED_PAYLOAD_TYPE = "application/vnd.meshops.feed+json"
REFLECTION_TTL = 180
REPORT_TTL = 24 * 3600


def _host(address: str) -> str:
    """``"1.2.3.4:5"`` -> ``"1.2.3.4"``; ``"[2001:db8::1]:5"`` -> ``"2001:db8::1"``."""
    host = address.rpartition(":")[0] if ":" in address else address
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def build_feed(
    org: str,
    revision: int,
    reports: Iterable[StoredReport],
    reflections: Iterable[Reflection],
    devices: Iterable[str],
    now: float,
    *,
    reflection_ttl: int = REFLECTION_TTL,
    report_ttl: int = REPORT_TTL,
) -> EndpointFeed:
    known = set(devices)
    by_peer: dict[str, list[Reflection]] = {}
    for refl in reflections:
        if refl.peer in known and now - refl.last_handshake <= reflection_ttl:
            by_peer.setdefault(refl.peer, []).append(refl)
    stored = {r.report.device: r.report for r in reports if r.report.device in known}
    entries = []
    for device in sorted(set(stored) | set(by_peer)):
        report = stored.get(device)
        if report is not None and now - report.reported_at > report_ttl:
            report = None
        refls = sorted(by_peer.get(device, ()), key=lambda r: (-r.last_handshake, r.reporter))
        if report is None and not refls:
            continue
        candidates: list[Candidate] = list(report.candidates) if report else []
        seen = {c.address for c in candidates}
        for refl in refls:
            if refl.endpoint not in seen:
                seen.add(refl.endpoint)
                candidates.append(Candidate("reflected", refl.endpoint))
        times = [report.reported_at] if report else []
        times += [r.last_handshake for r in refls]
        public_ip = _host(report.observed_addr) if report and report.observed_addr else None
        entries.append(
            FeedEntry(
                device=device,
                candidates=tuple(candidates),
                mapping=report.mapping if report else "unknown",
                public_ip=public_ip,
                updated_at=max(times),
            )
        )
    return EndpointFeed(org=org, revision=revision, generated_at=int(now), entries=tuple(entries))


def feed_to_dict(feed: EndpointFeed) -> dict[str, Any]:
    return {
        "org": feed.org,
        "revision": feed.revision,
        "generated_at": feed.generated_at,
        "entries": [
            {
                "device": e.device,
                "candidates": [{"kind": c.kind, "address": c.address} for c in e.candidates],
                "mapping": e.mapping,
                "public_ip": e.public_ip,
                "updated_at": e.updated_at,
            }
            for e in feed.entries
        ],
    }


def feed_payload(feed: EndpointFeed, root_version: int | None = None) -> bytes:
    """Canonical JSON (sorted keys, no spaces): the bytes that get signed.
    ``root_version``: the org's newest published trust root, signed in like the
    manifest's (left out for an org without trust roots)."""
    doc = feed_to_dict(feed)
    if root_version is not None:
        doc["root_version"] = root_version
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
