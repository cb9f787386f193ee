"""Step two of a pass, pure: ``decide(inputs, now) -> Decision``.

Called by ``agent.reconcile.reconcile_once`` and ``agent.render`` with the
``Inputs`` that ``agent.gather`` read. No I/O, no clock: the same inputs give
the same decision, so it is tested over recorded inputs with golden
operations. It decides:

1. the paths (``agent.paths.decide_paths``: direct / lan / relay per peer,
   hysteresis) and the new ``Memory``;
2. the desired interface (``agent.desired.compute_desired``: policy-allowed
   peers, the allowed-IPs layout, relays);
3. the operations: ``converge.plan(desired, observed, now, repoint=...,
   rebind=moved)`` for WireGuard and the link, ``converge.plan_firewall`` for
   the ``inet meshops`` table (``policy.firewall.desired_ruleset``: policy
   enforced where traffic is received, and on the forward hook of relays,
   routers and exit nodes) and ``converge.plan_routing`` for the exit-node
   client's policy routing; ``agent.commit`` applies them in
   ``converge.phases`` order;
4. what to persist (memory, own endpoints, the feed, the manifest once it is
   applied, ``applied.json``) and the endpoint report to post;
5. warnings, and the requeue delay (``None``: the normal cadence).

A device absent from the manifest that was never a member here (no interface,
nothing applied) is an enrollment problem, not a removal: ``ConfigError``
naming the fix, and no interface is created. One that was a member keeps its
interface with no peers: cut off, fail-closed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.agent import desired as desired_mod
from reconciler.agent import endpoints as endpoints_mod
from reconciler.agent.endpoints import SelfEndpoints
from reconciler.agent.inputs import Inputs
from reconciler.agent.memory import Memory
from reconciler.agent.paths import decide_paths
from reconciler.converge import Operation, plan, plan_firewall, plan_routing
from reconciler.errors import ConfigError
from reconciler.model.endpoint import Endpoint
from reconciler.model.endpoints import EndpointFeed
from reconciler.model.firewall import Ruleset
from reconciler.model.routing import NO_ROUTING, PolicyRouting
from reconciler.policy import peers_allowed
from reconciler.policy.exitroute import exit_node_of, exit_routing
from reconciler.policy.firewall import desired_ruleset
from reconciler.structs import Record

QUICK_RETRY = 0.25  # after a pass on the cached manifest: the hub was unreachable


class Decision(Record):
    operations: tuple[Operation, ...]
    desired: desired_mod.Desired
    firewall: Ruleset | None  # the inet meshops table; None: not managed
    routing: PolicyRouting  # exit-node policy routing (NO_ROUTING: none)
    memory: Memory
    own: SelfEndpoints
    feed: EndpointFeed | None
    record_manifest: bool  # save the manifest as the rollback floor once converged
    applied: Mapping[str, Any]  # applied.json
    report: Mapping[str, Any] | None  # POST /v1/orgs/{org}/endpoints; None: no hub / cache
    warnings: tuple[str, ...]
    requeue_after: float | None  # None: the normal cadence (interval, or long-poll)


def decide(inputs: Inputs, now: float) -> Decision:
    manifest, me = inputs.manifest, inputs.me
    if manifest.device(me) is None and not inputs.was_member:
        raise ConfigError(
            f"device {me!r} is not in manifest serial {manifest.serial} of org "
            f"{inputs.org!r}: it is not enrolled yet. Add orgs/{inputs.org}/devices/{me}.yaml "
            "(`meshops device add`, or `meshops agent init` prints the YAML), merge it, and "
            "run the agent again. No interface was created.")
    warnings = list(inputs.warnings)
    paths = decide_paths(manifest, me, observed=inputs.observed, feed=inputs.feed,
                         memory=inputs.memory, now=now, resolved=inputs.resolved,
                         hysteresis=inputs.hysteresis, own=inputs.own)
    routing = exit_routing(manifest, me, inputs.interface, bypass=inputs.bypass) \
        if inputs.routing is not None else NO_ROUTING
    want = desired_mod.compute_desired(
        manifest, me, private_key=inputs.private_key, interface=inputs.interface,
        allowed=peers_allowed(manifest, me), paths=paths.paths, my_relay=paths.my_relay,
        listen_port=inputs.listen_port, exit_node=exit_node_of(manifest, me),
        fwmark=routing.fwmark)
    if not want.member:
        warnings.append(f"device {me!r} is not in manifest serial {manifest.serial} of org "
                        f"{inputs.org!r}: removed or disabled in git; all peers dropped")
    keys = frozenset(p.public_key for p in want.interface.peers.values()
                     if p.name in paths.repoint) if paths.repoint else frozenset()
    ops = plan(want.interface, inputs.observed, now, repoint=keys, rebind=inputs.moved)
    firewall = desired_ruleset(manifest, me, inputs.interface) \
        if inputs.firewall is not None else None
    if firewall is not None and inputs.firewall is not None:
        ops += plan_firewall(firewall, inputs.firewall, inputs.interface)
    if inputs.routing is not None:
        ops += plan_routing(routing, inputs.routing, inputs.interface)
    source = inputs.source
    record = source.source == "fetched" or (source.source == "unchanged" and
                                            source.etag != source.cached_etag)
    report = None
    if inputs.hub and source.source != "cache":
        report = build_report(inputs, want, paths.memory)
    return Decision(
        operations=ops, desired=want, firewall=firewall, routing=routing, memory=paths.memory, own=inputs.own, feed=inputs.feed,
        record_manifest=record, applied=applied_summary(inputs, want), report=report,
        warnings=tuple(warnings),
        requeue_after=QUICK_RETRY if source.source == "cache" else None,
    )


def build_report(inputs: Inputs, want: desired_mod.Desired, memory: Memory) -> dict[str, Any]:
    """The endpoint report. Reflections only of peers reached directly: what a
    LAN peer's WireGuard sees is a private address, useless (and misleading)
    to everyone else."""
    names = {p.public_key: p.name for p in want.peers if p.path == "direct"}
    local = str(Endpoint.of(inputs.here, inputs.listen_port)) if inputs.here else None
    return endpoints_mod.build_report(
        inputs.manifest, inputs.me, inputs.observed, names_by_key=names,
        listen_port=inputs.listen_port, own=inputs.own, local=local,
        heard={name: h.at for name, h in memory.heard.items()})


def applied_summary(inputs: Inputs, want: desired_mod.Desired) -> dict[str, Any]:
    """What ``agent status`` reads back: no timestamps, so a no-op pass writes nothing."""
    manifest = inputs.manifest
    # keys in sorted order, here and per peer: agent.state writes this file
    # without re-sorting (sort_keys costs 10 ms at 10,000 peers)
    return {
        "addresses": list(want.interface.addresses),
        "commit": manifest.commit,
        "device": inputs.me,
        "interface": inputs.interface,
        "listen_port": want.interface.listen_port,
        "member": want.member,
        "not_after": manifest.not_after,
        "org": inputs.org,
        "peers": [
            {"endpoint": p.endpoint, "name": p.name, "path": p.path,
             "public_key": p.public_key, "tunnel_ips": list(p.tunnel_ips), "via": p.via}
            for p in want.peers
        ],
        "relay": want.interface.forwarding,  # status checks the FORWARD chain for relays
        "serial": manifest.serial,
    }
