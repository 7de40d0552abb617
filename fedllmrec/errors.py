"""Errors that name exactly where bad input is, so users can fix it in one look."""

from __future__ import annotations

from pathlib import Path


class FedLLMRecError(Exception):
    """Base class of every error this library raises on purpose."""


class DataFormatError(FedLLMRecError, ValueError):
    """Bad input data, located by file, line and field.

    The message is one line: ``path:line: field 'name': problem``; ``line`` is
    1-based and counts the header line when the file has one.
    """

    def __init__(
        self,
        path: str | Path,
        problem: str,
        *,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.problem = problem
        where = self.path if line is None else f"{self.path}:{line}"
        what = problem if field is None else f"field '{field}': {problem}"
        super().__init__(f"{where}: {what}")


class DatasetNotFoundError(FedLLMRecError, FileNotFoundError):
    """A dataset folder or file could not be found in any searched location."""


class RecipeError(FedLLMRecError, ValueError):
    """A bad training recipe, located by file and dotted key.

    The message is one line: ``path: key 'model.dim': problem``.
    """

    def __init__(self, path: str | Path, problem: str, *, key: str | None = None) -> None:
        self.path = str(path)
        self.key = key
        self.problem = problem
        what = problem if key is None else f"key '{key}': {problem}"
        super().__init__(f"{self.path}: {what}")


class OptionError(FedLLMRecError, ValueError):
    """A configuration value out of range, located by its owner and field.

    The message is one line: ``Owner.field must be <expected>, got <value>``. The recipe
    loader turns it into a :class:`RecipeError` at the dotted key of ``field``.
    """

    def __init__(self, owner: str, field: str, expected: str, value: object) -> None:
        self.owner, self.field = owner, field
        self.problem = f"must be {expected}, got {value!r}"
        super().__init__(f"{owner}.{field} {self.problem}")


def check_option(owner: str, field: str, ok: bool, expected: str, value: object) -> None:
    """Raise :class:`OptionError` unless ``ok`` (write range tests as ``not (...)``-safe
    comparisons so that NaN fails them)."""
    if not ok:
        raise OptionError(owner, field, expected, value)
