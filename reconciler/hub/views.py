"""Per-device views, their deltas, and who to wake: the hub's side of issue 13.

Called by ``reconciler.hub.serve.Hub`` (``Views``: one per hub, fed every
swap and every feed build) and through it by ``reconciler.hub.api``'s
``GET /v1/orgs/ORG/devices/NAME/view``. The format lives in
``reconciler.pki.view``; the agent side in ``reconciler.agent.view``.

Who is in the view of device X (``OrgView.members``): X itself, every device
policy lets X reach or be reached by (``policy.PeerIndex``: rule peers,
routers of the subnets X may reach, exit nodes for ``internet``, and for a
router or an exit node the devices it serves), and every relay. A relay sees
the whole org (it forwards between any pair), and so does every device of an
org without a policy (a full mesh). ``None`` stands for "the whole org".

History (bounded): the last ``MANIFEST_HISTORY`` served manifests per org and
the changed device names of the last ``FEED_HISTORY`` feed revisions. A
device long-polling with a position (serial, revision) inside that history gets
a delta: the devices that changed between its serial and the served one,
filtered to its view (a device that left the view is removed, one that
entered it is added), and the feed entries that changed since its revision,
filtered the same way. Outside the history, or when the policy changed or the
device's own entry changed (its view may be different), it gets a snapshot.

Cost at 10,000 devices: the org diff is computed once per pair of serials;
each device's members once per served serial; a delta of a few devices is a
few set lookups and one small JSON document, and identical deltas (a full
mesh: every device gets the same one) are signed once.

Waking: long-polls wait on one event per device. A swap wakes every device of
the org (its serial moved; those with nothing relevant wait on until their
long-poll ends and then get a delta that only moves their position); a feed
build wakes only the viewers of the entries that changed.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.model.endpoints import EndpointFeed, FeedEntry
from reconciler.model.manifest import Manifest
from reconciler.pki.manifest import canonical_json, device_to_dict, tag_labels_used, top_to_dict
from reconciler.pki.view import (
    EVERYONE,
    delta_payload,
    entry_to_dict,
    sign_view,
    snapshot_payload,
)
from reconciler.policy import PeerIndex

MANIFEST_HISTORY = 16  # served serials per org a delta can start from
FEED_HISTORY = 4096  # feed revisions per org a delta can start from (~30 min at 2 builds/s)
SIGNED_CACHE = 4096  # signed deltas kept (identical deltas are signed once)
CHANGE_KEYS = ("serial", "commit", "issued_at", "not_after")  # move with every publish


class OrgView:
    """One served manifest of one org, indexed for views (immutable once built)."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.serial = manifest.serial
        self.top = top_to_dict(manifest)
        used = tag_labels_used(manifest.policy)
        self.dicts = {d.name: device_to_dict(d, used) for d in manifest.devices}
        self.frags = {name: canonical_json(d) for name, d in self.dicts.items()}
        self.everyone = frozenset(self.dicts)
        self.relays = frozenset(d.name for d in manifest.devices if d.relay)
        self.full = manifest.policy is None
        self._index: PeerIndex | None = None
        self._members: dict[str, frozenset[str] | None] = {}
        self._manifest_json: bytes | None = None

    @property
    def index(self) -> PeerIndex:
        if self._index is None:
            self._index = PeerIndex(self.manifest)
        return self._index

    def members(self, name: str) -> frozenset[str] | None:
        """The devices in ``name``'s view; None: the whole org. A device that is
        not in the manifest sees nothing (its view has no devices: it tears down)."""
        if name in self._members:
            return self._members[name]
        if name not in self.everyone:
            out: frozenset[str] | None = frozenset()
        elif self.full or name in self.relays:
            out = None
        else:
            found = self.index.allowed(name) | self.relays | {name}
            out = None if len(found) == len(self.everyone) else frozenset(found)
        self._members[name] = out
        return out

    def viewers(self, name: str) -> frozenset[str] | None:
        """The devices whose view holds ``name`` (None: all). The peer relation
        is symmetric (``policy.PeerIndex``: a rule accepting traffic either way);
        relays see everyone and everyone sees relays."""
        if self.full or name in self.relays or name not in self.everyone:
            return None
        return self.index.allowed(name) | self.relays | {name}

    def manifest_json(self, members: frozenset[str] | None) -> bytes:
        """Canonical JSON of the manifest restricted to ``members`` (None: all)."""
        if members is None and self._manifest_json is not None:
            return self._manifest_json
        names = sorted(self.everyone if members is None else members & self.everyone)
        top = dict(self.top)
        top["devices"] = None
        parts = []
        for key in sorted(top):
            value = (b"[" + b",".join(self.frags[n] for n in names) + b"]" if key == "devices"
                     else canonical_json(top[key]))
            parts.append(canonical_json(key) + b":" + value)
        out = b"{" + b",".join(parts) + b"}"
        if members is None:
            self._manifest_json = out
        return out


