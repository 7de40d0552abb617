"""Parameter ownership: who may hold, train and send every tensor of a model.

Every parameter and buffer has exactly one owner:

* ``frozen``: the foundation part (item text vectors, catalogue metadata);
  never trained, never sent by a client.
* ``global``: averaged over all participants of a round.
* ``group``: a stack of K group tensors (axis 0), each averaged over the
  participants routed to that group at the tensor's layer (MRFF's group FFNs).
* ``private``: one row per user (axis 0 indexed by user id): user embeddings,
  user FFNs, user features. It never leaves the client that holds the user.

Each module class declares the owners of the tensors below it once, as
``OWNERS`` (a class attribute, or a property when the tensors depend on the
configuration): glob patterns over names relative to the module.
Unlike the name lists of MRFF's released code, the declaration is *checked*:
a tensor no pattern claims, a tensor two patterns claim, and a pattern that
claims nothing are all errors, so a typo cannot silently change who trains
or receives a tensor.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from fedllmrec.errors import FedLLMRecError
from fedllmrec.models.owners import Owner

__all__ = [
    "SHARED",
    "Owner",
    "Ownership",
    "OwnershipError",
    "TensorOwner",
    "attribute_tensors",
    "declared_ownership",
]


SHARED = (Owner.GLOBAL, Owner.GROUP)  # the owners whose tensors a client may upload


class OwnershipError(FedLLMRecError):
    """A model's ownership declaration is missing, ambiguous or wrong."""


@dataclass(frozen=True)
class TensorOwner:
    """The owner of one named tensor, and for a group tensor the layer that routes it."""

    name: str
    owner: Owner
    is_parameter: bool
    shape: tuple[int, ...]
    layer: int | None = None  # group tensors: the routing layer; axis 0 is the group

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class Ownership(Mapping[str, TensorOwner]):
    """The checked owners of every parameter and buffer of a module, by full name."""

    def __init__(self, owners: dict[str, TensorOwner], n_users: int | None) -> None:
        self._owners = owners
        self.n_users = n_users

    def __getitem__(self, name: str) -> TensorOwner:
        return self._owners[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._owners)

    def __len__(self) -> int:
        return len(self._owners)

    def names(self, *owners: Owner) -> list[str]:
        """Names owned by any of ``owners``, in module order."""
        return [name for name, spec in self._owners.items() if spec.owner in owners]

    def private_parameters(self) -> list[str]:
        """Private names that train (parameters; private buffers such as features do not)."""
        return [name for name in self.names(Owner.PRIVATE) if self._owners[name].is_parameter]

    def numel(self, *owners: Owner) -> int:
        """Number of scalars owned by any of ``owners``."""
        return sum(self._owners[name].numel for name in self.names(*owners))

    @property
    def routing_shape(self) -> tuple[int, int]:
        """(L, K): routing layers and groups of the group tensors; (0, 0) without any."""
        groups = [self._owners[name] for name in self.names(Owner.GROUP)]
        if not groups:
            return 0, 0
        layers = {spec.layer for spec in groups}
        sizes = {spec.shape[0] for spec in groups}
        if None in layers or len(sizes) != 1:
            raise OwnershipError(f"group tensors disagree on layers or groups: {layers}, {sizes}")
        return max(int(layer) for layer in layers if layer is not None) + 1, sizes.pop()

    def summary(self) -> dict[str, int]:
        """Scalars per owner, e.g. for a run's record."""
        return {owner.value: self.numel(owner) for owner in Owner}


