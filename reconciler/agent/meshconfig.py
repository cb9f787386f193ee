"""Which hub URL and STUN servers an agent uses: its own config, else the signed manifest.

``effective_endpoints(config_hub, config_stun, manifest)`` is pure. The agent
pass calls it after it has verified a manifest, with ``AgentConfig.hub`` and
``AgentConfig.stun_servers``; the result decides where the endpoint feed and
reports go and which STUN servers discovery asks. Stdlib only, like the rest of
the agent's no-op path.

Precedence, per value: **the agent's own config wins when it sets the value;
otherwise the manifest's (mesh.yaml's) value; otherwise nothing.**

- The agent config is the bootstrap: the agent reached the hub through its
  ``hub`` URL to fetch the very manifest being read. A manifest must not be
  able to move an agent off the URL that works for it. A site may need a
  different address than mesh.yaml's public one (a LAN address, a split-horizon
  name, the lab's namespace address), and a mistyped ``hub_url`` in git would
  otherwise strand every agent of the org at once, beyond the reach of the
  next, corrected manifest.
- The manifest fills in what the operator left unset. That is how mesh.yaml's
  values reach agents: ``meshops agent init --manifest-url`` agents learn the
  hub from it, and every agent learns the STUN servers without a ``--stun``
  flag. They are trusted because the org's signing key signed them.
- ``config_stun`` distinguishes unset (``None``: take the manifest's) from an
  explicit empty list (``()``: this agent must not use STUN, whatever
  mesh.yaml says).

docs/operations.md ("Hub URL and STUN servers") documents the same rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from reconciler.model.manifest import Manifest


class Endpoints(NamedTuple):
    """Where this agent talks to: unpacks as ``(hub_url, stun_servers)``."""

    hub_url: str | None
    stun_servers: tuple[str, ...]


def effective_endpoints(
    config_hub: str | None,
    config_stun: Sequence[str] | None,
    manifest: Manifest | None,
) -> Endpoints:
    """The hub URL and STUN servers to use: the agent config's when set, else the
    manifest's (``None`` before any manifest was verified), else none.

    An empty ``config_hub`` counts as unset (a JSON config may hold ``""``);
    an empty ``config_stun`` does not (it turns STUN off)."""
    hub = config_hub or (manifest.hub_url if manifest is not None else None) or None
    if config_stun is not None:
        stun = tuple(config_stun)
    elif manifest is not None:
        stun = tuple(manifest.stun_servers)
    else:
        stun = ()
    return Endpoints(hub, stun)


__all__ = ["Endpoints", "effective_endpoints"]
