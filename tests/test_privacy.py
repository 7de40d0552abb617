"""The privacy seam on real KuaiSAR-R clients: secure sum, clipping, DP noise, accountant."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fedllmrec.data.prepare import Prepared
from fedllmrec.data.schema import RecDataset
from fedllmrec.data.split import Split, leave_one_out
from fedllmrec.errors import OptionError
from fedllmrec.eval.evaluators import RankingEvaluator
from fedllmrec.federated.config import FederationConfig, LocalConfig, PrivacyConfig, StrategyConfig
from fedllmrec.federated.ownership import SHARED
from fedllmrec.federated.privacy import Accountant, Layout, SecureSum, pack, unpack, upload_norms
from fedllmrec.federated.simulator import FederatedRecommender
from fedllmrec.federated.uploads import Part, ProtectedSum, ProtectedUploads, Uploads, UploadSum
from fedllmrec.models.click import ClickRecommender
from fedllmrec.models.sequential import SequentialRecommender
from fedllmrec.train.trainer import Trainer, TrainerConfig

torch.set_num_threads(1)

USER_FEATURES = ["onehot_feat1", "onehot_feat2", "search_active_level", "reco_active_level"]
ITEM_FEATURES = ["item_type", "first_level_category_name"]


@pytest.fixture(scope="module")
def kuaisar_split(kuaisar: RecDataset) -> Split:
    return leave_one_out(kuaisar)


def federation(
    privacy: PrivacyConfig | None = None, n_clients: int = 12, **strategy: object
) -> FederatedRecommender:
    """A small MRFF click model (dropout 0) on the first ``n_clients`` real clients."""
    model = ClickRecommender(
        architecture="mrff",
        dim=8,
        max_len=12,
        dropout=0.0,
        item_features=ITEM_FEATURES,
        user_features=USER_FEATURES,
    )
    config = FederationConfig(
        engine="vmap",
        local=LocalConfig(steps=1, lr=0.5, optimizer="sgd"),
        strategy=StrategyConfig(weighting="uniform", **strategy),  # type: ignore[arg-type]
        max_clients=n_clients,
        chunk_windows=8,
        privacy=privacy or PrivacyConfig(),
    )
    return FederatedRecommender(model, config)


def round_parts(fed: FederatedRecommender, positions: np.ndarray) -> list[Part]:
    """What the seam hands the server for round 1's local training of ``positions``."""
    parts: list[Part] = []
    sent = {name: t.detach().clone() for name, t in fed.shared_tensors().items()}
    fed.local_training(positions, 1, sent, fed.server.load, parts.append, cohort=len(positions))
    return parts


def shared_after_round(fed: FederatedRecommender) -> dict[str, torch.Tensor]:
    fed.train_round()
    return {name: t.detach().clone() for name, t in fed.shared_tensors().items()}


# ---------------------------------------------------------------- accountant


def test_epsilon_grows_with_rounds_and_shrinks_with_noise() -> None:
    rounds = [1, 10, 50, 200]
    for q in (0.1, 1.0):
        for sigma in (0.8, 1.5):
            eps = [Accountant(sigma, q, 1e-5).epsilon(t) for t in rounds]
            assert all(a < b for a, b in itertools.pairwise(eps)), eps
        less_noise = Accountant(0.8, q, 1e-5).epsilon(50)
        more_noise = Accountant(1.5, q, 1e-5).epsilon(50)
        assert more_noise < less_noise
    # Poisson sampling amplifies: the same noise costs less epsilon at q < 1.
    assert Accountant(1.0, 0.1, 1e-5).epsilon(50) < Accountant(1.0, 1.0, 1e-5).epsilon(50)
    # A reference point of the RDP accountant (Gaussian, sigma 1, one round, delta 1e-5).
    assert Accountant(1.0, 1.0, 1e-5).epsilon(1) == pytest.approx(4.7, abs=0.6)
    assert Accountant(1.0, 0.1, 1e-5).epsilon(0) == 0.0


# ---------------------------------------------------------------- secure aggregation


