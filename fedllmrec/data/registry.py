"""Find and load datasets by name or path.

Raw data is searched in ``--data-dir``, then ``$FEDLLMREC_DATA``, then the
cache (:func:`fedllmrec.paths.data_search_path`). MovieLens 100K is downloaded
into the cache, checksum-verified, when it is found nowhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedllmrec.data import art_office, kuaisar, movielens
from fedllmrec.data.generic import load_generic, source_files
from fedllmrec.data.schema import RecDataset
from fedllmrec.errors import DatasetNotFoundError, FedLLMRecError
from fedllmrec.paths import cache_dir, data_search_path


@dataclass(frozen=True)
class DatasetSpec:
    """A named, built-in dataset: where its files live and how to read them."""

    name: str
    folder_names: tuple[str, ...]
    required_files: tuple[str, ...]
    loader: Callable[[Path], RecDataset]
    download: Callable[[Path], Path] | None = None


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "ml-100k",
            ("ml-100k",),
            movielens.REQUIRED_FILES,
            movielens.load_movielens_100k,
            movielens.download_movielens_100k,
        ),
        DatasetSpec(
            "kuaisar-r",
            ("kuaisar-r-mrff", "kuaisar-r", "KuaiSAR-R"),
            kuaisar.REQUIRED_FILES,
            kuaisar.load_kuaisar_r,
        ),
        DatasetSpec(
            "art-office",
            ("amazon-art-office-urllm", "art-office"),
            art_office.REQUIRED_FILES,
            art_office.load_art_office,
        ),
    )
}


def locate(name: str, data_dir: str | Path | None = None, *, download: bool = True) -> Path:
    """Return the folder holding the raw files of dataset ``name``.

    Raises
    ------
    DatasetNotFoundError
        When no searched folder has all its files (and it cannot be downloaded).
    """
    spec = DATASETS.get(name)
    if spec is None:
        known = ", ".join(DATASETS)
        raise DatasetNotFoundError(
            f"unknown dataset {name!r}: use one of {known}, or a folder in the generic format"
        )
    searched: list[Path] = []
    for root in data_search_path(data_dir):
        for folder_name in spec.folder_names:
            folder = root / folder_name
            searched.append(folder)
            if all((folder / f).is_file() for f in spec.required_files):
                return folder
    if download and spec.download is not None:
        return spec.download(cache_dir() / "data" / spec.folder_names[0])
    raise DatasetNotFoundError(
        f"dataset {name!r} not found; looked for {', '.join(spec.required_files)} in: "
        + ", ".join(str(p) for p in searched)
        + " (pass --data-dir or set FEDLLMREC_DATA)"
    )


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset's raw files are: what a prepared copy of it is keyed by.

    Parameters
    ----------
    name : str
        The built-in name, or the generic-format folder's name.
    path : Path
        The folder as found or given: what is loaded, and what error messages name.
    folder : Path
        The same folder, absolute and resolved: what prepared copies are keyed by.
    files : tuple of Path
        The raw files the loader reads, in a fixed order.
    builtin : bool
        Whether ``name`` is a built-in dataset (else a generic-format folder).
    """

    name: str
    path: Path
    folder: Path
    files: tuple[Path, ...]
    builtin: bool


def resolve_dataset(
    name_or_path: str | Path, data_dir: str | Path | None = None, *, download: bool = True
) -> DatasetSource:
    """Find the raw files of a built-in dataset by name, or of a generic-format folder.

    Raises
    ------
    DatasetNotFoundError
        When the name is no built-in dataset and no existing folder, or its files are missing.
    """
    name = str(name_or_path)
    if name in DATASETS:
        # resolve(): one folder reached through two relative paths or a link is one dataset.
        found = locate(name, data_dir, download=download)
        folder = found.resolve()
        files = tuple(folder / f for f in DATASETS[name].required_files)
        return DatasetSource(name, found, folder, files, builtin=True)
    path = Path(name).expanduser()
    if path.is_dir():
        folder = path.resolve()
        files = tuple(source_files(folder))
        return DatasetSource(folder.name, path, folder, files, builtin=False)
    known = ", ".join(DATASETS)
    raise DatasetNotFoundError(
        f"{name!r} is neither a dataset name ({known}) nor an existing folder"
    )


def load_source(source: DatasetSource, *, encoding: str | None = None) -> RecDataset:
    """Load the dataset found by :func:`resolve_dataset`.

    ``encoding`` overrides a generic folder's text encoding; built-in datasets have fixed
    encodings, so passing one for them is an error rather than silently ignored.
    """
    if source.builtin:
        if encoding is not None:
            raise FedLLMRecError(
                f"an encoding applies only to generic-format folders; {source.name} is "
                "built in and read with its own encodings (drop --encoding)"
            )
        return DATASETS[source.name].loader(source.path)
    return load_generic(source.path, encoding=encoding)


def load_dataset(
    name_or_path: str | Path,
    data_dir: str | Path | None = None,
    *,
    download: bool = True,
    encoding: str | None = None,
) -> RecDataset:
    """Load a built-in dataset by name, or a generic-format folder by path.

    ``encoding`` sets a generic folder's text encoding (over its ``dataset.json``).
    """
    return load_source(
        resolve_dataset(name_or_path, data_dir, download=download), encoding=encoding
    )
