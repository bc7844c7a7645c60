"""The reads of a gallery page (card columns, key metrics, references): each takes a list of
asset ids as one bound parameter, on SQLite and PostgreSQL."""

from __future__ import annotations

from storage import queries as q
from storage.db import session_scope


def _asset_id(n: int) -> str:
    return f"c{n:05d}".ljust(64, "0")


def _assets(session, count: int) -> list[str]:  # noqa: ANN001
    for n in range(count):
        q.insert_asset_if_new(session, asset_id=_asset_id(n), kind="prompt", prompt=f"mug {n}",
                              seed=n, generator="library", init="library", tags=[f"t{n}"])
    return [_asset_id(n) for n in range(count)]


def test_asset_cards_reads_the_card_columns_of_the_assets_that_exist(db_engine):
    with session_scope(db_engine) as session:
        ids = _assets(session, 3)
        cards = q.asset_cards(session, [ids[2], "missing", ids[0]])
    assert sorted(cards) == [ids[0], ids[2]]
    card = cards[ids[2]]
    assert (card.prompt, card.kind, card.state, card.tags, card.output_keys) == (
        "mug 2", "prompt", "pending", ["t2"], {})
    assert card.created_at.tzinfo is not None


def test_metrics_of_returns_only_the_named_metrics_of_the_given_assets(db_engine):
    with session_scope(db_engine) as session:
        ids = _assets(session, 3)
        for n, asset_id in enumerate(ids):
            q.set_metrics(session, asset_id, {"mask_iou": n / 10, "duration_s": 5.0})
        found = q.metrics_of(session, ids[:2], ["mask_iou", "mesh_faces"])
    assert found == {ids[0]: {"mask_iou": 0.0}, ids[1]: {"mask_iou": 0.1}}


def test_asset_references_are_in_first_seen_order_without_repeats(db_engine):
    with session_scope(db_engine) as session:
        ids = _assets(session, 2)
        batch = q.create_batch(session, "manifest.yaml").id
        q.add_batch_items(session, batch, [
            {"line": line, "asset_id": ids[0], "status": "accepted", "reference": reference}
            for line, reference in enumerate(["b.png", "a.png", "b.png"], start=1)])
        found = q.asset_references(session, ids)
    assert found == {ids[0]: ["b.png", "a.png"]}

