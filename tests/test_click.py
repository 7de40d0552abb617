"""Click prediction on real KuaiSAR-R: leak-free histories, training windows, determinism."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from fedllmrec.data.schema import RecDataset
from fedllmrec.data.sequences import windows
from fedllmrec.data.split import TEST, TRAIN, Split, leave_one_out
from fedllmrec.eval.metrics import click_metrics
from fedllmrec.models.click import ClickRecommender
from fedllmrec.models.dropout import Dropout
from fedllmrec.models.sequential import SequentialTrainConfig


def test_windows_make_every_later_item_a_target_once() -> None:
    seqs = [np.arange(10), np.arange(1), np.arange(100, 103)]
    chunks, owners = windows(seqs, 4)
    assert owners.tolist() == [0, 0, 0, 2]
    assert [c.tolist() for c in chunks] == [
        [6, 7, 8, 9],
        [3, 4, 5, 6],
        [0, 1, 2, 3],
        [100, 101, 102],
    ]
    targets = np.concatenate([c[1:] for c in chunks])
    assert sorted(targets.tolist()) == [*range(1, 10), 101, 102]
    with pytest.raises(ValueError):
        windows(seqs, 1)


def _with_labels(split: Split, rows: np.ndarray) -> Split:
    """The same split with the click labels of ``rows`` flipped."""
    ds = split.dataset
    labels = ds.label.copy()
    labels[rows] = 1.0 - labels[rows]
    table = ds.interactions.set_column(
        ds.interactions.schema.get_field_index("label"), "label", pa.array(labels)
    )
    return dataclasses.replace(split, dataset=dataclasses.replace(ds, interactions=table))


@pytest.fixture(scope="module")
def kuaisar_split(kuaisar: RecDataset) -> Split:
    return leave_one_out(kuaisar)


def _model(architecture: str) -> ClickRecommender:
    return ClickRecommender(
        architecture=architecture,  # type: ignore[arg-type]
        max_len=20,
        dim=24,
        item_features=("item_type", "first_level_category_name", "second_level_category_name"),
        train=SequentialTrainConfig(batch_size=256),
    )


def test_held_out_labels_never_reach_the_prediction(kuaisar_split: Split) -> None:
    torch.manual_seed(0)
    model = _model("mrff").setup(kuaisar_split)
    probs, labels = model.predict("test")
    assert probs.shape == labels.shape == (kuaisar_split.dataset.n_users,)
    assert ((probs > 0) & (probs < 1)).all()
    model.split = _with_labels(kuaisar_split, kuaisar_split.rows(TEST))
    flipped, flipped_labels = model.predict("test")
    np.testing.assert_array_equal(flipped, probs)  # the test exposure's own click is unseen
    assert (flipped_labels != labels).all()
    # Past clicks are part of the history: flipping training labels changes predictions.
    model.split = _with_labels(kuaisar_split, np.flatnonzero(kuaisar_split.role == TRAIN))
    assert not np.allclose(model.predict("test")[0], probs)


@pytest.mark.parametrize(
    ("architecture", "fast_dropout"), [("sasrec", False), ("mrff", False), ("mrff", True)]
)
def test_click_training_is_deterministic_and_learns(
    kuaisar_split: Split, architecture: str, fast_dropout: bool
) -> None:
    torch.set_num_threads(2)
    runs = []
    for _ in range(2):
        model = dataclasses.replace(_model(architecture), fast_dropout=fast_dropout)
        model.setup(kuaisar_split)
        assert model.model is not None
        dropouts = [m for m in model.model.modules() if isinstance(m, Dropout)]
        assert dropouts and all(m.fast == fast_dropout for m in dropouts)
        model.set_training_tensors({k: v[:1500] for k, v in model.training_tensors().items()})
        model.train_epoch()
        model.train_epoch()
        runs.append(model)
    assert runs[0].losses == runs[1].losses
    assert runs[0].losses[1] < runs[0].losses[0]
    probs, labels = runs[0].predict("valid")
    metrics = click_metrics(labels, probs)
    assert metrics["rows"] == kuaisar_split.dataset.n_users
    assert 0.55 < metrics["AUC"] <= 1.0  # well above chance after two short epochs
    assert 0.0 < metrics["LogLoss"] < 0.75


def test_click_recipe_trains_and_reports_auc(data_root: Path, tmp_path: Path) -> None:
    from fedllmrec.recipes.recipe import load_recipe, run_recipe

    recipe = load_recipe(
        Path(__file__).parents[1] / "recipes" / "mrff-kuaisar.toml",
        ["model.max_len=10", "model.dim=16", "trainer.max_epochs=1", "model.train.batch_size=512"],
    )
    metrics = run_recipe(recipe, tmp_path, data_dir=data_root, quiet=True)
    assert set(metrics["test"]) == {"AUC", "LogLoss"}
    assert 0.5 < metrics["test"]["AUC"] <= 1.0
    assert (tmp_path / "metrics.json").is_file()
