"""The trained LLM modes on real Art-Office data: dual LoRA adapters (global + private),
soft tokens from a real (small) FKD student, the ranking loss, checkpoints, peft's
save/load, and federated domain clients whose private adapter never leaves them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedllmrec.data.schema import RecDataset
from fedllmrec.data.sequences import observed_sequences
from fedllmrec.data.split import Split, leave_one_out
from fedllmrec.federated.adapters import FederatedLLM
from fedllmrec.federated.config import FederationConfig, LocalConfig
from fedllmrec.federated.ownership import Owner
from fedllmrec.models.fkd import FKDConfig, FKDRecommender
from fedllmrec.models.llm.adapters import (
    GLOBAL,
    PRIVATE,
    AdapterConfig,
    adapter_tensors,
    load_adapters,
    save_adapters,
)
from fedllmrec.models.llm.backbone import load_llm
from fedllmrec.models.llm.recommender import LLMRecConfig, LLMRecommender, LLMTrainConfig
from fedllmrec.models.llm.tuned import TunedLLMRecommender
from fedllmrec.semantics.protect import ProtectionConfig

SMALL = {"history_items": 3, "title_tokens": 8, "chunk": 8}


@pytest.fixture(scope="module")
def ao_split(art_office: RecDataset) -> Split:
    return leave_one_out(art_office)


@pytest.fixture(scope="module")
def student(ao_split: Split) -> FKDRecommender:
    """A small federated-style FKD student stack trained briefly on real windows."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((ao_split.dataset.n_items, 32)).astype(np.float32)
    rec = FKDRecommender(
        dim=8,
        max_len=10,
        n_heads=1,
        dropout=0.0,
        text_embeddings=vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
        fkd=FKDConfig(teacher=False, factual=0.0, counterfactual=0.0, alignment=0.5),
        protection=ProtectionConfig(sigma=0.1, replace_p=0.05, neighbours=3),
    )
    rec.train.n_negatives, rec.train.batch_size = 50, 64
    rec.setup(ao_split)
    tensors = rec.training_tensors()
    rec.set_training_tensors({k: v[:512] for k, v in tensors.items()})
    rec.train_epoch()
    return rec


def tuned(mode: str, **train: int) -> LLMRecConfig:
    rows = {"train_users": 3, "steps_per_epoch": 1, "batch_rows": 2, "negatives": 3} | train
    return LLMRecConfig(
        mode=mode,  # type: ignore[arg-type]
        train=LLMTrainConfig(lr=5e-3, **rows),
        adapters=AdapterConfig(rank=4),
        **SMALL,  # type: ignore[arg-type]
    )


