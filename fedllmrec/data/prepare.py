"""Prepare a dataset once: load, filter, split and draw candidates; save everything.

A prepared folder is keyed by the dataset, the split configuration and the
seed, and is written atomically as a whole, so an interrupted prepare leaves
nothing behind and a finished one is reused by every model and every run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedllmrec.data.candidates import Candidates, assert_leak_free, sample_candidates
from fedllmrec.data.registry import load_dataset
from fedllmrec.data.schema import RecDataset
from fedllmrec.data.split import Split, SplitConfig, leave_one_out
from fedllmrec.io import atomic_dir, atomic_write_json
from fedllmrec.paths import cache_dir

FORMAT_VERSION = 1
SAMPLED_NEGATIVES = 99
LLM_NEGATIVES = 19


@dataclass(frozen=True, eq=False)
class Prepared:
    """A split dataset with its saved candidate lists."""

    split: Split
    candidates: dict[str, Candidates]  # "valid" / "test", 1 + 99 each
    folder: Path
    seed: int

    @property
    def dataset(self) -> RecDataset:
        return self.split.dataset

    def sampled(self, role: str, n_negatives: int = SAMPLED_NEGATIVES) -> Candidates:
        """Candidates of ``role`` with ``n_negatives`` negatives (99: sampled eval, 19: LLM)."""
        return self.candidates[role].head(n_negatives)


def prepared_key(name: str, config: SplitConfig, seed: int) -> str:
    """Folder name of a prepared dataset: readable prefix + hash of everything that matters."""
    blob = json.dumps(
        {"name": name, "config": config.to_dict(), "seed": seed, "format": FORMAT_VERSION},
        sort_keys=True,
    )
    digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(name).name)
    return f"{safe}-{digest}"


def prepare(
    name: str,
    *,
    data_dir: str | Path | None = None,
    config: SplitConfig | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    force: bool = False,
) -> Prepared:
    """Load ``name``, split it and draw candidates, or reuse an earlier prepared copy.

    Parameters
    ----------
    name : str
        Dataset name (``ml-100k``, ``kuaisar-r``, ``art-office``) or generic-format folder.
    data_dir : path, optional
        Where raw data is looked for first.
    config : SplitConfig, optional
        Filtering and split options.
    seed : int
        Seed of the candidate draw.
    out : path, optional
        Folder to write; default ``<cache>/prepared/<name>-<hash>``.
    force : bool
        Re-prepare even when the folder exists.
    """
    config = config or SplitConfig()
    folder = (
        Path(out)
        if out is not None
        else cache_dir() / "prepared" / prepared_key(name, config, seed)
    )
    if not force and (folder / "manifest.json").is_file():
        return load_prepared(folder)
    dataset = load_dataset(name, data_dir)
    split = leave_one_out(dataset, config)
    candidates = {
        role: sample_candidates(split, role, n_negatives=SAMPLED_NEGATIVES, seed=seed)
        for role in ("valid", "test")
    }
    for cands in candidates.values():
        assert_leak_free(split, cands)
    with atomic_dir(folder) as tmp:
        # The role column travels inside the interactions table, so rows and roles never part.
        dataclasses.replace(split.dataset, interactions=split.with_roles_table()).save(tmp)
        for role, cands in candidates.items():
            cands.save(tmp / f"candidates_{role}.parquet")
        atomic_write_json(
            tmp / "manifest.json",
            {
                "format": FORMAT_VERSION,
                "dataset": dataset.name,
                "source": str(name),
                "split_config": config.to_dict(),
                "seed": seed,
                "roles": split.summary(),
                "negatives": {"sampled": SAMPLED_NEGATIVES, "llm": LLM_NEGATIVES},
                "stats": dataset.stats(),
            },
        )
    return Prepared(split, candidates, folder, seed)


def load_prepared(folder: str | Path) -> Prepared:
    """Read a folder written by :func:`prepare`."""
    folder = Path(folder)
    manifest: dict[str, Any] = json.loads((folder / "manifest.json").read_text())
    dataset = RecDataset.load(folder)
    table = dataset.interactions
    role = table.column("role").to_numpy().astype(np.int8)
    dataset = dataclasses.replace(dataset, interactions=table.drop_columns(["role"]))
    split = Split(dataset, role, SplitConfig(**manifest["split_config"]))
    candidates = {r: Candidates.load(folder / f"candidates_{r}.parquet") for r in ("valid", "test")}
    return Prepared(split, candidates, folder, int(manifest["seed"]))
