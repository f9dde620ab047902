"""One catalogue of the bad and awkward inputs real use throws at us, shared by the CLI, bundle
and MONAI Label server tests (tests/test_robustness.py, tests/test_monailabel_app.py).

Each image case is a file plus what must happen: ``problem`` is a phrase the error must contain
(the error also names the file), or ``None`` when the file must be processed; ``spacing`` says
whether the result can be in mm. Label cases are landmark files for a given image size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from maht_net.landmarks import ISBI2015

SIZE = (96, 112)  # (W, H) of the valid images: small, but above the 32 px minimum
HUGE_SIDE = 20000


@dataclass(frozen=True)
class Case:
    path: Path
    problem: str | None  # None: must be processed
    spacing: bool = False  # the file states its pixel spacing


def write_dicom(path: Path, pixels: np.ndarray | None, photometric: str = "MONOCHROME2", **tags) -> Path:
    """A minimal DX DICOM file (explicit VR little endian); ``pixels=None`` writes no pixel data."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "DX", "PHANTOM"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
        ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
        ds.PixelData = pixels.tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), write_like_original=False)
    return path


def _film(dtype=np.uint8) -> np.ndarray:
    """A smooth ``(H, W)`` test pattern with some structure."""
    w, h = SIZE
    yy, xx = np.mgrid[0:h, 0:w]
    f = 0.5 + 0.4 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    top = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1.0
    return (f * top).astype(dtype)


def make_image_cases(folder: Path) -> dict[str, Case]:
    """Write every image case into ``folder``; returns them by name."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: dict[str, Case] = {}

    def add(name: str, problem: str | None, spacing: bool = False) -> Path:
        cases[name] = Case(folder / name, problem, spacing)
        return folder / name

    film = _film()
    add("empty.png", "file is empty").write_bytes(b"")
    Image.fromarray(film).save(add("truncated.png", "cannot decode"))
    data = cases["truncated.png"].path.read_bytes()
    cases["truncated.png"].path.write_bytes(data[: len(data) // 2])
    add("text.png", "not a readable image").write_text("this is a text file, not a PNG\n")
    Image.fromarray(np.stack([film, film // 2, 255 - film], -1)).save(add("rgb.png", None))
    Image.fromarray(np.dstack([film, film, film, np.full_like(film, 200)])).save(add("rgba.png", None))
    Image.fromarray(_film(np.uint16)).save(add("gray16.png", None))
    Image.fromarray(_film(np.uint16)).save(add("gray16_tiff.tif", None))
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(add("one_pixel.png", "1x1 px"))
    # 1-bit: a small file whose header declares 20000 x 20000 px (400 MP)
    Image.new("1", (HUGE_SIDE, HUGE_SIDE)).save(add("huge_20000.png", "over the 64 MP limit"))
    write_dicom(add("no_pixels.dcm", "DICOM file has no pixel data"), None)
    write_dicom(add("no_spacing.dcm", None), film)
    write_dicom(add("monochrome1.dcm", None, spacing=True), 255 - film, "MONOCHROME1", ImagerPixelSpacing=[0.2, 0.2])
    bad = _film(np.float32)
    bad[10, 10], bad[20, 30] = np.nan, np.inf
    Image.fromarray(bad, mode="F").save(add("nan_inf.tif", "2 NaN/inf pixels"))
    return cases


def _points() -> np.ndarray:
    """19 distinct ``(x, y)`` points inside a :data:`SIZE` image."""
    w, h = SIZE
    k = np.arange(len(ISBI2015))
    return np.stack([10 + (k * 37) % (w - 20), 10 + (k * 53) % (h - 20)], -1).astype(float)


def make_label_cases(folder: Path) -> dict[str, tuple[Path, str]]:
    """Landmark label files for a :data:`SIZE` image that must be rejected, with the phrase the
    error must contain. Formats: plain landmark JSON and Slicer markups (named points)."""
    folder.mkdir(parents=True, exist_ok=True)
    pts = _points()
    cases: dict[str, tuple[Path, str]] = {}

    def write(name: str, doc, problem: str) -> None:
        (folder / name).write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
        cases[name] = (folder / name, problem)

    def markups(labels, positions):
        return {"markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "controlPoints": [
            {"label": lab, "position": [float(x), float(y), 0.0]} for lab, (x, y) in zip(labels, positions)]}]}

    names = [lm.abbreviation for lm in ISBI2015]
    write("18_points.json", {"landmarks": pts[:18].tolist()}, "has 18 points, expected 19")
    write("20_points.json", {"landmarks": np.vstack([pts, pts[:1] + 1]).tolist()}, "has 20 points, expected 19")
    outside = pts.copy()
    outside[4] = [SIZE[0] + 50, 10]
    write("outside.json", {"landmarks": outside.tolist()}, f"outside the {SIZE[0]}x{SIZE[1]} px image")
    write("non_numeric.json", {"landmarks": [["abc", 3]] + pts[1:].tolist()}, "must be [x, y] with finite numbers")
    write("duplicated_names.mrk.json", markups(names[:18] + [names[0]], pts), "is given twice")
    write("18_named.mrk.json", markups(names[:18], pts[:18]), "missing: articulare")
    return cases
