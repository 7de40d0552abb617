"""Attacks as functions of per-user features and the truth they try to recover.

Every result is a plain dict with the attack's ``value``, the ``metric`` it is in, and
the ``baseline`` an attacker reaches without the observation (``baseline_kind`` says
which: ``random`` for AUC 0.5, ``majority`` for a constant guess, ``aggregate`` for a
user-independent ranking such as the round's summed upload). Supervised attacks are
trained and scored on disjoint users: seeded stratified folds, each user scored by the
model fitted on the other folds (out-of-fold), so no score comes from a model that saw
the user's label.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_selection import SelectKBest, f_classif
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from fedllmrec.data.schema import RecDataset

N_FOLDS = 5
AGE_EDGES = (25, 31, 43)  # ml-100k age buckets <25, 25-30, 31-42, >=43: 234/214/254/241 users


def attribute_targets(dataset: RecDataset) -> dict[str, np.ndarray]:
    """Each private attribute of ``dataset`` as integer class labels per user (n_users,).

    Two-valued attributes are binary (ml-100k gender: 1 = F); ``age`` is bucketed by
    :data:`AGE_EDGES` (near-equal classes); other attributes with at most 50 values are
    classes as they are; free-form ones (zip codes) are left out.
    """
    out: dict[str, np.ndarray] = {}
    users = dataset.users
    order = users.column("user").to_numpy()
    for name in dataset.private_attributes:
        values = np.asarray(users.column(name).to_pylist(), dtype=object)
        if name == "age":
            labels = np.digitize(values.astype(np.float64), AGE_EDGES)
            name = "age4"
        else:
            uniques, labels = np.unique(values.astype(str), return_inverse=True)
            if uniques.shape[0] > 50:
                continue
            if name == "gender":
                labels = (values == "F").astype(np.int64)
        dense = np.empty(dataset.n_users, dtype=np.int64)
        dense[order] = labels
        out[name] = dense
    return out


def _classifier(
    n_features: int, binary: bool, seed: int, search: bool = True
) -> GridSearchCV | Pipeline:
    """Logistic regression on the k most class-separating standardised features.

    k is chosen by an inner 3-fold CV on the training users only, from 16, 128, 1024 or
    all, with an L2 penalty that grows with it (C = 1/k): a few strong leaked features
    (a feature code, an attribute) and a weak signal spread over every item (a user's
    item set) are both found. On each user's multi-hot set of rated ml-100k items this
    reaches the reference ceiling (gender AUC ~0.77) without tuning per view.
    """
    model = LogisticRegression(max_iter=2000, class_weight=None if binary else "balanced")
    pipe = Pipeline(
        [("scale", StandardScaler()), ("select", SelectKBest(f_classif)), ("model", model)]
    )
    if not search:  # the quick audit (the demo): k = 128 fixed, no inner CV
        k = min(128, n_features)
        return pipe.set_params(select__k=k, model__C=1.0 / k)
    grid: list[dict[str, list[Any]]] = [
        {"select__k": [k], "model__C": [1.0 / k]} for k in (16, 128, 1024) if k < n_features
    ]
    grid.append({"select__k": ["all"], "model__C": [1.0 / max(n_features, 1)]})
    inner = StratifiedKFold(3, shuffle=True, random_state=seed + 1)
    return GridSearchCV(pipe, grid, cv=inner, scoring="roc_auc" if binary else "balanced_accuracy")


def attribute_inference(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int = 0,
    n_folds: int = N_FOLDS,
    search: bool = True,
) -> dict[str, Any]:
    """Logistic-regression attribute inference, scored out-of-fold on held-out users.

    Parameters
    ----------
    features : np.ndarray
        (n, d) what the attacker sees of each user.
    labels : np.ndarray
        (n,) integer classes. Classes with fewer than ``n_folds`` users are left out.
    seed : int
        Seeds the folds.
    search : bool
        Choose k and C by an inner CV (the audit); False: k = 128 fixed (quick, weaker).

    Returns
    -------
    dict
        Binary: ``metric`` "AUC", baseline 0.5 (random). Otherwise ``metric``
        "balanced_accuracy", baseline 1 / classes (a majority guess).
    """
    counts = np.bincount(labels)
    kept = counts[labels] >= n_folds
    x = np.asarray(features, dtype=np.float64)[kept]
    classes, y = np.unique(labels[kept], return_inverse=True)
    x = x[:, x.std(axis=0) > 0]  # constant columns carry nothing and only set C
    n_classes = classes.shape[0]
    result: dict[str, Any] = {"n_users": int(y.shape[0]), "n_features": int(x.shape[1])}
    binary = n_classes == 2
    result |= {
        "metric": "AUC" if binary else "balanced_accuracy",
        "baseline": 0.5 if binary else 1.0 / max(n_classes, 1),
        "baseline_kind": "random" if binary else "majority",
        "classes": int(n_classes),
    }
    if n_classes < 2 or x.shape[1] == 0:
        result["value"] = result["baseline"]  # nothing observed, nothing inferred
        return result
    folds = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
    model = _classifier(x.shape[1], binary, seed, search)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # f_classif on a column constant within a training fold: it scores 0, as it should
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        if binary:
            scores = cross_val_predict(model, x, y, cv=folds, method="predict_proba")[:, 1]
            result["value"] = float(roc_auc_score(y, scores))
        else:
            predicted = cross_val_predict(model, x, y, cv=folds)
            result["value"] = float(balanced_accuracy_score(y, predicted))
    return result


def ranking_auc(scores: np.ndarray, members: np.ndarray) -> float:
    """AUC of ``scores`` (n,) ranking the ``members`` (indices) above the rest; ties count 1/2."""
    n, k = scores.shape[0], members.shape[0]
    if k == 0 or k == n:
        return 0.5
    ranks = rankdata(scores)  # average ranks: ties count half
    return float((ranks[members].sum() - k * (k + 1) / 2) / (k * (n - k)))


def itemset_reconstruction(
    scores: np.ndarray, histories: Sequence[np.ndarray], baseline: np.ndarray
) -> dict[str, Any]:
    """Recover each client's training item set from per-item scores (row norms).

    Each client's top-|history| items by score are its guessed set (the attacker is
    given the count, as the header's example count nearly tells it); precision, recall
    and F1 average over clients, and ``auc`` is the mean per-client AUC of the whole
    ranking (members against every other item).

    Parameters
    ----------
    scores : np.ndarray
        (n, I) each client's item scores.
    histories : sequence of np.ndarray
        Each client's distinct training items.
    baseline : np.ndarray
        (I,) a user-independent ranking (the round's aggregate), scored the same way.
    """
    ours = _reconstruct(scores, histories)
    base = _reconstruct(np.broadcast_to(baseline, scores.shape), histories)
    sizes = np.asarray([h.shape[0] for h in histories], dtype=np.float64)
    return {
        "n_users": len(histories),
        "metric": "F1@|history|",
        "value": ours["f1"],
        **{k: ours[k] for k in ("precision", "recall", "f1", "auc")},
        "baseline": base["f1"],
        "baseline_kind": "aggregate",
        "baseline_auc": base["auc"],
        # A random guess of |h| items out of I hits |h|^2 / I of them on average.
        "random_f1": float(np.mean(sizes / scores.shape[1])),
        "exact": float(ours["exact"]),
    }


def _reconstruct(scores: np.ndarray, histories: Sequence[np.ndarray]) -> dict[str, float]:
    precision, recall, f1, auc, exact = [], [], [], [], []
    n_items = scores.shape[1]
    for row, members in zip(scores, histories, strict=True):
        k = members.shape[0]
        if k == 0:
            continue
        # Ties are broken by item index, the same for every client: no luck from shuffling.
        guess = np.argsort(-row, kind="stable")[:k]
        hits = np.isin(guess, members).sum()
        p = r = hits / k  # |guess| = |history|
        precision.append(p)
        recall.append(r)
        f1.append(0.0 if hits == 0 else 2 * p * r / (p + r))
        auc.append(ranking_auc(np.asarray(row), members) if k < n_items else 0.5)
        exact.append(hits == k)
    return {
        "precision": float(np.mean(precision)),
        "recall": float(np.mean(recall)),
        "f1": float(np.mean(f1)),
        "auc": float(np.mean(auc)),
        "exact": float(np.mean(exact)),
    }


def code_recovery(norms: np.ndarray, codes: np.ndarray) -> dict[str, Any]:
    """Read each user's feature code as the largest row of its feature-embedding delta.

    Only the row of the user's own code enters its forward pass, so in an unprotected
    upload it is the single non-zero row. No training: accuracy over every user,
    against always guessing the most frequent code (also the guess where a user's
    rows are all zero: nothing was sent).
    """
    majority = int(np.bincount(codes).argmax())
    guessed = np.where(norms.any(axis=1), np.argmax(norms, axis=1), majority)
    return {
        "n_users": int(codes.shape[0]),
        "metric": "accuracy",
        "value": float(np.mean(guessed == codes)),
        "baseline": float(np.bincount(codes).max() / codes.shape[0]),
        "baseline_kind": "majority",
    }


def multi_hot(histories: Sequence[np.ndarray], n_items: int, min_users: int = 1) -> np.ndarray:
    """(n, m) float32: 1 where the user's list holds the item, for the m items in at least
    ``min_users`` lists (rarer items say nothing a held-out user shares; KuaiSAR-R's
    70k items would not fit densely)."""
    counts = np.bincount(np.concatenate([*histories, np.zeros(0, np.int64)]), minlength=n_items)
    column = np.full(n_items, -1, dtype=np.int64)
    kept = np.flatnonzero(counts >= min_users)
    column[kept] = np.arange(kept.shape[0])
    out = np.zeros((len(histories), kept.shape[0]), dtype=np.float32)
    for row, items in enumerate(histories):
        cols = column[items]
        out[row, cols[cols >= 0]] = 1.0
    return out
