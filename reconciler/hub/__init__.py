"""reconciler.hub: see docs/architecture.md."""
