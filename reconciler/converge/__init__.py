"""The pure planner: ``plan(desired, observed, now) -> tuple[Operation, ...]``.

No I/O, no clock: the stdlib plus ``cryptography``'s X25519 (``keys``); the
import-linter purity contract in pyproject.toml holds it there. The agent
calls ``plan`` and hands the operations to a backend (``reconciler.backends``);
``--dry-run`` prints them. See
``reconciler.converge.planner`` for the rules (order, endpoint rule) and
``reconciler.converge.ops`` for the operations.
"""

from reconciler.converge.keys import public_key
from reconciler.converge.ops import (
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
from reconciler.converge.planner import STALE_HANDSHAKE, endpoint_needs_set, phases, plan
from reconciler.converge.simulate import simulate

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
    "phases",
    "plan",
    "public_key",
    "simulate",
]
