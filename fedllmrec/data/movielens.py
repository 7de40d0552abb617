"""MovieLens 100K from the original GroupLens files, with a checksummed download.

Traps handled here: ``u.item`` is latin-1, not UTF-8; ``u.data`` is in no
particular order and many users rated several movies in the same second.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from fedllmrec.data.reader import Field, read_delimited
from fedllmrec.data.schema import RecDataset, build_dataset
from fedllmrec.errors import DataFormatError, FedLLMRecError
from fedllmrec.io import atomic_dir

URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
# md5 of each file we read, as published in GroupLens' ml-100k.zip.
FILE_MD5 = {
    "u.data": "6e47046882bad158b0efbb84cd5cb987",
    "u.item": "c9e7f390115d79079537301d5204f3f7",
    "u.user": "1b53539edc13caad0282c8500608a319",
    "u.genre": "a7578bdb37758741ae9429d2c736af18",
}
GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
REQUIRED_FILES = ("u.data", "u.item", "u.user")


def load_movielens_100k(folder: str | Path) -> RecDataset:
    """Read the GroupLens ``ml-100k`` folder into the canonical schema.

    Ratings (1-5) become labels; every rating counts as an interaction. User
    age, gender, occupation and zip code are private attributes.
    """
    folder = Path(folder)
    ratings = read_delimited(
        folder / "u.data",
        [Field("user_id", "int"), Field("item_id", "int"), Field("rating", "int"),
         Field("timestamp", "int")],
        sep="\t",
    )  # fmt: skip
    movies = read_delimited(
        folder / "u.item",
        [Field("item_id", "int"), Field("title"), Field("release_date", required=False),
         Field("video_release_date", required=False), Field("imdb_url", required=False)]
        + [Field(f"genre_{i}", "int") for i in range(len(GENRES))],
        sep="|",
        encoding="latin-1",
    )  # fmt: skip
    people = read_delimited(
        folder / "u.user",
        [Field("user_id", "int"), Field("age", "int"), Field("gender"), Field("occupation"),
         Field("zip")],
        sep="|",
    )  # fmt: skip
    flags = np.stack([movies[f"genre_{i}"] for i in range(len(GENRES))], axis=1)  # (I, 19)
    if not np.isin(flags, (0, 1)).all():
        row, col = (int(x[0]) for x in np.nonzero(~np.isin(flags, (0, 1))))
        raise DataFormatError(
            folder / "u.item",
            f"genre flags must be 0 or 1, got {flags[row, col]}",
            line=int(movies["_line"][row]),
            field=f"genre_{col}",
        )
    genres = [", ".join(g for g, f in zip(GENRES, row, strict=True) if f) for row in flags]
    return build_dataset(
        "ml-100k",
        interactions={
            "user_id": ratings["user_id"],
            "item_id": ratings["item_id"],
            "timestamp": ratings["timestamp"],
            "label": ratings["rating"].astype(np.float32),
            "_line": ratings["_line"],
        },
        items={
            "item_id": movies["item_id"],
            "domain": ["movies"] * len(movies["item_id"]),
            "title": movies["title"],
            "category": genres,
            "release_date": [str(x) for x in movies["release_date"]],
            "_line": movies["_line"],
        },
        users={
            "user_id": people["user_id"],
            "age": people["age"],
            "gender": people["gender"].tolist(),
            "occupation": people["occupation"].tolist(),
            "zip": people["zip"].tolist(),
            "_line": people["_line"],
        },
        time_unit="s",
        label_kind="rating",
        private_attributes=("age", "gender", "occupation", "zip"),
        interactions_source=str(folder / "u.data"),
        items_source=str(folder / "u.item"),
        users_source=str(folder / "u.user"),
        meta={"source": "GroupLens MovieLens 100K", "url": URL},
    )


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def download_movielens_100k(target: str | Path, url: str = URL) -> Path:
    """Download ``ml-100k.zip`` and unpack it into ``target`` after checking every file's md5.

    The folder appears atomically: a failed or interrupted download leaves nothing.

    Raises
    ------
    FedLLMRecError
        When the download fails or a file's checksum does not match.
    """
    target = Path(target)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            payload = response.read()
    except OSError as err:
        raise FedLLMRecError(f"could not download MovieLens 100K from {url}: {err}") from err
    try:
        archive = zipfile.ZipFile(io.BytesIO(payload))
    except zipfile.BadZipFile:
        raise FedLLMRecError(f"{url}: the download is not a zip archive") from None
    members = {Path(name).name: name for name in archive.namelist() if not name.endswith("/")}
    with atomic_dir(target) as tmp:
        for file_name, expected in FILE_MD5.items():
            if file_name not in members:
                raise FedLLMRecError(f"{url}: the archive has no {file_name}")
            data = archive.read(members[file_name])
            if _md5(data) != expected:
                raise FedLLMRecError(
                    f"{url}: checksum mismatch for {file_name} "
                    f"(md5 {_md5(data)}, expected {expected}); refusing to use it"
                )
            (tmp / file_name).write_bytes(data)
        for extra in ("README", "u.info", "u.occupation"):
            if extra in members:
                with archive.open(members[extra]) as src, open(tmp / extra, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    return target
