"""The pure planner: ``plan(desired, observed, now) -> tuple[Operation, ...]``.

Stdlib only, no I/O. The agent calls ``plan`` and hands the operations to a
backend (``reconciler.backends``); ``--dry-run`` prints them. See
``reconciler.plan.diff`` for the rules (order, endpoint rule) and
``reconciler.plan.ops`` for the operations.
"""

from reconciler.plan.diff import STALE_HANDSHAKE, endpoint_needs_set, plan
from reconciler.plan.keys import public_key
from reconciler.plan.ops import (
    LINK_OPS,
    WG_OPS,
    AddAddress,
    AddPeer,
    AddRoute,
    CreateInterface,
    Operation,
    RemoveAddress,
    RemovePeer,
    RemoveRoute,
    SetForwarding,
    SetLinkUp,
    SetListenPort,
    SetMtu,
    SetPrivateKey,
    UpdatePeer,
)
from reconciler.plan.simulate import simulate

__all__ = [
    "LINK_OPS",
    "STALE_HANDSHAKE",
    "WG_OPS",
    "AddAddress",
    "AddPeer",
    "AddRoute",
    "CreateInterface",
    "Operation",
    "RemoveAddress",
    "RemovePeer",
    "RemoveRoute",
    "SetForwarding",
    "SetLinkUp",
    "SetListenPort",
    "SetMtu",
    "SetPrivateKey",
    "UpdatePeer",
    "endpoint_needs_set",
    "plan",
    "public_key",
    "simulate",
]
