"""Landmark-aware geometric transforms: exact point mapping, images that move with their points,
metadata that maps back to the original film, determinism and argument checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor, list_data_collate
from monai.transforms import Compose
from PIL import Image

from maht_net.datasets.pipeline import augmentation_transforms
from maht_net.transforms.io import NONLINEAR_WARP, ORIG_TO_CURRENT, LoadXRayd, xray_meta
from maht_net.transforms.spatial import (
    LandmarkResizePad,
    LandmarkResizePadd,
    RandLandmarkAffine,
    RandLandmarkAffined,
    RandLandmarkAffineElastic,
    RandLandmarkAffineElasticd,
    RandLandmarkElastic,
    RandLandmarkElasticd,
    RandLandmarkReframe,
    RandLandmarkReframed,
    current_to_original,
    landmarks_inside,
    original_to_current,
)

STRONG_AFFINE = dict(rotate_range=15.0, scale_range=0.15, aniso_range=0.1, shear_range=0.1, translate_range=0.05)


def _dots(width: int, height: int, points: np.ndarray, sigma: float) -> np.ndarray:
    """``(H, W)`` float32 image with a unit Gaussian blob centred at each ``(x, y)`` point."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.zeros((height, width))
    for x, y in points:
        img += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return img.astype(np.float32)


def _centroid(img: np.ndarray, point: np.ndarray, radius: int) -> np.ndarray:
    """Intensity-weighted ``(x, y)`` centroid in a ``(2 radius + 1)`` square window around ``point``."""
    cx, cy = (int(round(v)) for v in point)
    y0, x0 = max(cy - radius, 0), max(cx - radius, 0)
    window = img[y0 : cy + radius + 1, x0 : cx + radius + 1].astype(np.float64)
    ys, xs = np.mgrid[y0 : y0 + window.shape[0], x0 : x0 + window.shape[1]]
    return np.array([(window * xs).sum(), (window * ys).sum()]) / window.sum()


def _nineteen(size: int = 256, seed: int = 0) -> np.ndarray:
    """19 well-separated sub-pixel ``(x, y)`` points in the central part of a square image."""
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.linspace(0.25, 0.75, 5), np.linspace(0.25, 0.75, 4))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)[:19] * (size - 1)
    return grid + rng.uniform(-0.5, 0.5, grid.shape)


def _dot_item(size: int = 256, sigma: float = 1.5, seed: int = 0) -> dict:
    points = _nineteen(size, seed)
    img = MetaTensor(torch.from_numpy(_dots(size, size, points, sigma))[None], meta=xray_meta((size, size), (0.1, 0.1)))
    return {"image": img, "landmarks": points.copy(), "spacing": (0.1, 0.1)}


def _assert_dots_follow(image: torch.Tensor, points: np.ndarray, radius: int = 5) -> None:
    """Every dot's centroid within 0.5 px of its point; a half-pixel convention slip would also
    push the mean error to about 0.5 px, hence the tighter mean bound."""
    arr = image[0].numpy()
    errors = np.array([np.linalg.norm(_centroid(arr, p, radius) - p) for p in points])
    assert errors.max() < 0.5 and errors.mean() < 0.1, f"dot centroids off by {np.round(errors, 3)} px"


# ----------------------------------------------------------------------------- resize + pad


@pytest.mark.parametrize(
    "in_size, size, kwargs",
    [
        ((600, 480), 256, {}),
        ((300, 500), (256, 320), {}),
        ((1935, 2400), (256, 320), {"align": "top-left"}),
        ((100, 80), 256, {"pad_mode": "edge"}),
        ((64, 64), (128, 128), {"mode": "bicubic"}),
    ],
)
def test_resize_pad_round_trip_is_exact(in_size, size, kwargs):
    width, height = in_size
    rng = np.random.default_rng(1)
    corners = [[-0.5, -0.5], [width - 0.5, height - 0.5]]  # outer edges of the corner pixels
    points = np.concatenate([rng.uniform(corners[0], corners[1], (50, 2)), corners])
    img = MetaTensor(torch.rand(1, height, width), meta=xray_meta(in_size))
    resizer = LandmarkResizePad(size, **kwargs)
    out, moved = resizer(img, points)
    expected_shape = (size, size) if isinstance(size, int) else (size[1], size[0])
    assert tuple(out.shape) == (1, *expected_shape)
    np.testing.assert_allclose(moved, original_to_current(points, out), atol=1e-9)
    assert np.abs(current_to_original(moved, out.meta) - points).max() < 1e-6
    # The image's outer edges land on the edges of the resized content inside the letterbox.
    _, (new_w, new_h), (left, top) = resizer.plan(in_size)
    content_edges = [[left - 0.5, top - 0.5], [left + new_w - 0.5, top + new_h - 0.5]]
    np.testing.assert_allclose(moved[-2:], content_edges, atol=1e-9)


