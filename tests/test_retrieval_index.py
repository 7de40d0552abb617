"""ItemIndex: exact search equals brute force; domains, exclusions, padding, persistence."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from fedllmrec.errors import FedLLMRecError
from fedllmrec.retrieval import IndexConfig, ItemIndex


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    # Continuous random vectors: score ties have probability zero, so rank order is unambiguous.
    return unit(rng.standard_normal((n, d)))


def mixture(rng: np.random.Generator, n: int, d: int, centres: int) -> np.ndarray:
    """Unit vectors clustered around random centres, so IVF lists carry meaning."""
    means = rng.standard_normal((centres, d))
    return unit(means[rng.integers(0, centres, n)] + 0.5 * rng.standard_normal((n, d)))


def brute_force(
    vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int, allowed: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, ids) per query over rows where ``allowed[r]`` (q, n) is true."""
    scores = (queries.astype(np.float64) @ vectors.T.astype(np.float64)).astype(np.float32)
    scores = np.where(allowed, scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(scores, order, axis=1)
    return top, np.where(np.isfinite(top), ids[order], -1)


@pytest.fixture(scope="module")
def catalogue() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    n, d = 600, 24
    vectors = random_unit(rng, n, d)
    # Non-contiguous, shuffled ids prove results are mapped back to item ids.
    ids = rng.permutation(5 * n)[:n].astype(np.int64)
    domains = rng.integers(0, 3, n).astype(np.int64)
    queries = random_unit(rng, 40, d)
    return vectors, ids, domains, queries


def assert_same(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]) -> None:
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-5)
    assert got[0].dtype == np.float32
    assert got[1].dtype == np.int64


def test_exact_equals_brute_force(catalogue: tuple[np.ndarray, ...]) -> None:
    vectors, ids, domains, queries = catalogue
    index = ItemIndex.build(vectors, ids, domains)
    assert len(index) == vectors.shape[0]
    assert index.dim == vectors.shape[1]
    allowed = np.ones((queries.shape[0], vectors.shape[0]), dtype=bool)
    assert_same(index.search(queries, 25), brute_force(vectors, ids, queries, 25, allowed))
    # Few queries take faiss's non-BLAS code path.
    assert_same(
        index.search(queries[:3], 5), brute_force(vectors, ids, queries[:3], 5, allowed[:3])
    )


def test_default_ids_and_single_domain() -> None:
    rng = np.random.default_rng(1)
    vectors, queries = random_unit(rng, 200, 16), random_unit(rng, 10, 16)
    index = ItemIndex.build(vectors)
    allowed = np.ones((10, 200), dtype=bool)
    assert_same(index.search(queries, 7), brute_force(vectors, np.arange(200), queries, 7, allowed))


@pytest.mark.parametrize("domain", [0, 1, 2])
def test_domain_restriction(catalogue: tuple[np.ndarray, ...], domain: int) -> None:
    vectors, ids, domains, queries = catalogue
    index = ItemIndex.build(vectors, ids, domains)
    scores, got = index.search(queries, 20, domain=domain)
    member = dict(zip(ids.tolist(), domains.tolist(), strict=True))
    assert all(member[i] == domain for i in got.ravel().tolist())
    allowed = np.broadcast_to(domains == domain, (queries.shape[0], vectors.shape[0]))
    assert_same((scores, got), brute_force(vectors, ids, queries, 20, allowed))


def test_exclusions_never_returned(catalogue: tuple[np.ndarray, ...]) -> None:
    vectors, ids, domains, queries = catalogue
    index = ItemIndex.build(vectors, ids, domains)
    rng = np.random.default_rng(3)
    top = index.search(queries, 30)[1]
    exclude = []
    for r in range(queries.shape[0]):
        # Mostly the query's own best hits (the hard case), plus ids that are not indexed.
        size = int(rng.integers(0, 25))
        exclude.append(np.concatenate([top[r, :size], [10**9, 5 * 600 + r]]).astype(np.int64))
    exclude[0] = np.empty(0, dtype=np.int64)
    allowed = np.stack([~np.isin(ids, e) for e in exclude])
    for domain in (None, 1):
        got = index.search(queries, 15, domain=domain, exclude=exclude)
        for r, e in enumerate(exclude):
            assert not np.isin(got[1][r], e).any()
        mask = allowed if domain is None else allowed & (domains == domain)
        assert_same(got, brute_force(vectors, ids, queries, 15, mask))


