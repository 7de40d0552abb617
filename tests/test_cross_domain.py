"""Cross-domain FKD: protected shared semantics, the teacher and students, domain clients.

Real Art-Office interactions and domains; the item vectors are random unit vectors
(embedding 38k titles takes minutes), so nothing here depends on the encoder.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedllmrec.audits.domain import domain_popularity, popularity_inference
from fedllmrec.audits.views import (
    item_projector,
    projected_norms,
    replay_server_view,
    text_adaptors,
)
from fedllmrec.data.prepare import Prepared
from fedllmrec.data.schema import RecDataset
from fedllmrec.data.split import Split, leave_one_out
from fedllmrec.federated.config import FederationConfig, LocalConfig, PrivacyConfig
from fedllmrec.federated.ownership import Owner
from fedllmrec.federated.simulator import FederatedRecommender
from fedllmrec.federated.uploads import Part, Uploads
from fedllmrec.models.base import scoring_session
from fedllmrec.models.fkd import FKDConfig, FKDRecommender, distillation
from fedllmrec.models.negatives import PopularityProposal
from fedllmrec.semantics.protect import (
    ProtectionConfig,
    nearest_rows,
    obfuscation,
    share_semantics,
)


@pytest.fixture(scope="module")
def ao_split(art_office: RecDataset) -> Split:
    return leave_one_out(art_office)


@pytest.fixture(scope="module")
def vectors(art_office: RecDataset) -> np.ndarray:
    rng = np.random.default_rng(0)
    v = rng.standard_normal((art_office.n_items, 32)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def small_fkd(vectors: np.ndarray, **fkd: object) -> FKDRecommender:
    rec = FKDRecommender(
        dim=8,
        max_len=10,
        n_heads=1,
        dropout=0.0,
        text_embeddings=vectors,
        fkd=FKDConfig(**fkd),  # type: ignore[arg-type]
        protection=ProtectionConfig(sigma=0.1, replace_p=0.05, neighbours=3),
    )
    rec.train.n_negatives, rec.train.batch_size = 50, 64
    return rec


FULL = {"factual": 1.0, "counterfactual": 1.0, "alignment": 0.5, "item_bias": True}


def some_windows(rec: FKDRecommender, n: int = 256) -> None:
    """Keep ``n`` windows of each domain (a quick epoch)."""
    assert rec.split is not None
    tensors = rec.training_tensors()
    domain = rec.split.dataset.item_domain[tensors["seq"][:, -1].numpy() - 1]
    rows = np.concatenate([np.flatnonzero(domain == d)[:n] for d in (0, 1)])
    rec.set_training_tensors({k: v[torch.from_numpy(rows)] for k, v in tensors.items()})


# ---------------------------------------------------------------- protected semantics


def test_no_shared_vector_equals_an_original(art_office: RecDataset, vectors: np.ndarray) -> None:
    shared = share_semantics(vectors, art_office.item_domain, ProtectionConfig(0.05, 0.3, 10))
    assert shared.vectors.shape == vectors.shape
    np.testing.assert_allclose(np.linalg.norm(shared.vectors, axis=1), 1.0, rtol=1e-5)
    # No shared row equals any original row, its own or another item's.
    originals = {row.tobytes() for row in vectors}
    assert not any(row.tobytes() in originals for row in shared.vectors)
    assert 0.25 < shared.replaced.mean() < 0.35
    report = obfuscation(vectors, shared)
    assert 0.0 < report.mean_cosine < 1.0 and 0.0 <= report.reidentification < 1.0


def test_a_domain_shares_a_copy_of_its_own_items_only(
    art_office: RecDataset, vectors: np.ndarray
) -> None:
    """Domain d's copy depends on domain d's vectors and seed only; replacements come
    from the same domain's nearest neighbours."""
    config = ProtectionConfig(sigma=0.0, replace_p=0.5, neighbours=3, seed=4)
    some = np.r_[0:3000, 20_000:23_000]  # 3,000 items of each domain
    domain, vectors = art_office.item_domain[some], vectors[some]
    shared = share_semantics(vectors, domain, config)
    changed = vectors.copy()
    changed[domain == 1] = np.roll(changed[domain == 1], 1, axis=0)
    other = share_semantics(changed, domain, config)
    arts = domain == 0
    np.testing.assert_array_equal(shared.vectors[arts], other.vectors[arts])
    # With no noise a replaced row is exactly one of its 3 nearest same-domain items.
    rows = np.flatnonzero(arts & shared.replaced)[:50]
    arts_ids = np.flatnonzero(arts)
    local = np.searchsorted(arts_ids, rows)
    near = nearest_rows(vectors[rows], vectors[arts_ids], 3, exclude=local)
    for r, candidates in zip(rows, near, strict=True):
        matches = [c for c in candidates if np.array_equal(shared.vectors[r], vectors[arts_ids][c])]
        assert matches, "a replacement is one of the item's nearest neighbours"
    kept = arts & ~shared.replaced
    np.testing.assert_array_equal(shared.vectors[kept], vectors[kept])  # sigma 0: unchanged
    none = obfuscation(vectors, share_semantics(vectors, domain, ProtectionConfig(0.0, 0.0)))
    assert none.mean_cosine == pytest.approx(1.0) and none.reidentification == 1.0


