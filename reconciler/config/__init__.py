"""reconciler.config: see docs/architecture.md."""
