"""Helpers the MONAI bundle configs call: where the bundle is, which datalist to use,
the optimizer; and packaging the bundle as a zip."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from maht_net.datasets.phantom import ensure_phantom_dataset
from maht_net.errors import InputError
from maht_net.io.checkpoint import load_checkpoint_file, training_recipe

__all__ = ["default_bundle_root", "resolve_datalist", "make_optimizer", "package_bundle", "BUNDLE_NAME"]

logger = logging.getLogger(__name__)


def default_bundle_root() -> str:
    """The folder holding ``configs/`` of the bundle being run.

    ``python -m monai.bundle run ... --config_file X/configs/train.json`` runs from any working
    directory; the bundle root is then ``X``, taken from the command line, so outputs land in
    the bundle (``X/models``, ``X/eval``) rather than wherever the command was typed. Without
    such a command line (Python API), the working directory is used, as in model-zoo bundles;
    pass ``bundle_root=...`` to override.
    """
    argv = sys.argv
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == "--config_file" and i + 1 < len(argv) else arg.split("=", 1)[1] if arg.startswith("--config_file=") else None
        if value:
            first = value.strip("[]'\" ").split(",")[0].strip("'\" ")
            configs = Path(first).absolute().parent
            return str(configs.parent if configs.name == "configs" else configs)
    return os.getcwd()


def resolve_datalist(datalist: str | None, phantom_dir: str, phantom_n: int = 100, phantom_seed: int = 0) -> str:
    """The datalist to train on: ``datalist`` when given (it must exist), else the embedded
    phantom set in ``phantom_dir``, generated on first use."""
    if datalist:
        if not Path(datalist).is_file():
            raise InputError(datalist, "datalist not found")
        return str(Path(datalist).absolute())

    path = ensure_phantom_dataset(phantom_dir, n=int(phantom_n), seed=int(phantom_seed))
    logger.info("using the phantom datalist %s", path)
    return str(path)


def make_optimizer(network, lr: float, weight_decay: float = 1e-4):
    """AdamW over the network's parameter groups (encoder first, for differential LRs), or
    over all parameters for networks without groups."""
    import torch

    params = network.parameter_groups(lr, 1.0) if hasattr(network, "parameter_groups") else network.parameters()
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


BUNDLE_NAME = "maht_net_cephalometric"
BUNDLE_PARTS = ("configs", "docs", "scripts", "LICENSE")


def package_bundle(bundle_dir: str | os.PathLike, out_dir: str | os.PathLike = "dist", name: str = BUNDLE_NAME, model_files: tuple[str, ...] = ("model.pt",)) -> Path:
    """Zip a trained bundle for other sites: ``<out_dir>/<name>_v<version>.zip``.

    The zip holds one top-level ``<name>/`` folder (what ``monai.bundle download`` expects) with
    configs, docs, scripts, LICENSE, ``models/<model_files>`` and ``large_files.yml`` listing
    each model file with its SHA-256. ``train.json`` and ``metadata.json`` are synchronised
    with the recipe recorded in ``model.pt`` (network, its arguments, input size, sigma, ...),
    so ``monai.bundle.load`` and ``verify_net_in_out`` at the other site build the network the
    weights belong to. Written to a temporary name and renamed, so an interrupted run leaves
    no partial zip.

    Raises:
        InputError: no ``configs/metadata.json`` or a listed model file is missing.
    """
    import hashlib
    import json
    import zipfile

    bundle = Path(bundle_dir)
    meta_path = bundle / "configs" / "metadata.json"
    if not meta_path.is_file():
        raise InputError(meta_path, "not a bundle: configs/metadata.json missing")
    version = json.loads(meta_path.read_text())["version"]
    models = [bundle / "models" / m for m in model_files]
    for m in models:
        if not m.is_file():
            raise InputError(m, "model file missing: train the bundle first (python -m monai.bundle run training ...)")
    out = Path(out_dir) / f"{name}_v{version}.zip"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    lines = ["large_files:"]
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            synced = _configs_for_checkpoint(bundle, bundle / "models" / "model.pt")
            for part in BUNDLE_PARTS:
                src = bundle / part
                files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
                for f in files:
                    rel = f.relative_to(bundle).as_posix()
                    if rel in synced:
                        zf.writestr(f"{name}/{rel}", synced[rel])
                    else:
                        zf.write(f, f"{name}/{rel}")
            for m in models:
                digest = hashlib.sha256(m.read_bytes()).hexdigest()
                zf.write(m, f"{name}/models/{m.name}")
                lines += [f'  - path: "models/{m.name}"', f'    hash_val: "{digest}"', '    hash_type: "sha256"']
            zf.writestr(f"{name}/large_files.yml", "\n".join(lines) + "\n")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _configs_for_checkpoint(bundle: Path, checkpoint: Path) -> dict[str, str]:
    """``configs/train.json`` and ``configs/metadata.json`` rewritten to the checkpoint's recipe."""
    import json

    info = load_checkpoint_file(checkpoint)["info"]
    train = json.loads((bundle / "configs" / "train.json").read_text())
    train.update(training_recipe(info))
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    fmt = meta["network_data_format"]
    w, h, stride = info["input_size"][0], info["input_size"][1], info["stride"]
    fmt["inputs"]["image"]["spatial_shape"] = [h, w]
    fmt["outputs"]["pred"]["spatial_shape"] = [h // stride, w // stride]
    fmt["outputs"]["pred"]["num_channels"] = len(info["landmark_names"])
    fmt["outputs"]["pred"]["channel_def"] = {str(i): n for i, n in enumerate(info["landmark_names"])}
    return {"configs/train.json": json.dumps(train, indent=4) + "\n", "configs/metadata.json": json.dumps(meta, indent=4) + "\n"}
