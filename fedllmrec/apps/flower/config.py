"""The Flower app's configuration: run-config keys, node partitions, recipes on the wire.

Run configuration (``[tool.flwr.app.config]``; :data:`RUN_CONFIG_DEFAULTS`)::

    num-server-rounds  rounds to run
    recipe             recipe TOML (relative: to the working directory, else the project)
    set                recipe overrides "key=value", separated by ";" (as ``--set``)
    data-dir           raw data folder for server and nodes ("" = recipe / $FEDLLMREC_DATA);
                       a node's own ``data-dir`` node config wins
    out-dir            where the server writes history.json, server.safetensors and
                       predictions ("" = nowhere)
    eval-role          held-out role evaluated after the last round ("" = none)
    num-threads        torch CPU threads of server and nodes (0 = torch's default)
    node-timeout       seconds to wait until every partition's SuperNode has answered
    round-timeout      seconds to wait for a round's replies (0 = no limit); late nodes'
                       clients count as dropped
"""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, UserConfigValue

import fedllmrec
from fedllmrec.errors import FedLLMRecError
from fedllmrec.federated.server import FederationServer
from fedllmrec.recipes import Recipe, load_recipe
from fedllmrec.recipes.recipe import recipe_files

RUN_CONFIG_DEFAULTS: dict[str, UserConfigValue] = {
    "num-server-rounds": 3,
    "recipe": "recipes/mrff-fed-kuaisar.toml",
    "set": "",
    "data-dir": "",
    "out-dir": "",
    "eval-role": "valid",
    "num-threads": 1,
    "node-timeout": 300.0,
    "round-timeout": 0.0,
}

PROJECT_ROOT = Path(fedllmrec.__file__).resolve().parents[1]


@dataclass(frozen=True)
class AppConfig:
    """The run configuration, typed (see the module docstring for the keys)."""

    num_server_rounds: int
    recipe: str
    overrides: tuple[str, ...]
    data_dir: str
    out_dir: str
    eval_role: str
    num_threads: int
    node_timeout: float
    round_timeout: float

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, UserConfigValue]) -> AppConfig:
        """Parse ``run_config`` on top of :data:`RUN_CONFIG_DEFAULTS`."""
        merged = {**RUN_CONFIG_DEFAULTS, **run_config}
        unknown = sorted(set(merged) - set(RUN_CONFIG_DEFAULTS))
        if unknown:
            raise FedLLMRecError(
                f"unknown run config keys {unknown}; known: {sorted(RUN_CONFIG_DEFAULTS)}"
            )
        rounds = int(merged["num-server-rounds"])
        if rounds < 1:
            raise FedLLMRecError(f"num-server-rounds must be >= 1, got {rounds}")
        return cls(
            num_server_rounds=rounds,
            recipe=str(merged["recipe"]),
            overrides=split_overrides(str(merged["set"])),
            data_dir=str(merged["data-dir"]),
            out_dir=str(merged["out-dir"]),
            eval_role=str(merged["eval-role"]),
            num_threads=int(merged["num-threads"]),
            node_timeout=float(merged["node-timeout"]),
            round_timeout=float(merged["round-timeout"]),
        )


def split_overrides(text: str) -> tuple[str, ...]:
    """``"a.b=1; c=2"`` -> ``("a.b=1", "c=2")`` (run config values cannot be lists)."""
    return tuple(part.strip() for part in re.split(r"[;\n]", text) if part.strip())