def test_the_secure_sum_equals_the_plain_sum(kuaisar_split: Split) -> None:
    plain = federation().setup(kuaisar_split)
    secure = federation(PrivacyConfig(secure_aggregation=True)).setup(kuaisar_split)
    positions = np.arange(len(plain.population))
    parts = round_parts(secure, positions)
    # The server receives one thing per round: the sum, no client's upload.
    assert len(parts) == 1 and isinstance(parts[0], UploadSum)
    total = parts[0]
    uploads = [p for p in round_parts(plain, positions) if isinstance(p, Uploads)]
    assert sum(len(p) for p in uploads) == len(positions)
    for name in plain.ownership.names(*SHARED):
        expected = torch.cat([p.deltas[name] for p in uploads]).double().sum(0)
        torch.testing.assert_close(total.sums[name].double(), expected, rtol=1e-5, atol=1e-6)
    routing = torch.cat([p.routing for p in uploads])
    counts = torch.nn.functional.one_hot(routing, 4).sum(0).double()
    assert torch.equal(total.routing_counts, counts)
    assert total.total_weight == len(positions)
    # The round's result: the same model and balance load as plain averaging.
    fresh_plain = federation().setup(kuaisar_split)
    fresh_secure = federation(PrivacyConfig(secure_aggregation=True)).setup(kuaisar_split)
    a, b = shared_after_round(fresh_plain), shared_after_round(fresh_secure)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fresh_plain.server.load, fresh_secure.server.load)


def test_packed_vectors_sum_to_the_secure_sum(kuaisar_split: Split) -> None:
    fed = federation().setup(kuaisar_split)
    own = fed.ownership
    parts = [p for p in round_parts(fed, np.arange(8)) if isinstance(p, Uploads)]
    layout = Layout.of(own, protected=False)
    vectors = np.concatenate([pack(p, layout, "uniform") for p in parts])
    assert vectors.shape == (8, layout.size)
    positions = np.concatenate([p.positions for p in parts])
    unpacked = unpack(vectors.astype(np.float64).sum(0), positions, layout, own)
    summed = SecureSum(own, "uniform")
    for part in parts:
        summed.add(part)
    direct = summed.result()
    assert isinstance(unpacked, UploadSum) and isinstance(direct, UploadSum)
    for name in direct.sums:
        torch.testing.assert_close(unpacked.sums[name], direct.sums[name], rtol=1e-5, atol=1e-6)
    for name in direct.group_weight:
        torch.testing.assert_close(unpacked.group_weight[name], direct.group_weight[name])
    assert unpacked.examples == pytest.approx(direct.examples)
    assert unpacked.loss_sum == pytest.approx(direct.loss_sum, rel=1e-5)


# ---------------------------------------------------------------- client-level DP


def test_clipping_bounds_every_upload(kuaisar_split: Split) -> None:
    clip = 0.02
    fed = federation(PrivacyConfig(dp="central", clip=clip, noise_multiplier=1.0)).setup(
        kuaisar_split
    )
    raw = federation().setup(kuaisar_split)
    positions = np.arange(len(fed.population))
    parts = round_parts(fed, positions)
    assert all(isinstance(p, ProtectedUploads) for p in parts)
    norms = torch.cat([upload_norms(p.deltas) for p in parts if isinstance(p, ProtectedUploads)])
    raw_norms = torch.cat([upload_norms(p.deltas) for p in round_parts(raw, positions)])
    assert (raw_norms > clip).all(), "the bound binds: every raw upload is larger"
    assert (norms <= clip * (1 + 1e-5)).all()
    torch.testing.assert_close(norms, torch.full_like(norms, clip), rtol=1e-4, atol=0)
    # The header is bounded too, so the sensitivity holds for the whole vector.
    release = fed.release
    assert release is not None
    for part in parts:
        assert isinstance(part, ProtectedUploads)
        assert (part.header.norm(dim=1) <= release.code.norm_bound * (1 + 1e-5)).all()
    assert release.sensitivity == pytest.approx(clip * math.sqrt(1.25))


