"""The MONAI bundle, checked the way the model zoo checks its own: metadata against the schema,
ConfigWorkflow properties for train / train+evaluate / inference, a real tiny training run,
evaluation, inference, export, and clear errors for bad input."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from maht_net.datasets.phantom import make_phantom_dataset
from maht_net.errors import InputError
from maht_net.io.datalist import load_datalist, read_datalist

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
    "refine_stage": False,
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
                "configs/multi_gpu_train.json", "configs/train_gpu.json", "configs/logging.conf", "docs/README.md", "docs/data_license.txt", "LICENSE"):
        assert (BUNDLE / rel).is_file(), rel


def test_verify_net_in_out():
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=str(CONFIGS / "metadata.json"), config_file=str(CONFIGS / "train.json"), device="cpu")


def test_training_writes_checkpoints_with_inference_info(trained):
    state = torch.load(trained / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert set(state) == {"model", "info"}
    assert state["info"]["landmark_names"][0] == "sella" and state["info"]["input_size"] == [64, 96]
    calibration = state["info"]["uncertainty_calibration"]  # fitted on the validation section when training ends
    assert calibration["section"] == "validation" and calibration["method"] == "sigma_scaling"
    assert len(calibration["scale"]) == 19 and all(s > 0 for s in calibration["scale"])
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
    pred = json.loads(next((trained / "eval" / "predictions").glob("*_landmarks.json")).read_text())
    assert pred["uncertainty_calibration"]["section"] == "validation"  # evaluation reports calibrated uncertainty


REFINE_TINY = {"refine_stage": True, "refine_network": "refine_net_small", "refine_iterations": 3, "refine_batch_size": 2}


def test_training_trains_both_stages_and_evaluation_scores_the_second(trained, phantom, tmp_path):
    """``training`` with ``refine_stage`` writes a two-stage model (its own run id ``refining``
    adds the stage to an existing one); ``evaluating`` scores both stages through the Predictor's
    code path, or the first stage alone with ``refine=False``."""
    from maht_net.inference.device import default_device
    from maht_net.inference.predictor import Predictor
    from maht_net.io.checkpoint import checkpoint_stages

    root = tmp_path / "bundle"
    wf = workflow(["train.json"], "train", root, datalist=str(phantom), **{**TINY, "epochs": 1, **REFINE_TINY})
    wf.initialize()
    wf.run()
    wf.finalize()
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert checkpoint_stages(state) == ["coarse", "refine"]
    assert state["refine"]["info"]["network"] == "refine_net_small" and state["refine"]["info"]["trained"]["iterations"] == 3
    assert state["refine"]["info"]["shift_mm"] == 2.0  # train.json's refine_shift_mm, for inference
    assert state["info"]["uncertainty_calibration"]["section"] == "validation"  # calibration kept
    both = state["refine"]["info"]["uncertainty_calibration"]  # and the two stages' combined uncertainty calibrated
    assert both["section"] == "validation" and both["combine"] == "fuse" and len(both["scale"]) == 19

    second = tmp_path / "second"
    shutil.copytree(trained / "models", second / "models")
    assert checkpoint_stages(torch.load(second / "models" / "model.pt", map_location="cpu", weights_only=True)) == ["coarse"]
    wf = workflow(["train.json"], "train", second, datalist=str(phantom), run_id="refining", **{**TINY, **REFINE_TINY})
    wf.initialize()
    wf.run()
    wf.finalize()
    refined = torch.load(second / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert checkpoint_stages(refined) == ["coarse", "refine"] and refined["refine"]["info"]["uncertainty_calibration"]["combine"] == "fuse"

    test = load_datalist(phantom, "test")
    for refine in (True, False):
        wf = workflow(["train.json", "evaluate.json"], "eval", root, datalist=str(phantom), refine=refine, **TINY)
        wf.initialize()
        wf.run()
        wf.finalize()
        direct = Predictor.from_checkpoint(root / "models" / "model.pt", default_device(), refine=refine).predict(test)  # the bundle's device
        for item, doc in zip(test, direct):
            written = json.loads((root / "eval" / "predictions" / f"{item['id']}_landmarks.json").read_text())
            assert ("stages" in written) == refine == ("stages" in doc)
            # batch 4 here vs 1 there: an untrained net's flat heatmaps move by ~1e-3 px with the batch
            np.testing.assert_allclose([[r["x"], r["y"]] for r in written["landmarks"]], [[r["x"], r["y"]] for r in doc["landmarks"]], atol=0.01)
        metrics = json.loads((root / "eval" / "metrics.json").read_text())
        assert metrics["summary"]["counts"]["images"] == len(test)


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
        assert pred["uncertainty_calibration"]["method"] == "sigma_scaling"
        cov = np.array([r["covariance_px"] for r in pred["landmarks"]])
        np.testing.assert_allclose(np.sqrt(cov[:, 0, 0] + cov[:, 1, 1]), [r["uncertainty_px"] for r in pred["landmarks"]], rtol=1e-5)


def test_inference_workflow_runs_both_stages_of_a_two_stage_checkpoint(trained, phantom, tmp_path):
    """inference.json with a refinement stage in the checkpoint: the same landmarks as the
    Predictor (one prediction path), the first stage's kept; ``refine=false`` gives the first stage,
    ``refine_shift_mm=0`` one centred patch per landmark instead of the stage's shifted patches."""
    from maht_net.engine.refine import train_refiner
    from maht_net.inference.device import default_device
    from maht_net.inference.predictor import Predictor, load_model
    from maht_net.inference.refine import load_refiner
    from maht_net.io.checkpoint import attach_refine_stage
    from maht_net.io.datalist import load_datalist

    root = tmp_path / "bundle"
    shutil.copytree(trained / "models", root / "models")
    _, stage = train_refiner(load_datalist(phantom, "training")[:4], network="refine_net_small", iterations=3, batch_size=2, desc=None)
    attach_refine_stage(root / "models" / "model.pt", stage)
    images = sorted((phantom.parent / "images").glob("*.png"))[:2]
    model, device = root / "models" / "model.pt", default_device()  # the bundle's device
    variants = {  # inference.json overrides -> the predictor that should give the same landmarks
        "both": ({}, Predictor.from_checkpoint(model, device)),
        "first": ({"refine": False}, Predictor.from_checkpoint(model, device, refine=False)),
        "one patch": ({"refine_shift_mm": 0.0}, Predictor(*load_model(model, device), device, refiner=load_refiner(model, device, shift_mm=0.0))),
    }
    runs = {}
    for name, (overrides, predictor) in variants.items():
        out = tmp_path / f"out-{name}"
        wf = workflow(["inference.json"], "infer", root, input_files=[str(p) for p in images], output_dir=str(out), spacing=[0.3, 0.3], overlay=False, **overrides)
        wf.initialize()
        wf.run()
        runs[name] = [json.loads((out / f"{p.stem}_landmarks.json").read_text()) for p in images]
        direct = predictor.predict([{"image": str(p), "spacing": [0.3, 0.3]} for p in images])
        for a, b in zip(runs[name], direct):
            np.testing.assert_allclose([[r["x"], r["y"]] for r in a["landmarks"]], [[r["x"], r["y"]] for r in b["landmarks"]], atol=1e-3)
    shifted, centred = (np.array([[[r["x"], r["y"]] for r in p["landmarks"]] for p in runs[k]]) for k in ("both", "one patch"))
    assert np.abs(shifted - centred).max() > 0.01  # the override reached the refinement stage
    for on, off in zip(runs["both"], runs["first"]):
        assert on["stages"] == ["coarse", "refine"] and "stages" not in off
        np.testing.assert_allclose([[r["coarse_x"], r["coarse_y"]] for r in on["landmarks"]], [[r["x"], r["y"]] for r in off["landmarks"]], atol=1e-6)


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
    from maht_net.inference.predictor import load_model

    net, _ = load_model(trained / "models" / "model.pt")
    x = torch.rand(1, 1, 96, 64)
    with torch.no_grad():
        diff = float((module(x) - net(x)).abs().max())
    print(f"ckpt_export TorchScript vs eager: max |diff| = {diff:.2e}")
    assert diff < 1e-4


