"""Manifest intake: read a manifest (YAML, JSONL, CSV), check every row, resolve and check
its image and bundle references. Entry point: :func:`intake.parse.parse_manifest`."""
