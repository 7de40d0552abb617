"""The audits on real ml-100k and KuaiSAR-R clients: leaks found, noise at chance.

Small federations (tiny MRFF, a few hundred clients at most, one round) keep this file
well under a minute; the measured numbers on the full recipes are in docs/privacy.md.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedllmrec.apps.cli import app
from fedllmrec.audits import (
    attribute_inference,
    attribute_targets,
    code_recovery,
    itemset_reconstruction,
    replay_server_view,
)
from fedllmrec.audits.report import training_items
from fedllmrec.audits.views import ServerView, item_tables
from fedllmrec.data.prepare import Prepared
from fedllmrec.data.schema import RecDataset
from fedllmrec.data.split import leave_one_out
from fedllmrec.errors import FedLLMRecError
from fedllmrec.federated.config import FederationConfig, LocalConfig, PrivacyConfig
from fedllmrec.federated.simulator import FederatedRecommender
from fedllmrec.federated.uploads import Uploads, UploadTransform
from fedllmrec.models.click import ClickRecommender
from fedllmrec.recipes.recipe import load_recipe

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "mrff-fed-ml100k.toml"
N_CLIENTS = 200
TINY = [
    "model.dim=16",
    "model.n_layers=1",
    "model.max_len=20",
    "federated.engine=vmap",  # upload transforms need each client's upload
    f"federated.max_clients={N_CLIENTS}",
]


def federation(
    prepared: Prepared,
    transforms: tuple[UploadTransform, ...] = (),
    privacy: PrivacyConfig | None = None,
) -> FederatedRecommender:
    """The ml-100k federated MRFF recipe, tiny, on the first clients, with ``transforms``."""
    torch.manual_seed(0)  # the replay's dropout draws
    built = load_recipe(RECIPE, TINY).build_model(prepared)
    assert isinstance(built, FederatedRecommender)
    config = built.federation if privacy is None else replace(built.federation, privacy=privacy)
    return FederatedRecommender(built.recommender, config, transforms).setup(prepared.split)


def gender_auc(view: ServerView, fed: FederatedRecommender, dataset: RecDataset) -> float:
    labels = attribute_targets(dataset)["gender"][fed.clients[view.positions]]
    return float(attribute_inference(view.features("first"), labels)["value"])


def item_set(view: ServerView, fed: FederatedRecommender, prepared: Prepared) -> dict:
    (table,) = item_tables(fed)
    histories = training_items(prepared.split, fed.clients[view.positions])
    return itemset_reconstruction(
        view.first_norms[table][:, 1:], histories, view.aggregate()[table][1:]
    )


class LeakAttributes:
    """Deliberately leaky: writes each client's raw private attribute row into a delta."""

    def __init__(self, dataset: RecDataset) -> None:
        targets = attribute_targets(dataset)
        self.rows = torch.tensor(np.stack([targets["gender"], targets["age4"]], 1)).float()
        self.users = np.arange(dataset.n_users)  # position -> user: set once the population is

    def __call__(self, uploads: Uploads, round_: int) -> Uploads:
        deltas = dict(uploads.deltas)
        bias = deltas["model.ln_out.bias"].clone()
        bias[:, :2] += 10.0 * self.rows[self.users[uploads.positions]]
        deltas["model.ln_out.bias"] = bias
        return replace(uploads, deltas=deltas)


class PureNoise:
    """Replaces every upload by seeded noise: deltas, routing and example counts."""

    def __call__(self, uploads: Uploads, round_: int) -> Uploads:
        gen = torch.Generator().manual_seed(int(uploads.positions[0]) * 1000 + round_)
        deltas = {k: 1e-3 * torch.randn(v.shape, generator=gen) for k, v in uploads.deltas.items()}
        routing = torch.randint(0, 4, uploads.routing.shape, generator=gen)
        ones = torch.ones_like(uploads.n_examples)
        return replace(uploads, deltas=deltas, routing=routing, n_examples=ones)


def test_round_one_uploads_give_away_every_client_item_set(ml100k_prepared: Prepared) -> None:
    fed = federation(ml100k_prepared)
    view = replay_server_view(fed, 1)
    result = item_set(view, fed, ml100k_prepared)
    # The unprotected item-table delta: a client's items are its largest rows.
    assert result["f1"] > 0.95 and result["auc"] > 0.99
    assert result["f1"] > result["baseline"] + 0.3  # far beyond what popularity tells
    assert view.per_client == [True]
    # The header says how many: a client's example count + 1 is its history length.
    examples = np.rint(np.expm1(view.header()["examples"][:, 0]))
    sizes = [h.shape[0] for h in training_items(ml100k_prepared.split, fed.clients)]
    assert np.array_equal(examples + 1, sizes)


