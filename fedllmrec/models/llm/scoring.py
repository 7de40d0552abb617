"""Rank candidates by likelihood: one pass over the shared prompt, its KV cache reused.

A candidate's score is the mean log-probability of its tokens given the prompt (length
normalised, so a long title is not penalised for its length). The prompt (history, soft
tokens, instructions) is the same for all K candidates of a user, so it runs once; its
keys and values are then broadcast to the K continuations, which run right-padded in one
batch. Right padding keeps every real token at its true position; the padded tail is
masked and never attends forward, so scores do not depend on the batch's longest title.

:func:`score_candidates_uncached` runs each candidate's full prompt instead (the same
arithmetic, no reuse): the reference the cached scorer must match, and a speed baseline.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel


def _right_pad(candidates: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, L) token ids right-padded with ``pad`` and their (K, L) mask."""
    if not candidates or any(len(c) == 0 for c in candidates):
        raise ValueError("every candidate needs at least one token")
    width = max(len(c) for c in candidates)
    ids = torch.full((len(candidates), width), pad, dtype=torch.long)
    mask = torch.zeros((len(candidates), width), dtype=torch.long)
    for row, tokens in enumerate(candidates):
        ids[row, : len(tokens)] = torch.as_tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = 1
    return ids, mask


def _chunks(
    candidates: Sequence[Sequence[int]], chunk: int, pad: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The right-padded candidates (ids, mask) on ``device``, ``chunk`` rows at a time."""
    ids, mask = _right_pad(candidates, pad)
    ids, mask = ids.to(device), mask.to(device)
    for start in range(0, ids.shape[0], chunk):
        yield ids[start : start + chunk], mask[start : start + chunk]


def _mean_logprob(
    first: torch.Tensor, rest: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean log-probability of each row's tokens.

    ``first`` (K, V): logits predicting token 0 (the prompt's last position); ``rest``
    (K, L - 1, V): logits at the candidate's positions 0..L-2, predicting tokens 1..L-1.
    """
    logits = torch.cat([first[:, None], rest], dim=1)  # (K, L, V)
    logp = torch.log_softmax(logits.float(), dim=-1)
    token = logp.gather(-1, ids[..., None]).squeeze(-1)  # (K, L)
    weight = mask.to(token.dtype)
    return (token * weight).sum(1) / weight.sum(1)


def score_candidates(
    model: PreTrainedModel | PeftModel,
    prompt: torch.Tensor,
    candidates: Sequence[Sequence[int]],
    chunk: int = 32,
    pad_id: int = 0,
) -> torch.Tensor:
    """Length-normalised log-likelihood of each candidate continuation (K,).

    Parameters
    ----------
    model : PreTrainedModel
        A causal LM (its adapters, if any, active).
    prompt : torch.Tensor
        (P, H) input embeddings of the shared prompt (soft tokens already written in), on
        the model's device (every tensor made here follows it).
    candidates : sequence of sequences of int
        Each candidate's token ids (the text that would follow the prompt).
    chunk : int
        Candidates per batched pass after the prompt (memory: chunk x L x vocabulary logits).
    pad_id : int
        Token written into the padded tail (masked; any id works).
    """
    from transformers import DynamicCache

    p, device = prompt.shape[0], prompt.device
    out = model(inputs_embeds=prompt[None], use_cache=True)
    first = out.logits[:, -1]  # (1, V): predicts every candidate's first token
    prefix = [(layer.keys, layer.values) for layer in out.cache.layers]
    embed = model.get_input_embeddings()
    scores = []
    for c_ids, c_mask in _chunks(candidates, chunk, pad_id, device):
        k, width = c_ids.shape
        if width == 1:  # one-token candidates: the prompt's last position scored them all
            rest = first.new_zeros((k, 0, first.shape[-1]))
        else:
            # A fresh cache per chunk: `update` concatenates, so the prompt's tensors are
            # never written to, and gradients reach the prompt through every chunk.
            cache = DynamicCache(
                ddp_cache_data=[(key.expand(k, -1, -1, -1), value.expand(k, -1, -1, -1))
                                for key, value in prefix],
                config=model.config,
            )  # fmt: skip
            prefix_mask = torch.ones((k, p), dtype=torch.long, device=device)
            attention = torch.cat([prefix_mask, c_mask[:, :-1]], dim=1)
            rest = model(
                inputs_embeds=embed(c_ids[:, :-1]),
                attention_mask=attention,
                position_ids=torch.arange(p, p + width - 1, device=device)[None].expand(k, -1),
                cache=cache,
                use_cache=True,
            ).logits  # (k, L - 1, V)
        scores.append(_mean_logprob(first.expand(k, -1), rest, c_ids, c_mask))
    return torch.cat(scores)


def score_candidates_uncached(
    model: PreTrainedModel | PeftModel,
    prompt: torch.Tensor,
    candidates: Sequence[Sequence[int]],
    chunk: int = 32,
    pad_id: int = 0,
) -> torch.Tensor:
    """The same scores as :func:`score_candidates`, each candidate's whole prompt run anew."""
    p = prompt.shape[0]
    embed = model.get_input_embeddings()
    scores = []
    for c_ids, c_mask in _chunks(candidates, chunk, pad_id, prompt.device):
        k = c_ids.shape[0]
        inputs = torch.cat([prompt[None].expand(k, -1, -1), embed(c_ids[:, :-1])], dim=1)
        prefix_mask = torch.ones((k, p), dtype=torch.long, device=prompt.device)
        attention = torch.cat([prefix_mask, c_mask[:, :-1]], dim=1)
        logits = model(inputs_embeds=inputs, attention_mask=attention).logits  # (k, P+L-1, V)
        scores.append(_mean_logprob(logits[:, p - 1], logits[:, p:], c_ids, c_mask))
    return torch.cat(scores)
