"""Benchmark the pipeline's plumbing: orchestration overhead, manifest ingestion, search latency.

Not a test: it prints tables of figures against the targets of issue 4.

1. Orchestration overhead per asset: the real Prefect ``asset`` flow (claim, the 7 stage tasks
   with their database records and object-store writes, release) on SQLite + a local object
   folder, under Prefect's ephemeral mode (a temporary PREFECT_HOME, analytics off), with every
   model computation replaced by a NO-OP MODEL that returns tiny precomputed outputs (a 32-pixel
   bundle, a 12-vertex mesh, fixed metrics, a fixed embedding). Target: < 0.5 s per asset.
2. Ingestion of a generated 10,000-row manifest through ``tasks.ingest.ingest_manifest``
   (parse + validate + upsert + batch items). Target: < 20 s.
3. Search latency (median, p95) over 100,000 synthetic assets with prompt index entries (random
   384-d unit embeddings, generated prompts) for keyword, semantic (exact, pgvector) and hybrid
   search, unfiltered and with the CLI's filters, and the cold first query of a process.
   Target: p95 < 50 ms.

Usage (from the repository root)::

    .venv/bin/python benchmarks/pipeline.py                       # everything, SQLite + PostgreSQL
    .venv/bin/python benchmarks/pipeline.py --skip-search --no-postgres --assets 10
    .venv/bin/python benchmarks/pipeline.py --skip-overhead --skip-ingest --search-rows 20000

PostgreSQL runs on a throw-away server started like the test suite's (``tests/fixtures/
postgres.py``: the pgserver package's binaries, with pgvector).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NOOP = "noop-benchmark"
"""Generator and init name of the no-op model registered by the overhead benchmark."""
TARGET_OVERHEAD_S = 0.5
TARGET_INGEST_S = 20.0
TARGET_SEARCH_P95_MS = 50.0

# Vocabulary of the generated prompts: enough words that a 1-3 word query matches a realistic
# fraction of 100k prompts (a colour: ~1/40 of them; a noun: ~1/120).
COLOURS = (
    "red green blue yellow orange purple pink brown black white grey silver golden teal navy "
    "crimson olive maroon beige ivory cyan magenta amber bronze copper turquoise lavender "
    "scarlet emerald ruby cobalt charcoal cream mint coral indigo violet tan khaki rust"
).split()
MATERIALS = (
    "wooden metal plastic ceramic glass leather rubber stone marble concrete paper cardboard "
    "woven knitted porcelain steel brass iron bamboo wicker velvet denim cotton silk wool clay"
).split()
STYLES = (
    "old new tiny huge rustic modern vintage futuristic cartoon realistic low-poly ornate plain "
    "broken shiny matte worn polished carved painted striped dotted antique simple fancy"
).split()
NOUNS = (
    "mug cup teapot kettle bowl plate fork spoon knife pan pot jar bottle vase lamp chair table "
    "stool bench sofa bed shelf cabinet drawer box crate barrel bucket basket bag backpack "
    "suitcase wallet hat cap helmet boot shoe sneaker glove scarf clock watch phone radio camera "
    "speaker guitar drum violin piano trumpet flute book notebook pencil pen brush ruler hammer "
    "wrench screwdriver saw drill axe shovel rake broom ladder wheel tire bicycle scooter car "
    "truck bus train boat ship plane rocket robot doll teddy ball kite dice chess-piece trophy "
    "crown sword shield bow arrow lantern candle torch mirror frame statue bust skull shell "
    "rock crystal tree bush cactus flower mushroom apple banana pear lemon pumpkin carrot bread "
    "cake donut burger pizza sandwich bottle-cap can tin jug pitcher globe telescope microscope"
).split()
TAGS = ["props", "kitchen", "toys", "tools", "furniture", "food", "outdoor", "music", "lowpoly"]
EXTRAS = (
    "", "", "", "with a handle", "on a stand", "with stripes", "with a lid", "with wheels",
    "covered in moss", "with gold trim", "for a game", "with stickers", "in a box",
)


def log(message: str) -> None:
    print(message, flush=True)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain fixed-width table (numbers formatted by the caller)."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    line = "+-" + "-+-".join("-" * w for w in widths) + "-+"
    print(f"\n{title}\n{line}")
    for n, row in enumerate(cells):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            print(line)
    print(line, flush=True)


def verdict(value: float, target: float) -> str:
    return "PASS" if value < target else "MISS"


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def prompt_text(rng: random.Random) -> str:
    """A varied prompt: ``a rustic red wooden mug with a handle``."""
    words = ["a"]
    if rng.random() < 0.5:
        words.append(rng.choice(STYLES))
    words.append(rng.choice(COLOURS))
    if rng.random() < 0.7:
        words.append(rng.choice(MATERIALS))
    words.append(rng.choice(NOUNS))
    extra = rng.choice(EXTRAS)
    return " ".join(words + ([extra] if extra else []))


def query_text(rng: random.Random) -> str:
    """A search query of 1-3 words: ``red mug``, ``teapot``, ``old wooden chair``."""
    kind = rng.random()
    if kind < 0.3:
        return rng.choice(NOUNS)
    if kind < 0.8:
        return f"{rng.choice(COLOURS)} {rng.choice(NOUNS)}"
    return f"{rng.choice(STYLES)} {rng.choice(MATERIALS)} {rng.choice(NOUNS)}"


def unit_vectors(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    """``(count, dim)`` float32 rows of unit length, uniformly random directions."""
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


# --- databases ----------------------------------------------------------------------------------


def _postgres_fixtures():
    """The test suite's PostgreSQL helpers (``tests/fixtures/postgres.py``), imported as is."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.fixtures import postgres

    return postgres


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A throw-away PostgreSQL server (Unix socket, fsync off); yields its admin URL."""
    pg = _postgres_fixtures()
    bin_dirs = pg.find_postgres_bin_dirs()
    if not bin_dirs:
        raise SystemExit("no PostgreSQL binaries found (pip install pgserver); use --no-postgres")
    server = pg.PostgresServer(bin_dirs[0])
    try:
        started = time.perf_counter()
        url = server.start()
        log(f"PostgreSQL started from {bin_dirs[0]} in {time.perf_counter() - started:.1f} s")
        yield url
    finally:
        server.stop()


def new_database(backend: str, workdir: Path, name: str, admin_url: str | None) -> str:
    """A fresh database at the Alembic head: an SQLite file or a database on the server."""
    from storage.db import upgrade_database

    if backend == "sqlite":
        url = f"sqlite:///{workdir / (name + '.db')}"
    else:
        assert admin_url is not None
        url = _postgres_fixtures().create_database(admin_url, name)
    upgrade_database(url)
    return url


def backends(args: argparse.Namespace, admin_url: str | None) -> list[str]:
    return ["sqlite", "postgresql"] if admin_url else ["sqlite"]


# --- 1. orchestration overhead -------------------------------------------------------------------


class NoopModel:
    """Stand-ins for every model computation of the 7 stages, returning precomputed outputs.

    Registered as the generator and initialiser ``noop-benchmark``; refinement, colour
    projection, the preview sheet, evaluation and the prompt embedding are replaced on their
    modules (the stage tasks import them when they run). What is left in a stage is the
    plumbing: database records, object-store reads and writes of tiny artefacts, Prefect.
    """

    def __init__(self, tile: int = 32) -> None:
        import trimesh
        from PIL import Image

        from models.bundle.spec import Bundle, BundleSpec, encode_normals

        colours = np.full((4, tile, tile, 3), 255, np.uint8)
        normals = np.full((4, tile, tile, 3), 255, np.uint8)
        yy, xx = np.mgrid[:tile, :tile]
        disc = (xx - tile / 2) ** 2 + (yy - tile / 2) ** 2 < (0.35 * tile) ** 2
        for view in range(4):
            colours[view][disc] = (200, 60 + 30 * view, 40)
            normals[view][disc] = encode_normals(np.array([0.0, 0.0, 1.0]))
        self.bundle = Bundle.from_tiles(colours, normals, BundleSpec(producer=NOOP))
        mesh = trimesh.creation.icosahedron()
        mesh.visual.vertex_colors = np.tile([200, 90, 40, 255], (len(mesh.vertices), 1))
        self.mesh = mesh
        buffer = io.BytesIO()
        Image.new("RGB", (5 * 16, 20), "white").save(buffer, format="PNG")
        self.preview = buffer.getvalue()
        self.metrics = {"noop_benchmark": 1.0}
        self.embedding = unit_vectors(np.random.default_rng(0), 1, 384)[0]
        self.seconds = 0.0  # time spent inside the no-op functions (should be ~0)
        self._lock = threading.Lock()

    def _timed(self, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds += time.perf_counter() - started

        return wrapper

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        import models.embed.text
        import models.evaluate.asset
        import models.reconstruct.refine
        import models.reconstruct.texture
        import models.render.preview
        from models.generate.base import Generated
        from models.generate.registry import GENERATORS
        from models.reconstruct.init import INITIALISERS

        def generate(request, context):
            return Generated(bundle=self.bundle, metrics=dict(self.metrics))

        def init(bundle, context):
            return self.mesh.copy()

        def refine(bundle, mesh, params=None, **kwargs):
            return mesh

        def project(bundle, mesh, **kwargs):
            return mesh

        def preview(mesh, path, **kwargs):
            Path(path).write_bytes(self.preview)
            return Path(path)

        def evaluate(bundle, mesh, **kwargs):
            return dict(self.metrics)

        def embed(texts):
            return np.tile(self.embedding, (len(texts), 1))

        patches = [
            (models.reconstruct.refine, "refine_mesh", refine),
            (models.reconstruct.texture, "project_colours", project),
            (models.render.preview, "preview_sheet", preview),
            (models.evaluate.asset, "evaluate_asset", evaluate),
            (models.embed.text, "embed_texts", embed),
        ]
        saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
        GENERATORS[NOOP] = self._timed(generate)
        INITIALISERS[NOOP] = self._timed(init)
        for module, name, fn in patches:
            setattr(module, name, self._timed(fn))
        try:
            yield
        finally:
            GENERATORS.pop(NOOP, None)
            INITIALISERS.pop(NOOP, None)
            for module, name, fn in saved:
                setattr(module, name, fn)


class Meter:
    """Sums of time spent in database statements and in stage bodies (all threads together)."""

    def __init__(self) -> None:
        self.db_s = 0.0
        self.db_statements = 0
        self.body_s = 0.0
        self._lock = threading.Lock()
        self._local = threading.local()

    def reset(self) -> None:
        with self._lock:
            self.db_s, self.db_statements, self.body_s = 0.0, 0, 0.0

    def attach(self, engine) -> None:
        import sqlalchemy as sa

        @sa.event.listens_for(engine, "before_cursor_execute")
        def _before(conn, cursor, statement, parameters, context, executemany):
            self._local.started = time.perf_counter()

        @sa.event.listens_for(engine, "after_cursor_execute")
        def _after(conn, cursor, statement, parameters, context, executemany):
            elapsed = time.perf_counter() - getattr(self._local, "started", time.perf_counter())
            with self._lock:
                self.db_s += elapsed
                self.db_statements += 1

    @contextlib.contextmanager
    def stage_bodies(self) -> Iterator[None]:
        """Time the ``work`` of every stage (no-op model + tiny artefact files + store I/O)."""
        import tasks.stages

        original = tasks.stages.run_stage

        def run_stage(config, asset_id, stage, params, work, **kwargs):
            def timed_work(stage_io):
                started = time.perf_counter()
                try:
                    return work(stage_io)
                finally:
                    with self._lock:
                        self.body_s += time.perf_counter() - started

            return original(config, asset_id, stage, params, timed_work, **kwargs)

        tasks.stages.run_stage = run_stage
        try:
            yield
        finally:
            tasks.stages.run_stage = original


def _insert_noop_assets(config, count: int, label: str) -> list[str]:
    from sqlalchemy.orm import Session

    from storage import queries
    from tasks.resources import engine_for

    rng = random.Random(label)
    ids = []
    with Session(engine_for(config.database_url)) as session:
        for i in range(count):
            asset_id = f"{label}-{i:05d}"
            queries.insert_asset_if_new(
                session,
                asset_id=asset_id,
                kind="prompt",
                prompt=prompt_text(rng),
                seed=i,
                generator=NOOP,
                init=NOOP,
                params={"tile": 32, "refine_coarse_steps": 0, "refine_fine_steps": 0},
                tags=["benchmark"],
            )
            ids.append(asset_id)
        session.commit()
    return ids


def bench_overhead(args: argparse.Namespace, workdir: Path) -> None:
    from prefect import flow
    from sqlalchemy.orm import Session

    from flows.asset import asset_flow, run_assets_here
    from storage import queries
    from tasks.config import PipelineConfig
    from tasks.resources import engine_for
    from tasks.stage import STAGES

    database_url = new_database("sqlite", workdir, "overhead", None)
    store_dir = workdir / "objects"
    library = workdir / "library"
    library.mkdir(exist_ok=True)
    config = PipelineConfig(
        database_url=database_url,
        store_url=store_dir.as_uri(),
        library_path=str(library),
        tile=32,
        lease_seconds=300,
    )
    noop = NoopModel(tile=32)
    meter = Meter()
    meter.attach(engine_for(database_url))

    def run_asset(asset_id: str) -> str:
        return asset_flow(asset_id, config)

    def run_in_catalog(asset_id: str) -> dict:
        # What catalog_flow does in-process: run_assets_here on a worker thread, so each asset
        # is a flow run of its own without Prefect's heartbeat thread.
        return run_assets_here([asset_id], config)

    @flow(name="benchmark-parent")
    def parent(ids: list[str], concurrency: int, timed) -> list:  # noqa: ANN001
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return list(pool.map(timed, ids))

    modes = [
        ("asset_flow as a top-level flow run, sequential", 1, run_asset),
        ("asset_flow as a top-level flow run, concurrency 2", 2, run_asset),
        ("catalog path: a catalog-like parent's worker threads, sequential", 1, run_in_catalog),
        ("catalog path: a catalog-like parent's worker threads, concurrency 2", 2,
         run_in_catalog),
    ]
    results = []
    with noop.installed(), meter.stage_bodies():
        log("overhead: warm-up asset (starts Prefect's ephemeral server; not counted) ...")
        started = time.perf_counter()
        warm = _insert_noop_assets(config, 1, "warmup")
        outcome = run_asset(warm[0])
        log(f"overhead: warm-up took {time.perf_counter() - started:.1f} s ({outcome})")
        for n, (label, concurrency, runner) in enumerate(modes):
            ids = _insert_noop_assets(config, args.assets, f"mode{n}")
            meter.reset()
            noop.seconds = 0.0
            per_asset: list[float] = []

            def timed(asset_id: str, runner=runner, per_asset=per_asset) -> object:
                started = time.perf_counter()
                out = runner(asset_id)
                per_asset.append(time.perf_counter() - started)
                return out

            started = time.perf_counter()
            if runner is run_in_catalog:
                outcomes = parent(ids, concurrency, timed)
            else:
                with ThreadPoolExecutor(max_workers=concurrency) as pool:
                    outcomes = list(pool.map(timed, ids))
            wall = time.perf_counter() - started
            with Session(engine_for(database_url)) as session:
                states = [queries.get_asset(session, i).state for i in ids]
                runs = sum(len(queries.stage_runs(session, i)) for i in ids)
            if states.count("succeeded") != len(ids):
                raise RuntimeError(f"{label}: not every asset succeeded: {outcomes}")
            if runs != len(ids) * len(STAGES):
                raise RuntimeError(f"{label}: expected {len(ids) * len(STAGES)} stage runs")
            results.append((label, concurrency, wall, per_asset, dict(vars(meter)),
                            noop.seconds))
            log(f"overhead: {label}: {wall / len(ids):.3f} s per asset")

    rows = []
    for label, _concurrency, wall, per_asset, m, noop_s in results:
        n = len(per_asset)
        rows.append([
            label,
            n,
            f"{wall:.2f}",
            f"{wall / n:.3f}",
            f"{statistics.median(per_asset):.3f}",
            f"{percentile(per_asset, 95):.3f}",
            f"{m['db_s'] / n:.3f} ({m['db_statements'] // n})",
            f"{(m['body_s'] - noop_s) / n:.3f}",
            f"{noop_s / n * 1000:.2f} ms",
            verdict(wall / n, TARGET_OVERHEAD_S),
        ])
    print_table(
        "1. ORCHESTRATION OVERHEAD PER ASSET -- NO-OP MODEL (stage computations replaced by "
        f"'{NOOP}' returning precomputed tiny outputs); SQLite + local folder; Prefect "
        "ephemeral mode",
        ["mode", "assets", "wall s", "s/asset (wall/N)", "median latency s", "p95 latency s",
         "DB stmt s/asset (#)", "stage I/O s/asset", "no-op model/asset", "< 0.5 s"],
        rows,
    )
    print(
        "s/asset = wall time / N (throughput). Latency = one asset flow, claim to release.\n"
        "DB stmt = time inside DB statements (cursor execute), summed over threads.\n"
        "stage I/O = time in the stage bodies minus the no-op model: writing/reading the tiny "
        "artefacts (bundle PNG, 4 GLBs, preview, metrics.json) and object-store put/get, "
        "summed over threads.\n"
        "The remainder (s/asset - DB - stage I/O, sequential row) is Prefect's flow/task "
        "machinery and the Python glue."
    )


# --- 2. ingestion --------------------------------------------------------------------------------


def write_manifest(path: Path, rows: int, fmt: str, seed: int = 0) -> None:
    """A manifest of ``rows`` prompt items with varied text, seeds, tags, inits and params."""
    rng = random.Random(seed)
    items = []
    for i in range(rows):
        item: dict = {"id": f"item-{i:06d}", "prompt": prompt_text(rng),
                      "seed": rng.randrange(2**31)}
        if rng.random() < 0.6:
            item["tags"] = rng.sample(TAGS, rng.randint(1, 3))
        if rng.random() < 0.3:
            item["init"] = "library"
        if rng.random() < 0.2:
            item["params"] = {"tile": rng.choice([256, 512]),
                              "refine_fine_steps": rng.choice([60, 120])}
        items.append(item)
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(item) + "\n" for item in items))
    else:
        import yaml

        path.write_text(yaml.safe_dump(
            {"defaults": {"tags": ["benchmark"], "params": {"export_format": "glb"}},
             "items": items},
            sort_keys=False,
        ))


def bench_ingest(args: argparse.Namespace, workdir: Path, admin_url: str | None) -> None:
    from intake.parse import parse_manifest
    from tasks.config import PipelineConfig
    from tasks.ingest import ingest_manifest

    manifest = workdir / f"manifest-{args.rows}.{args.manifest_format}"
    write_manifest(manifest, args.rows, args.manifest_format)
    library = workdir / "ingest-library"
    library.mkdir(exist_ok=True)
    (library / "library.jsonl").write_text("".join(
        json.dumps({"id": f"m{i}", "path": f"m{i}.ply", "caption": f"mesh {i}"}) + "\n"
        for i in range(50)
    ))
    log(f"ingest: manifest {manifest.name}, {manifest.stat().st_size / 1e6:.1f} MB")
    started = time.perf_counter()
    parsed = parse_manifest(manifest)
    parse_s = time.perf_counter() - started
    if parsed.rejected:
        raise RuntimeError(f"generated manifest has rejected rows: {parsed.rejected[:3]}")

    rows = []
    for backend in backends(args, admin_url):
        url = new_database(backend, workdir, f"ingest_{backend}", admin_url)
        config = PipelineConfig(database_url=url, store_url=(workdir / "objects").as_uri(),
                                library_path=str(library))
        for attempt in ("first run", "again (all exist)"):
            profiler = None
            if args.profile and attempt == "first run":
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            started = time.perf_counter()
            result = ingest_manifest(manifest, config)
            seconds = time.perf_counter() - started
            if profiler is not None:
                profiler.disable()
                _print_profile(profiler, f"ingest on {backend}")
            assert len(result.asset_ids) == len(parsed.requests), "every request is an asset"
            rows.append([backend, attempt, args.rows, f"{seconds:.2f}", f"{parse_s:.2f}",
                         f"{seconds - parse_s:.2f}", f"{args.rows / seconds:,.0f}",
                         verdict(seconds, TARGET_INGEST_S)])
            log(f"ingest: {backend} {attempt}: {seconds:.2f} s")
    print_table(
        f"2. INGESTION of a {args.rows}-row {args.manifest_format.upper()} manifest "
        "(tasks.ingest.ingest_manifest: parse + validate + upsert + batch items)",
        ["database", "run", "rows", "total s", "parse+validate s", "DB s (total-parse)",
         "rows/s", "< 20 s"],
        rows,
    )


def _print_profile(profiler, title: str, top: int = 25) -> None:
    import pstats

    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("cumulative")
    stats.print_stats(top)
    print(f"\n--- cProfile ({title}), top {top} by cumulative time ---")
    print(out.getvalue().split("\n", 4)[-1].rstrip())
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("tottime").print_stats(15)
    print(f"--- cProfile ({title}), top 15 by own time ---")
    print(out.getvalue().split("\n", 4)[-1].rstrip(), flush=True)


# --- 3. search -----------------------------------------------------------------------------------


def _synthetic_rows(count: int, seed: int = 0, embed=None,  # noqa: ANN001
                    ) -> tuple[list[dict], list[dict], np.ndarray]:
    """Asset rows, prompt-index rows and their ``(count, 384)`` float32 unit embeddings:
    ``embed(texts)`` of the prompts (e.g. the text model's), else uniformly random ones."""
    from storage.schema import EMBEDDING_DIM

    rng = random.Random(seed)
    texts = [prompt_text(rng) for _ in range(count)]
    if embed is None:
        embeddings = unit_vectors(np.random.default_rng(seed), count, EMBEDDING_DIM)
    else:
        embeddings = np.asarray(embed(texts), dtype=np.float32)
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    now = datetime.now(UTC)
    assets, index = [], []
    for i, text in enumerate(texts):
        asset_id = f"{i:024x}"
        tags = rng.sample(TAGS, rng.randint(0, 2))
        state = "succeeded" if rng.random() < 0.9 else rng.choice(["failed", "pending"])
        keys = {name: f"assets/{asset_id}/{name}" for name in
                ("bundle.png", "bundle.json", "coarse.glb", "refined.glb", "textured.glb",
                 "asset.glb", "preview.png", "metrics.json")} if state == "succeeded" else {}
        assets.append({
            "id": asset_id, "kind": "prompt", "prompt": text, "image_ref": None,
            "image_sha256": None, "bundle_ref": None, "seed": rng.randrange(2**31),
            "variant": 0, "generator": "library", "init": "sphere", "params": {},
            "tags": tags, "state": state, "attempts": 1, "output_keys": keys,
            "created_at": now, "updated_at": now,
        })
        index.append({"asset_id": asset_id, "text": text, "tags": tags,
                      "embedding": embeddings[i].astype("<f4").tobytes(), "updated_at": now})
    return assets, index, embeddings


def _load_sqlite(url: str, assets: list[dict], index: list[dict]) -> float:
    """executemany through SQLAlchemy Core (the FTS5 triggers fill the full-text table)."""
    from storage.db import make_engine
    from storage.schema import Asset, PromptIndex

    engine = make_engine(url)
    started = time.perf_counter()
    with engine.begin() as connection:
        for i in range(0, len(assets), 10_000):
            connection.execute(Asset.__table__.insert(), assets[i : i + 10_000])
            connection.execute(PromptIndex.__table__.insert(), index[i : i + 10_000])
    with engine.connect() as connection:
        connection.exec_driver_sql("ANALYZE")
    engine.dispose()
    return time.perf_counter() - started


def _load_postgres(url: str, assets: list[dict], index: list[dict],
                   embeddings: np.ndarray) -> dict[str, float]:
    """COPY into both tables with the search indexes dropped, then rebuild them."""
    from storage.db import make_engine
    from storage.schema import PG_FTS_COLUMN, PG_FTS_INDEX, PG_VECTOR_COLUMN, PG_VECTOR_INDEX

    engine = make_engine(url)
    timings = {}
    columns = list(assets[0])
    vectors = io.StringIO()
    np.savetxt(vectors, embeddings, fmt="%.7g", delimiter=",")
    vector_text = ["[" + line + "]" for line in vectors.getvalue().splitlines()]
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        started = time.perf_counter()
        # Bulk-load practice: drop the search indexes, COPY, rebuild (same definitions as the
        # migration), instead of maintaining them row by row.
        cursor.execute(f"DROP INDEX IF EXISTS {PG_VECTOR_INDEX}")
        cursor.execute(f"DROP INDEX IF EXISTS {PG_FTS_INDEX}")
        with cursor.copy(f"COPY assets ({', '.join(columns)}) FROM STDIN") as copy:
            for row in assets:
                copy.write_row([json.dumps(row[c]) if c in ("params", "tags", "output_keys")
                                else row[c] for c in columns])
        with cursor.copy("COPY prompt_index (asset_id, text, tags, embedding, updated_at, "
                         f"{PG_VECTOR_COLUMN}) FROM STDIN") as copy:
            for row, vector in zip(index, vector_text, strict=True):
                copy.write_row([row["asset_id"], row["text"], json.dumps(row["tags"]),
                                row["embedding"], row["updated_at"], vector])
        raw.commit()
        timings["COPY s"] = time.perf_counter() - started
        started = time.perf_counter()
        cursor.execute(
            f"CREATE INDEX {PG_FTS_INDEX} ON prompt_index USING gin ({PG_FTS_COLUMN})"
        )
        raw.commit()
        timings["GIN build s"] = time.perf_counter() - started
        started = time.perf_counter()
        cursor.execute("SET maintenance_work_mem = '1GB'")
        cursor.execute(f"CREATE INDEX {PG_VECTOR_INDEX} ON prompt_index "
                       f"USING hnsw ({PG_VECTOR_COLUMN} vector_cosine_ops)")
        raw.commit()
        timings["HNSW build s"] = time.perf_counter() - started
        # As autovacuum would do soon after a bulk load: statistics and the visibility map
        # (without it count(*) reads the heap instead of the updated_at index alone).
        started = time.perf_counter()
        raw.driver_connection.autocommit = True
        cursor.execute("VACUUM ANALYZE")
        timings["VACUUM ANALYZE s"] = time.perf_counter() - started
    finally:
        raw.close()
        engine.dispose()
    return timings


def _time_queries(engine, fn: Callable, queries: list, warmup: int = 3,
                  before_each: Callable[[], None] | None = None) -> list[float]:
    """Milliseconds per query, each in a fresh Session; ``warmup`` first queries not counted."""
    from sqlalchemy.orm import Session

    times = []
    for n, query in enumerate(queries[:warmup] + queries):
        if before_each is not None:
            before_each()
        with Session(engine) as session:
            started = time.perf_counter()
            hits = fn(session, *query)
            elapsed = time.perf_counter() - started
        if n >= warmup:
            times.append(elapsed * 1000.0)
        if not hits and not fn.__name__.startswith("keyword"):
            raise RuntimeError(f"{fn.__name__}: no hits for {query[0]!r}")
    return times


def _search_cases(backend: str, args: argparse.Namespace) -> list[tuple[str, Callable, int]]:
    """(label, fn(session, text, vector), number of queries) measured on ``backend``."""
    from storage import search

    cli = "succeeded"  # `foundry3d search` filters on --state succeeded by default

    def keyword(session, text, vector):
        return search.keyword_search(session, text, limit=10)

    def keyword_filtered(session, text, vector):
        return search.keyword_search(session, text, limit=10, state=cli, tag="kitchen")

    def semantic_exact(session, text, vector):
        return search.semantic_search(session, vector, limit=10, method="exact")

    def semantic_exact_filtered(session, text, vector):
        return search.semantic_search(session, vector, limit=10, state=cli, method="exact")

    def semantic_exact_rare(session, text, vector):
        return search.semantic_search(session, vector, limit=10, state="pending",
                                      tag="music", method="exact")

    def semantic_pgvector(session, text, vector):
        return search.semantic_search(session, vector, limit=10, method="pgvector")

    def hybrid_cli(session, text, vector):
        return search.hybrid_search(session, text, vector, limit=10, state=cli)

    def hybrid_exact_cli(session, text, vector):
        return search.hybrid_search(session, text, vector, limit=10, state=cli, method="exact")

    def hybrid_unfiltered(session, text, vector):
        return search.hybrid_search(session, text, vector, limit=10)

    n = args.queries
    cases = [
        ("keyword", keyword, n),
        ("keyword, state+tag filter", keyword_filtered, n),
        ("semantic exact (cached matrix)", semantic_exact, n),
        ("semantic exact, state filter", semantic_exact_filtered, n),
        ("semantic exact, rare filter (~0.5%)", semantic_exact_rare, n),
    ]
    if backend == "postgresql":
        cases += [
            ("semantic pgvector (HNSW)", semantic_pgvector, n),
            ("hybrid as CLI (pgvector, state filter)", hybrid_cli, n),
            ("hybrid exact, state filter", hybrid_exact_cli, n),
        ]
    else:
        cases.append(("hybrid as CLI (exact, state filter)", hybrid_cli, n))
    cases += [
        ("hybrid, no filter", hybrid_unfiltered, n),
        ("COLD semantic exact (cache cleared: a fresh CLI process)", semantic_exact,
         args.cold_queries),
    ]
    return cases


def bench_search(args: argparse.Namespace, workdir: Path, admin_url: str | None) -> None:
    from storage import search
    from storage.db import make_engine

    started = time.perf_counter()
    assets, index, embeddings = _synthetic_rows(args.search_rows)
    log(f"search: generated {args.search_rows:,} synthetic assets in "
        f"{time.perf_counter() - started:.1f} s")
    rng = random.Random(1)
    nprng = np.random.default_rng(1)
    texts = [query_text(rng) for _ in range(args.queries)]
    vectors = unit_vectors(nprng, args.queries, embeddings.shape[1])
    queries = list(zip(texts, vectors, strict=True))

    for backend in backends(args, admin_url):
        url = new_database(backend, workdir, f"search_{backend}", admin_url)
        log(f"search: bulk-loading {backend} ...")
        if backend == "sqlite":
            seconds = _load_sqlite(url, assets, index)
            load_row = [backend, f"{seconds:.1f}", "executemany (Core), FTS5 triggers"]
        else:
            timings = _load_postgres(url, assets, index, embeddings)
            load_row = [backend, f"{sum(timings.values()):.1f}",
                        ", ".join(f"{k} {v:.1f}" for k, v in timings.items())]
        print_table(
            f"3a. SEARCH DATA on {backend}: {args.search_rows:,} synthetic assets + prompt index "
            "rows (random 384-d unit embeddings, generated prompts)",
            ["database", "load s", "how"], [load_row],
        )
        engine = make_engine(url)
        search.clear_embedding_cache()
        rows = []
        for label, fn, count in _search_cases(backend, args):
            cold = label.startswith("COLD")
            log(f"search: {backend} {label}: {count} queries ...")
            times = _time_queries(engine, fn, queries[:count], warmup=0 if cold else 3,
                                  before_each=search.clear_embedding_cache if cold else None)
            p95 = percentile(times, 95)
            rows.append([label, count, f"{statistics.median(times):.1f}", f"{p95:.1f}",
                         f"{max(times):.1f}", verdict(p95, TARGET_SEARCH_P95_MS)])
        engine.dispose()
        search.clear_embedding_cache()
        load = os.getloadavg()
        print_table(
            f"3b. SEARCH LATENCY on {backend}, {args.search_rows:,} rows (limit 10; a fresh "
            f"Session per query; 3 warm-up queries not counted; load average {load[0]:.1f})",
            ["search", "queries", "median ms", "p95 ms", "max ms", "p95 < 50 ms"], rows,
        )
    print(
        "Queries: 1-3 words from the prompt vocabulary (e.g. 'red mug'); query embeddings are "
        "random unit vectors (no text model in the loop). Filters: state 'succeeded' (~90% of "
        "rows, the CLI default), tag 'kitchen' (~11%), rare = state 'pending' + tag 'music' "
        "(~0.5%).\nExact search reads the embedding matrix once per process and database, then "
        "checks a (count, max(updated_at)) stamp per query; the COLD row clears that cache "
        "before every query, which is what a one-shot `foundry3d search` process pays."
    )


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--assets", type=int, default=20, help="assets per overhead mode")
    parser.add_argument("--rows", type=int, default=10_000, help="manifest rows to ingest")
    parser.add_argument("--manifest-format", choices=["jsonl", "yaml"], default="jsonl")
    parser.add_argument("--search-rows", type=int, default=100_000, help="synthetic assets")
    parser.add_argument("--queries", type=int, default=200, help="queries per search kind")
    parser.add_argument("--cold-queries", type=int, default=10,
                        help="queries with the embedding cache cleared before each")
    parser.add_argument("--postgres", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure on a throw-away PostgreSQL server")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument("--profile", action="store_true",
                        help="print a cProfile of the first ingestion on each database")
    parser.add_argument("--prefect-log-level", default="WARNING",
                        help="PREFECT_LOGGING_LEVEL for the overhead runs (default WARNING)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where databases and objects go (default: a temporary folder)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="foundry3d-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # Prefect ephemeral mode in a private home; set before anything imports Prefect.
    os.environ["PREFECT_HOME"] = str(workdir / "prefect-home")
    os.environ["PREFECT_LOGGING_LEVEL"] = args.prefect_log_level
    os.environ.pop("PREFECT_API_URL", None)
    # What the CLI sets up: the ephemeral server's start timeout and write batching.
    from foundry3d.prefect_defaults import apply_prefect_defaults

    apply_prefect_defaults()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    load = os.getloadavg()
    print(f"foundry3d pipeline benchmark -- {os.cpu_count()} CPU cores, load average "
          f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} at start (cores shared with other work: "
          f"figures are upper bounds); workdir {workdir}", flush=True)
    with contextlib.ExitStack() as stack:
        needs_pg = args.postgres and not (args.skip_ingest and args.skip_search)
        admin_url = stack.enter_context(postgres_server()) if needs_pg else None
        if not args.skip_overhead:
            bench_overhead(args, workdir)
        if not args.skip_ingest:
            bench_ingest(args, workdir, admin_url)
        if not args.skip_search:
            bench_search(args, workdir, admin_url)
    load = os.getloadavg()
    print(f"\nload average at end {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")


if __name__ == "__main__":
    main()
