"""Synthetic cephalograms: determinism, geometry, landmarks on the drawn anatomy, data set writer, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter, map_coordinates

from maht_net.cli import main
from maht_net.datasets import phantom
from maht_net.datasets.phantom import (
    DEFAULT_SIZE,
    ensure_phantom_dataset,
    make_phantom_dataset,
    phantom_spacing,
    render_phantom,
)
from maht_net.io.datalist import load_datalist
from maht_net.io.labelme import read_labelme
from maht_net.landmarks import ISBI2015

SEEDS = range(6)


@pytest.fixture(scope="module")
def cases():
    return {seed: render_phantom(seed) for seed in SEEDS}


def _at(image: np.ndarray, points) -> np.ndarray:
    """Bilinear intensity at ``(x, y)`` points ``(K, 2)``."""
    points = np.atleast_2d(points)
    return map_coordinates(image, [points[:, 1], points[:, 0]], order=1)


def _smooth(case) -> np.ndarray:
    return gaussian_filter(case.image.astype(float), 1.0)


def _lm(case, abbreviation: str) -> np.ndarray:
    return case.landmarks[ISBI2015.position_of(abbreviation)]


def test_shapes_dtypes_and_spacing(cases):
    case = cases[0]
    assert case.image.shape == (640, 512) and case.image.dtype == np.uint8
    assert case.landmarks.shape == (19, 2) and case.landmarks.dtype == np.float64
    assert np.isfinite(case.landmarks).all()
    assert case.spacing == pytest.approx((0.332, 0.332), abs=1e-3)
    assert 170 / 512 == pytest.approx(case.spacing[0]) and 640 * case.spacing[1] == pytest.approx(212.5)
    assert case.image.std() > 30  # a real picture, not a flat field


def test_same_seed_same_case_other_seed_other_case(cases):
    again = render_phantom(np.random.default_rng(0))  # an int seed is default_rng(seed)
    np.testing.assert_array_equal(again.image, cases[0].image)
    np.testing.assert_array_equal(again.landmarks, cases[0].landmarks)
    assert not np.array_equal(cases[0].image, cases[1].image)
    assert np.abs(cases[0].landmarks - cases[1].landmarks).max() > 3


def test_landmarks_inside_the_image():
    for seed in range(20):
        case = render_phantom(seed, size=(256, 320))
        h, w = case.image.shape
        x, y = case.landmarks.T
        assert (x >= 0).all() and (x <= w - 1).all() and (y >= 0).all() and (y <= h - 1).all(), seed


def test_landmarks_vary_across_seeds(cases):
    spread = np.linalg.norm(np.stack([c.landmarks for c in cases.values()]).std(axis=0), axis=1)
    assert (spread > 3.0).all(), dict(zip(ISBI2015.abbreviations, spread.round(1)))


def test_anatomy_keeps_its_physical_size_when_the_size_changes(cases):
    half = render_phantom(0, size=(256, 320))
    assert half.image.shape == (320, 256) and half.spacing == pytest.approx((0.664, 0.664), abs=1e-3)
    np.testing.assert_allclose(half.landmarks * half.spacing[0], cases[0].landmarks * cases[0].spacing[0], atol=1e-6)
    square = render_phantom(0, size=(400, 400))  # wider field of view, same anatomy in mm
    assert square.spacing == phantom_spacing((400, 400)) == (212.5 / 400, 212.5 / 400)
    mm = square.landmarks * square.spacing[0]
    ref = cases[0].landmarks * cases[0].spacing[0]
    np.testing.assert_allclose(mm - mm[0], ref - ref[0], atol=1e-6)


@pytest.mark.parametrize("size", [(100, 640), (512, 127), (512.5, 640)])
def test_too_small_or_bad_size_is_refused(size):
    with pytest.raises(ValueError, match="size"):
        render_phantom(0, size=size)


# Direction (head frame, about the image frame: rotations are a few degrees) from each bony
# landmark into the neighbouring soft tissue; 4 mm that way the image must be darker.
BONE_OUTSIDE = {
    "N": (1, 0), "A": (1, 0), "B": (1, 0), "Pog": (1, 0), "Me": (0, 1), "Gn": (1, 1), "Go": (-1, 1),
    "ANS": (1, 0), "UIT": (1, 1),
}  # fmt: skip


def test_bony_landmarks_sit_on_the_bone_outline(cases):
    for seed, case in cases.items():
        img, mm = _smooth(case), case.spacing[0]
        for name, direction in BONE_OUTSIDE.items():
            p = _lm(case, name)
            d = np.asarray(direction, float) / np.linalg.norm(direction)
            drop = _at(img, p)[0] - _at(img, p + 4.0 / mm * d)[0]
            assert drop > (8 if name == "ANS" else 20), (seed, name, drop)  # the thin nasal spine: least


def test_teeth_tips_and_articulare_are_bone_bright(cases):
    for seed, case in cases.items():
        img = _smooth(case)
        soft = _at(img, (_lm(case, "Pog") + _lm(case, "Pog'")) / 2)[0]  # soft tissue of the chin
        air = np.median(case.image[:, -8:])
        for name in ("UIT", "LIT", "Ar"):
            value = _at(img, _lm(case, name))[0]
            assert value > soft + 25 and value > air + 60, (seed, name, value, soft, air)


def test_sella_is_the_centre_of_the_fossa(cases):
    for seed, case in cases.items():
        img, mm, s = _smooth(case), case.spacing[0], _lm(case, "S")
        radii = np.linspace(0.0, 7.5, 31)
        for angle in (0, 90, 180):  # anterior wall, floor, posterior wall all at the fossa radius
            ray = s + np.outer(radii / mm, [np.cos(np.radians(angle)), np.sin(np.radians(angle))])
            profile = _at(img, ray)
            assert 3.0 <= radii[profile.argmax()] <= 7.0, (seed, angle, radii[profile.argmax()])
            assert profile.max() > profile[0] + 20, (seed, angle)


def test_orbitale_and_porion_are_on_their_rings(cases):
    for seed, case in cases.items():
        img, mm = _smooth(case), case.spacing[0]
        offsets = np.linspace(-2.5, 2.5, 21)
        for name in ("Or", "Po"):
            p = _lm(case, name)
            profile = _at(img, p + np.outer(offsets / mm, [0, 1]))  # vertical line through the point
            assert abs(offsets[profile.argmax()]) <= 0.75, (seed, name, offsets[profile.argmax()])
        po = _lm(case, "Po")
        assert _at(img, po)[0] > _at(img, po - [0, 2.5 / mm])[0] + 20  # the metal ring, not the bone above


def test_soft_tissue_landmarks_sit_on_the_skin_edge(cases):
    for seed, case in cases.items():
        img, mm = _smooth(case), case.spacing[0]
        grad = np.hypot(*np.gradient(gaussian_filter(case.image.astype(float), 1.5)))
        for name, direction in (("Sn", (1, 0.5)), ("UL", (1, 0)), ("LL", (1, 0)), ("Pog'", (1, 0))):
            p = _lm(case, name)
            d = np.asarray(direction, float) / np.linalg.norm(direction)
            assert _at(img, p - 3 / mm * d)[0] > _at(img, p + 3 / mm * d)[0] + 20, (seed, name)  # skin, then air
            edge, inside, outside = _at(grad, [p, p - 4 / mm * d, p + 4 / mm * d])
            assert edge > 2.5 * max(inside, outside), (seed, name, edge, inside, outside)


def _expected_image(seed: int, index: int, size=DEFAULT_SIZE) -> np.ndarray:
    """Phantom ``index`` of a data set, as documented in :func:`make_phantom_dataset`."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    return render_phantom(rng, size).image


