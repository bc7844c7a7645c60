"""Persistence: the application database (schema, queries, search), object store and manifests.

Submodules are imported where used (``from storage import queries``); importing ``storage``
itself loads nothing heavy.
"""
