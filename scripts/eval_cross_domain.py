"""The cross-domain table on Art-Office: every row trained by its recipe, one command.

Each row is a recipe of its own, trained by ``fedllmrec train`` in its own process
(one torch thread, pinned to a core; ``--jobs`` rows at a time) into ``OUT/<row>``; a row
whose ``metrics.json`` exists is reused (and an interrupted one resumes from its
checkpoint), so the command can be re-run until the table is complete. All rows rank the
same saved candidates (the prepared split's 1+99 lists, and their first 19 negatives for
the 1+19 protocol of the LLM issue).

    FEDLLMREC_DATA=../shared/data python scripts/eval_cross_domain.py --out runs/cross-domain
    python scripts/eval_cross_domain.py --quick --out runs/cross-domain-quick   # < 5 minutes
    python scripts/eval_cross_domain.py --llm --out runs/cross-domain   # the LLM rows
    python scripts/eval_cross_domain.py --llm --llm-set model.llm.dtype=float32 ...  # AVX2 CPUs

``--llm`` runs the LLM rows instead (SmolLM2 on a seeded subset of test users, same saved
1+19 lists): their soft tokens read this table's full-FKD run (``OUT/fkd-fed``, trained
first if missing), which is also scored on the same subset as the row to beat.

The table (markdown) is printed and written to ``OUT/table.md``, the numbers to
``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import TrainJob, run_jobs, run_metrics

from fedllmrec.recipes import load_recipe

DOMAINS = ("arts", "office")


@dataclass(frozen=True)
class Row:
    """One line of the table: a recipe, its overrides, and how many seeds."""

    name: str
    label: str
    recipe: str
    overrides: Sequence[str] = ()
    seeds: Sequence[int] = (0,)
    trains: bool = True  # baselines fit in one call; the trainer handles both
    minutes: float = 1.0  # one seed's wall time on one core (converged table, AMD EPYC)

    def runs(self) -> list[tuple[str, list[str]]]:
        """(run directory name, overrides) of every seed."""
        out = []
        for seed in self.seeds:
            suffix = "" if seed == 0 else f"-s{seed}"
            sets = [*self.overrides] + ([f"trainer.seed={seed}"] if seed else [])
            out.append((self.name + suffix, sets))
        return out


HEADLINE = (0, 1, 2)
# Every row is a recipe of its own (recipes/fkd-*-art-office.toml state what they change
# from their base); the variants' deltas are recipe keys, not command-line overrides.
ROWS: tuple[Row, ...] = (
    Row("popularity", "popularity", "recipes/popularity-art-office.toml", minutes=0.2),
    Row("itemknn", "item-kNN (in-domain history)", "recipes/itemknn-art-office.toml",
        minutes=0.2),
    Row("sasrec-single", "single-domain SASRec (each domain alone)",
        "recipes/fkd-student-art-office.toml", minutes=2.7),
    Row("gru4rec-single", "single-domain GRU4Rec (each domain alone)",
        "recipes/fkd-student-gru4rec-art-office.toml", minutes=2.2),
    Row("teacher-central", "text-only teacher, centralized",
        "recipes/fkd-teacher-art-office.toml", minutes=6.2),
    Row("teacher-fed", "text-only teacher, federated", "recipes/fkd-teacher-fed-art-office.toml",
        minutes=5.7),
    Row("student-fed", "federated ID student, no KD", "recipes/fkd-student-fed-art-office.toml",
        seeds=HEADLINE, minutes=3.2),
    Row("factual-fed", "+ factual KD", "recipes/fkd-factual-fed-art-office.toml",
        minutes=7.8),
    Row("counter-fed", "+ counterfactual KD", "recipes/fkd-counter-fed-art-office.toml",
        minutes=14.3),
    Row("fkd-fed", "+ alignment (full FKD)", "recipes/fkd-fed-art-office.toml", seeds=HEADLINE,
        minutes=15.5),
    Row("fkd-fed-sigma0", "full FKD, sigma = 0 (no protection)",
        "recipes/fkd-unprotected-fed-art-office.toml", minutes=12.3),
    Row("fkd-upper-central",
        "centralized FKD upper bound (both domains' raw data, unprotected vectors, one process)",
        "recipes/fkd-upper-central-art-office.toml", minutes=9.5),
    Row(
        "upper-central",
        "single model on both domains' raw mixed sequences (ID + original text)",
        "recipes/sasrec-idtext-pop-art-office.toml",
        minutes=5.4,
    ),
)  # fmt: skip

# The main job's cross-domain stage: 1,000 users, 2 short rounds, the cheap protocols.
QUICK_SETS = [
    "data.split.max_users=1000",
    "trainer.max_epochs=2",
    "trainer.eval_every=1",
    "federated.local.steps=15",
    "eval.cold_start=false",
]
QUICK_ROWS = ("student-fed", "fkd-fed")

# The LLM rows (each recipe states its subset: 500 users' rows per domain train, 100 test
# users). Zero-shot gets the same short prompt and dtype as the trained rows.
LLM_ROWS: tuple[Row, ...] = (
    Row("llm-zeroshot", "LLM zero-shot, titles only", "recipes/llm-zeroshot-art-office.toml",
        ("model.history_items=5", "model.title_tokens=16", "model.llm.dtype=bfloat16",
         "eval.test_users=100", "eval.valid_users=5")),
    Row("llm-lora", "LLM + LoRA, titles only (TALLRec-style)", "recipes/llm-lora-art-office.toml"),
    Row("llm-soft", "LLM frozen + soft tokens from the FKD student (A-LLMRec-style)",
        "recipes/llm-soft-art-office.toml"),
    Row("llm-fed", "full pipeline: FKD soft tokens + federated global/private LoRA",
        "recipes/llm-fed-art-office.toml"),
    Row("llm-soft-lora", "full pipeline, centralized LoRA (upper bound)",
        "recipes/llm-soft-lora-art-office.toml"),
)  # fmt: skip
SOFT_ROWS = ("llm-soft", "llm-fed", "llm-soft-lora")
SOURCE = "fkd-fed"  # the student the soft tokens read
SOURCE_ON_SUBSET = "fkd-fed-llm-subset"
LLM_COLUMNS: tuple[tuple[str, str], ...] = (
    ("1+19 HR@1", "sampled-19/{d}HR@1"),
    ("1+19 HR@5", "sampled-19/{d}HR@5"),
    ("1+19 NDCG@5", "sampled-19/{d}NDCG@5"),
    ("top-20 recall", "retrieved-20/{d}recall@20"),  # the realistic mode (eval/retrieved.py)
    ("top-20 HR@1", "retrieved-20/{d}HR@1"),
    ("HR@1 within", "retrieved-20/{d}within/HR@1"),
)

COLUMNS: tuple[tuple[str, str], ...] = (
    ("full HR@10", "full/{d}HR@10"),
    ("full NDCG@10", "full/{d}NDCG@10"),
    ("1+99 HR@10", "sampled/{d}HR@10"),
    ("1+99 NDCG@10", "sampled/{d}NDCG@10"),
    ("1+19 HR@1", "sampled-19/{d}HR@1"),
    ("1+19 HR@5", "sampled-19/{d}HR@5"),
    ("1+19 NDCG@5", "sampled-19/{d}NDCG@5"),
    ("cold full HR@10", "cold/full/{d}HR@10"),
    ("cold 1+99 HR@10", "cold/sampled/{d}HR@10"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/cross-domain")
    parser.add_argument("--jobs", type=int, default=2, help="rows trained at once (one core each)")
    parser.add_argument("--quick", action="store_true", help="the main job's quick subset")
    parser.add_argument("--rows", nargs="*", help="only these rows (names)")
    parser.add_argument("--single-seed", action="store_true", help="seed 0 of every row only")
    parser.add_argument("--llm", action="store_true", help="the LLM rows (issue 17)")
    parser.add_argument("--set", action="append", default=[], dest="extra")
    parser.add_argument(
        "--llm-set", action="append", default=[], dest="llm_extra",
        help="an override for the LLM rows only, not the FKD run they read "
        "(model.llm.dtype=float32 on a CPU without avx512_bf16)",
    )  # fmt: skip
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.llm:
        llm_table(out, args.jobs, args.extra, args.llm_extra)
        return
    rows = [r for r in ROWS if (not args.quick or r.name in QUICK_ROWS)]
    if args.rows:
        rows = [r for r in rows if r.name in args.rows]
    extra = [*(QUICK_SETS if args.quick else []), *args.extra]
    jobs = [
        TrainJob(row.recipe, run, [*sets, *_applicable(row, extra)], out / run)
        for row in rows
        for run, sets in (row.runs()[:1] if args.quick or args.single_seed else row.runs())
    ]
    # Longest first (LPT): two cores end within about one short job of each other. The
    # longest is full FKD, the headline row, so a stopped run still leaves it.
    minutes = {run: row.minutes for row in rows for run, _ in row.runs()}
    order = sorted(jobs, key=lambda job: -minutes[job.run])
    wall = run_jobs(order, args.jobs)
    results = {job.run: run_metrics(job.out) for job in jobs}
    table = render(rows, results, quick=args.quick, single=args.single_seed)
    print(table)
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    record = {"wall_seconds": wall, "quick": args.quick, "extra": extra, "runs": results}
    (out / "results.json").write_text(json.dumps(record, indent=1), encoding="utf-8")


def llm_table(out: Path, parallel: int, extra: list[str], llm_extra: Sequence[str] = ()) -> None:
    """The LLM rows and the FKD student they read, on the same test subset; ``extra``
    overrides every run, ``llm_extra`` the LLM rows only."""
    source = next(r for r in ROWS if r.name == SOURCE)
    run, sets = source.runs()[0]
    run_jobs([TrainJob(source.recipe, run, [*sets, *_applicable(source, extra)], out / run)], 1)
    jobs = []
    # The full pipeline first: a stopped run still leaves the row that matters most.
    for row in sorted(LLM_ROWS, key=lambda r: r.name != "llm-fed"):
        soft = [f"model.source={out / SOURCE}"] if row.name in SOFT_ROWS else []
        for name, sets in row.runs():
            overrides = [*sets, *soft, *_applicable(row, [*extra, *llm_extra])]
            jobs.append(TrainJob(row.recipe, name, overrides, out / name))
    wall = run_jobs(jobs, parallel)
    results = {job.run: run_metrics(job.out) for job in jobs}
    subset = next(r for r in LLM_ROWS if r.name == "llm-fed").recipe  # its test users
    results[SOURCE_ON_SUBSET] = score_on_subset(out / SOURCE, subset)
    rows = [Row(SOURCE_ON_SUBSET, "FKD student alone (the soft tokens' source)", source.recipe),
            *LLM_ROWS]  # fmt: skip
    table = render(rows, results, quick=False, columns=LLM_COLUMNS)
    print(table)
    (out / "llm-table.md").write_text(table + "\n", encoding="utf-8")
    record = {"wall_seconds": wall, "extra": extra, "runs": results}
    (out / "llm-results.json").write_text(json.dumps(record, indent=1), encoding="utf-8")


def score_on_subset(run: Path, recipe_path: str) -> dict[str, Any]:
    """A finished run's best model scored by another recipe's test evaluator (its subset)."""
    from fedllmrec.recipes.recipe import load_trained

    recipe = load_recipe(recipe_path)
    prepared = recipe.prepare()
    model = load_trained(run, prepared)
    test = recipe.build_evaluator(prepared)(model, "test")
    return {**run_metrics(run), "test": test, "train_seconds": run_metrics(run)["train_seconds"]}


def _applicable(row: Row, extra: list[str]) -> list[str]:
    """The extra overrides a row's recipe takes (no [federated] keys for a central one)."""
    federated = load_recipe(row.recipe).federated is not None
    return [s for s in extra if federated or not s.startswith("federated.")]


def render(
    rows: Sequence[Row],
    results: dict[str, dict[str, Any]],
    *,
    quick: bool,
    single: bool = False,
    columns: Sequence[tuple[str, str]] = COLUMNS,
) -> str:
    """One markdown table: a row per model, ``arts / office`` in every cell."""
    columns = [c for c in columns if not quick or not c[1].startswith("cold")]
    head = ["model", "seeds", "best/stopped", *[name for name, _ in columns], "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        runs = [run for run, _ in (row.runs()[:1] if quick or single else row.runs())]
        found = [results[r] for r in runs if r in results]
        if not found:
            continue
        cells = [row.label, str(len(found))]
        cells.append(
            ", ".join(f"{f.get('best_epoch')}/{f.get('stopped_epoch')}" for f in found[:1])
        )
        for _, pattern in columns:
            per_domain = []
            for d in DOMAINS:
                values = [f["test"].get(pattern.format(d=d + "/")) for f in found]
                per_domain.append(_cell([v for v in values if v is not None]))
            cells.append(" / ".join(per_domain))
        seconds = [f.get("train_seconds") or 0.0 for f in found]
        cells.append(f"{statistics.mean(seconds):.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


if __name__ == "__main__":
    main()