def test_model_zoo_data_keys_take_item_lists_without_a_datalist(phantom, tmp_path):
    """MONAI Label's stock BundleTrainTask and MONAI FL drive a bundle by setting
    ``train#dataset#data`` and ``validate#dataset#data`` to item lists."""
    doc = read_datalist(phantom)
    train, val = ([dict(it, image=str((phantom.parent / it["image"]).resolve())) for it in doc[sec][:k]] for sec, k in (("training", 4), ("validation", 2)))
    overrides = {**TINY, "epochs": 1, "stage_epochs": [1, 1], "train#dataset#data": train, "validate#dataset#data": val}
    wf = workflow(["train.json"], "train", tmp_path, **overrides)
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    assert len(wf.parser.get_parsed_content("train#dataset")) == 4 and len(wf.parser.get_parsed_content("validate#dataset")) == 2
    calibration = torch.load(tmp_path / "models" / "model.pt", weights_only=True)["info"]["uncertainty_calibration"]
    assert calibration["n_images"] == 2  # calibrated on the validation items given
    assert not (tmp_path / "data").exists()  # no phantom set generated: no datalist was needed


def test_inference_with_bundle_root_from_another_working_folder(tiny_checkpoint, phantom, tmp_path):
    """``--config_file`` and ``--bundle_root`` absolute, run from an unrelated folder: every path
    (model, default input and output folders) comes from the bundle root, none from the cwd."""
    import shutil

    root, work = tmp_path / "bundle", tmp_path / "elsewhere"
    shutil.copytree(CONFIGS, root / "configs")
    (root / "models").mkdir()
    shutil.copy(tiny_checkpoint, root / "models" / "model.pt")
    image = sorted((phantom.parent / "images").glob("*.png"))[0]
    (root / "data" / "phantom" / "images").mkdir(parents=True)
    shutil.copy(image, root / "data" / "phantom" / "images")
    work.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", str(root / "configs" / "inference.json"), "--bundle_root", str(root)],
        capture_output=True, text=True, cwd=work, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (root / "eval" / "inference" / f"{image.stem}_landmarks.json").is_file()
    assert list(work.iterdir()) == []


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
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def test_package_download_and_run_at_another_site(trained, phantom, tmp_path):
    import shutil

    from maht_net.engine.bundle import BUNDLE_NAME, package_bundle

    site_bundle = tmp_path / "trained_bundle"
    shutil.copytree(BUNDLE, site_bundle, ignore=shutil.ignore_patterns("models", "eval", "data", "__pycache__"))
    shutil.copytree(trained / "models", site_bundle / "models")
    zip_path = package_bundle(site_bundle, tmp_path / "dist")
    version = json.loads((CONFIGS / "metadata.json").read_text())["version"]
    assert zip_path.name == f"{BUNDLE_NAME}_v{version}.zip"
    downloads = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "monai.bundle", "download", "--name", BUNDLE_NAME, "--url", zip_path.as_uri(), "--bundle_dir", str(downloads)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    root = downloads / BUNDLE_NAME
    assert (root / "large_files.yml").is_file() and (root / "models" / "model.pt").is_file()
    import hashlib

    listed = (root / "large_files.yml").read_text()
    assert hashlib.sha256((root / "models" / "model.pt").read_bytes()).hexdigest() in listed
    # inference from the downloaded copy, in a fresh working directory
    work = tmp_path / "fresh_cwd"
    work.mkdir()
    image = sorted((phantom.parent / "images").glob("*.png"))[0]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", str(root / "configs" / "inference.json"),
         "--input_files", f"['{image}']", "--output_dir", str(work / "out")],
        check=True, capture_output=True, text=True, cwd=work, env=env, timeout=600,
    )
    assert json.loads((work / "out" / f"{image.stem}_landmarks.json").read_text())["landmarks"][0]["name"] == "sella"
    # monai.bundle.load finds the local copy and builds the network its (synchronised) config describes
    from monai.bundle import load

    from maht_net.inference.predictor import load_model

    model = load(name=BUNDLE_NAME, bundle_dir=str(downloads), source="github", key_in_ckpt="model", device="cpu").eval()
    reference, info = load_model(root / "models" / "model.pt")
    x = torch.rand(1, 1, info["input_size"][1], info["input_size"][0])
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_gpu_recipe_layers_on_train_json(phantom, tmp_path):
    wf = workflow(["train.json", "train_gpu.json"], "train", tmp_path, datalist=str(phantom), progress_bar=False)
    wf.initialize()
    assert wf.check_properties() == []
    assert wf.parser.get_parsed_content("input_size") == [512, 640] and wf.parser.get_parsed_content("sigma") == 5.0
    assert [s["epochs"] for s in wf.parser.get_parsed_content("progressive_stages")[:2]] == [36, 12]
    sample = wf.parser.get_parsed_content("validate#dataset")[0]
    assert tuple(sample["image"].shape) == (1, 640, 512)  # (C, H, W) at the GPU recipe's (W, H) = (512, 640)


