"""Dual LoRA adapters on the frozen LLM (FedDPA-style): ``global`` and ``private``, both active.

The ``global`` adapter is what a federation averages; the ``private`` one stays with its
client and personalises the shared one. Both sit on the same projections (q, k, v, o) and
add up: ``W x + s_g B_g A_g x + s_p B_p A_p x`` with ``s = alpha / rank`` times the
adapter's weight (``private_weight`` is the mixing weight; peft's ``set_scale``).

Averaging LoRA factors is not averaging updates: ``mean(B_i) mean(A_i) != mean(B_i A_i)``.
``aggregation = "frozen_a"`` (FFA-LoRA, Sun et al. 2024) keeps the global ``A`` at its
seeded initialisation, identical on every client and never trained, so the global update is
linear in ``B`` and averaging ``B`` is exactly averaging ``B A``. ``"naive"`` trains and
averages both factors (the baseline the remedy is measured against).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from fedllmrec.errors import FedLLMRecError
from fedllmrec.models.owners import Owner

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

GLOBAL = "global"
PRIVATE = "private"


@dataclass(frozen=True)
class AdapterConfig:
    """LoRA adapters of the LLM.

    Parameters
    ----------
    rank, alpha : int, float
        LoRA rank and scale numerator (each adapter adds ``alpha / rank * B A``).
    targets : tuple of str
        The projections adapted (SmolLM2's attention: q, k, v, o).
    private : bool
        Add the ``private`` adapter beside the ``global`` one.
    private_weight : float
        Mixing weight of the private adapter (its scale is ``private_weight * alpha / rank``).
    aggregation : {"frozen_a", "naive"}
        ``"frozen_a"``: the global ``A`` stays at its seeded value (FFA-LoRA: averaging ``B``
        averages the update exactly); ``"naive"``: both factors train and are averaged.
    seed : int
        Seeds the adapters' initialisation (every client draws the same global ``A``).
    """

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    private: bool = True
    private_weight: float = 1.0
    aggregation: Literal["frozen_a", "naive"] = "frozen_a"

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise FedLLMRecError(f"model.adapters.rank must be >= 1, got {self.rank}")
        if self.private_weight < 0:
            raise FedLLMRecError("model.adapters.private_weight must be >= 0")

    @property
    def names(self) -> list[str]:
        """The adapters, in activation order."""
        return [GLOBAL, PRIVATE] if self.private else [GLOBAL]


def add_adapters(model: PreTrainedModel, config: AdapterConfig, seed: int = 0) -> PeftModel:
    """Wrap the frozen ``model`` with the configured adapters, all active.

    ``seed`` draws the initial ``A`` factors (every client of a run draws the same global
    ``A``: FFA-LoRA needs it identical everywhere). ``B`` starts at zero (peft's default),
    so the wrapped model scores exactly as the frozen one until it trains.
    """
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,  # type: ignore[arg-type]  # peft annotates int, uses a float
        target_modules=list(config.targets),
        lora_dropout=0.0,
        bias="none",
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, lora, adapter_name=GLOBAL)
        if config.private:
            peft_model.add_adapter(PRIVATE, lora)
    activate(peft_model, config)
    return peft_model


def activate(model: PeftModel, config: AdapterConfig) -> None:
    """Make every configured adapter active and trainable, at its mixing weight.

    peft's ``set_adapter`` marks the active adapters trainable; the frozen global ``A``
    (``frozen_a``) is then switched off again.
    """
    from peft.tuners.lora import LoraLayer

    model.base_model.set_adapter(config.names)  # type: ignore[operator]
    for module in model.modules():
        if isinstance(module, LoraLayer) and PRIVATE in module.scaling:
            module.set_scale(PRIVATE, config.private_weight)
    if config.aggregation == "frozen_a":
        for name, param in model.named_parameters():
            if f".lora_A.{GLOBAL}." in name:
                param.requires_grad_(False)


def adapter_owner(name: str, config: AdapterConfig) -> Owner:
    """The owner of one tensor of the adapted LLM, by its name.

    Base weights are frozen; the global adapter is global (its ``A`` frozen under
    ``frozen_a``: seeded, identical everywhere, never sent); the private adapter is private.
    """
    if f".lora_A.{GLOBAL}." in name:
        return Owner.FROZEN if config.aggregation == "frozen_a" else Owner.GLOBAL
    if f".lora_B.{GLOBAL}." in name:
        return Owner.GLOBAL
    if f".{PRIVATE}." in name and ".lora_" in name:
        return Owner.PRIVATE
    if ".lora_" in name:
        raise FedLLMRecError(f"{name}: an adapter tensor of no known adapter")
    return Owner.FROZEN


def adapter_tensors(model: torch.nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """The live tensors of one adapter (``lora_A`` and ``lora_B`` of every layer), by name."""
    marks = (f".lora_A.{adapter}.", f".lora_B.{adapter}.")
    return {name: p for name, p in model.named_parameters() if any(m in name for m in marks)}


def load_adapter_tensors(
    model: torch.nn.Module, adapter: str, values: Mapping[str, torch.Tensor]
) -> None:
    """Overwrite one adapter's tensors (names as :func:`adapter_tensors` gives them)."""
    live = adapter_tensors(model, adapter)
    if values.keys() != live.keys():
        missing = sorted(set(live) ^ set(values))
        raise FedLLMRecError(f"adapter {adapter!r}: tensors differ: {missing[:3]}")
    with torch.no_grad():
        for name, value in values.items():
            live[name].copy_(value)


def save_adapters(model: PeftModel, out: str | Path) -> Path:
    """Write every adapter with peft's ``save_pretrained`` (one folder per adapter:
    ``out/global``, ``out/private``)."""
    out = Path(out)
    model.save_pretrained(str(out), selected_adapters=list(model.peft_config))
    return out


def load_adapters(model: PreTrainedModel, folder: str | Path, config: AdapterConfig) -> PeftModel:
    """The frozen ``model`` with the adapters :func:`save_adapters` wrote, all active."""
    from peft import PeftModel

    folder = Path(folder)
    peft_model = PeftModel.from_pretrained(model, str(folder / GLOBAL), adapter_name=GLOBAL)
    if config.private:
        peft_model.load_adapter(str(folder / PRIVATE), adapter_name=PRIVATE)
    activate(peft_model, config)
    return peft_model
