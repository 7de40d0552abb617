"""The centralized trainer: epochs, validation, early stopping, checkpoints and resume.

A run writes into one folder::

    last.pt       model state + trainer state after the latest evaluation (resume point)
    best.pt       model state at the best validation so far
    metrics.json  best epoch, its validation and test metrics, per-epoch history, config
    curve.png     train loss and the monitored validation metric against epochs

Running again into a folder that holds ``last.pt`` resumes from it, and reaches
exactly the metrics an uninterrupted run would: the model's state dict carries
its optimiser and RNG states, and evaluations happen on a fixed epoch grid.

Checkpoints are ``torch.save`` zip archives whose zip comment holds the SHA-256 of
everything before it (:func:`save_checkpoint`); :func:`load_checkpoint` checks it,
so a damaged file is refused instead of resuming or testing wrong weights.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import hashlib
import io
import json
import math
import os
import platform
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol, Self, runtime_checkable

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fedllmrec.data.prepare import Prepared
from fedllmrec.data.split import Split, UserItemSet
from fedllmrec.errors import FedLLMRecError, check_option
from fedllmrec.eval.evaluators import LOWER_IS_BETTER, Evaluator
from fedllmrec.io import atomic_path, atomic_write_bytes, atomic_write_json
from fedllmrec.models.base import Recommender, Scorer
from fedllmrec.models.prior import PopularityPrior, log_counts

LAST, BEST, METRICS, CURVE = "last.pt", "best.pt", "metrics.json", "curve.png"

# Keys of the run record that may change between an interrupted run and its resumption:
# the epoch budget, where raw data lives, and how the recipe was spelled (file, --set list).
RESUMABLE_CHANGES: tuple[str, ...] = (
    "trainer.max_epochs",
    "trainer.prior_weights",  # chosen after training: a finished run can try other weights
    "data.data_dir",
    "recipe",
    "overrides",
)


@runtime_checkable
class Trainable(Protocol):
    """A model trained epoch by epoch; the contract :class:`Trainer` relies on.

    ``state_dict`` must hold everything needed to continue bit-for-bit (weights,
    optimiser, RNG states, ``losses``), as tensors and plain Python containers
    and scalars: checkpoints are read back with ``torch.load(weights_only=True)``
    (by :func:`load_checkpoint`, after their digest is checked).
    """

    @property
    def losses(self) -> list[float]:
        """Each epoch's training loss so far."""
        ...

    def setup(self, split: Split) -> Self:
        """Build a fresh, seeded model, optimiser and training data; no training."""
        ...

    def train_epoch(self) -> float:
        """Train one epoch; return its mean loss."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def score(self, users: np.ndarray, items: np.ndarray, history: UserItemSet) -> np.ndarray: ...


@dataclass
class TrainerConfig:
    """How long to train, when to evaluate, what to select on.

    Parameters
    ----------
    max_epochs : int
        Upper bound on training epochs.
    eval_every : int
        Validate after epochs ``eval_every``, ``2 * eval_every``, ...; only those
        epochs can be selected as best.
    patience : int
        Stop after this many evaluations in a row without improvement (0: never).
    monitor : str
        Validation metric key that selects the best epoch, e.g. ``"full/NDCG@10"``.
    mode : {"max", "min"}, optional
        Whether larger monitor values are better; default "min" for loss-like
        metrics (:data:`LOWER_IS_BETTER`), else "max".
    seed : int
        Seeds Python, numpy and torch before the model is set up.
    checkpoint : bool
        Write ``last.pt`` / ``best.pt`` and resume from ``last.pt``.
    prior_weights : sequence of float
        Weights of a popularity prior added to the best model's scores
        (:class:`fedllmrec.models.prior.PopularityPrior`), each tried on validation after
        training; the best by ``monitor`` is tested (weight 0, the model alone, is always
        tried). Empty: no prior.
    """

    max_epochs: int = 200
    eval_every: int = 1
    patience: int = 5
    monitor: str = "full/NDCG@10"
    mode: Literal["max", "min"] | None = None
    seed: int = 0
    checkpoint: bool = True
    prior_weights: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        check = partial(check_option, "TrainerConfig")
        check(
            "prior_weights",
            all(math.isfinite(w) and w >= 0 for w in self.prior_weights),
            "finite and >= 0",
            self.prior_weights,
        )
        check("max_epochs", self.max_epochs >= 0, ">= 0", self.max_epochs)
        check("eval_every", self.eval_every >= 1, ">= 1", self.eval_every)
        check("patience", self.patience >= 0, ">= 0", self.patience)
        check("mode", self.mode in (None, "max", "min"), "'max' or 'min'", self.mode)

    @property
    def direction(self) -> Literal["max", "min"]:
        """``mode``, or the one implied by the monitored metric's name."""
        if self.mode is not None:
            return self.mode
        return "min" if self.monitor.rsplit("/", 1)[-1] in LOWER_IS_BETTER else "max"