def test_counterparts_come_from_the_other_domains_shared_vectors(
    art_office: RecDataset, vectors: np.ndarray
) -> None:
    shared = share_semantics(vectors, art_office.item_domain, ProtectionConfig(0.1, 0.1))
    near = shared.counterparts()
    domain = art_office.item_domain
    assert (domain[near] != domain).all()
    for i in (0, 5, 20_000, 38_000):
        other = np.flatnonzero(domain != domain[i])
        best = other[np.argmax(shared.vectors[other] @ shared.vectors[i])]
        assert near[i] == best  # by the protected copies, not the originals


# ---------------------------------------------------------------- FKD model


def test_kd_is_zero_when_teacher_equals_student() -> None:
    logits = torch.randn(7, 11)
    logits[:, 3] = -1e9  # an excluded candidate
    assert distillation(logits, logits.clone(), 2.0).item() == 0.0
    assert distillation(logits, torch.randn(7, 11), 2.0).item() > 0.0


def test_fkd_shares_only_the_protected_copy(ao_split: Split, vectors: np.ndarray) -> None:
    rec = small_fkd(vectors, **FULL).setup(ao_split)
    assert rec.semantics is not None
    shared = torch.from_numpy(rec.semantics.vectors)
    net = rec.net
    assert net.teacher is not None and net.students is not None
    texts = {
        name: t
        for name, t in dict(net.named_buffers()).items()
        if t.dim() == 2 and t.shape[1] == vectors.shape[1]
    }
    assert set(texts) == {"teacher.items.text", "students.shared"}
    for t in texts.values():
        torch.testing.assert_close(t[1:], shared)  # row 0 is padding
    originals = {row.tobytes() for row in vectors}
    assert not any(row.numpy().tobytes() in originals for row in shared)
    # The counterfactual swap reads the shared copy's nearest other-domain items.
    counterpart = net.students.counterpart[1:].numpy() - 1
    np.testing.assert_array_equal(counterpart, rec.semantics.counterparts())


def test_a_swap_puts_only_other_domain_items_in(ao_split: Split, vectors: np.ndarray) -> None:
    rec = small_fkd(vectors, **FULL).setup(ao_split)
    seq = rec.training_tensors()["seq"][:200, :-1]
    swapped = rec.swap(seq)
    changed = swapped != seq
    domain = torch.from_numpy(np.concatenate([[0], ao_split.dataset.item_domain]))
    assert changed.any()
    assert (domain[swapped[changed]] != domain[seq[changed]]).all()
    assert (swapped[seq == 0] == 0).all()  # padding stays padding
    rate = changed.sum() / (seq != 0).sum()
    assert 0.2 < float(rate) < 0.4  # swap_fraction 0.3


