"""The served model: loaded on first use, reloaded when ``model.pt`` changes on disk.

A training run publishes a new ``model.pt`` with an atomic rename, so the next request after
it sees the new weights without a server restart (the file's ``mtime``/size/inode are checked
on every request; the SHA-256 is computed once per version and reported as the model version).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from maht_net.inference.predictor import Predictor, load_model
from maht_net.io.checkpoint import file_sha256

from .errors import NoModelError, user_errors

logger = logging.getLogger(__name__)


class ModelStore:
    """Thread-safe holder of the network behind ``path``.

    ``predictor(mc_samples, tta)`` returns a :class:`~maht_net.inference.predictor.Predictor` on the current
    weights; use it under :attr:`lock` (MC-dropout switches dropout layers to training mode).
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu") -> None:
        self.path = Path(path)
        self.device = device
        self.lock = threading.RLock()
        self._key: tuple | None = None
        self._network: Any = None
        self._info: dict[str, Any] | None = None
        self._sha: tuple[tuple, str] | None = None

    def _stat_key(self) -> tuple | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def exists(self) -> bool:
        return self.path.is_file()

    def version(self) -> dict[str, Any] | None:
        """``{"path", "mtime", "size", "sha256"}`` of the model file, or None when there is none."""
        with self.lock:
            key = self._stat_key()
            if key is None:
                return None
            if self._sha is None or self._sha[0] != key:
                self._sha = (key, file_sha256(self.path))
            return {"path": str(self.path), "mtime": key[0] / 1e9, "size": key[1], "sha256": self._sha[1]}

    def load(self) -> tuple[Any, dict[str, Any]]:
        """``(network, info)`` of the current file, reloading it when it changed.

        Raises:
            NoModelError: no model file (409, "no trained model yet: run training ...").
            HTTPException: 409 naming the file when it is corrupt or not a MAHT-Net checkpoint.
        """
        with self.lock:
            key = self._stat_key()
            if key is None:
                raise NoModelError(self.path)
            if key != self._key:
                with user_errors(f"model file {self.path}: ", status=409):
                    network, info = load_model(self.path, self.device)
                logger.info("%s model %s", "reloading" if self._key else "loading", self.path)
                self._network, self._info, self._key = network, info, key
            return self._network, self._info

    def predictor(self, mc_samples: int = 0, tta: bool = False, calibrate: bool = True) -> Predictor:
        network, info = self.load()
        return Predictor(network, info, device=self.device, mc_samples=mc_samples, tta=tta, calibrate=calibrate)

    @property
    def landmark_set(self) -> str:
        if self._info is not None:
            return self._info.get("landmark_set", "isbi2015")
        return "isbi2015"
