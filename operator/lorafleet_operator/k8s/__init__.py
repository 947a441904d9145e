"""Kubernetes I/O: one async client, a few verbs per kind."""