@dataclass
class _State:
    """The trainer's side of a checkpoint; plain data so it pickles as weights-only."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_value: float | None = None
    best_valid: dict[str, float] = field(default_factory=dict)
    bad_evals: int = 0
    train_seconds: float = 0.0
    early_stopped: bool = False
    budget_stopped: bool = False  # a DP run stopped before its privacy budget ran out


class Trainer:
    """Trains a :class:`Trainable` with validation-based selection and early stopping.

    Models with only ``fit`` / ``score`` (popularity, item-kNN) are fitted once
    and evaluated once; their metrics report epoch 0.

    Parameters
    ----------
    config : TrainerConfig, optional
        Epochs, evaluation schedule and selection.
    quiet : bool
        No progress bar and no per-evaluation lines.
    console : rich.console.Console, optional
        Where progress goes (default: a new stderr console).
    """

    def __init__(
        self,
        config: TrainerConfig | None = None,
        *,
        quiet: bool = False,
        console: Console | None = None,
    ) -> None:
        self.config = config or TrainerConfig()
        self.quiet = quiet
        self.console = console or Console(stderr=True)
        self.unit = "epoch"  # what one train_epoch() is called in logs and plots

    def run(
        self,
        model: Trainable | Recommender,
        prepared: Prepared,
        evaluator: Evaluator,
        out_dir: str | Path,
        *,
        record: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Train, select on validation, score the best model on test; resume if possible.

        Parameters
        ----------
        model : Trainable or Recommender
            A model to train (its ``setup`` builds it afresh) or to ``fit`` once.
        prepared : Prepared
            The split and saved candidates.
        evaluator : Evaluator
            Returns flat metrics holding ``config.monitor`` for a role.
        out_dir : path
            Folder of checkpoints and results; a ``last.pt`` in it is resumed.
        record : mapping, optional
            The full configuration of the run (e.g. the recipe), stored in
            ``metrics.json`` and checked on resume; default the trainer config.

        Returns
        -------
        dict
            What ``metrics.json`` holds.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        # JSON round trip: the record compares equal after a checkpoint round trip (tuples).
        run_record = json.loads(json.dumps(dict(record or {"trainer": asdict(self.config)})))
        _seed_everything(self.config.seed)
        if not isinstance(model, Trainable):
            return self._fit_once(model, prepared, evaluator, out, run_record)
        self._check_monitor(evaluator)
        model.setup(prepared.split)
        state = _State()
        if self.config.checkpoint and (out / LAST).is_file():
            ckpt = load_checkpoint(out / LAST)
            _check_same_run(out / LAST, ckpt["config"], run_record)
            model.load_state_dict(ckpt["model"])
            state = _State(**ckpt["trainer"])
            if state.best_value is not None:
                # Fail now, not after the remaining epochs, if the best model is unreadable.
                _verified_bytes(out / BEST)
        best_in_memory: dict[str, Any] | None = None

        # A federated model trains by rounds: its logs say "round" (metrics.json keeps "epoch").
        self.unit = str(getattr(model, "unit", "epoch"))
        with self._progress() as progress:
            task = progress.add_task(
                "train", total=self.config.max_epochs, completed=state.epoch, status=""
            )
            # A model may have a budget of its own (a DP run's epsilon): it says when it is spent.
            budget_spent = getattr(model, "budget_spent", lambda: False)
            while state.epoch < self.config.max_epochs and not state.early_stopped:
                if budget_spent():
                    state.budget_stopped = True
                    break
                start = time.perf_counter()
                loss = float(model.train_epoch())
                state.train_seconds += time.perf_counter() - start
                state.epoch += 1
                if not math.isfinite(loss):
                    raise FedLLMRecError(
                        f"training diverged: loss {loss} at {self.unit} {state.epoch}"
                    )
                row: dict[str, Any] = {
                    "epoch": state.epoch,
                    "loss": loss,
                    "train_seconds": round(state.train_seconds, 3),
                    # e.g. a federated round's participants, dropouts and traffic
                    **getattr(model, "epoch_info", dict)(),
                }
                if state.epoch % self.config.eval_every == 0:
                    valid = evaluator(model, "valid")
                    row.update(valid)
                    value = self._monitored(valid)
                    if self._improves(value, state.best_value):
                        state.best_epoch, state.best_value, state.best_valid = (
                            state.epoch,
                            value,
                            valid,
                        )
                        state.bad_evals = 0
                        if self.config.checkpoint:
                            save_checkpoint(
                                out / BEST, {"model": model.state_dict(), "epoch": state.epoch}
                            )
                        else:
                            # state_dict() shares storage with the live weights: copy it.
                            best_in_memory = copy.deepcopy(model.state_dict())
                    else:
                        state.bad_evals += 1
                        state.early_stopped = 0 < self.config.patience <= state.bad_evals
                    state.history.append(row)
                    self._save_last(out, model, state, run_record)
                    self._log_evaluation(progress, row, state)
                else:
                    state.history.append(row)
                progress.update(task, completed=state.epoch, status=self._status(row, state))
        # Off-grid final epochs were trained after the last save; keep them resumable too.
        self._save_last(out, model, state, run_record)
        # Whole-run totals (e.g. federated traffic), before the best state replaces the last.
        run_info: dict[str, Any] = getattr(model, "run_info", dict)()

        if state.best_value is None:
            # No evaluation fell inside max_epochs: the final model is all there is.
            state.best_valid = evaluator(model, "valid")
            state.best_epoch = state.epoch
        elif self.config.checkpoint:
            model.load_state_dict(load_checkpoint(out / BEST)["model"])
        elif best_in_memory is not None:
            model.load_state_dict(best_in_memory)
        tested, prior = self._with_prior(model, prepared, evaluator, state)
        test = evaluator(tested, "test")
        return self._finish(out, state, test, run_record, {**run_info, **prior})

    # ------------------------------------------------------------------ helpers

    def _fit_once(
        self,
        model: Recommender,
        prepared: Prepared,
        evaluator: Evaluator,
        out: Path,
        run_record: dict[str, Any],
    ) -> dict[str, Any]:
        """Models without epochs: one ``fit``, one validation, one test."""
        start = time.perf_counter()
        model.fit(prepared.split)
        seconds = time.perf_counter() - start
        valid = evaluator(model, "valid")
        self._monitored(valid)  # fail loudly on a monitor typo here too
        state = _State(
            history=[{"epoch": 0, "loss": None, "train_seconds": round(seconds, 3), **valid}],
            best_valid=valid,
            train_seconds=seconds,
        )
        tested, prior = self._with_prior(model, prepared, evaluator, state)
        return self._finish(out, state, evaluator(tested, "test"), run_record, prior)

    def _with_prior(
        self, model: Scorer, prepared: Prepared, evaluator: Evaluator, state: _State
    ) -> tuple[Scorer, dict[str, Any]]:
        """The best model with the popularity prior whose weight validates best, and the
        ``metrics.json`` entry saying what was tried; ``state.best_valid`` becomes that
        choice's validation. No ``prior_weights``: the model and no entry."""
        if not self.config.prior_weights:
            return model, {}
        start = time.perf_counter()
        chosen: Scorer = model
        weight, valid = 0.0, state.best_valid  # weight 0 is the model alone, validated already
        tried = {0.0: self._monitored(valid)}
        prior = log_counts(prepared.split)  # counted once for every weight
        for w in sorted(set(self.config.prior_weights) - {0.0}):
            candidate = PopularityPrior(model, w, prior)
            metrics = evaluator(candidate, "valid")
            tried[w] = self._monitored(metrics)
            if self._improves(tried[w], self._monitored(valid)):  # ties keep the smaller weight
                chosen, weight, valid = candidate, w, metrics
        state.best_valid = valid
        entry = {
            "weight": weight,
            "valid": {str(w): v for w, v in sorted(tried.items())},
            "seconds": round(time.perf_counter() - start, 3),  # the validations it took
        }
        return chosen, {"prior": entry}

    def _finish(
        self,
        out: Path,
        state: _State,
        test: dict[str, float],
        run_record: dict[str, Any],
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write metrics.json (``extra``: model-specific totals, e.g. traffic) and curve.png."""
        metrics: dict[str, Any] = {
            "best_epoch": state.best_epoch,
            "stopped_epoch": state.epoch,
            "early_stopped": state.early_stopped,
            "budget_stopped": state.budget_stopped,
            "monitor": self.config.monitor,
            "mode": self.config.direction,
            "valid": state.best_valid,
            "test": test,
            "history": state.history,
            "train_seconds": round(state.train_seconds, 3),
            **(extra or {}),
            "config": run_record,
            "machine": machine(),
            "date": dt.datetime.now().isoformat(timespec="seconds"),
        }
        atomic_write_json(out / METRICS, metrics)
        plot_curve(out / CURVE, state.history, self.config.monitor, state.best_epoch, self.unit)
        return metrics

    def _monitored(self, metrics: Mapping[str, float]) -> float:
        if self.config.monitor not in metrics:
            raise FedLLMRecError(
                f"monitor {self.config.monitor!r} is not a validation metric; "
                f"available: {', '.join(metrics)}"
            )
        return float(metrics[self.config.monitor])

    def _check_monitor(self, evaluator: Evaluator) -> None:
        # Evaluators that know their keys up front let a typo fail before any training.
        names = getattr(evaluator, "metric_names", None)
        if callable(names):
            self._monitored(dict.fromkeys(names(), 0.0))

    def _improves(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value > best if self.config.direction == "max" else value < best

    def _save_last(
        self, out: Path, model: Trainable, state: _State, record: dict[str, Any]
    ) -> None:
        if self.config.checkpoint:
            save_checkpoint(
                out / LAST,
                {"model": model.state_dict(), "trainer": asdict(state), "config": record},
            )

    @contextlib.contextmanager
    def _progress(self) -> Iterator[Progress]:
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=self.quiet,
        )
        with progress:
            yield progress

    def _status(self, row: Mapping[str, Any], state: _State) -> str:
        status = f"loss {row['loss']:.4f}"
        if state.best_value is not None:
            status += f"  best {self.config.monitor} {state.best_value:.4f} @ {state.best_epoch}"
        return status

    def _log_evaluation(self, progress: Progress, row: Mapping[str, Any], state: _State) -> None:
        if self.quiet:
            return
        mark = "  [green]best[/]" if state.best_epoch == row["epoch"] else ""
        stop = "  [yellow]early stop[/]" if state.early_stopped else ""
        progress.console.print(
            f"{self.unit} {row['epoch']:>4}  loss {row['loss']:.4f}  "
            f"{self.config.monitor} {row[self.config.monitor]:.4f}{mark}{stop}"
        )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# The zip comment of a checkpoint: this prefix, then the hex SHA-256 of the bytes before it.
_DIGEST_PREFIX = b"fedllmrec-sha256:"
_DIGEST_LEN = len(_DIGEST_PREFIX) + 64
# The zip end-of-central-directory record: 22 bytes, ending in the comment's length.
_EOCD_SIGNATURE, _EOCD_LEN = b"PK\x05\x06", 22


def save_checkpoint(path: str | Path, obj: dict[str, Any]) -> None:
    """Write ``obj`` with ``torch.save``, its SHA-256 in the zip comment, atomically.

    The file stays a plain zip archive that ``torch.load`` reads as is; the digest
    covers every byte before it, comment length included.

    Parameters
    ----------
    path : path
        Target file, replaced whole: a crash leaves the old file or the new one.
    obj : dict
        Tensors and plain Python containers and scalars (read back weights-only).
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    body = bytearray(buffer.getbuffer())
    eocd = body[-_EOCD_LEN:]
    if eocd[:4] != _EOCD_SIGNATURE or eocd[-2:] != b"\0\0":
        raise FedLLMRecError(f"{path}: torch.save wrote no bare zip end record; cannot sign it")
    body[-2:] = _DIGEST_LEN.to_bytes(2, "little")
    comment = _DIGEST_PREFIX + hashlib.sha256(body).hexdigest().encode("ascii")
    body += comment
    # Digest and data land in one file with one rename (fsynced before it): no window
    # where they disagree, and a power cut cannot leave a renamed empty file.
    atomic_write_bytes(path, bytes(body))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, checking its SHA-256 first.

    Parameters
    ----------
    path : path
        A ``last.pt`` or ``best.pt``.

    Returns
    -------
    dict
        The saved object, tensors on the CPU.

    Raises
    ------
    FedLLMRecError
        One line naming ``path``: unreadable, without a digest (damaged, or written
        before checkpoints carried one), digest mismatch, or not a weights-only pickle.
    """
    path = Path(path)
    data = _verified_bytes(path)
    try:
        obj: dict[str, Any] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:
        reason = " ".join(str(err).split())  # torch's messages span lines; keep the error one line
        raise FedLLMRecError(f"{path}: cannot read checkpoint ({reason})") from err
    return obj


def _verified_bytes(path: Path) -> bytes:
    """The bytes of checkpoint ``path`` once its digest matches; else a one-line error."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise FedLLMRecError(f"{path}: cannot read checkpoint ({err.strerror or err})") from err
    body, comment = data[:-_DIGEST_LEN], data[-_DIGEST_LEN:]
    if len(data) < _EOCD_LEN + _DIGEST_LEN or not comment.startswith(_DIGEST_PREFIX):
        # A damaged comment and an unsigned file look alike: neither is trusted.
        raise FedLLMRecError(
            f"{path}: checkpoint carries no fedllmrec digest (damaged, or written before "
            "checkpoints were signed); use another output folder or delete this one to start over"
        )
    expected = comment[len(_DIGEST_PREFIX) :].decode("ascii", errors="replace")
    actual = hashlib.sha256(body).hexdigest()
    if actual != expected:
        raise FedLLMRecError(
            f"{path}: checkpoint is damaged (sha256 {actual[:12]}..., recorded "
            f"{expected[:12]}...); use another output folder or delete this one to start over"
        )
    return data


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_same_run(path: Path, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Refuse to resume a checkpoint of a differently configured run."""
    before, after = _flatten(old), _flatten(new)
    for key in sorted(before.keys() | after.keys()):
        if key not in RESUMABLE_CHANGES and before.get(key) != after.get(key):
            raise FedLLMRecError(
                f"{path}: holds a run with {key} = {before.get(key)!r}, this one has "
                f"{after.get(key)!r}; use another output folder or delete it to start over"
            )


def plot_curve(
    path: str | Path,
    history: list[dict[str, Any]],
    monitor: str,
    best: int,
    unit: str = "epoch",
) -> None:
    """Write train loss and validation ``monitor`` against epochs as a PNG, atomically."""
    # The object-oriented API needs no pyplot and no global backend switch.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    losses = [(r["epoch"], r["loss"]) for r in history if r.get("loss") is not None]
    if losses:
        ax.plot(*zip(*losses, strict=True), color="tab:blue", label="train loss")
    ax.set_xlabel(unit)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("train loss", color="tab:blue")
    metric = ax.twinx()
    evals = [(r["epoch"], r[monitor]) for r in history if monitor in r]
    if evals:
        metric.plot(*zip(*evals, strict=True), "o-", color="tab:orange")
    metric.set_ylabel(f"valid {monitor}", color="tab:orange")
    metric.axvline(best, linestyle="--", color="grey", linewidth=1)
    ax.set_title(f"best {unit} {best}")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def machine() -> str:
    """CPU model, usable cores, Python and torch versions, for the record."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cpu}, {cores} cores, {torch.get_num_threads()} torch threads, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )
