"""``review_diff(base, head)``: what a change to the org repository does to the mesh.

Called by ``meshops plan`` (``reconciler.cli.plan``) with the repos loaded at
two revisions. Reports, per org: devices that join or leave the mesh (a
disabled device is out of the mesh, so enabling counts as added), devices
whose fields changed (model fields, never ``Source``), organization field
changes, whether the policy changed, and the reachability diff: groups of
(src devices x dst devices) and the traffic they gain or lose. The renderers
(``render_markdown``, ``render_text``, ``render_json``) live in
``policy.render`` and are re-exported here. Pure and stdlib-only.

``expiring(repo, now)`` lists the devices that have expired or expire within
``WARN_DAYS`` (14) days: ``meshops plan`` prints it under the diff, and
``config.expiry.expiry_warnings`` turns it into ``validate`` warnings.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from reconciler.model.repo import Device, OrgState, Repo

from .access import NO_ACCESS
from .reach import Matrix, Signature, reachability
from .render import render_json, render_markdown, render_text
from .report import DeviceChange, DeviceEntry, FieldChange, OrgPlan, ReachChange, ReviewReport

__all__ = ["Expiring", "expiring", "render_json", "render_markdown", "render_text",
           "review_diff"]

WARN_DAYS = 14
DAY = 86400.0


@dataclass(frozen=True)
class Expiring:
    org: str
    device: str
    owner: str
    expires: str  # as written in the file
    days_left: float  # negative: already expired
    expired: bool

    def as_dict(self) -> dict[str, Any]:
        return {"org": self.org, "device": self.device, "owner": self.owner,
                "expires": self.expires, "days_left": round(self.days_left, 2),
                "expired": self.expired}


def expiring(repo: Repo, now: float, within_days: int = WARN_DAYS) -> tuple[Expiring, ...]:
    """Enabled devices whose ``expires`` is before ``now + within_days``, soonest
    first (then by org and name). Disabled devices are out of the mesh anyway."""
    out = []
    for org_name, state in repo.orgs.items():
        for dev in state.devices.values():
            at = dev.expires_at
            if dev.disabled or at is None or at > now + within_days * DAY:
                continue
            out.append(Expiring(org_name, dev.name, dev.owner, str(dev.expires),
                                (at - now) / DAY, at <= now))
    return tuple(sorted(out, key=lambda e: (e.days_left, e.org, e.device)))

_SKIP = {"source", "name", "org"}


def _value(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _field_changes(before: object, after: object) -> tuple[FieldChange, ...]:
    out = []
    for f in fields(before):  # type: ignore[arg-type]
        if f.name in _SKIP:
            continue
        a, b = getattr(before, f.name), getattr(after, f.name)
        if a != b:
            out.append(FieldChange(f.name, _value(a), _value(b)))
    return tuple(out)


def _entry(d: Device, why: str) -> DeviceEntry:
    return DeviceEntry(d.name, why, d.owner, d.tunnel_ips)


def _devices(base: OrgState | None, head: OrgState | None) -> tuple[
    tuple[DeviceEntry, ...], tuple[DeviceEntry, ...], tuple[DeviceChange, ...]
]:
    old = dict(base.devices) if base else {}
    new = dict(head.devices) if head else {}
    added, removed, changed = [], [], []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        a_in = a is not None and not a.disabled
        b_in = b is not None and not b.disabled
        if b is not None and b_in and not a_in:
            added.append(_entry(b, "new" if a is None else "enabled"))
        elif a is not None and a_in and not b_in:
            removed.append(_entry(a, "deleted" if b is None else "disabled"))
        elif a is not None and b is not None:
            diff = _field_changes(a, b)
            if diff:
                changed.append(DeviceChange(name, diff))
    return tuple(added), tuple(removed), tuple(changed)


def _merge(changes: list[ReachChange], by_src: bool) -> list[ReachChange]:
    groups: dict[tuple[Any, ...], set[str]] = {}
    for c in changes:
        key = (c.srcs if by_src else c.dsts, c.gained, c.lost)
        groups.setdefault(key, set()).update(c.dsts if by_src else c.srcs)
    out = []
    for (fixed, gained, lost), other in groups.items():
        rest = tuple(sorted(other))
        out.append(ReachChange(fixed, rest, gained, lost) if by_src
                   else ReachChange(rest, fixed, gained, lost))
    return out


def reach_diff(base: Matrix | None, head: Matrix | None) -> tuple[ReachChange, ...]:
    """Pairs whose accepted traffic differs, grouped: devices with the same class
    on both sides behave alike, so O(joint classes^2) comparisons."""
    joint: dict[tuple[Signature | None, Signature | None], list[str]] = {}
    names = set(base.devices if base else ()) | set(head.devices if head else ())
    for name in sorted(names):
        key = (base.signature.get(name) if base else None,
               head.signature.get(name) if head else None)
        joint.setdefault(key, []).append(name)
    changes: list[ReachChange] = []
    for (bs, hs), srcs in joint.items():
        for (bd, hd), dsts in joint.items():
            if srcs is dsts and len(srcs) == 1:
                continue  # a device does not "reach" itself
            before = base.access_between(bs, bd) if base and bs and bd else NO_ACCESS
            after = head.access_between(hs, hd) if head and hs and hd else NO_ACCESS
            if before == after:
                continue
            gained, lost = after - before, before - after
            changes.append(ReachChange(tuple(srcs), tuple(dsts), gained, lost))
    merged = _merge(_merge(changes, by_src=True), by_src=False)
    return tuple(sorted(merged, key=lambda c: (c.srcs, c.dsts, str(c.gained), str(c.lost))))


def _org_plan(org: str, base: OrgState | None, head: OrgState | None) -> OrgPlan | None:
    added, removed, changed = _devices(base, head)
    reach = reach_diff(reachability(base) if base else None, reachability(head) if head else None)
    if base is None:
        return OrgPlan(org, "added", (), head is not None and head.policy is not None,
                       added, removed, changed, reach)
    if head is None:
        return OrgPlan(org, "removed", (), base.policy is not None, added, removed, changed, reach)
    org_fields = _field_changes(base.organization, head.organization)
    policy_changed = base.policy != head.policy
    plan = OrgPlan(org, "changed", org_fields, policy_changed, added, removed, changed, reach)
    return None if plan.empty else plan


def review_diff(base: Repo | None, head: Repo) -> ReviewReport:
    """Compare two loaded repos (``base=None``: everything in ``head`` is new)."""
    old = dict(base.orgs) if base else {}
    new = dict(head.orgs)
    plans = []
    for org in sorted(set(old) | set(new)):
        plan = _org_plan(org, old.get(org), new.get(org))
        if plan is not None:
            plans.append(plan)
    return ReviewReport(base.commit if base else None, head.commit, tuple(plans))


