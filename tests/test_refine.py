"""The refinement stage (docs/refinement.md): patch geometry, codec, jitter, training, checkpoint
stages and the two-stage predictor. Tiny: phantoms of 256 x 320 px, a small network, 60 steps."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from maht_net.codec.patches import MIN_SCALE_LANDMARKS, PatchCodec, landmark_rms, landmark_rms_mm
from maht_net.engine.refine import PatchJitter, load_films, train_refiner
from maht_net.errors import InputError
from maht_net.inference.predictor import Predictor, load_model
from maht_net.inference.refine import Refiner, load_refiner
from maht_net.io.checkpoint import attach_refine_stage, checkpoint_stages, load_checkpoint_file

REPO = Path(__file__).resolve().parents[1]
PHANTOM_MM = 0.6640625  # mm/px of a 256 x 320 phantom


def _blob(shape: tuple[int, int], centre: tuple[float, float], sigma_px: tuple[float, float]) -> torch.Tensor:
    """``(H, W)`` Gaussian blob at ``centre`` ``(x, y)`` with per-axis std ``sigma_px``."""
    ys, xs = torch.meshgrid(torch.arange(shape[0], dtype=torch.float64), torch.arange(shape[1], dtype=torch.float64), indexing="ij")
    return torch.exp(-((xs - centre[0]) ** 2) / (2 * sigma_px[0] ** 2) - (ys - centre[1]) ** 2 / (2 * sigma_px[1] ** 2))


def _moments(patch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Centroid ``(u, v)`` and per-axis std of a non-negative ``(P, P)`` patch."""
    p = patch.double() / patch.sum()
    v, u = torch.meshgrid(torch.arange(patch.shape[0], dtype=torch.float64), torch.arange(patch.shape[1], dtype=torch.float64), indexing="ij")
    cu, cv = float((p * u).sum()), float((p * v).sum())
    return np.array([cu, cv]), np.sqrt([float((p * (u - cu) ** 2).sum()), float((p * (v - cv) ** 2).sum())])


def test_patches_show_a_film_point_where_the_codec_says_in_physical_units():
    spacing = (0.1, 0.15)  # anisotropic film pixels (mm)
    codec = PatchCodec(patch_size=32, mm_per_px=0.3, stride=2)
    point = (101.3, 77.6)
    film = _blob((160, 240), point, (1.0 / spacing[0], 1.0 / spacing[1]))  # a 1 mm round blob
    centres = torch.tensor([[point[0] + 17.0, point[1] - 9.0], [point[0], point[1]]])
    patches = codec.sample(film, centres, spacing)
    assert patches.shape == (2, 32, 32)
    expected = codec.film_to_patch(torch.tensor([[point, point]]), centres[None], spacing)[0]
    assert torch.allclose(expected[1], torch.tensor([15.5, 15.5], dtype=torch.float64))  # the patch centre
    assert torch.allclose(expected[0], torch.tensor([15.5 - 17.0 / 3.0, 15.5 + 9.0 / 2.0], dtype=torch.float64))
    for patch, where in zip(patches, expected, strict=True):
        centroid, std = _moments(patch)
        assert np.allclose(centroid, where.numpy(), atol=0.05)
        assert np.allclose(std, 1.0 / 0.3, rtol=0.06)  # round in mm -> round in the patch, 1 mm = 3.3 px
    back = codec.patch_to_film(expected[None], centres[None], spacing)[0]
    assert torch.allclose(back, torch.tensor([point, point], dtype=torch.float64))
    # unknown spacing: the documented default mm/px; outside the film reads 0
    assert torch.equal(codec.film_spacing(torch.tensor([[float("nan"), float("nan")]])), torch.full((1, 2), codec.default_spacing, dtype=torch.float64))
    assert float(codec.sample(film, torch.tensor([[-500.0, -500.0]])).abs().max()) == 0.0


