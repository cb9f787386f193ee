"""Step three of a pass: apply the decision, verify it, persist once, report.

``commit(decision, effects, state_dir=..., feed_url=..., now=...) -> Result``
is called by ``agent.reconcile.reconcile_once`` (never on ``--dry-run``):

1. apply the operations in ``converge.phases`` order, each group to its
   owner: peer removals, then the firewall table (``effects.firewall``), then
   WireGuard and the link (``effects.backend``), then the exit-node policy
   routing (``effects.routing``). A firewall that cannot be applied raises
   before any peer is added: the peers it protects never exist without it,
   the error is reported and the next pass retries (removals already done
   stay done: shrinking is always safe);
2. re-observe and re-plan what changed: anything left raises
   ``NotConverged`` naming the residual operations, and nothing is persisted
   (the next pass starts from the same floor);
3. write the state once: the manifest (or the view, ``view.json``) as the
   new rollback floor (only now, so "last applied" means applied), the feed, the memory, this device's own
   endpoints and ``applied.json``; each file is written only when it changed,
   so a no-op pass writes nothing;
4. post the endpoint report; a failure is a warning, not an error.
"""

from __future__ import annotations

import os

from reconciler.agent import desired as desired_mod
from reconciler.agent import endpoints as endpoints_mod
from reconciler.agent.decide import Decision
from reconciler.agent.gather import Effects
from reconciler.agent.inputs import Inputs
from reconciler.agent.rotate import next_key_path
from reconciler.agent.state import CachedManifest, StateDir
from reconciler.converge import Operation, phases, plan, plan_firewall, plan_routing
from reconciler.converge.ops import ROUTING_OPS, ReplaceFirewall
from reconciler.errors import ConfigError, FetchError, InputRefused, NotConverged
from reconciler.model.routing import EXIT_TABLE
from reconciler.structs import Record, repr_without


class Result(Record):
    """What one pass did. ``operations`` is the plan (applied unless dry-run)."""

    operations: tuple[Operation, ...]
    applied: int
    serial: int
    commit: str
    source: str = "fetched"  # fetched | unchanged (304 / same bytes) | cache (hub unreachable)
    member: bool = True  # False: this device is not in the manifest; it got no peers
    warnings: tuple[str, ...] = ()
    peers: tuple[desired_mod.PeerSummary, ...] = ()  # left out of ``repr``
    feed_revision: int | None = None
    requeue_after: float | None = None  # None: the normal cadence

    __repr__ = repr_without("peers")

    @classmethod
    def of(cls, inputs: Inputs, decision: Decision, applied: int,
           warnings: tuple[str, ...] = ()) -> Result:
        return cls(decision.operations, applied, inputs.manifest.serial, inputs.manifest.commit,
                   inputs.source.source, decision.desired.member,
                   decision.warnings + warnings, decision.desired.peers,
                   decision.feed.revision if decision.feed else None, decision.requeue_after)


def commit(inputs: Inputs, decision: Decision, effects: Effects, *, state_dir: str,
           feed_url: str | None, now: float, private_key_path: str | None = None) -> Result:
    if decision.operations:
        for group in phases(decision.operations):
            apply_group(group, effects)
        residual = verify(inputs, decision, effects, now)
        if residual:
            raise NotConverged(residual)
    persist(StateDir(state_dir), inputs, decision)
    if inputs.key_switch and private_key_path is not None:
        # the interface runs the new key and the manifest has it: it is the key now
        os.replace(next_key_path(private_key_path), private_key_path)
    warnings: tuple[str, ...] = ()
    if decision.report is not None:
        try:
            if effects.report is not None:
                effects.report(dict(decision.report))
            elif feed_url is not None:
                effects.fetch.post_json(feed_url, dict(decision.report))
        except (FetchError, ConfigError, InputRefused) as exc:
            warnings = (f"endpoint report not sent: {exc}",)
    return Result.of(inputs, decision, len(decision.operations), warnings)


def apply_group(group: tuple[Operation, ...], effects: Effects) -> None:
    """One ``converge.phases`` group to its owner: the firewall, the policy
    routing, or the WireGuard backend (which also owns the link)."""
    first = group[0]
    if isinstance(first, ReplaceFirewall):
        assert effects.firewall is not None  # decide plans it only when observed
        effects.firewall.apply(first.ruleset)
    elif isinstance(first, ROUTING_OPS):
        assert effects.routing is not None
        effects.routing.apply(group)
    else:
        effects.backend.apply(group)


def verify(inputs: Inputs, decision: Decision, effects: Effects, now: float
           ) -> tuple[Operation, ...]:
    """Re-observe what was changed and re-plan it: the residual operations."""
    ops = decision.operations
    residual = plan(decision.desired.interface, effects.backend.observe(inputs.interface), now)
    if effects.firewall is not None and decision.firewall is not None and \
            any(isinstance(op, ReplaceFirewall) for op in ops):
        residual += plan_firewall(decision.firewall, effects.firewall.observe(),
                                  inputs.interface)
    if effects.routing is not None and any(isinstance(op, ROUTING_OPS) for op in ops):
        residual += plan_routing(decision.routing, effects.routing.observe_routing(EXIT_TABLE),
                                 inputs.interface)
    return residual


def persist(state: StateDir, inputs: Inputs, decision: Decision) -> None:
    """Write what the converged pass leaves behind (each file only when changed)."""
    source = inputs.source
    if decision.record_manifest and source.view is not None:
        state.save_view(source.view)  # the view holds its own feed entries
    elif decision.record_manifest:
        manifest = inputs.manifest
        state.save_manifest(CachedManifest(source.envelope, manifest.serial, manifest.commit,
                                           manifest.not_after, source.etag))
    # memory and feed equal to what their files hold are not serialized again
    # (at 10,000 peers, 80 ms a no-op pass)
    if decision.feed is not None and source.view is None and \
            not (inputs.feed_stored and decision.feed == inputs.feed):
        state.save_feed(endpoints_mod.feed_to_dict(decision.feed))
    if not (inputs.memory_stored and decision.memory == inputs.memory):
        state.save_peering(decision.memory.to_dict())
    state.save_discovery(decision.own.to_dict())
    state.save_applied(dict(decision.applied), presorted=True)  # decide.applied_summary