def test_random_framing_is_a_train_json_key_off_by_default(phantom, tmp_path):
    from maht_net.transforms.spatial import RandLandmarkReframed

    def reframers(**overrides):
        wf = workflow(["train.json"], "train", tmp_path, datalist=str(phantom), **TINY, **overrides)
        return [t for t in wf.parser.get_parsed_content("train#preprocessing").transforms if isinstance(t, RandLandmarkReframed)]

    assert reframers() == []
    (framing,) = reframers(reframe_prob=0.5, reframe_zoom=[0.8, 1.2])
    assert framing.prob == 0.5 and framing.warper.zoom_range == (0.8, 1.2)


def test_input_pixel_size_is_one_train_json_key_that_travels_with_the_model(trained, phantom, tmp_path):
    """``input_mm_per_px`` sets the training and validation preprocessing and is recorded in the
    checkpoint, whose readers (the predictor, inference.json) preprocess with it."""
    from maht_net.inference.predictor import Predictor
    from maht_net.io.checkpoint import checkpoint_recipe

    wf = workflow(["train.json"], "train", tmp_path, datalist=str(phantom), **TINY, input_mm_per_px=3.0)
    wf.initialize()
    np.testing.assert_allclose(wf.parser.get_parsed_content("validate#dataset")[0]["spacing"], (3.0, 3.0), rtol=0.02)
    train_steps = wf.parser.get_parsed_content("train#preprocessing").transforms
    assert [t.resizer.mm_per_px for t in train_steps if hasattr(t, "resizer")] == [3.0]  # before augmentation
    assert wf.parser.get_parsed_content("checkpoint_info").state_dict()["input_mm_per_px"] == 3.0
    state = torch.load(trained / "models" / "model.pt", weights_only=True)
    assert state["info"]["input_mm_per_px"] is None  # the default: every film fills the input
    state["info"]["input_mm_per_px"] = 3.0
    torch.save(state, tmp_path / "physical.pt")
    item = read_datalist(phantom)["test"][0]
    film = {"image": str(phantom.parent / item["image"]), "spacing": item["spacing"]}
    torch.save(dict(state, info={k: v for k, v in state["info"].items() if k != "input_mm_per_px"}), tmp_path / "older.pt")
    physical, older = (Predictor.from_checkpoint(tmp_path / name).transform for name in ("physical.pt", "older.pt"))
    assert float(physical(film)["spacing"][0]) == pytest.approx(3.0, rel=0.02)
    assert float(older(film)["spacing"][0]) == pytest.approx(0.66406 * 256 / 64, rel=0.02)  # fitted: 256 x 320 -> 64 x 80
    unknown = {"image": film["image"]}  # a PNG states no spacing: the film is fitted, as before
    np.testing.assert_allclose(physical(unknown)["image"].meta["orig_to_current"], older(unknown)["image"].meta["orig_to_current"])
    # fine-tuning (the app, train.json's pretrained_checkpoint) keeps what each checkpoint was trained with
    assert checkpoint_recipe(tmp_path / "physical.pt")["input_mm_per_px"] == 3.0
    assert checkpoint_recipe(tmp_path / "older.pt")["input_mm_per_px"] is None
    inference = workflow(["inference.json"], "infer", tmp_path, ckpt_path=str(tmp_path / "physical.pt"), datalist=str(phantom))
    inference.initialize()
    sample = inference.parser.get_parsed_content("preprocessing")(film)
    np.testing.assert_allclose(sample["image"].meta["orig_to_current"], physical(film)["image"].meta["orig_to_current"])


