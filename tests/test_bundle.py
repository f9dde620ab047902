"""The MONAI bundle, checked the way the model zoo checks its own: metadata against the schema,
ConfigWorkflow properties for train / train+evaluate / inference, a real tiny training run,
evaluation, inference, export, and clear errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from maht_net.datalist import read_datalist
from maht_net.errors import InputError
from maht_net.phantom import make_phantom_dataset

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
CONFIGS = BUNDLE / "configs"
SCHEMA = REPO.parent / "shared" / "reference" / "meta_schema_20240725.json"
TINY = {
    "input_size": [64, 96],
    "batch_size": 4,
    "epochs": 2,
    "stage_epochs": [1, 1],
    "progress_bar": False,
    "num_workers": 0,
    "network_kwargs": {"encoder": "efficientnet_b0", "decoder_channels": 32, "transformer_dim": 64, "transformer_depth": 1, "transformer_heads": 4},
}


def workflow(configs, workflow_type, bundle_root, **override):
    from monai.bundle import ConfigWorkflow

    files = [str(CONFIGS / c) for c in configs]
    return ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(bundle_root),
        **override,
    )


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    return make_phantom_dataset(out, n=16, seed=3, size=(256, 320))


@pytest.fixture(scope="module")
def trained(phantom, tmp_path_factory):
    """A bundle root with a 2-epoch model trained through the real train.json."""
    root = tmp_path_factory.mktemp("bundle")
    wf = workflow(["train.json"], "train", root, datalist=str(phantom), **TINY)
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    return root


def test_metadata_is_valid_against_the_schema():
    if not SCHEMA.is_file():
        pytest.skip(f"schema not found at {SCHEMA}")
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA))
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    from maht_net.landmarks import ISBI2015

    channels = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert [channels[str(i)] for i in range(19)] == ISBI2015.names
    assert meta["version"] in meta["changelog"]


def test_bundle_layout():
    for rel in ("configs/metadata.json", "configs/train.json", "configs/evaluate.json", "configs/inference.json",
                "configs/multi_gpu_train.json", "configs/logging.conf", "docs/README.md", "docs/data_license.txt", "LICENSE"):
        assert (BUNDLE / rel).is_file(), rel


def test_verify_net_in_out():
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=str(CONFIGS / "metadata.json"), config_file=str(CONFIGS / "train.json"), device="cpu")


def test_training_writes_checkpoints_with_inference_info(trained):
    state = torch.load(trained / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert set(state) == {"model", "info"}
    assert state["info"]["landmark_names"][0] == "sella" and state["info"]["input_size"] == [64, 96]
    last = torch.load(trained / "models" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "trainer", "lr_scheduler", "best", "info"} <= set(last)
    assert last["trainer"]["iteration"] == 2 * last["trainer"]["epoch_length"]  # both epochs done
    assert list((trained / "eval").glob("events.out.tfevents.*")), "TensorBoard log missing"


def test_train_and_evaluate_workflow(trained, phantom):
    wf = workflow(["train.json", "evaluate.json"], "eval", trained, datalist=str(phantom), **TINY)
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    metrics = json.loads((trained / "eval" / "metrics.json").read_text())
    n_test = len(read_datalist(phantom)["test"])
    assert metrics["summary"]["counts"]["images"] == n_test and metrics["unit"] == "mm"
    assert len(list((trained / "eval" / "predictions").glob("*_landmarks.json"))) == n_test


def test_inference_workflow_writes_all_outputs(trained, phantom, tmp_path):
    images = sorted((phantom.parent / "images").glob("*.png"))[:2]
    out = tmp_path / "out"
    wf = workflow(["inference.json"], "infer", trained, input_files=[str(p) for p in images], output_dir=str(out), spacing=[0.3, 0.3])
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    for p in images:
        pred = json.loads((out / f"{p.stem}_landmarks.json").read_text())
        assert pred["width"] == 256 and pred["height"] == 320 and pred["spacing"] == [0.3, 0.3]
        assert len(pred["landmarks"]) == 19 and all(0 <= r["x"] < 256 and 0 <= r["y"] < 320 for r in pred["landmarks"])
        assert (out / f"{p.stem}_landmarks.mrk.json").is_file() and (out / f"{p.stem}_overlay.png").is_file()


def test_ckpt_export_torchscript_loads_and_matches(trained, tmp_path):
    ts = tmp_path / "model.ts"
    cmd = [
        sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def",
        "--filepath", str(ts), "--ckpt_file", str(trained / "models" / "model.pt"),
        "--meta_file", str(CONFIGS / "metadata.json"), "--config_file", str(CONFIGS / "train.json"),
        "--bundle_root", str(trained), "--key_in_ckpt", "model", "--use_trace", "True",
        "--input_shape", "[1, 1, 96, 64]", "--network_kwargs", json.dumps(TINY["network_kwargs"]),
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    module = torch.jit.load(str(ts))
    from maht_net.inference import load_model

    net, _ = load_model(trained / "models" / "model.pt")
    x = torch.rand(1, 1, 96, 64)
    with torch.no_grad():
        diff = float((module(x) - net(x)).abs().max())
    print(f"ckpt_export TorchScript vs eager: max |diff| = {diff:.2e}")
    assert diff < 1e-4


def test_missing_datalist_fails_before_training(tmp_path):
    wf = workflow(["train.json"], "train", tmp_path, datalist=str(tmp_path / "nope.json"), **TINY)
    wf.initialize()
    with pytest.raises(Exception) as err:
        wf.run()
    assert "nope.json: datalist not found" in "".join(str(e) for e in _chain(err.value))
    assert not (tmp_path / "models" / "checkpoint_last.pt").exists()


def test_bad_datalist_content_fails_before_training(phantom, tmp_path):
    doc = read_datalist(phantom)
    doc["training"][0]["landmarks"] = doc["training"][0]["landmarks"][:18]
    doc["training"][1]["image"] = str(tmp_path / "missing.png")
    for item in doc["training"] + doc["validation"] + doc["test"]:
        if not os.path.isabs(item["image"]):
            item["image"] = str((phantom.parent / item["image"]).resolve())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    wf = workflow(["train.json"], "train", tmp_path, datalist=str(bad), **TINY)
    wf.initialize()
    with pytest.raises(Exception) as err:
        wf.run()
    assert "landmarks has 18 points, expected 19" in "".join(str(e) for e in _chain(err.value))


def _chain(exc):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__