def test_resize_pad_uses_pixel_centre_convention():
    resizer = LandmarkResizePad((200, 200))
    matrix, new_size, pad = resizer.plan((400, 300))
    assert new_size == (200, 150) and pad == (0, 25)
    fx = fy = 0.5
    np.testing.assert_allclose(matrix[:2, 2], [0.5 * fx - 0.5, 0.5 * fy - 0.5 + 25])
    # Pixel (0, 0) covers [-0.5, 0.5]; its left/top edge maps to the left/top edge of the content.
    np.testing.assert_allclose(original_to_current([[-0.5, -0.5]], {ORIG_TO_CURRENT: matrix}), [[-0.5, 24.5]])


@pytest.mark.parametrize(
    "in_size, size, sigma, radius",
    [((611, 487), 256, 4.0, 7), ((97, 123), (256, 320), 1.5, 16)],  # windows of about 4 output sigmas
)
def test_resize_pad_moves_bright_dots_to_mapped_points(in_size, size, sigma, radius):
    width, height = in_size
    rng = np.random.default_rng(3)
    grid = np.stack(np.meshgrid(np.linspace(0.2, 0.8, 3), np.linspace(0.2, 0.8, 3)), -1).reshape(-1, 2)
    points = grid * [width - 1, height - 1] + rng.uniform(-0.5, 0.5, grid.shape)
    img = torch.from_numpy(_dots(width, height, points, sigma))[None]
    out, moved = LandmarkResizePad(size)(img, points)
    _assert_dots_follow(out, moved, radius=radius)


def test_resize_pad_dict_updates_spacing_and_keeps_nan():
    points = np.array([[10.25, 20.5], [np.nan, np.nan], [599.0, 479.0]], dtype=np.float32)
    d = {"image": MetaTensor(torch.rand(1, 480, 600), meta=xray_meta((600, 480), (0.1, 0.1))), "landmarks": points}
    d["spacing"] = (0.1, 0.1)
    out = LandmarkResizePadd("image", size=256)(d)
    fx, fy = 256 / 600, 205 / 480  # 480 * 256 / 600 = 204.8 rows, rounded to 205
    np.testing.assert_allclose(out["spacing"], (0.1 / fx, 0.1 / fy))
    assert out["image"].shape == (1, 256, 256)
    assert isinstance(out["landmarks"], np.ndarray) and out["landmarks"].dtype == np.float32
    assert np.isnan(out["landmarks"][1]).all() and np.isfinite(out["landmarks"][[0, 2]]).all()
    np.testing.assert_allclose(current_to_original(out["landmarks"], out["image"]), points, atol=1e-3)
    assert out["image"].meta["original_size"].tolist() == [600, 480]


def test_resize_pad_accepts_bare_tensors_and_tensor_points():
    points = torch.tensor([[5.0, 7.0]], dtype=torch.float64)
    out, moved = LandmarkResizePad(64)(torch.rand(1, 32, 48), points)
    assert isinstance(out, MetaTensor) and isinstance(moved, torch.Tensor) and moved.dtype == torch.float64
    np.testing.assert_allclose(current_to_original(moved, out), points.numpy(), atol=1e-9)