def test_configs_import_only_packages_the_metadata_lists():
    """Every module a config imports or instantiates belongs to a package in metadata.json
    (or to MONAI/PyTorch/NumPy themselves, which the schema lists separately)."""
    import re

    meta = json.loads((CONFIGS / "metadata.json").read_text())
    allowed = {name.replace("-", "_") for name in meta["required_packages_version"]} | {"monai", "torch", "numpy", "os", "ignite"}
    assert "pytorch-ignite" in meta["required_packages_version"]
    for cfg in CONFIGS.glob("*.json"):
        text = cfg.read_text()
        modules = set(re.findall(r"\$import ([a-zA-Z_][\w]*)", text))
        modules |= {t.split(".")[0] for t in re.findall(r'"_target_": "([\w.]+)"', text) if "." in t}
        modules |= set(re.findall(r"\$?\b(maht_net|torch|ignite|monai)\.", text))
        assert modules <= allowed, f"{cfg.name}: {modules - allowed}"


def _cli_overrides(override: dict) -> list[str]:
    args = []
    for key, value in override.items():
        args += [f"--{key}", repr(value) if not isinstance(value, str) else value]
    return args


@pytest.mark.slow  # two torchrun processes train; make test-slow
def test_multi_gpu_config_trains_with_torchrun_on_cpu(phantom, tmp_path):
    """DDP through torchrun with 2 CPU processes (gloo): one short epoch, one checkpoint writer."""
    configs = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
        "-m", "monai.bundle", "run", "training", "--config_file", configs, "--bundle_root", str(tmp_path),
        "--datalist", str(phantom), *_cli_overrides({**TINY, "epochs": 1, "stage_epochs": [1, 1]}),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "models" / "model.pt").is_file() and (tmp_path / "models" / "checkpoint_last.pt").is_file()
    assert (proc.stdout + proc.stderr).count("progressive training: stage 1/3") == 2  # both ranks follow the schedule


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_resume_continues_from_last_checkpoint_with_best_metric(trained, phantom, tmp_path):
    import shutil

    root = tmp_path / "resumed"
    shutil.copytree(trained / "models", root / "models")
    before = torch.load(root / "models" / "checkpoint_last.pt", weights_only=True)
    wf = workflow(["train.json"], "train", root, datalist=str(phantom), **{**TINY, "epochs": 3})
    wf.initialize()
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    trainer = wf.parser.get_parsed_content("train#trainer")
    seen = []
    from ignite.engine import Events

    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: seen.append((e.state.epoch, evaluator.state.best_metric)))
    wf.run()
    assert seen[0] == (3, pytest.approx(before["best"]["best_metric"]))  # only epoch 3 ran, best-so-far restored
    after = torch.load(root / "models" / "checkpoint_last.pt", weights_only=True)
    assert after["trainer"]["iteration"] == 3 * after["trainer"]["epoch_length"]


