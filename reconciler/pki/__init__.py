"""reconciler.pki: see docs/architecture.md."""
