"""Domain-level attack: a domain client's item popularity from its text-adaptor upload.

With domains as clients, the user-level attacks have no target (a client is a
whole domain) and a domain's catalogue is public, but how often each of its items
is bought is the domain's business data. Its teacher upload carries the adaptor
that maps frozen item text to the model's space (an ID model's upload, its item
table, whose row norms rank the same way); the adaptor's gradient is a sum of
outer products with the text vectors of the items it trained on, weighted by how
often, so the norm of each item's least-squares gradient column
(:func:`~fedllmrec.audits.views.projected_norms`) ranks a domain's items by how much
they were trained on.

:func:`popularity_inference` scores that ranking against the domain's own training
counts: Spearman's rho over the domain's items (random: 0) and the AUC of its
top-decile items (random: 0.5), for each client's own upload and for the round's
aggregate (what secure aggregation shows).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import spearmanr

from fedllmrec.audits.attacks import ranking_auc
from fedllmrec.audits.views import ServerView
from fedllmrec.data.split import TRAIN, Split


def training_counts(split: Split) -> np.ndarray:
    """(n_items,) each item's number of training interactions."""
    ds = split.dataset
    return np.bincount(ds.item[split.rows(TRAIN)], minlength=ds.n_items)


def popularity_inference(
    scores: np.ndarray, counts: np.ndarray, items: np.ndarray, top: float = 0.1
) -> dict[str, Any]:
    """How well per-item ``scores`` (n_items + 1,; row 0 padding) rank ``items`` (a domain's,
    unshifted) by their training ``counts`` (n_items,).

    Returns Spearman's rho (the value; baseline 0, random) and ``auc``: the AUC of
    the ``top`` share most-trained items against the rest (baseline 0.5).
    """
    s, c = scores[items + 1].astype(np.float64), counts[items].astype(np.float64)
    rho = float(spearmanr(s, c).statistic) if np.ptp(s) > 0 and np.ptp(c) > 0 else 0.0
    members = np.flatnonzero(c >= np.quantile(c, 1.0 - top))
    return {
        "metric": "Spearman rho",
        "value": rho,
        "baseline": 0.0,
        "baseline_kind": "random",
        "auc": ranking_auc(s, members),
        "baseline_auc": 0.5,
        "n_items": int(items.shape[0]),
    }


def domain_popularity(
    view: ServerView, split: Split, keys: list[str], domain_of_client: np.ndarray
) -> dict[str, Any]:
    """:func:`popularity_inference` of every domain client, from round 1 of ``view``.

    ``keys`` name per-item scores of the view: an item table's row norms, or a text
    adaptor's ``"<name> @ text"``; ``domain_of_client`` gives the domain of each of the
    view's rows. Per key and domain: the client's own upload (when the server saw it
    alone) and the round's aggregate.
    """
    ds = split.dataset
    counts = training_counts(split)
    out: dict[str, Any] = {}
    for key in keys:
        for row, d in enumerate(domain_of_client.tolist()):
            items = split.active_items(d).astype(np.int64)
            label = f"{ds.domains[d]}: {key}"
            result: dict[str, Any] = {}
            if view.per_client[0] and view.present[row, 0]:
                result["upload"] = popularity_inference(view.first_norms[key][row], counts, items)
            result["aggregate"] = popularity_inference(view.first_aggregate[key], counts, items)
            out[label] = result
    return out
