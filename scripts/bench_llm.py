"""Candidates scored per second by the LLM ranker: cached prefix vs full prompts vs generation.

On the same Art-Office test rows (saved 1+19 candidate lists, the user's in-domain history,
the zero-shot text-only prompt of ``prompts/llm_rank.toml``), in one run, for fp32 and bf16:

* ``cached``: the library's scorer (the prompt runs once, its KV cache serves every
  candidate: :func:`fedllmrec.models.llm.score_candidates`);
* ``uncached``: every candidate's whole prompt run anew (``score_candidates_uncached``);
* ``generate``: greedy generation of an answer, then matched to a candidate's title (the
  released A-LLMRec / LLaRA protocol; an answer that matches no title ranks nothing first).

Reports candidates per second, the speed-ups, HR@1 of each on these rows, and the largest
score difference between ``cached`` and ``uncached`` (the same arithmetic).

    FEDLLMREC_DATA=../shared/data python scripts/bench_llm.py --rows 20
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch
from benchlib import machine

from fedllmrec.data.sequences import observed_sequences
from fedllmrec.models.llm import LLMConfig, score_candidates, score_candidates_uncached
from fedllmrec.models.llm.recommender import LLMRecConfig, LLMRecommender
from fedllmrec.recipes import load_recipe


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def _answer(text: str) -> str:
    """The generated answer's first non-empty line, without a list marker, normalised."""
    lines = [line.strip().lstrip("-*0123456789.) ").strip() for line in text.splitlines()]
    return _normalise(next((line for line in lines if line), ""))


def _generate(model: Any, tokenizer: Any, ids: torch.Tensor, max_new_tokens: int) -> str:
    """Greedy answer to the prompt ``ids`` (one row: nothing to pad), normalised."""
    out = model.generate(
        ids[None],
        attention_mask=torch.ones_like(ids[None]),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )[0, ids.shape[0] :]
    return _answer(tokenizer.decode(out, skip_special_tokens=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/popularity-art-office.toml")
    parser.add_argument("--rows", type=int, default=20, help="test rows (half per domain)")
    parser.add_argument("--negatives", type=int, default=19)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prepared = load_recipe(args.recipe).prepare()
    split, ds = prepared.split, prepared.split.dataset
    cands = prepared.sampled("test", args.negatives)
    rng = np.random.default_rng(0)
    picked = np.concatenate([
        rng.choice(np.flatnonzero(cands.domain == d), args.rows // 2, replace=False)
        for d in range(len(ds.domains))
    ])  # fmt: skip
    users, items = cands.user[picked], cands.items[picked].astype(np.int64)
    history = observed_sequences(split, split.observed("test"), users)
    result: dict[str, Any] = {"rows": int(picked.shape[0]), "candidates": int(items.shape[1])}
    for dtype in args.dtypes:
        rec = LLMRecommender(LLMRecConfig(llm=LLMConfig(dtype=dtype))).fit(split)
        assert rec.model is not None and rec.prompts is not None
        model, prompts = rec.model, rec.prompts
        tokenizer, title_tokens = prompts.tokenizer, prompts.template.title_tokens
        embed = model.get_input_embeddings()
        rows = [rec.row_prompt(int(users[r]), history[r], items[r]) for r in range(items.shape[0])]
        seconds: dict[str, float] = {}
        hits = {"cached": 0, "uncached": 0, "generate": 0}
        cached: list[torch.Tensor] = []
        largest_difference, same_ranking, matched = 0.0, 0, 0
        for name in ("cached", "uncached", "generate"):
            start = time.perf_counter()
            for r, (encoded, shown, order) in enumerate(rows):
                positive = int(np.flatnonzero(order == 0)[0])  # where the held-out item is shown
                with torch.no_grad():
                    if name == "generate":
                        answer = _generate(model, tokenizer, encoded.ids, title_tokens)
                        shown_titles = [_normalise(prompts.title_text(int(i))) for i in shown]
                        match = [k for k, t in enumerate(shown_titles) if answer.startswith(t)]
                        matched += bool(match)
                        hits[name] += bool(match) and match[0] == positive
                        continue
                    scorer = score_candidates if name == "cached" else score_candidates_uncached
                    scores = scorer(
                        model, embed(encoded.ids), prompts.continuations(shown.tolist()),
                        chunk=rec.config.chunk, pad_id=prompts.placeholder,
                    ).float()  # fmt: skip
                hits[name] += int(torch.argmax(scores)) == positive
                if name == "cached":
                    cached.append(scores)
                else:
                    gap = float((cached[r] - scores).abs().max())
                    largest_difference = max(largest_difference, gap)
                    same_ranking += bool(
                        torch.equal(torch.argsort(cached[r]), torch.argsort(scores))
                    )
            seconds[name] = time.perf_counter() - start
        n = items.size
        result[dtype] = {
            "candidates_per_s": {k: n / v for k, v in seconds.items()},
            "speedup_vs_generate": seconds["generate"] / seconds["cached"],
            "speedup_vs_uncached": seconds["uncached"] / seconds["cached"],
            "hr1": {k: v / items.shape[0] for k, v in hits.items()},
            "generate_matched_share": matched / items.shape[0],
            "largest_score_difference": largest_difference,
            "same_ranking_rows": same_ranking,
        }
        print(json.dumps({dtype: result[dtype]}, indent=1), flush=True)
    result["machine"] = machine()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
