"""Benchmark the HTTP API: warm search latency over 100,000 assets, submit-to-first-stage.

Not a test: it prints figures against the targets of issue 15.

1. ``GET /v1/assets?q=...&limit=20`` on a real ``foundry3d api`` server process (uvicorn, the
   search model loaded at start-up) over 100,000 synthetic assets with prompt-index entries,
   filled as ``benchmarks/pipeline.py`` fills them (SQLite: executemany; PostgreSQL: COPY, then
   the search indexes rebuilt). Varied 1-3 word queries over one kept-alive connection, after
   warm-up queries; client-side wall time per request. Target: p95 <= 20 ms, on SQLite and on
   PostgreSQL.
   Also the server's search step alone (``SearchIndex.search`` in this process, no HTTP or
   model), and CPU times beside wall times: on a shared machine a request waits for a core.
2. Submit-to-first-stage: ``POST /v1/jobs`` of a one-prompt manifest (the ``library`` generator
   on a three-mesh library at 64-pixel tiles) to the moment its first stage starts, as the
   server records it (``first_stage_s`` of ``GET /v1/jobs/{id}``), on the same servers.

Usage (from the repository root)::

    .venv/bin/python benchmarks/api.py                      # SQLite and PostgreSQL
    .venv/bin/python benchmarks/api.py --no-postgres --rows 20000 --queries 100
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import pipeline as fill  # noqa: E402 - benchmarks/pipeline.py: the 100k-row fillers

from storage.search_index import SIGN_MIN_RECALL  # noqa: E402

TARGET_SEARCH_P95_MS = 20.0
METHODS = ("exact", "approximate", "sign shortlist")
"""How the index alone is timed: float32 over every entry; int8 over every entry, then float32;
the server's way (int8 over the rows nearest by sign where the index shows that holds)."""
START_TIMEOUT_S = 300.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_library(folder: Path) -> Path:
    """Three coloured primitives with captions, indexed at 64-pixel tiles."""
    import trimesh

    from models.embed.text import get_text_embedder
    from models.library.index import build_library_index

    folder.mkdir(parents=True, exist_ok=True)
    shapes = [("crate", "a wooden crate box", trimesh.creation.box(extents=(1.0, 0.6, 0.8))),
              ("ball", "a round rubber ball", trimesh.creation.icosphere(subdivisions=3))]
    lines = []
    for name, caption, mesh in shapes:
        mesh.visual.vertex_colors = np.tile([150, 100, 50, 255], (len(mesh.vertices), 1))
        mesh.export(folder / f"{name}.ply")
        lines.append(json.dumps({"id": name, "path": f"{name}.ply", "caption": caption,
                                 "tags": ["bench"], "up": "y", "licence": "CC0 (generated)"}))
    (folder / "library.jsonl").write_text("\n".join(lines) + "\n")
    build_library_index(folder, embedder=get_text_embedder(), tile=64)
    return folder


