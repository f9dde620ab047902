"""Robustness and data safety outside the server: the bad-input catalogue (tests/bad_inputs.py)
through ``maht-net infer`` and the bundle's inference, a training run killed with SIGKILL and
resumed, corrupt and untrusted checkpoints, and deterministic training on CPU.
(The same catalogue against the MONAI Label server: tests/test_monailabel_app.py.)"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from bad_inputs import make_image_cases
from test_bundle import CONFIGS, TINY, workflow

from maht_net import cli
from maht_net.datasets.phantom import make_phantom_dataset
from maht_net.engine.handlers import AtomicCheckpointSaver
from maht_net.errors import InputError
from maht_net.inference.predictor import load_model
from maht_net.io.predictions import read_prediction
from maht_net.transforms.io import unwrap_input_error

REPO = Path(__file__).resolve().parents[1]


def _stem(path: Path) -> str:
    return path.name.split(".")[0]


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_inputs")
    return folder, make_image_cases(folder)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return make_phantom_dataset(tmp_path_factory.mktemp("phantom"), n=12, seed=5, size=(128, 160))


# ----------------------------------------------------------------------------- bad input
def _check_outputs(cases, out: Path, messages: str) -> None:
    """Every bad file is named once with its problem and has no output; every good one has a
    complete prediction (in mm only when the file states its spacing)."""
    lines = messages.splitlines()
    for name, case in cases.items():
        written = out / f"{_stem(case.path)}_landmarks.json"
        if case.problem:
            hits = [line for line in lines if str(case.path) in line]
            assert hits and any(case.problem in h for h in hits), (name, hits)
            assert not written.exists(), name
        else:
            pred = read_prediction(written)
            assert np.isfinite(pred["points"]).all() and pred["points"].shape == (19, 2), name
            assert (pred["spacing"] is not None) == case.spacing, name


def test_cli_infer_names_every_bad_file_and_writes_the_good_ones(tiny_checkpoint, cases, tmp_path, capsys):
    folder, catalogue = cases
    code = cli.main(["infer", "--checkpoint", str(tiny_checkpoint), "--input", str(folder), "--out", str(tmp_path / "out"), "--no-overlay"])
    captured = capsys.readouterr()
    assert code == 2
    bad = sum(1 for c in catalogue.values() if c.problem)
    assert f"{bad} of {len(catalogue)} images failed" in captured.err
    _check_outputs(catalogue, tmp_path / "out", captured.err)
    assert not list((tmp_path / "out").glob(".*"))  # no temporary file left behind


def test_cli_bad_file_in_a_real_process_exits_2_without_traceback(tiny_checkpoint, cases, tmp_path):
    case = cases[1]["text.png"]
    run = subprocess.run(
        [sys.executable, "-m", "maht_net.cli", "infer", "--checkpoint", str(tiny_checkpoint), "--input", str(case.path), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 2
    assert f"error: {case.path}: {case.problem}" in run.stderr and "Traceback" not in run.stderr


def test_bundle_inference_skips_bad_files_lists_them_and_fails(tiny_checkpoint, cases, tmp_path):
    folder, catalogue = cases
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", str(CONFIGS / "inference.json"),
         "--ckpt_path", str(tiny_checkpoint), "--input_dir", str(folder), "--output_dir", str(out), "--overlay", "False"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert run.returncode != 0
    failed = json.loads((out / "failed.json").read_text())["failed"]
    assert sorted(Path(f["image"]).name for f in failed) == sorted(n for n, c in catalogue.items() if c.problem)
    _check_outputs(catalogue, out, "\n".join(f"{f['image']}: {f['problem']}" for f in failed))
    assert "image(s) could not be read and were skipped" in run.stderr


# ----------------------------------------------------------------------------- checkpoints
def test_corrupt_checkpoint_gives_a_clear_error(tiny_checkpoint, cases, tmp_path, capsys):
    bad = tmp_path / "model.pt"
    bad.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    with pytest.raises(InputError, match="not a readable PyTorch checkpoint"):
        load_model(bad)
    code = cli.main(["infer", "--checkpoint", str(bad), "--input", str(cases[1]["rgb.png"].path), "--out", str(tmp_path / "o")])
    assert code == 2 and f"{bad}: not a readable PyTorch checkpoint" in capsys.readouterr().err


class _Payload:
    """Unpickling this runs code (it creates a file): what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_untrusted_pickle_is_refused_and_runs_nothing(tiny_checkpoint, tmp_path):
    marker = tmp_path / "code_ran"
    state = torch.load(tiny_checkpoint, weights_only=True)
    state["info"]["extra"] = _Payload(marker)
    path = tmp_path / "evil.pt"
    torch.save(state, path)
    with pytest.raises(InputError, match="refused: the checkpoint holds objects other than tensors") as err:
        load_model(path)
    assert str(path) in str(err.value) and not marker.exists()
    with open(path, "rb") as f:  # the file really is a code-running pickle
        pytest.raises(Exception, lambda: pickle.load(f))


# ----------------------------------------------------------------------------- training faults
def _training_cmd(root: Path, datalist: Path, epochs: int) -> list[str]:
    args = {**TINY, "epochs": epochs, "stage_epochs": [1, 1], "input_size": [128, 160], "batch_size": 2}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.json"),
           "--meta_file", str(CONFIGS / "metadata.json"), "--bundle_root", str(root), "--datalist", str(datalist)]
    for key, value in args.items():
        cmd += [f"--{key}", repr(value)]  # Python literals: fire reads "false" as a (truthy) string
    return cmd


def _epochs_done(state: dict) -> int:
    return int(state["trainer"]["iteration"]) // int(state["trainer"]["epoch_length"])


