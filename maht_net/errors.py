"""Errors raised for bad user input. Each names the offending file and the problem."""

from __future__ import annotations

import os

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad input data: ``str(err)`` reads ``"<path>: <problem>"``.

    Raised instead of letting a deep library error escape, so the CLI, the bundle and the
    MONAI Label app can report it (CLI exit code 2, server 4xx) without a traceback.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(problem if self.path is None else f"{self.path}: {problem}")