def test_a_leaky_upload_is_detected(ml100k_prepared: Prepared) -> None:
    leak = LeakAttributes(ml100k_prepared.dataset)
    fed = federation(ml100k_prepared, (leak,))
    leak.users = fed.clients
    view = replay_server_view(fed, 1)
    assert gender_auc(view, fed, ml100k_prepared.dataset) > 0.95


def test_pure_noise_uploads_report_chance(ml100k_prepared: Prepared) -> None:
    fed = federation(ml100k_prepared, (PureNoise(),))
    view = replay_server_view(fed, 1)
    # 200 users: a chance AUC's standard error is about 0.04.
    assert abs(gender_auc(view, fed, ml100k_prepared.dataset) - 0.5) < 0.15
    result = item_set(view, fed, ml100k_prepared)
    assert abs(result["auc"] - 0.5) < 0.03  # averaged over 200 clients' rankings
    assert result["f1"] < 2 * result["random_f1"] + 0.02


def test_secure_aggregation_leaves_every_client_the_aggregate(ml100k_prepared: Prepared) -> None:
    fed = federation(ml100k_prepared, privacy=PrivacyConfig(secure_aggregation=True))
    view = replay_server_view(fed, 1)
    assert view.per_client == [False] and view.present.all()
    result = item_set(view, fed, ml100k_prepared)
    assert result["f1"] == result["baseline"] and result["auc"] == result["baseline_auc"]


@pytest.mark.parametrize("tables", ["shared", "secure_only"])
def test_kuaisar_feature_deltas_give_away_every_user_code(kuaisar: RecDataset, tables: str) -> None:
    features = ["onehot_feat1", "onehot_feat2", "search_active_level", "reco_active_level"]
    model = ClickRecommender(
        architecture="mrff", dim=8, max_len=12, item_features=["item_type"], user_features=features
    )
    config = FederationConfig(
        engine="vmap",
        local=LocalConfig(steps=1, lr=0.5, optimizer="sgd"),
        max_clients=64,
        privacy=PrivacyConfig(attribute_tables=tables),  # type: ignore[arg-type]
    )
    fed = FederatedRecommender(model, config).setup(leave_one_out(kuaisar))
    view = replay_server_view(fed, 1)
    codes = fed.net.tensors()["model.user_features"][torch.from_numpy(fed.clients)].numpy()
    for f in range(len(features)):
        result = code_recovery(view.first_norms[f"model.user_feature_embs.{f}.weight"], codes[:, f])
        if tables == "shared":  # the single non-zero row of the delta is the user's code
            assert result["value"] == 1.0 and result["baseline"] < 1.0
        else:  # nothing sent outside a secure sum: the attack falls back to the majority
            assert result["value"] == result["baseline"]


def test_cli_audit_writes_the_report(ml100k_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    small = [*TINY, "federated.max_clients=60", "trainer.max_epochs=1", "eval.modes=['full']"]
    sets = [x for s in small for x in ("--set", s)]
    common = ["--data-dir", str(ml100k_root), "--threads", "1"]
    trained = CliRunner().invoke(app, ["train", str(RECIPE), "--out", str(run), *sets, *common])
    assert trained.exit_code == 0, trained.output
    # Every client still trains; attacking 40 on one attribute keeps the test short.
    attack = ["--max-users", "40", "--mia-clients", "30", "--attribute", "gender"]
    audited = CliRunner().invoke(app, ["audit", str(run), *attack, *common])
    assert audited.exit_code == 0, audited.output
    report = json.loads((run / "audit.json").read_text())
    assert report["users_attacked"] == 40 and report["engine_replayed"] == "vmap"
    assert report["itemset"]["round 1"]["f1"] > 0.95
    assert report["attributes"].keys() == {"gender"}
    views = report["attributes"]["gender"]
    assert {"server, round 1", "routing, round 1", "private parameters"} <= views.keys()
    assert all(0.0 <= r["value"] <= 1.0 and r["baseline"] == 0.5 for r in views.values())
    membership = report["membership"]
    assert membership["n_users"] == 30 and membership["value"] > membership["baseline"]
    assert "membership (IMIA)" in audited.output


def test_cli_audit_refuses_what_is_no_federated_run(tmp_path: Path) -> None:
    missing = CliRunner().invoke(app, ["audit", str(tmp_path)])
    assert isinstance(missing.exception, FedLLMRecError)
    assert "no metrics.json" in str(missing.exception)
    config = {"recipe": str(REPO / "recipes" / "sasrec-ml100k.toml"), "overrides": []}
    (tmp_path / "metrics.json").write_text(json.dumps({"config": config}))
    central = CliRunner().invoke(app, ["audit", str(tmp_path)])
    assert isinstance(central.exception, FedLLMRecError)
    assert "not a federated run" in str(central.exception)
