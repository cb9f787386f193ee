"""``meshops agent render --format wg-quick``: a device's config for wg-quick.

For devices no agent runs on (phones, routers). It reuses the pass: the
manifest is fetched and verified exactly as ``agent apply`` does
(``agent.source``: same trust, same rollback floor, and the same public
credentials for a hub), and ``agent.decide`` computes the desired interface
from ``Inputs`` that describe a device seen for the first time: no interface,
no feed, no memory. Nothing else in the state dir changes: no manifest is
recorded as applied. The private key comes from the config's key file or
``private_key_path``. Called by the CLI.
"""

from __future__ import annotations

from reconciler.agent.config import AgentConfig, read_private_key
from reconciler.agent.decide import decide
from reconciler.agent.endpoints import SelfEndpoints
from reconciler.agent.fetch import FetchLike
from reconciler.agent.gather import resolve_host, resolve_static
from reconciler.agent.inputs import Inputs
from reconciler.agent.memory import Memory
from reconciler.agent.source import manifest_and_trust
from reconciler.agent.state import StateDir
from reconciler.backends.render import render_wg_quick
from reconciler.errors import ConfigError
from reconciler.model.wg import ObservedInterface


def render_config(config: AgentConfig, *, fetch: FetchLike, now: float,
                  private_key_path: str | None = None) -> str:
    warnings: list[str] = []
    got, _ = manifest_and_trust(config, fetch, None, StateDir(config.state_dir), now, wait=None,
                                warnings=warnings)
    manifest = got.manifest
    if manifest.device(config.name) is None:
        raise ConfigError(f"device {config.name!r} is not in manifest serial {manifest.serial} "
                          f"of org {config.org!r}; nothing to render")
    inputs = Inputs(
        me=config.name, org=config.org, interface=config.interface,
        listen_port=config.listen_port or manifest.listen_port, hysteresis={}, hub=False,
        manifest=manifest, source=got, feed=None,
        observed=ObservedInterface(config.interface, exists=False), memory=Memory(),
        own=SelfEndpoints(),
        private_key=read_private_key(private_key_path or config.private_key),
        was_member=True, resolved=resolve_static(manifest, resolve_host))
    return render_wg_quick(decide(inputs, now).desired.interface)
