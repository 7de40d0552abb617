"""Where a sampled softmax draws its negatives, and the log-probability that corrects for it.

A sampled softmax over the target and M drawn items estimates the full softmax only
if each logit is corrected by the log-probability of drawing its item ("logQ
correction", Bengio & Senecal 2008; Yi et al. 2019). Uniform draws need no
correction but rarely draw the items that dominate the partition function (the
popular ones), so on a 38k-item catalogue a model trained on 1,000 uniform draws
learns too little popularity (docs/benchmarks.md, "Art-Office objective").

:class:`PopularityProposal` draws, **for each domain separately**, M items from
that domain's own training-target counts raised to ``alpha``, mixed with a
uniform share over the domain's catalogue (so cold items are drawn too). A
position is scored only against the draws of its target's domain, as the
evaluation ranks only in-domain items; the counts of a domain come only from
its own training windows, so a domain client's loss reads nothing of another
domain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedllmrec.models.items import PAD

Q_FLOOR = 1e-12  # log-probability floor of items never drawn


@dataclass(frozen=True)
class PopularityProposal:
    """Per-domain popularity draws with their log-probabilities.

    Parameters
    ----------
    item_domain : torch.Tensor
        (n_items + 1,) int64: the domain of each shifted item id (padding: 0).
    domain_items : tuple of np.ndarray
        Shifted ids of each domain's items, in id order.
    domain_cdf : tuple of np.ndarray
        The cumulative draw probabilities over ``domain_items[d]``.
    log_q : torch.Tensor
        (n_items + 1,) float32: log-probability of one draw of its domain being the item.
    """

    item_domain: torch.Tensor
    domain_items: tuple[np.ndarray, ...]
    domain_cdf: tuple[np.ndarray, ...]
    log_q: torch.Tensor

    @classmethod
    def from_targets(
        cls,
        targets: np.ndarray,
        item_domain: np.ndarray,
        *,
        alpha: float = 1.0,
        uniform_share: float = 0.0,
        catalogue: np.ndarray | None = None,
    ) -> PopularityProposal:
        """The proposal of the training targets ``targets`` (shifted ids, padding dropped).

        ``item_domain`` (n_items,) is each item's domain (unshifted ids); draws of domain
        ``d`` are ``(1 - uniform_share) * c_i**alpha / sum(c**alpha) + uniform_share / I_d``
        over its ``I_d`` items, with ``c_i`` the item's count among ``targets``.
        ``catalogue`` (n_items,) bool: the items that may be drawn (default all), e.g. the
        items that occur in the split; the uniform share spreads over them only.
        """
        if not 0.0 <= uniform_share <= 1.0:
            raise ValueError(f"uniform_share must be in [0, 1], got {uniform_share!r}")
        if alpha < 0.0:
            raise ValueError(f"alpha must be >= 0, got {alpha!r}")
        n_items = item_domain.shape[0]
        targets = targets[targets != PAD]
        counts = np.bincount(targets - 1, minlength=n_items).astype(np.float64)  # (I,)
        weights = counts**alpha if alpha else (counts > 0).astype(np.float64)
        # Never-drawn items (q = 0) get a finite floor: they can only be a padding target.
        log_q = np.full(n_items + 1, np.log(Q_FLOOR))
        items, cdfs = [], []
        allowed = np.ones(n_items, dtype=bool) if catalogue is None else np.asarray(catalogue)
        for d in range(int(item_domain.max(initial=-1)) + 1):
            ids = np.flatnonzero((item_domain == d) & allowed)  # unshifted
            if not ids.size:  # a domain with nothing to draw (no targets will ask for it)
                items.append(ids + 1)
                cdfs.append(np.ones(1))
                continue
            w = weights[ids]
            popular = w / w.sum() if w.sum() > 0 else np.full(ids.shape[0], 1.0 / ids.shape[0])
            q = (1.0 - uniform_share) * popular + uniform_share / ids.shape[0]
            log_q[ids + 1] = np.log(np.maximum(q, Q_FLOOR))
            items.append(ids + 1)
            cdfs.append(np.cumsum(q))
        shifted_domain = np.concatenate([[0], item_domain]).astype(np.int64)
        return cls(
            torch.from_numpy(shifted_domain),
            tuple(items),
            tuple(cdfs),
            torch.from_numpy(log_q.astype(np.float32)),
        )

    @property
    def n_domains(self) -> int:
        return len(self.domain_items)

    def draw(self, rng: np.random.Generator, n: int, domains: np.ndarray) -> torch.Tensor:
        """``n`` draws (with replacement) from each domain in ``domains``: (len(domains) * n,)."""
        out = []
        for d in domains.tolist():
            cdf = self.domain_cdf[d]
            picks = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
            out.append(self.domain_items[d][np.minimum(picks, cdf.shape[0] - 1)])
        return torch.from_numpy(np.concatenate(out).astype(np.int64))

    def domains_of(self, targets: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
        """The domains of the ``targets`` (shifted ids) where ``mask`` is set (same shape).

        Under ``torch.func.vmap`` a batch has no numpy view; every domain is drawn then.
        """
        if self.n_domains == 1:
            return np.zeros(1, dtype=np.int64)
        try:  # tolist, not numpy: it also reads the values under torch.func.grad
            flat = np.asarray(targets.detach()[mask].tolist(), dtype=np.int64)
        except RuntimeError:  # a functorch-batched tensor (vmap): its values are unknown here
            return np.arange(self.n_domains)
        return np.unique(self.item_domain.numpy()[flat]) if flat.size else np.zeros(1, np.int64)
