"""CL-Detection 2023 challenge (MICCAI 2023, 38 landmarks) -> one PNG per image + a datalist.

Layout of the training release (both spellings occur in the organisers' material)::

    ROOT/train_stack.mha   or  ROOT/images/train-stack.mha
    ROOT/train-gt.json     or  ROOT/labels/train-gt.json

``train_stack.mha`` is one MetaImage holding every image: SimpleITK reads it as an array of shape
``(Z, 2400, 2880, 3)`` (uint8 RGB with equal channels). Each image is zero-padded at its bottom
and right to that common size, so cropping the padding leaves the coordinates unchanged. Slice
``i`` (0-based) is image id ``i + 1``.

``train-gt.json``::

    {"name": "Orthodontic landmarks", "type": "Multiple points",
     "points": [{"name": "1", "point": [x, y, image_id], "scale": 0.1}, ...]}

holds one entry per landmark and image: ``name`` is the landmark number 1..38 (challenge order),
``point`` the ``(x, y)`` pixel position (x = column, y = row, origin top-left) and the 1-based
image id, ``scale`` the isotropic pixel spacing in mm (0.1, 0.096 or 0.125 depending on the
scanner).

The stack is streamed one slice at a time (raw or zlib-compressed MetaImage), never loaded whole
(the 400-image stack is 8.3 GB decoded). PNGs are staged and moved into place, and the datalist
written, only after every image and point has been checked.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maht_net.datasets.common import fold_sections, require_inside, save_png, staged_folder
from maht_net.errors import InputError
from maht_net.io.datalist import make_item, write_datalist
from maht_net.io.jsonfile import read_json
from maht_net.landmarks import CLDETECTION2023, LandmarkSet, get_landmark_set

__all__ = [
    "CLDETECTION_NUM_LANDMARKS",
    "GroundTruth",
    "read_cldetection_gt",
    "StackInfo",
    "read_metaimage_header",
    "iter_stack",
    "crop_zero_padding",
    "to_grey",
    "extract_images",
    "prepare_cldetection2023",
]

CLDETECTION_NUM_LANDMARKS = 38
STACK_NAMES = ("train_stack.mha", "images/train_stack.mha", "train-stack.mha", "images/train-stack.mha")
GT_NAMES = ("train-gt.json", "labels/train-gt.json", "train_gt.json", "labels/train_gt.json")

_MET_TYPES = {
    "MET_UCHAR": "u1",
    "MET_CHAR": "i1",
    "MET_USHORT": "u2",
    "MET_SHORT": "i2",
    "MET_UINT": "u4",
    "MET_INT": "i4",
    "MET_ULONG_LONG": "u8",
    "MET_LONG_LONG": "i8",
    "MET_FLOAT": "f4",
    "MET_DOUBLE": "f8",
}


# --------------------------------------------------------------------------- ground truth


@dataclass
class GroundTruth:
    """Landmarks of one image: ``points`` ``(38, 2)`` ``(x, y)`` pixels, ``spacing`` mm/px or ``None``."""

    points: np.ndarray
    spacing: float | None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _parse_entry(path: Path, i: int, entry: Any) -> tuple[int, int, float, float, float | None]:
    """One ``points`` entry -> ``(image_id, landmark 1..38, x, y, scale)``."""
    where = f"points[{i}]"
    if not isinstance(entry, dict):
        raise InputError(path, f"{where} must be an object with 'name' and 'point'")
    point, name, scale = entry.get("point"), str(entry.get("name", "")).strip(), entry.get("scale")
    if not isinstance(point, list) or len(point) != 3 or not all(_is_number(v) for v in point):
        raise InputError(path, f"{where}: 'point' must be [x, y, image_id] numbers, got {point!r}")
    if not name.isdigit() or not 1 <= int(name) <= CLDETECTION_NUM_LANDMARKS:
        raise InputError(
            path, f"{where}: landmark name must be 1..{CLDETECTION_NUM_LANDMARKS}, got {entry.get('name')!r}"
        )
    if point[2] != int(point[2]) or point[2] < 1:
        raise InputError(path, f"{where}: image id must be a positive integer, got {point[2]!r}")
    if scale is not None:
        try:
            scale = float(scale)
        except (TypeError, ValueError):
            scale = math.nan
        if not (math.isfinite(scale) and scale > 0):
            raise InputError(path, f"{where}: 'scale' must be a positive spacing in mm, got {entry.get('scale')!r}")
    return int(point[2]), int(name), float(point[0]), float(point[1]), scale


def read_cldetection_gt(path: str | os.PathLike) -> dict[int, GroundTruth]:
    """Read ``train-gt.json`` -> ``{image_id: GroundTruth}`` with all 38 landmarks of every image.

    Raises:
        InputError: unreadable JSON, a malformed entry, a landmark given twice or missing for an
            image, different ``scale`` values within one image.
    """
    path = Path(path)
    doc = read_json(path, "ground-truth JSON")
    if not isinstance(doc, dict) or not isinstance(doc.get("points"), list) or not doc["points"]:
        raise InputError(path, "expected an object with a non-empty 'points' list")
    points: dict[int, np.ndarray] = {}
    scales: dict[int, set[float | None]] = {}
    for i, entry in enumerate(doc["points"]):
        image_id, k, x, y, scale = _parse_entry(path, i, entry)
        pts = points.setdefault(image_id, np.full((CLDETECTION_NUM_LANDMARKS, 2), np.nan))
        if np.isfinite(pts[k - 1, 0]):
            raise InputError(path, f"image {image_id}: landmark {k} is given twice")
        pts[k - 1] = x, y
        scales.setdefault(image_id, set()).add(scale)
    out = {}
    for image_id in sorted(points):
        missing = [str(k + 1) for k in np.flatnonzero(~np.isfinite(points[image_id][:, 0]))]
        if missing:
            raise InputError(path, f"image {image_id}: landmark(s) {', '.join(missing)} missing")
        if len(scales[image_id]) > 1:
            raise InputError(path, f"image {image_id}: different 'scale' values {sorted(map(str, scales[image_id]))}")
        out[image_id] = GroundTruth(points[image_id], scales[image_id].pop())
    return out


# --------------------------------------------------------------------------- image stack


@dataclass(frozen=True)
class StackInfo:
    """Where and how the voxels of a MetaImage stack are stored.

    Attributes:
        path: the header file.
        shape: ``(Z, H, W)``: images, rows, columns.
        channels: components per pixel (3 for the CL-Detection RGB stack).
        dtype: pixel type, with byte order.
        compressed: zlib-compressed data.
        data_path: file holding the data (the header file itself for ``ElementDataFile = LOCAL``).
        offset: byte offset of the data in ``data_path``.
    """

    path: Path
    shape: tuple[int, int, int]
    channels: int
    dtype: np.dtype
    compressed: bool
    data_path: Path
    offset: int

    @property
    def slice_bytes(self) -> int:
        return self.shape[1] * self.shape[2] * self.channels * self.dtype.itemsize


def _header_fields(path: Path, max_lines: int = 100) -> tuple[dict[str, str], int]:
    """``Key = Value`` lines up to ``ElementDataFile`` and the byte offset just after it."""
    fields: dict[str, str] = {}
    with open(path, "rb") as f:
        for _ in range(max_lines):
            key, sep, value = f.readline(4096).decode("ascii", errors="replace").partition("=")
            if not sep:
                break
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                return fields, f.tell()
    raise InputError(path, "not a MetaImage file (no 'Key = Value' header ending in ElementDataFile)")


def read_metaimage_header(path: str | os.PathLike) -> StackInfo:
    """Parse the header of a 2-D or 3-D MetaImage (``.mha`` / ``.mhd``).

    Raises:
        InputError: not a MetaImage, or a feature this reader does not stream (``HeaderSize``,
            ``ElementDataFile = LIST`` or a file pattern, an unknown ``ElementType``).
    """
    path = Path(path)
    fields, end = _header_fields(path)
    try:
        ndims = int(fields.get("NDims", "0"))
        dims = [int(v) for v in fields.get("DimSize", "").split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
    except ValueError:
        raise InputError(path, "malformed NDims / DimSize / ElementNumberOfChannels in the MetaImage header") from None
    if ndims not in (2, 3) or len(dims) != ndims or min(dims) < 1 or channels < 1:
        raise InputError(path, f"expected a 2-D image or a 3-D stack, got NDims={ndims} DimSize={dims}")
    element = fields.get("ElementType", "")
    if element not in _MET_TYPES:
        raise InputError(path, f"unsupported ElementType {element!r}")
    if int(fields.get("HeaderSize", "0") or 0) != 0:
        raise InputError(path, "MetaImage HeaderSize is not supported; rewrite the stack with ITK/SimpleITK")
    msb = fields.get("BinaryDataByteOrderMSB", fields.get("ElementByteOrderMSB", "False")).lower() == "true"
    data_file = fields["ElementDataFile"]
    if data_file.upper() == "LIST" or "%" in data_file:
        raise InputError(path, f"ElementDataFile = {data_file} (several files) is not supported")
    local = data_file.upper() == "LOCAL"
    width, height = dims[0], dims[1]
    return StackInfo(
        path=path,
        shape=(dims[2] if ndims == 3 else 1, height, width),
        channels=channels,
        dtype=np.dtype(_MET_TYPES[element]).newbyteorder(">" if msb else "<"),
        compressed=fields.get("CompressedData", "False").lower() == "true",
        data_path=path if local else path.parent / data_file,
        offset=end if local else 0,
    )


def _inflate(path: Path, offset: int, chunk: int = 1 << 22) -> Iterator[bytes]:
    """Decompressed bytes of the zlib stream starting at ``offset`` of ``path``, in chunks."""
    inflater = zlib.decompressobj()
    with open(path, "rb") as f:
        f.seek(offset)
        while not inflater.eof and (data := f.read(chunk)):
            while data:
                yield inflater.decompress(data, chunk)
                data = inflater.unconsumed_tail
    yield inflater.flush()


def _blocks(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
    """Regroup a byte stream into blocks of exactly ``size`` bytes (a short tail is dropped)."""
    buf = bytearray()
    for c in chunks:
        buf += c
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]


def iter_stack(info: StackInfo) -> Iterator[np.ndarray]:
    """Yield the images of a stack one at a time: ``(H, W)`` or ``(H, W, C)`` arrays.

    Raises:
        InputError: the data is missing, truncated, or the compressed stream is corrupt.
    """
    path, (z, h, w) = info.path, info.shape
    shape = (h, w) if info.channels == 1 else (h, w, info.channels)
    if not info.data_path.is_file():
        raise InputError(path, f"data file {info.data_path} not found")
    if info.compressed:
        count = 0
        try:
            for block in _blocks(_inflate(info.data_path, info.offset), info.slice_bytes):
                if count == z:
                    break
                yield np.frombuffer(block, dtype=info.dtype).reshape(shape)
                count += 1
        except zlib.error as e:
            raise InputError(path, f"corrupt compressed image data ({e})") from None
        if count < z:
            raise InputError(path, f"compressed data is truncated: {count} of {z} images")
        return
    available = os.path.getsize(info.data_path) - info.offset
    if available < z * info.slice_bytes:
        raise InputError(path, f"image data is truncated: {available} bytes for {z} images of {info.slice_bytes}")
    data = np.memmap(info.data_path, dtype=info.dtype, mode="r", offset=info.offset, shape=(z, *shape))
    for i in range(z):
        yield np.array(data[i])


def crop_zero_padding(image: np.ndarray) -> np.ndarray:
    """Remove all-zero rows at the bottom and all-zero columns at the right.

    ``image`` is ``(H, W)`` or ``(H, W, C)``; the top-left origin, hence every ``(x, y)``, is kept.

    Raises:
        ValueError: the image is all zeros.
    """
    nonzero = image != 0 if image.ndim == 2 else np.any(image != 0, axis=2)
    rows, cols = np.flatnonzero(nonzero.any(axis=1)), np.flatnonzero(nonzero.any(axis=0))
    if rows.size == 0:
        raise ValueError("image is all zeros")
    return image[: rows[-1] + 1, : cols[-1] + 1]


def to_grey(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` -> ``(H, W)``: equal channels kept as is, else ITU-R 601 luminance."""
    if image.ndim == 2:
        return image
    first = image[..., 0]
    if image.shape[2] < 3 or (np.array_equal(first, image[..., 1]) and np.array_equal(first, image[..., 2])):
        return first
    grey = image[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.round(grey).astype(image.dtype) if image.dtype.kind in "ui" else grey.astype(image.dtype)


# --------------------------------------------------------------------------- preparation


def _find(root: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (root / name).is_file():
            return root / name
    raise InputError(root, f"no {what} found (looked for {', '.join(names)})")


def _png_ready(path: Path, image: np.ndarray) -> np.ndarray:
    """Grey ``(H, W)`` uint8/uint16 for PNG; other pixel types are refused."""
    grey = to_grey(image)
    if grey.dtype.newbyteorder("=") not in (np.uint8, np.uint16):
        raise InputError(path, f"pixel type {grey.dtype} cannot be stored as PNG; expected 8- or 16-bit unsigned")
    return grey.astype(grey.dtype.newbyteorder("="))


def _check_ids(truth: dict[int, GroundTruth], count: int, gt_path: Path, stack: Path) -> None:
    expected = set(range(1, count + 1))
    if set(truth) == expected:
        return
    problems = []
    if beyond := sorted(set(truth) - expected):
        problems.append(f"landmarks for images beyond the stack: {beyond[:5]}")
    if lacking := sorted(expected - set(truth)):
        problems.append(f"images without landmarks: {lacking[:5]}")
    raise InputError(gt_path, f"does not match the {count} images of {stack}: " + "; ".join(problems))


def extract_images(
    stack: Path, truth: dict[int, GroundTruth], gt_path: Path, lset: LandmarkSet, images_dir: Path
) -> list[dict[str, Any]]:
    """Write ``images_dir/NNN.png`` for every image of the stack -> datalist items.

    The PNGs appear in ``images_dir`` only once every image and point has passed its checks.
    """
    info = read_metaimage_header(stack)
    _check_ids(truth, info.shape[0], gt_path, stack)
    items = []
    with staged_folder(images_dir) as stage:
        for image_id, image in enumerate(iter_stack(info), start=1):
            try:
                grey = _png_ready(stack, crop_zero_padding(image))
            except ValueError as e:
                raise InputError(f"{stack} image {image_id}", str(e)) from None
            case, (height, width) = truth[image_id], grey.shape
            points = case.points[: len(lset)]
            require_inside(points, width, height, lset, f"{gt_path} (image {image_id})")
            name = f"{image_id:03d}"
            save_png(stage / f"{name}.png", grey)
            spacing = None if case.spacing is None else (case.spacing, case.spacing)
            image_path = images_dir.absolute() / f"{name}.png"
            items.append(make_item(image_path, points, spacing, name, width=width, height=height))
    return items


def prepare_cldetection2023(
    out: str | os.PathLike,
    root: str | os.PathLike | None = None,
    stack: str | os.PathLike | None = None,
    gt: str | os.PathLike | None = None,
    images_dir: str | os.PathLike | None = None,
    landmark_set: str | LandmarkSet = CLDETECTION2023,
    folds: int = 0,
    seed: int = 0,
) -> list[Path]:
    """Extract every image of the stack to ``images_dir/NNN.png`` (padding cropped) and write datalists.

    Args:
        out: datalist to write (section ``"training"``); with ``folds >= 2`` also
            ``<out stem>_fold{k}.json`` with ``"training"`` / ``"validation"`` sections.
        root: release folder, searched for the stack and ground truth when those are not given.
        images_dir: PNG folder; default ``<out folder>/<out stem>_images``.
        landmark_set: the first ``len(landmark_set)`` challenge landmarks are kept (38 for
            ``"cldetection2023"``, the ISBI 19 for ``"isbi2015"``).

    Returns:
        The datalist paths written.

    Raises:
        InputError: a missing or malformed file, an image without ground truth or ground truth
            without image, a point outside its (cropped) image.
    """
    lset = get_landmark_set(landmark_set)
    if len(lset) > CLDETECTION_NUM_LANDMARKS:
        raise ValueError(f"landmark set {lset.key!r} has {len(lset)} landmarks; CL-Detection 2023 has 38")
    if (stack is None or gt is None) and root is None:
        raise InputError(None, "give the release folder (--root), or the stack (--stack) and the ground truth (--gt)")
    stack = Path(stack) if stack is not None else _find(Path(root), STACK_NAMES, "image stack")
    gt_path = Path(gt) if gt is not None else _find(Path(root), GT_NAMES, "ground-truth JSON")
    out = Path(out)
    truth = read_cldetection_gt(gt_path)
    if folds > len(truth):
        raise InputError(gt_path, f"{folds} folds need at least {folds} images, found {len(truth)}")
    images_dir = Path(images_dir) if images_dir is not None else out.parent / f"{out.stem}_images"
    items = extract_images(stack, truth, gt_path, lset, images_dir)
    common = {
        "landmark_set": lset,
        "description": f"CL-Detection 2023 training set from {stack.name} and {gt_path.name}; "
        f"{len(lset)} of the 38 challenge landmarks; zero padding cropped",
        "source": "cldetection2023",
    }
    paths = [write_datalist(out, {"training": items}, **common)]
    for k, sections in enumerate(fold_sections(items, folds, seed) if folds else []):
        fold_path = out.with_name(f"{out.stem}_fold{k}.json")
        paths.append(write_datalist(fold_path, sections, **common, fold=k, folds=folds, seed=seed))
    return paths


