"""Reading user-supplied JSON files with errors that name the file and the problem."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from maht_net.errors import InputError

__all__ = ["read_json"]


def read_json(path: str | os.PathLike, kind: str = "JSON file", *, name_file: bool = True) -> Any:
    """Parse the UTF-8 JSON file ``path`` (any JSON value; callers check its shape).

    Args:
        path: the file.
        kind: what the file should be, used in the messages ("prediction JSON", "datalist").
        name_file: put ``path`` in the error (``False`` for temporary upload names that would
            mean nothing to the user).

    Raises:
        InputError: ``"<path>: <kind> not found"``, ``"<path>: cannot read <kind> (...)"`` or
            ``"<path>: not a valid <kind> (<parser message>)"``.
    """
    path = Path(path)
    shown = path if name_file else None
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(shown, f"{kind} not found") from None
    except UnicodeDecodeError as e:
        raise InputError(shown, f"not a valid {kind} ({e})") from None
    except OSError as e:
        raise InputError(shown, f"cannot read {kind} ({e.strerror or e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(shown, f"not a valid {kind} ({e})") from None
