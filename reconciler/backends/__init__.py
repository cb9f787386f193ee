"""WireGuard backends: the only code that talks to WireGuard.

``open_backend(kind, **opts) -> Backend``:

* ``"userspace"`` -- starts/owns wireguard-go, configures it over the UAPI
  socket (``reconciler.backends.userspace.UserspaceBackend``). Options:
  ``netns``, ``run_dir`` (socket dir, default ``/var/run/wireguard``),
  ``state_dir`` (pid and log files, default ``/var/lib/meshops/wireguard``),
  ``wireguard_go`` (binary, default ``wireguard-go``), ``links``.
* ``"kernel"`` -- pyroute2 WireGuard netlink
  (``reconciler.backends.kernel.KernelBackend``). Options: ``netns``, ``links``.
* ``"render"`` -- writes a wg-quick file (``reconciler.backends.render.RenderBackend``).
  Options: ``path`` (required).

``links`` is a ``LinkControl`` for MTU/up/addresses/routes, normally
``reconciler.net.iproute.IPRouteLinks(netns=...)``; the caller (agent) builds
it because ``backends`` does not import ``net``. Modules are imported lazily
so a no-op ``agent apply`` stays fast.
"""

from __future__ import annotations

from typing import Any

from reconciler.backends.base import Backend, LinkControl
from reconciler.errors import ConfigError

KINDS = ("userspace", "kernel", "render")


def open_backend(kind: str, **opts: Any) -> Backend:
    """Build the backend named ``kind`` (see the module docstring for ``opts``)."""
    if kind == "userspace":
        from reconciler.backends.userspace import UserspaceBackend

        return UserspaceBackend(**opts)
    if kind == "kernel":
        from reconciler.backends.kernel import KernelBackend

        return KernelBackend(**opts)
    if kind == "render":
        from reconciler.backends.render import RenderBackend

        return RenderBackend(**opts)
    raise ConfigError(f"unknown backend {kind!r}: choose one of {', '.join(KINDS)}")


__all__ = ["KINDS", "Backend", "LinkControl", "open_backend"]
