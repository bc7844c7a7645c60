from storage import queries as q
from storage.db import session_scope
from tests.storage.test_db_queries import _request
from storage.schema import Asset
def test_dbg(db_engine):
    with session_scope(db_engine) as session:
        st = q.dialect_insert(session, Asset.__table__).values(id="x"*64, kind="prompt", seed=1, variant=0, generator="g", init="i", params={}, tags=[], state="pending", attempts=0, output_keys={}).on_conflict_do_nothing(index_elements=["id"])
        r = session.execute(st)
        print(type(r), r.rowcount, r.returns_rows, st.compile(dialect=session.get_bind().dialect))
