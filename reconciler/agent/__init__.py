"""reconciler.agent: see docs/architecture.md."""
