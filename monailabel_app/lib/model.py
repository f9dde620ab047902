"""The served model and its versions: the base model, fine-tuned versions, candidates.

Files (``--conf model_dir``, default ``<app>/model/maht_net``)::

    model.pt            the served fine-tuned model (absent: the base model is served)
    candidate.pt        the last trained model that was not promoted (or the one rolled back)
    history/*.pt        every fine-tuned model served before, oldest first (name: UTC time + sha)
    promotion.json      the decisions: served and candidate figures on the held-out films, why

The base model (``--conf model``, default the bundle's ``models/model.pt``, i.e. the shipped
one) is only read, never written. Every change of the served model is one ``os.replace`` onto
``model.pt`` (or its removal), so a server killed at any moment restarts on one complete model;
the server notices the change on the next request (path, ``mtime``, size and inode are checked
on every request; the SHA-256 is computed once per version and reported as the model version).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from maht_net.inference.predictor import Predictor, load_model
from maht_net.inference.refine import Refiner, load_refiner
from maht_net.io.atomic import atomic_write, remove_unfinished_writes, write_json_atomic
from maht_net.io.checkpoint import file_sha256

from .errors import NoModelError, user_errors

logger = logging.getLogger(__name__)

SERVED, CANDIDATE, HISTORY, DECISIONS = "model.pt", "candidate.pt", "history", "promotion.json"


class ModelStore:
    """Thread-safe holder of the served network.

    ``predictor(mc_samples, tta)`` returns a :class:`~maht_net.inference.predictor.Predictor` on the current
    weights; use it under :attr:`lock` (MC-dropout switches dropout layers to training mode).

    Args:
        base: the base model file (read only).
        model_dir: where fine-tuned versions live (see the module docstring).
    """

    def __init__(self, base: str | os.PathLike, model_dir: str | os.PathLike, device: str = "cpu") -> None:
        self.base = Path(base)
        self.model_dir = Path(model_dir)
        self.device = device
        self.lock = threading.RLock()
        self._key: tuple | None = None
        self._network: Any = None
        self._info: dict[str, Any] | None = None
        self._refiner: Refiner | None = None
        self._sha: tuple[tuple, str] | None = None

    @property
    def fine_tuned(self) -> Path:
        return self.model_dir / SERVED

    @property
    def path(self) -> Path:
        """The file served now: the promoted fine-tuned model, else the base model."""
        return self.fine_tuned if self.fine_tuned.is_file() else self.base

    def _stat_key(self) -> tuple | None:
        path = self.path
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return (str(path), st.st_mtime_ns, st.st_size, st.st_ino)

    def exists(self) -> bool:
        return self.path.is_file()

    def version(self) -> dict[str, Any] | None:
        """``{"path", "source", "mtime", "size", "sha256"}`` of the served file (``source``: ``base``
        or ``fine-tuned``), or None when there is none."""
        with self.lock:
            key = self._stat_key()
            if key is None:
                return None
            if self._sha is None or self._sha[0] != key:
                self._sha = (key, file_sha256(key[0]))
            source = "fine-tuned" if key[0] == str(self.fine_tuned) else "base"
            return {"path": key[0], "source": source, "mtime": key[1] / 1e9, "size": key[2], "sha256": self._sha[1]}

    def load(self) -> tuple[Any, dict[str, Any]]:
        """``(network, info)`` of the current file (its first stage), reloading it when it changed.

        Raises:
            NoModelError: no model file (409, "no trained model yet: run training ...").
            HTTPException: 409 naming the file when it is corrupt or not a MAHT-Net checkpoint.
        """
        with self.lock:
            key = self._stat_key()
            if key is None:
                raise NoModelError(self.path)
            if key != self._key:
                with user_errors(f"model file {key[0]}: ", status=409):
                    network, info = load_model(key[0], self.device)
                    refiner = load_refiner(key[0], self.device)
                logger.info("%s model %s (stages: %s)", "reloading" if self._key else "loading", key[0], "coarse, refine" if refiner else "coarse")
                self._network, self._info, self._refiner, self._key = network, info, refiner, key
            return self._network, self._info

    def predictor(
        self, mc_samples: int = 0, tta: bool = False, calibrate: bool = True, default_spacing: tuple[float, float] | None = None
    ) -> Predictor:
        """Both stages of the served model (the refinement stage when the file holds one);
        ``default_spacing``: mm/px of films that state none (``--conf default_spacing``)."""
        with self.lock:
            network, info = self.load()
            refiner = self._refiner
        return Predictor(network, info, device=self.device, mc_samples=mc_samples, tta=tta, calibrate=calibrate, refiner=refiner,
                         default_spacing=default_spacing)  # fmt: skip

    @property
    def landmark_set(self) -> str:
        if self._info is not None:
            return self._info.get("landmark_set", "isbi2015")
        return "isbi2015"


def _copy_in(src: Path, dst: Path) -> None:
    """Copy ``src`` over ``dst`` atomically (:func:`~maht_net.io.atomic.atomic_write`)."""
    with open(src, "rb") as f, atomic_write(dst, "wb") as out:
        shutil.copyfileobj(f, out)


def _remove_unfinished(folder: Path) -> None:
    """Delete the temporary files of a change a killed server never finished. Done by the
    changes themselves, which MONAI Label runs one at a time (its training queue), and not at
    start-up, when a training subprocess may be writing."""
    removed = remove_unfinished_writes(folder, recursive=True)
    if removed:
        logger.warning("removed %d unfinished write(s) of an interrupted promotion: %s", len(removed), ", ".join(p.name for p in removed))


def promote(model_dir: str | os.PathLike, new_model: str | os.PathLike) -> str:
    """Serve ``new_model``: the fine-tuned model served until now (if any) goes to ``history/``,
    then the new one replaces ``model.pt`` in one rename. Returns the new file's SHA-256."""
    folder = Path(model_dir)
    _remove_unfinished(folder)
    served = folder / SERVED
    if served.is_file():
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(served.stat().st_mtime))
        _copy_in(served, folder / HISTORY / f"{stamp}-{file_sha256(served)[:12]}.pt")
    _copy_in(Path(new_model), served)
    return file_sha256(served)


