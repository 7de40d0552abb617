"""Who owns a tensor: the vocabulary models use to declare their ``OWNERS``.

It lives beside the models (which declare owners) rather than in
:mod:`fedllmrec.federated` (which checks and enforces them), so that data flows
one way: models never import the federated runtime.
"""

from __future__ import annotations

from enum import StrEnum


class Owner(StrEnum):
    """The owner of a parameter or buffer.

    FROZEN: the foundation part (item text vectors, catalogue codes); never
    trained or sent. GLOBAL: averaged over all participants. GROUP: a stack of
    K group tensors (axis 0), each averaged over the participants routed to it
    at the tensor's layer. PRIVATE: one row per user (axis 0 = user id); never
    leaves the client that holds the user.
    """

    FROZEN = "frozen"
    GLOBAL = "global"
    GROUP = "group"
    PRIVATE = "private"