@contextlib.contextmanager
def api_server(database_url: str, workdir: Path, library: Path) -> Iterator[str]:
    """A ``foundry3d api`` process on a free loopback port; yields its base URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FOUNDRY_", "PREFECT_"))}
    env.update(FOUNDRY_DATABASE_URL=database_url, FOUNDRY_STORE_URL=(workdir / "objects").as_uri(),
               FOUNDRY_LIBRARY_PATH=str(library), FOUNDRY_DATA_DIR=str(workdir / "data"),
               PREFECT_HOME=str(workdir / f"prefect-{port}"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONPATH=str(REPO))
    log_file = open(workdir / f"api-{port}.log", "w")  # noqa: SIM115 - lives with the process
    process = subprocess.Popen([sys.executable, "-m", "foundry3d", "api", "--port", str(port),
                                "--concurrency", "1"], env=env, stdout=log_file,
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.perf_counter()
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the API server exited; see {log_file.name}")
            with contextlib.suppress(OSError):
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/openapi.json")
                if connection.getresponse().status == 200:
                    break
            if time.perf_counter() - started > START_TIMEOUT_S:
                raise SystemExit(f"the API server did not start; see {log_file.name}")
            time.sleep(0.5)
        log(f"API server up in {time.perf_counter() - started:.1f} s at {url}")
        # Steady state: the index loaded and its common words read ahead, and the job runner's
        # warm-up (Prefect and the pipeline imported in the background) done, so that neither
        # competes for the cores while searches are timed.
        while True:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/v1/health")
            health = json.loads(connection.getresponse().read())
            if health.get("search_ready") and health.get("workers_ready"):
                break
            if time.perf_counter() - started > START_TIMEOUT_S:
                raise SystemExit(f"the server did not get ready; see {log_file.name}")
            time.sleep(0.5)
        log(f"search index and workers ready in {time.perf_counter() - started:.1f} s")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log_file.close()


def time_search(url: str, queries: list[str], warmup: int) -> tuple[list[float], dict]:
    """Milliseconds per ``GET /v1/assets?q=`` over one kept-alive connection (the first
    ``warmup`` queries untimed), and the request's profile: per part, the medians of wall and
    CPU milliseconds (``part -> (wall, cpu)``), from the server's own split (``timing_ms`` and
    ``cpu_ms`` of the reply, ``Server-Timing`` for the whole app) and the client's clock; also
    ``cpu`` and ``cpu_p95``, the app's CPU time per request, every thread of the server
    process included (on a shared machine wall times include waiting for a core; CPU times do
    not)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    times, samples = [], []
    for n, text in enumerate(queries):
        path = "/v1/assets?" + urllib.parse.urlencode({"q": text, "limit": 20})
        started = time.perf_counter()
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        elapsed = (time.perf_counter() - started) * 1000.0
        if response.status != 200 or not json.loads(body)["items"]:
            raise RuntimeError(f"search {text!r}: {response.status} {body[:200]!r}")
        if n >= warmup:
            times.append(elapsed)
            reply = json.loads(body)
            app = dict(item.strip().split(";dur=")
                       for item in response.getheader("server-timing").split(","))
            sample = {k: (reply["timing_ms"][k], reply["cpu_ms"][k]) for k in reply["cpu_ms"]}
            # The query is embedded inside "search" (on its worker thread) or before it.
            handler = [sample[k] for k in ("embed", "search", "cards") if k in sample]
            app_wall, app_cpu = float(app["app"]), float(app["cpu"])
            sample["framework (routing, auth, JSON)"] = (
                app_wall - sum(w for w, _ in handler), app_cpu - sum(c for _, c in handler))
            sample["app (Server-Timing)"] = (app_wall, app_cpu)
            sample["HTTP + waits (client - app)"] = (elapsed - app_wall, float("nan"))
            # The query is embedded from the request's arrival on (foundry3d.api.query_prefetch),
            # partly before the handler starts: the app's CPU time is the request's.
            sample["cpu"] = (app_cpu, app_cpu)
            samples.append(sample)
    connection.close()
    parts = dict.fromkeys(k for sample in samples for k in sample)  # not every request has all
    split = {k: (statistics.median(s[k][0] for s in samples if k in s),
                 statistics.median(s[k][1] for s in samples if k in s)) for k in parts}
    split["cpu_p95"] = fill.percentile([s["cpu"][1] for s in samples], 95)
    split["cpu"] = split["cpu"][1]
    return times, split


CORPUS_CACHE = Path.home() / ".cache" / "foundry3d" / "benchmarks"
"""Where the synthetic prompts' embeddings are kept between runs (float16, 77 MB for 100k)."""


def corpus_embedder(rows: int):  # noqa: ANN201 - texts -> (n, 384) float32
    """The text model's embeddings of a list of prompts, read from :data:`CORPUS_CACHE` when
    the same prompts (seed 0, ``rows`` of them, same model) were embedded before."""

    def embed(texts: list[str]) -> np.ndarray:
        from models.embed.text import get_text_embedder

        embedder = get_text_embedder()
        path = CORPUS_CACHE / f"prompts-{rows}-{embedder.identity.replace(':', '-')}.npy"
        if path.exists():
            cached = np.load(path)
            if cached.shape == (len(texts), 384):
                return cached.astype(np.float32)
        distinct = list(dict.fromkeys(texts))
        started = time.perf_counter()
        vectors = embedder.embed_texts(distinct)
        log(f"embedded {len(distinct)} distinct prompts in {time.perf_counter() - started:.0f} s")
        position = {text: i for i, text in enumerate(distinct)}
        result = vectors[[position[text] for text in texts]].astype(np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, result.astype(np.float16))
        return result

    return embed


def embed_queries(queries: list[str]) -> np.ndarray:
    """``(Q, 384)`` query embeddings, as the server makes them (torch, one thread)."""
    import torch

    from models.embed.text import get_text_embedder

    torch.set_num_threads(1)
    embedder = get_text_embedder()
    return np.stack([embedder.embed_texts([text])[0] for text in queries])