def test_time_budget_stops_cleanly_and_keeps_a_checkpoint(phantom, tmp_path):
    wf = workflow(["train.json"], "train", tmp_path, datalist=str(phantom), **{**TINY, "epochs": 50, "time_limit_minutes": 0.001})
    wf.initialize()
    wf.run()
    last = torch.load(tmp_path / "models" / "checkpoint_last.pt", weights_only=True)
    assert last["trainer"]["iteration"] == last["trainer"]["epoch_length"]  # the first epoch runs to its end...
    assert (tmp_path / "models" / "model.pt").is_file()  # ...and is validated: a budgeted run always leaves a model


@pytest.mark.parametrize("planned", [5, 40])
def test_time_budget_refits_the_schedule_to_the_epochs_it_holds(planned, monkeypatch):
    """``fit_epochs``: a plan of too few (5) or too many (40) epochs is refitted after the second
    epoch from its real time (a fake clock: 1 s per iteration, 4 per epoch, a 1-minute budget ->
    2 + int(0.97 * 52 / 4) = 14 epochs): the run ends its last epoch within the budget with the
    learning rate annealed to its floor, and the progressive stages keep their share."""
    from ignite.engine import Engine

    from maht_net.engine import handlers

    clock = {"t": 0.0}
    monkeypatch.setattr(handlers.time, "monotonic", lambda: clock["t"])
    net = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    scheduler = handlers.warmup_cosine_scheduler(optimizer, planned, warmup_epochs=1)
    stages = [{"epochs": max(1, round(0.3 * planned))}, {"epochs": max(1, round(0.1 * planned))}, {"epochs": None}]
    progressive = handlers.ProgressiveTrainingHandler(net, optimizer, 1.0, stages, scheduler=scheduler)
    rates = []

    def step(engine, batch):
        clock["t"] += 1.0
        rates.append(optimizer.param_groups[0]["lr"])

    engine = Engine(step)
    progressive.attach(engine)
    budget = handlers.TimeBudgetHandler(1.0, fit_epochs=True, scheduler=scheduler, progressive=progressive)
    budget.attach(engine)
    engine.add_event_handler(handlers.Events.EPOCH_COMPLETED, lambda e: scheduler.step())
    engine.run(range(4), max_epochs=planned)
    assert budget.refit == {"epoch_seconds": 4.0, "planned": planned, "epochs": 14}
    assert engine.state.epoch == engine.state.max_epochs == 14 and clock["t"] <= 60 and not budget.stopped
    assert rates[-1] == pytest.approx(0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * 12 / 13)))  # the curve's last epoch
    assert [s["epochs"] for s in progressive.stages[:2]] == [max(1, round(stages_0 * 14 / planned)) for stages_0 in (max(1, round(0.3 * planned)), max(1, round(0.1 * planned)))]
    without = handlers.TimeBudgetHandler(1.0)  # the default: the plan stands, the budget only stops it
    assert not without.fit_epochs and without.refit is None


