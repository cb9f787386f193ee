"""reconciler.pki: the org CA, device certificates and signed manifests.

Layer 4 (see docs/architecture.md). ``cryptography`` is owned here: its
exceptions become ``PkiError`` / ``ManifestRefused`` at this boundary.

- ``pki.keys``: Ed25519 key helpers (raw base64, PEM, key ids).
- ``pki.ca``: ``init_ca`` and the CA secret document (``secrets/ORG-ca.sops.yaml``).
- ``pki.certs``: device certificates, renewal, chain checks.
- ``pki.envelope``: DSSE sign/open, ``Trust`` / ``load_trust`` (agents import this).
- ``pki.manifest``: build, canonical JSON, schema check, ``verify_manifest``.

This package does not import ``reconciler.secrets`` (same layer, independent);
callers above (hub, cli) do the SOPS part.
"""