@pytest.mark.parametrize("mode", ["local", "distributed"])
def test_noise_reaches_every_sent_tensor(kuaisar_split: Split, mode: str) -> None:
    secure = mode == "distributed"
    quiet = PrivacyConfig(dp="central", clip=0.05, noise_multiplier=1.0)
    noisy = PrivacyConfig(
        dp=mode,  # type: ignore[arg-type]
        clip=0.05,
        noise_multiplier=1.0,
        secure_aggregation=secure,
    )
    positions = np.arange(6)
    clean = round_parts(federation(quiet).setup(kuaisar_split), positions)
    fed = federation(noisy).setup(kuaisar_split)
    sent = round_parts(fed, positions)
    release = fed.release
    assert release is not None
    std = release.client_noise_std(len(positions))
    assert std == pytest.approx(release.std if mode == "local" else release.std / math.sqrt(6))
    clean_sum = SecureSum(fed.ownership, "uniform")
    for part in clean:
        clean_sum.add(part)
    expected = clean_sum.result()
    assert isinstance(expected, ProtectedSum)
    if secure:
        assert len(sent) == 1 and isinstance(sent[0], ProtectedSum)
        got: ProtectedSum = sent[0]
    else:
        assert all(isinstance(p, ProtectedUploads) for p in sent)
        summed = SecureSum(fed.ownership, "uniform")
        for part in sent:
            summed.add(part)
        result = summed.result()
        assert isinstance(result, ProtectedSum)
        got = result
    # Every coordinate of every tensor and of the header moved, by noise of the set scale:
    # the sum of C clients' noise has std sqrt(C) * std (local) or std (distributed).
    total_std = std * math.sqrt(len(positions))
    for name, value in got.sums.items():
        diff = (value - expected.sums[name]).flatten()
        assert (diff != 0).all(), name
        if diff.numel() >= 200:
            assert diff.std().item() == pytest.approx(total_std, rel=0.2), name
    assert ((got.header - expected.header) != 0).all()


def test_a_dp_round_with_poisson_sampling_trains_and_accounts(kuaisar_split: Split) -> None:
    privacy = PrivacyConfig(dp="central", clip=0.1, noise_multiplier=1.0)
    fed = federation(privacy, n_clients=24, fraction=0.5, sampling="poisson").setup(kuaisar_split)
    before = {name: t.detach().clone() for name, t in fed.shared_tensors().items()}
    eps = []
    for _ in range(3):
        loss = fed.train_round()
        assert math.isfinite(loss)
        eps.append(fed.server.records[-1]["epsilon"])
    assert eps == sorted(eps) and eps[0] > 0
    assert eps[-1] == pytest.approx(Accountant(1.0, 0.5, 1e-5).epsilon(3))
    participants = [r["participants"] for r in fed.server.records]
    assert len(set(participants)) > 1, "Poisson sampling: the cohort size varies"
    after = fed.shared_tensors()
    assert all(not torch.equal(before[n], after[n]) for n in before), "noise moves every tensor"
    info = fed.privacy_info()
    assert info["dp"] == "central" and info["sampling"].startswith("Poisson")
    assert fed.server.participations.sum() == sum(participants)


def test_dp_refuses_what_its_mathematics_does_not_allow() -> None:
    dp = PrivacyConfig(dp="central", clip=1.0, noise_multiplier=1.0)
    with pytest.raises(OptionError, match="engine"):
        FederationConfig(engine="linear", local=LocalConfig(optimizer="sgd"), privacy=dp)
    with pytest.raises(OptionError, match="weighting"):
        FederationConfig(privacy=dp)  # examples weighting: an unbounded weight
    with pytest.raises(OptionError, match="sampling"):
        FederationConfig(privacy=dp, strategy=StrategyConfig(weighting="uniform", fraction=0.5))
    with pytest.raises(OptionError, match="secure_aggregation"):
        PrivacyConfig(dp="distributed", clip=1.0, noise_multiplier=1.0)
    with pytest.raises(OptionError, match="clip"):
        PrivacyConfig(dp="local", noise_multiplier=1.0)
    # Secure aggregation alone works on the fused engine: it computes the sum anyway.
    FederationConfig(
        engine="linear",
        local=LocalConfig(optimizer="sgd"),
        privacy=PrivacyConfig(secure_aggregation=True),
    )


