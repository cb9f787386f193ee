"""meshops: GitOps WireGuard meshes. See docs/architecture.md for the layers."""

__version__ = "0.1.0"