def keep_candidate(model_dir: str | os.PathLike, new_model: str | os.PathLike) -> str:
    """Keep a model that was not promoted as ``candidate.pt``; returns its SHA-256."""
    target = Path(model_dir) / CANDIDATE
    _remove_unfinished(target.parent)
    _copy_in(Path(new_model), target)
    return file_sha256(target)


def restore_previous(model_dir: str | os.PathLike) -> dict[str, Any]:
    """Serve the model served before the current fine-tuned one: the newest ``history/`` entry,
    or the base model when there is none. The model rolled back from becomes ``candidate.pt``.

    Raises:
        FileNotFoundError: no fine-tuned model is served (the base model has no predecessor).
    """
    folder = Path(model_dir)
    served = folder / SERVED
    if not served.is_file():
        raise FileNotFoundError("the base model is served: there is no earlier model to restore")
    _remove_unfinished(folder)
    rolled_back = file_sha256(served)
    _copy_in(served, folder / CANDIDATE)
    history = sorted((folder / HISTORY).glob("*.pt"))
    if history:
        os.replace(history[-1], served)
        restored = history[-1].name
    else:
        os.remove(served)
        restored = "base"
    return {"restored": restored, "rolled_back_sha256": rolled_back}


def record_decision(model_dir: str | os.PathLike, decision: dict[str, Any]) -> None:
    """Append a promotion decision to ``promotion.json`` (newest last)."""
    path = Path(model_dir) / DECISIONS
    decisions = read_decisions(model_dir)
    decisions.append(decision)
    write_json_atomic(path, decisions)


def read_decisions(model_dir: str | os.PathLike) -> list[dict[str, Any]]:
    try:
        return json.loads((Path(model_dir) / DECISIONS).read_text())
    except (FileNotFoundError, ValueError):
        return []
