"""Federated runtime on real KuaiSAR-R and ml-100k: ownership, uploads, engines, rounds, resume."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedllmrec.data.prepare import Prepared
from fedllmrec.data.schema import RecDataset
from fedllmrec.data.split import Split, leave_one_out
from fedllmrec.errors import FedLLMRecError
from fedllmrec.eval.evaluators import RankingEvaluator
from fedllmrec.eval.metrics import click_metrics
from fedllmrec.federated.aggregation import RoundAggregator, aggregate, client_weights
from fedllmrec.federated.config import FederationConfig, LocalConfig, StrategyConfig
from fedllmrec.federated.fedopt import ServerOptimizer
from fedllmrec.federated.ownership import Owner, OwnershipError, declared_ownership
from fedllmrec.federated.round import routing_load
from fedllmrec.federated.simulator import FederatedRecommender
from fedllmrec.federated.uploads import (
    ClientUpload,
    Part,
    Uploads,
    download_bytes,
    upload_bytes,
)
from fedllmrec.models.click import ClickRecommender
from fedllmrec.models.owners import Owner as ModelOwner
from fedllmrec.models.sequential import SequentialRecommender
from fedllmrec.train.trainer import Trainer, TrainerConfig

torch.set_num_threads(1)

USER_FEATURES = ["onehot_feat1", "onehot_feat2", "search_active_level", "reco_active_level"]
ITEM_FEATURES = ["item_type", "first_level_category_name", "second_level_category_name"]


@pytest.fixture(scope="module")
def kuaisar_split(kuaisar: RecDataset) -> Split:
    return leave_one_out(kuaisar)


def click_mrff(**federation: object) -> FederatedRecommender:
    """A small MRFF click model on real KuaiSAR-R clients (dropout 0: engines comparable)."""
    base = ClickRecommender(
        architecture="mrff",
        dim=16,
        max_len=20,
        dropout=0.0,
        item_features=ITEM_FEATURES,
        user_features=USER_FEATURES,
    )
    options: dict[str, object] = {"max_clients": 24, "chunk_windows": 16}
    options.update(federation)
    return FederatedRecommender(base, FederationConfig(**options))  # type: ignore[arg-type]


def shared_state(fed: FederatedRecommender) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in fed.shared_tensors().items()}


def local_uploads(
    fed: FederatedRecommender, positions: np.ndarray, sent: dict[str, torch.Tensor] | None = None
) -> list[Uploads]:
    """Round 1's local training of ``positions`` from ``sent``: what the seam emits, by chunk.

    The clients keep their new private rows (written into ``fed``), as in a round.
    """
    parts: list[Part] = []
    sent = shared_state(fed) if sent is None else sent
    fed.local_training(positions, 1, sent, fed.server.load, parts.append)
    assert all(isinstance(part, Uploads) for part in parts)
    return [part for part in parts if isinstance(part, Uploads)]


def concatenated(parts: list[Uploads], name: str) -> torch.Tensor:
    return torch.cat([part.deltas[name] for part in parts])


# ---------------------------------------------------------------- ownership


def test_every_tensor_of_mrff_has_a_checked_owner(kuaisar_split: Split) -> None:
    fed = click_mrff().setup(kuaisar_split)
    own = fed.ownership
    n_users = kuaisar_split.dataset.n_users
    assert own.n_users == n_users
    by_owner = {owner: own.names(owner) for owner in Owner}
    assert all(by_owner.values()), "MRFF has frozen, global, group and private tensors"
    # Private: the user embedding, each layer's user FFN rows, the user's feature values.
    assert set(by_owner[Owner.PRIVATE]) == {
        "model.user_emb.weight",
        "model.blocks.0.user_ffn.rows.weight",
        "model.blocks.1.user_ffn.rows.weight",
        "model.user_features",
    }
    # Group: every group FFN tensor, with its routing layer; K = 4 groups on axis 0.
    for name in by_owner[Owner.GROUP]:
        assert ".group_ffn." in name and own[name].shape[0] == 4
        assert own[name].layer == int(name.split(".")[2])
    assert by_owner[Owner.FROZEN] == ["model.items.feature_rows"]
    # Every parameter and buffer is claimed exactly once.
    net = fed.net
    assert net is not None
    every = [n for n, _ in net.named_parameters()] + [n for n, _ in net.named_buffers()]
    assert sorted(every) == sorted(own)


class _Undeclared(nn.Module):
    OWNERS = {"a.*": ModelOwner.GLOBAL}  # noqa: RUF012 - a deliberately faulty declaration

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 2)
        self.b = nn.Linear(2, 2)


class _Typo(nn.Module):
    OWNERS = {"a.*": ModelOwner.GLOBAL, " b.*": ModelOwner.GLOBAL}  # noqa: RUF012 - MRFF's bug

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 2)


class _Twice(nn.Module):
    OWNERS = {"a.*": ModelOwner.GLOBAL, "a.weight": ModelOwner.GLOBAL}  # noqa: RUF012

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 2)


def test_a_faulty_declaration_is_an_error() -> None:
    with pytest.raises(OwnershipError, match=r"b\.weight: no pattern"):
        declared_ownership(_Undeclared())
    # MRFF's released code split its name lists on ',' without stripping: ' b.*' claims nothing.
    with pytest.raises(OwnershipError, match=r"' b\.\*' claims no tensor"):
        declared_ownership(_Typo())
    with pytest.raises(OwnershipError, match="several patterns"):
        declared_ownership(_Twice())
    with pytest.raises(OwnershipError, match="no enclosing module"):
        declared_ownership(nn.Linear(2, 2))


# ---------------------------------------------------------------- uploads


def _windows(data: bytes, row: torch.Tensor, width: int = 8) -> list[bytes]:
    raw = row.detach().contiguous().numpy().tobytes()
    return [raw[i : i + width] for i in range(0, len(raw) - width + 1, 4)]


def test_an_upload_holds_no_private_byte(kuaisar_split: Split) -> None:
    """Every client of a round: no 8-byte run of its private parameters (before or after
    training) or of its private buffers (its feature codes) is in what it sends."""
    fed = click_mrff(max_clients=4).setup(kuaisar_split)
    own = fed.ownership
    before = {n: t.clone() for n, t in fed.state_dict()["net"].items()}
    parts = local_uploads(fed, np.arange(4))
    buffers = [n for n in own.names(Owner.PRIVATE) if not own[n].is_parameter]
    assert buffers == ["model.user_features"], "the user's feature values are a private buffer"
    groups = [n for n in own.names(Owner.GROUP)]
    checked = clients = 0
    for part in parts:
        after = fed.private_rows(part.positions)
        assert set(after) == set(own.private_parameters())
        for index, position in enumerate(part.positions.tolist()):
            user = int(fed.clients[position])
            upload = part.client(index, user, own)
            wire = upload.to_bytes()
            # Names: every global delta, and per group tensor exactly the routed group's slice.
            expected = set(own.names(Owner.GLOBAL)) | {
                f"{n}/{upload.routing[own[n].layer or 0]}" for n in groups
            }
            assert set(upload.arrays) == expected
            assert set(ClientUpload.from_bytes(wire).arrays) == expected
            # The seam's dense form is zero in every group slice the client was not routed to.
            for name in groups:
                routed = upload.routing[own[name].layer or 0]
                others = [k for k in range(own[name].shape[0]) if k != routed]
                assert not part.deltas[name][index, others].any()
            rows = [before[n][user] for n in own.names(Owner.PRIVATE)]  # parameters, buffers
            rows += [value[index] for value in after.values()]
            assert any(not torch.equal(before[n][user], after[n][index]) for n in after)
            for row in rows:
                for window in _windows(wire, row):
                    if window.strip(b"\x00"):  # zero bytes are not information about the user
                        assert window not in wire
                        checked += 1
            clients += 1
            # And the size is what the round accounts for (payload + small header).
            assert upload_bytes(own) <= len(wire) < upload_bytes(own) + 16_384
    assert clients == 4 and checked > 4000
    # The check has teeth: a leaked private row or feature code is caught.
    part = parts[0]
    upload = part.client(0, int(fed.clients[part.positions[0]]), own)
    for leaked in (
        fed.private_rows(part.positions[:1])["model.user_emb.weight"][0],
        before["model.user_features"][int(fed.clients[part.positions[0]])],
    ):
        leaky = dataclasses.replace(upload, arrays={**upload.arrays, "x": leaked})
        assert any(w in leaky.to_bytes() for w in _windows(b"", leaked) if w.strip(b"\x00"))


# ---------------------------------------------------------------- engines


@pytest.mark.parametrize("steps", [1, 2])
def test_vmap_simulator_matches_the_per_client_loop(kuaisar_split: Split, steps: int) -> None:
    runs = {}
    for engine in ("vmap", "loop"):
        fed = click_mrff(engine=engine, local=LocalConfig(steps=steps, lr=0.01))
        fed.setup(kuaisar_split)
        losses = [fed.train_epoch() for _ in range(2)]
        probs, labels = fed.predict("valid")
        runs[engine] = (fed, losses, shared_state(fed), click_metrics(labels, probs))
    vmapped, looped = runs["vmap"], runs["loop"]
    np.testing.assert_allclose(vmapped[1], looped[1], rtol=1e-5)
    for name, value in vmapped[2].items():
        torch.testing.assert_close(value, looped[2][name], rtol=1e-4, atol=2e-5)
    private = vmapped[0].ownership.names(Owner.PRIVATE)
    # The loop takes gradients by plain autograd, vmap by torch.func: the same sums in
    # another order. Adam divides by the gradient's running size, so a user row whose gradient is
    # near 0 turns that rounding into up to ~3e-5 of movement (one element in a million).
    for name in private:
        torch.testing.assert_close(
            vmapped[0].state_dict()["net"][name], looped[0].state_dict()["net"][name],
            rtol=1e-4, atol=5e-5,
        )  # fmt: skip
    assert vmapped[3]["AUC"] == pytest.approx(looped[3]["AUC"], abs=1e-6)


@pytest.mark.parametrize("optimizer", [torch.optim.Adam, torch.optim.SGD])
def test_foreach_optimiser_equals_the_per_tensor_loop_bit_for_bit(optimizer: type) -> None:
    """The client engine steps with foreach=True (faster): a run's values must not move."""
    torch.manual_seed(0)
    shapes = [(2, 1, 1000, 64), (2, 64, 256), (2, 256), (2, 1, 1000)]  # (C, ...) client stacks
    start = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(4)]
    finals = []
    for foreach in (False, True):
        leaves = [t.clone().requires_grad_() for t in start]
        opt = optimizer(leaves, lr=1e-3, foreach=foreach)
        for step in grads:
            for leaf, g in zip(leaves, step, strict=True):
                leaf.grad = g.clone()
            opt.step()
        finals.append(leaves)
    for single, multi in zip(*finals, strict=True):
        assert torch.equal(single, multi)


