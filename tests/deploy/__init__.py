"""Checks of deploy/: the compose file, the Kubernetes manifests, the Dockerfile."""