def test_time_budget_replans_when_a_stage_costs_less_than_the_first(monkeypatch):
    """The first refit prices every epoch like the first stage's; the stages cost differently (a
    fake clock: 4 iterations an epoch at 1 s each in stage 1, 0.4 s with the encoder frozen in
    stage 2, 0.8 s in stage 3; a 1-minute budget, 40 epochs planned, stages 12 / 4 / rest). The
    refit at epoch 3 plans 14 (stages 4 / 1 / 9, ending at 46.4 s: 13.6 s unused); the first
    epoch of stage 2 (ends at 17.6 s) re-plans 5 + int(0.97 x 42.4 / 4) = 15 (stage 3 unmeasured:
    priced at stage 1's 4 s), the first of stage 3 (20.8 s) 6 + int(0.97 x 39.2 / 3.2) = 17,
    which end at 56 s, inside the budget, with the learning rate annealed to the new curve's end."""
    from ignite.engine import Engine

    from maht_net.engine import handlers

    clock = {"t": 0.0}
    monkeypatch.setattr(handlers.time, "monotonic", lambda: clock["t"])
    net = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    scheduler = handlers.warmup_cosine_scheduler(optimizer, 40, warmup_epochs=1)
    progressive = handlers.ProgressiveTrainingHandler(net, optimizer, 1.0, [{"epochs": 12}, {"epochs": 4}, {"epochs": None}], scheduler=scheduler)
    rates = []

    def step(engine, batch):
        clock["t"] += (1.0, 0.4, 0.8)[progressive.current]
        rates.append(optimizer.param_groups[0]["lr"])

    engine = Engine(step)
    progressive.attach(engine)
    budget = handlers.TimeBudgetHandler(1.0, fit_epochs=True, scheduler=scheduler, progressive=progressive)
    budget.attach(engine)
    engine.add_event_handler(handlers.Events.EPOCH_COMPLETED, lambda e: scheduler.step())
    engine.run(range(4), max_epochs=40)
    assert budget.refit == {"epoch_seconds": 4.0, "planned": 40, "epochs": 14}
    assert [(r["epoch"], r["planned"], r["epochs"]) for r in budget.replans] == [(5, 14, 15), (6, 15, 17)]
    assert budget.replans[-1]["stage_epoch_seconds"] == {"1": 4.0, "2": 1.6, "3": 3.2}
    assert engine.state.epoch == engine.state.max_epochs == 17 and not budget.stopped
    assert clock["t"] == pytest.approx(56.0) and [s["epochs"] for s in progressive.stages[:2]] == [4, 1]
    assert rates[-1] == pytest.approx(0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * 15 / 16)))  # the last epoch of the 17-epoch curve


