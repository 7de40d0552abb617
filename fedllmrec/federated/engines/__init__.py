"""Engines: how a round's local training is computed, behind one interface.

An engine receives the round's work as a value (:class:`LocalJob`: the model, the
client population, the chunks, the tensors sent) and emits what the clients upload;
it never calls back into the simulator or Flower.

* ``"vmap"``: each client's own update, batched over a chunk with ``torch.func.vmap``;
* ``"loop"``: the same, client by client (the reference);
* ``"linear"``: one local SGD step and the mean: the round's summed upload from one
  backward pass (fused; the per-client engines are its oracle).
"""

from __future__ import annotations

from fedllmrec.federated.engines.base import Emit, Engine, LocalJob
from fedllmrec.federated.engines.linear import LinearEngine
from fedllmrec.federated.engines.per_client import ChunkResult, PerClientEngine, train_clients

__all__ = [
    "ChunkResult",
    "Emit",
    "Engine",
    "LinearEngine",
    "LocalJob",
    "PerClientEngine",
    "client_engine",
    "engine_for",
    "train_clients",
]

_ENGINES: dict[str, Engine] = {
    "vmap": PerClientEngine("vmap"),
    "loop": PerClientEngine("loop"),
    "linear": LinearEngine(),
}


def engine_for(name: str) -> Engine:
    """The engine registered as ``name``."""
    if name not in _ENGINES:
        raise ValueError(f"engine must be one of {sorted(_ENGINES)}, not {name!r}")
    return _ENGINES[name]


def client_engine(name: str) -> Engine:
    """The engine a real client runs for a federation configured with engine ``name``.

    A client computes its own upload, so a fused engine's clients run ``"vmap"`` (on
    Flower nodes, for instance).
    """
    engine = engine_for(name)
    return engine_for("vmap") if engine.fused else engine
