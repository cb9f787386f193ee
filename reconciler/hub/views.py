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
each device's members once per served serial, and not even that when a publish
left everything membership depends on alone (the policy, the device set, each
changed device's labels, routes, exit and relay flags: the new view inherits
the old one's members). A delta is keyed by what the device sees change
(``DeltaKey``: the start and end positions, the changed devices in its view
before and after, the changed feed entries in its view); each distinct key is
built and signed once and its bytes are shared by every device with that key
(in a full mesh, or for devices whose policy shows the same changed entries,
that is one delta for thousands of devices).

Waking: each long-poll waits on a future of its device. A swap wakes the viewers of
the devices that changed (everyone when the policy, the device set or a
non-serial top-level field changed); a feed build wakes only the viewers of
the entries that changed. Wake-ups are rate-limited per org (at most one
round per ``WAKE_MIN_INTERVAL``, longer after a round that woke more than
``WAKE_RATE`` per second of it; the first after a quiet period goes at once)
and set in batches of ``WAKE_BATCH`` with a yield to the event loop between
batches, so thousands of woken long-polls do not hold up report POSTs.

Answers before re-polls: while a round is answering, a connection that got
its answer is not read again until the round is over
(``hold_until_answered``: the API pauses reading it, and the round's end
resumes those connections in batches). An agent on a kept-open connection
asks again at once; without the hold, the event loop would take each of
those next requests in between the answers still owed to the rest of the
round, and the last device would get the change about twice as late
(measured at 10,000 devices: docs/benchmarks.md, "scale"). Report POSTs
and new connections are not held.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
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
SIGNED_CACHE = 4096  # signed deltas kept (each distinct delta is built and signed once)
SIGNED_CACHE_BYTES = 256 << 20  # and their bytes at most (a delta can be a whole view)
SNAPSHOTS_PER_ORG = 2  # whole-org snapshots kept per org (the current one and the last)
WAKE_MIN_INTERVAL = 0.5  # seconds between two wake-up rounds of one org (like FEED_MIN_INTERVAL)
WAKE_BATCH = 256  # events set before yielding to the event loop
GZIP_ABOVE = 4096  # answers larger than this are also kept gzipped
WAKE_ALL_ABOVE = 256  # more changed devices than this wake the whole org
# Per view, the member sets kept: each can hold every device of the org
# (10,000 sets of 10,000 names would be gigabytes); "sees everyone" is a set of names.
SETS_CACHED = 1024
# long-polls woken per second and org at most, on average (see _waker): each costs
# ~0.5 ms of the event loop (answer + the next request), so half a core at most
WAKE_RATE = 1000.0
CHANGE_KEYS = ("serial", "commit", "issued_at", "not_after")  # move with every publish


def _quietly(resume: Callable[[], None]) -> None:
    """Resume one held connection; one that closed meanwhile does not matter."""
    try:
        resume()
    except (OSError, RuntimeError, AttributeError):
        pass


class OrgView:
    """One served manifest of one org, indexed for views (immutable once built)."""

    def __init__(self, manifest: Manifest, prev: OrgView | None = None) -> None:
        """``prev``: the org's previous view; the JSON of devices that did not
        change is taken from it (shared, not copied: 16 views of 10,000 devices
        would otherwise hold 16 copies)."""
        self.manifest = manifest
        self.serial = manifest.serial
        self.top = top_to_dict(manifest)
        self.used = used = tag_labels_used(manifest.policy)
        self.dicts: dict[str, dict[str, Any]] = {}
        self.frags: dict[str, bytes] = {}
        before = ({d.name: d for d in prev.manifest.devices}
                  if prev is not None and prev.used == used else {})
        for d in manifest.devices:
            old = before.get(d.name)
            if old is not None and (old is d or old == d):
                assert prev is not None
                self.dicts[d.name], self.frags[d.name] = prev.dicts[d.name], prev.frags[d.name]
            else:
                self.dicts[d.name] = device_to_dict(d, used)
                self.frags[d.name] = canonical_json(self.dicts[d.name])
        self.everyone = frozenset(self.dicts)
        self.relays = frozenset(d.name for d in manifest.devices if d.relay)
        self.full = manifest.policy is None
        self._index: PeerIndex | None = None
        # members: the devices that see everyone (small), and bounded explicit sets
        self._everyone_seers: set[str] = set()
        self._members: dict[str, frozenset[str]] = {}
        self._splits: dict[frozenset[str], tuple[frozenset[str], tuple[str, ...]]] = {}
        self._manifest_json: bytes | None = None

    def inherit(self, old: OrgView, diff: OrgDiff) -> bool:
        """Take ``old``'s members when nothing they depend on changed between
        the two (``PeerIndex``: the policy, the device set, labels, routes, exit
        nodes; relays see and are seen by everyone). True when inherited."""
        if diff.policy_changed or old.everyone != self.everyone or old.relays != self.relays:
            return False
        new_by, old_by = self.manifest.device, old.manifest.device
        for name in diff.changed:
            a, b = new_by(name), old_by(name)
            if a is None or b is None or (a.labels, a.routes, a.exit_node) != \
                    (b.labels, b.routes, b.exit_node):
                return False
        # same answers: share them
        self._members, self._index = old._members, old._index
        self._everyone_seers, self._splits = old._everyone_seers, old._splits
        return True

    def shares_members(self, other: OrgView) -> bool:
        """Whether every device's members are the same in both (inherited)."""
        return self._members is other._members

    @property
    def index(self) -> PeerIndex:
        if self._index is None:
            self._index = PeerIndex(self.manifest)
        return self._index

    def members(self, name: str) -> frozenset[str] | None:
        """The devices in ``name``'s view; None: the whole org. A device that is
        not in the manifest sees nothing (its view has no devices: it tears down)."""
        if name in self._everyone_seers:
            return None
        if name in self._members:
            return self._members[name]
        if name not in self.everyone:
            return frozenset()
        if self.full or name in self.relays:
            return None
        found = self.index.allowed(name) | self.relays | {name}
        if len(found) == len(self.everyone):
            self._everyone_seers.add(name)
            return None
        out = frozenset(found)
        _bounded_put(self._members, name, out)
        return out

    def split(self, names: frozenset[str]) -> tuple[frozenset[str], tuple[str, ...]]:
        """``names`` in this org as (seen by every device, seen by some): a
        delta's per-device work is then a lookup per name of the second part
        only (none in a full mesh or when everyone sees the changed devices)."""
        got = self._splits.get(names)
        if got is None:
            always, partial = [], []
            for n in names:
                if n in self.everyone:
                    (always if self.viewers(n) is None else partial).append(n)
            got = (frozenset(always), tuple(sorted(partial)))
            self._splits[names] = got
            while len(self._splits) > SETS_CACHED:
                del self._splits[next(iter(self._splits))]
        return got

    def viewers(self, name: str) -> frozenset[str] | None:
        """The devices whose view holds ``name`` (None: all). The peer relation
        is symmetric (``policy.PeerIndex``: a rule accepting traffic either way),
        and relays see and are seen by everyone: the same set as ``members``."""
        return None if name not in self.everyone else self.members(name)

    def sees(self, device: str, name: str) -> bool:
        """Whether ``name`` is in ``device``'s view: ``device in viewers(name)``,
        so a delta costs one ``allowed()`` per changed device, not one per
        recipient (``members`` is needed for snapshots only)."""
        if name not in self.everyone or device not in self.everyone:
            return False
        seen_by = self.viewers(name)
        return seen_by is None or device in seen_by

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


def _gz(body: bytes) -> bytes | None:
    """The gzip form of an answer over 4 KiB, built once and shared with it."""
    return gzip.compress(body, 6, mtime=0) if len(body) > GZIP_ABOVE else None


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


def _size(answer: Answer) -> int:
    return len(answer.body) + len(answer.body_gz or b"")


def _bounded_put(cache: dict[str, frozenset[str]], key: str, value: frozenset[str]) -> None:
    """Insert, dropping the oldest entries beyond ``SETS_CACHED``."""
    cache[key] = value
    while len(cache) > SETS_CACHED:
        del cache[next(iter(cache))]


def _seen(view: OrgView, device: str, names: frozenset[str]) -> frozenset[str]:
    """Those of ``names`` in ``device``'s view (the same object for every device
    when each name is seen by everyone or by no one, so its hash is computed once)."""
    if device not in view.everyone:
        return frozenset()
    always, partial = view.split(names)
    if not partial:
        return always
    return always | {n for n in partial if view.sees(device, n)}


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
    _since: dict[int, frozenset[str]] = field(default_factory=dict)  # changed_since, this rev

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
        self._since = {}
        self.entries, self.frags = entries, frags
        return frozenset(changed)

    def changed_since(self, revision: int) -> frozenset[str] | None:
        """Devices whose entries changed after ``revision``; None when the
        history does not reach back that far, or when this replica never built
        ``revision`` (another replica did, or it is made up): what changed at a
        revision it did not see is unknown, so the device gets a snapshot."""
        if revision == self.revision:
            return frozenset()
        if revision != self.oldest and revision not in self.history:
            return None
        memo = self._since.get(revision)
        if memo is not None:
            return memo
        out: set[str] = set()
        for rev in reversed(self.history):
            if rev <= revision:
                break
            out.update(self.history[rev])
        self._since[revision] = found = frozenset(out)
        return found


@dataclass(frozen=True)
class Answer:
    """One view answer: the signed envelope (and its gzip form) and where it leaves
    the device."""

    kind: str  # snapshot | delta
    body: bytes
    serial: int
    revision: int
    body_gz: bytes | None = None


# What a delta depends on besides the org's state at its end: its positions, the
# changed devices the recipient sees at the end and saw at the start, and the
# changed feed entries it sees. Devices with equal keys get the same bytes.
DeltaKey = tuple[str, tuple[int, int], tuple[int, int], frozenset[str], frozenset[str],
                 frozenset[str]]


class Views:
    """Every org's view state, owned by the ``Hub`` (one event loop thread)."""

    def __init__(self, wake_interval: float = WAKE_MIN_INTERVAL) -> None:
        self.history: dict[str, OrderedDict[int, OrgView]] = {}
        self.feeds: dict[str, FeedState] = {}
        self._diffs: OrderedDict[tuple[str, int, int], OrgDiff] = OrderedDict()
        self._deltas: OrderedDict[DeltaKey, tuple[Answer, bool]] = OrderedDict()
        self._delta_bytes = 0  # the cached deltas' bodies, plain and gzipped
        self._snapshots: OrderedDict[tuple[str, int, int], Answer] = OrderedDict()
        self._waiting: dict[tuple[str, str], set[asyncio.Future[bool]]] = {}
        self.wake_interval = wake_interval
        self._pending: dict[str, set[str] | None] = {}  # org -> devices to wake (None: all)
        self._last_wake: dict[str, float] = {}
        self._wakers: dict[str, asyncio.Task[None]] = {}
        # org -> resume callbacks of the connections its running round answered
        self._answering: dict[str, list[Callable[[], None]]] = {}
        self._round_over: dict[str, asyncio.Event] = {}  # set when that round is over
        self.stats = {"deltas_built": 0, "deltas_shared": 0, "members_inherited": 0,
                      "wake_rounds": 0, "held": 0}

    # -- inputs: swaps and feed builds ----------------------------------------------
    def served(self, org: str, manifest: Manifest) -> OrgView:
        """The manifest ``org`` now serves (idempotent per serial); wakes the
        devices that see what changed."""
        hist = self.history.setdefault(org, OrderedDict())
        view = hist.get(manifest.serial)
        if view is None:
            prev = self.current(org)
            view = OrgView(manifest, prev)
            targets: set[str] | None = None
            if prev is not None and prev.serial < view.serial:
                diff = self._diff(org, prev, view)
                if view.inherit(prev, diff):
                    self.stats["members_inherited"] += 1
                    if not set(diff.top) - set(CHANGE_KEYS) and not diff.top_remove:
                        targets = self._viewers_of(view, diff.changed)
            hist[manifest.serial] = view
            while len(hist) > MANIFEST_HISTORY:
                hist.popitem(last=False)
            self.wake(org, targets)
        return view

    @staticmethod
    def _viewers_of(view: OrgView, names: Collection[str]) -> set[str] | None:
        """The devices that see any of ``names`` (None: every device, also when
        ``names`` are many: waking everyone is then cheaper than finding out)."""
        if len(names) > WAKE_ALL_ABOVE:
            return None
        targets: set[str] = set()
        for name in names:
            seen_by = view.viewers(name)
            if seen_by is None:
                return None
            targets |= seen_by
        return targets

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
        self.wake(org, None if view is None or view.full else self._viewers_of(view, changed))

    # -- waiting -----------------------------------------------------------------------
    def wake(self, org: str, devices: Iterable[str] | None) -> None:
        """Wake the long-polls of ``devices`` (None: all of the org's), at most
        one round per ``wake_interval``: a wake within it joins the next round."""
        if org in self._pending:
            pending = self._pending[org]
            if pending is not None:
                if devices is None:
                    self._pending[org] = None
                else:
                    pending.update(devices)
        else:
            self._pending[org] = None if devices is None else set(devices)
        task = self._wakers.get(org)
        if task is not None and not task.done():
            return  # the running round's next pass takes it
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (unit tests): wake at once
            self._wake_now(org, self._pending.pop(org))
            return
        self._wakers[org] = loop.create_task(self._waker(org), name=f"view-wake-{org}")

    async def _waker(self, org: str) -> None:
        loop = asyncio.get_running_loop()
        while org in self._pending:
            delay = self._last_wake.get(org, float("-inf")) + self.wake_interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            devices = self._pending.pop(org, set())
            keys = self._keys(org, devices)
            # the next round waits longer after a large one: every woken long-poll
            # costs a delta and an answer, and report POSTs must keep their share
            self._last_wake[org] = loop.time() + max(0.0, len(keys) / WAKE_RATE
                                                     - self.wake_interval)
            self.stats["wake_rounds"] += 1
            held = self._answering.setdefault(org, [])
            over = self._round_over[org] = asyncio.Event()
            try:
                for start in range(0, len(keys), WAKE_BATCH):
                    if start:
                        await asyncio.sleep(0)  # let report POSTs and other I/O in between
                    for key in keys[start:start + WAKE_BATCH]:
                        for waiter in self._waiting.get(key, ()):
                            if not waiter.done():
                                waiter.set_result(True)
                await asyncio.sleep(0)  # the last batch answers in this iteration
            finally:
                del self._answering[org]
                del self._round_over[org]
                over.set()
                self.stats["held"] += len(held)
                for start in range(0, len(held), WAKE_BATCH):
                    for resume in held[start:start + WAKE_BATCH]:
                        _quietly(resume)
                    if start + WAKE_BATCH < len(held):
                        await asyncio.sleep(0)

    async def answered(self, org: str) -> None:
        """Return once no wake round of ``org`` is answering. The hub's feed
        pump waits for it: a feed build's thread would take the interpreter
        from the round's answers (a publish wakes the round and a feed build
        at the same moment)."""
        over = self._round_over.get(org)
        if over is not None:
            await over.wait()

    def hold_until_answered(self, org: str, resume: Callable[[], None]) -> bool:
        """While a wake round of ``org`` is answering: keep ``resume`` (the
        connection's resume-reading) until the round is over, and return True
        (the caller pauses reading that connection). False otherwise."""
        held = self._answering.get(org)
        if held is None:
            return False
        held.append(resume)
        return True

    def _keys(self, org: str, devices: Iterable[str] | None) -> list[tuple[str, str]]:
        if devices is None:
            return [k for k in self._waiting if k[0] == org]
        return [(org, d) for d in devices if (org, d) in self._waiting]

    def _wake_now(self, org: str, devices: Iterable[str] | None) -> None:
        for key in self._keys(org, devices):
            for waiter in self._waiting.get(key, ()):
                if not waiter.done():
                    waiter.set_result(True)

    async def wait(self, org: str, device: str, timeout: float) -> bool:
        """Wait until something the device may see changed, or ``timeout``.
        A bare future and a timer (no task per waiter, unlike ``wait_for``):
        10,000 long-polls wake in one round."""
        if timeout <= 0:
            return False
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        key = (org, device)
        self._waiting.setdefault(key, set()).add(waiter)
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            waiters = self._waiting.get(key)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
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
        answer = Answer("snapshot", body, view.serial, rev, _gz(body))
        if members is None:
            self._snapshots[key] = answer
            mine = [k for k in self._snapshots if k[0] == org]
            for old_key in mine[:-SNAPSHOTS_PER_ORG]:
                del self._snapshots[old_key]
        return answer

    def delta(self, org: str, device: str, start: tuple[int, int],
              signers: Sequence[Any]) -> tuple[Answer | None, bool]:
        """The delta from ``start`` for ``device``: ``(None, _)`` when only a
        snapshot will do; else ``(answer, relevant)``, ``relevant`` False when
        it only moves the device's position (nothing in its view changed).

        Per device this costs a few set lookups (which of the changed devices
        and entries it sees); the delta itself is built and signed once per
        distinct ``DeltaKey`` and shared."""
        hist = self.history.get(org)
        view = self.current(org)
        feed = self.feeds.get(org) or FeedState()
        if view is None or hist is None:
            return None, False
        old = hist.get(start[0])
        if old is None:
            return None, False
        seen_now: frozenset[str] = frozenset()
        seen_before: frozenset[str] = frozenset()
        if old is not view:
            diff = self._diff(org, old, view)
            if diff.policy_changed or (device in diff.changed
                                       and not view.shares_members(old)):
                return None, False  # its own entry changed and its view may have too
            seen_now = _seen(view, device, diff.changed)
            seen_before = _seen(old, device, diff.changed)
        changed_entries = feed.changed_since(start[1])
        if changed_entries is None:
            return None, False
        end = (view.serial, max(feed.revision, 0))
        key: DeltaKey = (org, start, end, seen_now, seen_before,
                         _seen(view, device, changed_entries))
        cached = self._deltas.get(key)
        if cached is not None:
            self._deltas.move_to_end(key)
            self.stats["deltas_shared"] += 1
            return cached
        built = self._build_delta(key, old, view, feed, signers)
        self._deltas[key] = built
        self._delta_bytes += _size(built[0])
        while len(self._deltas) > SIGNED_CACHE or self._delta_bytes > SIGNED_CACHE_BYTES:
            _, (gone, _) = self._deltas.popitem(last=False)
            self._delta_bytes -= _size(gone)
        self.stats["deltas_built"] += 1
        return built

    def _build_delta(self, key: DeltaKey, old: OrgView, view: OrgView, feed: FeedState,
                     signers: Sequence[Any]) -> tuple[Answer, bool]:
        org, start, end, seen_now, seen_before, entries_seen = key
        top: Mapping[str, Any] = {}
        top_remove: tuple[str, ...] = ()
        if old is not view:
            diff = self._diff(org, old, view)
            top, top_remove = diff.top, diff.top_remove
        upsert = [view.dicts[n] for n in sorted(seen_now)]
        left = seen_before - seen_now
        remove = sorted(left)
        feed_upsert, feed_remove = [], []
        for name in sorted(entries_seen | (seen_now - seen_before)):
            if name in feed.entries:
                feed_upsert.append(json.loads(feed.frags[name]))
            elif name in entries_seen:
                feed_remove.append(name)
        feed_remove.extend(n for n in sorted(left) if n not in feed_remove)
        relevant = bool(upsert or remove or top_remove or feed_upsert or feed_remove
                        or set(top) - set(CHANGE_KEYS))
        payload = delta_payload(org, start, end, top, top_remove, upsert, remove,
                                feed.generated_at, feed_upsert, feed_remove)
        body = sign_view(payload, signers)
        return Answer("delta", body, end[0], end[1], _gz(body)), relevant

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
