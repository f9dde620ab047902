"""Helpers the MONAI bundle configs call: where the bundle is, which datalist to use,
the optimizer; and packaging the bundle as a zip."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from maht_net.datasets.phantom import ensure_phantom_dataset
from maht_net.errors import InputError
from maht_net.io.checkpoint import file_sha256, load_checkpoint_file, training_recipe

__all__ = [
    "default_bundle_root",
    "resolve_datalist",
    "make_optimizer",
    "large_files_yml",
    "build_wheel",
    "package_bundle",
    "BUNDLE_NAME",
]

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
SOURCE_TREE = Path(__file__).resolve().parents[2]
"""The repository this package runs from (holds ``pyproject.toml`` in a source checkout)."""


def large_files_yml(models: Sequence[str | os.PathLike]) -> str:
    """``large_files.yml`` (model-zoo format) listing each file of ``models/`` with its sha256.

    The weights travel inside the bundle, so ``url`` says so: MONAI's ``download_large_files``
    finds each file present with the right hash and downloads nothing.
    """
    lines = ["large_files:"]
    for m in map(Path, models):
        lines += [f'  - path: "models/{m.name}"', '    url: "shipped inside the bundle: no download"',
                  f'    hash_val: "{file_sha256(m)}"', '    hash_type: "sha256"']  # fmt: skip
    return "\n".join(lines) + "\n"


def build_wheel(out_dir: str | os.PathLike) -> Path:
    """Build the ``maht-net`` wheel from :data:`SOURCE_TREE` into ``out_dir`` (no dependencies,
    no build isolation: setuptools and wheel come from this environment, nothing is downloaded).

    Raises:
        InputError: this package was not installed from a source checkout, or the build failed.
    """
    if not (SOURCE_TREE / "pyproject.toml").is_file():
        raise InputError(SOURCE_TREE, "no pyproject.toml: the wheel can only be built from a source checkout of maht-net")
    out_dir = Path(out_dir)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out_dir), str(SOURCE_TREE)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(out_dir.glob("maht_net-*.whl"))
    if res.returncode != 0 or not wheels:
        raise InputError(SOURCE_TREE, f"building the maht-net wheel failed: {(res.stderr or res.stdout).strip()[-500:]}")
    return wheels[-1]


def package_bundle(
    bundle_dir: str | os.PathLike,
    out_dir: str | os.PathLike = "dist",
    name: str = BUNDLE_NAME,
    model_files: tuple[str, ...] = ("model.pt",),
    wheel: bool = True,
) -> Path:
    """Zip a trained bundle for other sites: ``<out_dir>/<name>_v<version>.zip``.

    The zip holds one top-level ``<name>/`` folder (what ``monai.bundle download`` expects) with
    configs, docs, scripts, LICENSE, ``models/<model_files>``, ``large_files.yml`` listing
    each model file with its SHA-256 and, with ``wheel``, ``wheels/maht_net-*.whl``: the code the
    configs import, so a site installs it from the zip alone (``pip install <name>/wheels/*.whl``
    next to the public packages). ``train.json`` and ``metadata.json`` are synchronised
    with the recipe recorded in ``model.pt`` (network, its arguments, input size, sigma, ...),
    so ``monai.bundle.load`` and ``verify_net_in_out`` at the other site build the network the
    weights belong to. Written to a temporary name and renamed, so an interrupted run leaves
    no partial zip.

    Raises:
        InputError: no ``configs/metadata.json``, a listed model file is missing, or the wheel
            cannot be built.
    """
    import json
    import tempfile
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
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf, tempfile.TemporaryDirectory() as build:
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
                zf.write(m, f"{name}/models/{m.name}")
            zf.writestr(f"{name}/large_files.yml", large_files_yml(models))
            if wheel:
                built = build_wheel(build)
                zf.write(built, f"{name}/wheels/{built.name}")
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
