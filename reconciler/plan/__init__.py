"""reconciler.plan: see docs/architecture.md."""
