"""Asset identity: a hash of the canonical request, so the same manifest twice adds nothing."""

from __future__ import annotations

import hashlib
import json

ID_LENGTH = 24


def asset_identity(canonical_request: dict, generator_identity: str) -> str:
    """Hex id of an asset from its canonical request and its generator's weights identity.

    ``canonical_request`` holds the prompt or image content hash, seed, variant, generator, init
    and parameter overrides (see ``AssetRequest.canonical``).
    """
    blob = json.dumps(
        {"request": canonical_request, "generator": generator_identity},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:ID_LENGTH]
