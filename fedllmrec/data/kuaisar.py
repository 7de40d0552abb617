"""KuaiSAR-R as preprocessed for MRFF (AAAI-25): short-video exposures with click labels.

Every exposure is an interaction whose label is the click (0/1). Rows of
``df.csv`` are grouped by user in non-decreasing time, with many ties within
one millisecond; the canonical order keeps the file order for ties, which is
exactly the sequence MRFF trains on. User features are looked up by user id
(MRFF's released code looks them up by row position, giving every user
another user's features).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedllmrec.data.reader import Field, read_delimited
from fedllmrec.data.schema import RecDataset, build_dataset

USER_FEATURES = ("onehot_feat1", "onehot_feat2", "search_active_level", "reco_active_level")
ITEM_FEATURES = (
    "item_type",
    "upload_type",
    "first_level_category_name",
    "second_level_category_name",
    "third_level_category_name",
    "fourth_level_category_name",
)
REQUIRED_FILES = ("df.csv", "user_features.csv", "video_features.csv")


def load_kuaisar_r(folder: str | Path) -> RecDataset:
    """Read MRFF's KuaiSAR-R folder into the canonical schema."""
    folder = Path(folder)
    exposures = read_delimited(
        folder / "df.csv",
        [Field("user_id", "int"), Field("video_id", "int"),
         Field("timestamp", "int_from_float"), Field("is_click", "int")],
        sep=",",
        header=("user_id", "video_id", "timestamp", "is_click"),
    )  # fmt: skip
    videos = read_delimited(
        folder / "video_features.csv",
        [Field("video_id", "int")] + [Field(f, "int") for f in ITEM_FEATURES],
        sep=",",
        header=("video_id", *ITEM_FEATURES),
    )
    people = read_delimited(
        folder / "user_features.csv",
        [Field("user_id", "int")] + [Field(f, "int") for f in USER_FEATURES],
        sep=",",
        header=("user_id", *USER_FEATURES),
    )
    video_order = np.argsort(videos["video_id"], kind="stable")
    user_order = np.argsort(people["user_id"], kind="stable")
    items: dict[str, object] = {
        "item_id": videos["video_id"][video_order],
        "domain": ["videos"] * len(video_order),
        "_line": videos["_line"][video_order],
    }
    items.update({f: videos[f][video_order].astype(np.int32) for f in ITEM_FEATURES})
    users: dict[str, object] = {
        "user_id": people["user_id"][user_order],
        "_line": people["_line"][user_order],
    }
    users.update({f: people[f][user_order].astype(np.int32) for f in USER_FEATURES})
    return build_dataset(
        "kuaisar-r",
        interactions={
            "user_id": exposures["user_id"],
            "item_id": exposures["video_id"],
            "timestamp": exposures["timestamp"],
            "label": exposures["is_click"].astype(np.float32),
            "_line": exposures["_line"],
        },
        items=items,  # type: ignore[arg-type]
        users=users,  # type: ignore[arg-type]
        time_unit="ms",
        label_kind="click",
        private_attributes=USER_FEATURES,
        interactions_source=str(folder / "df.csv"),
        items_source=str(folder / "video_features.csv"),
        users_source=str(folder / "user_features.csv"),
        meta={
            "source": "KuaiSAR-R as preprocessed for MRFF (AAAI-25)",
            "item_features": list(ITEM_FEATURES),
            "user_features": list(USER_FEATURES),
        },
    )