@pytest.mark.parametrize(
    "in_size, spacing",
    [((1340, 1671), (0.127, 0.127)), ((1935, 2400), (0.1, 0.1)), ((700, 900), (0.2, 0.25))],  # Hamedan, ISBI, anisotropic
)
def test_resize_pad_at_a_physical_pixel_size_keeps_anatomy_the_same_size(in_size, spacing):
    """Films of different machines: 50 mm of anatomy covers 50 / 0.76 input pixels on each, and
    the spacing left in the item is 0.76 mm; the round trip stays exact."""
    width, height = in_size
    sx, sy = spacing
    segment = np.array([[width / 2, height / 2], [width / 2 + 50 / sx, height / 2 + 50 / sy]])  # 50 mm along x and y
    d = {"image": MetaTensor(torch.rand(1, height, width), meta=xray_meta(in_size, spacing)), "landmarks": segment, "spacing": spacing}
    out = LandmarkResizePadd("image", size=(256, 320), mm_per_px=0.76)(d)
    step = out["landmarks"][1] - out["landmarks"][0]
    np.testing.assert_allclose(step, 50 / 0.76, rtol=5e-3)  # side lengths are rounded to whole pixels
    np.testing.assert_allclose(out["spacing"], (0.76, 0.76), rtol=5e-3)
    np.testing.assert_allclose(current_to_original(out["landmarks"], out["image"]), segment, atol=1e-6)
    # the letterbox of the same film fills the input instead: its scale depends on the film's size
    fitted = LandmarkResizePadd("image", size=(256, 320))(d)
    assert (fitted["image"].shape[1] == 320 or fitted["image"].shape[2] == 256) and fitted["spacing"] != out["spacing"]


def test_resize_pad_at_a_physical_pixel_size_shrinks_a_large_film_and_fits_one_without_spacing():
    big = MetaTensor(torch.rand(1, 3000, 2500), meta=xray_meta((2500, 3000), (0.1, 0.1)))  # 250 x 300 mm > 256 x 320 px of 0.76 mm
    resizer = LandmarkResizePad((256, 320), mm_per_px=0.76)
    fit = LandmarkResizePad((256, 320))
    np.testing.assert_allclose(resizer(big).meta[ORIG_TO_CURRENT], fit(big).meta[ORIG_TO_CURRENT])  # never cropped
    unknown = MetaTensor(torch.rand(1, 600, 500), meta=xray_meta((500, 600)))  # NaN spacing
    np.testing.assert_allclose(resizer(unknown).meta[ORIG_TO_CURRENT], fit(unknown).meta[ORIG_TO_CURRENT])
    # the spacing argument wins over the metadata, and the metadata's is carried through earlier resizes
    small = MetaTensor(torch.rand(1, 600, 500), meta=xray_meta((500, 600), (0.1, 0.1)))
    assert resizer(small, spacing=(0.2, 0.2)).meta[ORIG_TO_CURRENT][0, 0] == pytest.approx(0.2 / 0.76, rel=5e-3)
    halved = LandmarkResizePad((250, 300))(small)  # now 0.2 mm per pixel
    np.testing.assert_allclose(resizer(halved).meta[ORIG_TO_CURRENT], resizer(small).meta[ORIG_TO_CURRENT], rtol=1e-2)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="mm_per_px"):
            LandmarkResizePad(256, mm_per_px=bad)


# ----------------------------------------------------------------------------- random warps


@pytest.mark.parametrize("seed", range(6))
def test_affine_moves_dots_with_points(seed):
    item = _dot_item()
    warp = RandLandmarkAffined(prob=1.0, **STRONG_AFFINE).set_random_state(seed)
    out = warp(item)
    assert np.abs(out["landmarks"] - item["landmarks"]).mean() > 1.0  # the draw actually moved things
    _assert_dots_follow(out["image"], out["landmarks"])
    assert not out["image"].meta[NONLINEAR_WARP]


@pytest.mark.parametrize("seed", range(4))
def test_elastic_moves_dots_with_points(seed):
    item = _dot_item(seed=seed)
    out = RandLandmarkElasticd(prob=1.0, magnitude=0.03, grid_size=5).set_random_state(seed)(item)
    assert np.abs(out["landmarks"] - item["landmarks"]).max() > 1.0
    _assert_dots_follow(out["image"], out["landmarks"])
    assert out["image"].meta[NONLINEAR_WARP]


@pytest.mark.parametrize("seed", range(4))
def test_affine_plus_elastic_moves_dots_with_points(seed):
    item = _dot_item(seed=seed)
    warp = RandLandmarkAffineElasticd(prob=1.0, elastic_magnitude=0.03, **STRONG_AFFINE).set_random_state(seed)
    out = warp(item)
    _assert_dots_follow(out["image"], out["landmarks"])


