"""reconciler.stun: see docs/architecture.md."""
