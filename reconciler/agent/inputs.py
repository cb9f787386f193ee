"""The data one agent pass decides on: ``Inputs`` and the ``VerifiedManifest`` in it.

Filled by ``agent.gather`` (and by ``agent.render`` for a device seen for the
first time), read by the pure ``agent.decide`` and by ``agent.commit``. Plain
frozen data: this module imports no I/O and sits under the purity contract.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.agent.endpoints import SelfEndpoints
from reconciler.agent.memory import Memory
from reconciler.model.endpoints import EndpointFeed
from reconciler.model.firewall import Ruleset
from reconciler.model.manifest import Manifest
from reconciler.model.routing import PolicyRouting
from reconciler.model.wg import ObservedInterface
from reconciler.structs import Record, field, repr_without


class VerifiedManifest(Record):
    manifest: Manifest
    envelope: bytes
    etag: str | None
    source: str  # fetched | unchanged (304 / same bytes) | cache (source unreachable)
    warning: str | None = None
    cached_etag: str | None = None  # the ETag the state dir holds for it
    # a per-device view from the hub (agent.view): the held view to persist as
    # view.json (a pki.view.HeldView), its endpoint feed, and how it arrived
    view: Any = None
    feed: EndpointFeed | None = None
    view_kind: str | None = None  # snapshot | delta | none


class Inputs(Record):
    """One pass's whole view of the world (see the module docstring)."""

    me: str
    org: str
    interface: str
    listen_port: int
    hysteresis: Mapping[str, Any]
    hub: bool  # a hub to report to
    manifest: Manifest
    source: VerifiedManifest
    feed: EndpointFeed | None
    observed: ObservedInterface
    memory: Memory
    own: SelfEndpoints
    private_key: str  # never logged (``__repr__``)
    here: str | None = None  # source address towards the hub
    moved: bool = False
    was_member: bool = False  # an earlier pass applied a membership, or the interface exists
    resolved: Mapping[str, str | None] = field(default_factory=dict)
    # the host firewall and the exit-node policy routing as observed; None: not
    # managed in this pass (tests, render)
    firewall: Ruleset | None = None
    routing: PolicyRouting | None = None
    bypass: tuple[str, ...] = ()  # hub and STUN addresses that keep the host's routes
    key_switch: bool = False  # private_key is the pending rotated key the manifest now has
    warnings: tuple[str, ...] = ()
    # ``memory`` / ``feed`` are exactly what peering.json / feed.json hold (read
    # intact): agent.commit skips rewriting them when the pass leaves them equal
    memory_stored: bool = False
    feed_stored: bool = False

    __repr__ = repr_without("private_key")  # never logged
