"""Recipes: one TOML file says what to train on what data, how, and how to evaluate it.

::

    [data]                  # DataRecipe; [data.split] holds SplitConfig fields
    name = "ml-100k"

    [model]                 # kind picks a MODEL_BUILDERS entry; other keys are its options
    kind = "sequential"
    architecture = "sasrec"
    dim = 64
    [model.train]           # SequentialTrainConfig
    lr = 1e-3

    [trainer]               # TrainerConfig
    max_epochs = 200
    monitor = "full/NDCG@10"

    [eval]                  # kind picks an EVALUATORS entry; other keys are its options
    kind = "ranking"

Every key is checked against the dataclass (or signature) it feeds, so a typo
fails at load time with the file and the dotted key, not after an hour of
training. ``key=value`` overrides (``model.dim=32``) are applied before the check.

A recipe may name another as its ``base = "other.toml"`` (top level, relative to its
file): the base is read first and the recipe's tables are merged over it key by key,
so a variant states only what it changes.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import tomllib
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import torch
from rich.console import Console

from fedllmrec.data.prepare import SAMPLED_NEGATIVES, Prepared, prepare
from fedllmrec.data.split import SplitConfig
from fedllmrec.errors import FedLLMRecError, OptionError, RecipeError
from fedllmrec.eval.evaluators import EVALUATORS, Evaluator
from fedllmrec.federated.adapters import FederatedLLM
from fedllmrec.federated.config import FederationConfig
from fedllmrec.federated.server import FederationServer
from fedllmrec.federated.simulator import FederatedRecommender
from fedllmrec.models.base import Recommender
from fedllmrec.models.baselines import ItemKNN, ItemKNNConfig, Popularity, PopularityConfig
from fedllmrec.models.click import ClickRecommender
from fedllmrec.models.fkd import FKDRecommender
from fedllmrec.models.llm.recommender import LLMRecConfig, LLMRecommender
from fedllmrec.models.llm.soft import SoftSource
from fedllmrec.models.llm.tuned import TunedLLMRecommender
from fedllmrec.models.prior import PopularityPrior
from fedllmrec.models.sequential import SequentialRecommender
from fedllmrec.train.trainer import (
    BEST,
    METRICS,
    Trainable,
    Trainer,
    TrainerConfig,
    load_checkpoint,
)

Model = Trainable | Recommender | PopularityPrior


@dataclass
class DataRecipe:
    """Which data, prepared how (see :func:`fedllmrec.data.prepare.prepare`).

    Parameters
    ----------
    name : str
        Dataset name (``ml-100k``, ``kuaisar-r``, ``art-office``) or a generic-format folder.
    data_dir : str, optional
        Raw data folder searched first (relative to the working directory).
    seed : int
        Seed of the saved evaluation candidates.
    split : SplitConfig
        Filtering and split options.
    negatives : int
        Sampled negatives per held-out interaction (0: none, full-ranking evaluation only).
    """

    name: str
    data_dir: str | None = None
    seed: int = 0
    split: SplitConfig = field(default_factory=SplitConfig)
    negatives: int = SAMPLED_NEGATIVES


@dataclass(frozen=True)
class ModelBuilder:
    """How one ``[model] kind`` is checked and built.

    Parameters
    ----------
    options : type
        Dataclass whose fields are the keys the ``[model]`` table may hold
        (dataclass-typed fields are nested tables, e.g. ``[model.train]``).
    build : callable
        ``build(options_instance, prepared) -> model``.
    exclude : frozenset of str
        Dotted fields of ``options`` that are state, not options.
    seed_key : str, optional
        Dotted option that defaults to ``trainer.seed`` when the recipe leaves it out,
        so one seed controls the run.
    """

    options: type
    build: Callable[[Any, Prepared], Model]
    exclude: frozenset[str] = frozenset()
    seed_key: str | None = None

    def parse(self, section: Mapping[str, Any], where: str = "model") -> Any:
        """The options instance for ``section``; a bad key raises :class:`FedLLMRecError`."""
        return _instantiate(self.options, section, where, self.exclude)

    def record(self, section: Mapping[str, Any]) -> dict[str, Any]:
        """Every option with its effective value (defaults filled in), as plain data."""
        options = _parse(self.options, section, "model", self.exclude)
        return _record(self.options, options, self.exclude)

    def __call__(self, section: Mapping[str, Any], prepared: Prepared) -> Model:
        return self.build(self.parse(section), prepared)


def _sequential(options: SequentialRecommender, prepared: Prepared) -> Model:
    return options  # the options dataclass is the model; setup() builds the network


def _llm(options: LLMRecConfig, prepared: Prepared) -> Model:
    source: Callable[[], SoftSource] | None = None
    if options.source is not None:
        run = options.source

        def source() -> SoftSource:  # loaded by the model's fit(): building reads no run
            trained: object = load_trained(run, prepared)
            if isinstance(trained, PopularityPrior):  # soft tokens read states, not scores
                trained = trained.model
            inner = trained.recommender if isinstance(trained, FederatedRecommender) else trained
            if not isinstance(inner, SoftSource):
                raise FedLLMRecError(
                    f"model.source: {run} holds a {type(inner).__name__}, which gives no user "
                    "states and item vectors for soft tokens (train an FKD recipe)"
                )
            return inner

    if options.mode == "zeroshot":
        return LLMRecommender(options, source)
    return TunedLLMRecommender(options, source)


# kind -> builder; other kinds (click models, ...) register here. MRFF is kind "sequential"
# with architecture "mrff": the checks follow SequentialRecommender's fields and types.
MODEL_BUILDERS: dict[str, ModelBuilder] = {
    "sequential": ModelBuilder(
        SequentialRecommender,
        _sequential,
        # State and data, not options (text vectors come from the embedding cache);
        # the trainer's max_epochs replaces train.epochs.
        exclude=frozenset({"model", "split", "losses", "text_embeddings", "train.epochs"}),
        seed_key="train.seed",
    ),
    "click": ModelBuilder(
        ClickRecommender,
        _sequential,
        exclude=frozenset({"model", "split", "losses", "text_embeddings", "train.epochs", "head"}),
        seed_key="train.seed",
    ),
    # Cross-domain FKD: a shared-semantics teacher and per-domain ID students.
    "fkd": ModelBuilder(
        FKDRecommender,
        _sequential,
        exclude=frozenset(
            {"model", "split", "losses", "text_embeddings", "train.epochs", "semantics"}
        ),
        seed_key="train.seed",
    ),
    "popularity": ModelBuilder(PopularityConfig, lambda options, _: Popularity(options)),
    "itemknn": ModelBuilder(ItemKNNConfig, lambda options, _: ItemKNN(options)),
    # SmolLM2 ranking titles by likelihood: zero-shot, LoRA, soft tokens (models/llm/).
    "llm": ModelBuilder(LLMRecConfig, _llm, seed_key="train.seed"),
}

SECTIONS = ("data", "model", "federated", "trainer", "eval", "description")


@dataclass
class Recipe:
    """A loaded, checked recipe. ``model_options`` / ``eval_options`` exclude ``kind``."""

    path: Path
    data: DataRecipe
    model_kind: str
    model_options: dict[str, Any]
    trainer: TrainerConfig
    eval_kind: str = "ranking"
    eval_options: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    overrides: list[str] = field(default_factory=list)
    federated: FederationConfig | None = None  # set: train by federated rounds

    @property
    def name(self) -> str:
        return self.path.stem

    def reading(self, data_dir: str | Path | None) -> Recipe:
        """This recipe with its data read from ``data_dir`` (``None``: unchanged)."""
        if data_dir is None:
            return self
        return dataclasses.replace(
            self, data=dataclasses.replace(self.data, data_dir=str(data_dir))
        )

    def prepare(self) -> Prepared:
        """Split the dataset and draw its candidates, or reuse the cached copy."""
        data = self.data
        return prepare(
            data.name,
            data_dir=data.data_dir,
            config=data.split,
            seed=data.seed,
            n_negatives=data.negatives,
        )

    def build_model(self, prepared: Prepared) -> Model:
        model = MODEL_BUILDERS[self.model_kind](self.model_options, prepared)
        if self.federated is None:
            return model
        if isinstance(model, TunedLLMRecommender):
            return FederatedLLM(model, self.federated)
        if not isinstance(model, SequentialRecommender):
            raise RecipeError(
                self.path, "only sequential, click and trained LLM models train federated"
            )
        return FederatedRecommender(model, self.federated)

    def build_federation(self, prepared: Prepared | None = None) -> FederationServer:
        """The seeded federation, set up on the prepared split (the Flower app's model):
        a :class:`FederatedRecommender`, or a :class:`FederatedLLM` for a trained LLM.

        A recipe without a ``[federated]`` table trains with :class:`FederationConfig`
        defaults, seeded by ``trainer.seed`` as the recipe loader would.
        """
        prepared = prepared if prepared is not None else self.prepare()
        model = self.build_model(prepared)
        if isinstance(model, SequentialRecommender):
            model = FederatedRecommender(model, FederationConfig(seed=self.trainer.seed))
        if not isinstance(model, FederatedRecommender | FederatedLLM):
            raise RecipeError(self.path, f"model kind {self.model_kind!r} cannot train federated")
        return model.setup(prepared.split)

    def build_evaluator(self, prepared: Prepared) -> Evaluator:
        factory = EVALUATORS[self.eval_kind]
        options = _parse(factory, self.eval_options, "eval", _first_parameter(factory))
        return factory(prepared, **options)

    def record(self) -> dict[str, Any]:
        """The effective configuration, every default filled in, as JSON-able data."""
        factory = EVALUATORS[self.eval_kind]
        skip = _first_parameter(factory)
        eval_options = _parse(factory, self.eval_options, "eval", skip)
        return {
            "recipe": str(self.path),
            "overrides": list(self.overrides),
            "data": _jsonable(self.data),
            "model": {
                "kind": self.model_kind,
                **MODEL_BUILDERS[self.model_kind].record(self.model_options),
            },
            **({"federated": _jsonable(self.federated)} if self.federated else {}),
            "trainer": _jsonable(self.trainer),
            "eval": {"kind": self.eval_kind, **_record(factory, eval_options, skip)},
        }


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    """Read a recipe TOML file, apply ``key=value`` overrides and check every key.

    Parameters
    ----------
    path : path
        The TOML file.
    overrides : iterable of str
        ``section.key=value`` with a dotted key (``model.train.lr=3e-4``); the
        value is read as a TOML scalar or array, else taken as a bare string.

    Raises
    ------
    RecipeError
        On a missing or malformed file, a malformed override, an unknown key or
        a bad value; the message names the file and the dotted key.
    """
    path = Path(path)
    overrides = list(overrides)
    raw = _read_raw(path, ())
    overridden: list[str] = []
    try:
        for text in overrides:
            overridden.append(_apply_override(raw, text))
        return _from_raw(path, raw, overrides)
    except _Bad as bad:
        origin = " (from --set)" if any(_related(bad.key, k) for k in overridden) else ""
        raise RecipeError(path, bad.problem + origin, key=bad.key) from None


def run_recipe(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    quiet: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Prepare the data, build model and evaluator, train; returns ``metrics.json``'s content."""
    recipe = recipe.reading(data_dir)
    prepared = recipe.prepare()
    trainer = Trainer(recipe.trainer, quiet=quiet, console=console)
    return trainer.run(
        recipe.build_model(prepared),
        prepared,
        recipe.build_evaluator(prepared),
        out_dir,
        record=recipe.record(),
    )


def load_trained(run_dir: str | Path, prepared: Prepared | None = None) -> Model:
    """The best model of a finished ``fedllmrec train`` run; see :func:`load_run`."""
    return load_run(run_dir, prepared)[0]


def load_run(
    run_dir: str | Path, prepared: Prepared | None = None, *, data_dir: str | Path | None = None
) -> tuple[Model, Prepared]:
    """The best model of a finished ``fedllmrec train`` run and its data, rebuilt from its recipe.

    The run's ``metrics.json`` names the recipe and its overrides; the model is built and
    set up on ``prepared`` (default: the recipe's own data, read from ``data_dir`` when the
    run was trained with ``--data-dir``), which must be the data it was trained on, and its
    ``best.pt`` is loaded. A model with no trained state (popularity,
    item-kNN, the zero-shot LLM) is fitted again: its fit is deterministic and is all its
    training was. A run that chose a popularity prior (``trainer.prior_weights``) returns
    the model inside its :class:`~fedllmrec.models.prior.PopularityPrior`, as it was tested.
    """
    run = Path(run_dir)
    if not (run / METRICS).is_file():
        raise FedLLMRecError(f"{run}: not a finished run (no {METRICS})")
    metrics = json.loads((run / METRICS).read_text())
    config = metrics["config"]
    recipe = load_recipe(config["recipe"], config.get("overrides", [])).reading(data_dir)
    own = recipe.prepare()
    if prepared is not None and own.folder != prepared.folder:
        raise FedLLMRecError(
            f"{run}: trained on prepared data {own.folder.name}, not {prepared.folder.name}"
        )
    prepared = prepared or own
    model = recipe.build_model(prepared)
    if not isinstance(model, Trainable):
        model = model.fit(prepared.split)
    else:
        if not (run / BEST).is_file():
            raise FedLLMRecError(f"{run}: not a finished run (no {BEST})")
        # Set up as the trainer did (seeded); loading restores RNG states the caller must keep.
        with torch.random.fork_rng():
            torch.manual_seed(recipe.trainer.seed)
            model.setup(prepared.split)
            model.load_state_dict(load_checkpoint(run / BEST)["model"])
    weight = float(metrics.get("prior", {}).get("weight", 0.0))
    if weight:
        return PopularityPrior(model, weight).fit(prepared.split), prepared
    return model, prepared


# ---------------------------------------------------------------- parsing


def recipe_files(path: Path) -> tuple[Path, ...]:
    """The recipe file ``path`` and its ``base`` chain, top first (what a copy needs)."""
    files = [path.resolve()]
    while True:
        try:
            base = tomllib.loads(files[-1].read_text(encoding="utf-8")).get("base")
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise RecipeError(files[-1], f"cannot read: {err}") from err
        if not isinstance(base, str):
            return tuple(files)
        base_path = (files[-1].parent / base).resolve()
        if base_path in files:
            raise RecipeError(files[-1], f"{base!r} is already in its own base chain", key="base")
        files.append(base_path)


def _read_raw(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """A recipe file's tables; a top-level ``base = "other.toml"`` (relative to the file)
    is read first and this file's keys are merged over it, table by table."""
    if not path.is_file():
        raise RecipeError(path, "recipe file not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise RecipeError(path, f"not valid TOML: {err}") from err
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise RecipeError(path, f"must be a recipe file name, got {base!r}", key="base")
    base_path = (path.parent / base).resolve()
    if base_path in (*chain, path.resolve()):
        raise RecipeError(path, f"{base!r} is already in its own base chain", key="base")
    return _merged(_read_raw(base_path, (*chain, path.resolve())), raw)


def _merged(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: tables merge key by key, any other value replaces."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


class _Bad(FedLLMRecError):
    """A problem at one dotted key; :func:`load_recipe` adds the file name."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


def _related(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _apply_override(raw: dict[str, Any], text: str) -> str:
    key, sep, value_text = text.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not sep or not key or any(not p.strip() for p in parts):
        raise _Bad(key or text, f"override {text!r} is not key=value, e.g. model.dim=32")
    try:
        value = tomllib.loads(f"v = {value_text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text.strip()  # bare words (architecture=gru4rec) need no quotes
    table = raw
    for depth, part in enumerate(parts[:-1]):
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            raise _Bad(".".join(parts[: depth + 1]), "is a value, not a table")
    table[parts[-1]] = value
    return key


def _from_raw(path: Path, raw: dict[str, Any], overrides: list[str]) -> Recipe:
    for key in raw:
        if key not in SECTIONS:
            raise _Bad(key, f"unknown section; expected one of: {', '.join(SECTIONS)}")
    data = _instantiate(DataRecipe, _table(raw, "data", required=True), "data")
    trainer = _instantiate(TrainerConfig, _table(raw, "trainer"), "trainer")

    model = dict(_table(raw, "model", required=True))
    kind = model.pop("kind", None)
    if kind not in MODEL_BUILDERS:
        problem = "missing" if kind is None else f"unknown model kind {kind!r}"
        raise _Bad("model.kind", f"{problem}; known: {', '.join(MODEL_BUILDERS)}")
    builder = MODEL_BUILDERS[kind]
    if builder.seed_key is not None:
        _set_default(model, builder.seed_key, trainer.seed)
    builder.parse(model)

    evaluation = dict(_table(raw, "eval"))
    eval_kind = evaluation.pop("kind", "ranking")
    if eval_kind not in EVALUATORS:
        raise _Bad("eval.kind", f"unknown evaluator {eval_kind!r}; known: {', '.join(EVALUATORS)}")
    factory = EVALUATORS[eval_kind]
    _parse(factory, evaluation, "eval", _first_parameter(factory))

    federated = None
    if "federated" in raw:
        if kind not in ("sequential", "click", "fkd", "llm"):
            raise _Bad("federated", f"model kind {kind!r} cannot train federated")
        if kind == "llm" and model.get("mode", "zeroshot") == "zeroshot":
            raise _Bad("federated", "a zero-shot LLM trains nothing: federate a trained mode")
        section = dict(_table(raw, "federated"))
        section.setdefault("seed", trainer.seed)
        federated = _instantiate(FederationConfig, section, "federated")
        if trainer.prior_weights and federated.partition != "domain":
            # The prior is every item's training count: no user client holds those.
            raise _Bad(
                "trainer.prior_weights",
                "a popularity prior needs item counts that no user client holds; "
                "use it centralized or with federated.partition = 'domain'",
            )

    description = raw.get("description", "")
    if not isinstance(description, str):
        raise _Bad("description", "must be a string")
    return Recipe(
        path,
        data,
        kind,
        model,
        trainer,
        eval_kind,
        evaluation,
        description,
        list(overrides),
        federated,
    )


def _table(raw: Mapping[str, Any], name: str, *, required: bool = False) -> Mapping[str, Any]:
    if name not in raw:
        if required:
            raise _Bad(name, "missing section")
        return {}
    table = raw[name]
    if not isinstance(table, Mapping):
        raise _Bad(name, "must be a table ([section])")
    return table


def _set_default(table: dict[str, Any], dotted: str, value: Any) -> None:
    *heads, last = dotted.split(".")
    for head in heads:
        nested = table.get(head)
        if nested is None:
            table[head] = nested = {}
        elif isinstance(nested, dict):
            # Copy: the caller's nested table must not change under it.
            table[head] = nested = dict(nested)
        else:
            return  # a bad value; the check reports it
        table = nested
    table.setdefault(last, value)


@dataclass(frozen=True)
class _Field:
    hint: Any
    default: Any = dataclasses.MISSING


def _first_parameter(factory: Callable[..., Any]) -> frozenset[str]:
    """Factories are called ``factory(prepared, **options)``: their first parameter is no option."""
    return frozenset(list(inspect.signature(factory).parameters)[:1])


def _nested(exclude: frozenset[str], name: str) -> frozenset[str]:
    return frozenset(e.split(".", 1)[1] for e in exclude if e.startswith(name + "."))


def _fields(target: Any, exclude: frozenset[str]) -> dict[str, _Field]:
    """The options ``target`` takes: dataclass fields, or keyword parameters of a callable."""
    if dataclasses.is_dataclass(target):
        hints = get_type_hints(target)
        out: dict[str, _Field] = {}
        for f in dataclasses.fields(target):
            if not f.init or f.name.startswith("_") or f.name in exclude:
                continue
            default: Any = f.default
            if f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            out[f.name] = _Field(hints.get(f.name, Any), default)
        return out
    func = target.__init__ if inspect.isclass(target) else target
    hints = get_type_hints(func)
    return {
        p.name: _Field(
            hints.get(p.name, Any),
            dataclasses.MISSING if p.default is inspect.Parameter.empty else p.default,
        )
        for p in inspect.signature(target).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and not p.name.startswith("_")
        and p.name not in exclude
    }


def _parse(
    target: Any, table: Mapping[str, Any], where: str, exclude: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Checked keyword arguments for ``target`` from a recipe table."""
    fields = _fields(target, frozenset(e for e in exclude if "." not in e))
    for key in table:
        if key not in fields:
            known = ", ".join(fields) if fields else "none (this section takes no keys)"
            raise _Bad(f"{where}.{key}", f"unknown key; expected one of: {known}")
    for name, f in fields.items():
        if f.default is dataclasses.MISSING and name not in table:
            raise _Bad(f"{where}.{name}", "missing")
    return {
        key: _coerce(fields[key].hint, value, f"{where}.{key}", _nested(exclude, key))
        for key, value in table.items()
    }


def _instantiate(
    target: Any, table: Mapping[str, Any], where: str, exclude: frozenset[str] = frozenset()
) -> Any:
    kwargs = _parse(target, table, where, exclude)
    try:
        return target(**kwargs)
    except OptionError as err:  # a value out of range: report it at its own key
        raise _Bad(f"{where}.{err.field}", err.problem) from None
    except (TypeError, ValueError) as err:
        raise _Bad(where, str(err)) from None


def _coerce(hint: Any, value: Any, key: str, exclude: frozenset[str] = frozenset()) -> Any:
    """``value`` checked against (and converted to) ``hint``; unhandled hints pass through."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _Bad(key, f"must be one of {', '.join(map(repr, args))}, not {value!r}")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        for arm in arms[:-1]:
            try:
                return _coerce(arm, value, key, exclude)
            except _Bad:
                pass
        return _coerce(arms[-1], value, key, exclude)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise _Bad(key, f"must be a table, not {value!r}")
        return _instantiate(hint, value, key, exclude)
    if origin in (list, tuple, Sequence):
        if not isinstance(value, list | tuple):
            raise _Bad(key, f"must be an array, not {value!r}")
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise _Bad(key, f"must be an integer, not {value!r}")
    if hint is Path and isinstance(value, str):
        return Path(value)
    if hint in (bool, int, float, str) and not isinstance(value, hint):
        raise _Bad(key, f"must be {hint.__name__}, not {value!r}")
    return value


def _record(target: Any, kwargs: Mapping[str, Any], exclude: frozenset[str] = frozenset()) -> Any:
    """Every option of ``target``: given values over defaults, as JSON-able data."""
    fields = _fields(target, frozenset(e for e in exclude if "." not in e))
    return {
        name: _jsonable(kwargs.get(name, f.default), _nested(exclude, name))
        for name, f in fields.items()
    }


def _jsonable(value: Any, exclude: frozenset[str] = frozenset()) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        kind = type(value)
        return _record(kind, {n: getattr(value, n) for n in _fields(kind, exclude)}, exclude)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