def test_train_json_refits_its_own_schedule_and_stages(phantom, tmp_path, monkeypatch):
    """``--fit_epochs_to_budget True``: the bundle's budget handler holds the run's scheduler and
    progressive handler (the ones the trainer steps), and a real run refits its epochs. The
    handler's clock is faked (0.6 s per reading: 4 readings an epoch of 3 steps, so 2.4 s an
    epoch; at the third epoch's start 9 x 0.6 s of the 12 s are gone -> 2 + int(0.97 * 6.6 / 2.4)
    = 4 epochs), so the refit does not depend on the machine's load."""
    import types

    from maht_net.engine import handlers
    from maht_net.engine.handlers import TimeBudgetHandler

    clock = {"t": 0.0}

    def tick() -> float:
        clock["t"] += 0.6
        return clock["t"]

    monkeypatch.setattr(handlers, "time", types.SimpleNamespace(monotonic=tick))
    wf = workflow(["train.json"], "train", tmp_path, datalist=str(phantom),
                  **{**TINY, "epochs": 3, "time_limit_minutes": 0.2, "fit_epochs_to_budget": True})  # fmt: skip
    wf.initialize()
    budget = next(h for h in wf.parser.get_parsed_content("train#handlers") if isinstance(h, TimeBudgetHandler))
    assert budget.fit_epochs and budget.scheduler is wf.parser.get_parsed_content("lr_scheduler")
    assert budget.progressive is wf.parser.get_parsed_content("progressive_handler")
    wf.run()
    assert budget.refit == {"epoch_seconds": pytest.approx(2.4), "planned": 3, "epochs": 4} and not budget.stopped
    state = wf.parser.get_parsed_content("train#trainer").state
    assert state.max_epochs == state.epoch == 4


def test_mlflow_tracking_writes_a_local_run(phantom, tmp_path):
    wf = workflow(["train.json"], "train", tmp_path, datalist=str(phantom), tracking="mlflow", **{**TINY, "epochs": 1})
    wf.initialize()
    wf.run()
    wf.finalize()
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'eval' / 'mlruns.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1 and {"train_loss", "val_mre", "val_sdr_2mm"} <= set(runs[0].data.metrics)
    assert runs[0].data.metrics["val_mre"] > 0


def test_torchscript_and_onnx_give_the_same_landmarks_as_eager(trained, phantom, tmp_path):
    from maht_net.inference.export import OnnxNetwork, export_onnx, export_torchscript
    from maht_net.inference.predictor import Predictor, load_model

    net, info = load_model(trained / "models" / "model.pt")
    size = (info["input_size"][1], info["input_size"][0])
    export_torchscript(net, tmp_path / "m.ts", size=size)
    export_onnx(net, tmp_path / "m.onnx", size=size)
    images = sorted((phantom.parent / "images").glob("*.png"))[:2]

    def points(network):
        return np.stack([np.array([[r["x"], r["y"]] for r in p["landmarks"]]) for p in Predictor(network, info).predict(images)])

    eager = points(net)
    for name, network in (("TorchScript", torch.jit.load(str(tmp_path / "m.ts"))), ("ONNX Runtime", OnnxNetwork(tmp_path / "m.onnx"))):
        diff = float(np.abs(points(network) - eager).max())
        print(f"{name} vs eager: max landmark difference {diff:.2e} px")
        assert diff < 0.05


def test_unreadable_image_fails_before_training(phantom, tmp_path):
    doc = read_datalist(phantom)
    bad_png = tmp_path / "corrupt.png"
    bad_png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    doc["training"][0]["image"] = str(bad_png)
    for item in doc["training"][1:] + doc["validation"] + doc["test"]:
        item["image"] = str((phantom.parent / item["image"]).resolve())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    wf = workflow(["train.json"], "train", tmp_path, datalist=str(bad), **TINY)
    wf.initialize()
    with pytest.raises(Exception) as err:
        wf.run()
    messages = [str(e) for e in _chain(err.value)]
    assert any(isinstance(e, InputError) and str(bad_png) in str(e) for e in _chain(err.value)), messages[-1]
    assert not (tmp_path / "models" / "checkpoint_last.pt").exists()


