"""Benchmark: item retrieval by inner product, numpy brute force vs faiss exact, IVF and HNSW.

Data: ``--n`` unit vectors of dimension ``--dim`` from a two-level gaussian
mixture, then L2-normalised: ``--topics`` unit-variance topic means; ``--centres``
cluster means, each a topic mean plus ``--topic-spread`` noise; items, each a
cluster mean plus ``--noise`` isotropic noise. With the defaults an item's best
match has cosine about 0.6 and its 50th about 0.54, and the top 50 spread over
the several clusters of one topic, closer to sentence embeddings, whose
neighbourhoods are continuous rather than separated blobs; with one level only,
every top-50 sits inside one well-separated cluster and IVF is trivially exact.
Queries are fresh samples from the same mixture (unseen items).

Ground truth is float64 brute force; recall@k is the share of the true top-``k``
ids found. Build seconds of an IVF or HNSW row count the shared build once for
every search setting. Batch throughput searches all queries in one call; the
latency is the mean over ``--single`` one-query calls through ``ItemIndex.search``.

    python scripts/bench_retrieval.py --out runs/bench_retrieval.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from benchlib import machine

from fedllmrec.io import atomic_write_json
from fedllmrec.retrieval import IndexConfig, ItemIndex

Search = Callable[[np.ndarray], np.ndarray]


def unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def mixture(rng: np.random.Generator, centres: np.ndarray, n: int, noise: float) -> np.ndarray:
    picks = rng.integers(0, centres.shape[0], n)
    noisy = centres[picks] + noise * rng.standard_normal((n, centres.shape[1]), dtype=np.float32)
    return unit(noisy)


def numpy_top_k(vectors: np.ndarray, queries: np.ndarray, k: int, block: int = 128) -> np.ndarray:
    """Exact top-``k`` ids by matmul + argpartition, in query blocks to bound memory."""
    out = np.empty((queries.shape[0], k), dtype=np.int64)
    for start in range(0, queries.shape[0], block):
        scores = queries[start : start + block] @ vectors.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
        out[start : start + block] = np.take_along_axis(part, order, axis=1)
    return out


def ground_truth(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    # float64 so float32 rounding in the methods under test shows up as lost recall.
    wide = vectors.astype(np.float64)
    out = np.empty((queries.shape[0], k), dtype=np.int64)
    for start in range(0, queries.shape[0], 128):
        scores = queries[start : start + 128].astype(np.float64) @ wide.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
        out[start : start + 128] = np.take_along_axis(part, order, axis=1)
    return out


def recall(truth: np.ndarray, got: np.ndarray) -> float:
    return float(np.mean([np.isin(t, g).mean() for t, g in zip(truth, got, strict=True)]))


def measure(
    search: Search, queries: np.ndarray, truth: np.ndarray, single: int
) -> dict[str, float]:
    start = time.perf_counter()
    ids = search(queries)
    batch = time.perf_counter() - start
    search(queries[:1])  # warm-up outside the latency loop
    start = time.perf_counter()
    for r in range(single):
        search(queries[r : r + 1])
    latency = (time.perf_counter() - start) / single
    return {
        "batch_seconds": round(batch, 4),
        "batch_qps": round(queries.shape[0] / batch, 1),
        "single_latency_ms": round(1000 * latency, 3),
        f"recall@{truth.shape[1]}": round(recall(truth, ids), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--topics", type=int, default=100)
    parser.add_argument("--topic-spread", type=float, default=0.3)
    parser.add_argument("--centres", type=int, default=1_000)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--single", type=int, default=200)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--ef-search", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--hnsw-m", type=int, default=IndexConfig.hnsw_m)
    parser.add_argument("--ef-construction", type=int, default=IndexConfig.ef_construction)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_retrieval.json"))
    args = parser.parse_args()
    k = args.k

    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    topics = rng.standard_normal((args.topics, args.dim), dtype=np.float32)
    centres = topics[rng.integers(0, args.topics, args.centres)]
    centres += args.topic_spread * rng.standard_normal(centres.shape, dtype=np.float32)
    vectors = mixture(rng, centres, args.n, args.noise)
    queries = mixture(rng, centres, args.queries, args.noise)
    truth = ground_truth(vectors, queries, k)

    results: list[dict[str, Any]] = []

    def record(method: str, params: str, build: float, search: Search) -> None:
        row = {"method": method, "params": params, "build_seconds": round(build, 2)}
        row |= measure(search, queries, truth, args.single)
        results.append(row)
        print(f"  {method} {params}: {row}", file=sys.stderr, flush=True)

    def index_search(index: ItemIndex) -> Search:
        return lambda q: index.search(q, k)[1]

    record("numpy", "matmul + argpartition", 0.0, lambda q: numpy_top_k(vectors, q, k))

    start = time.perf_counter()
    exact = ItemIndex.build(vectors, config=IndexConfig(kind="exact"))
    record("faiss exact", "IndexFlatIP", time.perf_counter() - start, index_search(exact))
    del exact

    config = IndexConfig(kind="ivf", seed=args.seed)
    start = time.perf_counter()
    ivf = ItemIndex.build(vectors, config=config)
    build = time.perf_counter() - start
    nlist = round(4 * np.sqrt(args.n))
    for nprobe in args.nprobe:
        ivf.set_search_params(nprobe=nprobe)
        record("faiss IVF", f"nlist={nlist}, nprobe={nprobe}", build, index_search(ivf))
    del ivf

    config = IndexConfig(kind="hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction)
    start = time.perf_counter()
    hnsw = ItemIndex.build(vectors, config=config)
    build = time.perf_counter() - start
    for ef in args.ef_search:
        hnsw.set_search_params(ef_search=ef)
        params = f"M={config.hnsw_m}, efC={config.ef_construction}, efSearch={ef}"
        record("faiss HNSW", params, build, index_search(hnsw))
    del hnsw

    seconds = time.perf_counter() - started
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    report = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "commit": commit,
        "command": "python " + " ".join(sys.argv),
        "seconds": round(seconds, 1),
        "data": {
            "n": args.n,
            "dim": args.dim,
            "topics": args.topics,
            "topic_spread": args.topic_spread,
            "centres": args.centres,
            "noise": args.noise,
            "queries": args.queries,
            "k": k,
            "single": args.single,
            "seed": args.seed,
        },
        "results": results,
    }
    atomic_write_json(args.out, report)
    print(
        f"{report['machine']}, {report['date']}, commit {commit}, `{report['command']}`, "
        f"{args.n:,} x {args.dim} items, {args.queries:,} queries, k={k}, {seconds:.0f} s"
    )
    print(f"| method | params | build s | batch queries/s | single-query ms | recall@{k} |")
    print("|---|---|---:|---:|---:|---:|")
    for row in results:
        print(
            f"| {row['method']} | {row['params']} | {row['build_seconds']:.2f} "
            f"| {row['batch_qps']:,.0f} | {row['single_latency_ms']:.2f} "
            f"| {row[f'recall@{k}']:.4f} |"
        )


if __name__ == "__main__":
    main()