def _three_rounds(fed: FederatedRecommender, split: Split) -> tuple[list[float], dict]:
    fed.setup(split)
    losses = [fed.train_epoch() for _ in range(3)]
    return losses, fed.state_dict()["net"]


@pytest.mark.parametrize("weighting", ["uniform", "examples"])
def test_linear_engine_matches_per_client_updates(
    kuaisar_split: Split, ml100k_prepared: Prepared, weighting: str
) -> None:
    """One local SGD step + mean: one backward of the weighted losses = per-client updates.

    Click MRFF on KuaiSAR-R (all windows, and one drawn window per client as the recipes
    train) and next-item MRFF on ml-100k (clients with several windows), FedAdam on the
    server, groups, the balance loss from round 2 and private rows.
    """
    local = LocalConfig(steps=1, lr=1.0, optimizer="sgd")
    # eps far above float noise: Adam's d / (|d| + eps) would magnify rounding of near-zero
    # coordinates (the two engines sum the same terms in different orders).
    strategy = StrategyConfig(
        weighting=weighting,  # type: ignore[arg-type]
        server_optimizer="adam",
        server_lr=0.01,
        server_eps=1e-3,
    )
    one_window = dataclasses.replace(local, batch_size=1)  # the KuaiSAR recipes' draws
    cases = {
        "click": (kuaisar_split, lambda: click_mrff(local=local, strategy=strategy)),
        # One drawn window per client and round: the linear engine's aligned-rows path.
        "click, one window": (
            kuaisar_split,
            lambda: click_mrff(local=one_window, strategy=strategy),
        ),
        "next-item": (
            ml100k_prepared.split,
            lambda: FederatedRecommender(
                SequentialRecommender(architecture="mrff", dim=16, max_len=20, dropout=0.0),
                FederationConfig(max_clients=24, chunk_windows=64, local=local, strategy=strategy),
            ),
        ),
    }
    for split, make in cases.values():
        runs = {}
        for engine in ("vmap", "linear"):
            fed = make()
            fed.federation = dataclasses.replace(fed.federation, engine=engine)
            runs[engine] = _three_rounds(fed, split)
        (v_losses, v_net), (l_losses, l_net) = runs["vmap"], runs["linear"]
        np.testing.assert_allclose(l_losses, v_losses, rtol=1e-5)
        assert v_net.keys() == l_net.keys()
        for name, value in v_net.items():
            torch.testing.assert_close(l_net[name], value, rtol=1e-4, atol=1e-5)