def test_fkd_trains_and_scores_each_domain_with_its_student(
    ao_split: Split, vectors: np.ndarray
) -> None:
    rec = small_fkd(vectors, **FULL).setup(ao_split)
    some_windows(rec)
    ids_before = rec.net.students.id_emb.detach().clone()  # type: ignore[union-attr]
    losses = [rec.train_epoch() for _ in range(2)]
    assert all(np.isfinite(losses))
    out = rec.batch_loss({k: v[:64] for k, v in rec.training_tensors().items()})
    assert out.aux.item() > 0.0  # teacher task + KD + alignment
    students = rec.net.students
    assert students is not None and students.n_slots == 2
    assert not torch.equal(students.id_emb.detach(), ids_before)
    # Scores of arts candidates read the arts student and the arts history only.
    ds = ao_split.dataset
    history = ao_split.observed("test")
    users = np.arange(5)
    arts = np.flatnonzero(ds.item_domain == 0)[:30][None].repeat(5, 0)
    scores = rec.score(users, arts, history)
    # A broadcast catalogue (the full ranking's) is gathered by column: the same scores.
    catalogue = np.broadcast_to(arts[0], arts.shape)
    np.testing.assert_array_equal(rec.score(users, catalogue, history), scores)
    rec.fkd.score_with = "teacher"
    np.testing.assert_array_equal(
        rec.score(users, catalogue, history), rec.score(users, arts, history)
    )
    rec.fkd.score_with = "student"
    with torch.no_grad():
        students.id_emb[1] += 1.0  # the office student changes: arts scores do not
    np.testing.assert_array_equal(rec.score(users, arts, history), scores)
    keys = history.keys
    arts_only = keys[ds.item_domain[keys % history.n_items] == 0]
    local = type(history)(arts_only // history.n_items, arts_only % history.n_items, ds.n_items)
    np.testing.assert_array_equal(rec.score(users, arts, local), scores)
    # The student's per-item bias trained, and it adds to exactly its item's score.
    bias = students.id_bias
    assert bias is not None and bool((bias.detach()[0] != 0).any())
    with torch.no_grad():
        bias[0, students.local_index[arts[0, 3] + 1]] += 2.0
    shifted = rec.score(users, arts, history)
    np.testing.assert_allclose(shifted[:, 3] - scores[:, 3], 2.0, rtol=1e-5)
    np.testing.assert_array_equal(np.delete(shifted, 3, 1), np.delete(scores, 3, 1))


def test_a_scoring_session_encodes_each_user_once_and_scores_alike(
    ao_split: Split, vectors: np.ndarray
) -> None:
    """An evaluation's modes score the same users: within a session their states are
    encoded once, and every score equals the one computed without the session."""
    rec = small_fkd(vectors, **FULL).setup(ao_split)
    some_windows(rec)
    rec.train_epoch()
    ds = ao_split.dataset
    history = ao_split.observed("test")
    assert ao_split.observed("test") is history  # one object per role: the memo's key
    arts = np.flatnonzero(ds.item_domain == 0)[:30]
    office = np.flatnonzero(ds.item_domain == 1)[:30]
    # User 1 twice in arts; users 3 and 4 in both domains (a state per domain, one encoder
    # for the teacher: the memo must tell them apart).
    users = np.array([3, 1, 4, 1, 5, 9, 2, 6, 3, 4])
    domains = np.array([0, 0, 1, 0, 0, 0, 1, 1, 1, 0])
    items = np.stack([office if d else arts for d in domains])
    students = rec.net.students
    assert students is not None
    encoded: list[int] = []
    states = students.states

    def counting(seq: torch.Tensor, vectors: torch.Tensor, slot: int) -> torch.Tensor:
        encoded.append(seq.shape[0])
        return states(seq, vectors, slot)

    for score_with in ("student", "teacher"):
        rec.fkd.score_with = score_with
        plain = rec.score(users, items, history)
        with scoring_session(rec):
            students.states = counting  # type: ignore[method-assign]
            first = rec.score(users, items, history)
            again = rec.score(users[::-1], items[::-1], history)  # same users, new batch
            students.states = states  # type: ignore[method-assign]
        np.testing.assert_array_equal(first, plain)
        # Another batch order: the score product may round a row differently (1 ulp).
        np.testing.assert_allclose(again, plain[::-1], rtol=1e-6, atol=1e-6)
        if score_with == "student":  # 9 distinct (user, domain) pairs, encoded once each
            assert sum(encoded) == len(set(zip(users.tolist(), domains.tolist(), strict=True)))
    assert rec.score(users, items, history).shape == items.shape  # the session closed


def test_popularity_draws_stay_in_the_targets_domain(art_office: RecDataset) -> None:
    domain = art_office.item_domain
    targets = np.flatnonzero(domain == 1)[:500] + 1
    proposal = PopularityProposal.from_targets(
        np.repeat(targets, 3), domain, alpha=1.0, uniform_share=0.2
    )
    draws = proposal.draw(np.random.default_rng(0), 4000, np.array([1])).numpy()
    assert (domain[draws - 1] == 1).all()
    # 80% from the 500 trained items, 20% uniform over the domain's catalogue.
    trained = np.isin(draws, targets).mean()
    assert 0.78 < trained < 0.84
    q = proposal.log_q.exp().numpy()
    assert q[np.flatnonzero(domain == 1) + 1].sum() == pytest.approx(1.0, rel=1e-4)


# ---------------------------------------------------------------- domain clients


def test_domain_clients_keep_their_students_and_send_the_teacher(
    ao_split: Split, vectors: np.ndarray
) -> None:
    local = LocalConfig(steps=2, lr=1e-3, batch_size=32)
    config = FederationConfig(partition="domain", engine="loop", local=local)
    fed = FederatedRecommender(small_fkd(vectors, **FULL), config).setup(ao_split)
    own = fed.ownership
    private = own.names(Owner.PRIVATE)
    assert private and all(n.startswith("model.students.") for n in private)
    assert own.n_users == 2  # one slot per domain
    shared = own.names(Owner.GLOBAL)
    assert shared and all(n.startswith("model.teacher.") for n in shared)
    before = {n: t.detach().clone() for n, t in fed.net.named_parameters()}
    parts: list[Part] = []
    fed.local_training(np.array([0]), 1, fed.shared_tensors(), fed.server.load, parts.append)
    (part,) = parts
    assert isinstance(part, Uploads)
    assert set(part.deltas) == set(shared)  # no student tensor is in the upload
    wire = part.client(0, 0, own).to_bytes()
    after = dict(fed.net.named_parameters())
    checked = 0
    for name in own.private_parameters():
        assert torch.equal(after[name][1], before[name][1]), "office's slot is untouched"
        row = after[name][0].detach().contiguous().numpy().tobytes()
        for lo in range(0, min(len(row), 4096) - 8, 4):
            window = row[lo : lo + 8]
            if window.strip(b"\x00"):
                assert window not in wire
                checked += 1
    assert checked > 1000
    assert any(not torch.equal(after[n][0], before[n][0]) for n in own.private_parameters())


def test_fkd_refuses_the_vmap_engine(ao_split: Split, vectors: np.ndarray) -> None:
    config = FederationConfig(partition="domain", engine="vmap")
    with pytest.raises(Exception, match="client engines"):
        FederatedRecommender(small_fkd(vectors), config).setup(ao_split)


# ---------------------------------------------------------------- options the table uses


def test_a_user_subset_keeps_whole_users(art_office: RecDataset) -> None:
    from fedllmrec.data.split import SplitConfig

    split = leave_one_out(art_office, SplitConfig(max_users=300, users_seed=1))
    users = np.unique(split.dataset.user)
    assert users.shape[0] == 300
    counts = np.bincount(art_office.user, minlength=art_office.n_users)
    assert len(split.dataset.user) == counts[users].sum()  # every interaction of each user
    again = leave_one_out(art_office, SplitConfig(max_users=300, users_seed=1))
    np.testing.assert_array_equal(np.unique(again.dataset.user), users)
    assert SplitConfig().to_dict() == {  # splits prepared before the option keep their key
        "min_user_interactions": 0,
        "min_item_interactions": 0,
        "max_history": None,
        "per_domain": True,
    }


def test_length_buckets_draw_steps_of_similar_windows(ao_split: Split, vectors: np.ndarray) -> None:
    local = LocalConfig(steps=6, lr=1e-3, batch_size=32, length_buckets=6)
    config = FederationConfig(partition="domain", engine="loop", local=local)
    fed = FederatedRecommender(small_fkd(vectors), config).setup(ao_split)
    population = fed.population
    steps = population.windows(np.array([0]), 3)
    assert len(steps) == 6 and all(len(step) == 1 for step in steps)
    spread = [np.ptp(population.window_length[step[0]]) for step in steps]
    drawn = [np.ptp(population.window_length[r]) for r in np.array_split(population.rows[0], 50)]
    assert np.mean(spread) < np.mean(drawn) / 2  # similar lengths within a step
    population.windows(np.array([0]), 4)  # another round, then round 3 drawn afresh
    again = population.windows(np.array([0]), 3)
    for a, b in zip(steps, again, strict=True):
        np.testing.assert_array_equal(a[0], b[0])  # seeded by (seed, round, client)


def test_the_1_plus_19_mode_ranks_the_first_19_saved_negatives(ml100k_prepared: Prepared) -> None:
    from fedllmrec.eval.evaluators import RankingEvaluator
    from fedllmrec.eval.ranking import evaluate_ranking
    from fedllmrec.models.baselines import Popularity

    model = Popularity().fit(ml100k_prepared.split)
    out = RankingEvaluator(ml100k_prepared, modes=["sampled-19"], ks=[1, 5])(model, "test")
    direct = evaluate_ranking(model, ml100k_prepared, role="test", n_negatives=19, ks=[1, 5])
    assert out["sampled-19/HR@1"] == direct["metrics"]["HR@1"]
    assert out["sampled-19/NDCG@5"] == direct["metrics"]["NDCG@5"]
    assert 0.05 < out["sampled-19/HR@1"] < 1.0  # popularity beats random (1 in 20)


@pytest.mark.parametrize("secure", [False, True])
def test_the_domain_audit_sees_each_teacher_upload_unless_summed(
    ao_split: Split, vectors: np.ndarray, secure: bool
) -> None:
    local = LocalConfig(steps=2, lr=1e-3, batch_size=32)
    privacy = PrivacyConfig(secure_aggregation=secure)
    config = FederationConfig(partition="domain", engine="loop", local=local, privacy=privacy)
    fed = FederatedRecommender(small_fkd(vectors, **FULL), config).setup(ao_split)
    adaptors = text_adaptors(fed)
    (name,) = adaptors  # the teacher's: the students' alignment projection is private
    assert name.startswith("model.teacher.items.")
    view = replay_server_view(fed, 1, projections=adaptors)
    key = f"{name} @ text"
    report = domain_popularity(view, ao_split, [key], fed.clients)
    assert len(report) == 2  # one entry per domain
    for result in report.values():
        assert ("upload" in result) is not secure  # a sum shows no client's own upload
        assert np.isfinite(result["aggregate"]["value"])
    scores = view.first_norms[key]  # (2, n_items + 1)
    if secure:  # every participant is shown the aggregate
        np.testing.assert_array_equal(scores[0], scores[1])
    else:
        assert not np.array_equal(scores[0], scores[1])


def test_an_adaptor_delta_points_at_the_items_it_trained_on() -> None:
    rng = np.random.default_rng(0)
    text = torch.from_numpy(rng.standard_normal((20, 64)).astype(np.float32))
    delta = torch.zeros(1, 4, 64)
    for item, weight in ((7, 1.5), (12, 1.0)):  # two outer products, as in a gradient
        delta[0] += weight * torch.from_numpy(rng.standard_normal(4)).float()[:, None] * text[item]
    scores = projected_norms(delta, item_projector(text, ridge=1e-6))[0].numpy()
    assert set(np.argsort(scores)[-2:].tolist()) == {7, 12}


def test_a_students_item_prior_reads_its_own_domains_counts_only(
    ao_split: Split, vectors: np.ndarray
) -> None:
    rec = small_fkd(vectors, item_bias=True).setup(ao_split)
    students = rec.net.students
    assert students is not None and students.id_bias is not None
    ds = ao_split.dataset
    arts, office = (np.flatnonzero(ds.item_domain == d) for d in (0, 1))
    # Initialised from the training targets: a popular arts item starts above a cold one.
    targets = rec.training_tensors()["seq"][:, 1:].reshape(-1).numpy()
    counts = np.bincount(targets[targets > 0] - 1, minlength=ds.n_items)
    top, cold = arts[np.argmax(counts[arts])], arts[counts[arts] == 0][0]
    bias = students.bias(torch.tensor([top + 1, cold + 1]), 0)
    assert bias is not None and bias[0] > bias[1] + 1.0
    before = students.id_bias.detach().clone()
    changed = counts.copy()
    changed[office] += 100  # another domain's counts
    students.init_bias(changed, ds.item_domain)
    after = students.id_bias.detach()
    torch.testing.assert_close(after[0], before[0])
    assert not torch.equal(after[1], before[1])


def test_popularity_inference_scores_a_ranking_against_the_counts() -> None:
    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, 400)
    items = np.arange(100, 400)  # the domain's items
    exact = np.concatenate([[0.0], counts.astype(float)])  # row 0: padding
    result = popularity_inference(exact, counts, items)
    assert result["value"] == pytest.approx(1.0) and result["auc"] == pytest.approx(1.0)
    noise = popularity_inference(rng.random(401), counts, items)
    assert abs(noise["value"]) < 0.15 and abs(noise["auc"] - 0.5) < 0.15


