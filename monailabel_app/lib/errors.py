"""Errors a client should see as a 4xx answer with a readable message, never a 500.

Raising :class:`fastapi.HTTPException` from inside a request handler is what FastAPI turns into
that answer; the same exception raised in a training or scoring subprocess simply ends that
job with the message in its log.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from fastapi import HTTPException

from maht_net.errors import InputError

logger = logging.getLogger(__name__)

NO_MODEL = (
    "no trained model at {path}: start the server with the shipped one (--conf model bundle/models/model.pt, the "
    "default) or train one (MONAI Label 'Train', or python -m monai.bundle run training)"
)


class NoModelError(HTTPException):
    """The served model file does not exist (409: the server works, the model is to be trained)."""

    def __init__(self, path) -> None:
        super().__init__(status_code=409, detail=NO_MODEL.format(path=path))


def http_error(status: int, message: str) -> HTTPException:
    logger.warning("rejected (%d): %s", status, message)
    return HTTPException(status_code=status, detail=message)


@contextlib.contextmanager
def user_errors(prefix: str = "", status: int = 400) -> Iterator[None]:
    """Turn :class:`~maht_net.errors.InputError` (bad input data) into an HTTP ``status`` error.

    The message is the problem without the server-side path (``prefix`` names the image).
    """
    try:
        yield
    except InputError as e:
        raise http_error(status, f"{prefix}{e.problem}") from None
