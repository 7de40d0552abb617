"""The Flower app against the in-process simulator on real KuaiSAR-R (MRFF click model).

The parity test runs a 3-node Flower simulation (``run_simulation``, Ray backend,
one actor, in a child process: tests/flower_simulation.py) and the simulator from the
same recipe and seeds: per-round losses, final global and group tensors and the held-out
click probabilities (which use each client's private rows, kept on its node) must agree
up to float rounding. Two
recipes: the release's local Adam (small, 2 of 3 clients sampled a round), and the
FedAdam recipe at its own size (MRFF's widths, one drawn window per client) whose
simulator runs the fused ``linear`` engine while every node computes per-client uploads.

The secure-aggregation test runs the small recipe with ``secure_aggregation = true`` on 2
SuperNodes (flwr's SecAgg+) and checks each round's unmasked sum against the plain sum of
the same uploads (the nodes' training replayed in process) within SecAgg+'s rounding bound.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import subprocess
import sys
import threading
import tomllib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import numpy as np
import psutil
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict, UserConfig
from flwr.supercore.task_identity import TaskIdentity
from safetensors.torch import load_file

from fedllmrec.apps.flower import (
    PRIVATE_STATE,
    RUN_CONFIG_DEFAULTS,
    AppConfig,
    RecipeSource,
    client_app,
    node_federation,
    node_partition,
    partition_positions,
    tensor_record,
)
from fedllmrec.apps.flower.config import check_flower_privacy
from fedllmrec.apps.flower.secagg import (
    CLIP_REFUSAL,
    SecureCodec,
    SecureSettings,
    reconstruction_threshold,
)
from fedllmrec.errors import FedLLMRecError
from fedllmrec.federated.adapters import FederatedLLM
from fedllmrec.federated.config import FederationConfig, PrivacyConfig, StrategyConfig
from fedllmrec.federated.ownership import Owner
from fedllmrec.federated.privacy import SecureSum
from fedllmrec.federated.round import RoundPlan
from fedllmrec.federated.server import FederationServer
from fedllmrec.federated.simulator import FederatedRecommender
from fedllmrec.federated.uploads import ClientUpload, ProtectedSum, UploadSum

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


def _run_config(case: Case, data_root: Path, out: Path, **extra: int | str) -> UserConfig:
    return {
        "num-server-rounds": case.rounds,
        "recipe": str(REPO / "recipes" / case.recipe),
        "set": "; ".join(case.overrides),
        "data-dir": str(data_root),
        "out-dir": str(out),
        "num-threads": 1,
        **extra,
    }


SIMULATION_TIMEOUT_S = 180.0  # a whole simulation here takes 15-40 s (the LLM one ~40 s)
SIMULATION = Path(__file__).with_name("flower_simulation.py")


def _simulate(
    run_config: UserConfig, num_supernodes: int, out: Path, observe: bool = False
) -> list[tuple[RoundPlan, UploadSum | ProtectedSum]]:
    """``run_simulation`` on one Ray actor, in a child process (tests/flower_simulation.py);
    every process it starts is gone afterwards. Returns the secure sums it observed.

    A simulation that stops answering is printed (every thread's stack), its processes are
    killed, and it runs once more: a hang of Ray's, once seen in CI, fails nothing by itself,
    but twice is a failure. A simulation that fails is a failure at once."""
    config = out / "run_config.json"
    config.write_text(json.dumps(run_config))
    observed = out / "observed.pkl"
    command = [sys.executable, str(SIMULATION), str(config), str(num_supernodes)]
    command += [str(SIMULATION_TIMEOUT_S)] + (["--observe", str(observed)] if observe else [])
    for attempt in (1, 2):
        with _Descendants() as started:
            done = subprocess.run(command, capture_output=True, text=True, check=False)
        killed = started.stop_all(grace=30.0)
        hung = done.returncode != 0 and "Timeout (" in done.stderr
        if hung and attempt == 1:
            warnings.warn(
                f"the Flower simulation stopped answering for {SIMULATION_TIMEOUT_S:.0f} s "
                f"and runs again; its stacks:\n{done.stderr[-8000:]}",
                stacklevel=2,
            )
            continue
        assert done.returncode == 0, f"the simulation failed:\n{done.stderr[-8000:]}"
        assert len(started.seen) > 1, "the simulation ran no worker process"
        assert not killed, f"processes still running 30 s after the simulation: {killed}"
        break
    if not observe:
        return []
    return cast(
        list[tuple[RoundPlan, UploadSum | ProtectedSum]], pickle.loads(observed.read_bytes())
    )


@pytest.fixture(scope="module")
def flower_run(
    case: Case, data_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """Run the Flower simulation once per case; every process it starts is gone afterwards."""
    out = tmp_path_factory.mktemp("flower")
    _simulate(_run_config(case, data_root, out), num_supernodes=3, out=out)
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
    try:
        TaskIdentity.run_id  # noqa: B018 (set by a simulation that ran in this process)
    except RuntimeError:  # none did (a -k selection): a Message needs the sender's identity
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    return Message(content, dst_node_id=1, message_type=message_type)


def _train_request(source: RecipeSource, fed: FederationServer) -> tuple[Context, RecordDict]:
    """Partition 1 of 2's node context and a round-1 ``train`` request for its client 1."""
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
    return context, content


def test_client_uploads_shared_deltas_only_and_keeps_private_rows(source: RecipeSource) -> None:
    fed = node_federation(source).fed
    own = fed.ownership
    context, content = _train_request(source, fed)
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


# ---------------------------------------------------------------- secure aggregation (SecAgg+)

SECURE = Case(
    "mrff-fed-kuaisar.toml",
    (
        "model.max_len=20",
        "model.dim=16",
        "model.dropout=0",
        "model.user_hidden=8",
        "federated.max_clients=8",
        "federated.privacy.secure_aggregation=true",
    ),
    rounds=2,
    clients=8,
    participants=8,
)
SECURE_NODES = 2


@dataclass
class SecureFlowerRun:
    out: Path
    received: list[tuple[RoundPlan, UploadSum | ProtectedSum]]  # each round's unmasked sum


@pytest.fixture(scope="module")
def secure_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> SecureFlowerRun:
    """The secure recipe on 2 SuperNodes (SecAgg+), recording what the server received."""
    out = tmp_path_factory.mktemp("flower-secure")
    config = _run_config(SECURE, data_root, out, **{"eval-role": ""})
    received = _simulate(config, num_supernodes=SECURE_NODES, out=out, observe=True)
    return SecureFlowerRun(out, received)


def test_secure_sum_equals_plain_sum_within_quantisation(
    secure_run: SecureFlowerRun, data_root: Path
) -> None:
    """Each round's SecAgg+ sum against the plain sum of the same uploads.

    The nodes' training is replayed in process from each round's plan (each node's clients
    chunked as the node chunks them) and summed exactly by ``SecureSum``. Every entry must
    agree within SecAgg+'s rounding bound (``SecureCodec.error_bound``: parties x 2 x
    scale / T) plus the float32 rounding of two sums of at most 8 terms; counts, weights
    and examples exactly (integers, rounded back). The server's step on the secure sum and
    the same step on the plain sum (from the same sent tensors) then differ by at most that
    bound over the summed weight (sgd, server_lr 1)."""
    ref = _source(SECURE, data_root).load().build_federation()
    own = ref.ownership
    settings = SecureSettings()
    history = json.loads((secure_run.out / "history.json").read_text())
    assert len(secure_run.received) == len(history["rounds"]) == SECURE.rounds
    levels = settings.quantization_range(SECURE_NODES)
    eps = float(np.finfo(np.float32).eps)
    bound = np.zeros(0)
    for (plan, secure), record in zip(secure_run.received, history["rounds"], strict=True):
        assert record["secagg_parties"] == SECURE_NODES and record["failed"] == 0
        assert record["secagg_quantization_range"] == levels == 2**30
        shares = [
            np.intersect1d(partition_positions(SECURE.clients, p, SECURE_NODES), plan.survivors)
            for p in range(SECURE_NODES)
        ]
        plain_sum = SecureSum(own, ref.federation.strategy.weighting)
        for positions in shares:
            ref.local_training(
                positions,
                plan.number,
                plan.sent,
                plan.load,
                plain_sum.add,
                ref.client_engine(),
                cohort=len(plan.participants),
                secure=False,
            )
        plain = plain_sum.result()
        assert isinstance(secure, UploadSum) and isinstance(plain, UploadSum)
        codec = SecureCodec.of(ref, max(map(len, shares)), len(plan.participants), settings)
        bound = codec.error_bound(SECURE_NODES, levels)
        offset = 0
        for name in codec.layout.names:
            want = plain.sums[name].double()
            n = want.numel()
            tolerance = bound[offset : offset + n].max() + 8 * eps * float(want.abs().max())
            offset += n
            assert float((secure.sums[name].double() - want).abs().max()) <= tolerance, name
        torch.testing.assert_close(secure.routing_counts, plain.routing_counts, rtol=0, atol=0)
        for name, weight in plain.group_weight.items():
            torch.testing.assert_close(secure.group_weight[name], weight, rtol=0, atol=0)
        assert secure.total_weight == plain.total_weight == SECURE.participants  # uniform
        assert secure.examples == plain.examples
        loss_bound = bound[-1] + 8 * eps * plain.loss_sum
        assert abs(secure.loss_sum - plain.loss_sum) <= loss_bound

        aggregator = ref.new_aggregator(plan.number)
        aggregator.add(plain)
        ref.finish_round(plan, aggregator)  # the plain sum's step, from the same sent tensors
        assert history["losses"][plan.number - 1] == pytest.approx(
            ref.losses[-1], rel=0, abs=loss_bound / plain.examples + 1e-12
        )
        assert record["bytes_up"] == ref.server.records[-1]["bytes_up"]

    # The last step: a global tensor moves by the mean over the 8 clients, group k of a
    # group tensor by the mean over its routed clients (>= 1); + 1 float32 ulp of a weight.
    final = load_file(secure_run.out / "server.safetensors")
    offset = 0
    for name, value in ref.shared_tensors().items():
        n = value.numel()
        weight = SECURE.participants if own[name].owner is Owner.GLOBAL else 1
        tolerance = bound[offset : offset + n].max() / weight + eps * float(
            value.detach().abs().max()
        )
        offset += n
        torch.testing.assert_close(final[name], value.detach(), rtol=0, atol=tolerance)


def test_secure_codec_refuses_what_secagg_would_clip(source: RecipeSource) -> None:
    fed = node_federation(source).fed
    settings = SecureSettings()
    codec = SecureCodec.of(fed, node_clients=2, cohort=3, settings=settings)
    layout = codec.layout
    assert codec.scale.shape == (layout.size,)
    lk = 2 * 4  # MRFF here: L = 2 layers of K = 4 groups
    head = layout.size - layout.header
    # uniform weights: a client moves a coordinate by <= delta_bound, a count by 1
    assert codec.scale[0] == 2 * settings.delta_bound and codec.scale[head] == 2.0
    assert codec.integral[head : head + 2 * lk + 2].all() and not codec.integral[-1]
    vector = np.zeros(layout.size)
    vector[head : head + lk] = np.tile([2.0, 0.0, 0.0, 0.0], 2)  # 2 clients, both group 0
    vector[0], vector[-1] = 3.0, 1.4
    back = codec.decode(codec.encode(vector), parties=2, quantization_range=2**30)
    np.testing.assert_allclose(back, vector)
    vector[5] = 2.5 * codec.scale[5]  # over its bound: refused, without naming the value
    refusal = f"^{CLIP_REFUSAL} a tensor delta summed on this node at its public bound 16;"
    with pytest.raises(FedLLMRecError, match=refusal):
        codec.encode(vector)
    vector[5] = np.nan
    with pytest.raises(FedLLMRecError, match=CLIP_REFUSAL):
        codec.encode(vector)
    assert [settings.quantization_range(n) for n in (2, 3, 4, 5)] == [2**30, 2**30, 2**29, 2**29]
    with pytest.raises(FedLLMRecError, match=">= 2 SuperNodes"):
        settings.quantization_range(1)
    with pytest.raises(FedLLMRecError, match="quantisation levels"):
        settings.quantization_range(2**16)
    assert [reconstruction_threshold(n) for n in (2, 3, 4, 5)] == [2, 2, 3, 3]


def test_secure_node_refuses_plain_train(data_root: Path) -> None:
    """Under secure aggregation a node never sends a client's upload."""
    source = _source(SECURE, data_root)
    fed = node_federation(source).fed
    context = Context(1, 1, {"partition-id": 0, "num-partitions": 2}, RecordDict(), {})
    content = RecordDict(
        {
            "recipe": source.to_record(),
            "run": ConfigRecord({"num-threads": 1, "round": 1, "clients": [0]}),
            "shared": tensor_record(fed.shared_tensors()),
            "load": tensor_record({"load": torch.zeros(fed.server.load.shape)}),
        }
    )
    with pytest.raises(FedLLMRecError, match="SecAgg\\+-masked sums only"):
        client_app(_message(content, "train"), context)
    assert PRIVATE_STATE not in context.state.array_records


def test_flower_refuses_privacy_the_plain_path_cannot_carry() -> None:
    strategy = StrategyConfig(weighting="uniform")
    for privacy in [
        PrivacyConfig(dp="central", clip=1.0, noise_multiplier=1.0),
        PrivacyConfig(aware="norm"),
    ]:
        fed = cast(
            FederatedRecommender,
            SimpleNamespace(federation=FederationConfig(strategy=strategy, privacy=privacy)),
        )
        with pytest.raises(FedLLMRecError, match="need secure_aggregation = true"):
            check_flower_privacy(fed)
        secure = dataclasses.replace(privacy, secure_aggregation=True)
        check_flower_privacy(
            cast(
                FederatedRecommender,
                SimpleNamespace(federation=FederationConfig(strategy=strategy, privacy=secure)),
            )
        )


# ---------------------------------------------------------------- domain clients (FKD)

FKD_CASE = Case(
    "fkd-fed-art-office.toml",
    (
        "data.split.max_users=150",  # the items of 150 users are embedded, not 38k
        "model.dim=8",
        "model.max_len=10",
        "model.n_heads=1",
        "model.dropout=0",
        "model.train.n_negatives=50",
        "federated.local.steps=2",
        "federated.local.batch_size=16",
    ),
    rounds=2,
    clients=2,
    participants=2,
)


@pytest.fixture(scope="module")
def fkd_simulated(data_root: Path) -> FederatedRecommender:
    fed = _source(FKD_CASE, data_root).load().build_federation()
    for _ in range(FKD_CASE.rounds):
        fed.train_round()
    return fed


def test_flower_domain_nodes_match_the_simulator_on_fkd(
    fkd_simulated: FederatedRecommender, data_root: Path, tmp_path: Path
) -> None:
    """One SuperNode per domain: the teacher the server averages and every round's loss are
    the simulator's; the students stay on their nodes (only the teacher is sent)."""
    _simulate(_run_config(FKD_CASE, data_root, tmp_path), num_supernodes=2, out=tmp_path)
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["clients"] == 2 and history["partitions"] == 2
    np.testing.assert_allclose(history["losses"], fkd_simulated.losses, rtol=1e-5)
    own = fkd_simulated.ownership
    teacher = own.names(Owner.GLOBAL)
    assert teacher and all(name.startswith("model.teacher.") for name in teacher)
    for flower, sim in zip(history["rounds"], fkd_simulated.server.records, strict=True):
        assert flower["participants"] == sim["participants"] == 2
        assert flower["bytes_up"] == sim["bytes_up"]
    final = load_file(tmp_path / "server.safetensors")
    assert set(final) == set(teacher)  # no student tensor reached the server
    for name, value in fkd_simulated.shared_tensors().items():
        torch.testing.assert_close(final[name], value.detach(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the LLM's adapters

# The full pipeline's federated dual LoRA with text-only prompts (mode lora: no FKD run to
# read), small prompts and two rows per domain client, fp32 (deterministic and fast here).
LLM_CASE = Case(
    "llm-fed-art-office.toml",
    (
        "model.mode=lora",
        "model.history_items=3",
        "model.title_tokens=8",
        "model.llm.dtype=float32",
        "model.adapters.rank=4",
        "model.train.train_users=2",
        "model.train.batch_rows=1",
        "model.train.negatives=3",
        "federated.local.steps=2",
    ),
    rounds=1,
    clients=2,
    participants=2,
)


def test_flower_domain_nodes_match_the_simulator_on_llm_adapters(
    data_root: Path, tmp_path: Path
) -> None:
    """One SuperNode per domain trains the LLM's global and private LoRA: the round's loss
    and the global B the server averages are the simulator's, and only the global B
    reaches the server (the private adapters stay on their nodes, the frozen A is never
    sent)."""
    fed = _source(LLM_CASE, data_root).load().build_federation()
    assert isinstance(fed, FederatedLLM)
    fed.train_round()
    config = _run_config(LLM_CASE, data_root, tmp_path, **{"eval-role": ""})
    _simulate(config, num_supernodes=2, out=tmp_path)
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["clients"] == 2 and history["partitions"] == 2
    np.testing.assert_allclose(history["losses"], fed.losses, rtol=1e-5)
    for flower, sim in zip(history["rounds"], fed.server.records, strict=True):
        assert flower["participants"] == sim["participants"] == 2
        assert flower["bytes_up"] == sim["bytes_up"]
    final = load_file(tmp_path / "server.safetensors")
    own = fed.ownership
    assert set(final) == set(own.names(Owner.GLOBAL))
    assert final and all(".lora_B.global." in name for name in final)
    assert any(final[name].abs().sum() > 0 for name in final)  # the round moved B
    for name, value in fed.shared_tensors().items():
        torch.testing.assert_close(final[name], value.detach(), rtol=1e-5, atol=1e-6)


def test_llm_node_keeps_the_private_adapter_and_uploads_the_global_one(
    data_root: Path,
) -> None:
    """A domain node's train reply carries the global adapter's delta only; the client's
    new private adapter is in the node state, and the next round starts from it."""
    source = _source(LLM_CASE, data_root)
    fed = node_federation(source).fed
    assert isinstance(fed, FederatedLLM)
    own = fed.ownership
    context, content = _train_request(source, fed)
    reply = client_app(_message(content, "train"), context)
    assert not reply.has_error(), reply.error.reason
    data = reply.content.config_records["uploads"]["1"]
    assert isinstance(data, bytes)
    upload = ClientUpload.from_bytes(data)
    assert upload.client == int(fed.clients[1])
    assert set(upload.arrays) == set(own.names(Owner.GLOBAL))
    private = own.private_parameters()
    stored = context.state.array_records[PRIVATE_STATE]
    assert set(stored) == {f"{upload.client}/{name}" for name in private}
    trained_b = next(name for name in private if ".lora_B." in name)
    kept = stored[f"{upload.client}/{trained_b}"].numpy()
    assert np.abs(kept).sum() > 0  # the private B trained (it starts at 0)
    assert kept.tobytes() not in data
    # The next round loads the stored private adapter into the node's federation.
    content["run"] = ConfigRecord({"num-threads": 1, "round": 2, "clients": [1]})
    reply = client_app(_message(content, "train"), context)
    assert not reply.has_error(), reply.error.reason
    again = context.state.array_records[PRIVATE_STATE][f"{upload.client}/{trained_b}"].numpy()
    assert not np.array_equal(again, kept)  # trained on from the stored one, not from 0
