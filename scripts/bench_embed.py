"""Benchmark: embedding all Art-Office items with the library vs a plain encode call.

Measures, in one run and on the same texts: plain ``SentenceTransformer.encode``
(its defaults, fp32); the library cold (empty cache, fp32); the library warm
(everything cached); and bf16 autocast against fp32 on a subset (bf16 is slow
on CPUs without bf16 instructions, so the full set would take long). Model
loading is timed separately and excluded from the items/s of every method.
Plain and library runs alternate chunk by chunk so that other load on the
machine cannot favour one of them.

    python scripts/bench_embed.py --out runs/bench_embed.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from benchlib import machine

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fedllmrec.data import load_dataset
from fedllmrec.io import atomic_write_json
from fedllmrec.semantics import EncoderConfig, ItemEncoder, item_texts


def timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def alternate(
    texts: list[str], chunk: int, methods: list[Callable[[list[str]], np.ndarray]]
) -> list[tuple[np.ndarray, float]]:
    """Run every method on every chunk, alternating which goes first.

    Other load on the machine then hits all methods alike. Returns, per method,
    its vectors for all texts and its total seconds.
    """
    parts: list[list[np.ndarray]] = [[] for _ in methods]
    seconds = [0.0] * len(methods)
    for i, lo in enumerate(range(0, len(texts), chunk)):
        order = list(range(len(methods)))
        for m in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            parts[m].append(methods[m](texts[lo : lo + chunk]))
            seconds[m] += time.perf_counter() - start
    return [(np.concatenate(p), s) for p, s in zip(parts, seconds, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="art-office")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--limit", type=int, default=None, help="embed only the first N items")
    parser.add_argument("--bf16-subset", type=int, default=2000)
    parser.add_argument("--chunk", type=int, default=4096, help="texts per alternation step")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_embed.json"))
    args = parser.parse_args()
    # Every library run starts from an empty cache of its own.
    os.environ["FEDLLMREC_CACHE"] = tempfile.mkdtemp(prefix="bench-embed-")

    texts = item_texts(load_dataset(args.dataset, args.data_dir))[: args.limit]
    n = len(texts)
    from sentence_transformers import SentenceTransformer

    encoder = ItemEncoder(EncoderConfig(progress=False))
    _, load_seconds = timed(lambda: encoder.model)
    plain_model = SentenceTransformer(str(encoder.model_path), device="cpu")

    (plain, plain_s), (cold, cold_s) = alternate(
        texts,
        args.chunk,
        [lambda c: plain_model.encode(c, convert_to_numpy=True), encoder.encode],
    )
    warm_encoder = ItemEncoder(EncoderConfig(progress=False))
    warm, warm_s = timed(lambda: warm_encoder.encode(texts))
    assert not warm_encoder.loaded, "a warm run must not load the model"
    assert np.array_equal(warm, cold), "cached vectors must equal the ones just embedded"
    plain_unit = plain / np.linalg.norm(plain, axis=1, keepdims=True)
    agreement = float((plain_unit * cold).sum(axis=1).min())

    subset = texts[: args.bf16_subset]
    bf16_encoder = ItemEncoder(EncoderConfig(dtype="bfloat16", progress=False))
    bf16_encoder.model  # noqa: B018 - load outside the timing
    (fp32_sub, fp32_sub_s), (bf16_sub, bf16_sub_s) = alternate(
        subset, 250, [encoder.encode_uncached, bf16_encoder.encode_uncached]
    )
    bf16_agreement = float((fp32_sub * bf16_sub).sum(axis=1).min())

    rows = {
        "plain SentenceTransformer.encode (fp32)": (n, plain_s),
        "fedllmrec cold cache (fp32)": (n, cold_s),
        "fedllmrec warm cache": (n, warm_s),
        f"fedllmrec fp32, no cache, first {len(subset)}": (len(subset), fp32_sub_s),
        f"fedllmrec bf16 autocast, no cache, first {len(subset)}": (len(subset), bf16_sub_s),
    }
    report = {
        "dataset": args.dataset,
        "items": n,
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "command": "python " + " ".join(sys.argv),
        "model_load_seconds": round(load_seconds, 2),
        "seconds": {k: round(v[1], 3) for k, v in rows.items()},
        "items_per_second": {k: round(v[0] / v[1], 1) for k, v in rows.items()},
        "ratio_cold_vs_plain": round(plain_s / cold_s, 3),
        "ratio_warm_vs_plain": round(plain_s / warm_s, 1),
        "ratio_bf16_vs_fp32": round(fp32_sub_s / bf16_sub_s, 3),
        "min_cosine_plain_vs_library": agreement,
        "min_cosine_bf16_vs_fp32": bf16_agreement,
    }
    atomic_write_json(args.out, report)
    print(f"{args.dataset}: {n} items; {report['date']}; {report['machine']}; "
          f"model load {load_seconds:.1f} s (excluded)")  # fmt: skip
    print("| method | items | seconds | items/s | speed vs plain |")
    print("|---|---:|---:|---:|---:|")
    plain_rate = n / plain_s
    for name, (count, seconds) in rows.items():
        rate = count / seconds
        print(f"| {name} | {count} | {seconds:.2f} | {rate:.1f} | {rate / plain_rate:.2f}x |")
    print(f"min cosine(plain, library) = {agreement:.6f}; "
          f"min cosine(bf16, fp32) = {bf16_agreement:.6f}")  # fmt: skip


if __name__ == "__main__":
    main()