def test_codec_encode_decode_round_trip_in_film_pixels():
    codec = PatchCodec(patch_size=48, mm_per_px=0.25, stride=2, sigma=2.0)
    spacing = torch.tensor([[0.1, 0.127], [0.127, 0.127]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    centres = torch.rand(2, 19, 2, generator=g, dtype=torch.float64) * 1000 + 100
    truth = centres + (torch.rand(2, 19, 2, generator=g, dtype=torch.float64) - 0.5) * 30  # within the 12 mm field
    target = codec.encode(truth, centres, spacing)
    assert target.shape == (2, 19, 24, 24) and float(target.amax()) <= 1.0
    decoded = codec.decode(torch.log(target.clamp_min(1e-12)), centres, spacing)
    assert torch.allclose(decoded.points, truth, atol=0.05)
    # the covariance in film pixels is the patch's scaled by k = mm_per_px / spacing per axis
    k = (codec.mm_per_px / spacing)[:, None, :]
    patch_cov = codec.heatmap_codec.decode(torch.log(target.clamp_min(1e-12))).covariance
    assert torch.allclose(decoded.covariance, patch_cov * (k[..., :, None] * k[..., None, :]).float())
    assert codec.info() == PatchCodec.from_info(codec.info()).info()


def test_a_film_of_unknown_spacing_is_scaled_by_the_size_of_its_anatomy():
    shape_mm = torch.tensor([[0.0, 0.0], [60.0, 0.0], [60.0, 80.0], [0.0, 80.0], [30.0, 40.0], [10.0, 70.0]], dtype=torch.float64)
    rms_mm = float(landmark_rms(shape_mm[None])[0])
    codec = PatchCodec(landmark_rms_mm=rms_mm)
    truth = torch.tensor([[0.127, 0.127], [0.09, 0.09], [0.1, 0.15]], dtype=torch.float64)
    centres = shape_mm[None] / truth[:, None, :] + 300.0  # the same anatomy on three films, shifted
    unknown = torch.tensor([[float("nan")] * 2, [float("nan")] * 2, [0.1, 0.15]], dtype=torch.float64)
    resolved = codec.resolve_spacing(unknown, centres)
    torch.testing.assert_close(resolved[:2], truth[:2])  # estimated from the anatomy's size
    assert torch.equal(resolved[2], truth[2])  # a stated spacing is kept, anisotropic too
    torch.testing.assert_close(codec.resolve_spacing(None, centres[:1]), truth[:1])
    # too few finite landmarks, or a stage trained before the size was recorded: the default spacing
    sparse = torch.where(torch.arange(6)[None, :, None] < MIN_SCALE_LANDMARKS - 1, centres[:1], torch.tensor(float("nan"), dtype=torch.float64))
    assert torch.equal(codec.resolve_spacing(None, sparse), torch.full((1, 2), codec.default_spacing, dtype=torch.float64))
    assert torch.equal(PatchCodec().resolve_spacing(None, centres[:1]), torch.full((1, 2), codec.default_spacing, dtype=torch.float64))
    assert codec.spacing_sources(unknown, centres) == ["estimated", "estimated", "given"]  # what predictions report
    assert codec.spacing_sources(None, sparse) == PatchCodec().spacing_sources(None, centres[:1]) == ["default"]
    # the training films' mean size in mm; films of unknown spacing or with a missing landmark do not count
    partial = centres[0].clone()
    partial[0] = float("nan")
    films = [centres[0] * 2 / 1.5, centres[1], partial, centres[1]]
    spacings = [truth[0] * 1.5, truth[1], truth[0], torch.tensor([float("nan")] * 2, dtype=torch.float64)]
    assert landmark_rms_mm(films, spacings) == pytest.approx(rms_mm * 1.5)  # (2 + 1) / 2: the two films that count
    assert landmark_rms_mm(films[2:], spacings[2:]) is None
    with pytest.raises(ValueError, match="landmark_rms_mm"):
        PatchCodec(landmark_rms_mm=0.0)


def test_jitter_matches_its_statistics():
    g = torch.Generator().manual_seed(1)
    off = PatchJitter(sigma_mm=1.5, tail_fraction=0.0).sample(g, 2000, 19, max_mm=100.0)
    assert off.shape == (2000, 19, 2)
    assert float(off.std()) == pytest.approx(1.5, rel=0.03) and abs(float(off.mean())) < 0.02
    tails = PatchJitter(sigma_mm=0.0, tail_fraction=0.25, tail_mm=5.0).sample(g, 2000, 19, max_mm=100.0).norm(dim=-1)
    assert float((tails > 0).double().mean()) == pytest.approx(0.25, abs=0.01) and float(tails.max()) <= 5.0
    clipped = PatchJitter(sigma_mm=10.0, max_fraction=0.5).sample(g, 100, 19, max_mm=4.0)
    assert float(clipped.abs().max()) <= 2.0
    per_landmark = PatchJitter.from_errors(np.array([[2.0] * 18 + [4.0], [2.0] * 18 + [4.0]]))
    assert per_landmark.sigma_mm[0] == pytest.approx(2.0 / np.sqrt(2)) and per_landmark.sigma_mm[-1] == pytest.approx(4.0 / np.sqrt(2))


@pytest.fixture(scope="module")
def phantom_datalist(tmp_path_factory):
    from maht_net.datasets.phantom import make_phantom_dataset

    return make_phantom_dataset(tmp_path_factory.mktemp("phantom"), n=10, seed=1, size=(256, 320))


@pytest.fixture(scope="module")
def phantom_items(phantom_datalist):
    from maht_net.io.datalist import load_datalist

    return load_datalist(phantom_datalist, ["training", "validation", "test"])


@pytest.fixture(scope="module")
def trained_stage(phantom_items):
    """A small refinement network trained for 60 steps on 7 phantoms (about 5 s)."""
    films = load_films(phantom_items)
    codec = PatchCodec(patch_size=32, mm_per_px=PHANTOM_MM, stride=2, sigma=1.5)
    jitter = PatchJitter(sigma_mm=2.0, tail_fraction=0.0)
    net, stage = train_refiner(films[:7], codec=codec, network="refine_net_small", jitter=jitter, iterations=60, batch_size=4, lr=3e-3, desc=None)
    return {"network": net, "stage": stage, "films": films}


def test_training_refines_perturbed_landmarks_on_unseen_films(trained_stage):
    test = trained_stage["films"][7:]
    refiner = Refiner(trained_stage["network"], trained_stage["stage"]["info"])
    truth = torch.stack([f.landmarks for f in test])
    g = torch.Generator().manual_seed(0)
    centres = truth + torch.randn(truth.shape, generator=g, dtype=torch.float64) * 3.0  # the first stage's error, 2 mm
    refined = refiner([f.film.float() for f in test], centres, torch.stack([f.spacing for f in test]))
    before = float((centres - truth).norm(dim=-1).mean())
    after = float((refined.points - truth).norm(dim=-1).mean())
    assert after < 0.7 * before, (before, after)
    info = trained_stage["stage"]["info"]
    assert info["trained"]["iterations"] == 60 and info["network"] == "refine_net_small" and info["patch_size"] == 32


def test_films_without_a_stated_spacing_are_refined_at_the_scale_their_anatomy_shows(trained_stage):
    """PNG/JPEG films state no spacing; the phantoms are 0.66 mm/px, the codec's default 0.1 mm/px."""
    test = trained_stage["films"][7:]
    info = trained_stage["stage"]["info"]
    train_mm = [f.landmarks * f.spacing for f in trained_stage["films"][:7]]
    assert info["landmark_rms_mm"] == pytest.approx(float(landmark_rms(torch.stack(train_mm)).mean()))
    films, spacing = [f.film.float() for f in test], torch.stack([f.spacing for f in test])
    truth = torch.stack([f.landmarks for f in test])
    centres = truth + torch.randn(truth.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3.0
    unknown = torch.full_like(spacing, float("nan"))

    def error(refiner, spacing):
        return float((refiner(films, centres, spacing).points - truth).norm(dim=-1).mean())

    refiner = Refiner(trained_stage["network"], info)
    stated, estimated = error(refiner, spacing), error(refiner, unknown)
    before = float((centres - truth).norm(dim=-1).mean())
    defaulted = error(Refiner(trained_stage["network"], {**info, "landmark_rms_mm": None}), unknown)  # a stage from before
    assert estimated < 0.7 * before and estimated < 1.15 * stated, (before, stated, estimated)
    assert defaulted > 1.3 * estimated, (defaulted, estimated)


def test_fusion_weighs_each_stage_by_the_other_stages_variance(trained_stage):
    """``combine="fuse"``: point ``c + w (r - c)`` with ``w = s_c^2 / (s_c^2 + s_r^2)``; a sure first
    stage (tiny spread) holds the point, an unsure one lets the refinement move it; ``"replace"``
    takes the refined point."""
    test = trained_stage["films"][7:]
    films, spacing = [f.film.float() for f in test], torch.stack([f.spacing for f in test])
    truth = torch.stack([f.landmarks for f in test])
    coarse = truth + torch.randn(truth.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3.0
    info = trained_stage["stage"]["info"]
    refined = Refiner(trained_stage["network"], info)(films, coarse, spacing)
    s_r2 = refined.covariance[..., 0, 0] + refined.covariance[..., 1, 1]

    def run(combine, spread):
        output = {"pred_points": coarse.clone(), "pred_spread": spread, "pred_confidence": torch.ones(coarse.shape[:2]),
                  "pred_covariance": torch.eye(2).expand(*coarse.shape[:2], 2, 2) * (spread**2 / 2)[..., None, None]}
        return Refiner(trained_stage["network"], info, combine=combine).refine(output, films, spacing)

    spread = torch.full(coarse.shape[:2], 4.0)
    fused, replaced = run("fuse", spread), run("replace", spread)
    torch.testing.assert_close(replaced["pred_points"], refined.points)
    w = (16.0 / (16.0 + s_r2))[..., None]
    torch.testing.assert_close(fused["pred_points"], coarse + w * (refined.points - coarse))
    torch.testing.assert_close(fused["pred_spread"], torch.sqrt(w[..., 0] * s_r2).float(), rtol=1e-4, atol=1e-4)
    assert Refiner(trained_stage["network"], info).combine == "fuse"  # the default
    held = run("fuse", torch.full(coarse.shape[:2], 1e-3))["pred_points"]
    assert float((held - coarse).abs().max()) < 1e-3
    with pytest.raises(ValueError, match="combine"):
        Refiner(trained_stage["network"], info, combine="mean")


def test_shifted_patches_average_the_refinements_of_five_patches(trained_stage):
    """``shift_mm`` (the stage's by default, 2 mm as trained): each landmark is refined in its
    centred patch and in four patches moved ``shift_mm`` along -x, +x, -y, +y; the five decodings
    are averaged. 0, or a stage trained before the field existed: the centred patch alone."""
    test = trained_stage["films"][7:]
    films, spacing = [f.film.float() for f in test], torch.stack([f.spacing for f in test])
    truth = torch.stack([f.landmarks for f in test])
    coarse = truth + torch.randn(truth.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3.0
    net, info = trained_stage["network"], trained_stage["stage"]["info"]
    assert info["shift_mm"] == 2.0 and Refiner(net, info).shift_mm == 2.0
    codec = Refiner(net, info).codec
    offsets = codec.shifts(spacing, 2.0, len(test))
    assert offsets.shape == (5, len(test), 1, 2)
    mm = offsets[:, :, 0, :] * spacing[None]  # back in mm: none, then -x, +x, -y, +y
    torch.testing.assert_close(mm[:, 0], torch.tensor([[0.0, 0.0], [-2.0, 0.0], [2.0, 0.0], [0.0, -2.0], [0.0, 2.0]], dtype=torch.float64))
    assert codec.shifts(spacing, 0.0, len(test)).abs().max() == 0 and codec.shifts(spacing, 0.0, len(test)).shape[0] == 1
    centred = Refiner(net, info, shift_mm=0.0)
    singles = [centred(films, coarse + o, spacing) for o in offsets]
    shifted = Refiner(net, info)(films, coarse, spacing)
    for key in ("points", "covariance", "confidence"):
        mean = torch.stack([getattr(r, key) for r in singles]).mean(0)
        torch.testing.assert_close(getattr(shifted, key), mean.to(getattr(shifted, key).dtype), atol=1e-4, rtol=1e-4)
    assert float((shifted.points - singles[0].points).norm(dim=-1).max()) > 0.01
    older = {k: v for k, v in info.items() if k != "shift_mm"}
    torch.testing.assert_close(Refiner(net, older)(films, coarse, spacing).points, singles[0].points)
    for bad in (-1.0, codec.field_mm / 2):  # a shifted patch must still hold its centre
        with pytest.raises(ValueError, match="shift_mm"):
            Refiner(net, info, shift_mm=bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/check_gpu.sh where one is lent)")
def test_first_stage_outputs_on_the_gpu_are_refined_and_given_back_there(trained_stage):
    """The bundle's evaluator decodes the first stage on the GPU: the second stage takes those
    outputs, cuts its patches from the films on the CPU, runs its network on the GPU and gives the
    outputs back on the GPU, with the landmarks the CPU places."""
    import copy

    test = trained_stage["films"][7:]
    films, spacing = [f.film.float() for f in test], torch.stack([f.spacing for f in test])
    truth = torch.stack([f.landmarks for f in test])
    coarse = truth + torch.randn(truth.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3.0
    spread = torch.full(coarse.shape[:2], 4.0)
    output = {"pred_points": coarse, "pred_spread": spread, "pred_confidence": torch.ones(coarse.shape[:2]),
              "pred_covariance": torch.eye(2).expand(*coarse.shape[:2], 2, 2) * 8.0,
              "orig_size": torch.tensor([f.film.shape[-2:][::-1] for f in test])}  # fmt: skip
    info = trained_stage["stage"]["info"]
    on_cpu = Refiner(trained_stage["network"], info).refine(output, films, spacing)
    gpu = torch.device("cuda")
    on_gpu = Refiner(copy.deepcopy(trained_stage["network"]).to(gpu), info, gpu).refine({k: v.to(gpu) for k, v in output.items()}, films, spacing.to(gpu))
    for key in ("pred_points", "pred_spread", "pred_covariance", "pred_confidence", "coarse_points", "refine_spacing"):
        assert on_gpu[key].device.type == "cuda", key
    assert float((on_gpu["pred_points"].cpu() - on_cpu["pred_points"]).norm(dim=-1).max()) < 0.05  # px; TF32 convolutions


@pytest.fixture(scope="module")
def two_stage(tiny_checkpoint, trained_stage, tmp_path_factory):
    path = tmp_path_factory.mktemp("two_stage") / "two_stage.pt"
    shutil.copy(tiny_checkpoint, path)
    assert attach_refine_stage(path, trained_stage["stage"]) == path
    return path


def test_checkpoint_stages_round_trip_and_old_checkpoints_load(tiny_checkpoint, two_stage, trained_stage, tmp_path):
    old, new = load_checkpoint_file(tiny_checkpoint), load_checkpoint_file(two_stage)
    assert checkpoint_stages(old) == ["coarse"] and load_refiner(tiny_checkpoint) is None
    assert checkpoint_stages(new) == ["coarse", "refine"] and new["info"]["stages"] == ["coarse", "refine"]
    assert all(torch.equal(new["model"][k], v) for k, v in old["model"].items())  # first stage unchanged
    refiner = load_refiner(two_stage)
    probe = torch.rand(1, 19, 32, 32)
    with torch.no_grad():
        assert torch.equal(refiner.network(probe), trained_stage["network"](probe))
    assert refiner.codec == PatchCodec(patch_size=32, mm_per_px=PHANTOM_MM, stride=2, sigma=1.5, landmark_rms_mm=new["refine"]["info"]["landmark_rms_mm"])
    before_size = dict(trained_stage["stage"], info={k: v for k, v in trained_stage["stage"]["info"].items() if k != "landmark_rms_mm"})
    assert load_refiner(attach_refine_stage(tiny_checkpoint, before_size, out=tmp_path / "older.pt")).codec.landmark_rms_mm is None
    bad = dict(trained_stage["stage"], info=dict(trained_stage["stage"]["info"], normalize="zscore"))
    with pytest.raises(InputError, match="normalize"):
        attach_refine_stage(tiny_checkpoint, bad, out=tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()
    with pytest.raises(InputError, match="incomplete"):
        attach_refine_stage(tiny_checkpoint, {"model": {}, "info": {"network": "refine_net"}}, out=tmp_path / "bad.pt")


def _points(pred: dict) -> np.ndarray:
    return np.array([[r["x"], r["y"]] for r in pred["landmarks"]])


def test_predictor_runs_both_stages_and_records_the_first(tiny_checkpoint, two_stage, phantom_items):
    images = phantom_items[7:9]  # with their spacing (0.66 mm/px: one film pixel per patch pixel)
    old = Predictor.from_checkpoint(tiny_checkpoint).predict(images)
    assert Predictor.from_checkpoint(tiny_checkpoint).refiner is None
    assert all("stages" not in p and "coarse_x" not in p["landmarks"][0] for p in old)  # single-stage documents as before
    off = Predictor.from_checkpoint(two_stage, refine=False).predict(images)
    on = Predictor.from_checkpoint(two_stage, batch_size=2).predict(images)
    for o, f, n in zip(old, off, on, strict=True):
        assert [r for r in o["landmarks"]] == [r for r in f["landmarks"]]  # the first stage of a two-stage checkpoint is the old model
        assert n["stages"] == ["coarse", "refine"] and n["uncertainty_calibration"] is None
        coarse = np.array([[r["coarse_x"], r["coarse_y"]] for r in n["landmarks"]])
        np.testing.assert_allclose(coarse, _points(o), atol=0.01)  # batch 2 vs 1: float sums differ (an untrained net's flat heatmaps)
        moved = np.linalg.norm(_points(n) - coarse, axis=1)
        assert np.all(moved > 0) and np.all(moved < 16 * np.sqrt(2))  # refined within the 32 x 32 patch
        assert all(r["uncertainty_px"] > 0 and 0 <= r["confidence"] <= 1 for r in n["landmarks"])
        np.testing.assert_allclose([r["coarse_uncertainty_px"] for r in n["landmarks"]], [r["uncertainty_px"] for r in o["landmarks"]], rtol=1e-3)
        assert n["refinement"] == {"film_spacing_mm": pytest.approx(o["spacing"]), "film_spacing_from": "given", "patch_shift_mm": 2.0}
        assert "refinement" not in f
    # a film whose spacing nobody states: the document says the patches' scale was estimated, and at what
    (unstated,) = Predictor.from_checkpoint(two_stage).predict([images[0]["image"]])
    assert unstated["spacing"] is None and unstated["refinement"]["film_spacing_from"] == "estimated"
    coarse = torch.tensor([[[r["coarse_x"], r["coarse_y"]] for r in unstated["landmarks"]]], dtype=torch.float64)
    estimate = load_refiner(two_stage).codec.landmark_rms_mm / float(landmark_rms(coarse)[0])  # of an untrained first stage's points
    assert unstated["refinement"]["film_spacing_mm"] == pytest.approx([estimate, estimate], rel=1e-6)
    # a film read once (prepare) predicts the same
    predictor = Predictor(*load_model(two_stage), refiner=load_refiner(two_stage))
    again = predictor.predict(predictor.prepare(images), prepared=True)
    assert np.allclose(_points(again[0]), _points(on[0]))
    with pytest.raises(ValueError, match="full-resolution films"):
        predictor.predict(Predictor(*load_model(two_stage)).prepare(images), prepared=True)


def test_a_default_spacing_serves_both_stages_of_films_that_state_none(two_stage, phantom_items, tmp_path):
    """``Predictor(default_spacing=...)`` (``maht-net infer --spacing``, the app's ``default_spacing``):
    a film whose file and item state no spacing is predicted exactly as if its item gave that
    spacing, both stages included, and says so; an item's or a file's own spacing wins."""
    import itk

    item = phantom_items[7]
    spacing = tuple(item["spacing"])
    bare = {"image": item["image"], "id": item["id"]}
    (given,) = Predictor.from_checkpoint(two_stage).predict([item])
    (fallback,) = Predictor.from_checkpoint(two_stage, default_spacing=spacing).predict([bare])
    assert fallback["spacing_source"] == "fallback" and "spacing_source" not in given
    assert fallback["refinement"] == given["refinement"] == {"film_spacing_mm": pytest.approx(spacing), "film_spacing_from": "given", "patch_shift_mm": 2.0}
    assert fallback["landmarks"] == given["landmarks"]  # points, mm fields and uncertainty alike
    assert fallback["spacing"] == pytest.approx(spacing) and fallback["landmarks"][0]["x_mm"] is not None
    other = Predictor.from_checkpoint(two_stage, default_spacing=[0.9])
    assert "spacing_source" not in other.predict([item])[0] and other.predict([item])[0]["landmarks"] == given["landmarks"]
    # a file that states its spacing (NRRD) keeps it
    film = itk.imread(item["image"])
    film.SetSpacing(spacing)
    itk.imwrite(film, str(tmp_path / "film.nrrd"))
    (stated,) = other.predict([str(tmp_path / "film.nrrd")])
    assert stated["spacing"] == pytest.approx(spacing) and "spacing_source" not in stated
    assert stated["refinement"]["film_spacing_mm"] == pytest.approx(spacing)
    for bad in ([0.0], [0.1, 0.2, 0.3], [float("nan")]):
        with pytest.raises(ValueError, match="default_spacing"):
            Predictor.from_checkpoint(two_stage, default_spacing=bad)


def test_calibrating_a_two_stage_model_scales_what_both_stages_report_not_the_points(two_stage, phantom_datalist, tmp_path):
    """``calibrate_checkpoint`` fits the first stage, then the uncertainty the two stages report
    together (its stage's combine mode); predictions carry that record, and their points do not move."""
    import math

    from maht_net.codec.uncertainty import CALIBRATION_KEY
    from maht_net.inference.calibration import calibrate_checkpoint
    from maht_net.io.datalist import load_datalist

    out = tmp_path / "calibrated.pt"
    record = calibrate_checkpoint(two_stage, phantom_datalist, "validation", out=out)
    state = load_checkpoint_file(out)
    first, both = state["info"][CALIBRATION_KEY], state["refine"]["info"][CALIBRATION_KEY]
    assert both == record["refine_stage"] and both["combine"] == "fuse" and both["section"] == "validation"
    assert first == {k: v for k, v in record.items() if k != "refine_stage"}
    items = load_datalist(phantom_datalist, "validation")
    network, info = load_model(out)
    stage = state["refine"]
    raw_stage = Refiner.from_stage({"model": stage["model"], "info": {k: v for k, v in stage["info"].items() if k != CALIBRATION_KEY}})
    raw = Predictor(network, info, refiner=raw_stage).predict(items)
    err2 = np.stack([np.sum((_points(p) - it["landmarks"]) ** 2, -1) for p, it in zip(raw, items)])
    spread = np.array([[r["uncertainty_px"] for r in p["landmarks"]] for p in raw])
    assert both["common_scale"] == pytest.approx(math.sqrt(np.mean(err2 / spread**2)), rel=1e-5)  # fitted on the combined spread
    calibrated = Predictor.from_checkpoint(out).predict(items[:1])[0]
    doc_record = calibrated["uncertainty_calibration"]
    assert doc_record["combine"] == "fuse" and doc_record["scale"] == both["scale"] and raw[0]["uncertainty_calibration"] is None
    np.testing.assert_allclose([r["uncertainty_px"] for r in calibrated["landmarks"]], spread[0] * both["scale"], rtol=1e-4)
    np.testing.assert_allclose(_points(calibrated), _points(raw[0]), atol=1e-6)
    # fitted for "fuse": the replaced point reports its raw spread
    replaced = Predictor(network, info, refiner=load_refiner(out, combine="replace")).predict(items[:1])[0]
    assert replaced["uncertainty_calibration"] is None


def test_a_model_takes_the_calibration_of_another_model_of_its_recipe(two_stage, tiny_checkpoint, phantom_datalist, tmp_path):
    """``carry_calibration``: both stages' records of the donor (fitted on films held out of it)
    move to a model with none, say where they came from, and scale its predictions as they do the
    donor's; a donor without what the model needs is refused by name."""
    from maht_net.codec.uncertainty import CALIBRATION_KEY
    from maht_net.inference.calibration import calibrate_checkpoint, carry_calibration
    from maht_net.io.checkpoint import file_sha256
    from maht_net.io.datalist import load_datalist

    donor = tmp_path / "donor.pt"
    calibrate_checkpoint(two_stage, phantom_datalist, "validation", out=donor)
    taker = tmp_path / "taker.pt"
    shutil.copy(two_stage, taker)
    record = carry_calibration(taker, donor, "held-out films of the donor")
    state, given = load_checkpoint_file(taker), load_checkpoint_file(donor)
    origin = {"checkpoint_sha256": file_sha256(donor), "why": "held-out films of the donor"}
    for ours, theirs in ((state["info"], given["info"]), (state["refine"]["info"], given["refine"]["info"])):
        assert ours[CALIBRATION_KEY] == {**theirs[CALIBRATION_KEY], "carried_from": origin}
    assert record["refine_stage"]["scale"] == given["refine"]["info"][CALIBRATION_KEY]["scale"]
    items = load_datalist(phantom_datalist, "validation")[:2]
    carried, fitted = Predictor.from_checkpoint(taker).predict(items), Predictor.from_checkpoint(donor).predict(items)
    for a, b in zip(carried, fitted):
        np.testing.assert_allclose([r["uncertainty_px"] for r in a["landmarks"]], [r["uncertainty_px"] for r in b["landmarks"]], rtol=1e-6)
        np.testing.assert_allclose(_points(a), _points(b), atol=1e-6)
    again = carry_calibration(tmp_path / "taker.pt", taker, "a second hand", out=tmp_path / "again.pt")
    assert again["carried_from"] == origin  # carried on, it still names the fit's own model
    with pytest.raises(InputError, match="no uncertainty calibration") as e:
        carry_calibration(tmp_path / "again.pt", two_stage, "uncalibrated", out=tmp_path / "x.pt")
    assert str(two_stage) in str(e.value) and not (tmp_path / "x.pt").exists()
    single = tmp_path / "single.pt"
    calibrate_checkpoint(tiny_checkpoint, phantom_datalist, "validation", out=single)
    with pytest.raises(InputError, match="no refinement stage"):
        carry_calibration(taker, single, "one stage only", out=tmp_path / "x.pt")


def test_refinement_network_exports_to_onnx_with_parity(two_stage, phantom_items, tmp_path):
    pytest.importorskip("onnxruntime")
    from maht_net.inference.export import OnnxNetwork, export_onnx

    refiner = load_refiner(two_stage)
    diff = export_onnx(refiner.network, tmp_path / "refine.onnx", size=(32, 32))
    assert diff < 1e-4
    onnx = Refiner(OnnxNetwork(tmp_path / "refine.onnx"), refiner.info)
    images = phantom_items[8:9]
    eager = Predictor(*load_model(two_stage), refiner=refiner).predict(images)[0]
    ort = Predictor(*load_model(two_stage), refiner=onnx).predict(images)[0]
    assert np.allclose(_points(eager), _points(ort), atol=1e-3)


def test_cli_trains_attaches_exports_and_infers_both_stages(tiny_checkpoint, phantom_datalist, phantom_items, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import json

    from maht_net.cli import main

    model = tmp_path / "two_stage.pt"
    args = ["--datalist", str(phantom_datalist), "--out", str(model), "--network", "refine_net_small", "--patch", "32", "--mm-per-px", "0.66"]
    assert main(["refine", str(tiny_checkpoint), *args, "--iterations", "3", "--batch-size", "2"]) == 0
    written = load_checkpoint_file(model)
    assert checkpoint_stages(written) == ["coarse", "refine"] and written["refine"]["info"]["shift_mm"] == 2.0  # --shift-mm's default
    assert written["refine"]["info"]["uncertainty_calibration"]["section"] == "validation"  # --calibrate-on's default
    assert "uncertainty of both stages calibrated on 'validation'" in capsys.readouterr().out
    assert main(["export", "--checkpoint", str(model), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.refine.onnx").is_file()
    image, spacing = phantom_items[9]["image"], str(phantom_items[9]["spacing"][0])
    for name, extra in (("torch", []), ("ort", ["--onnx", str(tmp_path / "m.onnx")]), ("coarse", ["--no-refine"])):
        assert main(["infer", "--checkpoint", str(model), "--input", image, "--out", str(tmp_path / name), "--spacing", spacing, "--no-overlay",
                     "--device", "cpu", *extra]) == 0  # fmt: skip
    read = {name: json.loads(next((tmp_path / name).glob("*_landmarks.json")).read_text()) for name in ("torch", "ort", "coarse")}
    assert read["torch"]["stages"] == read["ort"]["stages"] == ["coarse", "refine"] and "stages" not in read["coarse"]
    assert np.allclose(_points(read["torch"]), _points(read["ort"]), atol=1e-3)
    assert np.allclose([[r["coarse_x"], r["coarse_y"]] for r in read["torch"]["landmarks"]], _points(read["coarse"]))
    assert "two stages" in capsys.readouterr().out
    # --refine-shift-mm: the stage's test-time patch shifts overridden (0: one centred patch), a bad value refused
    assert main(["infer", "--checkpoint", str(model), "--input", image, "--out", str(tmp_path / "one"), "--spacing", spacing, "--no-overlay",
                 "--device", "cpu", "--refine-shift-mm", "0"]) == 0  # fmt: skip
    one = json.loads(next((tmp_path / "one").glob("*_landmarks.json")).read_text())
    assert np.abs(_points(one) - _points(read["torch"])).max() > 1e-3
    assert read["torch"]["refinement"]["patch_shift_mm"] == read["ort"]["refinement"]["patch_shift_mm"] == 2.0
    assert one["refinement"]["patch_shift_mm"] == 0.0  # each document says how it was refined
    assert main(["infer", "--checkpoint", str(model), "--input", image, "--out", str(tmp_path / "bad"), "--refine-shift-mm", "-1"]) == 2
    assert "--refine-shift-mm" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["refine", str(tiny_checkpoint), *args[:2], "--out", str(tmp_path / "x.pt"), "--shift-mm", "100"]) == 2
    assert "--shift-mm" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()


def test_fine_tuning_a_two_stage_model_keeps_its_refinement_stage(two_stage, phantom_datalist, tmp_path):
    """train_bundle (the app's retraining, the AL and site-adaptation scripts) fine-tunes the first
    stage and carries the refinement stage over unchanged, so a promoted model stays two-stage; the
    combined uncertainty calibration, fitted to the old first stage, is fitted again."""
    from maht_net.codec.uncertainty import CALIBRATION_KEY
    from maht_net.engine.workflow import train_bundle
    from maht_net.inference.calibration import calibrate_checkpoint
    from maht_net.inference.device import default_device
    from maht_net.io.checkpoint import refine_stage

    result = train_bundle(REPO / "bundle" / "configs", phantom_datalist, tmp_path / "ft", init_checkpoint=two_stage,
                          overrides={"epochs": 1, "batch_size": 4, "num_workers": 0})
    before, after = load_checkpoint_file(two_stage), load_checkpoint_file(result["model"])
    assert checkpoint_stages(after) == ["coarse", "refine"] and after["info"]["stages"] == ["coarse", "refine"]
    kept = refine_stage(after)
    assert {k: v for k, v in kept["info"].items() if k != CALIBRATION_KEY} == {k: v for k, v in refine_stage(before)["info"].items() if k != CALIBRATION_KEY}
    fitted = kept["info"][CALIBRATION_KEY]
    assert fitted is not None and fitted != refine_stage(before)["info"].get(CALIBRATION_KEY)
    # what `maht-net calibrate` fits, on the device the training calibrated on
    again = calibrate_checkpoint(result["model"], phantom_datalist, "validation", out=tmp_path / "again.pt", device=default_device())
    assert again["refine_stage"]["scale"] == pytest.approx(fitted["scale"]) and again["scale"] == pytest.approx(after["info"][CALIBRATION_KEY]["scale"])
    assert all(torch.equal(kept["model"][k], v) for k, v in refine_stage(before)["model"].items())
    assert any(not torch.equal(after["model"][k], v) for k, v in before["model"].items() if v.is_floating_point())  # the first stage trained


def test_the_monailabel_app_serves_both_stages(tiny_checkpoint, two_stage, phantom_items, tmp_path):
    import sys

    pytest.importorskip("monailabel")
    sys.path.insert(0, str(REPO / "monailabel_app"))
    try:
        from lib.model import ModelStore
    finally:
        sys.path.remove(str(REPO / "monailabel_app"))
    served = ModelStore(two_stage, tmp_path / "served").predictor().predict(phantom_items[:2])
    direct = Predictor.from_checkpoint(two_stage).predict(phantom_items[:2])
    assert all(p["stages"] == ["coarse", "refine"] for p in served)
    for a, b in zip(served, direct):
        assert [(r["x"], r["y"]) for r in a["landmarks"]] == [(r["x"], r["y"]) for r in b["landmarks"]]
    assert ModelStore(tiny_checkpoint, tmp_path / "served").predictor().refiner is None
    bare = [{"image": it["image"], "id": it["id"]} for it in phantom_items[:2]]
    fallback = ModelStore(two_stage, tmp_path / "served").predictor(default_spacing=tuple(phantom_items[0]["spacing"])).predict(bare)
    assert [p["landmarks"] for p in fallback] == [p["landmarks"] for p in direct]  # the app's default_spacing reaches both stages
