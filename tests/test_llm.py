"""The frozen LLM (SmolLM2-135M-Instruct, converted once from its GGUF) and the likelihood
scorer: the cached-prefix scorer equals running each candidate's whole prompt."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedllmrec.errors import FedLLMRecError
from fedllmrec.models.llm import load_llm, score_candidates, score_candidates_uncached
from fedllmrec.models.llm.backbone import converted_dir, gguf_path, resolve_device


@pytest.fixture(scope="module")
def llm():  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return load_llm()


def test_the_packaged_gguf_is_converted_once_to_plain_weights(llm) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = llm
    folder = converted_dir(gguf_path())
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # reloaded as plain floats, not through GGUF
    assert list(folder.glob("*.safetensors"))
    assert getattr(model, "hf_quantizer", None) is None
    assert model.config.hidden_size == 576 and model.config.num_hidden_layers == 30
    assert model.get_input_embeddings().weight.data_ptr() == model.lm_head.weight.data_ptr()
    assert tokenizer.padding_side == "left"
    assert not any(p.requires_grad for p in model.parameters())
    mtime = (folder / "config.json").stat().st_mtime_ns
    load_llm()  # the second load reads the converted folder, it does not convert again
    assert (folder / "config.json").stat().st_mtime_ns == mtime


def test_the_device_option_resolves_or_says_why_not(llm) -> None:  # type: ignore[no-untyped-def]
    """model.llm.device: 'auto' takes the GPU when there is one; a bad name is one error."""
    model, _ = llm
    assert next(model.parameters()).device == torch.device("cpu")  # the default
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("tpu", "gpu0", "mps"):
        with pytest.raises(FedLLMRecError, match=r"model\.llm\.device"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(FedLLMRecError, match="no CUDA device"):
            resolve_device("cuda:0")


def _prompt_and_candidates(tokenizer):  # type: ignore[no-untyped-def]
    prompt = (
        "A user bought, in order: Watercolor brush set; Sketchbook, 100 sheets; Acrylic paint "
        "tubes. Which item will they buy next? Answer with its title.\nAnswer:"
    )
    titles = [
        " Canvas panels, 8 x 10 inch",
        " Stapler",
        " Oil pastels",
        " A",
        " Gel pens, 24 colours",
    ]
    ids = tokenizer(prompt, return_tensors="pt").input_ids[0]
    return ids, [tokenizer(t, add_special_tokens=False).input_ids for t in titles]


def test_cached_prefix_scores_equal_full_prompt_scores(llm) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = llm
    ids, candidates = _prompt_and_candidates(tokenizer)
    assert min(len(c) for c in candidates) == 1 and max(len(c) for c in candidates) > 3
    prompt = model.get_input_embeddings()(ids)  # (P, H)
    with torch.no_grad():
        cached = score_candidates(model, prompt, candidates, chunk=2)
        whole = score_candidates_uncached(model, prompt, candidates, chunk=3)
        alone = torch.stack([score_candidates_uncached(model, prompt, [c])[0] for c in candidates])
    torch.testing.assert_close(cached, whole, rtol=0, atol=2e-4)
    # Right padding changes nothing: each candidate scored alone gives the same score.
    torch.testing.assert_close(whole, alone, rtol=0, atol=2e-4)
    assert torch.equal(
        torch.argsort(cached, descending=True), torch.argsort(whole, descending=True)
    )
    assert torch.all(cached < 0)


def test_gradients_reach_the_prompt_through_the_cache(llm) -> None:  # type: ignore[no-untyped-def]
    """The soft tokens written into the prompt train through the cached scorer."""
    model, tokenizer = llm
    ids, candidates = _prompt_and_candidates(tokenizer)
    prompt = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    score_candidates(model, prompt, candidates[:2], chunk=1).sum().backward()
    assert prompt.grad is not None and bool(prompt.grad[-1].abs().sum() > 0)
    reference = prompt.detach().clone().requires_grad_(True)
    score_candidates_uncached(model, reference, candidates[:2]).sum().backward()
    assert reference.grad is not None
    torch.testing.assert_close(prompt.grad, reference.grad, rtol=1e-3, atol=1e-5)


def test_prompt_shows_recent_history_and_every_candidate_with_soft_places(llm) -> None:  # type: ignore[no-untyped-def]
    from fedllmrec.models.llm.prompts import USER, PromptEncoder, load_rank_prompt

    _, tokenizer = llm
    template = load_rank_prompt()
    titles = [f"Item number {i}" for i in range(40)]
    history, candidates = list(range(15)), [30, 21, 35]
    plain = PromptEncoder(tokenizer, template, titles)
    text = tokenizer.decode(plain.encode(history, candidates).ids)
    shown = history[-template.history_items :]
    assert all(f"- Item number {i}\n" in text for i in shown)
    assert f"Item number {history[0]}\n" not in text  # older than the last history_items
    assert all(f"- Item number {i}" in text for i in candidates)
    assert (
        text.index("Item number 30") < text.index("Item number 21") < text.index("Item number 35")
    )
    assert (
        text.endswith(template.answer) and plain.encode(history, candidates).soft_items.numel() == 0
    )
    soft = PromptEncoder(tokenizer, template, titles, soft_tokens=True).encode(history, candidates)
    assert soft.soft_items.tolist() == [USER, *shown, *candidates]
    assert torch.all(soft.ids[soft.soft_positions] == plain.placeholder)
    # Outside the soft places, the prompt's text is the plain prompt's, spaces aside.
    kept = torch.ones_like(soft.ids, dtype=torch.bool)
    kept[soft.soft_positions] = False
    assert tokenizer.decode(soft.ids[kept]).split() == text.split()


def test_llm_recommender_scores_the_rows_it_shows(ml100k_prepared) -> None:  # type: ignore[no-untyped-def]
    """Zero-shot scores on real ml-100k 1+19 lists are the scores of the prompt it builds
    (history in-domain, candidates in the user's seeded order), in the saved column order."""
    from fedllmrec.data.sequences import observed_sequences
    from fedllmrec.models.llm.recommender import LLMRecConfig, LLMRecommender

    split = ml100k_prepared.split
    rec = LLMRecommender(LLMRecConfig(history_items=3, title_tokens=8)).fit(split)  # short prompts
    cands = ml100k_prepared.sampled("test", 19)
    users, items = cands.user[:2], cands.items[:2].astype("int64")
    history = split.observed("test")
    scores = rec.score(users, items, history)
    assert scores.shape == (2, 20) and np.all(np.isfinite(scores)) and np.all(scores < 0)
    orders = [rec.shown_order(int(u), 20) for u in users]
    assert all(sorted(o.tolist()) == list(range(20)) for o in orders)
    seq = observed_sequences(split, history, users[:1])[0]
    shown = items[0][orders[0]]
    assert rec.prompts is not None and rec.model is not None
    encoded = rec.prompts.encode(seq.tolist(), shown.tolist())
    with torch.no_grad():
        expected = score_candidates_uncached(
            rec.model, rec.model.get_input_embeddings()(encoded.ids),
            rec.prompts.continuations(shown.tolist()), pad_id=rec.prompts.placeholder,
        )  # fmt: skip
    np.testing.assert_allclose(scores[0][orders[0]], expected.numpy(), rtol=0, atol=2e-4)