def test_affine_elastic_on_non_square_image_with_border_padding():
    points = _nineteen(256)[:, ::-1] * [1.25, 0.75]  # spread over a 320 x 192 image
    img = torch.from_numpy(_dots(320, 192, points, 1.5))[None]
    warp = RandLandmarkAffineElastic(prob=1.0, padding_mode="border", **STRONG_AFFINE).set_random_state(5)
    out, moved = warp(img, points)
    assert out.shape == (1, 192, 320)
    _assert_dots_follow(out, moved)


def test_elastic_point_inversion_solves_the_backward_map():
    warp = RandLandmarkElastic(prob=1.0, magnitude=0.05).set_random_state(2)
    warp.randomize()
    points = _nineteen(128)
    plan, moved = warp.plan((128, 128), points)
    np.testing.assert_allclose(moved + plan.displacement(moved), points, atol=1e-6)


def test_random_warps_are_deterministic_with_set_random_state():
    item = _dot_item()
    first = RandLandmarkAffineElasticd().set_random_state(11)(item)
    second = RandLandmarkAffineElasticd().set_random_state(11)(item)
    other = RandLandmarkAffineElasticd().set_random_state(12)(item)
    assert torch.equal(first["image"], second["image"])
    np.testing.assert_array_equal(first["landmarks"], second["landmarks"])
    assert not np.allclose(first["landmarks"], other["landmarks"])


@pytest.mark.parametrize("make", [RandLandmarkAffine, RandLandmarkElastic, RandLandmarkAffineElastic])
def test_nan_landmarks_stay_nan(make):
    points = _nineteen(128)
    points[[3, 7]] = np.nan
    out, moved = make(prob=1.0).set_random_state(0)(torch.rand(1, 128, 128), points)
    assert np.isnan(moved[[3, 7]]).all()
    assert np.isfinite(np.delete(moved, [3, 7], axis=0)).all()


def test_out_of_image_points_nan_keep_and_keep_inside():
    points = np.array([[5.0, 64.0], [64.0, 64.0], [np.nan, np.nan]])
    shift = dict(rotate_range=0.0, scale_range=0.0, aniso_range=0.0, shear_range=0.0, translate_range=0.4)
    img = torch.rand(1, 128, 128)
    kept = RandLandmarkAffined(inside_key="inside", keep_inside=False, **shift).set_random_state(3)
    out = kept({"image": img, "landmarks": points})
    assert np.isfinite(out["landmarks"][:2]).all() and not out["inside"].all()
    np.testing.assert_array_equal(out["inside"], landmarks_inside(out["landmarks"], (128, 128)))
    dropped = RandLandmarkAffined(out_of_image="nan", keep_inside=False, **shift).set_random_state(3)
    out_nan = dropped({"image": img, "landmarks": points})
    np.testing.assert_array_equal(np.isnan(out_nan["landmarks"][:, 0]), ~out["inside"])
    inside = RandLandmarkAffined(inside_key="inside", keep_inside=True, **shift).set_random_state(3)
    out_in = inside({"image": img, "landmarks": points})
    assert out_in["inside"][:2].all() and not out_in["inside"][2]


@pytest.mark.parametrize("seed", range(4))
def test_reframe_moves_dots_with_points_and_keeps_them_inside_the_margin(seed):
    item = _dot_item(seed=seed)
    item["landmarks"] = item["landmarks"] * 0.6 + 20  # a box off-centre, as a face in a corner
    item["image"] = MetaTensor(torch.from_numpy(_dots(256, 256, item["landmarks"], 1.5))[None], meta=item["image"].meta)
    out = RandLandmarkReframed(zoom_range=(0.7, 1.4), margin=0.05).set_random_state(seed)(item)
    _assert_dots_follow(out["image"], out["landmarks"])
    assert out["landmarks"].min() >= 0.05 * 255 - 1e-9 and out["landmarks"].max() <= 0.95 * 255 + 1e-9
    zoom = out["image"].meta[ORIG_TO_CURRENT][0, 0]
    assert 0.7 - 1e-9 <= zoom <= 1.4 + 1e-9 and out["image"].meta[ORIG_TO_CURRENT][0, 1] == 0
    np.testing.assert_allclose(out["spacing"], (0.1 / zoom, 0.1 / zoom), rtol=1e-9)
    np.testing.assert_allclose(current_to_original(out["landmarks"], out["image"]), item["landmarks"], atol=1e-6)


