"""Build the real effects for an ``AgentConfig``: backend, fetcher, STUN discovery.

Called by the CLI (``meshops agent apply|run|status``) and the lab; tests
pass fakes to ``reconcile_once`` instead. Heavy modules (pyroute2 through
``reconciler.net.iproute``, pystun3 through ``reconciler.stun.client``) are
imported here, lazily, only when the command needs them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from reconciler.agent.config import AgentConfig
from reconciler.agent.fetch import Fetcher, TlsConfig
from reconciler.backends.base import Backend
from reconciler.errors import FetchError


def open_agent_backend(config: AgentConfig) -> Backend:
    """The configured backend with pyroute2 link control in ``config.netns``."""
    from reconciler.backends import open_backend
    from reconciler.net.iproute import IPRouteLinks

    opts: dict[str, Any] = {"netns": config.netns}
    if config.backend == "userspace":
        opts["state_dir"] = os.path.join(config.state_dir, "wireguard")
    opts.update(config.backend_options)
    links = IPRouteLinks(netns=config.netns)
    try:
        return open_backend(config.backend, links=links, **opts)
    except BaseException:
        links.close()
        raise


def make_fetcher(config: AgentConfig) -> Fetcher:
    """HTTP(S) fetcher with mTLS material.

    Without ``tls_cert``/``tls_ca`` in the config, a hub is reached with the
    device certificate the agent fetched into the state dir (``device.crt``,
    key: the identity key) and verified against the org CA from the pinned
    trust (``hub-ca.pem``), under the name ``ORG.hub`` that the hub's
    certificate carries (so a hub addressed by IP verifies too).
    """
    from reconciler.agent.state import DEVICE_CERT, HUB_CA

    state = config.state_path
    if config.tls_ca:
        tls = TlsConfig(cert=config.tls_cert or str(state(DEVICE_CERT)),
                        key=config.tls_key or config.identity_key, ca=config.tls_ca)
    elif config.hub:
        tls = TlsConfig(cert=config.tls_cert or str(state(DEVICE_CERT)),
                        key=config.tls_key or config.identity_key, ca=str(state(HUB_CA)),
                        server_name=f"{config.org}.hub")
    else:
        tls = TlsConfig(cert=config.tls_cert, key=config.tls_key or config.identity_key)
    return Fetcher(timeout=config.timeout, tls=tls)


def make_discover(config: AgentConfig) -> Callable[[int, Sequence[str]], Any] | None:
    """A ``discover(listen_port, servers)`` callable (STUN from the WireGuard
    port), or None when discovery is off. The pass passes the servers: the
    config's, else the signed manifest's (``agent.meshconfig``); it never uses
    public defaults."""
    if not config.discover:
        return None

    def discover(listen_port: int, servers: Sequence[str]) -> Any:
        from reconciler.stun.client import discover as stun_discover

        try:
            return stun_discover(listen_port, list(servers), timeout=2.0,
                                 exclude_ifnames=(config.interface,))
        except OSError as exc:
            raise FetchError(f"STUN discovery from port {listen_port}: {exc}") from exc

    return discover


def make_host(config: AgentConfig) -> tuple[Any, Any]:
    """The host firewall (``net.nftables.Nftables``) and the policy routing
    (``net.iproute.IPRouteLinks``) in ``config.netns``: every real pass manages
    both (the ``inet meshops`` table enforces policy; the routing is the
    exit-node client's)."""
    from reconciler.net.iproute import IPRouteLinks
    from reconciler.net.nftables import Nftables

    return Nftables(netns=config.netns), IPRouteLinks(netns=config.netns)


def make_public_fetcher(config: AgentConfig) -> Fetcher:
    """A fetcher that does not verify TLS, for trust roots only: they are signed
    and checked against the pinned chain (``agent.source.walk_roots``), and after
    a CA rotation the hub's new certificate cannot be verified before the new
    root is known."""
    return Fetcher(timeout=config.timeout, tls=TlsConfig(verify=False))
