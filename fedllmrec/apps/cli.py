"""The ``fedllmrec`` command line."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

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
DatasetName = Annotated[str, typer.Argument(help="ml-100k, kuaisar-r, art-office or a folder.")]
Seed = Annotated[int, typer.Option(help="Seed of the candidate draw.")]
Threads = Annotated[
    int | None,
    typer.Option(min=1, help="CPU threads of torch and Arrow (default: their own choice)."),
]
Encoding = Annotated[
    str | None,
    typer.Option(
        help="Text encoding of a generic-format folder's CSV files, e.g. latin-1 "
        "(overrides its dataset.json)."
    ),
]
Negatives = Annotated[
    int | None,
    typer.Option(
        "--negatives",
        min=0,
        help="Sampled negatives per held-out interaction (default 99, the 1+99 protocol; "
        "0: none, full-ranking evaluation only).",
    ),
]


def set_threads(threads: int | None) -> None:
    """Apply ``--threads``; torch is imported only when it is given (importing it takes seconds)."""
    if threads is None:
        return
    import pyarrow
    import torch

    # On a shared CPU, fewer threads than cores avoids OpenMP spin-wait thrashing.
    torch.set_num_threads(threads)
    pyarrow.set_cpu_count(threads)


@data_app.command("stats")
def data_stats(
    name: DatasetName,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    encoding: Encoding = None,
    threads: Threads = None,
) -> None:
    """Print user, item and interaction counts, in total and per domain."""
    from fedllmrec.data import load_dataset

    set_threads(threads)
    stats = load_dataset(name, data_dir, encoding=encoding).stats()
    if as_json:
        print(json.dumps(stats, indent=2))
        return
    console.print_json(json.dumps(stats))


@data_app.command("prepare")
def data_prepare(
    name: DatasetName,
    data_dir: DataDir = None,
    seed: Seed = 0,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: the cache).")] = None,
    min_user: Annotated[int, typer.Option(help="k-core: min interactions per user.")] = 0,
    min_item: Annotated[int, typer.Option(help="k-core: min interactions per item.")] = 0,
    max_history: Annotated[
        int | None, typer.Option(help="Keep each user's most recent N interactions.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Prepare again even if cached.")] = False,
    negatives: Negatives = None,
    encoding: Encoding = None,
    threads: Threads = None,
) -> None:
    """Split a dataset leave-one-out and draw its evaluation candidates, once."""
    from fedllmrec.data.prepare import SAMPLED_NEGATIVES, prepare
    from fedllmrec.data.split import SplitConfig

    set_threads(threads)
    config = SplitConfig(
        min_user_interactions=min_user, min_item_interactions=min_item, max_history=max_history
    )
    prepared = prepare(
        name,
        data_dir=data_dir,
        config=config,
        seed=seed,
        out=out,
        force=force,
        n_negatives=SAMPLED_NEGATIVES if negatives is None else negatives,
        encoding=encoding,
    )
    console.print(
        f"prepared {prepared.dataset.name} in {prepared.folder} "
        f"({prepared.n_negatives} sampled negatives per held-out interaction)"
    )
    console.print_json(json.dumps(prepared.split.summary()))


@app.command("baselines")
def baselines(
    name: DatasetName,
    data_dir: DataDir = None,
    seed: Seed = 0,
    json_out: Annotated[Path | None, typer.Option(help="Also write the records as JSON.")] = None,
    negatives: Negatives = None,
    encoding: Encoding = None,
    threads: Threads = None,
) -> None:
    """Evaluate popularity and item-kNN, full-rank and 1+99 sampled (1+N with --negatives)."""
    from fedllmrec.data.prepare import SAMPLED_NEGATIVES, prepare
    from fedllmrec.eval.benchmark import metrics_table, run_baselines
    from fedllmrec.eval.ranking import Mode
    from fedllmrec.io import atomic_write_json

    set_threads(threads)
    n_negatives = SAMPLED_NEGATIVES if negatives is None else negatives
    with console.status(f"preparing {name}"):
        prepared = prepare(
            name, data_dir=data_dir, seed=seed, n_negatives=n_negatives, encoding=encoding
        )
    # Without sampled candidates only full ranking can be evaluated.
    modes: tuple[Mode, ...] = ("full", "sampled") if prepared.n_negatives else ("full",)
    with console.status("fitting and evaluating baselines"):
        records = run_baselines(prepared, modes=modes)
    console.print(metrics_table(records, f"{prepared.dataset.name}: baselines (seed {seed})"))
    if json_out is not None:
        atomic_write_json(json_out, records)


@app.command("embed")
def embed(
    name: DatasetName,
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
    encoding: Encoding = None,
    threads: Threads = None,
) -> None:
    """Embed every item of a dataset (all domains) with the frozen encoder, using the cache."""
    import time

    import numpy as np

    from fedllmrec.data import load_dataset
    from fedllmrec.io import atomic_path
    from fedllmrec.semantics import EncoderConfig, ItemEncoder, item_texts

    if dtype not in ("float32", "bfloat16"):
        raise typer.BadParameter("dtype must be float32 or bfloat16")
    set_threads(threads)
    dataset = load_dataset(name, data_dir, encoding=encoding)
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


@app.command("retrieve")
def retrieve(
    name: DatasetName,
    user: Annotated[str, typer.Option(help="The user's id as in the source data.")],
    data_dir: DataDir = None,
    k: Annotated[int, typer.Option(help="Number of candidates.")] = 10,
    domain: Annotated[str | None, typer.Option(help="Retrieve in this domain only.")] = None,
    query_domain: Annotated[
        str | None, typer.Option(help="Build the query from this domain's history only.")
    ] = None,
    encoding: Encoding = None,
    threads: Threads = None,
) -> None:
    """Candidate items for a user, by text similarity to their history, never seen items."""
    import numpy as np
    from rich.table import Table

    from fedllmrec.data import load_dataset
    from fedllmrec.data.split import UserItemSet
    from fedllmrec.errors import FedLLMRecError
    from fedllmrec.retrieval import ItemIndex
    from fedllmrec.retrieval.history import history_queries
    from fedllmrec.semantics import embed_items

    set_threads(threads)
    dataset = load_dataset(name, data_dir, encoding=encoding)
    user_ids = dataset.users.column("user_id").to_pylist()
    if user not in user_ids:
        raise FedLLMRecError(f"user {user!r} is not in {dataset.name}")

    def domain_index(label: str | None) -> int | None:
        if label is None:
            return None
        if label not in dataset.domains:
            raise FedLLMRecError(f"unknown domain {label!r}; {dataset.name} has {dataset.domains}")
        return dataset.domains.index(label)

    target, source = domain_index(domain), domain_index(query_domain)
    with console.status("embedding items (cached after the first run)"):
        vectors = embed_items(dataset)
    index = ItemIndex.build(vectors, domains=dataset.item_domain.astype(np.int64))
    dense = np.asarray([user_ids.index(user)])
    history = UserItemSet(dataset.user, dataset.item, dataset.n_items)
    query, has = history_queries(
        vectors, history, dense, item_domain=dataset.item_domain, domain=source
    )
    if not has[0]:
        raise FedLLMRecError(f"user {user!r} has no history to build a query from")
    scores, ids = index.search(query, k, domain=target, exclude=[history.items_of(int(dense[0]))])
    table = Table(title=f"{dataset.name}: {k} candidates for user {user}")
    for column in ("rank", "item_id", "domain", "score", "title"):
        table.add_column(column)
    items = dataset.items
    for rank, (item, score) in enumerate(zip(ids[0].tolist(), scores[0].tolist(), strict=True)):
        if item < 0:
            break
        table.add_row(
            str(rank + 1),
            str(items.column("item_id")[item]),
            str(items.column("domain")[item]),
            f"{score:.3f}",
            str(items.column("title")[item]),
        )
    console.print(table)


@app.command("recommend")
def recommend(
    user: Annotated[str, typer.Option(help="The user's id as in the source data.")],
    run: Annotated[Path, typer.Option(help="A finished run folder (fedllmrec train --out).")],
    domain: Annotated[
        str | None, typer.Option(help="Recommend items of this domain (needed when several).")
    ] = None,
    k: Annotated[int, typer.Option(help="Candidates retrieved, then ranked by the model.")] = 20,
    data_dir: DataDir = None,
    threads: Threads = None,
) -> None:
    """A user's ranked candidates: FAISS retrieval by history, then the run's model ranks them."""
    from rich.table import Table

    from fedllmrec.recipes.recommend import recommend as ranked

    set_threads(threads)
    with err_console.status("loading the run's model and retrieving"):
        rows = ranked(run, user, domain, k, data_dir=data_dir)
    where = f"{domain}, " if domain else ""
    table = Table(title=f"{run}: user {user}, {where}{len(rows)} retrieved candidates")
    for column in ("rank", "item_id", "retrieval", "model", "title"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row.rank),
            row.item_id,
            f"{row.retrieval_score:.3f}",
            f"{row.model_score:.4f}",
            row.title,
        )
    console.print(table)


@app.command("train")
def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe TOML file (see recipes/).")],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints, metrics.json, curve.png.")],
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a recipe key, e.g. --set model.dim=32 (repeatable)."),
    ] = None,
    data_dir: DataDir = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    threads: Threads = None,
) -> None:
    """Train a recipe, select on validation, score test; resumes a run found in --out."""
    from rich.table import Table

    from fedllmrec.recipes.recipe import load_recipe, run_recipe
    from fedllmrec.runtime import keep_freed_memory

    keep_freed_memory()  # freed tensors' memory is reused, not unmapped and faulted in again
    loaded = load_recipe(recipe, overrides or [])
    set_threads(threads)
    metrics = run_recipe(loaded, out, data_dir=data_dir, quiet=quiet, console=err_console)
    table = Table(
        title=f"{loaded.name}: epoch {metrics['best_epoch']} of {metrics['stopped_epoch']}"
        if metrics["stopped_epoch"]
        else f"{loaded.name}: fitted once",
        caption=f"selected on valid {metrics['monitor']} ({metrics['mode']})"
        + (f"; popularity prior weight {metrics['prior']['weight']}" if "prior" in metrics else ""),
    )
    for column in ("metric", "valid", "test"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, value in metrics["test"].items():
        valid = metrics["valid"].get(name)
        table.add_row(name, "-" if valid is None else f"{valid:.4f}", f"{value:.4f}")
    console.print(table)
    console.print(f"train {metrics['train_seconds']:.1f} s; wrote {out / 'metrics.json'}")


@app.command("audit")
def audit(
    run_dir: Annotated[
        Path, typer.Argument(help="A federated run folder (fedllmrec train --out).")
    ],
    rounds: Annotated[int, typer.Option(min=1, help="Rounds replayed for the server's view.")] = 1,
    data_dir: DataDir = None,
    threads: Threads = None,
    max_users: Annotated[
        int | None, typer.Option(min=2, help="Attack a seeded sample of N clients.")
    ] = None,
    mia_clients: Annotated[
        int, typer.Option(min=2, help="Target clients of the membership attack.")
    ] = 200,
    attributes: Annotated[
        list[str] | None,
        typer.Option("--attribute", help="Attack only this private attribute (repeatable)."),
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="Attribute models with a fixed k = 128, no inner CV (weaker).")
    ] = False,
) -> None:
    """Attack a federated run as its server: item sets, attributes, membership; with domain
    clients, each domain's item popularity (audit.json)."""
    from fedllmrec.audits import (
        AdapterAuditConfig,
        adapter_audit_table,
        audit_adapter_run,
        audit_run,
        audit_table,
    )
    from fedllmrec.federated.adapters import FederatedLLM
    from fedllmrec.federated.simulator import FederatedRecommender
    from fedllmrec.recipes.recipe import load_recipe
    from fedllmrec.runtime import keep_freed_memory

    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise FedLLMRecError(f"{run_dir}: no metrics.json (not a finished fedllmrec train run)")
    try:
        config = json.loads(metrics_path.read_text(encoding="utf-8"))["config"]
        recipe_path, overrides = Path(config["recipe"]), list(config["overrides"])
    except (ValueError, KeyError, TypeError) as err:
        raise FedLLMRecError(f"{metrics_path}: no config.recipe / config.overrides") from err
    if "federated" not in config:
        raise FedLLMRecError(f"{run_dir}: not a federated run (its recipe has no [federated])")
    keep_freed_memory()
    recipe = load_recipe(recipe_path, overrides).reading(data_dir)
    set_threads(threads)
    with console.status(f"preparing {recipe.data.name}"):
        prepared = recipe.prepare()
        fed = recipe.build_federation(prepared)
    if isinstance(fed, FederatedLLM):
        with console.status(f"auditing {run_dir}'s adapter uploads (1 round replayed)"):
            llm_report = audit_adapter_run(
                fed, run_dir, AdapterAuditConfig(seed=recipe.trainer.seed)
            )
        console.print(adapter_audit_table(llm_report, f"{recipe.name}: what the server can infer"))
        console.print(f"wrote {run_dir / 'audit.json'}")
        return
    if not isinstance(fed, FederatedRecommender):
        raise FedLLMRecError(f"{run_dir}: {type(fed).__name__} uploads have no audit")
    with console.status(f"auditing {run_dir} ({rounds} round(s) replayed)"):
        report = audit_run(
            fed, prepared, run_dir, rounds=rounds, max_users=max_users, mia_clients=mia_clients,
            attributes=attributes, seed=recipe.trainer.seed, quick=quick,
        )  # fmt: skip
    console.print(audit_table(report, f"{recipe.name}: what the server can infer"))
    console.print(f"wrote {run_dir / 'audit.json'}")


