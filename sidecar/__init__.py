"""cache-buster: purge a CDN exactly once after a Kubernetes rollout completes."""

__version__ = "0.1.0"
