"""Client partitioners: who holds which interactions in a federation.

Two settings: every user is a client (MRFF, PFedRec), or every domain is a
client holding its private users (cross-domain federated recommendation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedllmrec.data.split import Split


@dataclass(frozen=True, eq=False)
class ClientPartition:
    """The data one client holds.

    ``rows`` index the split's interactions (all roles: a client evaluates on
    its own held-out data); ``users`` are the users whose data it holds.
    """

    client_id: str
    users: np.ndarray  # (U,) int32
    rows: np.ndarray  # (R,) int64, ascending (canonical order)


def _group_rows(keys: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    order = np.argsort(keys, kind="stable")
    uniq, starts = np.unique(keys[order], return_index=True)
    return uniq, np.split(order, starts[1:])


def partition_by_user(split: Split) -> list[ClientPartition]:
    """One client per user, in user-id order."""
    ds = split.dataset
    users, groups = _group_rows(ds.user)
    return [
        ClientPartition(f"user-{u}", np.asarray([u], dtype=np.int32), rows.astype(np.int64))
        for u, rows in zip(users.tolist(), groups, strict=True)
    ]


def partition_by_domain(split: Split) -> list[ClientPartition]:
    """One client per domain, holding every interaction of that domain.

    A user present in several domains appears in several clients, but each
    client sees only its own domain's interactions of that user.
    """
    ds = split.dataset
    domains, groups = _group_rows(ds.domain)
    return [
        ClientPartition(
            f"domain-{ds.domains[d]}",
            np.unique(ds.user[rows]).astype(np.int32),
            np.sort(rows).astype(np.int64),
        )
        for d, rows in zip(domains.tolist(), groups, strict=True)
    ]


PARTITIONERS = {"user": partition_by_user, "domain": partition_by_domain}
