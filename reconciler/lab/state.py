"""Recover a running lab's identities (keys, tunnel IPs) from its directory.

``meshops lab status`` runs in a new process after ``lab up``; it re-reads the
lab's repository rather than keeping a second copy of the truth.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.lab.runner import Lab


def load_identities(lab: Lab) -> None:
    from reconciler.config import load

    result = load(lab.repo)
    if result.repo is None:
        return
    org = result.repo.orgs[lab.topo.org]
    for dev in org.enabled_devices():
        lab.keys[dev.name] = {"wireguard": dev.wireguard_public_key, "identity": dev.identity_public_key}
        lab.tunnel_ip[dev.name] = dev.tunnel_ips[0].split("/")[0]