def declared_ownership(module: nn.Module) -> Ownership:
    """Resolve and check every tensor's owner from the ``OWNERS`` declarations.

    A tensor is claimed by the deepest enclosing module that declares
    ``OWNERS``; exactly one of that module's patterns must match the tensor's
    name relative to it. Group tensors take their layer from the declaring
    module's ``layer`` attribute; private tensors must have one row per user.

    Raises
    ------
    OwnershipError
        Naming the tensor or pattern: unclaimed, claimed twice, pattern
        matching nothing, group without layer, private of the wrong shape.
    """
    declaring = {
        prefix: sub for prefix, sub in module.named_modules() if "OWNERS" in type(sub).__dict__
    }
    tensors: list[tuple[str, torch.Tensor, bool]] = [
        (name, p, True) for name, p in module.named_parameters()
    ] + [(name, b, False) for name, b in module.named_buffers()]
    used: set[tuple[str, str]] = set()
    owners: dict[str, TensorOwner] = {}
    n_users: int | None = None
    for name, tensor, is_param in tensors:
        prefix, decl = _declaring_module(name, declaring)
        if decl is None:
            raise OwnershipError(f"{name}: no enclosing module declares OWNERS")
        relative = name[len(prefix) + 1 :] if prefix else name
        patterns: Mapping[str, Owner] = decl.OWNERS  # type: ignore[assignment]
        hits = [p for p in patterns if fnmatch.fnmatchcase(relative, p)]
        where = f"{type(decl).__name__}.OWNERS"
        if not hits:
            raise OwnershipError(f"{name}: no pattern of {where} claims it (as {relative!r})")
        if len(hits) > 1:
            raise OwnershipError(f"{name}: claimed by several patterns of {where}: {hits}")
        used.add((prefix, hits[0]))
        owner = Owner(patterns[hits[0]])
        layer = None
        if owner is Owner.GROUP:
            layer = getattr(decl, "layer", None)
            if not isinstance(layer, int):
                raise OwnershipError(f"{name}: group tensor, but {where} has no integer `layer`")
        if owner is Owner.PRIVATE:
            rows = tensor.shape[0] if tensor.dim() else 0
            if n_users is None:
                n_users = rows
            if rows != n_users or rows == 0:
                raise OwnershipError(
                    f"{name}: private tensors need one row per user ({n_users}), shape is "
                    f"{tuple(tensor.shape)}"
                )
        if owner is not Owner.FROZEN and not is_param and owner is not Owner.PRIVATE:
            raise OwnershipError(f"{name}: a buffer cannot be {owner}; only frozen or private")
        if owner is Owner.FROZEN and is_param and tensor.requires_grad:
            raise OwnershipError(f"{name}: frozen, but requires grad")
        owners[name] = TensorOwner(name, owner, is_param, tuple(tensor.shape), layer)
    for prefix, decl in declaring.items():
        for pattern in decl.OWNERS:
            if (prefix, pattern) not in used:
                where = f"{type(decl).__name__}.OWNERS" + (f" at {prefix}" if prefix else "")
                raise OwnershipError(f"{where}: pattern {pattern!r} claims no tensor")
    return Ownership(owners, n_users)


def _declaring_module(
    name: str, declaring: Mapping[str, nn.Module]
) -> tuple[str, nn.Module | None]:
    """The deepest declaring module whose prefix encloses tensor ``name``."""
    parts = name.split(".")[:-1]
    for depth in range(len(parts), -1, -1):
        prefix = ".".join(parts[:depth])
        if prefix in declaring:
            return prefix, declaring[prefix]
    return "", None


def attribute_tensors(module: nn.Module, ownership: Ownership) -> list[str]:
    """Shared tensors a module declares as showing a private attribute in their delta.

    A module lists glob patterns (relative to itself) as ``ATTRIBUTE_TENSORS``: MRFF's
    user-feature tables, whose every user update touches only that user's feature value.
    """
    names: list[str] = []
    for prefix, sub in module.named_modules():
        patterns = getattr(type(sub), "ATTRIBUTE_TENSORS", ())
        for name in ownership.names(*SHARED):
            relative = name[len(prefix) + 1 :] if prefix else name
            if (not prefix or name.startswith(prefix + ".")) and any(
                fnmatch.fnmatchcase(relative, p) for p in patterns
            ):
                names.append(name)
    return names


def tensors_of(module: nn.Module, ownership: Ownership, *owners: Owner) -> dict[str, torch.Tensor]:
    """The live tensors (parameters and buffers) owned by any of ``owners``."""
    every = dict(module.named_parameters()) | dict(module.named_buffers())
    return {name: every[name] for name in ownership.names(*owners)}