def test_linear_engine_needs_one_sgd_step_and_the_mean() -> None:
    for local, strategy in [
        (LocalConfig(optimizer="adam"), StrategyConfig()),
        (LocalConfig(optimizer="sgd", steps=2), StrategyConfig()),
        (LocalConfig(optimizer="sgd"), StrategyConfig(aggregator="median")),
    ]:
        with pytest.raises(ValueError, match="'linear' needs one local SGD step"):
            FederationConfig(engine="linear", local=local, strategy=strategy)


@pytest.mark.parametrize("server_optimizer", ["sgd", "adam"])
def test_upload_path_aggregates_like_the_simulator(
    kuaisar_split: Split, server_optimizer: str
) -> None:
    """Serialised per-client uploads, restacked (the Flower path), give the same tensors;
    the streamed mean equals the textbook weighted mean; unrouted groups stay put."""
    fed = click_mrff(max_clients=6).setup(kuaisar_split)
    own = fed.ownership
    strategy = StrategyConfig(
        weighting="uniform",
        server_optimizer=server_optimizer,  # type: ignore[arg-type]
        server_lr=1.0 if server_optimizer == "sgd" else 0.01,
        # Adam maps a delta d to about lr * d / (|d| + eps): eps far above float noise keeps
        # the chunked and the stacked sums' rounding from flipping near-zero coordinates.
        server_eps=1e-3,
    )
    sent = shared_state(fed)
    parts = local_uploads(fed, np.arange(6), sent)
    assert len(parts) > 1, "several chunks: the mean streams"
    direct = RoundAggregator(own, strategy)
    wired = RoundAggregator(own, strategy)
    for part in parts:
        direct.add(part)
        uploads = [
            ClientUpload.from_bytes(part.client(i, int(p), own).to_bytes())
            for i, p in enumerate(part.positions.tolist())
        ]
        wired.add(Uploads.stack(uploads, part.positions, own))
    streamed, updated = direct.finish(sent, ServerOptimizer(strategy))
    restacked, wired_updated = wired.finish(sent, ServerOptimizer(strategy))
    assert wired_updated == updated
    for name in streamed:
        torch.testing.assert_close(restacked[name], streamed[name], rtol=0, atol=0)
    # The streamed mean is the float64 weighted mean of every client's delta.
    weights = client_weights(torch.cat([part.n_examples for part in parts]), strategy.weighting)
    optimizer = ServerOptimizer(strategy)
    for name in own.names(Owner.GLOBAL):
        expected = optimizer.step(
            name, sent[name], aggregate(concatenated(parts, name), weights, strategy)
        )
        torch.testing.assert_close(streamed[name], expected, rtol=1e-5, atol=1e-7)
    # Group-wise: a group nobody was routed to is left exactly as it was.
    for name, changed in updated.items():
        for k, was_updated in enumerate(changed):
            if not was_updated:
                assert torch.equal(streamed[name][k], sent[name][k])
        routing = torch.cat([part.routing for part in parts])
        routed = set(routing[:, own[name].layer or 0].tolist())
        assert {k for k, c in enumerate(changed) if c} == routed