def test_maht_net_infer_cli_pytorch_and_onnx(trained, phantom, tmp_path, capsys):
    from maht_net.cli import main

    image = sorted((phantom.parent / "images").glob("*.png"))[0]
    assert main(["infer", "--bundle", str(trained), "--input", str(image), "--out", str(tmp_path / "pt"), "--spacing", "0.3", "--device", "cpu"]) == 0
    for bad in (["0"], ["0.1", "0.1", "0.1"]):
        assert main(["infer", "--bundle", str(trained), "--input", str(image), "--out", str(tmp_path / "bad"), "--spacing", *bad]) == 2
    assert "--spacing must be one or two positive mm values" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["export", "--bundle", str(trained), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    assert main(["infer", "--bundle", str(trained), "--input", str(image), "--out", str(tmp_path / "ort"), "--onnx", str(tmp_path / "m.onnx"), "--no-overlay"]) == 0
    pt = json.loads((tmp_path / "pt" / f"{image.stem}_landmarks.json").read_text())
    ort = json.loads((tmp_path / "ort" / f"{image.stem}_landmarks.json").read_text())
    diff = max(abs(a[k] - b[k]) for a, b in zip(pt["landmarks"], ort["landmarks"]) for k in ("x", "y"))
    assert diff < 0.05 and pt["landmarks"][0]["uncertainty_mm"] is not None and "SNA" in json.dumps(pt["measurements"])
    assert pt["spacing"] == [0.3, 0.3] and pt["spacing_source"] == "fallback"  # the PNG states none
    assert (tmp_path / "pt" / f"{image.stem}_overlay.png").is_file() and not (tmp_path / "ort" / f"{image.stem}_overlay.png").exists()
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["infer", "--bundle", str(trained), "--input", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert f"{bad}: not a readable image" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_ensemble_of_checkpoints_averages_heatmaps_and_refuses_mismatched_members(trained, tiny_checkpoint, phantom, tmp_path, capsys):
    from maht_net.cli import main
    from maht_net.inference.ensemble import load_ensemble
    from maht_net.inference.predictor import Predictor, load_model

    model = trained / "models" / "model.pt"
    image = str(sorted((phantom.parent / "images").glob("*.png"))[0])
    single = Predictor(*load_model(model), calibrate=False).predict([image])[0]
    twice = Predictor(*load_ensemble([model, model])).predict([image])[0]  # a mixture of one distribution is itself
    np.testing.assert_allclose([[r["x"], r["y"]] for r in twice["landmarks"]], [[r["x"], r["y"]] for r in single["landmarks"]], atol=1e-3)
    assert twice["uncertainty_calibration"] is None  # the members' calibration does not describe the mixture

    ensemble, info = load_ensemble([model, tiny_checkpoint])  # different architectures, same input and decoding
    assert info["ensemble"] == [str(model), str(tiny_checkpoint)]
    x = torch.randn(2, 1, 96, 64)
    with torch.no_grad():
        probs = [torch.softmax(m(x).flatten(2), -1) for m in ensemble.members]
        np.testing.assert_allclose(ensemble(x).flatten(2).exp().numpy(), ((probs[0] + probs[1]) / 2).numpy(), atol=1e-6)

    state = torch.load(tiny_checkpoint, weights_only=True)
    state["info"]["input_size"] = [96, 128]
    other = tmp_path / "other_size.pt"
    torch.save(state, other)
    with pytest.raises(InputError, match="input_size differ"):
        load_ensemble([model, other])

    out = tmp_path / "ens"
    assert main(["infer", "--checkpoint", str(model), str(tiny_checkpoint), "--input", image, "--out", str(out), "--no-overlay"]) == 0
    assert "ensemble of 2 models" in capsys.readouterr().out and (out / f"{Path(image).stem}_landmarks.json").is_file()
    assert main(["infer", "--checkpoint", str(model), str(tiny_checkpoint), "--input", image, "--out", str(out), "--onnx", "m.onnx"]) == 2


def test_checkpoint_saved_in_stage_one_rebuilds_without_the_transformer(phantom, tmp_path):
    from maht_net.inference.predictor import load_model

    wf = workflow(["train.json"], "train", tmp_path, datalist=str(phantom), **{**TINY, "epochs": 1, "stage_epochs": [5, 1]})
    wf.initialize()
    wf.run()
    net, info = load_model(tmp_path / "models" / "model.pt")
    assert info["network_kwargs"]["use_transformer"] is False and net.use_transformer is False