def time_index(database_url: str, queries: list[str], vectors: np.ndarray,
               warmup: int) -> dict[str, dict[str, float]]:
    """The server's search step alone, in this process: per method (``exact``,
    ``approximate``), milliseconds of wall and CPU time per
    :meth:`storage.search_index.SearchIndex.search` (``limit`` 21, as a first page of 20
    asks) with the queries' embeddings, after ``warmup`` untimed ones; no HTTP, no model.
    The others also have their recall@10 against ``exact``: the share of exact's 10 best
    hits that it returns among its 10 best, over the timed queries, for the hybrid ranking
    (``recall``) and the semantic one alone (``recall_semantic``, keyword weight 0); the sign
    shortlist also the recall its index measured on its own rows (``own_recall``, the
    figure that decides whether the server uses it)."""
    import torch
    from sqlalchemy.orm import Session

    from storage.db import make_engine
    from storage.search_index import SearchIndex

    torch.set_num_threads(1)
    engine = make_engine(database_url)
    figures: dict[str, dict[str, float]] = {}
    best: dict[tuple[str, float], list[list[str]]] = {}
    for label in METHODS:
        # Each method pays the first use of each word alike; "sign shortlist" is the server's.
        index = SearchIndex(sign_shortlist=label == "sign shortlist")
        method = "exact" if label == "exact" else "approximate"
        walls, cpus = [], []
        with Session(engine) as session:
            recall = index.warm_semantic(session)
        if label == "sign shortlist":
            log(f"sign shortlist: the index's own recall@10 {recall}")
        for n, (text, vector) in enumerate(zip(queries, vectors, strict=True)):
            with Session(engine) as session:
                started, cpu = time.perf_counter(), time.process_time()
                hits = index.search(session, text, vector, limit=21, method=method)
                if n >= warmup:
                    walls.append((time.perf_counter() - started) * 1000.0)
                    cpus.append((time.process_time() - cpu) * 1000.0)
                    best.setdefault((label, 0.5), []).append([h.asset_id for h in hits[:10]])
                    semantic = index.search(session, text, vector, limit=10, method=method,
                                            keyword_weight=0.0)
                    best.setdefault((label, 0.0), []).append([h.asset_id for h in semantic])
        figures[label] = {"median": statistics.median(walls), "p95": fill.percentile(walls, 95),
                          "cpu": statistics.median(cpus), "cpu_p95": fill.percentile(cpus, 95)}
        if recall is not None and label == "sign shortlist":
            figures[label]["own_recall"] = recall
    for label in METHODS[1:]:
        for weight, name in ((0.5, "recall"), (0.0, "recall_semantic")):
            found = [len(set(a) & set(e)) / max(len(e), 1)
                     for a, e in zip(best[label, weight], best["exact", weight], strict=True)]
            figures[label][name] = statistics.mean(found)
    engine.dispose()
    return figures