def test_reframe_spreads_the_anatomy_over_the_frame_and_shrinks_a_zoom_that_would_not_fit():
    points = np.array([[100.0, 100.0], [140.0, 160.0], [np.nan, np.nan]])
    warp = RandLandmarkReframe(zoom_range=(0.5, 2.0), margin=0.0).set_random_state(0)
    centres, zooms = [], []
    for _ in range(200):
        out, moved = warp(torch.rand(1, 256, 256), points)
        assert np.isnan(moved[2]).all() and landmarks_inside(moved[:2], (256, 256)).all()
        centres.append(moved[:2].mean(axis=0))
        zooms.append(out.meta[ORIG_TO_CURRENT][0, 0])
    centres = np.array(centres)
    # The box (40 x 60 px, up to 120 px at zoom 2) lands all over a 256 px frame, not near its start.
    assert centres.min(axis=0).max() < 80 and centres.max(axis=0).min() > 175
    assert min(zooms) < 0.6 and max(zooms) > 1.8
    # A box too large for the zoom: the zoom is lowered until it fits (here to exactly 1).
    wide = np.array([[0.0, 0.0], [255.0, 255.0]])
    out, moved = RandLandmarkReframe(zoom_range=(1.5, 1.5), margin=0.0)(torch.rand(1, 256, 256), wide)
    assert out.meta[ORIG_TO_CURRENT][0, 0] == pytest.approx(1.0)
    np.testing.assert_allclose(moved, wide, atol=1e-9)


def test_reframe_without_landmarks_keeps_the_whole_image_in_the_frame():
    warp = RandLandmarkReframe(zoom_range=(0.5, 1.5), margin=0.0).set_random_state(1)
    for _ in range(20):
        out = warp(torch.rand(1, 64, 96))
        matrix = out.meta[ORIG_TO_CURRENT]
        corners = np.array([[0.0, 0.0], [95.0, 63.0]]) @ matrix[:2, :2].T + matrix[:2, 2]
        assert matrix[0, 0] <= 1 + 1e-9 and landmarks_inside(corners, (96, 64)).all()


def test_training_pipeline_reframes_only_when_asked():
    assert not any(isinstance(t, RandLandmarkReframed) for t in augmentation_transforms(1.0))
    steps = augmentation_transforms(0.0, reframe_prob=0.5, reframe_zoom=(0.8, 1.1))
    assert len(steps) == 1 and steps[0].prob == 0.5 and steps[0].warper.zoom_range == (0.8, 1.1)
    assert sum(isinstance(t, RandLandmarkReframed) for t in augmentation_transforms(1.0, reframe_prob=0.5)) == 1


def test_orig_to_current_composes_resize_and_affine_and_refuses_elastic(tmp_path):
    points = np.array([[30.3, 40.7], [500.0, 20.0], [np.nan, np.nan]])
    item = {"image": MetaTensor(torch.rand(1, 400, 520), meta=xray_meta((520, 400))), "landmarks": points}
    resized = LandmarkResizePadd(size=(256, 320))(item)
    affine = RandLandmarkAffined(**STRONG_AFFINE).set_random_state(4)(resized)
    assert np.abs(current_to_original(affine["landmarks"], affine["image"]) - points)[:2].max() < 1e-6
    elastic = RandLandmarkElasticd().set_random_state(4)(resized)
    with pytest.raises(ValueError, match="elastically warped"):
        current_to_original(elastic["landmarks"], elastic["image"])


