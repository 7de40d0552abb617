"""One user's recommendations from a finished run: retrieve, then rank with the run's model.

The serving path the realistic mode measures (docs/evaluation.md): the user's query is the
mean all-MiniLM-L6-v2 embedding of their whole history in the target domain, exact FAISS
retrieval returns the ``k`` nearest items of that domain they never touched, and the run's
model (an LLM, an FKD student, popularity, ...) scores those ``k`` with everything the user
did as its history.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedllmrec.errors import FedLLMRecError
from fedllmrec.recipes.recipe import load_run
from fedllmrec.retrieval import ItemIndex
from fedllmrec.retrieval.history import exclusions, history_queries
from fedllmrec.semantics import embed_items


@dataclass(frozen=True)
class Recommendation:
    """One ranked candidate."""

    rank: int  # 1 = the model's best
    item_id: str  # as in the source data
    title: str
    retrieval_score: float  # inner product with the user's history query
    model_score: float  # the run's model (for the LLM: length-normalised log-likelihood)


def recommend(
    run_dir: str | Path,
    user: str,
    domain: str | None = None,
    k: int = 20,
    *,
    data_dir: str | Path | None = None,
) -> list[Recommendation]:
    """The run's ranking of ``user``'s ``k`` retrieved candidates in ``domain``.

    ``domain`` may be left out when the dataset has only one; ``data_dir`` is the data root
    the run was trained with, when not the default.

    Raises
    ------
    FedLLMRecError
        When the run is unfinished, the user or domain is unknown, or the user has no
        history in the domain to build a query from.
    """
    model, prepared = load_run(run_dir, data_dir=data_dir)
    dataset = prepared.dataset
    user_ids = dataset.users.column("user_id").to_pylist()
    if user not in user_ids:
        raise FedLLMRecError(f"user {user!r} is not in {dataset.name} (as prepared for {run_dir})")
    if domain is None and len(dataset.domains) == 1:
        domain = dataset.domains[0]
    if domain not in dataset.domains:
        known = ", ".join(dataset.domains)
        which = "name a domain" if domain is None else f"unknown domain {domain!r}"
        raise FedLLMRecError(f"{which}: {dataset.name} has {known}")
    dense = np.asarray([user_ids.index(user)], dtype=np.int64)
    d = dataset.domains.index(domain)
    vectors = embed_items(dataset)  # cached on disk by the encoder
    history = prepared.split.touched  # everything the user did: recommend what comes next
    query, has = history_queries(vectors, history, dense, item_domain=dataset.item_domain, domain=d)
    if not has[0]:
        raise FedLLMRecError(f"user {user!r} has no history in {domain!r} to build a query from")
    index = ItemIndex.build(vectors, domains=dataset.item_domain.astype(np.int64))
    retrieval, items = index.search(query, k, domain=d, exclude=exclusions(prepared.split, dense))
    found = items[0] >= 0
    items, retrieval = items[:, found], retrieval[:, found]  # (1, k') the domain may run out
    scores = np.asarray(model.score(dense, items, history), dtype=np.float64)[0]  # (k',)
    order = np.argsort(-scores, kind="stable")  # ties keep retrieval order
    ids = dataset.items.column("item_id")
    titles = dataset.items.column("title")
    return [
        Recommendation(
            rank=rank + 1,
            item_id=str(ids[int(items[0, j])]),
            title=str(titles[int(items[0, j])]),
            retrieval_score=float(retrieval[0, j]),
            model_score=float(scores[j]),
        )
        for rank, j in enumerate(order.tolist())
    ]
