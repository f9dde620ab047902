"""Reading 2-D X-ray images (PNG, BMP, TIFF, JPEG, DICOM, NIfTI/NRRD single slice).

Every reader returns a :class:`XRay`: a ``(H, W)`` float32 array in ``[0, 1]`` (row = y,
column = x), the pixel spacing ``(sx, sy)`` in mm when the file states it, and where it came
from. Bad files raise :class:`~maht_net.errors.InputError` naming the file and the problem.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maht_net.errors import InputError

__all__ = ["XRay", "load_xray", "image_size", "IMAGE_SUFFIXES", "MAX_PIXELS", "MIN_SIDE", "window_to_unit"]

PIL_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom")
ITK_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
IMAGE_SUFFIXES = PIL_SUFFIXES + DICOM_SUFFIXES + ITK_SUFFIXES

MAX_PIXELS = 64_000_000
"""Largest image accepted (pixels): 8000 x 8000. Larger files are refused before decoding, so a
20000 x 20000 image costs no memory (a float32 copy of it would need 1.6 GB)."""
MIN_SIDE = 32
"""Smallest accepted side in pixels; anything smaller cannot hold a cephalogram."""


@dataclass
class XRay:
    """A loaded 2-D X-ray.

    Attributes:
        image: ``(H, W)`` float32 in ``[0, 1]``, brighter = denser (bone bright).
        spacing: ``(sx, sy)`` mm per pixel along x (columns) and y (rows), or ``None``.
        path: the file read.
        origin: ``(x0, y0)`` physical position (mm) of pixel ``(0, 0)``; ``(0, 0)`` unless the
            file defines one (NIfTI/NRRD).
        spacing_source: which field gave the spacing (e.g. ``"ImagerPixelSpacing"``) or ``None``.
    """

    image: np.ndarray
    spacing: tuple[float, float] | None
    path: str
    origin: tuple[float, float] = (0.0, 0.0)
    spacing_source: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _check_size(path, height: int, width: int) -> None:
    if min(height, width) < MIN_SIDE:
        raise InputError(path, f"image is {width}x{height} px; at least {MIN_SIDE}x{MIN_SIDE} is needed")
    if height * width > MAX_PIXELS:
        raise InputError(
            path,
            f"image is {width}x{height} px ({height * width / 1e6:.0f} MP), over the {MAX_PIXELS / 1e6:.0f} MP "
            "limit; downscale it first",
        )


def window_to_unit(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linearly map ``[low, high]`` to ``[0, 1]`` and clip."""
    if not high > low:
        return np.zeros_like(values, dtype=np.float32)
    return np.clip((values.astype(np.float32) - low) / (high - low), 0.0, 1.0)


def _to_unit(path, arr: np.ndarray) -> np.ndarray:
    """Grayscale array of any dtype -> float32 ``[0, 1]``: 8-bit by /255, wider by a robust window."""
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            raise InputError(path, f"image has {int(bad.sum())} NaN/inf pixels")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == bool:
        return arr.astype(np.float32)
    low, high = np.percentile(arr, (0.5, 99.5))
    if high <= low:
        low, high = float(arr.min()), float(arr.max())
    return window_to_unit(arr, low, high)


