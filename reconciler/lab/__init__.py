"""reconciler.lab: see docs/architecture.md."""
