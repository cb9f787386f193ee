"""Per-device views and their deltas: the signed documents, and applying them.

A *view* is what one device needs of its org: the manifest restricted to the
peers policy lets it reach or be reached by, its relays and the routers and
exit node it uses (``reconciler.hub.views`` decides who is in it), together
with those devices' endpoint-feed entries. The hub serves it at
``GET /v1/orgs/ORG/devices/NAME/view`` (docs/api.md); ``reconciler.agent.view``
fetches, verifies and applies it. Both sides use this module for the format.

Two payloads, both DSSE-signed by the org's manifest keys (the same keys and
trust as the manifest, payload type ``VIEW_TYPE``), canonical JSON:

* a **snapshot** ``{"type": "snapshot", "org", "device", "manifest": {a
  manifest dict (pki.manifest's format) with only the view's devices},
  "feed": {"revision", "generated_at", "entries": [...]}}``. ``device`` is the
  device the view is for, or ``"*"`` when the view is the whole org (a relay;
  every device in a full mesh): that snapshot is the same bytes for everyone,
  so the hub signs it once per (serial, revision);
* a **delta** ``{"type": "delta", "org", "from": [S, R], "to": [S2, R2],
  "top": {changed top-level manifest fields}, "top_remove": [...], "upsert":
  [device dicts], "remove": [names], "feed": {"generated_at", "upsert":
  [...], "remove": [...]}}``. A delta carries no device name: its content is
  chosen per recipient by the hub, and identical deltas are signed once. It
  never changes the policy (a policy change is a snapshot: membership may move).

Checks (``open_view``), as strict as for a full manifest: signature and payload
type, org, the snapshot's device, the result's schema (``manifest_from_dict``),
expiry and a ``future`` issue time. ``apply_delta`` refuses a delta that does
not chain onto the held state (``from`` differs), goes backwards, or does not
apply (removing a device the view does not hold, a result that fails the
schema): ``ViewMismatch``, after which the agent fetches a snapshot.

Pure except for the signature checks (``cryptography`` through ``pki.envelope``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.errors import ManifestRefused
from reconciler.model.endpoints import Candidate, EndpointFeed, FeedEntry
from reconciler.model.manifest import Manifest
from reconciler.pki.envelope import Trust, open_envelope, sign_envelope_multi
from reconciler.pki.manifest import canonical_json, manifest_from_dict

VIEW_TYPE = "application/vnd.meshops.view+json"
EVERYONE = "*"  # a snapshot of the whole org: valid for any device of it
NEVER_IN_DELTA = frozenset({"devices", "policy", "version", "org"})


class ViewMismatch(ValueError):
    """A verified delta that does not apply to the held view: fetch a snapshot."""


# -- feed entries ------------------------------------------------------------------
def entry_to_dict(e: FeedEntry) -> dict[str, Any]:
    return {"device": e.device, "mapping": e.mapping, "public_ip": e.public_ip,
            "updated_at": e.updated_at,
            "candidates": [{"kind": c.kind, "address": c.address} for c in e.candidates]}


def entry_from_dict(e: Any) -> FeedEntry:
    """A feed entry; ``TypeError``/``KeyError``/``ValueError`` on a wrong shape."""
    pub = e.get("public_ip")
    cands = e["candidates"]
    if not (isinstance(e["device"], str) and isinstance(e["mapping"], str)
            and _integer(e["updated_at"]) and (pub is None or isinstance(pub, str))
            and isinstance(cands, list)):
        raise TypeError(f"feed entry {str(e.get('device'))[:63]!r} has wrong types")
    out = tuple(Candidate(c["kind"], c["address"]) for c in cands)
    if not all(isinstance(c.kind, str) and isinstance(c.address, str) for c in out):
        raise TypeError("a candidate's kind and address must be strings")
    return FeedEntry(e["device"], out, e["mapping"], pub, e["updated_at"])


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- the held view -------------------------------------------------------------
@dataclass(frozen=True)
class HeldView:
    """A verified view as the agent keeps it (``view.json``): the manifest
    dict, the feed entries by device, the feed revision, who it is for."""

    org: str
    device: str  # the device name, or EVERYONE
    manifest: Mapping[str, Any]  # a manifest dict: pki.manifest's format
    revision: int
    generated_at: int
    entries: Mapping[str, Mapping[str, Any]]  # device -> feed entry dict

    @property
    def serial(self) -> int:
        return int(self.manifest["serial"])

    @property
    def position(self) -> tuple[int, int]:
        return self.serial, self.revision

    def to_dict(self) -> dict[str, Any]:
        return {"org": self.org, "device": self.device, "manifest": dict(self.manifest),
                "feed": {"revision": self.revision, "generated_at": self.generated_at,
                         "entries": [self.entries[k] for k in sorted(self.entries)]}}

    @classmethod
    def from_dict(cls, doc: Any, *, check: bool = True) -> HeldView:
        """``view.json`` (or a snapshot payload) back; ``TypeError``/``KeyError``/
        ``ValueError`` on a wrong shape (the manifest is checked by ``manifest``).
        ``check=False`` skips the per-entry shape checks: the agent's own
        ``view.json``, whose entries were checked when it was verified."""
        feed = doc["feed"]
        if not (isinstance(doc["org"], str) and isinstance(doc["device"], str)
                and isinstance(doc["manifest"], dict) and _integer(feed["revision"])
                and _integer(feed["generated_at"]) and isinstance(feed["entries"], list)):
            raise TypeError("a view needs org, device, manifest and feed of the right types")
        if check:
            for e in feed["entries"]:
                entry_from_dict(e)
        entries = {e["device"]: e for e in feed["entries"]}
        return cls(doc["org"], doc["device"], doc["manifest"], feed["revision"],
                   feed["generated_at"], entries)

    def manifest_model(self, *, check: bool = True) -> Manifest:
        """The view as a ``Manifest`` (schema-checked unless ``check`` is False:
        for the agent's own ``view.json``, checked when it was verified)."""
        return manifest_from_dict(self.manifest, check=check)

    def feed_model(self) -> EndpointFeed:
        """The feed entries as model objects (their shapes were checked when the
        view was verified: ``from_dict``, ``apply_delta``); built once per held
        view (``agent.state.load_view`` builds it to check the file's shape, the
        pass then uses it)."""
        return self._feed_model

    @functools.cached_property
    def _feed_model(self) -> EndpointFeed:
        entries = self.entries
        return EndpointFeed(self.org, self.revision, self.generated_at, tuple(
            FeedEntry(e["device"], tuple(Candidate(c["kind"], c["address"])
                                         for c in e["candidates"]),
                      e["mapping"], e.get("public_ip"), e["updated_at"])
            for e in (entries[k] for k in sorted(entries))))


# -- building (hub) --------------------------------------------------------------
def snapshot_payload(org: str, device: str, manifest: bytes, revision: int,
                     generated_at: int, entries: Iterable[bytes]) -> bytes:
    """Canonical JSON of a snapshot from pre-encoded parts: ``manifest`` is the
    canonical manifest JSON (``pki.manifest.encode_manifest``), ``entries`` the
    canonical JSON of each feed entry, sorted by device."""
    feed = (b'{"entries":[' + b",".join(entries) + b'],"generated_at":'
            + str(int(generated_at)).encode() + b',"revision":' + str(int(revision)).encode()
            + b"}")
    return (b'{"device":' + canonical_json(device) + b',"feed":' + feed + b',"manifest":'
            + manifest + b',"org":' + canonical_json(org) + b',"type":"snapshot"}')


def delta_payload(org: str, start: tuple[int, int], end: tuple[int, int],
                  top: Mapping[str, Any], top_remove: Iterable[str],
                  upsert: Iterable[Mapping[str, Any]], remove: Iterable[str],
                  generated_at: int, feed_upsert: Iterable[Mapping[str, Any]],
                  feed_remove: Iterable[str]) -> bytes:
    return canonical_json({
        "type": "delta", "org": org, "from": list(start), "to": list(end),
        "top": dict(top), "top_remove": sorted(top_remove),
        "upsert": sorted(upsert, key=lambda d: d["name"]), "remove": sorted(remove),
        "feed": {"generated_at": int(generated_at),
                 "upsert": sorted(feed_upsert, key=lambda e: e["device"]),
                 "remove": sorted(feed_remove)},
    })


def sign_view(payload: bytes, keys: Any) -> bytes:
    return sign_envelope_multi(payload, VIEW_TYPE, tuple(keys))


# -- verifying and applying (agent) ---------------------------------------------------
@dataclass(frozen=True)
class Opened:
    kind: str  # snapshot | delta
    doc: Mapping[str, Any]


def open_view(data: bytes, trust: Trust, org: str, device: str) -> Opened:
    """Verify a view envelope's signature and its outer shape: the type, the
    org, and for a snapshot the device (this one, or ``*``).
    ``ManifestRefused`` with the manifest's reasons."""
    opened = open_envelope(data, trust, VIEW_TYPE, org=org)
    doc = opened.json("signed view payload")
    if not isinstance(doc, dict) or doc.get("type") not in ("snapshot", "delta"):
        raise ManifestRefused("schema", "signed view payload is neither a snapshot nor a delta")
    if doc.get("org") != org:
        raise ManifestRefused("wrong-org", f"view is for org {str(doc.get('org'))[:63]!r}, "
                                           f"not {org!r}")
    if doc["type"] == "snapshot" and doc.get("device") not in (device, EVERYONE):
        raise ManifestRefused("wrong-device", f"view is for device "
                                              f"{str(doc.get('device'))[:63]!r}, not {device!r}")
    return Opened(doc["type"], doc)


def held_from_snapshot(doc: Mapping[str, Any]) -> HeldView:
    try:
        held = HeldView.from_dict(doc)
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise ManifestRefused("schema", f"signed view snapshot is invalid: {exc}") from exc
    return held


def apply_delta(held: HeldView, doc: Mapping[str, Any]) -> HeldView:
    """``held`` moved by delta ``doc`` (verified by ``open_view``); ``ViewMismatch``
    when it does not chain onto ``held`` or does not apply to it."""
    try:
        start, end = tuple(doc["from"]), tuple(doc["to"])
        if not (len(start) == len(end) == 2 and all(map(_integer, start + end))):
            raise TypeError("from and to must be [serial, revision]")
        top, top_remove = doc["top"], doc["top_remove"]
        upsert, remove, feed = doc["upsert"], doc["remove"], doc["feed"]
        if not (isinstance(top, dict) and isinstance(top_remove, list)
                and isinstance(upsert, list) and isinstance(remove, list)
                and isinstance(feed, dict) and _integer(feed["generated_at"])
                and isinstance(feed["upsert"], list) and isinstance(feed["remove"], list)):
            raise TypeError("a delta's parts have wrong types")
    except (TypeError, KeyError, AttributeError) as exc:
        raise ManifestRefused("schema", f"signed view delta is invalid: {exc}") from exc
    if start != held.position:
        raise ViewMismatch(f"delta from serial {start[0]} revision {start[1]} does not follow "
                           f"the held serial {held.serial} revision {held.revision}")
    if end < start or end[0] < start[0] or end[1] < start[1]:
        raise ViewMismatch(f"delta goes backwards, to serial {end[0]} revision {end[1]}")
    if NEVER_IN_DELTA & (set(top) | set(top_remove)):
        raise ViewMismatch("a delta may not change "
                           f"{', '.join(sorted(NEVER_IN_DELTA & (set(top) | set(top_remove))))}")
    manifest = {k: v for k, v in held.manifest.items() if k not in top_remove}
    manifest.update(top)
    if manifest.get("serial") != end[0]:
        raise ViewMismatch(f"delta to serial {end[0]} leaves the manifest at serial "
                           f"{manifest.get('serial')}")
    devices = {d["name"]: d for d in held.manifest["devices"]}
    for name in remove:
        if devices.pop(name, None) is None:
            raise ViewMismatch(f"delta removes device {str(name)[:63]!r}, which the view "
                               "does not hold")
    for d in upsert:
        if not isinstance(d, dict) or not isinstance(d.get("name"), str):
            raise ViewMismatch("delta upserts a device without a name")
        devices[d["name"]] = d
    manifest["devices"] = [devices[k] for k in sorted(devices)]
    entries = dict(held.entries)
    for name in feed["remove"]:  # lenient: the hub does not know which entries a view holds
        entries.pop(name, None)
    try:
        for e in feed["upsert"]:
            entry_from_dict(e)
            entries[e["device"]] = e
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise ManifestRefused("schema", f"signed view delta has a bad feed entry: {exc}") \
            from exc
    return HeldView(held.org, held.device, manifest, end[1], feed["generated_at"], entries)


__all__ = ["EVERYONE", "VIEW_TYPE", "HeldView", "Opened", "ViewMismatch", "apply_delta",
           "delta_payload", "entry_from_dict", "entry_to_dict", "held_from_snapshot",
           "open_view", "sign_view", "snapshot_payload"]
