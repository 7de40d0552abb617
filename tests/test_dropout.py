"""Dropout with masks from random bytes: its rate, scale, seeding, and the fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import vmap

from fedllmrec.models.dropout import LEVELS, Dropout, keep_mask, random_bytes


@pytest.mark.parametrize("p", [0.5, 0.2, 0.05])
def test_masks_drop_at_rate_p_and_keep_the_mean(p: float) -> None:
    torch.manual_seed(0)
    n = 1_000_000
    mask = keep_mask(torch.Size([n // 100, 100]), p, torch.float32)
    dropped = float((mask == 0).double().mean())
    assert abs(dropped - p) < 5 * (p * (1 - p) / n) ** 0.5  # within 5 binomial SDs
    scale = LEVELS / (LEVELS - round(p * LEVELS))
    assert mask.unique().tolist() == [0.0, pytest.approx(scale)]
    assert float(mask.double().mean()) == pytest.approx(1.0, abs=5e-3)  # inverted dropout


@pytest.mark.parametrize("length", [1, 7, 8, 13, 4096, 99_999])
def test_random_bytes_are_pcg64_generator_bytes(length: int) -> None:
    """The raw-output shortcut gives exactly the bytes Generator.bytes gave: same masks."""
    expected = np.random.Generator(np.random.PCG64(2**40 + 7)).bytes(length)
    assert random_bytes(2**40 + 7, length).tobytes() == expected


def test_masks_follow_torch_seed() -> None:
    def draw(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return keep_mask(torch.Size([64, 48]), 0.5, torch.float32)

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))
    torch.manual_seed(1)
    state = torch.get_rng_state()
    first = keep_mask(torch.Size([64, 48]), 0.5, torch.float32)
    torch.set_rng_state(state)  # a resumed run continues the same stream
    assert torch.equal(keep_mask(torch.Size([64, 48]), 0.5, torch.float32), first)
    assert not keep_mask(torch.Size([3]), 1.0, torch.float32).any()


def test_dropout_modes() -> None:
    x = torch.randn(32, 48)
    slow, fast = Dropout(0.3), Dropout(0.3, fast=True)
    torch.manual_seed(0)
    reference = nn.Dropout(0.3)(x)
    torch.manual_seed(0)
    assert torch.equal(slow(x), reference)  # fast=False is torch's dropout, stream included
    out = fast(x)
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] * LEVELS / (LEVELS - round(0.3 * LEVELS)))
    fast.eval()
    assert fast(x) is x
    assert Dropout(0.0, fast=True).train()(x) is x


def test_fast_dropout_falls_back_under_vmap() -> None:
    """The vmap engine batches clients: each must get its own mask, as torch's dropout gives."""
    fast = Dropout(0.5, fast=True)
    torch.manual_seed(0)
    out = vmap(fast, randomness="different")(torch.ones(4, 256))
    assert len({tuple(row.tolist()) for row in out != 0}) == 4
