"""MRFF: causality, distinct groups, the balance loss, features by id, every parameter trains."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from fedllmrec.data.prepare import Prepared
from fedllmrec.data.schema import RecDataset
from fedllmrec.data.split import leave_one_out
from fedllmrec.models.mrff import MRFF, MRFFConfig, Routing, balance_loss
from fedllmrec.models.sasrec import trim_left_padding
from fedllmrec.models.sequential import SequentialRecommender, SequentialTrainConfig


def make(gate: str = "weighted", seed: int = 0) -> MRFF:
    torch.manual_seed(seed)
    config = MRFFConfig(n_items=50, max_len=12, dim=16, n_heads=2, n_users=6, gate=gate)  # type: ignore[arg-type]
    return MRFF(config).eval()


def test_shapes_and_no_future_leakage() -> None:
    model = make()
    seq = torch.randint(1, 51, (4, 12))
    seq[:2, :4] = 0  # left padding
    users = torch.tensor([0, 1, 2, 5])
    with torch.no_grad():
        states, routing = model(seq, users)
        changed = seq.clone()
        changed[:, 8:] = torch.randint(1, 51, (4, 4))
        later, _ = model(changed, users)
    assert states.shape == (4, 12, 16) and torch.isfinite(states).all()
    assert routing.groups.shape == routing.probs.shape == (2, 4)  # (L, B)
    assert ((routing.probs > 0) & (routing.probs <= 1)).all()
    # The gate sees a prefix mean, so routing cannot carry later items backwards.
    torch.testing.assert_close(states[:, :8], later[:, :8])
    assert not torch.allclose(states[:, 8:], later[:, 8:])


def test_cutting_all_padding_columns_changes_no_state() -> None:
    """Positions count back from the newest item, so a trimmed batch is the same batch."""
    model = make()
    seq = torch.randint(1, 51, (3, 12))
    seq[0, :5], seq[1, :7], seq[2, :9] = 0, 0, 0  # columns 0-4 are padding in every row
    users = torch.tensor([0, 3, 5])
    batch = trim_left_padding({"seq": seq, "user": users})
    assert batch["seq"].shape == (3, 7) and torch.equal(batch["user"], users)
    assert torch.equal(batch["seq"], seq[:, 5:])
    with torch.no_grad():
        full, routing = model(seq, users)
        cut, cut_routing = model(batch["seq"], users)
    torch.testing.assert_close(cut, full[:, 5:])
    assert torch.equal(cut_routing.groups, routing.groups)
    torch.testing.assert_close(cut_routing.probs, routing.probs)
    # Nothing to cut: the batch comes back as it was.
    assert trim_left_padding(batch)["seq"] is batch["seq"]


def test_group_ffns_are_independent() -> None:
    model = make()
    ffn = model.blocks[0].group_ffn
    k = ffn.w1.shape[0]
    assert k == 4
    for a in range(k):
        for b in range(a + 1, k):
            assert not torch.allclose(ffn.w1[a], ffn.w1[b])
            assert not torch.allclose(ffn.w2[a], ffn.w2[b])
    # Changing one group's weights changes only the positions routed to it.
    z = torch.randn(3, 12, 16)
    groups = torch.randint(0, k, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.bool)
    before = ffn(z, groups, mask)
    with torch.no_grad():
        ffn.w2[2] += 1.0
    after = ffn(z, groups, mask)
    moved = ~torch.isclose(before, after).all(dim=-1)
    assert torch.equal(moved, groups == 2)


def test_balance_loss_on_hand_made_routing() -> None:
    # 2 layers, 4 users, K = 2. Layer 0: 3 users in group 0, 1 in group 1; layer 1: 2 and 2.
    groups = torch.tensor([[0, 0, 0, 1], [1, 0, 1, 0]])
    probs = torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.5, 0.6, 0.7, 0.8]], requires_grad=True)
    loss = balance_loss(Routing(groups, probs), n_groups=2, alpha=0.1)
    layer0 = 0.75 * 0.9 + 0.75 * 0.8 + 0.75 * 0.7 + 0.25 * 0.6
    layer1 = 0.5 * (0.5 + 0.6 + 0.7 + 0.8)
    expected = 0.1 * 2 * (layer0 + layer1) / 4
    assert loss.item() == pytest.approx(expected)
    # With last round's load (federated), that load replaces the batch's own counts.
    load = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    given = balance_loss(Routing(groups, probs), 2, 0.1, load=load)
    expected_given = 0.2 * (0.5 * (0.9 + 0.8 + 0.7 + 0.6) + 1.0 * (0.6 + 0.8)) / 4
    assert given.item() == pytest.approx(expected_given)
    loss.backward()
    assert probs.grad is not None and (probs.grad > 0).all()  # pushes loaded groups' p down


def test_user_features_are_looked_up_by_user_id(kuaisar: RecDataset, data_root: Path) -> None:
    split = leave_one_out(kuaisar)
    features = ("onehot_feat1", "search_active_level")
    rec = SequentialRecommender(
        architecture="mrff", dim=16, max_len=8, user_features=features, item_features=()
    ).setup(split)
    assert isinstance(rec.model, MRFF)
    raw = data_root / "kuaisar-r-mrff" / "user_features.csv"
    with raw.open() as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["user_id"] != "0"  # row position and user id really differ in the file
    users = kuaisar.users
    dense = dict(zip(users["user_id"].to_pylist(), users["user"].to_pylist(), strict=True))
    codes = rec.model.user_features.numpy()
    for f, name in enumerate(features):
        values = sorted({int(r[name]) for r in rows})
        for r in rows:
            assert codes[dense[r["user_id"]], f] == values.index(int(r[name])), r["user_id"]


def _train_one_step(prepared: Prepared, gate: str, alpha: float) -> tuple[dict, dict, list[float]]:
    torch.manual_seed(0)
    rec = SequentialRecommender(
        architecture="mrff",
        max_len=20,
        dim=16,
        gate=gate,  # type: ignore[arg-type]
        balance_alpha=alpha,
        train=SequentialTrainConfig(batch_size=64),
    ).setup(prepared.split)
    assert rec.model is not None
    before = {n: p.detach().clone() for n, p in rec.model.named_parameters()}
    # One epoch on a 64-user slice of real ml-100k: one optimiser step per optimiser.
    rec.set_training_tensors({k: v[:64] for k, v in rec.training_tensors().items()})
    rec.train_epoch()
    after = {n: p.detach().clone() for n, p in rec.model.named_parameters()}
    return before, after, rec.losses


@pytest.mark.parametrize("gate", ["weighted", "balance_only"])
def test_every_parameter_trains(ml100k_prepared: Prepared, gate: str) -> None:
    before, after, losses = _train_one_step(ml100k_prepared, gate, alpha=0.1)
    frozen = [n for n in before if torch.equal(before[n], after[n])]
    assert frozen == [], f"parameters that never train: {frozen}"
    # Private rows move only for the users in the step; everybody else's stay put.
    trained_users = set(range(64))
    rows = after["user_emb.weight"] != before["user_emb.weight"]
    moved = set(np.flatnonzero(rows.any(dim=1).numpy()).tolist())
    assert moved and moved <= trained_users
    assert np.isfinite(losses).all()
    again = _train_one_step(ml100k_prepared, gate, alpha=0.1)
    assert again[2] == losses  # deterministic


def test_balance_only_gate_learns_from_the_balance_loss_alone(ml100k_prepared: Prepared) -> None:
    """As released: with alpha = 0 the gate receives no gradient; the weighted gate does."""
    before, after, _ = _train_one_step(ml100k_prepared, "balance_only", alpha=0.0)
    assert torch.equal(before["blocks.0.gate.weight"], after["blocks.0.gate.weight"])
    before, after, _ = _train_one_step(ml100k_prepared, "weighted", alpha=0.0)
    assert not torch.equal(before["blocks.0.gate.weight"], after["blocks.0.gate.weight"])