def test_personality_aware_weights_shrink_large_uploads(kuaisar_split: Split) -> None:
    aware = PrivacyConfig(aware="norm", aware_scale=0.05)
    fed = federation(aware).setup(kuaisar_split)
    parts = [p for p in round_parts(fed, np.arange(12)) if isinstance(p, Uploads)]
    norms = torch.cat([upload_norms(p.deltas) for p in parts])
    weights = torch.cat([p.weight_scale for p in parts if p.weight_scale is not None])
    assert weights.shape == norms.shape
    torch.testing.assert_close(weights, 1.0 / (1.0 + norms / 0.05))
    order = torch.argsort(norms)
    assert (weights[order].diff() <= 0).all(), "a larger upload weighs less"
    # It changes the aggregate (the weighted mean is not the plain one).
    plain = shared_after_round(federation().setup(kuaisar_split))
    weighted = shared_after_round(federation(aware).setup(kuaisar_split))
    assert any(not torch.allclose(plain[n], weighted[n]) for n in plain)


# ---------------------------------------------------------------- budget


def test_a_run_stops_at_its_epsilon_budget(ml100k_prepared: Prepared, tmp_path: Path) -> None:
    budget = Accountant(1.0, 1.0, 1e-5).epsilon(3) + 1e-6  # room for exactly 3 rounds
    model = SequentialRecommender(architecture="sasrec", dim=8, n_layers=1, max_len=10)
    config = FederationConfig(
        engine="vmap",
        local=LocalConfig(steps=1, lr=0.5, optimizer="sgd"),
        strategy=StrategyConfig(weighting="uniform"),
        max_clients=16,
        privacy=PrivacyConfig(dp="central", clip=0.1, noise_multiplier=1.0, epsilon_budget=budget),
    )
    fed = FederatedRecommender(model, config)
    trainer = Trainer(TrainerConfig(max_epochs=10, eval_every=1, patience=0), quiet=True)
    metrics = trainer.run(
        fed, ml100k_prepared, RankingEvaluator(ml100k_prepared, ks=(10,)), tmp_path
    )
    assert metrics["budget_stopped"] and metrics["stopped_epoch"] == 3
    eps = [row["epsilon"] for row in metrics["history"]]
    assert eps == sorted(eps) and eps[-1] <= budget
    assert metrics["privacy"]["epsilon"] == pytest.approx(eps[-1])
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["privacy"]["delta"] == 1e-5


# ---------------------------------------------------------------- attribute tables


def test_attribute_tables_travel_only_in_a_secure_sum(kuaisar_split: Split) -> None:
    positions = np.arange(8)
    shared = federation().setup(kuaisar_split)
    tables = [n for n in shared.ownership.names(*SHARED) if "user_feature_embs" in n]
    assert len(tables) == len(USER_FEATURES)
    leaky = [p for p in round_parts(shared, positions) if isinstance(p, Uploads)]
    # Shared in the clear, a user's feature-table delta has one non-zero row: its value.
    rows = (leaky[0].deltas[tables[0]][0].abs().sum(1) > 0).sum()
    assert int(rows) == 1
    kept = federation(PrivacyConfig(attribute_tables="secure_only")).setup(kuaisar_split)
    assert set(kept.withheld) == set(tables)
    for part in round_parts(kept, positions):
        assert isinstance(part, Uploads)
        assert all(not part.deltas[name].any() for name in tables)
        assert any(part.deltas[n].any() for n in part.deltas if n not in tables)
    secure = PrivacyConfig(attribute_tables="secure_only", secure_aggregation=True)
    fed = federation(secure).setup(kuaisar_split)
    assert fed.withheld == ()
    (total,) = round_parts(fed, positions)
    assert isinstance(total, UploadSum)
    assert all(total.sums[name].any() for name in tables)