@dataclass(frozen=True)
class RecipeSource:
    """A recipe as text plus overrides: what the server sends so every node builds alike.

    ``bases`` holds the files of its ``base`` chain (path relative to the recipe's
    folder, text), so a node rebuilds a derived recipe without the recipe folder.
    """

    name: str
    text: str
    overrides: tuple[str, ...] = ()
    data_dir: str = ""
    bases: tuple[tuple[str, str], ...] = ()

    @classmethod
    def read(
        cls, path: str | Path, overrides: Iterable[str] = (), data_dir: str = ""
    ) -> RecipeSource:
        """Read a recipe file; a relative path is tried in the working directory, then the
        project (the folder holding the ``fedllmrec`` package, which a FAB also ships)."""
        path = Path(path).expanduser()
        candidates = [path] if path.is_absolute() else [path, PROJECT_ROOT / path]
        for candidate in candidates:
            if candidate.is_file():
                top, *chain = recipe_files(candidate)
                bases = []
                for base in chain:
                    if not base.is_relative_to(top.parent):
                        raise FedLLMRecError(
                            f"{candidate}: base {base} is outside the recipe's folder (a "
                            "Flower node rebuilds the chain below the recipe)"
                        )
                    name = base.relative_to(top.parent).as_posix()
                    bases.append((name, base.read_text(encoding="utf-8")))
                text = top.read_text(encoding="utf-8")
                return cls(top.name, text, tuple(overrides), data_dir, tuple(bases))
        raise FedLLMRecError(f"recipe {path} not found (looked in {[str(c) for c in candidates]})")

    def load(self) -> Recipe:
        """The checked :class:`Recipe` (overrides applied, ``data_dir`` replaced if set)."""
        with tempfile.TemporaryDirectory(prefix="fedllmrec-recipe-") as tmp:
            for name, text in self.bases:
                base = Path(tmp) / name
                base.parent.mkdir(parents=True, exist_ok=True)
                base.write_text(text, encoding="utf-8")
            path = Path(tmp) / self.name
            path.write_text(self.text, encoding="utf-8")
            recipe = load_recipe(path, self.overrides)
        if self.data_dir:
            data = dataclasses.replace(recipe.data, data_dir=self.data_dir)
            recipe = dataclasses.replace(recipe, data=data)
        return recipe

    def to_record(self) -> ConfigRecord:
        # Overrides travel newline-joined: an empty list has no wire type.
        return ConfigRecord(
            {
                "name": self.name,
                "text": self.text,
                "set": "\n".join(self.overrides),
                "data-dir": self.data_dir,
                "bases": json.dumps(self.bases),
            }
        )

    @classmethod
    def from_record(cls, record: ConfigRecord, data_dir: str = "") -> RecipeSource:
        """The source a message carries; a node's own ``data_dir`` replaces the server's."""
        return cls(
            str(record["name"]),
            str(record["text"]),
            split_overrides(str(record["set"])),
            data_dir or str(record["data-dir"]),
            tuple((str(n), str(t)) for n, t in json.loads(str(record.get("bases", "[]")))),
        )


def check_flower_privacy(fed: FederationServer) -> None:
    """Refuse protections the plain Flower path cannot carry (its per-client wire format
    has neither a DP header nor a risk weight): they need secure aggregation on Flower."""
    privacy = fed.federation.privacy
    if (privacy.dp != "none" or privacy.aware != "none") and not privacy.secure_aggregation:
        raise FedLLMRecError(
            f"on Flower, federated.privacy dp={privacy.dp!r} / aware={privacy.aware!r} need "
            "secure_aggregation = true (the per-client wire format carries neither)"
        )


def node_partition(node_config: Mapping[str, UserConfigValue]) -> tuple[int, int]:
    """``(partition-id, num-partitions)`` of a SuperNode, checked."""
    try:
        part, parts = int(node_config["partition-id"]), int(node_config["num-partitions"])
    except KeyError as err:
        raise FedLLMRecError(
            f"SuperNode node config lacks {err.args[0]!r}: start it with "
            "--node-config 'partition-id=0 num-partitions=2'"
        ) from None
    if not 0 <= part < parts:
        raise FedLLMRecError(f"partition-id {part} not in [0, num-partitions={parts})")
    return part, parts


def partition_positions(n_clients: int, part: int, parts: int) -> np.ndarray:
    """Client positions (see ``ClientPopulation``) of partition ``part`` of ``parts``."""
    return np.arange(part, n_clients, parts, dtype=np.int64)


def record_int(value: object) -> int:
    """A record's integer scalar (records are loosely typed unions)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise FedLLMRecError(f"expected an integer in the message, got {value!r}")
    return value


def set_threads(n: int) -> None:
    """torch's CPU threads (0: leave torch's default)."""
    if n > 0 and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def tensor_record(tensors: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """Tensors as a Flower ``ArrayRecord`` (numpy arrays on the wire)."""
    return ArrayRecord({name: Array(t.detach().cpu().numpy()) for name, t in tensors.items()})


def record_tensors(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """An ``ArrayRecord`` as tensors."""
    # np.load gives writable arrays, so from_numpy shares memory without warnings.
    return {name: torch.from_numpy(array.numpy()) for name, array in record.items()}
