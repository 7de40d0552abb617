"""The clients of a federation and what each trains on: the value every engine receives.

A client is addressed by its *position* ``0 .. N-1``; :attr:`ClientPopulation.ids`
maps a position to the user (user clients) or domain (domain clients) it is. Each
client holds some of the recommender's training windows (rows of its
``training_tensors()``, newest first). Per round a client trains on all of them, or
on ``local.batch_size`` drawn from its own random stream, seeded by
``(federation seed, round, client id)``, so a client draws the same windows in any
chunk of the simulator and on any Flower node.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from fedllmrec.data.sequences import sort_runs_by_length
from fedllmrec.federated.config import LocalConfig
from fedllmrec.models.items import PAD


@dataclass
class ClientPopulation:
    """Every client's training windows, example counts and per-round window draws.

    Parameters
    ----------
    ids : np.ndarray
        (N,) the user or domain id of each client position.
    rows : list of np.ndarray
        Each client's training-window rows, newest first.
    window_targets : np.ndarray
        (W,) next-item (or next-click) targets in each training window.
    window_length : np.ndarray
        (W,) non-padding items of each training window.
    kind : {"user", "domain"}
        User clients see their own private row as row 0; domain clients hold many users.
    local : LocalConfig
        The local steps and window draws.
    seed : int
        The federation seed of the clients' window draws.
    """

    ids: np.ndarray
    rows: list[np.ndarray]
    window_targets: np.ndarray
    window_length: np.ndarray
    kind: Literal["user", "domain"]
    local: LocalConfig
    seed: int
    examples: np.ndarray = field(init=False)  # (N,) training targets of each client
    newest_length: np.ndarray = field(init=False)  # (N,) length of each client's newest window
    window_count: np.ndarray = field(init=False)  # (N,)
    # The latest round's draws: round -> {client id: one window array per local step}.
    _drawn: tuple[int, dict[int, list[np.ndarray]]] = field(
        init=False, default_factory=lambda: (0, {}), repr=False
    )

    def __post_init__(self) -> None:
        self.examples = np.array([self.window_targets[r].sum() for r in self.rows])
        self.newest_length = np.array([self.window_length[r[0]] for r in self.rows])
        self.window_count = np.array([r.shape[0] for r in self.rows])

    @classmethod
    def from_windows(
        cls,
        owners: np.ndarray,
        n_owners: int,
        seq: torch.Tensor,
        *,
        kind: Literal["user", "domain"],
        local: LocalConfig,
        seed: int,
        max_clients: int = 0,
    ) -> ClientPopulation:
        """Clients from the owner (user or domain) of each training window.

        ``seq`` (W, T + 1) are the windows (0 = padding); every owner with at least one
        window is a client, in id order, the first ``max_clients`` only if set.
        """
        order = np.argsort(owners, kind="stable")  # keeps each owner's newest window first
        bounds = np.searchsorted(owners[order], np.arange(n_owners + 1))
        ids = np.flatnonzero(np.diff(bounds) > 0)
        if max_clients:
            ids = ids[:max_clients]
        rows = [order[bounds[c] : bounds[c + 1]] for c in ids.tolist()]
        targets = ((seq[:, 1:] != PAD) & (seq[:, :-1] != PAD)).sum(1).numpy()
        lengths = (seq != PAD).sum(1).numpy()
        return cls(ids, rows, targets, lengths, kind, local, seed)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def windows(self, positions: np.ndarray, round_: int) -> list[list[np.ndarray]]:
        """Each local step's training windows of the clients at ``positions``.

        A step takes all of a client's windows, or ``local.batch_size`` of them drawn
        from the client's own stream for ``round_``. One list serves every step when
        nobody draws.
        """
        rows = [self.rows[c] for c in positions.tolist()]
        size = self.local.batch_size
        if not size or all(r.shape[0] <= size for r in rows):
            return [rows]
        if self._drawn[0] != round_:  # chunking and each chunk ask for the same draws
            self._drawn = (round_, {})
        drawn = self._drawn[1]
        steps: list[list[np.ndarray]] = [[] for _ in range(self.local.steps)]
        for client, r in zip(self.ids[positions].tolist(), rows, strict=True):
            if r.shape[0] <= size:  # all its windows, every step: nothing drawn
                for step in steps:
                    step.append(r)
                continue
            if client not in drawn:
                rng = np.random.default_rng([self.seed, round_, client])
                if self.local.length_buckets:
                    drawn[client] = self._bucketed(rng, r)
                else:
                    drawn[client] = [np.sort(rng.choice(r, size, replace=False)) for _ in steps]
            for step, draw in zip(steps, drawn[client], strict=True):
                step.append(draw)
        return steps

    def _bucketed(self, rng: np.random.Generator, rows: np.ndarray) -> list[np.ndarray]:
        """A round's steps of one client, each of windows of similar length.

        The client's windows are shuffled (as often as the steps need), cut into runs of
        ``length_buckets`` steps, each run sorted by window length and cut into steps;
        the steps are then shuffled.
        """
        size, steps, buckets = self.local.batch_size, self.local.steps, self.local.length_buckets
        passes = -(-steps * size // rows.shape[0])  # ceil: every window at most once a pass
        order = np.concatenate([rng.permutation(rows) for _ in range(passes)])
        order = sort_runs_by_length(order, self.window_length, buckets * size)
        batches = [order[i * size : (i + 1) * size] for i in range(order.shape[0] // size)]
        picked = rng.permutation(len(batches))[:steps]
        return [np.sort(batches[i]) for i in picked]

    def chunks(
        self,
        positions: np.ndarray,
        round_: int | None,
        *,
        chunk_windows: int,
        count_positions: bool,
    ) -> Iterator[np.ndarray]:
        """Clients grouped by windows per step, then window length, so a chunk holds little
        padding (its all-padding columns are cut before training).

        The length is that of the longest window the client trains in round ``round_``
        (its draws, see :meth:`windows`), or of its newest window. A chunk holds at most
        ``chunk_windows`` padded windows, or with ``count_positions`` the padded positions
        of that many full-length windows.
        """
        counts = self.window_count[positions]
        size = self.local.batch_size
        lengths = self.newest_length[positions]
        if size:
            counts = np.minimum(counts, size)
            if round_ is not None and (counts < self.window_count[positions]).any():
                steps = self.windows(positions, round_)
                drawn = [np.concatenate(rows) for rows in zip(*steps, strict=True)]
                lengths = np.array([self.window_length[rows].max() for rows in drawn])
        order = np.lexsort((lengths, counts))
        ordered, counts, lengths = positions[order], counts[order], lengths[order]
        full = self.window_length.max(initial=1)
        if not count_positions:
            lengths = np.full_like(lengths, full)  # a chunk's cost: its windows
        budget = chunk_windows * full
        start = 0
        while start < ordered.shape[0]:
            end, widest, most = start + 1, lengths[start], counts[start]
            while end < ordered.shape[0]:
                widest, most = max(widest, lengths[end]), max(most, counts[end])
                if (end - start + 1) * most * widest > budget:  # padded positions
                    break
                end += 1
            yield ordered[start:end]
            start = end