def test_upload_transforms_see_every_upload_and_aggregation_sees_their_output(
    kuaisar_split: Split,
) -> None:
    """The seam: transforms run in order on each chunk's uploads; a zeroing transform
    leaves the shared model where it was (what aggregation saw was its output)."""
    seen: list[tuple[str, list[int], int]] = []

    def record(tag: str) -> Callable[[Uploads, int], Uploads]:
        def transform(uploads: Uploads, round_: int) -> Uploads:
            seen.append((tag, uploads.positions.tolist(), round_))
            return uploads

        return transform

    def zero(uploads: Uploads, round_: int) -> Uploads:
        deltas = {name: torch.zeros_like(d) for name, d in uploads.deltas.items()}
        return dataclasses.replace(uploads, deltas=deltas)

    fed = click_mrff(max_clients=8)
    fed.transforms = (record("first"), zero, record("second"))
    fed.setup(kuaisar_split)
    before = shared_state(fed)
    fed.train_epoch()
    tags = [tag for tag, _, _ in seen]
    assert tags == ["first", "second"] * (len(seen) // 2) and len(seen) >= 4
    assert sorted(p for tag, ps, _ in seen if tag == "first" for p in ps) == list(range(8))
    assert {round_ for _, _, round_ in seen} == {1}
    for name, value in shared_state(fed).items():  # sgd: zero deltas move nothing
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    # The fused engine emits the round's sum only: per-client transforms are refused.
    fused = click_mrff(
        max_clients=8, engine="linear", local=LocalConfig(steps=1, lr=1.0, optimizer="sgd")
    )
    fused.transforms = (zero,)
    with pytest.raises(FedLLMRecError, match="need each client's upload"):
        fused.setup(kuaisar_split)


# ---------------------------------------------------------------- rounds


def test_sampling_dropout_and_private_state(kuaisar_split: Split) -> None:
    strategy = StrategyConfig(fraction=0.5, drop_rate=0.3)
    fed = click_mrff(strategy=strategy).setup(kuaisar_split)
    net_before = {n: t.clone() for n, t in fed.state_dict()["net"].items()}
    fed.train_epoch()
    info = fed.epoch_info()
    assert info["participants"] == 12 and 0 < info["dropped"] < 12
    survivors = info["participants"] - info["dropped"]
    assert info["bytes_up"] == survivors * upload_bytes(fed.ownership)
    assert info["bytes_down"] == 12 * download_bytes(fed.ownership)
    after = fed.state_dict()["net"]
    moved = (after["model.user_emb.weight"] != net_before["model.user_emb.weight"]).any(1)
    # Exactly the surviving participants' private rows moved; everyone else kept theirs.
    assert int(moved.sum()) == survivors
    assert set(np.flatnonzero(moved.numpy())) <= set(fed.clients.tolist())
    # MRFF's balance-loss load: round 0 has none, the next round uses this round's shares.
    assert fed.server.load.shape == (2, 4)
    assert fed.server.load.sum(1).tolist() == pytest.approx([1.0, 1.0])


def test_routing_load_feeds_the_next_round(kuaisar_split: Split) -> None:
    fed = click_mrff().setup(kuaisar_split)
    assert torch.equal(fed.server.load, torch.zeros(2, 4))
    routing = torch.cat([part.routing for part in local_uploads(fed, np.arange(24))])
    fed2 = click_mrff(chunk_windows=1000).setup(kuaisar_split)
    fed2.train_epoch()
    torch.testing.assert_close(fed2.server.load, routing_load(routing, 4))


def test_fedprox_pulls_local_models_towards_the_global_one(kuaisar_split: Split) -> None:
    norms = []
    for mu in (0.0, 10.0):  # lr * mu = 0.5: each step halves the distance to the anchor
        strategy = StrategyConfig(proximal_mu=mu)
        fed = click_mrff(local=LocalConfig(steps=4, lr=0.05, optimizer="sgd"), strategy=strategy)
        fed.setup(kuaisar_split)
        parts = local_uploads(fed, np.arange(24))
        norms.append(sum(float(concatenated(parts, name).norm()) for name in parts[0].deltas))
    assert norms[1] < 0.5 * norms[0]


@pytest.mark.parametrize("server_optimizer", ["sgd", "adam"])
def test_federated_training_resumes_exactly(
    ml100k_prepared: Prepared, tmp_path: Path, server_optimizer: str
) -> None:
    """Resuming reaches the same metrics, FedAdam's server moments included.

    FedAdam runs as its recipes do: the linear engine, dropout masks from random bytes.
    """
    strategy = StrategyConfig(server_optimizer=server_optimizer, server_lr=0.01)  # type: ignore[arg-type]
    if server_optimizer == "sgd":
        strategy = StrategyConfig()
    fedadam = server_optimizer == "adam"

    def model() -> FederatedRecommender:
        base = SequentialRecommender(
            architecture="mrff", dim=16, max_len=20, dropout=0.1, fast_dropout=fedadam
        )
        local = LocalConfig(lr=0.01, optimizer="sgd" if fedadam else "adam")
        engine = "linear" if fedadam else "vmap"
        config = FederationConfig(max_clients=40, local=local, strategy=strategy, engine=engine)
        return FederatedRecommender(base, config)

    evaluator = RankingEvaluator(ml100k_prepared)
    config = TrainerConfig(max_epochs=4, eval_every=2, patience=0, seed=3)
    whole = Trainer(config, quiet=True).run(model(), ml100k_prepared, evaluator, tmp_path / "a")
    cut = dataclasses.replace(config, max_epochs=2)
    Trainer(cut, quiet=True).run(model(), ml100k_prepared, evaluator, tmp_path / "b")
    resumed = Trainer(config, quiet=True).run(model(), ml100k_prepared, evaluator, tmp_path / "b")
    assert resumed["test"] == whole["test"]
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in whole["history"]]
    assert resumed["federated"]["rounds"] == 4
    assert resumed["federated"]["bytes_up_total"] == whole["federated"]["bytes_up_total"] > 0
    assert whole["history"][0]["participants"] == 40


