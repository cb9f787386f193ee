"""The data of a ``meshops plan``: what a change to the org repository does.

Built by ``policy.review.review_diff``, rendered by ``policy.render``. All tuples
are sorted, so reports are stable and golden-testable. Pure and stdlib-only.
"""

from __future__ import annotations

from dataclasses import dataclass

from .access import Access


@dataclass(frozen=True)
class FieldChange:
    field: str
    before: object
    after: object


@dataclass(frozen=True)
class DeviceEntry:
    """A device that joins or leaves the mesh. ``why``: new, enabled, deleted, disabled."""

    name: str
    why: str
    owner: str
    tunnel_ips: tuple[str, ...]


@dataclass(frozen=True)
class DeviceChange:
    name: str
    fields: tuple[FieldChange, ...]


@dataclass(frozen=True)
class ReachChange:
    """Every pair in ``srcs`` x ``dsts`` (a device never counts as reaching itself)
    gains ``gained`` and loses ``lost``."""

    srcs: tuple[str, ...]
    dsts: tuple[str, ...]
    gained: Access
    lost: Access

    @property
    def pair_count(self) -> int:
        overlap = len(set(self.srcs) & set(self.dsts))
        return len(self.srcs) * len(self.dsts) - overlap


@dataclass(frozen=True)
class OrgPlan:
    org: str
    status: str  # "added" | "removed" | "changed"
    org_fields: tuple[FieldChange, ...] = ()
    policy_changed: bool = False
    added: tuple[DeviceEntry, ...] = ()
    removed: tuple[DeviceEntry, ...] = ()
    changed: tuple[DeviceChange, ...] = ()
    reach: tuple[ReachChange, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.org_fields or self.policy_changed or self.added or self.removed
                    or self.changed or self.reach) and self.status == "changed"


@dataclass(frozen=True)
class Summary:
    orgs: int
    added: int
    removed: int
    changed: int
    gained_pairs: int
    lost_pairs: int

    def __str__(self) -> str:
        def n(count: int, word: str) -> str:
            return f"{count} {word}{'' if count == 1 else 's'}"

        return (
            f"{n(self.added, 'device')} added, {self.removed} removed, {self.changed} changed; "
            f"{n(self.gained_pairs, 'pair')} gain access, {n(self.lost_pairs, 'pair')} lose access"
            f" in {n(self.orgs, 'org')}"
        )


@dataclass(frozen=True)
class ReviewReport:
    base_commit: str | None
    head_commit: str | None
    orgs: tuple[OrgPlan, ...]

    @property
    def empty(self) -> bool:
        return not self.orgs

    def summary(self) -> Summary:
        return Summary(
            orgs=len(self.orgs),
            added=sum(len(o.added) for o in self.orgs),
            removed=sum(len(o.removed) for o in self.orgs),
            changed=sum(len(o.changed) for o in self.orgs),
            gained_pairs=sum(r.pair_count for o in self.orgs for r in o.reach if r.gained),
            lost_pairs=sum(r.pair_count for o in self.orgs for r in o.reach if r.lost),
        )
