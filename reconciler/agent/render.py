"""``meshops agent render --format wg-quick``: a device's config for wg-quick.

For devices no agent runs on (phones, routers): fetch and verify the manifest
exactly as ``agent apply`` does (same trust, same rollback floor, read-only:
nothing in the state dir changes), compute the desired interface, and hand it
to ``reconciler.backends.render.render_wg_quick``. The private key comes from
the config's key file or ``private_key_path``. Called by the CLI.
"""

from __future__ import annotations

from reconciler.agent import desired as desired_mod
from reconciler.agent import paths as paths_mod
from reconciler.agent.config import AgentConfig, read_private_key
from reconciler.agent.reconcile import FetchLike, load_pinned_trust, obtain_manifest, pin_hub_ca
from reconciler.agent.state import StateDir
from reconciler.backends.render import render_wg_quick
from reconciler.errors import ConfigError
from reconciler.model.wg import ObservedInterface
from reconciler.policy import peers_allowed


def render_config(config: AgentConfig, *, fetch: FetchLike, now: float,
                  private_key_path: str | None = None) -> str:
    trust = load_pinned_trust(config)
    state = StateDir(config.state_dir)
    if config.hub and not config.tls_ca:
        pin_hub_ca(config, trust, state)
    got = obtain_manifest(config, fetch, trust, state, now)
    manifest = got.manifest
    if manifest.device(config.name) is None:
        raise ConfigError(f"device {config.name!r} is not in manifest serial {manifest.serial} "
                          f"of org {config.org!r}; nothing to render")
    decision = paths_mod.decide(manifest, config.name,
                                observed=ObservedInterface(config.interface, exists=False),
                                feed=None, state={}, now=now)
    want = desired_mod.compute_desired(
        manifest, config.name, private_key=read_private_key(private_key_path or
                                                            config.private_key),
        interface=config.interface, allowed=peers_allowed(manifest, config.name),
        paths=decision.paths, my_relay=decision.my_relay, listen_port=config.listen_port,
    )
    return render_wg_quick(want.interface)