def test_spacing_follows_the_affine():
    base = dict(rotate_range=0.0, scale_range=0.0, aniso_range=0.0, shear_range=0.0, translate_range=0.0)
    item = {"image": torch.rand(1, 64, 64), "landmarks": np.zeros((1, 2)) + 32, "spacing": (0.1, 0.1)}
    rotated = RandLandmarkAffined(**{**base, "rotate_range": 30.0}).set_random_state(0)(item)
    np.testing.assert_allclose(rotated["spacing"], (0.1, 0.1), rtol=1e-9)
    scaled = RandLandmarkAffined(**{**base, "scale_range": 0.3}).set_random_state(0)(item)
    scale = np.sqrt(np.linalg.det(scaled["image"].meta[ORIG_TO_CURRENT][:2, :2]))
    np.testing.assert_allclose(scaled["spacing"], (0.1 / scale, 0.1 / scale), rtol=1e-9)


def test_skipped_and_applied_samples_collate_together():
    warp = RandLandmarkAffineElasticd(prob=0.5).set_random_state(0)
    items = [
        warp({"image": torch.rand(1, 32, 32), "landmarks": np.full((2, 2), 16.0), "spacing": (0.1, 0.1)})
        for _ in range(8)
    ]
    assert {bool(it["image"].meta[NONLINEAR_WARP]) for it in items} == {True, False}
    batch = list_data_collate(items)
    assert batch["image"].shape == (8, 1, 32, 32) and batch["image"].meta[ORIG_TO_CURRENT].shape == (8, 3, 3)


def test_compose_load_resize_affine_on_a_dict_item(tmp_path):
    width, height = 180, 120
    points = np.array([[40.25, 30.5], [150.75, 90.0], [np.nan, np.nan]])
    Image.fromarray((_dots(width, height, points[:2], 2.0) * 255).astype(np.uint8)).save(tmp_path / "ceph.png")
    item = {"image": str(tmp_path / "ceph.png"), "landmarks": points.tolist(), "spacing": [0.1, 0.1], "id": "c1"}
    item["landmarks"][2] = None
    pipeline = Compose([LoadXRayd(), LandmarkResizePadd(size=(128, 96)), RandLandmarkAffined(**STRONG_AFFINE)])
    pipeline.set_random_state(0)
    out = pipeline(item)
    assert out["image"].shape == (1, 96, 128) and out["id"] == "c1"
    assert out["landmarks"].dtype == np.float32 and out["landmarks"].shape == (3, 2)
    assert np.isnan(out["landmarks"][2]).all()
    np.testing.assert_allclose(current_to_original(out["landmarks"], out["image"])[:2], points[:2], atol=1e-3)
    assert out["spacing"][0] > 0.1  # shrunk by about 0.7
    assert str(out["image"].meta["filename_or_obj"]).endswith("ceph.png")


# ----------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: LandmarkResizePad(0), "size"),
        (lambda: LandmarkResizePad((256, 256, 3)), "size"),
        (lambda: LandmarkResizePad(256, mode="nearest"), "mode"),
        (lambda: LandmarkResizePad(256, pad_mode="reflect"), "pad_mode"),
        (lambda: LandmarkResizePad(256, align="bottom"), "align"),
        (lambda: RandLandmarkAffine(rotate_range=-1), "rotate_range"),
        (lambda: RandLandmarkAffine(scale_range=1.0), "scale_range"),
        (lambda: RandLandmarkAffine(padding_mode="reflection"), "padding_mode"),
        (lambda: RandLandmarkAffine(out_of_image="drop"), "out_of_image"),
        (lambda: RandLandmarkAffine(max_tries=-1), "max_tries"),
        (lambda: RandLandmarkElastic(grid_size=1), "elastic_grid"),
        (lambda: RandLandmarkElastic(magnitude=0.1, grid_size=5), "elastic_magnitude"),
        (lambda: RandLandmarkReframe(zoom_range=(1.2, 0.8)), "zoom_range"),
        (lambda: RandLandmarkReframe(zoom_range=(0.0, 1.0)), "zoom_range"),
        (lambda: RandLandmarkReframe(margin=0.5), "margin"),
    ],
)
def test_invalid_arguments_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_shapes_raise_value_error():
    with pytest.raises(ValueError, match="points"):
        LandmarkResizePad(64)(torch.rand(1, 32, 32), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="channel-first"):
        LandmarkResizePad(64)(torch.rand(32, 32))
    with pytest.raises(ValueError, match="3x3"):
        current_to_original(np.zeros((1, 2)), {ORIG_TO_CURRENT: np.zeros((2, 3, 3))})