def test_dataset_writer_round_trip(tmp_path):
    size = (256, 320)
    path = make_phantom_dataset(tmp_path / "ph", n=7, seed=3, size=size, workers=1)
    assert path == (tmp_path / "ph" / "datalist.json").absolute()
    doc = json.loads(path.read_text())
    assert doc["phantom"]["n"] == 7 and doc["phantom"]["size"] == [256, 320]
    assert [len(doc[k]) for k in ("training", "validation", "test")] == [5, 1, 1]
    items = load_datalist(path, ["training", "validation", "test"], check_files=True)
    assert sorted(item["id"] for item in items) == [f"phantom_{i:04d}" for i in range(7)]
    for item in items:
        index = int(item["id"].split("_")[1])
        assert item["spacing"] == pytest.approx(phantom_spacing(size))
        with Image.open(item["image"]) as im:
            assert im.mode == "L" and im.size == size
            pixels = np.asarray(im)
        np.testing.assert_array_equal(pixels, _expected_image(3, index, size))
        labelme = read_labelme(tmp_path / "ph" / "annotations" / f"{item['id']}.json")
        assert [p.label for p in labelme.points] == [f"l{k}" for k in range(1, 20)]
        assert (labelme.width, labelme.height) == size
        assert (tmp_path / "ph" / "annotations" / labelme.image_path).resolve() == Path(item["image"])
        points = np.array([[p.x, p.y] for p in labelme.points])
        np.testing.assert_array_equal(points, item["landmarks"])