# The demo's federated stage: MRFF on ml-100k, a few rounds on a subset of clients (the
# evaluation still covers every user), unprotected and under secure aggregation.
DEMO_RECIPE = "recipes/mrff-fed-ml100k.toml"
DEMO_OVERRIDES = ("trainer.max_epochs=4", "trainer.eval_every=2", "federated.max_clients=300")
DEMO_PROTECTIONS = {
    "none": (),
    "secure aggregation": ("federated.privacy.secure_aggregation=true",),
}


# The cross-domain stage: Art-Office domain clients on a 500-user subset, 3 short rounds,
# the ID students alone against full FKD (two rows of the cross-domain table's recipes).
DEMO_CROSS_OVERRIDES = (
    "data.split.max_users=500",
    "trainer.max_epochs=3",
    "trainer.eval_every=1",
    "federated.local.steps=20",
    "eval.cold_start=false",
)
DEMO_CROSS_ROWS = {
    "ID students, no KD": "recipes/fkd-student-fed-art-office.toml",
    "full FKD": "recipes/fkd-fed-art-office.toml",
}


def _recipe_file(name: str) -> Path:
    """A shipped recipe: from the working directory, else beside the package (a checkout)."""
    here = Path(name)
    if here.is_file():
        return here
    return Path(__file__).resolve().parents[2] / name