def _to_gray(arr: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` -> ``(H, W)``: RGB(A) to luminance (ITU-R 601), alpha ignored."""
    if arr.ndim == 3:
        if arr.shape[2] == 1:
            return arr[..., 0]
        gray = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.round(gray).astype(np.uint8) if arr.dtype == np.uint8 else gray
    return arr


def _open_pil(path: Path):
    """``PIL.Image.open``, with PIL's decompression-bomb refusal (a header declaring hundreds of
    megapixels, refused before any pixel is decoded) reported as our size limit."""
    from PIL import Image

    try:
        return Image.open(path)
    except Image.DecompressionBombError as e:
        raise InputError(path, f"image is over the {MAX_PIXELS / 1e6:.0f} MP limit ({e}); downscale it first") from None


def _load_pil(path: Path) -> XRay:
    from PIL import UnidentifiedImageError

    try:
        with _open_pil(path) as im:
            width, height = im.size
            _check_size(path, height, width)
            if getattr(im, "n_frames", 1) > 1:
                warnings.warn(f"{path}: {im.n_frames} frames; only the first is used", stacklevel=3)
            dpi = im.info.get("dpi")
            if im.mode == "P":
                im = im.convert("RGBA")
            if im.mode in ("I;16", "I;16B", "I;16L"):
                arr = np.asarray(im, dtype=np.uint16)
            elif im.mode in ("1", "L", "I", "F", "RGB", "RGBA", "LA", "CMYK"):
                arr = np.asarray(im.convert("RGB") if im.mode == "CMYK" else im)
                if im.mode == "LA":
                    arr = arr[..., 0]
                if im.mode == "I":
                    arr = arr.astype(np.int64)
            else:
                arr = np.asarray(im.convert("L"))
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(path, "not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(path, f"cannot decode image ({e})") from None
    if arr.ndim == 2 and arr.dtype == np.uint16 and arr.max() <= 255 and path.suffix.lower() in (".jpg", ".jpeg"):
        arr = arr.astype(np.uint8)
    image = _to_unit(path, _to_gray(arr))
    del dpi  # DPI of scanned films is not a trustworthy spacing; the datalist states spacing.
    return XRay(image=image, spacing=None, path=str(path))


def _dicom_pair(ds, keyword: str, notes: list[str]) -> tuple[float, float] | None:
    """A DICOM ``(row, column)`` spacing as ``(sx, sy)`` mm; ``None`` (with a note when present
    but malformed or non-positive)."""
    if keyword not in ds:
        return None
    try:
        value = [float(v) for v in ds[keyword].value]
    except (TypeError, ValueError):
        value = []
    if len(value) == 2 and all(np.isfinite(v) and v > 0 for v in value):
        return value[1], value[0]
    notes.append(f"ignored malformed {keyword}")
    return None


def _dicom_spacing(ds) -> tuple[tuple[float, float] | None, str | None, list[str]]:
    """``(sx, sy)`` mm of a DX/CR film at the patient where the header allows it, the tags used,
    and notes. DICOM stores spacing as ``(row, column)`` = ``(sy, sx)``; it is swapped here.

    Precedence (PS3.3 10.7.1, the DX detector and X-ray acquisition modules):

    1. ``PixelSpacing``, the spacing in the patient, when it is calibrated: it has a
       ``PixelSpacingCalibrationType`` (GEOMETRY: corrected for the geometric magnification;
       FIDUCIAL: against an object of known size), or it differs from ``ImagerPixelSpacing``
       (the standard's sign of a correction), or there is no ``ImagerPixelSpacing`` to compare
       with (then whether it was calibrated cannot be told; a note says so).
    2. ``ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor``: the detector spacing
       brought to the patient plane by the magnification the modality estimated.
    3. ``ImagerPixelSpacing`` alone: the spacing at the detector, so distances come out larger
       than at the patient by the radiographic magnification (about 1.1 in a cephalostat); a
       note says so.
    4. None (distances in pixels; :func:`_load_dicom` warns).

    A malformed or non-positive value is skipped with a note and the next rule is tried.
    """
    notes: list[str] = []
    pixel, imager = _dicom_pair(ds, "PixelSpacing", notes), _dicom_pair(ds, "ImagerPixelSpacing", notes)
    calibration = str(ds.get("PixelSpacingCalibrationType", "") or "").strip().upper()
    if pixel is not None:
        if calibration:
            description = str(ds.get("PixelSpacingCalibrationDescription", "") or "").strip()
            notes.append(f"PixelSpacing calibrated at the patient ({calibration}{': ' + description if description else ''})")
            return pixel, "PixelSpacing", notes
        if imager is None:
            notes.append("PixelSpacing without ImagerPixelSpacing or calibration type: calibration unknown")
            return pixel, "PixelSpacing", notes
        if not np.allclose(pixel, imager, rtol=1e-6):
            notes.append("PixelSpacing differs from ImagerPixelSpacing: corrected for magnification at the patient")
            return pixel, "PixelSpacing", notes
    if imager is None:
        return None, None, notes
    magnification = _dicom_number(ds, "EstimatedRadiographicMagnificationFactor")
    if magnification is not None and np.isfinite(magnification) and magnification > 0:
        notes.append(f"ImagerPixelSpacing divided by EstimatedRadiographicMagnificationFactor {magnification:g} (patient plane)")
        return (imager[0] / magnification, imager[1] / magnification), "ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor", notes
    notes.append("ImagerPixelSpacing is the detector-plane spacing, not corrected for magnification (mm about 10 % too large)")
    return imager, "ImagerPixelSpacing", notes


def _dicom_number(ds, keyword: str) -> float | None:
    """First value of a DS/IS element (multi-valued or not) as float; ``None`` if absent or malformed."""
    from pydicom.multival import MultiValue

    try:
        value = ds.get(keyword)  # pydicom converts on access: a malformed value raises here
        if isinstance(value, MultiValue):
            value = value[0] if len(value) else None
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _dicom_display(path: Path, ds, arr: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Stored grey values ``(H, W)`` -> ``[0, 1]`` display values as the header defines them, and notes.

    pydicom's ``apply_modality_lut`` (Modality LUT Sequence, else RescaleSlope/Intercept), then
    ``apply_voi_lut`` (VOI LUT Sequence, else WindowCenter/WindowWidth with VOILUTFunction
    LINEAR, LINEAR_EXACT or SIGMOID), scaled from the VOI's output range to ``[0, 1]``: from the
    smallest to the largest entry of the LUT, or the windowing's ``[y_min, y_max]``. Without a
    VOI (or with an invalid one, noted), the 0.5-99.5 percentile window of the modality values.
    MONOCHROME1 is inverted by the caller.
    """
    from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut

    notes = []
    try:
        values = apply_modality_lut(arr, ds)
        shown = apply_voi_lut(values, ds)
        if shown is values:
            low = high = None
        elif ds.get("VOILUTSequence"):  # the LUT's entries span its output
            first, count = int(ds.VOILUTSequence[0].LUTDescriptor[1]), int(ds.VOILUTSequence[0].LUTDescriptor[0] or 2**16)
            entries = apply_voi_lut(np.arange(first, first + count), ds)
            low, high = float(entries.min()), float(entries.max())
            notes.append("VOI LUT Sequence applied")
        else:  # windowing maps -inf and +inf to the ends of its output range
            low, high = apply_voi_lut(np.array([-np.inf, np.inf]), ds)
            notes.append(f"{str(ds.get('VOILUTFunction') or 'LINEAR').upper()} window from WindowCenter/WindowWidth applied")
    except Exception as e:  # pydicom raises ValueError, KeyError, IndexError, ... on malformed LUT/window attributes
        values, shown, low, high = arr, arr, None, None
        notes.append(f"ignored invalid Modality LUT/VOI attributes ({type(e).__name__}: {e})")
    if values is not arr:
        notes.insert(0, "Modality LUT Sequence applied" if ds.get("ModalityLUTSequence") else "RescaleSlope/RescaleIntercept applied")
    if low is None:
        return _to_unit(path, np.asarray(values, dtype=np.float64)), notes + ["windowed to the 0.5-99.5 percentile range"]
    return window_to_unit(shown, low, high), notes


def _load_dicom(path: Path) -> XRay:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), force=path.suffix.lower() in DICOM_SUFFIXES)
    except Exception as e:  # pydicom raises many types for corrupt files
        raise InputError(path, f"not a readable DICOM file ({type(e).__name__}: {e})") from None
    if "PixelData" not in ds:
        if not _looks_like_dicom(path) and "SOPClassUID" not in ds:
            raise InputError(path, "not a DICOM file (no 'DICM' marker, no DICOM header)")
        raise InputError(path, "DICOM file has no pixel data")
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    if not rows or not cols:
        raise InputError(path, "DICOM header lacks Rows/Columns")
    _check_size(path, rows, cols)
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        raise InputError(path, f"multi-frame DICOM ({ds.NumberOfFrames} frames); a single 2-D X-ray is expected")
    try:
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises many types for missing codecs / truncated data
        raise InputError(path, f"cannot decode DICOM pixel data ({type(e).__name__}: {e})") from None
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    notes = []
    if arr.ndim == 3 and photometric in ("RGB", "YBR_FULL", "YBR_FULL_422"):
        if photometric != "RGB":
            from pydicom.pixel_data_handlers.util import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        image = _to_unit(path, _to_gray(arr))  # no grey-level LUT applies to colour
        notes += [f"{photometric} converted to grey", "windowed to the 0.5-99.5 percentile range"]
    elif arr.ndim == 2:
        image, display_notes = _dicom_display(path, ds, arr)
        notes += display_notes
    else:
        raise InputError(path, f"DICOM pixel array has shape {arr.shape}; a 2-D image is expected")
    if photometric == "MONOCHROME1":
        image = 1.0 - image
        notes.append("MONOCHROME1 inverted")
    elif photometric == "MONOCHROME2":
        notes.append("MONOCHROME2 kept")
    spacing, source, spacing_notes = _dicom_spacing(ds)
    notes += spacing_notes
    if spacing is None:
        warnings.warn(f"{path}: no usable ImagerPixelSpacing or PixelSpacing; distances in pixels", stacklevel=3)
    return XRay(image=image.astype(np.float32), spacing=spacing, path=str(path), spacing_source=source, notes=notes)


def _load_itk(path: Path) -> XRay:
    import itk

    try:
        img = itk.imread(str(path))
    except Exception as e:  # ITK raises RuntimeError with long messages
        raise InputError(path, f"cannot read image with ITK ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    arr = np.squeeze(itk.array_from_image(img))
    spacing = [float(s) for s in itk.spacing(img)]
    origin = [float(o) for o in itk.origin(img)]
    if arr.ndim != 2:
        raise InputError(path, f"image has shape {arr.shape}; a single 2-D slice is expected")
    _check_size(path, *arr.shape)
    return XRay(
        image=_to_unit(path, arr),
        spacing=(spacing[0], spacing[1]),
        path=str(path),
        origin=(origin[0], origin[1]),
        spacing_source="image header",
    )


def _looks_like_dicom(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def load_xray(path: str | os.PathLike) -> XRay:
    """Read a 2-D X-ray as ``(H, W)`` float32 in ``[0, 1]`` with spacing ``(sx, sy)`` mm or ``None``.

    PNG/BMP/TIFF/JPEG: RGB(A) is converted to luminance; 8-bit scales by 1/255, 16-bit by a
    0.5-99.5 percentile window; no spacing (the datalist supplies it). DICOM: pydicom's Modality
    LUT then VOI LUT or window (LINEAR, LINEAR_EXACT, SIGMOID) from the header, else the
    percentile window (:func:`_dicom_display`); MONOCHROME1 inverted; spacing at the patient
    where the header allows it: calibrated PixelSpacing, else ImagerPixelSpacing divided by
    EstimatedRadiographicMagnificationFactor, else ImagerPixelSpacing (detector plane, noted),
    else ``None`` with a warning (:func:`_dicom_spacing`). NIfTI/NRRD/MHA: one slice via ITK
    with its spacing and origin.

    Raises:
        InputError: missing, empty, unreadable, too small or too large files, NaN/inf pixels.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty")
    suffix = _suffix(path)
    if suffix in DICOM_SUFFIXES or (suffix not in PIL_SUFFIXES + ITK_SUFFIXES and _looks_like_dicom(path)):
        return _load_dicom(path)
    if suffix in ITK_SUFFIXES:
        return _load_itk(path)
    if suffix in PIL_SUFFIXES:
        return _load_pil(path)
    raise InputError(path, f"unsupported file type {suffix!r}; supported: {', '.join(IMAGE_SUFFIXES)}")


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(W, H)`` of an image, from its header where possible (PNG/BMP/TIFF/JPEG, DICOM)."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix in PIL_SUFFIXES:
        from PIL import UnidentifiedImageError

        try:
            with _open_pil(path) as im:
                return im.size
        except InputError:
            raise
        except FileNotFoundError:
            raise InputError(path, "file not found") from None
        except (UnidentifiedImageError, OSError) as e:
            raise InputError(path, f"not a readable image ({e})") from None
    if suffix in DICOM_SUFFIXES or (path.is_file() and _looks_like_dicom(path)):
        import pydicom

        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
            return int(ds.Columns), int(ds.Rows)
        except Exception as e:  # missing tags or unreadable file
            raise InputError(path, f"cannot read DICOM size ({type(e).__name__}: {e})") from None
    xray = load_xray(path)
    return xray.width, xray.height
