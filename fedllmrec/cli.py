"""The ``fedllmrec`` command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedllmrec.errors import FedLLMRecError

# Nothing may fetch weights from a hub at run time; set before any HF import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

app = typer.Typer(
    help="Federated, LLM-augmented, cross-domain recommendation.", no_args_is_help=True
)
data_app = typer.Typer(help="Datasets: statistics and preparation.", no_args_is_help=True)
app.add_typer(data_app, name="data")
# Off a terminal rich assumes 80 columns, which folds metric tables; logs can be wider.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Raw data folder (else $FEDLLMREC_DATA, else the cache)."),
]
Seed = Annotated[int, typer.Option(help="Seed of the candidate draw.")]


@data_app.command("stats")
def data_stats(
    name: Annotated[str, typer.Argument(help="ml-100k, kuaisar-r, art-office or a folder.")],
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print user, item and interaction counts, in total and per domain."""
    from fedllmrec.data import load_dataset

    stats = load_dataset(name, data_dir).stats()
    if as_json:
        print(json.dumps(stats, indent=2))
        return
    console.print_json(json.dumps(stats))


@data_app.command("prepare")
def data_prepare(
    name: Annotated[str, typer.Argument(help="ml-100k, kuaisar-r, art-office or a folder.")],
    data_dir: DataDir = None,
    seed: Seed = 0,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: the cache).")] = None,
    min_user: Annotated[int, typer.Option(help="k-core: min interactions per user.")] = 0,
    min_item: Annotated[int, typer.Option(help="k-core: min interactions per item.")] = 0,
    max_history: Annotated[
        int | None, typer.Option(help="Keep each user's most recent N interactions.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Prepare again even if cached.")] = False,
) -> None:
    """Split a dataset leave-one-out and draw its evaluation candidates, once."""
    from fedllmrec.data.prepare import prepare
    from fedllmrec.data.split import SplitConfig

    config = SplitConfig(
        min_user_interactions=min_user, min_item_interactions=min_item, max_history=max_history
    )
    prepared = prepare(name, data_dir=data_dir, config=config, seed=seed, out=out, force=force)
    console.print(f"prepared {prepared.dataset.name} in {prepared.folder}")
    console.print_json(json.dumps(prepared.split.summary()))


@app.command("baselines")
def baselines(
    name: Annotated[str, typer.Argument(help="ml-100k, kuaisar-r, art-office or a folder.")],
    data_dir: DataDir = None,
    seed: Seed = 0,
    json_out: Annotated[Path | None, typer.Option(help="Also write the records as JSON.")] = None,
) -> None:
    """Evaluate popularity and item-kNN, full-rank and 1+99 sampled."""
    from fedllmrec.data.prepare import prepare
    from fedllmrec.eval.benchmark import metrics_table, run_baselines
    from fedllmrec.io import atomic_write_json

    with console.status(f"preparing {name}"):
        prepared = prepare(name, data_dir=data_dir, seed=seed)
    with console.status("fitting and evaluating baselines"):
        records = run_baselines(prepared)
    console.print(metrics_table(records, f"{prepared.dataset.name}: baselines (seed {seed})"))
    if json_out is not None:
        atomic_write_json(json_out, records)


@app.command("embed")
def embed(
    name: Annotated[str, typer.Argument(help="ml-100k, kuaisar-r, art-office or a folder.")],
    data_dir: DataDir = None,
    out: Annotated[
        Path | None, typer.Option(help="Write the (n_items, dim) array here (.npy).")
    ] = None,
    model: Annotated[str, typer.Option(help="Encoder name or sentence-transformers folder.")] = (
        "all-MiniLM-L6-v2"
    ),
    template: Annotated[Path | None, typer.Option(help="Item text template TOML file.")] = None,
    dtype: Annotated[str, typer.Option(help="float32 or bfloat16 (autocast).")] = "float32",
    batch_size: Annotated[int, typer.Option(help="Texts per forward pass.")] = 32,
) -> None:
    """Embed every item of a dataset (all domains) with the frozen encoder, using the cache."""
    import time

    import numpy as np

    from fedllmrec.data import load_dataset
    from fedllmrec.io import atomic_path
    from fedllmrec.semantics import EncoderConfig, ItemEncoder, item_texts

    if dtype not in ("float32", "bfloat16"):
        raise typer.BadParameter("dtype must be float32 or bfloat16")
    dataset = load_dataset(name, data_dir)
    texts = item_texts(dataset, template)
    encoder = ItemEncoder(
        EncoderConfig(model=model, dtype=dtype, batch_size=batch_size)  # type: ignore[arg-type]
    )
    start = time.perf_counter()
    vectors = encoder.encode(texts)
    seconds = time.perf_counter() - start
    if out is not None:
        with atomic_path(out) as tmp, open(tmp, "wb") as fh:
            np.save(fh, vectors)
    stats = encoder.last_stats
    console.print(
        f"{dataset.name}: {vectors.shape[0]} items x {vectors.shape[1]} dims in {seconds:.1f} s "
        f"({stats['cached']} from cache, {stats['embedded']} embedded)"
        + (f"; wrote {out}" if out is not None else "")
    )


@app.command("demo")
def demo(data_dir: DataDir = None) -> None:
    """The main job on the embedded defaults: prepare ml-100k and evaluate the baselines."""
    baselines("ml-100k", data_dir=data_dir)


def main() -> None:
    """Entry point: turn library errors into one-line messages and exit code 2."""
    try:
        app()
    except FedLLMRecError as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
