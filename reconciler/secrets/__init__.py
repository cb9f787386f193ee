"""reconciler.secrets: see docs/architecture.md."""
