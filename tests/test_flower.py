"""The Flower app against the in-process simulator on real KuaiSAR-R (MRFF click model).

The parity test runs a 3-node Flower simulation (``run_simulation``, Ray backend,
one actor) and the simulator from the same recipe and seeds: per-round losses,
final global and group tensors and the held-out click probabilities (which use
each client's private rows, kept on its node) must agree up to float rounding. Two
recipes: the release's local Adam (small, 2 of 3 clients sampled a round), and the
FedAdam recipe at its own size (MRFF's widths, one drawn window per client) whose
simulator runs the fused ``linear`` engine while every node computes per-client uploads.
"""

from __future__ import annotations

import json
import os
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict, UserConfig
from safetensors.torch import load_file

from fedllmrec.apps.flower import (
    PRIVATE_STATE,
    RUN_CONFIG_DEFAULTS,
    AppConfig,
    RecipeSource,
    client_app,
    make_server_app,
    node_federation,
    node_partition,
    partition_positions,
    tensor_record,
)
from fedllmrec.errors import FedLLMRecError
from fedllmrec.federated.ownership import Owner
from fedllmrec.federated.simulator import FederatedRecommender
from fedllmrec.federated.uploads import ClientUpload

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    recipe: str
    overrides: tuple[str, ...]
    rounds: int
    clients: int
    participants: int


CASES = {
    # Small and deterministic (no dropout); fraction 0.67 samples 2 of the 3 clients a round,
    # so the server's seeded sampling must pick the simulator's participants.
    "local-adam": Case(
        "mrff-fed-kuaisar.toml",
        (
            "model.max_len=20",
            "model.dim=16",
            "model.dropout=0",
            "model.user_hidden=8",
            "federated.max_clients=3",
            "federated.strategy.fraction=0.67",
        ),
        rounds=3,
        clients=3,
        participants=2,
    ),
    # The FedAdam recipe as it trains (dims, K, max length, one drawn window per client and
    # round), 96 clients. Dropout 0: the fused engine's fast masks are not the nodes' (the
    # rounds would agree in distribution only). Adam's d / (|d| + eps) magnifies rounding
    # of near-zero coordinates (the engines sum in different orders): eps 1e-3, as in
    # test_linear_engine_matches_per_client_updates.
    "fedadam-linear": Case(
        "mrff-fedadam-kuaisar.toml",
        (
            "model.dropout=0",
            "federated.max_clients=96",
            "federated.strategy.server_eps=1e-3",
        ),
        rounds=2,
        clients=96,
        participants=96,
    ),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]


def _source(case: Case, data_root: Path) -> RecipeSource:
    torch.set_num_threads(1)
    return RecipeSource.read(REPO / "recipes" / case.recipe, case.overrides, str(data_root))


@pytest.fixture(scope="module")
def source(data_root: Path) -> RecipeSource:
    return _source(CASES["local-adam"], data_root)


@pytest.fixture(scope="module")
def simulated(case: Case, data_root: Path) -> FederatedRecommender:
    fed = _source(case, data_root).load().build_federation()
    for _ in range(case.rounds):
        fed.train_round()
    return fed


class _Descendants:
    """Every process started below this one while active, sampled often enough to see Ray's
    workers before ``ray.shutdown`` orphans them (they then exit on their own, a bit later)."""

    def __init__(self) -> None:
        self.seen: dict[int, psutil.Process] = {}
        self._before = {p.pid for p in psutil.Process().children(recursive=True)}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.1):
            self.sample()

    def sample(self) -> None:
        for process in psutil.Process().children(recursive=True):
            if process.pid not in self._before:
                self.seen.setdefault(process.pid, process)

    def __enter__(self) -> _Descendants:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def stop_all(self, grace: float) -> list[int]:
        """Wait ``grace`` seconds for them to exit, then kill the rest (by pid; psutil checks
        each is still the process it saw). Returns the pids that had to be killed."""
        _, alive = psutil.wait_procs(list(self.seen.values()), timeout=grace)
        for process in alive:
            process.kill()
        psutil.wait_procs(alive, timeout=10)
        return [p.pid for p in alive]


