"""Evaluators: a fitted model and a role in, flat ``{"name": value}`` metrics out.

The trainer only needs flat metrics so one key (``monitor``) can select the
best epoch whatever the task; ranking and click prediction differ only in the
evaluator. New kinds are added to :data:`EVALUATORS`::

    EVALUATORS["mine"] = MyEvaluator  # called as MyEvaluator(prepared, **options)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast, get_args

import numpy as np

from fedllmrec.data.prepare import LLM_NEGATIVES, Prepared
from fedllmrec.errors import FedLLMRecError
from fedllmrec.eval.metrics import TiePolicy, click_metrics
from fedllmrec.eval.ranking import Mode, evaluate_ranking
from fedllmrec.eval.retrieved import RETRIEVED_K, evaluate_retrieved
from fedllmrec.models.base import Recommender, Scorer, scoring_session

# sampled-19: the LLM protocol's 1 + 19; retrieved-20: the top 20 retrieved (eval/retrieved.py)
EvalMode = Literal["full", "sampled", "sampled-19", "retrieved-20"]
EVAL_MODES: tuple[str, ...] = get_args(EvalMode)

# Metrics where smaller is better; a monitor on one of these defaults to mode "min".
LOWER_IS_BETTER: set[str] = {"LogLoss", "loss"}


class Evaluator(Protocol):
    """Scores ``model`` on the held-out interactions of ``role`` ("valid" or "test")."""

    def __call__(self, model: Scorer, role: str) -> dict[str, float]: ...


@dataclass
class RankingEvaluator:
    """Leave-one-out ranking metrics (:func:`fedllmrec.eval.evaluate_ranking`), flattened.

    Keys are ``"{mode}/{metric}"`` (``"full/NDCG@10"``) and, when the dataset
    has several domains, ``"{mode}/{domain}/{metric}"`` (``"full/arts/HR@10"``).

    Parameters
    ----------
    prepared : Prepared
        The split and its saved candidates.
    modes : sequence of {"full", "sampled", "sampled-19", "retrieved-20"}
        Full ranking over the domain's items, 1 + ``n_negatives`` sampled, the LLM
        protocol's 1 + 19 lists (the first 19 saved negatives; keys ``sampled-19/...``),
        and/or the realistic mode: the 20 items text retrieval returns, which may miss the
        target (:mod:`fedllmrec.eval.retrieved`; keys ``retrieved-20/recall@20``, ...).
    ks : sequence of int
        Cut-offs of HR@k and NDCG@k.
    n_negatives : int, optional
        Negatives per sampled list; default every saved one (99 unless the data was
        prepared with another ``negatives``). More than were saved is an error.
    """

    prepared: Prepared
    modes: Sequence[EvalMode] = ("full", "sampled")
    ks: Sequence[int] = (10,)
    n_negatives: int | None = None
    ties: TiePolicy = "expected"
    batch_size: int = 256
    cold_start: bool = False  # also "cold/..." keys: held-out items never seen in training
    # Validation (every eval_every epochs) computes only these modes and no cold keys when
    # set; test computes everything. Full ranking on 19k items costs most of an Art-Office
    # epoch, and model selection reads one key.
    valid_modes: Sequence[EvalMode] | None = None
    # Validation scores only this many users, a fixed random subset drawn once with
    # ``valid_seed`` (the same users at every epoch, so epochs compare); test scores every
    # user. Model selection needs a ranking of epochs, not every user's metric.
    valid_users: int | None = None
    valid_seed: int = 0
    # Test scores only this many users (a fixed subset drawn with ``test_seed``), for models
    # too slow to score every user (the LLM rows); None scores every user.
    test_users: int | None = None
    test_seed: int = 0

    def __post_init__(self) -> None:
        for mode in self.modes:
            if mode not in EVAL_MODES:
                raise ValueError(f"mode must be one of {EVAL_MODES}, not {mode!r}")
        # Fail when the recipe is built, not after training: too few saved negatives.
        if "sampled" in self.modes:
            self.prepared.sampled("test", self.n_negatives)
        if "sampled-19" in self.modes:
            self.prepared.sampled("test", LLM_NEGATIVES)
        if self.valid_modes is not None and not set(self.valid_modes) <= set(self.modes):
            raise ValueError(f"valid_modes {self.valid_modes} must be among modes {self.modes}")
        self._valid_subset = self._user_subset("valid_users", self.valid_users, self.valid_seed)
        self._test_subset = self._user_subset("test_users", self.test_users, self.test_seed)

    def _user_subset(self, name: str, size: int | None, seed: int) -> np.ndarray | None:
        """A sorted seeded subset of ``size`` user ids (None: every user).

        Drawn among the users the split holds interactions of (a ``max_users`` split keeps
        the whole user table): on an unfiltered split that is every user, the same draw.
        """
        if size is None:
            return None
        if size <= 0:
            raise ValueError(f"{name} must be positive, not {size}")
        present = np.unique(self.prepared.split.dataset.user)
        if size >= present.shape[0]:
            return None
        return np.sort(np.random.default_rng(seed).choice(present, size=size, replace=False))

    @property
    def validation_users(self) -> np.ndarray | None:
        """The user ids validation scores (sorted), or None for every user."""
        return self._valid_subset

    @property
    def test_users_scored(self) -> np.ndarray | None:
        """The user ids test scores (sorted), or None for every user."""
        return self._test_subset

    def __call__(self, model: Scorer, role: str) -> dict[str, float]:
        with scoring_session(model):  # user states computed once for every mode
            return self._evaluate(model, role)

    def _evaluate(self, model: Scorer, role: str) -> dict[str, float]:
        out: dict[str, float] = {}
        valid = role == "valid" and self.valid_modes is not None
        modes = self.valid_modes if valid and self.valid_modes is not None else self.modes
        for cold in (False, True) if self.cold_start and not valid else (False,):
            prefix = "cold/" if cold else ""
            for mode in modes:
                if mode == "retrieved-20":
                    if cold:
                        continue  # the lists hold the items retrieval finds, cold or not
                    result = evaluate_retrieved(
                        cast(Recommender, model),
                        self.prepared,
                        role=role,
                        k=RETRIEVED_K,
                        ks=self.ks,
                        ties=self.ties,
                        batch_size=self.batch_size,
                        only_users=self._valid_subset if role == "valid" else self._test_subset,
                    )
                    _flatten(out, prefix, mode, result)
                    continue
                short = mode == "sampled-19"
                result = evaluate_ranking(
                    cast(Recommender, model),  # it only calls score(); trained models need no fit()
                    self.prepared,
                    role=role,
                    mode="sampled" if short else cast(Mode, mode),
                    n_negatives=LLM_NEGATIVES if short else self.n_negatives,
                    ks=self.ks,
                    ties=self.ties,
                    batch_size=self.batch_size,
                    cold_only=cold,
                    only_users=self._valid_subset if role == "valid" else self._test_subset,
                )
                _flatten(out, prefix, mode, result)
        return out

    def metric_names(self) -> list[str]:
        """Every key a validation call returns (what a trainer may monitor), known before any
        model is trained."""
        per_mode = [name for k in self.ks for name in (f"HR@{k}", f"NDCG@{k}")] + ["MRR"]
        retrieved = [f"recall@{RETRIEVED_K}", *per_mode, *(f"within/HR@{k}" for k in self.ks)]
        domains = self.prepared.dataset.domains
        scopes = [""] + ([f"{d}/" for d in domains] if len(domains) > 1 else [])
        modes = self.modes if self.valid_modes is None else self.valid_modes
        names = [
            f"{m}/{s}{name}"
            for m in modes
            for s in scopes
            for name in (retrieved if m == "retrieved-20" else per_mode)
        ]
        cold = self.cold_start and self.valid_modes is None
        if not cold:
            return names
        return names + [f"cold/{n}" for n in names if not n.startswith("retrieved-")]


def _flatten(out: dict[str, float], prefix: str, mode: str, result: dict[str, Any]) -> None:
    """Add one evaluation's metrics to ``out`` under ``{prefix}{mode}/[{domain}/]{name}``."""
    out.update({f"{prefix}{mode}/{k}": float(v) for k, v in result["metrics"].items()})
    for domain, metrics in result["domains"].items():
        out.update({f"{prefix}{mode}/{domain}/{k}": float(v) for k, v in metrics.items()})