def test_kd_adds_the_students_prior_to_the_teacher_and_the_teacher_never_reads_it(
    ao_split: Split, vectors: np.ndarray
) -> None:
    def losses(rec: FKDRecommender) -> tuple[float, dict[str, torch.Tensor]]:
        rec.seed_client((0, 1, 0, 0))  # the same negatives and swaps every call
        batch = {k: v[:64] for k, v in rec.training_tensors().items()}
        out = rec.batch_loss(batch)
        rec.net.zero_grad()
        (out.task + out.aux).backward()
        teacher = rec.net.teacher
        assert teacher is not None
        grads = {n: p.grad.clone() for n, p in teacher.named_parameters() if p.grad is not None}
        return float(out.aux), grads

    plain = small_fkd(vectors, **FULL).setup(ao_split)
    with_prior = small_fkd(vectors, **FULL, prior_in_kd=True).setup(ao_split)
    aux_plain, _ = losses(plain)
    aux_prior, grads = losses(with_prior)
    assert aux_prior != pytest.approx(aux_plain)  # the KD targets carry the prior
    students = with_prior.net.students
    assert students is not None and students.id_bias is not None
    with torch.no_grad():
        students.id_bias.mul_(3.0)  # another private prior
    _, changed = losses(with_prior)
    assert grads.keys() == changed.keys() and grads
    for name, grad in grads.items():  # what the teacher uploads does not see the prior
        torch.testing.assert_close(changed[name], grad, msg=name)
