"""Landmark uncertainty: covariance decoding, 95 % ellipses, sigma-scaling calibration stored in
the checkpoint and applied at inference, and its use by the analysis."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_analysis import MEAN_SHAPE, _run_cli

from maht_net.clinical.analysis import analyze_points
from maht_net.codec.heatmaps import covariance_to_spread, heatmap_covariance
from maht_net.codec.uncertainty import (
    CALIBRATION_KEY,
    calibration_for,
    ellipse_axes,
    fit_uncertainty_calibration,
    isotropic_covariance,
    landmark_covariances,
)
from maht_net.datasets.phantom import make_phantom_dataset
from maht_net.errors import InputError
from maht_net.inference.calibration import calibrate_checkpoint
from maht_net.inference.predictor import Predictor, load_model
from maht_net.io.checkpoint import load_checkpoint_file
from maht_net.io.datalist import load_datalist, read_datalist
from maht_net.io.predictions import build_prediction, prediction_points
from maht_net.transforms.targets import DecodeLandmarksd


def _rotated_covariance(major: float, minor: float, degrees: float) -> np.ndarray:
    t = math.radians(degrees)
    r = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return r @ np.diag([major**2, minor**2]) @ r.T


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return make_phantom_dataset(tmp_path_factory.mktemp("phantom"), n=8, seed=5, size=(128, 160))


def test_heatmap_covariance_recovers_an_elongated_rotated_gaussian():
    cov = _rotated_covariance(5.0, 1.5, 30.0)
    yy, xx = np.mgrid[0:64, 0:64].astype(float)
    d = np.stack([xx - 30.3, yy - 33.6], -1)
    heat = np.exp(-0.5 * np.einsum("...i,ij,...j->...", d, np.linalg.inv(cov), d))
    hm = torch.as_tensor(heat, dtype=torch.float32)[None, None]
    center = torch.tensor([[[30.3, 33.6]]])
    got = heatmap_covariance(hm, center, floor=None)[0, 0].numpy()
    np.testing.assert_allclose(got, cov, atol=0.02 * np.abs(cov).max())
    assert float(covariance_to_spread(heatmap_covariance(hm, center, floor=None))[0, 0]) == pytest.approx(math.sqrt(np.trace(cov)), rel=1e-3)


def test_ellipse_axes_hold_95_percent_of_samples_with_the_screen_angle():
    cov = _rotated_covariance(6.0, 2.0, 35.0)
    major, minor, angle = ellipse_axes(cov)
    assert angle % 180 == pytest.approx(35.0, abs=1e-6)  # from +x towards +y (y down: clockwise on screen)
    samples = np.random.default_rng(0).multivariate_normal([0, 0], cov, 200_000)
    t = math.radians(angle)
    u = samples @ np.array([math.cos(t), math.sin(t)])
    v = samples @ np.array([-math.sin(t), math.cos(t)])
    assert np.mean((u / major) ** 2 + (v / minor) ** 2 <= 1) == pytest.approx(0.95, abs=0.004)
    iso = isotropic_covariance(np.array(3.0))  # RMS radius 3 -> the old 95 % circle, radius 1.73 * 3
    assert ellipse_axes(iso)[:2] == pytest.approx((1.731 * 3, 1.731 * 3), rel=1e-3)


def test_decoder_carries_covariance_through_the_affine_map_and_applies_calibration():
    logits = torch.randn(2, 19, 24, 16)
    to_original = torch.eye(3).repeat(2, 1, 1)
    to_original[:, 0, 0], to_original[:, 1, 1] = 2.0, 3.0  # anisotropic resize back to the film
    raw = DecodeLandmarksd(stride=4)({"pred": logits, "to_original": to_original})
    base = DecodeLandmarksd(stride=4)({"pred": logits, "to_original": torch.eye(3).repeat(2, 1, 1)})
    np.testing.assert_allclose(raw["pred_covariance"].numpy(), (base["pred_covariance"] * torch.tensor([[4.0, 6.0], [6.0, 9.0]])).numpy(), rtol=1e-5)
    np.testing.assert_allclose(raw["pred_spread"].numpy(), torch.sqrt(raw["pred_covariance"][..., 0, 0] + raw["pred_covariance"][..., 1, 1]).numpy(), rtol=1e-6)
    scale = np.linspace(0.5, 1.5, 19)
    cal = DecodeLandmarksd(stride=4, calibration={"scale": scale.tolist(), "method": "sigma_scaling"})({"pred": logits, "to_original": to_original})
    np.testing.assert_allclose(cal["pred_spread"].numpy(), raw["pred_spread"].numpy() * scale, rtol=1e-5)
    np.testing.assert_allclose(cal["pred_points"].numpy(), raw["pred_points"].numpy())
    assert cal["uncertainty_calibration"]["scale"] == scale.tolist() and "uncertainty_calibration" not in raw
    with pytest.raises(ValueError, match="3 factors for 19 landmarks"):
        DecodeLandmarksd(stride=4, calibration={"scale": [1.0, 1.0, 1.0]})({"pred": logits, "to_original": to_original})


def test_sigma_scaling_recovers_the_true_error_scale_per_landmark():
    rng = np.random.default_rng(1)
    n_img, names = 400, [f"l{k}" for k in range(4)]
    spread = rng.uniform(2.0, 20.0, (n_img, 4))
    factor = np.array([0.5, 0.5, 0.5, 2.0])  # the network over-states three landmarks, under-states one
    truth = rng.uniform(0, 500, (n_img, 4, 2))
    pred = truth + rng.standard_normal((n_img, 4, 2)) * (spread * factor / math.sqrt(2))[..., None]
    record = fit_uncertainty_calibration(pred, spread, truth, names)
    np.testing.assert_allclose(record["scale"], factor, rtol=0.1)
    assert record["n_images"] == n_img and record["n_landmarks"] == 4 * n_img and record["landmark_names"] == names
    assert factor.min() < record["common_scale"] < factor.max()
    # few images: each landmark's factor is pulled towards the common one
    few = fit_uncertainty_calibration(pred[:5], spread[:5], truth[:5], names, prior_strength=10.0)
    assert abs(few["scale"][3] - few["common_scale"]) < abs(fit_uncertainty_calibration(pred[:5], spread[:5], truth[:5], names, 0.0)["scale"][3] - few["common_scale"])
    with pytest.raises(ValueError, match="at least 2 landmarks"):
        fit_uncertainty_calibration(pred[:1, :1] * np.nan, spread[:1, :1], truth[:1, :1], names[:1])


def test_calibrate_checkpoint_stores_the_record_reads_only_its_section_and_inference_applies_it(tiny_checkpoint, phantom, tmp_path, caplog):
    doc = read_datalist(phantom)
    doc["test"] = [{"image": "does/not/exist.png", "landmarks": doc["training"][0]["landmarks"]}]  # never read
    datalist = phantom.parent / "with_missing_test.json"
    datalist.write_text(json.dumps(doc))
    out = tmp_path / "calibrated.pt"
    record = calibrate_checkpoint(tiny_checkpoint, datalist, "validation", out=out)
    assert CALIBRATION_KEY not in load_checkpoint_file(tiny_checkpoint)["info"]  # the original is untouched
    stored = load_checkpoint_file(out)["info"][CALIBRATION_KEY]
    assert stored == record and record["section"] == "validation" and record["n_images"] == len(doc["validation"])

    network, info = load_model(out)
    items = load_datalist(datalist, "validation")
    raw = Predictor(network, info, calibrate=False).predict(items)
    err2 = np.stack([np.sum((prediction_points(p) - it["landmarks"]) ** 2, -1) for p, it in zip(raw, items)])
    spread = np.array([[r["uncertainty_px"] for r in p["landmarks"]] for p in raw])
    assert record["common_scale"] == pytest.approx(math.sqrt(np.mean(err2 / spread**2)), rel=1e-5)  # ML sigma scaling
    calibrated = Predictor(network, info).predict(items[:1])[0]
    assert raw[0]["uncertainty_calibration"] is None and calibrated["uncertainty_calibration"]["section"] == "validation"
    np.testing.assert_allclose([r["uncertainty_px"] for r in calibrated["landmarks"]], spread[0] * record["scale"], rtol=1e-5)
    assert [r["x"] for r in calibrated["landmarks"]] == [r["x"] for r in raw[0]["landmarks"]]
    with caplog.at_level(logging.WARNING, logger="maht_net.codec.uncertainty"):
        assert calibration_for(info, mc_samples=4) is None  # fitted for plain passes, not MC-dropout
    assert "reported uncalibrated" in caplog.text
    with pytest.raises(InputError, match="no section 'nope'"):
        calibrate_checkpoint(tiny_checkpoint, datalist, "nope", out=tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_calibrate_command(tiny_checkpoint, phantom, tmp_path, capsys):
    out = tmp_path / "c.pt"
    assert _run_cli(["calibrate", str(tiny_checkpoint), "--datalist", str(phantom), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "calibrated on" in text and "per-landmark scale: sella" in text and CALIBRATION_KEY in load_checkpoint_file(out)["info"]


def test_analysis_samples_the_elongated_covariance():
    """UL-SnPog' is the upper lip's distance to the near-vertical Sn-Pog' line: uncertainty of the
    lip along x changes it, along y hardly at all."""
    from maht_net.landmarks import ISBI2015

    k = ISBI2015.names.index("upper_lip")
    unc = np.full(19, 1e-6)
    unc[k] = 10.0
    covariance = np.zeros((19, 2, 2))

    def width(cov: np.ndarray) -> float:
        covariance[k] = cov
        result = analyze_points(MEAN_SHAPE, (0.1, 0.1), unc, n_samples=4000, covariance_px=covariance)
        lo, hi = next(r for r in result["measurements"] if r["name"] == "UL-SnPog'")["interval"]
        return hi - lo

    along_x, along_y = width(np.diag([99.0, 1.0])), width(np.diag([1.0, 99.0]))
    assert along_x > 3 * along_y  # (the line is tilted a little, so y leaks in)
    isotropic = width(isotropic_covariance(np.array(10.0)))
    assert along_y < isotropic < along_x


def test_prediction_documents_keep_covariance_and_fall_back_to_isotropic():
    cov = np.repeat(_rotated_covariance(4.0, 1.0, 20.0)[None], 19, 0)
    cov[3] = np.nan
    spread = np.sqrt(np.trace(cov, axis1=1, axis2=2))
    pred = build_prediction("x.png", 1340, 1671, MEAN_SHAPE, uncertainty_px=spread, covariance_px=cov)
    assert pred["landmarks"][3]["covariance_px"] is None
    np.testing.assert_allclose(pred["landmarks"][0]["covariance_px"], cov[0])
    assert pred["uncertainty_calibration"] is None
    got = landmark_covariances(json.loads(json.dumps(pred)))
    np.testing.assert_allclose(got[0], cov[0])
    assert np.isnan(got[3]).all()  # neither covariance nor spread known
    old = build_prediction("x.png", 1340, 1671, MEAN_SHAPE, uncertainty_px=np.full(19, 4.0))
    for r in old["landmarks"]:
        del r["covariance_px"]  # a prediction written before covariances existed
    np.testing.assert_allclose(landmark_covariances(old)[0], np.eye(2) * 8.0)


# --------------------------------------------------------------------------- active-learning selection


def test_prepared_inputs_predict_the_same_as_files(tiny_checkpoint, phantom):
    """Predictor.prepare reads each film once; predicting the prepared inputs (as the simulation
    does for every round's model) gives the same documents as predicting the files."""
    items = load_datalist(phantom, ["training", "validation", "test"])[:3]
    predictor = Predictor.from_checkpoint(tiny_checkpoint)
    from_files = predictor.predict(items)
    prepared = predictor.prepare(items)
    again = predictor.predict(prepared, prepared=True)
    assert [p["id"] for p in again] == [it["id"] for it in items]
    for a, b in zip(from_files, again):
        np.testing.assert_allclose(prediction_points(a), prediction_points(b), atol=1e-5)
        assert a["spacing"] == b["spacing"] and a["width"] == b["width"]
    with pytest.raises(InputError, match="missing.png"):
        predictor.prepare([{"image": str(Path(items[0]["image"]).with_name("missing.png")), "id": "x"}])


def test_k_center_greedy_picks_the_farthest_film_each_time():
    from maht_net.inference.active_learning import k_center_greedy

    # two tight clusters near the labelled film, one film far away, one in between
    x = np.array([[0, 0], [0.1, 0], [0, 0.1], [10, 0], [5, 0], [0.05, 0.05]], dtype=float)
    assert k_center_greedy(x, [0], 1) == [3]
    assert k_center_greedy(x, [0], 2) == [3, 4]  # 4 is then the farthest from {0, 3}
    assert k_center_greedy(x, [0], 2, candidates=[1, 2, 4]) == [4, 1]  # only candidates; ties: the first
    assert sorted(k_center_greedy(x, [], 6)) == list(range(6))  # never a film twice
    assert k_center_greedy(x, [0, 1, 2, 3, 4, 5], 3) == []


def test_encoder_features_describe_films_and_need_an_encoder(tiny_checkpoint, phantom):
    from maht_net.inference.active_learning import encoder_features

    network, _ = load_model(tiny_checkpoint)
    network.train()
    items = load_datalist(phantom, ["training", "validation", "test"])[:3]
    images = torch.stack([torch.as_tensor(p["image"]).as_subclass(torch.Tensor) for p in Predictor(network, load_model(tiny_checkpoint)[1]).prepare(items)])
    f = encoder_features(network, images)
    assert f.shape[0] == 3 and f.ndim == 2 and network.training  # the mode is restored
    np.testing.assert_allclose(f.norm(dim=1).numpy(), 1.0, atol=1e-5)
    np.testing.assert_allclose(encoder_features(network, images[:1]).numpy(), f[:1].numpy(), atol=1e-5)  # deterministic, per film
    with pytest.raises(TypeError, match="no 'encoder'"):
        encoder_features(torch.nn.Conv2d(1, 1, 1), images)
