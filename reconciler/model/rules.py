"""Policy rules as data: ``Rule`` and its ``PortRange``.

Part of the org repository model (``reconciler.model.repo`` re-exports both),
kept in a module of their own: the agent's policy code (``policy.access``,
``policy.compiled``, ``policy.firewall``) needs these two on every pass, and
importing them from here spares it the rest of the repository model (a dozen
frozen dataclasses, ~10 ms of start-up for every ``meshops agent apply``).
"""

from __future__ import annotations

from reconciler.structs import Record


class PortRange(Record):
    lo: int
    hi: int

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"


class Rule(Record):
    """Accept traffic from any ``src`` selector to any ``dst`` selector.

    Selectors: ``"*"``, ``"group:NAME"``, ``"tag:NAME"``, ``"device:NAME"``,
    ``"user:NAME"`` (the user's devices); destination only: ``"route:CIDR"``
    (addresses inside an advertised subnet route) and ``"internet"`` (addresses
    outside the org's CIDRs and routes, through an exit node). Empty ``ports``
    means all ports."""

    src: tuple[str, ...]
    dst: tuple[str, ...]
    proto: str = "any"
    ports: tuple[PortRange, ...] = ()
    name: str = ""
    index: int = 0