@pytest.fixture(scope="module")
def flower_run(
    case: Case, data_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """Run the Flower simulation once per case; every process it starts is gone afterwards."""
    import ray
    from flwr.simulation import run_simulation

    out = tmp_path_factory.mktemp("flower")
    config: UserConfig = {
        "num-server-rounds": case.rounds,
        "recipe": str(REPO / "recipes" / case.recipe),
        "set": "; ".join(case.overrides),
        "data-dir": str(data_root),
        "out-dir": str(out),
        "num-threads": 1,
    }
    pythonpath = os.environ.get("PYTHONPATH")  # the Ray backend rewrites it for its workers
    with _Descendants() as started:
        try:
            run_simulation(
                make_server_app(config),
                client_app,
                num_supernodes=3,
                # One actor on one CPU: the machine is shared, and one actor serving every
                # node exercises per-node state (private rows), not per-process memory.
                backend_config={
                    "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                    "init_args": {"num_cpus": 1, "include_dashboard": False},
                },
            )
        finally:
            if ray.is_initialized():
                ray.shutdown()
            if pythonpath is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = pythonpath
    assert started.seen, "the simulation ran no worker process"
    killed = started.stop_all(grace=30.0)
    assert not killed, f"processes still running 30 s after the simulation: {killed}"
    yield out


def test_flower_matches_simulator(
    case: Case, simulated: FederatedRecommender, flower_run: Path
) -> None:
    history = json.loads((flower_run / "history.json").read_text())
    assert history["clients"] == case.clients and history["partitions"] == 3
    np.testing.assert_allclose(history["losses"], simulated.losses, rtol=1e-6)
    for flower, sim in zip(history["rounds"], simulated.server.records, strict=True):
        assert flower["participants"] == sim["participants"] == case.participants
        assert flower["dropped"] == flower["failed"] == 0
        assert flower["bytes_up"] == sim["bytes_up"]
        assert flower["wire_bytes_up"] >= flower["bytes_up"]  # payload + safetensors headers

    final = load_file(flower_run / "server.safetensors")
    shared = simulated.shared_tensors()
    assert final.keys() == shared.keys()
    own = simulated.ownership
    assert set(final) == set(own.names(Owner.GLOBAL, Owner.GROUP))
    assert own.names(Owner.GROUP), "the MRFF model has group tensors"
    for name, value in shared.items():
        # A node's chunk and the simulator's differ in width (padding columns are cut per
        # chunk), so rounding differs; Adam's first step g / (|g| + eps) magnifies it where
        # |g| is near eps. 1e-5 is a thousandth of the lr-0.01 step.
        torch.testing.assert_close(final[name], value.detach(), rtol=1e-5, atol=1e-5)

    # Held-out predictions: global model + each client's private rows, kept on its node.
    saved = np.load(flower_run / "predictions_valid.npz")
    assert saved["user"].tolist() == simulated.clients.tolist()
    probs, labels = simulated.predict("valid")
    split = simulated.recommender.split
    assert split is not None
    users = split.dataset.user[split.rows("valid")]
    keep = np.isin(users, simulated.clients)
    np.testing.assert_allclose(saved["prob"], probs[keep], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(saved["label"], labels[keep])
    assert history["metrics"]["rows"] == case.clients


def _message(content: RecordDict, message_type: str) -> Message:
    return Message(content, dst_node_id=1, message_type=message_type)


def test_client_uploads_shared_deltas_only_and_keeps_private_rows(source: RecipeSource) -> None:
    fed = node_federation(source).fed
    own = fed.ownership
    context = Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 1, "num-partitions": 2},
        state=RecordDict(),
        run_config={},
    )
    content = RecordDict(
        {
            "recipe": source.to_record(),
            "run": ConfigRecord({"num-threads": 1, "round": 1, "clients": [1]}),
            "shared": tensor_record(fed.shared_tensors()),
            "load": tensor_record({"load": torch.zeros(fed.server.load.shape)}),
        }
    )
    reply = client_app(_message(content, "train"), context)
    assert not reply.has_error()
    uploads = reply.content.config_records["uploads"]
    assert list(uploads) == ["1"]
    data = uploads["1"]
    assert isinstance(data, bytes)
    upload = ClientUpload.from_bytes(data)
    assert upload.client == int(fed.clients[1])
    group_names = own.names(Owner.GROUP)
    expected = set(own.names(Owner.GLOBAL)) | {
        f"{name}/{upload.routing[own[name].layer or 0]}" for name in group_names
    }
    assert set(upload.arrays) == expected  # no private tensor, one slice per group tensor
    private = [n for n in own.names(Owner.PRIVATE) if own[n].is_parameter]
    stored = context.state.array_records[PRIVATE_STATE]
    assert set(stored) == {f"{upload.client}/{name}" for name in private}

    # A client of another partition is refused.
    content["run"] = ConfigRecord({"num-threads": 1, "round": 1, "clients": [0]})
    with pytest.raises(FedLLMRecError, match="another partition"):
        client_app(_message(content, "train"), context)


def test_partitions_cover_every_client_once() -> None:
    for n_clients, parts in [(3, 3), (10, 3), (2, 4)]:
        seen = np.concatenate([partition_positions(n_clients, p, parts) for p in range(parts)])
        assert sorted(seen.tolist()) == list(range(n_clients))
    assert node_partition({"partition-id": 1, "num-partitions": 2}) == (1, 2)
    with pytest.raises(FedLLMRecError, match="partition-id"):
        node_partition({})
    with pytest.raises(FedLLMRecError, match="not in"):
        node_partition({"partition-id": 2, "num-partitions": 2})


def test_run_config() -> None:
    config = AppConfig.from_run_config({"set": "model.dim=8; federated.max_clients=4\n"})
    assert config.overrides == ("model.dim=8", "federated.max_clients=4")
    with pytest.raises(FedLLMRecError, match="unknown run config"):
        AppConfig.from_run_config({"num-rounds": 2})
    with pytest.raises(FedLLMRecError, match="num-server-rounds"):
        AppConfig.from_run_config({"num-server-rounds": 0})


def test_pyproject_declares_the_app() -> None:
    from flwr.common.config import validate_config

    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    valid, errors, _ = validate_config(config, check_module=True, project_dir=REPO)
    assert valid, errors
    app = config["tool"]["flwr"]["app"]
    assert app["config"] == RUN_CONFIG_DEFAULTS  # `flwr run` overrides only declared keys
    assert "federations" not in config["tool"]["flwr"]  # flwr 1.41 would rewrite the file
