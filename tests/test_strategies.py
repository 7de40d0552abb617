"""Strategy pieces: aggregators, group aggregation, FedProx, sampling, drops, config checks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from fedllmrec.federated.aggregation import aggregate, aggregate_groups, client_weights
from fedllmrec.federated.config import StrategyConfig
from fedllmrec.federated.engines.per_client import proximal_term
from fedllmrec.federated.fedopt import apply_delta
from fedllmrec.federated.round import routing_load
from fedllmrec.federated.sampling import drop_clients, sample_clients

torch.set_num_threads(1)

MEAN = StrategyConfig(aggregator="mean")
MEDIAN = StrategyConfig(aggregator="median")
TRIMMED = StrategyConfig(aggregator="trimmed_mean", trim_fraction=0.2)


def test_weighted_and_uniform_mean() -> None:
    deltas = torch.tensor([[1.0, 0.0], [2.0, 4.0], [4.0, -2.0]])  # (C=3, 2)
    n = torch.tensor([1, 2, 1])
    weighted = client_weights(n, "examples")
    uniform = client_weights(n, "uniform")
    assert weighted.dtype == uniform.dtype == torch.float64
    torch.testing.assert_close(weighted, torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64))
    torch.testing.assert_close(uniform, torch.full((3,), 1 / 3, dtype=torch.float64))
    # 0.25 * [1, 0] + 0.5 * [2, 4] + 0.25 * [4, -2] = [2.25, 1.5]
    out = aggregate(deltas, weighted, MEAN)
    assert out.dtype == torch.float32 and out.shape == (2,)
    torch.testing.assert_close(out, torch.tensor([2.25, 1.5]))
    torch.testing.assert_close(aggregate(deltas, uniform, MEAN), torch.tensor([7 / 3, 2 / 3]))
    # Unnormalised weights give the same answer: aggregate normalises them.
    torch.testing.assert_close(aggregate(deltas, n.double(), MEAN), torch.tensor([2.25, 1.5]))


def test_client_weights_zero_examples() -> None:
    weights = client_weights(torch.tensor([0, 3, 1]), "examples")
    torch.testing.assert_close(weights, torch.tensor([0.0, 0.75, 0.25], dtype=torch.float64))
    with pytest.raises(ValueError, match="0 examples"):
        client_weights(torch.tensor([0, 0]), "examples")
    with pytest.raises(ValueError, match=">= 0"):
        client_weights(torch.tensor([2, -1]), "examples")


def test_median_odd_and_even() -> None:
    odd = torch.tensor([[3.0, -1.0], [1.0, 5.0], [2.0, 0.0]])
    torch.testing.assert_close(aggregate(odd, torch.ones(3), MEDIAN), torch.tensor([2.0, 0.0]))
    even = torch.tensor([[4.0], [1.0], [10.0], [2.0]])
    # Middle values 2 and 4: the median is their average, not torch.median's lower one.
    torch.testing.assert_close(aggregate(even, torch.ones(4), MEDIAN), torch.tensor([3.0]))


def test_median_is_unweighted() -> None:
    deltas = torch.tensor([[0.0], [1.0], [5.0]])
    out = aggregate(deltas, torch.tensor([100.0, 1.0, 1.0]), MEDIAN)
    torch.testing.assert_close(out, torch.tensor([1.0]))


def test_trimmed_mean_value() -> None:
    # C = 5, trim 0.2 -> drop floor(1.0) = 1 per side in each coordinate.
    deltas = torch.tensor([[1.0, 10.0], [2.0, -3.0], [3.0, 0.0], [4.0, 1.0], [100.0, 2.0]])
    out = aggregate(deltas, torch.ones(5), TRIMMED)
    # col 0 keeps 2, 3, 4 -> 3; col 1 keeps 0, 1, 2 -> 1
    torch.testing.assert_close(out, torch.tensor([3.0, 1.0]))
    # trim 0.1 of 5 clients drops nothing: the plain mean.
    plain = aggregate(deltas, torch.ones(5), StrategyConfig(aggregator="trimmed_mean"))
    torch.testing.assert_close(plain, deltas.mean(dim=0))


def test_robust_aggregators_resist_one_poisoned_client() -> None:
    honest = torch.tensor([[0.9, -1.1], [1.0, -1.0], [1.1, -0.9], [1.0, -1.0]])
    deltas = torch.cat([honest, torch.full((1, 2), 1e6)])  # (C=5, 2), last one poisoned
    weights = client_weights(torch.ones(5), "uniform")
    mean = aggregate(deltas, weights, MEAN)
    assert (mean > 1e5).all()
    for config in (MEDIAN, TRIMMED):
        out = aggregate(deltas, weights, config)
        assert (out - torch.tensor([1.0, -1.0])).abs().max() < 0.11, config.aggregator


def test_aggregate_keeps_dtype_and_checks_shapes() -> None:
    deltas = torch.randn(4, 3, 2, dtype=torch.float16)
    for config in (MEAN, MEDIAN, TRIMMED):
        out = aggregate(deltas, torch.ones(4), config)
        assert out.dtype == torch.float16 and out.shape == (3, 2)
    with pytest.raises(ValueError, match="weights"):
        aggregate(deltas, torch.ones(3), MEAN)


def test_aggregate_groups_mean_renormalises_within_group() -> None:
    # C = 3 clients, K = 3 groups, each group slice is (2,).
    deltas = torch.zeros(3, 3, 2)
    deltas[0, 0] = torch.tensor([1.0, 2.0])
    deltas[1, 0] = torch.tensor([3.0, 6.0])
    deltas[1, 1] = torch.tensor([5.0, 5.0])
    deltas[2, 1] = torch.tensor([-1.0, 1.0])
    routed = torch.tensor([[True, False, False], [True, True, False], [False, True, False]])
    weights = client_weights(torch.tensor([1, 3, 6]), "examples")  # 0.1, 0.3, 0.6
    out, updated = aggregate_groups(deltas, routed, weights, MEAN)
    assert out.shape == (3, 2) and updated.tolist() == [True, True, False]
    # group 0: clients 0, 1 with 0.1, 0.3 -> 0.25, 0.75
    torch.testing.assert_close(out[0], torch.tensor([2.5, 5.0]))
    # group 1: clients 1, 2 with 0.3, 0.6 -> 1/3, 2/3
    torch.testing.assert_close(out[1], torch.tensor([1.0, 7 / 3]))
    # group 2: nobody routed -> zero delta, so the global group stays unchanged.
    assert (out[2] == 0).all()
    param = torch.randn(3, 2)
    torch.testing.assert_close(apply_delta(param, out, 1.0)[2], param[2])


def test_aggregate_groups_zero_weight_members_leave_group_unchanged() -> None:
    deltas = torch.ones(2, 2, 1)
    routed = torch.tensor([[True, False], [False, True]])
    weights = torch.tensor([0.0, 1.0], dtype=torch.float64)
    out, updated = aggregate_groups(deltas, routed, weights, MEAN)
    assert updated.tolist() == [False, True]
    torch.testing.assert_close(out, torch.tensor([[0.0], [1.0]]))


def test_aggregate_groups_median() -> None:
    deltas = torch.zeros(4, 2, 1)  # (C=4, K=2, 1)
    deltas[:, 0, 0] = torch.tensor([1.0, 2.0, 1e6, 0.0])  # client 3 not routed to group 0
    deltas[:, 1, 0] = torch.tensor([0.0, 4.0, 0.0, 8.0])
    routed = torch.tensor([[True, False], [True, True], [True, False], [False, True]])
    out, updated = aggregate_groups(deltas, routed, torch.ones(4), MEDIAN)
    assert updated.tolist() == [True, True]
    # group 0 over {1, 2, 1e6} -> 2; group 1 over {4, 8} -> 6 (even: average)
    torch.testing.assert_close(out, torch.tensor([[2.0], [6.0]]))


def test_aggregate_groups_checks_shapes() -> None:
    with pytest.raises(ValueError, match="routed"):
        routed = torch.ones(3, 3, dtype=torch.bool)  # K = 3 but deltas have K = 2
        aggregate_groups(torch.zeros(3, 2, 1), routed, torch.ones(3), MEAN)


def test_apply_delta() -> None:
    param = torch.tensor([1.0, 2.0])
    delta = torch.tensor([2.0, -2.0], dtype=torch.float64)
    out = apply_delta(param, delta, 0.5)
    torch.testing.assert_close(out, torch.tensor([2.0, 1.0]))
    assert out.dtype == torch.float32
    assert param.tolist() == [1.0, 2.0]  # a new tensor, the input is untouched
    with pytest.raises(ValueError, match="shape"):
        apply_delta(param, torch.zeros(1), 1.0)


def test_proximal_term_value_and_gradient() -> None:
    w = torch.tensor([1.0, 3.0], requires_grad=True)
    b = torch.tensor([[2.0]], requires_grad=True)
    anchor_w = torch.tensor([0.0, 1.0], requires_grad=True)
    anchor_b = torch.tensor([[-1.0]])
    mu = 0.5
    loss = proximal_term({"w": w, "b": b}, {"w": anchor_w, "b": anchor_b}, mu)
    # mu/2 * ((1 + 4) + 9) = 0.25 * 14
    torch.testing.assert_close(loss, torch.tensor(3.5))
    loss.backward()
    assert w.grad is not None and b.grad is not None
    torch.testing.assert_close(w.grad, mu * torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(b.grad, mu * torch.tensor([[3.0]]))
    assert anchor_w.grad is None  # the anchor is detached


def test_proximal_term_zero_mu_and_names() -> None:
    params = {"w": torch.ones(2)}
    zero = proximal_term(params, {"w": torch.zeros(2)}, 0.0)
    assert zero.shape == () and zero.item() == 0.0
    with pytest.raises(KeyError):
        proximal_term(params, {"v": torch.zeros(2)}, 1.0)
    with pytest.raises(KeyError):
        proximal_term(params, {"w": torch.zeros(2), "v": torch.zeros(1)}, 0.0)


def test_proximal_term_under_vmap() -> None:
    batched = {"w": torch.tensor([[1.0, 1.0], [0.0, 2.0], [3.0, 0.0]]), "b": torch.zeros(3, 1)}
    anchor = {"w": torch.tensor([1.0, 0.0]), "b": torch.tensor([1.0])}

    def penalty(params: dict[str, torch.Tensor], mu: float) -> torch.Tensor:
        return proximal_term(params, anchor, mu)

    out = torch.func.vmap(penalty, in_dims=(0, None))(batched, 2.0)
    # per client (mu/2 = 1): ||w - a_w||^2 + ||b - a_b||^2 = 1+1, 1+4+1, 4+0+1
    torch.testing.assert_close(out, torch.tensor([2.0, 6.0, 5.0]))
    zeros = torch.func.vmap(penalty, in_dims=(0, None))(batched, 0.0)
    torch.testing.assert_close(zeros, torch.zeros(3))
    # Per-client gradients under vmap: mu * (w - anchor).
    grads = torch.func.vmap(torch.func.grad(penalty), in_dims=(0, None))(batched, 2.0)
    torch.testing.assert_close(grads["w"], 2.0 * (batched["w"] - anchor["w"]))
    torch.testing.assert_close(grads["b"], 2.0 * (batched["b"] - anchor["b"]))


def test_sample_clients() -> None:
    clients = np.arange(100, 120)
    a = sample_clients(clients, 0.25, 1, np.random.default_rng(7))
    b = sample_clients(clients, 0.25, 1, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert a.size == 5 and np.all(np.diff(a) > 0) and np.isin(a, clients).all()
    assert sample_clients(clients, 0.1, 8, np.random.default_rng(0)).size == 8
    assert sample_clients(clients, 0.01, 1, np.random.default_rng(0)).size == 1
    assert sample_clients(clients, 0.5, 50, np.random.default_rng(0)).size == 20  # capped
    assert sample_clients(clients, 0.33, 1, np.random.default_rng(0)).size == 7  # round(6.6)


def test_sample_all_consumes_no_randomness() -> None:
    clients = np.array([5, 2, 9, 1])
    rng = np.random.default_rng(3)
    out = sample_clients(clients, 1.0, 1, rng)
    np.testing.assert_array_equal(out, [1, 2, 5, 9])
    assert rng.random() == np.random.default_rng(3).random()


def test_drop_clients() -> None:
    participants = np.array([4, 8, 15, 16, 23, 42])
    rng = np.random.default_rng(0)
    survivors, dropped = drop_clients(participants, 0.0, rng)
    np.testing.assert_array_equal(survivors, participants)
    assert dropped.size == 0 and dropped.dtype == participants.dtype
    assert rng.random() == np.random.default_rng(0).random()  # rate 0 draws nothing

    for seed in range(20):
        survivors, dropped = drop_clients(participants, 0.5, np.random.default_rng(seed))
        assert survivors.size >= 1
        assert np.all(np.diff(survivors) > 0) and np.all(np.diff(dropped) > 0)
        np.testing.assert_array_equal(np.sort(np.concatenate([survivors, dropped])), participants)
    # With a near-certain drop everyone fails; the first participant is kept.
    survivors, dropped = drop_clients(participants, 0.999999, np.random.default_rng(1))
    np.testing.assert_array_equal(survivors, [4])
    np.testing.assert_array_equal(dropped, participants[1:])


def test_routing_load() -> None:
    groups = torch.tensor([[0, 2], [0, 1], [3, 1], [0, 1]])  # (C=4, L=2)
    load = routing_load(groups, 4)
    expected = torch.tensor([[0.75, 0.0, 0.0, 0.25], [0.0, 0.75, 0.25, 0.0]])
    assert load.dtype == torch.float32 and load.shape == (2, 4)
    torch.testing.assert_close(load, expected)
    torch.testing.assert_close(load.sum(dim=1), torch.ones(2))
    with pytest.raises(ValueError, match="group ids"):
        routing_load(groups, 3)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("aggregator", "max"),
        ("weighting", "clients"),
        ("trim_fraction", 0.5),
        ("trim_fraction", -0.1),
        ("server_lr", 0.0),
        ("fraction", 0.0),
        ("fraction", 1.5),
        ("min_clients", 0),
        ("drop_rate", 1.0),
        ("drop_rate", float("nan")),
        ("proximal_mu", -1e-3),
    ],
)
def test_config_validation(field: str, value: Any) -> None:
    with pytest.raises(ValueError) as info:
        StrategyConfig(**{field: value})
    assert field in str(info.value) and repr(value) in str(info.value)


def test_config_defaults_are_valid() -> None:
    config = StrategyConfig()
    assert (config.aggregator, config.weighting, config.server_lr) == ("mean", "examples", 1.0)