# The LLM stage: the full pipeline (FKD soft tokens + federated global/private LoRA, the two
# domains as clients) reading the cross-domain stage's FKD run, on the same 500 users: one
# round of 2 steps x 2 rows per client, scored on 20 seeded test users. It shows the stage
# runs end to end; the measured LLM rows are scripts/eval_cross_domain.py --llm.
DEMO_LLM_RECIPE = "recipes/llm-fed-art-office.toml"
DEMO_LLM_OVERRIDES = (
    "data.split.max_users=500",
    "trainer.max_epochs=1",
    "trainer.eval_every=1",
    "federated.local.steps=2",
    "model.train.batch_rows=2",
    "eval.valid_users=5",
    "eval.test_users=20",
)


@app.command("demo")
def demo(
    data_dir: DataDir = None,
    threads: Threads = None,
    out: Annotated[Path, typer.Option(help="Folder of the demo's federated runs.")] = Path(
        "runs/demo"
    ),
) -> None:
    """The main job on the embedded defaults: ml-100k baselines, then federated MRFF with and
    without secure aggregation, each audited as its server would attack it, then cross-domain
    FKD on Art-Office domain clients (a 500-user subset), then the LLM ranking its
    candidates with soft tokens from that FKD run and federated LoRA, audited on its adapter
    uploads, and one user's recommendations from it."""
    from rich.columns import Columns
    from rich.table import Table

    baselines("ml-100k", data_dir=data_dir, threads=threads)
    recipe = _recipe_file(DEMO_RECIPE)
    results: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for label, extra in DEMO_PROTECTIONS.items():
        run = out / label.replace(" ", "-")
        overrides = [*DEMO_OVERRIDES, *extra]
        console.rule(f"federated MRFF on ml-100k, protection: {label}")
        train(recipe, run, overrides, data_dir=data_dir, quiet=True, threads=threads)
        audit(
            run, rounds=1, data_dir=data_dir, threads=threads, mia_clients=100,
            attributes=["gender", "age4"], quick=True,
        )  # fmt: skip
        results[label] = (
            json.loads((run / "metrics.json").read_text(encoding="utf-8")),
            json.loads((run / "audit.json").read_text(encoding="utf-8")),
        )
    metrics_table = Table(title="federated MRFF, test")
    privacy_table = Table(title="what the server infers (held-out users)")
    metrics_table.add_column("protection")
    privacy_table.add_column("protection")
    for column in ("1+99 HR@10", "1+99 NDCG@10", "full HR@10"):
        metrics_table.add_column(column, justify="right")
    for column in ("item-set F1", "gender AUC", "age bal. acc.", "membership AUC"):
        privacy_table.add_column(column, justify="right")

    def value(tree: Any, *keys: str) -> str:
        for key in keys:
            tree = tree.get(key, {}) if isinstance(tree, dict) else {}
        return f"{tree:.3f}" if isinstance(tree, float) else "-"

    for label, (metrics, report) in results.items():
        test = metrics["test"]
        metrics_table.add_row(
            label, value(test, "sampled/HR@10"), value(test, "sampled/NDCG@10"),
            value(test, "full/HR@10"),
        )  # fmt: skip
        attributes = report.get("attributes", {})
        privacy_table.add_row(
            label,
            value(report, "itemset", "round 1", "value"),
            value(attributes, "gender", "server, round 1", "value"),
            value(attributes, "age4", "server, round 1", "value"),
            value(report, "membership", "value"),
        )
    console.print(Columns([metrics_table, privacy_table]))
    console.print(
        "chance: item-set F1 of the aggregate ranking, gender AUC 0.5, age 0.25; "
        "docs/privacy.md has the full table"
    )
    _demo_cross_domain(out, data_dir, threads, value)
    _demo_llm(out, data_dir, threads, value)