def rows_of(split: Split, n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Test users with a test item in arts and their 1+7 candidates (test item first)."""
    ds = split.dataset
    test = split.rows("test")
    test = test[ds.item_domain[ds.item[test]] == 0][:n]
    users = ds.user[test].astype(np.int64)
    arts = np.flatnonzero(ds.item_domain == 0)
    rng = np.random.default_rng(1)
    touched = split.touched
    items = []
    for user, item in zip(users.tolist(), ds.item[test].tolist(), strict=True):
        pool = arts[~touched.contains(np.full(arts.shape, user), arts)]
        items.append([item, *rng.choice(pool, 7, replace=False).tolist()])
    return users, np.asarray(items, dtype=np.int64)


def test_fresh_adapters_score_as_the_frozen_model_and_own_their_tensors(
    ao_split: Split,
) -> None:
    """B starts at zero: the adapted model scores exactly as the frozen one; the global A
    is frozen under FFA-LoRA (trainable under naive); every tensor has its owner."""
    users, items = rows_of(ao_split)
    history = ao_split.observed("test")
    frozen = LLMRecommender(LLMRecConfig(**SMALL)).fit(ao_split)  # type: ignore[arg-type]
    adapted = LLMRecommender(tuned("lora")).fit(ao_split)
    np.testing.assert_allclose(
        adapted.score(users, items, history), frozen.score(users, items, history), atol=1e-5
    )
    assert adapted.model is not None
    for adapter in (GLOBAL, PRIVATE):
        tensors = adapter_tensors(adapted.model, adapter)
        assert len(tensors) == 2 * 4 * 30  # A and B on q, k, v, o of 30 layers
    assert not any(p.requires_grad for n, p in adapter_tensors(adapted.model, GLOBAL).items()
                   if ".lora_A." in n)  # fmt: skip
    assert all(p.requires_grad for p in adapter_tensors(adapted.model, PRIVATE).values())
    naive = LLMRecommender(
        LLMRecConfig(mode="lora", adapters=AdapterConfig(rank=4, aggregation="naive"), **SMALL)  # type: ignore[arg-type]
    ).fit(ao_split)
    assert naive.model is not None
    assert all(p.requires_grad for p in adapter_tensors(naive.model, GLOBAL).values())


def test_training_lowers_the_ranking_loss_and_a_checkpoint_resumes_it(
    ao_split: Split, tmp_path: Path
) -> None:
    """A few steps on one row lower its loss (it can fit); the state dict restores the
    exact scores in a fresh model and resumes training exactly (optimiser and draws); peft's
    save_pretrained / from_pretrained restore the scores too."""
    rec = TunedLLMRecommender(tuned("lora", train_users=1, batch_rows=1)).setup(ao_split)
    assert rec.rows is not None and len(rec.rows) == 2  # one user per domain, one row each
    rows = np.arange(1)
    first = float(rec.row_loss(0, np.random.default_rng(5)).detach())
    assert rec.optimizer is not None
    for _ in range(4):
        rec.train_steps(rows, 1, rec.optimizer, np.random.default_rng(5))
    assert float(rec.row_loss(0, np.random.default_rng(5)).detach()) < first
    users, items = rows_of(ao_split)
    history = ao_split.observed("test")
    scores = rec.score(users, items, history)
    state = rec.state_dict()
    again = TunedLLMRecommender(tuned("lora", train_users=1, batch_rows=1)).setup(ao_split)
    assert not np.array_equal(again.score(users, items, history), scores)
    again.load_state_dict(state)
    np.testing.assert_array_equal(again.score(users, items, history), scores)
    assert again.train_epoch() == rec.train_epoch()  # the same draws, the same Adam state
    scores = rec.score(users, items, history)  # after that epoch: what is saved next
    assert rec.model is not None
    save_adapters(rec.model, tmp_path / "adapters")  # type: ignore[arg-type]
    assert (tmp_path / "adapters" / GLOBAL / "adapter_model.safetensors").is_file()
    assert (tmp_path / "adapters" / PRIVATE / "adapter_model.safetensors").is_file()
    base, _ = load_llm(rec.config.llm)
    reloaded = LLMRecommender(LLMRecConfig(**SMALL)).fit(ao_split)  # type: ignore[arg-type]
    reloaded.model = load_adapters(base, tmp_path / "adapters", rec.config.adapters)
    np.testing.assert_array_equal(reloaded.score(users, items, history), scores)


def test_soft_tokens_read_the_students_vectors_and_train(
    ao_split: Split, student: FKDRecommender
) -> None:
    """Item tokens come from each item's own domain slot of the student's vectors; a soft
    prompt's placeholders are overwritten; the projectors get gradients from the loss."""
    rec = TunedLLMRecommender(tuned("soft"), source=student).setup(ao_split)
    soft = rec.soft
    assert soft is not None and rec.prompts is not None and rec.model is not None
    features = student.item_vectors()
    ds = ao_split.dataset
    office = int(np.flatnonzero(ds.item_domain == 1)[5])
    slot, local = int(soft.slot[office]), int(soft.local_index[office])
    assert slot == 1 and torch.equal(soft.features[slot, local], features[office])
    # The user state and ID vectors are what the student scores with (its score is their
    # dot product: no item bias in this student).
    users, items = rows_of(ao_split)
    history = ao_split.observed("test")
    seqs = [s[ds.item_domain[s] == 0] for s in observed_sequences(ao_split, history, users)]
    states = student.user_states(seqs, np.zeros(len(seqs), dtype=np.int64))
    dots = (states[:, None, :] * features[torch.from_numpy(items), :8]).sum(-1)
    np.testing.assert_allclose(dots.numpy(), student.score(users, items, history), atol=1e-5)
    assert not any(p.requires_grad for p in rec.model.parameters())  # soft: the LLM frozen
    loss = rec.row_loss(0, np.random.default_rng(0))
    loss.backward()
    grads = [p.grad for p in soft.parameters()]
    assert all(g is not None and bool(g.abs().sum() > 0) for g in grads)
    prompt = rec.prompts.encode([1, 2], [3, 4])
    plain = rec.model.get_input_embeddings()(prompt.ids)
    injected = soft.inject(plain, prompt, torch.zeros(8))
    changed = (injected != plain).any(dim=1)
    assert torch.equal(torch.nonzero(changed).flatten(), prompt.soft_positions)
    norms = injected[prompt.soft_positions].norm(dim=1)
    np.testing.assert_allclose(norms.detach().numpy(), soft.token_norm, rtol=1e-4)


def test_federated_llm_clients_refuse_a_gpu_device() -> None:
    """The seam serialises CPU tensors: a federated LLM says so before loading anything."""
    import dataclasses

    from fedllmrec.errors import FedLLMRecError
    from fedllmrec.models.llm.backbone import LLMConfig

    config = dataclasses.replace(tuned("lora"), llm=LLMConfig(device="cuda"))
    federation = FederationConfig(partition="domain", engine="loop")
    fed = FederatedLLM(TunedLLMRecommender(config), federation)
    with pytest.raises(FedLLMRecError, match=r"model\.llm\.device 'cuda': clients run on the CPU"):
        fed.check_options()


def test_domain_clients_keep_their_private_adapter_and_send_the_global_one(
    ao_split: Split,
) -> None:
    """One round with the two domain clients: each trains its own private adapter (kept,
    never in its upload: no 8-byte run of it is on the wire), the server's global B moves
    by the example-weighted mean of the uploaded deltas, and the frozen A never moves."""
    from fedllmrec.federated.uploads import Uploads

    fed = FederatedLLM(
        TunedLLMRecommender(tuned("lora", train_users=2)),
        FederationConfig(
            partition="domain",
            # SGD: Adam's first step is about +-lr in every coordinate, in the global and the
            # private adapter alike, so their bytes would match by construction, not by a leak.
            local=LocalConfig(steps=2, lr=0.5, optimizer="sgd"),
            engine="loop",
            seed=0,
        ),
    ).setup(ao_split)
    own = fed.ownership
    assert fed.n_clients == 2
    private = own.private_parameters()
    assert private and all(f".{PRIVATE}." in n for n in private)
    assert all(".lora_B.global." in n for n in own.names(Owner.GLOBAL))
    assert not any(own[n].owner is not Owner.FROZEN for n in own if ".lora_A.global." in n)
    frozen_a = next(n for n in own if ".lora_A.global." in n)
    a_before = fed.tensors()[frozen_a].detach().clone()
    plan = fed.plan_round()
    parts: list[Uploads] = []
    fed.local_training(plan.survivors, plan.number, plan.sent, parts.append)  # type: ignore[arg-type]
    assert len(parts) == 2
    kept = [fed.private_state(int(c)) for c in fed.clients]
    for name in [n for n in private if ".lora_B." in n][:8]:  # (A's first gradient is 0: B = 0)
        assert kept[0][name].abs().sum() > 0  # each client trained its own
        assert not torch.equal(kept[0][name], kept[1][name])
    for index, (part, client) in enumerate(zip(parts, fed.clients.tolist(), strict=True)):
        assert set(part.deltas) == set(own.names(Owner.GLOBAL))  # what the seam carries
        wire = part.client(0, client, own).to_bytes()
        for name in private:
            raw = kept[index][name].contiguous().numpy().tobytes()
            for i in range(0, len(raw) - 8, 4 * 97):  # a spread of 8-byte windows
                window = raw[i : i + 8]
                if window.strip(b"\x00"):
                    assert window not in wire
    # The server combines the two uploads (FedAvg, example-weighted) into the live tensors.
    aggregator = fed.new_aggregator(plan.number)
    for part in parts:
        aggregator.add(part)
    fed.finish_round(plan, aggregator)
    live = fed.shared_tensors()
    weights = torch.tensor([float(p.n_examples[0]) for p in parts], dtype=torch.float64)
    weights = (weights / weights.sum()).float()
    name = own.names(Owner.GLOBAL)[0]
    expected = plan.sent[name] + sum(
        w * p.deltas[name][0] for w, p in zip(weights, parts, strict=True)
    )
    torch.testing.assert_close(live[name].detach(), expected, rtol=1e-5, atol=1e-7)
    assert torch.equal(fed.tensors()[frozen_a], a_before)
    # Each row is scored with its own domain's private adapter; a checkpoint restores all.
    arts_users, arts = rows_of(ao_split, 1)
    history = ao_split.observed("test")
    scores = fed.score(arts_users, arts, history)
    office = {n: v + 0.1 for n, v in fed.private_state(1).items()}
    fed.load_state_dict(fed.state_dict() | {"private": {"0": kept[0], "1": office}})
    np.testing.assert_array_equal(fed.score(arts_users, arts, history), scores)
    arts_moved = {n: v + 0.1 for n, v in kept[0].items()}
    fed.load_state_dict(fed.state_dict() | {"private": {"0": arts_moved, "1": office}})
    assert not np.array_equal(fed.score(arts_users, arts, history), scores)
    fed.load_state_dict(fed.state_dict() | {"private": {"0": kept[0], "1": office}})
    state = fed.state_dict()
    again = FederatedLLM(TunedLLMRecommender(tuned("lora", train_users=2)), fed.federation).setup(
        ao_split
    )
    again.load_state_dict(state)
    np.testing.assert_array_equal(again.score(arts_users, arts, history), scores)
    assert torch.equal(again.private_state(1)[private[-1]], office[private[-1]])


def test_the_adapter_audit_reads_the_trained_targets_from_an_upload(ao_split: Split) -> None:
    """The server's attack on a domain client's adapter upload (audits/adapters.py): with
    a zero upload (lr 0) every title's rise is 0 and the AUC is exactly chance; a trained
    upload ranks the targets it trained on above items the client never had."""
    from fedllmrec.audits.adapters import AdapterAuditConfig, adapter_item_inference

    def audit(lr: float) -> dict[str, dict[str, float]]:
        fed = FederatedLLM(
            TunedLLMRecommender(tuned("lora", train_users=16, batch_rows=2)),
            FederationConfig(
                partition="domain",
                local=LocalConfig(steps=2, lr=lr, optimizer="adam"),
                engine="loop",
                seed=0,
            ),
        ).setup(ao_split)
        report = adapter_item_inference(fed, AdapterAuditConfig(members=16, non_members=4))
        assert report["round"] == 1
        return report["domains"]

    trained = audit(5e-3)
    assert set(trained) == {"arts", "office"}
    for domain, result in trained.items():
        assert 0 < result["members"] <= 4 and result["non_members"] == 4 * result["members"]
        # Measured 0.83 / 0.95 (arts / office) from the own upload, 0.86 / 0.94 from the
        # aggregate, on 3-4 members each: the targets' titles rise; the run is seeded.
        assert result["upload"] > 0.7 and result["aggregate"] > 0.7, (domain, result)
