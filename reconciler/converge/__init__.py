"""The pure planner: ``plan(desired, observed, now) -> tuple[Operation, ...]``.

No I/O, no clock: the stdlib plus ``cryptography``'s X25519 (``keys``); the
import-linter purity contract in pyproject.toml holds it there. The agent
calls ``plan`` and hands the operations to a backend (``reconciler.backends``);
``--dry-run`` prints them. See
``reconciler.converge.planner`` for the rules (order, endpoint rule) and
``reconciler.converge.ops`` for the operations, ``reconciler.converge.firewall``
for the host firewall (``plan_firewall``) and the exit-node client's policy
routing (``plan_routing``), which the agent composes with ``plan``.
"""

from reconciler.converge.firewall import firewall_difference, plan_firewall, plan_routing
from reconciler.converge.keys import public_key
from reconciler.converge.ops import (
    FIREWALL_OPS,
    LINK_OPS,
    ROUTING_OPS,
    WG_OPS,
    AddAddress,
    AddPeer,
    AddPolicyRule,
    AddRoute,
    AddTableRoute,
    CreateInterface,
    Operation,
    RemoveAddress,
    RemovePeer,
    RemovePolicyRule,
    RemoveRoute,
    RemoveTableRoute,
    ReplaceFirewall,
    SetForwarding,
    SetFwmark,
    SetLinkUp,
    SetListenPort,
    SetMtu,
    SetPrivateKey,
    UpdatePeer,
)
from reconciler.converge.planner import STALE_HANDSHAKE, endpoint_needs_set, phases, plan
from reconciler.converge.simulate import simulate

__all__ = [
    "FIREWALL_OPS",
    "LINK_OPS",
    "ROUTING_OPS",
    "STALE_HANDSHAKE",
    "WG_OPS",
    "AddAddress",
    "AddPeer",
    "AddPolicyRule",
    "AddRoute",
    "AddTableRoute",
    "CreateInterface",
    "Operation",
    "RemoveAddress",
    "RemovePeer",
    "RemovePolicyRule",
    "RemoveRoute",
    "RemoveTableRoute",
    "ReplaceFirewall",
    "SetForwarding",
    "SetFwmark",
    "SetLinkUp",
    "SetListenPort",
    "SetMtu",
    "SetPrivateKey",
    "UpdatePeer",
    "endpoint_needs_set",
    "firewall_difference",
    "phases",
    "plan",
    "plan_firewall",
    "plan_routing",
    "public_key",
    "simulate",
]
