"""Prepare a dataset once: load, filter, split and draw candidates; save everything.

A prepared folder is keyed by what its raw files hold (their absolute folder and
a digest of their bytes), the split configuration, the seed and the number of
sampled negatives, and is written atomically as a whole, so an interrupted
prepare leaves nothing behind, a finished one is reused by every model and
every run, and an edited data file is prepared again.
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
from fedllmrec.data.digest import file_sha256
from fedllmrec.data.registry import DatasetSource, load_source, resolve_dataset
from fedllmrec.data.schema import RecDataset
from fedllmrec.data.split import Split, SplitConfig, leave_one_out
from fedllmrec.errors import FedLLMRecError
from fedllmrec.io import atomic_dir, atomic_write_json
from fedllmrec.paths import cache_dir

# 2: keyed by content; "key" and "source" in the manifest; no candidate files with 0 negatives.
FORMAT_VERSION = 2
SAMPLED_NEGATIVES = 99
LLM_NEGATIVES = 19
ROLES = ("valid", "test")


@dataclass(frozen=True, eq=False)
class Prepared:
    """A split dataset with its saved candidate lists."""

    split: Split
    candidates: dict[str, Candidates]  # "valid" / "test", 1 + n_negatives each; {} with none
    folder: Path
    seed: int

    @property
    def dataset(self) -> RecDataset:
        return self.split.dataset

    @property
    def n_negatives(self) -> int:
        """Negatives saved per candidate list (0: no sampled candidates)."""
        return self.candidates["test"].n_negatives if self.candidates else 0

    def sampled(self, role: str, n_negatives: int | None = None) -> Candidates:
        """Candidates of ``role`` with ``n_negatives`` negatives (default: all saved).

        Raises
        ------
        FedLLMRecError
            When fewer negatives were saved, or none (prepared with ``n_negatives=0``).
        """
        saved = self.n_negatives
        if saved == 0:
            raise FedLLMRecError(
                f"{self.folder}: prepared with no sampled candidates (negatives = 0), so "
                "'sampled' evaluation is impossible: evaluate with modes = [\"full\"], or "
                "prepare with negatives > 0 (--negatives N, negatives = N in [data])"
            )
        if n_negatives is None:
            n_negatives = saved
        if not 0 < n_negatives <= saved:
            raise FedLLMRecError(
                f"{self.folder}: {n_negatives} sampled negatives requested, but {saved} were "
                f"saved: evaluate with n_negatives <= {saved}, or prepare with negatives = "
                f"{n_negatives} (--negatives {n_negatives})"
            )
        return self.candidates[role].head(n_negatives)


def source_digests(source: DatasetSource) -> dict[str, str]:
    """SHA-256 of each raw file of ``source``, by file name."""
    return {path.name: file_sha256(path) for path in source.files}


def prepared_key(
    source: DatasetSource,
    config: SplitConfig,
    seed: int,
    *,
    n_negatives: int = SAMPLED_NEGATIVES,
    encoding: str | None = None,
    digests: dict[str, str] | None = None,
) -> str:
    """Folder name of a prepared dataset: readable prefix + hash of everything that matters.

    That is the resolved folder (so one relative path run from two folders is two
    datasets), the bytes of every raw file (so an edited file is prepared again), the
    split configuration, the seed, the number of negatives and an encoding override.
    """
    blob = json.dumps(
        {
            "folder": str(source.folder),
            "files": digests if digests is not None else source_digests(source),
            "config": config.to_dict(),
            "seed": seed,
            "negatives": n_negatives,
            "encoding": encoding,
            "format": FORMAT_VERSION,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in source.name)
    return f"{safe}-{digest}"


def _stamp(source: DatasetSource) -> list[tuple[int, int]]:
    stats = [path.stat() for path in source.files]
    return [(st.st_size, st.st_mtime_ns) for st in stats]


def prepare(
    name: str | Path,
    *,
    data_dir: str | Path | None = None,
    config: SplitConfig | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    force: bool = False,
    n_negatives: int = SAMPLED_NEGATIVES,
    encoding: str | None = None,
) -> Prepared:
    """Load ``name``, split it and draw candidates, or reuse an earlier prepared copy.

    Parameters
    ----------
    name : str or Path
        Dataset name (``ml-100k``, ``kuaisar-r``, ``art-office``) or generic-format folder.
    data_dir : path, optional
        Where raw data is looked for first.
    config : SplitConfig, optional
        Filtering and split options.
    seed : int
        Seed of the candidate draw.
    out : path, optional
        Folder to write; default ``<cache>/prepared/<name>-<hash>``. A folder prepared
        from other data or options is prepared again.
    force : bool
        Re-prepare even when the folder exists.
    n_negatives : int
        Sampled negatives per evaluation interaction (99: the 1+99 protocol). Fewer
        fit small catalogues; 0 draws none, leaving full-ranking evaluation only.
    encoding : str, optional
        Text encoding of a generic folder's CSV files (over its ``dataset.json``).

    Raises
    ------
    FedLLMRecError
        When a user has fewer untouched items than ``n_negatives`` (the message says
        how many fit), or when the raw files change while they are read.
    """
    if isinstance(n_negatives, bool) or not isinstance(n_negatives, int) or n_negatives < 0:
        raise FedLLMRecError(f"n_negatives must be an integer >= 0, not {n_negatives!r}")
    config = config or SplitConfig()
    source = resolve_dataset(name, data_dir)
    stamp = _stamp(source)
    digests = source_digests(source)
    key = prepared_key(
        source, config, seed, n_negatives=n_negatives, encoding=encoding, digests=digests
    )
    folder = Path(out) if out is not None else cache_dir() / "prepared" / key
    manifest_path = folder / "manifest.json"
    if not force and manifest_path.is_file():
        try:
            reusable = json.loads(manifest_path.read_text()).get("key") == key
        except (OSError, ValueError):
            reusable = False  # unreadable: prepared again, and replaced as a whole
        if reusable:
            return load_prepared(folder)
    dataset = load_source(source, encoding=encoding)
    if _stamp(source) != stamp:
        # The digests describe the files before this read: a split of newer bytes must
        # not be saved under them.
        raise FedLLMRecError(
            f"{source.folder}: raw files changed while being prepared; run prepare again"
        )
    split = leave_one_out(dataset, config)
    candidates = (
        {role: sample_candidates(split, role, n_negatives=n_negatives, seed=seed) for role in ROLES}
        if n_negatives > 0
        else {}
    )
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
                "key": key,
                "dataset": dataset.name,
                "source": {
                    "name": str(name),
                    "folder": str(source.folder),
                    "files": digests,
                    "encoding": encoding,
                },
                "split_config": config.to_dict(),
                "seed": seed,
                "roles": split.summary(),
                "negatives": {
                    "sampled": n_negatives,
                    "llm": min(LLM_NEGATIVES, n_negatives),
                },
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
    saved = int(manifest.get("negatives", {}).get("sampled", SAMPLED_NEGATIVES))
    candidates = (
        {r: Candidates.load(folder / f"candidates_{r}.parquet") for r in ROLES} if saved > 0 else {}
    )
    return Prepared(split, candidates, folder, int(manifest["seed"]))
