"""Who takes part in a round: client sampling and simulated mid-round dropouts."""

from __future__ import annotations

import numpy as np


def sample_clients(
    clients: np.ndarray, fraction: float, min_clients: int, rng: np.random.Generator
) -> np.ndarray:
    """Sample this round's participants without replacement.

    Parameters
    ----------
    clients : np.ndarray
        (N,) distinct client ids available this round.
    fraction, min_clients : float, int
        Sample ``max(min_clients, round(fraction * N))`` clients, capped at N.
    rng : np.random.Generator
        Consumed only when there is a choice to make, so a run with everyone
        participating leaves the generator untouched.

    Returns
    -------
    np.ndarray
        Sorted sampled ids.
    """
    clients = _checked(clients, fraction, "fraction")
    if min_clients < 1:
        raise ValueError(f"min_clients must be >= 1, got {min_clients!r}")
    if np.unique(clients).size != clients.size:
        raise ValueError("clients must be distinct ids")
    n = min(clients.size, max(min_clients, round(fraction * clients.size)))
    if n == clients.size:
        return np.sort(clients)
    return np.sort(rng.choice(clients, size=n, replace=False))


def poisson_sample(clients: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Each client takes part independently with probability ``rate`` (may be none).

    The sampling that differential privacy's amplification by subsampling assumes
    (Abadi et al. 2016; the accountant's ``PoissonSampledDpEvent``). ``rate == 1``
    takes everyone and consumes no randomness.

    Returns
    -------
    np.ndarray
        Sorted sampled ids.
    """
    clients = _checked(clients, rate, "rate")
    if rate == 1.0:
        return np.sort(clients)
    return np.sort(clients[rng.random(clients.size) < rate])


def drop_clients(
    participants: np.ndarray, drop_rate: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate clients failing mid-round.

    Each participant fails independently with probability ``drop_rate``; if all
    would fail, the first participant survives so the round still has an update.
    ``drop_rate == 0`` consumes no randomness.

    Returns
    -------
    tuple of np.ndarray
        ``(survivors, dropped)``, each sorted; together they partition
        ``participants``.
    """
    participants = np.asarray(participants)
    if participants.ndim != 1 or participants.size == 0:
        raise ValueError(f"participants must be a non-empty 1-D array, got {participants.shape}")
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
    if drop_rate == 0:
        return np.sort(participants), participants[:0].copy()
    fails = rng.random(participants.size) < drop_rate  # (P,)
    if fails.all():
        fails[0] = False
    return np.sort(participants[~fails]), np.sort(participants[fails])


def _checked(clients: np.ndarray, share: float, name: str) -> np.ndarray:
    """``clients`` as a non-empty 1-D array, and ``share`` in (0, 1]."""
    clients = np.asarray(clients)
    if clients.ndim != 1 or clients.size == 0:
        raise ValueError(f"clients must be a non-empty 1-D array, got shape {clients.shape}")
    if not 0.0 < share <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {share!r}")
    return clients