@dataclass(frozen=True)
class OrgDiff:
    """What changed between two served manifests of one org."""

    top: Mapping[str, Any]  # changed or added top-level fields (never devices)
    top_remove: tuple[str, ...]
    changed: frozenset[str]  # devices added, removed or changed
    policy_changed: bool


def diff_views(old: OrgView, new: OrgView) -> OrgDiff:
    top = {k: v for k, v in new.top.items() if old.top.get(k, _MISSING) != v}
    removed = tuple(sorted(k for k in old.top if k not in new.top))
    changed = {n for n in old.everyone ^ new.everyone}
    for name, frag in new.frags.items():
        if old.frags.get(name, frag) != frag:
            changed.add(name)
    policy = "policy" in top or "policy" in removed
    top.pop("policy", None)
    return OrgDiff(top, tuple(k for k in removed if k != "policy"), frozenset(changed), policy)


_MISSING = object()


@dataclass
class FeedState:
    """The feed as views need it: entries by device, their canonical JSON, and
    which devices changed at each of the last ``FEED_HISTORY`` revisions."""

    revision: int = -1  # none built yet
    generated_at: int = 0
    entries: dict[str, FeedEntry] = field(default_factory=dict)
    frags: dict[str, bytes] = field(default_factory=dict)
    history: OrderedDict[int, frozenset[str]] = field(default_factory=OrderedDict)
    oldest: int = 0  # the oldest revision a delta can start from

    def update(self, feed: EndpointFeed) -> frozenset[str]:
        """Take a newly built feed; the devices whose entries changed."""
        if feed.revision <= self.revision:
            return frozenset()
        entries = {e.device: e for e in feed.entries}
        changed = {n for n in self.entries.keys() ^ entries.keys()}
        frags = {}
        for name, entry in entries.items():
            old = self.entries.get(name)
            if old is not None and old == entry:
                frags[name] = self.frags[name]
            else:
                changed.add(name)
                frags[name] = canonical_json(entry_to_dict(entry))
        if self.revision < 0:
            self.oldest = feed.revision  # the first build: nothing before it is known
        else:
            self.history[feed.revision] = frozenset(changed)
        while len(self.history) > FEED_HISTORY:
            gone, _ = self.history.popitem(last=False)
            self.oldest = gone
        self.revision, self.generated_at = feed.revision, feed.generated_at
        self.entries, self.frags = entries, frags
        return frozenset(changed)

    def changed_since(self, revision: int) -> frozenset[str] | None:
        """Devices whose entries changed after ``revision``; None when the
        history does not reach back that far (or ``revision`` is in the future)."""
        if revision == self.revision:
            return frozenset()
        if revision > self.revision or revision < self.oldest:
            return None
        out: set[str] = set()
        for rev in reversed(self.history):
            if rev <= revision:
                break
            out.update(self.history[rev])
        return frozenset(out)


@dataclass(frozen=True)
class Answer:
    """One view answer: the signed envelope (and its gzip form) and where it leaves
    the device."""

    kind: str  # snapshot | delta
    body: bytes
    serial: int
    revision: int
    body_gz: bytes | None = None


