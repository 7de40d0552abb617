"""Server optimisers (FedOpt; Reddi et al., "Adaptive Federated Optimization", ICLR 2021).

The aggregated client delta is a pseudo-gradient ``-delta`` for an optimiser
that lives on the server:

* ``"sgd"`` (FedAvg): ``new = old + server_lr * delta``, stateless;
* ``"adam"`` (FedAdam): Adam's moments of the pseudo-gradient, kept across
  rounds. With plain SGD on the clients this keeps what per-client Adam steps
  lose: a client's first Adam step moves every coordinate by about ``lr``
  whatever its gradient, so in a uniform average the many clients pushing an
  unseen item away outweigh the few who interacted with it. Averaging SGD
  deltas first and normalising once on the server is centralized Adam on the
  clients' summed gradients.

A group tensor's group ``k`` moves only in rounds where some client was routed
to ``k``: its moments and step count are per group, and stay as they are
otherwise (so a group nobody used is unchanged, as with FedAvg).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fedllmrec.federated.config import StrategyConfig


def apply_delta(param: torch.Tensor, delta: torch.Tensor, server_lr: float) -> torch.Tensor:
    """Return ``param + server_lr * delta`` as a new tensor in ``param``'s dtype (FedAvg's step)."""
    if param.shape != delta.shape:
        # Broadcasting here would silently corrupt the global model.
        raise ValueError(f"delta shape {tuple(delta.shape)} != param shape {tuple(param.shape)}")
    return param + server_lr * delta.to(param.dtype)


class ServerOptimizer:
    """Moves each shared tensor by its aggregated delta; holds FedAdam's state."""

    def __init__(self, strategy: StrategyConfig) -> None:
        self.strategy = strategy
        self.state: dict[str, dict[str, torch.Tensor]] = {}

    def step(
        self,
        name: str,
        param: torch.Tensor,
        delta: torch.Tensor,
        changed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The new value of tensor ``name``.

        Parameters
        ----------
        name : str
            Tensor name (the key of its optimiser state).
        param, delta : torch.Tensor
            Current server value and aggregated client delta, same shape.
        changed : torch.Tensor, optional
            (K,) bool for a group tensor (axis 0 = group): which groups had
            participants this round. Others keep value and state.
        """
        s = self.strategy
        if s.server_optimizer == "sgd":
            return apply_delta(param, delta, s.server_lr)
        beta1, beta2 = s.server_betas
        grad = -delta.to(param.dtype)
        state = self.state.get(name)
        if state is None:
            steps_shape = (param.shape[0],) if changed is not None else ()
            state = {
                "m": torch.zeros_like(param),
                "v": torch.zeros_like(param),
                "steps": torch.zeros(steps_shape, dtype=torch.float64),
            }
            self.state[name] = state
        live = torch.ones((), dtype=torch.bool) if changed is None else changed.to(torch.bool)
        view = live.reshape(*live.shape, *([1] * (param.dim() - live.dim())))  # broadcast rows
        steps = state["steps"] + live.to(torch.float64)
        m = torch.where(view, beta1 * state["m"] + (1 - beta1) * grad, state["m"])
        v = torch.where(view, beta2 * state["v"] + (1 - beta2) * grad * grad, state["v"])
        safe = steps.clamp(min=1.0)
        shape = (*steps.shape, *([1] * (param.dim() - steps.dim())))
        m_hat = m / (1 - beta1**safe).to(param.dtype).reshape(shape)
        v_hat = v / (1 - beta2**safe).to(param.dtype).reshape(shape)
        moved = param - s.server_lr * m_hat / (v_hat.sqrt() + s.server_eps)
        state.update(m=m, v=v, steps=steps)
        return torch.where(view, moved, param)

    def state_dict(self) -> dict[str, Any]:
        return {name: {k: t.clone() for k, t in st.items()} for name, st in self.state.items()}

    def load_state_dict(self, state: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        self.state = {name: {k: t.clone() for k, t in st.items()} for name, st in state.items()}
