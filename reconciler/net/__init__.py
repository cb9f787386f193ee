"""reconciler.net: see docs/architecture.md."""