# ---------------------------------------------------------------- domain clients


def test_domain_clients_train_and_score_on_their_own_domain(art_office: RecDataset) -> None:
    split = leave_one_out(art_office)
    base = SequentialRecommender(dim=8, max_len=10, n_heads=1, dropout=0.0)
    base.train.loss, base.train.n_negatives = "sampled", 50
    local = LocalConfig(steps=2, lr=1e-3, batch_size=16)
    fed = FederatedRecommender(base, FederationConfig(partition="domain", local=local))
    fed.setup(split)
    item_domain = art_office.item_domain
    assert fed.clients.tolist() == [0, 1]  # arts, office
    seq = fed.recommender.training_tensors()["seq"]
    for domain, rows in enumerate(fed.population.rows):
        items = seq[torch.from_numpy(rows)]
        real = items[items != 0] - 1
        assert set(item_domain[real.numpy()].tolist()) == {domain}  # windows never mix domains
    before = shared_state(fed)
    fed.train_epoch()
    assert fed.epoch_info()["participants"] == 2
    assert any(not torch.equal(before[n], v) for n, v in shared_state(fed).items())
    # Scoring a user's arts candidates uses the user's arts history only.
    history = split.observed("test")
    user = int(np.flatnonzero(np.bincount(art_office.user, minlength=art_office.n_users) > 6)[0])
    arts = np.flatnonzero(item_domain == 0)[:5][None]
    users = np.array([user])
    keys = history.keys
    own = keys[item_domain[keys % history.n_items] == 0]
    arts_only = type(history)(own // history.n_items, own % history.n_items, history.n_items)
    expected = fed.recommender.score(users, arts, arts_only)
    np.testing.assert_allclose(fed.score(users, arts, history), expected, rtol=1e-6)
