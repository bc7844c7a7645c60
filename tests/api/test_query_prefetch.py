"""A search's query is embedded from the moment its request arrives, once, and only for a
request the server may answer."""

from __future__ import annotations

import threading

import numpy as np
from fastapi.testclient import TestClient

from foundry3d.api.app import create_app
from foundry3d.api.query_prefetch import search_query
from foundry3d.settings import ApiSettings, Settings
from storage import queries
from storage.db import session_scope
from storage.schema import EMBEDDING_DIM
from storage.search import index_prompt

ASSET = "cd" * 32


def _scope(path: str = "/v1/assets", query: bytes = b"q=red+mug", method: str = "GET") -> dict:
    return {"type": "http", "method": method, "path": path, "query_string": query, "headers": []}


def test_the_query_is_the_stripped_last_q_of_a_search_request():
    assert search_query(_scope(query=b"q=%20red+mug+&limit=5")) == "red mug"
    assert search_query(_scope(query=b"q=first&q=second")) == "second"


def test_no_query_is_read_from_other_requests_or_blank_or_overlong_ones():
    assert search_query(_scope(path="/v1/jobs")) is None
    assert search_query(_scope(method="POST")) is None
    assert search_query(_scope(query=b"q=+++")) is None
    assert search_query(_scope(query=b"tag=x")) is None
    assert search_query(_scope(query=b"q=" + b"a" * 501)) is None


def _app(tmp_path):
    app = create_app(Settings(data_dir=tmp_path), ApiSettings())
    with session_scope(app.state.engine) as session:
        queries.insert_asset_if_new(session, asset_id=ASSET, kind="prompt", prompt="a red mug",
                                    seed=1, generator="library", init="library")
        vector = np.zeros(EMBEDDING_DIM, dtype=np.float32)
        vector[0] = 1.0
        index_prompt(session, ASSET, "a red mug", [], vector)
    return app


def _counting_embedder(calls: list[tuple[str, str]]):  # noqa: ANN202
    def embed(text: str) -> np.ndarray:
        calls.append((text, threading.current_thread().name))
        vector = np.zeros(EMBEDDING_DIM, dtype=np.float32)
        vector[0] = 1.0
        return vector

    return embed


def test_a_search_embeds_its_query_once_on_the_prefetch_thread(tmp_path):
    app = _app(tmp_path)
    calls: list[tuple[str, str]] = []
    app.state.embed = _counting_embedder(calls)
    page = TestClient(app).get("/v1/assets", params={"q": " red mug "}).json()
    [card] = page["items"]
    assert card["semantic_score"] == 1.0
    assert calls == [("red mug", calls[0][1])]
    assert calls[0][1].startswith("foundry3d-query-embed")
    assert "search.query_embedding" in page["timing_ms"]


def test_a_request_without_a_token_starts_no_embedding_once_tokens_are_known(tmp_path):
    app = _app(tmp_path)
    with session_scope(app.state.engine) as session:
        queries.create_api_token(session, name="ci", scope="read", token_sha256="0" * 64)
    app.state.auth.configured()  # as the server's start-up does
    calls: list[tuple[str, str]] = []
    app.state.embed = _counting_embedder(calls)
    client = TestClient(app)
    assert client.get("/v1/assets", params={"q": "red mug"}).status_code == 401
    assert client.get("/v1/assets", params={"q": "red mug"},
                      headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert calls == [("red mug", calls[0][1])]  # only the request that carried a token
