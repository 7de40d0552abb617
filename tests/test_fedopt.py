"""Server optimisers: FedAdam is torch's Adam on the pseudo-gradient, group by group."""

from __future__ import annotations

import pytest
import torch

from fedllmrec.federated.config import StrategyConfig
from fedllmrec.federated.fedopt import ServerOptimizer, apply_delta


def test_sgd_is_the_fedavg_step() -> None:
    strategy = StrategyConfig(server_lr=0.5)
    param, delta = torch.randn(3, 4), torch.randn(3, 4)
    step = ServerOptimizer(strategy).step("w", param, delta)
    torch.testing.assert_close(step, apply_delta(param, delta, 0.5))


def test_fedadam_is_torch_adam_on_minus_the_delta() -> None:
    strategy = StrategyConfig(server_optimizer="adam", server_lr=0.01, server_betas=(0.8, 0.99))
    optimizer = ServerOptimizer(strategy)
    gen = torch.Generator().manual_seed(0)
    reference = torch.nn.Parameter(torch.randn(5, 3, generator=gen))
    torch_adam = torch.optim.Adam([reference], lr=0.01, betas=(0.8, 0.99), eps=1e-8)
    ours = reference.detach().clone()
    for _ in range(6):
        delta = torch.randn(5, 3, generator=gen) * 1e-2
        reference.grad = -delta
        torch_adam.step()
        ours = optimizer.step("w", ours, delta)
    torch.testing.assert_close(ours, reference.detach(), rtol=1e-5, atol=1e-7)


def test_fedadam_leaves_an_unrouted_group_and_its_state_alone() -> None:
    strategy = StrategyConfig(server_optimizer="adam", server_lr=0.1)
    optimizer = ServerOptimizer(strategy)
    param = torch.zeros(3, 2)  # 3 groups
    first = optimizer.step("g", param, torch.ones(3, 2), torch.tensor([True, True, False]))
    assert torch.equal(first[2], param[2])  # nobody routed to group 2: unchanged
    assert optimizer.state["g"]["steps"].tolist() == [1.0, 1.0, 0.0]
    # Group 2's first update, two rounds later, is a bias-corrected first Adam step (lr).
    second = optimizer.step("g", first, torch.ones(3, 2), torch.tensor([False, False, True]))
    assert torch.equal(second[:2], first[:2])
    torch.testing.assert_close(second[2], torch.full((2,), 0.1), rtol=1e-6, atol=1e-7)
    # The state survives a checkpoint.
    copy = ServerOptimizer(strategy)
    copy.load_state_dict(optimizer.state_dict())
    delta, live = torch.randn(3, 2), torch.tensor([True, False, True])
    torch.testing.assert_close(
        copy.step("g", second, delta, live), optimizer.step("g", second, delta, live)
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("server_optimizer", "yogi"), ("server_betas", (0.9, 1.0)), ("server_eps", 0.0)],
)
def test_server_optimizer_config_is_checked(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        StrategyConfig(**{field: value})  # type: ignore[arg-type]
