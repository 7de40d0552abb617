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
