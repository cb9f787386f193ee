"""reconciler.policy: see docs/architecture.md."""