def _demo_cross_domain(
    out: Path, data_dir: Path | None, threads: int | None, value: Callable[..., str]
) -> None:
    """The main job's cross-domain stage: federated FKD against ID students alone."""
    from rich.table import Table

    table = Table(title="Art-Office, domain clients (500 users), test: arts / office")
    table.add_column("model")
    for column in ("1+19 HR@1", "1+19 NDCG@5", "1+99 HR@10", "full HR@10"):
        table.add_column(column, justify="right")
    for label, name in DEMO_CROSS_ROWS.items():
        run = out / ("cross-" + label.split(",")[0].replace(" ", "-").lower())
        console.rule(f"cross-domain FKD on Art-Office: {label}")
        recipe = _recipe_file(name)
        overrides = list(DEMO_CROSS_OVERRIDES)
        train(recipe, run, overrides, data_dir=data_dir, quiet=True, threads=threads)
        if label == "full FKD":  # the domain-level audit of what the teacher uploads
            audit(run, rounds=1, data_dir=data_dir, threads=threads)
        test = json.loads((run / "metrics.json").read_text(encoding="utf-8"))["test"]
        cells = [
            " / ".join(value(test, f"{mode}/{d}/{metric}") for d in ("arts", "office"))
            for mode, metric in (("sampled-19", "HR@1"), ("sampled-19", "NDCG@5"),
                                 ("sampled", "HR@10"), ("full", "HR@10"))
        ]  # fmt: skip
        table.add_row(label, *cells)
    console.print(table)
    console.print(
        "random 1+19 HR@1 = 0.05; the full table: scripts/eval_cross_domain.py, "
        "docs/cross-domain.md"
    )