@dataclass
class ClickEvaluator:
    """Global AUC and LogLoss over held-out exposures (the MRFF protocol), keys "AUC", "LogLoss".

    The model must offer ``predict(role) -> (probabilities, labels)``
    (:class:`fedllmrec.models.click.ClickRecommender`, or a federation wrapping one).
    """

    prepared: Prepared

    def __call__(self, model: Scorer, role: str) -> dict[str, float]:
        predict = getattr(model, "predict", None)
        if predict is None:
            raise FedLLMRecError(f"{type(model).__name__} does not predict clicks")
        probs, labels = predict(role)
        metrics = click_metrics(labels, probs)
        if "AUC" not in metrics:
            raise FedLLMRecError(f"{role}: click AUC needs both clicked and unclicked exposures")
        return {"AUC": metrics["AUC"], "LogLoss": metrics["LogLoss"]}

    def metric_names(self) -> list[str]:
        return ["AUC", "LogLoss"]


EvaluatorFactory = Callable[..., Evaluator]

# kind -> factory called as ``factory(prepared, **options)``; options come from a recipe's [eval].
EVALUATORS: dict[str, EvaluatorFactory] = {"ranking": RankingEvaluator, "click": ClickEvaluator}


def build_evaluator(kind: str, prepared: Prepared, **options: Any) -> Evaluator:
    """The evaluator registered as ``kind``, bound to ``prepared``."""
    factory = EVALUATORS.get(kind)
    if factory is None:
        raise FedLLMRecError(f"unknown evaluator {kind!r}; known: {', '.join(EVALUATORS)}")
    return factory(prepared, **options)
