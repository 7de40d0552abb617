"""Protected item semantics: what a domain client shares of its items' text vectors.

A domain client embeds its own items with the frozen encoder and shares only a
protected copy (SF-UBM's first stage; the equations are ours, docs/cross-domain.md):

1. **Gaussian noise**: ``v + N(0, sigma^2 I)`` on the L2-normalised vector, re-normalised;
2. **similarity-based replacement**: with probability ``replace_p`` an item's shared
   vector is the noisy vector of one of its ``neighbours`` nearest items (by the
   original vectors, in the same domain), drawn uniformly.

Each domain protects its own items with its own stream ``(seed, domain)``, so the
copy a domain shares does not depend on another domain's items. The original
vectors never leave this module's caller; :class:`SharedSemantics` holds only
what crosses. :func:`obfuscation` measures how much the copy still reveals.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from fedllmrec.errors import check_option

SEARCH_BATCH = 4096  # query rows per exact inner-product search


@dataclass(frozen=True)
class ProtectionConfig:
    """How a domain protects the item vectors it shares (recipe table ``[model.protection]``).

    Parameters
    ----------
    sigma : float
        Standard deviation of the Gaussian noise per coordinate (0: none).
    replace_p : float
        Probability that an item's shared vector is a near neighbour's instead.
    neighbours : int
        How many nearest items (same domain, by original vector) a replacement draws from.
    seed : int
        Seed of the noise and replacement draws (each domain uses ``(seed, domain)``).
    """

    sigma: float = 0.1
    replace_p: float = 0.1
    neighbours: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        check = partial(check_option, "ProtectionConfig")
        check("sigma", self.sigma >= 0.0, ">= 0", self.sigma)
        check("replace_p", 0.0 <= self.replace_p <= 1.0, "in [0, 1]", self.replace_p)
        check("neighbours", self.neighbours >= 1, ">= 1", self.neighbours)

    @property
    def protects(self) -> bool:
        """Whether the shared copy differs from the originals at all."""
        return self.sigma > 0.0 or self.replace_p > 0.0


@dataclass(frozen=True)
class SharedSemantics:
    """The protected item vectors every domain shared, assembled into one catalogue.

    Parameters
    ----------
    vectors : np.ndarray
        (n_items, d) float32 unit vectors: row i is item i's *protected* vector,
        shared by the item's domain.
    item_domain : np.ndarray
        (n_items,) the domain of each item.
    replaced : np.ndarray
        (n_items,) bool: whether the row is a neighbour's vector (known to its domain only;
        kept for the obfuscation report).
    config : ProtectionConfig
        The protection every domain applied.
    """

    vectors: np.ndarray
    item_domain: np.ndarray
    replaced: np.ndarray
    config: ProtectionConfig

    def counterparts(self, exclude_domain: bool = True) -> np.ndarray:
        """For each item, its nearest item by shared vector in *another* domain (n_items,).

        Computed from the shared (protected) vectors only: what any domain can compute
        from what crossed. With one domain, every item is its own counterpart.
        """
        n_domains = int(self.item_domain.max(initial=0)) + 1
        if n_domains == 1 or not exclude_domain:
            return np.arange(self.vectors.shape[0])
        out = np.arange(self.vectors.shape[0])  # an unshared item is its own counterpart
        present = self.vectors.any(axis=1)
        for d in range(n_domains):
            own = np.flatnonzero((self.item_domain == d) & present)
            other = np.flatnonzero((self.item_domain != d) & present)
            if not own.size or not other.size:
                continue
            nearest = nearest_rows(self.vectors[own], self.vectors[other], 1)[:, 0]
            out[own] = other[nearest]
        return out


def protect_vectors(
    vectors: np.ndarray, config: ProtectionConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One domain's protected copy of its own unit vectors (n, d): (shared, replaced).

    Noise first, then replacement by a neighbour's *noisy* vector, so a replaced row is
    no more exact than any other.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    n = vectors.shape[0]
    noisy = vectors.copy()
    if config.sigma > 0:
        noisy += config.sigma * rng.standard_normal(vectors.shape, dtype=np.float32)
        noisy /= np.linalg.norm(noisy, axis=1, keepdims=True).clip(min=1e-12)
    replaced = np.asarray(rng.random(n) < config.replace_p)
    shared = noisy.copy()
    k = min(config.neighbours, n - 1)
    if replaced.any() and k >= 1:
        rows = np.flatnonzero(replaced)
        # The k nearest other items by the originals (the domain's own knowledge).
        nearest = nearest_rows(vectors[rows], vectors, k, exclude=rows)
        pick = nearest[np.arange(rows.shape[0]), rng.integers(0, k, rows.shape[0])]
        shared[rows] = noisy[pick]
    else:
        replaced[:] = False
    return shared, replaced


def share_semantics(
    vectors: np.ndarray,
    item_domain: np.ndarray,
    config: ProtectionConfig,
    items: np.ndarray | None = None,
) -> SharedSemantics:
    """Every domain protects its own items; the union of the protected copies.

    ``vectors`` (n_items, d) are the original unit vectors; domain ``d`` sees only its
    rows and draws from ``default_rng([config.seed, d])``. ``items``: the only items
    shared (others stay zero rows: nobody touched them), default all.
    """
    item_domain = np.asarray(item_domain)
    shared = np.zeros_like(np.asarray(vectors, dtype=np.float32))
    replaced = np.zeros(shared.shape[0], dtype=bool)
    chosen = np.ones(shared.shape[0], dtype=bool)
    if items is not None:
        chosen[:] = False
        chosen[items] = True
    for d in np.unique(item_domain).tolist():
        rows = np.flatnonzero((item_domain == d) & chosen)
        rng = np.random.default_rng([config.seed, d])
        shared[rows], replaced[rows] = protect_vectors(vectors[rows], config, rng)
    return SharedSemantics(shared, item_domain, replaced, config)


def nearest_rows(
    queries: np.ndarray, base: np.ndarray, k: int, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Indices (Q, k) of the ``k`` highest inner products of each query among ``base`` rows.

    ``exclude`` (Q,): a base row each query may not return (its own row), or None. Exact
    search in batches of queries (numpy matmul; the vectors are a few tens of thousands).
    """
    out = np.empty((queries.shape[0], k), dtype=np.int64)
    for lo in range(0, queries.shape[0], SEARCH_BATCH):
        scores = queries[lo : lo + SEARCH_BATCH] @ base.T  # (q, N)
        if exclude is not None:
            scores[np.arange(scores.shape[0]), exclude[lo : lo + SEARCH_BATCH]] = -np.inf
        if k == 1:  # argmax is several times faster than a partition
            out[lo : lo + SEARCH_BATCH] = scores.argmax(axis=1)[:, None]
            continue
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        out[lo : lo + SEARCH_BATCH] = top
    return out


@dataclass(frozen=True)
class Obfuscation:
    """How much a shared copy still reveals of the originals."""

    mean_cosine: float  # mean cosine(original_i, shared_i)
    reidentification: float  # share of shared vectors whose nearest original is their own item
    replaced: float  # share of items replaced by a neighbour

    def as_dict(self) -> dict[str, float]:
        return {
            "mean_cosine": self.mean_cosine,
            "reidentification": self.reidentification,
            "replaced": self.replaced,
        }


def obfuscation(original: np.ndarray, shared: SharedSemantics) -> Obfuscation:
    """Cosine to the originals and the re-identification rate of an attacker who holds
    every original vector and matches each shared vector to its nearest original."""
    original = np.asarray(original, dtype=np.float32)
    cosine = np.einsum("nd,nd->n", original, shared.vectors)
    nearest = nearest_rows(shared.vectors, original, 1)[:, 0]
    own = nearest == np.arange(original.shape[0])
    return Obfuscation(float(cosine.mean()), float(own.mean()), float(shared.replaced.mean()))