def submit_to_first_stage(url: str) -> tuple[float, float]:
    """(POST /v1/jobs ms, seconds from submission to the first stage's start)."""
    import yaml

    manifest = yaml.safe_dump({"defaults": {"params": {"tile": 64, "refine_coarse_steps": 2,
                                                        "refine_fine_steps": 2}},
                               "items": [{"prompt": f"a wooden crate {time.time()}"}]}).encode()
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:  # steady state: Prefect warm, as after the first job
        connection.request("GET", "/v1/health")
        if json.loads(connection.getresponse().read())["workers_ready"]:
            break
        time.sleep(0.5)
    started = time.perf_counter()
    connection.request("POST", "/v1/jobs", manifest, {"Content-Type": "application/x-yaml"})
    response = connection.getresponse()
    reply = json.loads(response.read())
    post_ms = (time.perf_counter() - started) * 1000.0
    if response.status != 202:
        raise RuntimeError(f"submit: {response.status} {reply}")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        connection.request("GET", f"/v1/jobs/{reply['batch_id']}")
        job = json.loads(connection.getresponse().read())
        if job["first_stage_s"] is not None:
            connection.request("POST", f"/v1/jobs/{reply['batch_id']}/cancel")
            connection.getresponse().read()
            return post_ms, job["first_stage_s"]
        time.sleep(0.02)
    raise RuntimeError("the job's first stage did not start in 120 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="Synthetic assets.")
    parser.add_argument("--queries", type=int, default=300, help="Timed search requests.")
    parser.add_argument("--warmup", type=int, default=20, help="Untimed requests first.")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only.")
    parser.add_argument(
        "--embeddings", choices=("model", "random"), default="model",
        help="The synthetic prompts' index embeddings: the text model's (as the pipeline "
             "indexes them; the first run embeds them, about 3-6 min for 100,000, then reads "
             f"them from {CORPUS_CACHE}) or uniformly random unit vectors (no structure: the "
             "server's sign shortlist turns itself off).")
    args = parser.parse_args(argv)

    rng = random.Random(1)
    # Distinct texts, warm-up ones included: the server caches query embeddings, and a
    # repeated query would time the cache, not the model.
    distinct: dict[str, None] = {}
    while len(distinct) < args.warmup + args.queries:
        distinct[fill.query_text(rng)] = None
    queries = list(distinct)
    log(f"embedding {len(queries)} queries")
    vectors = embed_queries(queries)
    rows, profiles, index_rows = [], {}, []
    with tempfile.TemporaryDirectory(prefix="foundry3d-api-bench-") as tmp:
        workdir = Path(tmp)
        library = tiny_library(workdir / "library")
        log(f"generating {args.rows} synthetic assets ({args.embeddings} embeddings)")
        embed = corpus_embedder(args.rows) if args.embeddings == "model" else None
        assets, index, embeddings = fill._synthetic_rows(args.rows, embed=embed)
        with contextlib.ExitStack() as stack:
            admin = None if args.no_postgres else stack.enter_context(fill.postgres_server())
            for backend in ["sqlite"] + ([] if admin is None else ["postgresql"]):
                url = fill.new_database(backend, workdir, "api_bench", admin)
                started = time.perf_counter()
                if backend == "sqlite":
                    fill._load_sqlite(url, assets, index)
                else:
                    fill._load_postgres(url, assets, index, embeddings)
                log(f"{backend}: {args.rows} rows loaded in {time.perf_counter() - started:.1f} s")
                alone = time_index(url, queries, vectors, args.warmup)
                with api_server(url, workdir, library) as base:
                    times, split = time_search(base, queries, args.warmup)
                    post_ms, first_stage_s = submit_to_first_stage(base)
                p95 = fill.percentile(times, 95)
                load = " ".join(f"{x:.1f}" for x in os.getloadavg())
                rows.append([backend, f"{args.rows:,}", f"{statistics.median(times):.1f}",
                             f"{p95:.1f}", fill.verdict(p95, TARGET_SEARCH_P95_MS),
                             f"{split['cpu']:.1f} / {split['cpu_p95']:.1f}",
                             f"{post_ms:.0f}", f"{first_stage_s:.2f}", load])
                profiles[backend] = {k: v for k, v in split.items() if isinstance(v, tuple)}
                for method, figures in alone.items():
                    recall = (f"{figures['recall']:.3f} / {figures['recall_semantic']:.3f}"
                              if "recall" in figures else "(the reference)")
                    if "own_recall" in figures:
                        used = figures["own_recall"] >= SIGN_MIN_RECALL
                        recall += (f" (own rows {figures['own_recall']:.3f}: "
                                   f"{'used' if used else 'not used'})")
                    index_rows.append([backend, method,
                                       f"{figures['median']:.1f} / {figures['p95']:.1f}",
                                       f"{figures['cpu']:.1f} / {figures['cpu_p95']:.1f}",
                                       recall])
                log(f"{backend}: load average {load}")
    fill.print_table(
        f"API: warm GET /v1/assets?q= ({args.queries} queries, limit 20) and submit latency",
        ["database", "assets", "search median ms", "search p95 ms",
         f"p95 <= {TARGET_SEARCH_P95_MS:.0f} ms", "app CPU median/p95 ms",
         "POST /v1/jobs ms", "submit->1st stage s", "load average 1/5/15 min"],
        rows)
    backends = list(profiles)
    names = list(dict.fromkeys(k for p in profiles.values() for k in p))
    fill.print_table(
        "Profile of one warm search request: median wall / CPU ms per part (search.* are "
        "parts of search; rows = database reads of filters and hit texts)",
        ["part", *backends],
        [[name, *(" / ".join(f"{x:.2f}" for x in profiles[b][name]) if name in profiles[b]
                  else "" for b in backends)] for name in names])
    fill.print_table(
        "Index search alone (SearchIndex.search in process, limit 21, the queries' embeddings)",
        ["database", "method", "wall median/p95 ms", "CPU median/p95 ms",
         "recall@10 hybrid / semantic vs exact"],
        index_rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
