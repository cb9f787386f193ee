"""reconciler.agent: converge this device's WireGuard interface onto the signed manifest.

Layer 6 (see docs/architecture.md); never imports ``reconciler.hub``.

- ``config``: ``AgentConfig`` (JSON), ``load_config`` (typed, bounded).
- ``keys``: device key generation for ``meshops agent init`` (0600 files).
- ``fetch``: ``Fetcher`` -- file:// and http(s):// (ETag, long-poll, mTLS), one
  swappable transport; stdlib only.
- ``state``: the state dir (verified manifest cache, rollback floor, applied
  summary, peering and discovery state), all atomic writes.
- ``endpoints``: the signed endpoint feed and this device's report.
- ``source``: trust, hub credentials, the verified manifest, the feed.
- ``gather`` -> ``decide`` (PURE) -> ``commit``: the three steps of a pass, over
  ``inputs.Inputs``; ``memory``: the typed peering memory.
- ``paths``: PURE manifest + feed + handshakes -> per-peer paths (adapter to the
  pure ``peering``).
- ``desired``: PURE manifest + paths -> ``DesiredInterface``.
- ``meshconfig``: hub URL and STUN servers, the config's else the manifest's.
- ``reconcile``: ``reconcile_once(config, *, fetch, backend, now, ...) -> Result``.
- ``loop``: ``AgentLoop`` for ``meshops agent run``.
- ``status``, ``render``: ``meshops agent status`` and ``agent render``.
- ``runtime``: builds the real backend, fetcher and STUN discovery for the CLI.
"""
