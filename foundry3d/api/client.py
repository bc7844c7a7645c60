"""A client of a running API server for the CLI: `foundry3d search` asks it first."""

from __future__ import annotations

from types import SimpleNamespace

SERVER_TIMEOUT_S = 0.5
"""How long `foundry3d search` waits for a running API server before searching itself."""


def search_via_server(query: str, *, limit: int, state: str | None, tag: str | None):  # noqa: ANN201
    """Search hits (``SearchHit``-like records) from a running API server on this process's
    database, or None.

    None when no server answers at FOUNDRY_API_URL within :data:`SERVER_TIMEOUT_S`, or when it
    serves another database (its health names a fingerprint of its database URL).
    """
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    from foundry3d.api.fingerprint import database_fingerprint
    from foundry3d.settings import get_api_settings, get_settings

    api = get_api_settings()
    headers = {"Authorization": f"Bearer {api.token}"} if api.token else {}

    def get(path: str) -> dict:
        request = urllib.request.Request(api.url.rstrip("/") + path, headers=headers)
        with urllib.request.urlopen(request, timeout=SERVER_TIMEOUT_S * 4) as response:
            return json.loads(response.read())

    try:
        with urllib.request.urlopen(api.url.rstrip("/") + "/v1/health",
                                    timeout=SERVER_TIMEOUT_S) as response:
            health = json.loads(response.read())
        if health.get("database") != database_fingerprint(get_settings().resolved_database_url):
            return None
        params = {"q": query, "limit": limit, **({"state": state} if state else {}),
                  **({"tag": tag} if tag else {})}
        page = get("/v1/assets?" + urllib.parse.urlencode(params))
    except (OSError, ValueError, urllib.error.URLError):
        return None
    # Plain records with SearchHit's attribute names: importing storage.search (SQLAlchemy,
    # numpy) would cost a cold process about as much as the whole request.
    return [SimpleNamespace(asset_id=item["asset_id"], score=item.get("score", 0.0),
                            keyword_score=item.get("keyword_score"),
                            semantic_score=item.get("semantic_score"),
                            text=item.get("prompt") or "", state=item["state"],
                            output_keys={"asset.glb": f"assets/{item['asset_id']}/asset.glb"}
                            if item.get("glb_url") else {},
                            references=item.get("references") or [],
                            library_match_weak=item.get("library_match_weak"))
            for item in page["items"]]