def _demo_llm(
    out: Path, data_dir: Path | None, threads: int | None, value: Callable[..., str]
) -> None:
    """The main job's LLM stage: the full pipeline on the cross-domain stage's FKD run."""
    from rich.table import Table

    console.rule("the LLM: SmolLM2 + FKD soft tokens + federated global/private LoRA")
    source = out / "cross-full-fkd"  # the cross-domain stage's full-FKD run
    run = out / "llm-fed"
    overrides = [*DEMO_LLM_OVERRIDES, f"model.source={source}"]
    train(_recipe_file(DEMO_LLM_RECIPE), run, overrides, data_dir=data_dir, quiet=True,
          threads=threads)  # fmt: skip
    # What the global adapter's upload tells the server of the items a domain trained on
    # (a handful of rows here: the measured audit is in docs/privacy.md).
    audit(run, rounds=1, data_dir=data_dir, threads=threads)
    test = json.loads((run / "metrics.json").read_text(encoding="utf-8"))["test"]
    table = Table(title="the LLM, 20 test users, test: arts / office")
    table.add_column("model")
    columns = (("sampled-19", "HR@1"), ("sampled-19", "HR@5"), ("retrieved-20", "recall@20"),
               ("retrieved-20", "HR@1"))  # fmt: skip
    for mode, metric in columns:
        table.add_column(f"{'1+19' if mode == 'sampled-19' else 'retrieved 20'} {metric}",
                         justify="right")  # fmt: skip
    table.add_row(
        "full pipeline, 1 round",
        *(" / ".join(value(test, f"{mode}/{d}/{metric}") for d in ("arts", "office"))
          for mode, metric in columns),
    )  # fmt: skip
    console.print(table)
    console.print("random 1+19 HR@1 = 0.05; the measured LLM rows: docs/benchmarks.md")
    # One user's recommendations: the first user (by dense id) with a history in Arts.
    import numpy as np

    from fedllmrec.recipes import load_recipe

    recipe = load_recipe(_recipe_file(DEMO_LLM_RECIPE), overrides).reading(data_dir)
    dataset = recipe.prepare().split.dataset  # prepared by the training above: read back
    arts = dataset.domains.index("arts")
    dense = int(np.unique(dataset.user[dataset.domain == arts])[0])
    user = str(dataset.users.column("user_id")[dense])
    console.rule(f"fedllmrec recommend --run {run} --user {user} --domain arts --k 10")
    recommend(user=user, domain="arts", run=run, k=10, data_dir=data_dir, threads=threads)


def main() -> None:
    """Entry point: turn library errors into one-line messages and exit code 2."""
    try:
        app()
    except FedLLMRecError as err:
        # The message quotes raw data, which may hold "[...]": print it as text, not markup.
        err_console.print(
            f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True
        )
        sys.exit(2)


if __name__ == "__main__":
    main()