def test_dataset_is_deterministic_and_independent_of_workers(tmp_path):
    a = make_phantom_dataset(tmp_path / "a", n=4, seed=11, size=(128, 160), workers=1)
    b = make_phantom_dataset(tmp_path / "b", n=4, seed=11, size=(128, 160), workers=2)
    for name in ["datalist.json", *(f"images/phantom_{i:04d}.png" for i in range(4))]:
        assert (a.parent / name).read_bytes() == (b.parent / name).read_bytes(), name
    c = make_phantom_dataset(tmp_path / "c", n=4, seed=12, size=(128, 160), workers=1)
    assert (a.parent / "images/phantom_0000.png").read_bytes() != (c.parent / "images/phantom_0000.png").read_bytes()


def test_split_fractions_and_bad_arguments(tmp_path):
    path = make_phantom_dataset(tmp_path, n=5, seed=0, size=(128, 160), fractions=(0.0, 0.0, 1.0))
    doc = json.loads(path.read_text())
    assert [len(doc[k]) for k in ("training", "validation", "test")] == [0, 0, 5]
    for kwargs in ({"n": 0}, {"seed": -1}, {"fractions": (0.5, 0.5, 0.5)}, {"size": (64, 64)}):
        with pytest.raises(ValueError):
            make_phantom_dataset(tmp_path / "bad", **{"n": 2, **kwargs})


def test_interrupted_run_leaves_no_datalist(tmp_path, monkeypatch):
    path = make_phantom_dataset(tmp_path, n=2, seed=0, size=(128, 160))
    real_write = phantom._write_case

    def failing(job):
        if job[2] == 1:
            raise KeyboardInterrupt
        return real_write(job)

    monkeypatch.setattr(phantom, "_write_case", failing)
    with pytest.raises(KeyboardInterrupt):
        make_phantom_dataset(tmp_path, n=2, seed=1, size=(128, 160), workers=1)
    assert not path.exists()  # the old datalist would name images that were half replaced


def test_ensure_reuses_a_matching_dataset_and_remakes_others(tmp_path, monkeypatch):
    kwargs = {"n": 3, "seed": 2, "size": (128, 160)}
    path = ensure_phantom_dataset(tmp_path, **kwargs)
    calls = []
    real_make = phantom.make_phantom_dataset
    monkeypatch.setattr(phantom, "make_phantom_dataset", lambda *a, **k: calls.append(a) or real_make(*a, **k))
    assert ensure_phantom_dataset(tmp_path, **kwargs) == path and calls == []
    assert json.loads(ensure_phantom_dataset(tmp_path, **{**kwargs, "seed": 4}).read_text())["phantom"]["seed"] == 4
    assert len(calls) == 1
    (tmp_path / "images" / "phantom_0001.png").unlink()
    ensure_phantom_dataset(tmp_path, **{**kwargs, "seed": 4})
    assert len(calls) == 2 and (tmp_path / "images" / "phantom_0001.png").is_file()


def test_cli_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["phantom", "--n", "3", "--out", str(out), "--seed", "5", "--size", "128", "160"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "datalist.json") in printed and " s" in printed
    items = load_datalist(out / "datalist.json", ["training", "validation", "test"], check_files=True)
    assert len(items) == 3 and all(item["spacing"] == pytest.approx(phantom_spacing((128, 160))) for item in items)


@pytest.mark.parametrize(
    "argv, message",
    [(["--n", "0"], "--n"), (["--size", "512", "100"], "--size"), (["--seed", "x"], "--seed")],
)
def test_cli_refuses_bad_arguments(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["phantom", "--out", str(tmp_path), *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "datalist.json").exists()


def test_long_loops_show_progress_bars_on_a_terminal(tmp_path, capsys, monkeypatch, tiny_checkpoint):
    """Phantom generation, the audit, dataset caching and calibration draw a bar (on stderr,
    only when it is a terminal: maht_net.progress.progress_shown)."""
    import sys

    from maht_net.datasets.audit import audit_datalist
    from maht_net.datasets.pipeline import evaluation_transforms, landmark_dataset
    from maht_net.inference.calibration import calibrate_checkpoint

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    datalist = make_phantom_dataset(tmp_path / "p", n=10, seed=0, size=(128, 160), workers=1)
    audit_datalist(datalist)
    landmark_dataset(load_datalist(datalist, "training"), evaluation_transforms((64, 96)), 19)
    calibrate_checkpoint(tiny_checkpoint, datalist, "validation", out=tmp_path / "calibrated.pt")
    err = capsys.readouterr().err
    for bar in ("phantom:", "audit:", "Loading dataset:", "calibration on validation:"):
        assert bar in err, err[-2000:]
