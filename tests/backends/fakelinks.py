"""A recording ``LinkControl`` for backend unit tests."""

from __future__ import annotations

from collections.abc import Sequence

from reconciler.converge.ops import LINK_OPS, Operation
from reconciler.model.wg import ObservedInterface


class FakeLinks:
    def __init__(self, state: ObservedInterface | None = None) -> None:
        self.state = state
        self.applied: list[Operation] = []
        self.created: list[str] = []
        self.closed = False

    def observe(self, name: str) -> ObservedInterface:
        return self.state or ObservedInterface(name=name, exists=True, up=True, mtu=1420)

    def apply(self, ops: Sequence[Operation]) -> None:
        self.applied += [op for op in ops if isinstance(op, LINK_OPS)]

    def create_wireguard(self, name: str) -> None:
        self.created.append(name)

    def close(self) -> None:
        self.closed = True