class Views:
    """Every org's view state, owned by the ``Hub`` (one event loop thread)."""

    def __init__(self) -> None:
        self.history: dict[str, OrderedDict[int, OrgView]] = {}
        self.feeds: dict[str, FeedState] = {}
        self._diffs: OrderedDict[tuple[str, int, int], OrgDiff] = OrderedDict()
        self._signed: OrderedDict[bytes, bytes] = OrderedDict()
        self._snapshots: OrderedDict[tuple[str, int, int], Answer] = OrderedDict()
        self._waiting: dict[tuple[str, str], set[asyncio.Event]] = {}

    # -- inputs: swaps and feed builds ----------------------------------------------
    def served(self, org: str, manifest: Manifest) -> OrgView:
        """The manifest ``org`` now serves (idempotent per serial); wakes the org."""
        hist = self.history.setdefault(org, OrderedDict())
        view = hist.get(manifest.serial)
        if view is None:
            view = OrgView(manifest)
            hist[manifest.serial] = view
            while len(hist) > MANIFEST_HISTORY:
                hist.popitem(last=False)
            self.wake(org, None)
        return view

    def current(self, org: str) -> OrgView | None:
        hist = self.history.get(org)
        return next(reversed(hist.values())) if hist else None

    def feed_built(self, org: str, feed: EndpointFeed) -> None:
        """A feed build: record what changed and wake the devices that see it."""
        state = self.feeds.setdefault(org, FeedState())
        changed = state.update(feed)
        if not changed:
            return
        view = self.current(org)
        if view is None or view.full:
            self.wake(org, None)
            return
        targets: set[str] = set()
        for name in changed:
            seen_by = view.viewers(name)
            if seen_by is None:
                self.wake(org, None)
                return
            targets |= seen_by
        self.wake(org, targets)

    # -- waiting -----------------------------------------------------------------------
    def wake(self, org: str, devices: Iterable[str] | None) -> None:
        if devices is None:
            keys: Iterable[tuple[str, str]] = [k for k in self._waiting if k[0] == org]
        else:
            keys = [(org, d) for d in devices if (org, d) in self._waiting]
        for key in keys:
            for event in self._waiting.get(key, ()):
                event.set()

    async def wait(self, org: str, device: str, timeout: float) -> bool:
        """Wait until something the device may see changed, or ``timeout``."""
        if timeout <= 0:
            return False
        event = asyncio.Event()
        key = (org, device)
        self._waiting.setdefault(key, set()).add(event)
        try:
            await asyncio.wait_for(event.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            events = self._waiting.get(key)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiting[key]

    @property
    def waiting(self) -> int:
        return sum(len(v) for v in self._waiting.values())

    # -- answers -------------------------------------------------------------------------
    def position(self, org: str) -> tuple[int, int] | None:
        view, feed = self.current(org), self.feeds.get(org)
        if view is None:
            return None
        return view.serial, max(feed.revision, 0) if feed else 0

    def snapshot(self, org: str, device: str, signers: Sequence[Any]) -> Answer:
        view = self.current(org)
        assert view is not None
        feed = self.feeds.get(org) or FeedState()
        members = view.members(device)
        rev = max(feed.revision, 0)
        key = (org, view.serial, rev)
        if members is None:
            cached = self._snapshots.get(key)
            if cached is not None:
                return cached
        names = sorted((view.everyone if members is None else members) & feed.frags.keys())
        payload = snapshot_payload(org, EVERYONE if members is None else device,
                                   view.manifest_json(members), rev,
                                   feed.generated_at, (feed.frags[n] for n in names))
        body = sign_view(payload, signers)
        answer = Answer("snapshot", body, view.serial, rev,
                        gzip.compress(body, 6, mtime=0) if len(body) > 4096 else None)
        if members is None:
            self._snapshots[key] = answer
            while len(self._snapshots) > 2:
                self._snapshots.popitem(last=False)
        return answer

    def delta(self, org: str, device: str, start: tuple[int, int],
              signers: Sequence[Any]) -> tuple[Answer | None, bool]:
        """The delta from ``start`` for ``device``: ``(None, _)`` when only a
        snapshot will do; else ``(answer, relevant)``, ``relevant`` False when
        it only moves the device's position (nothing in its view changed)."""
        hist = self.history.get(org)
        view = self.current(org)
        feed = self.feeds.get(org) or FeedState()
        if view is None or hist is None:
            return None, False
        old = hist.get(start[0])
        if old is None:
            return None, False
        members = view.members(device)
        upsert: list[dict[str, Any]] = []
        remove: list[str] = []
        top: Mapping[str, Any] = {}
        top_remove: tuple[str, ...] = ()
        entered: set[str] = set()
        left: set[str] = set()
        if old is not view:
            diff = self._diff(org, old, view)
            if diff.policy_changed or device in diff.changed:
                return None, False
            old_members = old.members(device)
            top, top_remove = diff.top, diff.top_remove
            for name in diff.changed:
                now_in = name in view.everyone and (members is None or name in members)
                was_in = name in old.everyone and (old_members is None or name in old_members)
                if now_in:
                    upsert.append(view.dicts[name])
                    if not was_in:
                        entered.add(name)
                elif was_in:
                    remove.append(name)
                    left.add(name)
        changed_entries = feed.changed_since(start[1])
        if changed_entries is None:
            return None, False
        feed_upsert, feed_remove = [], []
        for name in sorted(changed_entries | entered):
            if name not in view.everyone or (members is not None and name not in members):
                continue  # an entry of a device that left the org goes with ``left``
            entry = feed.entries.get(name)
            if entry is not None:
                feed_upsert.append(json.loads(feed.frags[name]))
            elif name in changed_entries:
                feed_remove.append(name)
        feed_remove.extend(n for n in sorted(left) if n not in feed_remove)
        relevant = bool(upsert or remove or top_remove or feed_upsert or feed_remove
                        or set(top) - set(CHANGE_KEYS))
        end = (view.serial, max(feed.revision, 0))
        payload = delta_payload(org, start, end, top, top_remove, upsert, remove,
                                feed.generated_at, feed_upsert, feed_remove)
        body = self._signed.get(payload)
        if body is None:
            body = sign_view(payload, signers)
            self._signed[payload] = body
            while len(self._signed) > SIGNED_CACHE:
                self._signed.popitem(last=False)
        else:
            self._signed.move_to_end(payload)
        return Answer("delta", body, end[0], end[1]), relevant

    def _diff(self, org: str, old: OrgView, new: OrgView) -> OrgDiff:
        key = (org, old.serial, new.serial)
        diff = self._diffs.get(key)
        if diff is None:
            diff = diff_views(old, new)
            self._diffs[key] = diff
            while len(self._diffs) > 4 * MANIFEST_HISTORY:
                self._diffs.popitem(last=False)
        return diff

    def forget(self, orgs: Iterable[str]) -> None:
        """Drop the state of orgs no longer served."""
        keep = set(orgs)
        for org in [o for o in self.history if o not in keep]:
            del self.history[org]
            self.feeds.pop(org, None)
            self.wake(org, None)
