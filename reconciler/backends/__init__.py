"""reconciler.backends: see docs/architecture.md."""