def test_padding_when_too_few_eligible(catalogue: tuple[np.ndarray, ...]) -> None:
    vectors, ids, domains, queries = catalogue
    index = ItemIndex.build(vectors, ids, domains)
    in_domain = ids[domains == 2]
    k = in_domain.shape[0] + 10
    exclude = [in_domain[:5]] + [np.empty(0, dtype=np.int64)] * (queries.shape[0] - 1)
    scores, got = index.search(queries, k, domain=2, exclude=exclude)
    assert got.shape == scores.shape == (queries.shape[0], k)
    assert (got[0, -15:] == -1).all() and np.isneginf(scores[0, -15:]).all()
    assert (got[0, :-15] >= 0).all() and np.isfinite(scores[0, :-15]).all()
    assert (got[1:, -10:] == -1).all() and (got[1:, :-10] >= 0).all()
    assert (np.diff(scores[:, : k - 15], axis=1) <= 0).all()
    # A domain with no items yields only padding.
    scores, got = index.search(queries, 3, domain=9)
    assert (got == -1).all() and np.isneginf(scores).all()


def test_add_extends_domains(catalogue: tuple[np.ndarray, ...]) -> None:
    vectors, ids, domains, queries = catalogue
    index = ItemIndex.build(vectors[:400], ids[:400], domains[:400])
    index.add(vectors[400:], ids[400:], domains[400:])
    allowed = np.ones((queries.shape[0], vectors.shape[0]), dtype=bool)
    assert_same(index.search(queries, 12), brute_force(vectors, ids, queries, 12, allowed))
    with pytest.raises(FedLLMRecError, match="already in the index"):
        index.add(vectors[:1], ids[:1])
    with pytest.raises(FedLLMRecError, match="duplicates"):
        ItemIndex.build(vectors[:2], np.array([4, 4]))
    with pytest.raises(FedLLMRecError, match="shape"):
        index.search(queries[:, :5], 3)


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_save_load_round_trip(catalogue: tuple[np.ndarray, ...], kind: str, tmp_path: Path) -> None:
    vectors, ids, domains, queries = catalogue
    config = IndexConfig(kind=kind, nprobe=4, ef_search=64)  # type: ignore[arg-type]
    index = ItemIndex.build(vectors, ids, domains, config)
    exclude = [ids[r : r + 3] for r in range(queries.shape[0])]
    index.save(tmp_path / "index")
    loaded = ItemIndex.load(tmp_path / "index")
    assert len(loaded) == len(index) and loaded.dim == index.dim
    assert loaded.config == index.config
    for domain in (None, 0, 2):
        want = index.search(queries, 10, domain=domain, exclude=exclude)
        got = loaded.search(queries, 10, domain=domain, exclude=exclude)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])


def test_corrupt_or_missing_files_raise(catalogue: tuple[np.ndarray, ...], tmp_path: Path) -> None:
    vectors, ids, domains, _ = catalogue
    folder = tmp_path / "index"
    ItemIndex.build(vectors, ids, domains).save(folder)
    with pytest.raises(FedLLMRecError, match="nowhere"):
        ItemIndex.load(tmp_path / "nowhere")
    faiss_file = folder / "domain-1.faiss"
    original = faiss_file.read_bytes()
    faiss_file.write_bytes(original[: len(original) // 2])
    with pytest.raises(FedLLMRecError, match=re.escape(str(faiss_file))):
        ItemIndex.load(folder)
    faiss_file.write_bytes(b"not a faiss index at all")
    with pytest.raises(FedLLMRecError, match=re.escape(str(faiss_file))):
        ItemIndex.load(folder)
    faiss_file.unlink()
    with pytest.raises(FedLLMRecError, match=re.escape(str(faiss_file))):
        ItemIndex.load(folder)
    faiss_file.write_bytes(original)
    (folder / "items.npz").write_bytes(b"garbage")
    with pytest.raises(FedLLMRecError, match=re.escape(str(folder / "items.npz"))):
        ItemIndex.load(folder)
    (folder / "config.json").write_text("{", encoding="utf-8")
    with pytest.raises(FedLLMRecError, match=re.escape(str(folder / "config.json"))):
        ItemIndex.load(folder)


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    vectors = mixture(rng, 20_000, 64, centres=200)
    # Queries near database items, as a user's history vector is near items they like.
    picks = rng.choice(vectors.shape[0], 200, replace=False)
    queries = unit(vectors[picks] + 0.05 * rng.standard_normal((200, 64)))
    truth = ItemIndex.build(vectors).search(queries, 10)[1]
    return vectors, queries, truth


@pytest.mark.parametrize(
    "config",
    [IndexConfig(kind="ivf", nprobe=16), IndexConfig(kind="hnsw", hnsw_m=16, ef_construction=80)],
    ids=["ivf", "hnsw"],
)
def test_approximate_recall(
    clustered: tuple[np.ndarray, np.ndarray, np.ndarray], config: IndexConfig
) -> None:
    vectors, queries, truth = clustered
    got = ItemIndex.build(vectors, config=config).search(queries, 10)[1]
    recall = np.mean([np.isin(t, g).mean() for t, g in zip(truth, got, strict=True)])
    assert recall >= 0.9, f"{config.kind} recall@10 {recall:.3f}"
