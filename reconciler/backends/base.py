"""The ``Backend`` Protocol every WireGuard backend implements.

The agent (``reconciler.agent``) opens a backend with
``reconciler.backends.open_backend(kind, **opts)``, calls ``observe(name)``,
feeds the result to ``reconciler.converge.plan``, and hands the operations to
``apply``. Then it observes again to verify.

WireGuard state (keys, port, peers) is the backend's own job. Link state
(MTU, up, addresses, routes, IP forwarding) is delegated to a ``LinkControl`` -- in
production ``reconciler.net.iproute.IPRouteLinks`` -- which the caller
injects as ``links=`` (``backends`` and ``net`` are sibling layers and do not
import each other). Without ``links`` a backend reports no addresses or
routes and refuses link operations with ``BackendError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from reconciler.converge.ops import Operation
from reconciler.model.wg import ObservedInterface

DEFAULT_RUN_DIR = "/var/run/wireguard"
DEFAULT_STATE_DIR = "/var/lib/meshops/wireguard"


@runtime_checkable
class Backend(Protocol):
    """Observe and change one host's WireGuard interfaces."""

    def observe(self, name: str) -> ObservedInterface:
        """Whole current state of interface ``name`` (``exists=False`` if absent).

        Raises ``BackendUnavailable`` when the interface cannot be read right now.
        """
        ...

    def apply(self, ops: Sequence[Operation]) -> None:
        """Carry out ``ops`` in order.

        Raises ``BackendError`` (refused, permanent) or ``BackendUnavailable``
        (try again). Some operations may have been applied when it raises:
        re-observe and re-plan.
        """
        ...

    def close(self) -> None:
        """Release sockets. Never stops a wireguard-go daemon."""
        ...


@runtime_checkable
class LinkControl(Protocol):
    """Link-level state of an interface: MTU, up/down, addresses, routes.

    ``observe`` returns an ``ObservedInterface`` with only ``name``,
    ``exists``, ``up``, ``mtu``, ``addresses``, ``routes`` and ``forwarding``
    (IP forwarding in the interface's namespace, ``None`` = unknown) filled in.
    ``apply`` carries out the ``reconciler.converge.ops.LINK_OPS`` among ``ops``
    and ignores the others. ``create_wireguard(name)`` makes a kernel
    WireGuard link (kernel backend only).
    """

    def observe(self, name: str) -> ObservedInterface: ...

    def apply(self, ops: Sequence[Operation]) -> None: ...

    def create_wireguard(self, name: str) -> None: ...

    def close(self) -> None: ...