def _checkpoint_epoch(path: Path) -> int:
    try:
        return _epochs_done(torch.load(path, weights_only=True))
    except FileNotFoundError:  # not there yet (the rename is atomic, so never half-written)
        return 0


@pytest.mark.slow
def test_training_killed_mid_run_resumes_with_the_best_so_far(phantom, tmp_path):
    root, epochs = tmp_path / "run", 6
    ckpt = root / "models" / "checkpoint_last.pt"
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(_training_cmd(root, phantom, epochs), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 400
        while _checkpoint_epoch(ckpt) < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.5)  # into the next epoch
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        log.close()
    saved = torch.load(ckpt, weights_only=True)  # loads: the kill did not leave a torn file
    done = _epochs_done(saved)
    assert 2 <= done < epochs
    resumed = subprocess.run(_training_cmd(root, phantom, epochs), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    text = resumed.stdout + resumed.stderr
    assert f"resumed from {ckpt} at epoch {done}" in text
    assert f"Epoch: {done + 1}/{epochs}" in text and f"Epoch: {done}/{epochs}" not in text  # no epoch redone
    final = torch.load(ckpt, weights_only=True)
    assert _epochs_done(final) == epochs
    assert final["best"]["best_metric"] <= saved["best"]["best_metric"]  # the best-so-far was kept
    if final["best"]["best_metric"] == saved["best"]["best_metric"]:
        assert final["best"]["best_metric_epoch"] == saved["best"]["best_metric_epoch"]
    assert (root / "models" / "model.pt").is_file()
    assert not list(ckpt.parent.glob(".*"))  # a write the kill interrupted was cleaned up at resume


# Saves the best model.pt every epoch (each epoch's metric is better), with every weight equal to
# the version number, and prints each version once its save has returned.
BEST_WRITER = """
import sys, torch
from ignite.engine import Engine, Events
from maht_net.engine.handlers import AtomicCheckpointSaver
from maht_net.io.checkpoint import CheckpointInfo
save_dir, first = sys.argv[1], int(sys.argv[2])
net = torch.nn.Linear(1024, 2048)  # 8 MB: a save lasts long enough for kills to land inside it
engine = Engine(lambda engine, batch: None)
@engine.on(Events.EPOCH_COMPLETED)
def better(engine):
    version = first + engine.state.epoch
    torch.nn.init.constant_(net.weight, version), torch.nn.init.constant_(net.bias, version)
    engine.state.metrics["val_mre"] = 1.0 / version
AtomicCheckpointSaver(save_dir, {"model": net, "info": CheckpointInfo()}, save_key_metric=True, key_metric_name="val_mre",
                      key_metric_negative_sign=True, key_metric_filename="model.pt").attach(engine)
engine.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: print(first + engine.state.epoch, flush=True))
engine.run([0], max_epochs=10**6)
"""


def test_best_model_survives_sigkill_at_any_moment(tmp_path):
    model, rng, written = tmp_path / "model.pt", np.random.default_rng(0), []
    for round_ in range(4):
        first = 1000 * round_
        proc = subprocess.Popen([sys.executable, "-c", BEST_WRITER, str(tmp_path), str(first)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if round_ == 0:
            time.sleep(0.3)  # killed before its first save: no model.pt may appear
        else:
            written.append(int(proc.stdout.readline()))
            time.sleep(rng.uniform(0.0, 0.5))
        proc.kill()
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, err[-2000:]
        written += [int(line) for line in out.split()]
        if not written:
            assert not model.exists()
            continue
        state = torch.load(model, weights_only=True)  # complete: a torn file would not load
        version = state["model"]["weight"][0, 0].item()
        assert all(bool((t == version).all()) for t in state["model"].values())  # one write, not a mix
        assert version in (written[-1], written[-1] + 1)  # the last reported save, or one cut short after it
        assert [p.name for p in tmp_path.glob("*.pt")] == ["model.pt"]  # a torn temporary file is not a model
    AtomicCheckpointSaver(str(tmp_path), {"model": torch.nn.Linear(1, 1)}, save_key_metric=True, key_metric_filename="model.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # the next run removes the killed runs' temporary files


def test_resume_from_a_corrupt_checkpoint_fails_clearly(phantom, tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "checkpoint_last.pt").write_bytes(b"PK\x03\x04 torn")
    wf = workflow(["train.json"], "train", tmp_path, datalist=str(phantom), **TINY)
    wf.initialize()
    with pytest.raises(Exception) as err:  # MONAI's ConfigWorkflow wraps it in RuntimeError chains
        wf.run()
    assert "checkpoint_last.pt: not a readable PyTorch checkpoint" in str(unwrap_input_error(err.value))


def test_same_seed_gives_identical_training_on_cpu(phantom, tmp_path):
    runs = []
    for k in range(2):
        wf = workflow(["train.json"], "train", tmp_path / f"run{k}", datalist=str(phantom), **{**TINY, "epochs": 2, "seed": 7})
        wf.initialize()
        wf.run()
        evaluator = wf.parser.get_parsed_content("validate#evaluator")
        runs.append((evaluator.state.best_metric, torch.load(tmp_path / f"run{k}" / "models" / "model.pt", weights_only=True)["model"]))
        wf.finalize()
    (m0, w0), (m1, w1) = runs
    assert m0 == m1
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)


def test_make_serve_binds_loopback_unless_told_otherwise(tmp_path):
    def serve_command(*args: str) -> str:
        out = subprocess.run(["make", "-n", "serve", f"STUDIES={tmp_path}", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout
        return next(line for line in out.replace("\\\n", " ").splitlines() if "start_server" in line)

    assert "--host 127.0.0.1 " in serve_command()
    assert "--host 0.0.0.0 " in serve_command("HOST=0.0.0.0")
