"""Persistence: application database, object store, manifests and search."""
