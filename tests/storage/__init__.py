"""Tests of storage/: application database, object store, manifests, search."""
