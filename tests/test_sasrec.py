"""SASRec shapes and causal masking: a later item never changes an earlier position."""

from __future__ import annotations

import numpy as np
import torch

from fedllmrec.data.prepare import Prepared
from fedllmrec.models.sasrec import PAD, SASRec, SASRecConfig


def make(seed: int = 0) -> SASRec:
    torch.manual_seed(seed)
    model = SASRec(SASRecConfig(n_items=1682, max_len=20, dim=32, n_layers=2, n_heads=2))
    return model.eval()


def test_shapes_and_scores() -> None:
    model = make()
    seq = torch.randint(1, 1683, (4, 20))
    seq[:, :5] = PAD  # left padding
    states = model(seq)
    assert states.shape == (4, 20, 32)
    assert torch.isfinite(states).all()
    last = states[:, -1]
    assert model.score(last, torch.arange(1, 1683)).shape == (4, 1682)
    cands = torch.randint(1, 1683, (4, 100))
    full = model.score(last, torch.arange(0, 1683))
    torch.testing.assert_close(model.score(last, cands), full.gather(1, cands))


def test_causal_no_future_leakage() -> None:
    model = make()
    seq = torch.randint(1, 1683, (3, 20))
    changed = seq.clone()
    changed[:, 12:] = torch.randint(1, 1683, (3, 8))  # rewrite positions 12..19
    with torch.no_grad():
        a, b = model(seq), model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_padding_rows_are_finite_and_independent() -> None:
    model = make()
    seq = torch.randint(1, 1683, (1, 20))
    seq[0, :10] = PAD
    with torch.no_grad():
        alone = model(seq)
        batch = torch.cat([seq, torch.randint(1, 1683, (2, 20)), torch.zeros(1, 20).long()])
        out = model(batch)
    assert torch.isfinite(out).all()  # a fully padded row yields no NaN
    torch.testing.assert_close(out[:1], alone)  # rows do not influence each other


def test_training_on_ml100k_is_deterministic_and_beats_popularity(
    ml100k_prepared: Prepared,
) -> None:
    from fedllmrec.eval import evaluate_ranking
    from fedllmrec.models import Popularity
    from fedllmrec.models.sequential import SequentialRecommender, SequentialTrainConfig

    torch.set_num_threads(2)
    runs = [
        SequentialRecommender(max_len=20, train=SequentialTrainConfig(epochs=4)).fit(
            ml100k_prepared.split
        )
        for _ in range(2)
    ]
    assert runs[0].losses == runs[1].losses
    assert runs[0].losses[-1] < runs[0].losses[0]
    sasrec = evaluate_ranking(runs[0], ml100k_prepared, mode="sampled")["metrics"]["HR@10"]
    pop = Popularity().fit(ml100k_prepared.split)
    floor = evaluate_ranking(pop, ml100k_prepared, mode="sampled")["metrics"]["HR@10"]
    assert sasrec > floor


def test_gru4rec_is_causal_and_trains(ml100k_prepared: Prepared) -> None:
    from fedllmrec.eval import evaluate_ranking
    from fedllmrec.models.gru4rec import GRU4Rec, GRU4RecConfig
    from fedllmrec.models.sequential import SequentialRecommender, SequentialTrainConfig

    torch.manual_seed(0)
    gru = GRU4Rec(GRU4RecConfig(n_items=1682, dim=32)).eval()
    seq = torch.randint(1, 1683, (2, 15))
    changed = seq.clone()
    changed[:, 9:] = torch.randint(1, 1683, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(gru(seq)[:, :9], gru(changed)[:, :9])
    model = SequentialRecommender(
        architecture="gru4rec", max_len=20, train=SequentialTrainConfig(epochs=3)
    ).fit(ml100k_prepared.split)
    assert model.losses[-1] < model.losses[0]
    hr = evaluate_ranking(model, ml100k_prepared, mode="sampled")["metrics"]["HR@10"]
    assert 0.2 < hr <= 1.0


def test_sampled_softmax_trains_deterministically(ml100k_prepared: Prepared) -> None:
    from fedllmrec.models.sequential import SequentialRecommender, SequentialTrainConfig

    torch.set_num_threads(2)
    config = SequentialTrainConfig(loss="sampled", n_negatives=200, batch_size=256)
    runs = []
    for _ in range(2):
        model = SequentialRecommender(max_len=20, dim=32, train=config).setup(ml100k_prepared.split)
        model.set_training_tensors({k: v[:1024] for k, v in model.training_tensors().items()})
        model.train_epoch()
        model.train_epoch()
        runs.append(model.losses)
    assert runs[0] == runs[1]
    assert runs[0][1] < min(runs[0][0], np.log(201))  # learns; beats a uniform guess of 201


def test_history_exclusion_masks_only_the_users_training_items(ml100k_prepared: Prepared) -> None:
    """``negatives_exclude="history"`` masks negatives the row's user trained on, never
    held-out items (which training must not consult); the default masks only the target."""
    from fedllmrec.models.sequential import (
        SequentialRecommender,
        SequentialTrainConfig,
        history_mask,
    )

    split = ml100k_prepared.split
    trained = split.observed("valid")  # what training may read
    own = torch.from_numpy(trained.items_of(0).astype(np.int64) + 1)  # shifted ids
    touched = torch.from_numpy(split.touched.items_of(0).astype(np.int64) + 1)
    held_out = touched[~torch.isin(touched, own)]
    assert held_out.numel() == 2  # user 0's validation and test items
    mask = history_mask(trained, torch.tensor([0, 1]), torch.cat([own, held_out]))
    assert mask[0, : own.numel()].all() and not mask[0, own.numel() :].any()
    assert mask[1].sum() < mask[0].sum()  # another user: only the items both touched

    torch.set_num_threads(1)
    losses = {}
    for exclude in ("target", "history"):
        config = SequentialTrainConfig(loss="sampled", n_negatives=1000, negatives_exclude=exclude)  # type: ignore[arg-type]
        model = SequentialRecommender(max_len=20, dim=32, dropout=0.0, train=config).setup(split)
        rows = torch.nonzero(model.training_tensors()["user"] == 0)[:, 0]
        batch = {key: value[rows] for key, value in model.training_tensors().items()}
        losses[exclude] = model.batch_loss(batch).task.item()  # same seed: the same draws
    # User 0 trained on ~270 of 1,682 items: many of the 1,000 draws are masked away.
    assert losses["history"] < losses["target"]
