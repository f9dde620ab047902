"""Landmark definitions and the coordinate convention: the one place for both.

Coordinate convention (used by every public function that takes or returns points):
    points are ``(x, y)`` in pixels of the original image, ``x`` = column, ``y`` = row,
    origin at the top-left pixel centre (pixel ``(0, 0)`` has centre ``(0.0, 0.0)``), arrays of
    shape ``(N, 2)``. A missing landmark is ``NaN`` in arrays and ``null`` in JSON.
    Physical position in mm: ``origin + (x, y) * (sx, sy)`` with spacing ``(sx, sy)`` in mm/px.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "COORDINATE_CONVENTION",
    "Landmark",
    "LandmarkSet",
    "ISBI2015",
    "CLDETECTION2023",
    "LANDMARK_SETS",
    "get_landmark_set",
]

COORDINATE_CONVENTION = (
    "(x, y) in pixels of the original image; x = column, y = row; origin at the centre of the "
    "top-left pixel; missing landmarks are NaN (arrays) or null (JSON)"
)


@dataclass(frozen=True)
class Landmark:
    """One anatomical landmark. ``index`` is 1-based, as in the challenge annotations."""

    index: int
    name: str
    abbreviation: str
    definition: str


@dataclass(frozen=True)
class LandmarkSet:
    """An ordered set of landmarks; channel ``k`` of every heatmap is ``landmarks[k]``."""

    key: str
    landmarks: tuple[Landmark, ...]

    def __len__(self) -> int:
        return len(self.landmarks)

    def __iter__(self):
        return iter(self.landmarks)

    def __getitem__(self, i: int) -> Landmark:
        return self.landmarks[i]

    @property
    def names(self) -> list[str]:
        return [lm.name for lm in self.landmarks]

    @property
    def abbreviations(self) -> list[str]:
        return [lm.abbreviation for lm in self.landmarks]

    def position_of(self, label: str) -> int:
        """0-based channel of a label given as name, abbreviation, ``"l<k>"``/``"L<k>"`` or ``"<k>"``.

        Raises:
            KeyError: the label does not name a landmark of this set.
        """
        key = label.strip()
        lowered = key.lower().replace(" ", "_").replace("-", "_")
        for i, lm in enumerate(self.landmarks):
            if lowered == lm.name or key == lm.abbreviation or lowered == lm.abbreviation.lower():
                return i
        digits = lowered[1:] if lowered[:1] == "l" else lowered
        if digits.isdigit() and 1 <= int(digits) <= len(self.landmarks):
            return int(digits) - 1
        raise KeyError(f"unknown landmark label {label!r} for landmark set {self.key!r}")


def _set(key: str, rows: list[tuple[str, str, str]]) -> LandmarkSet:
    return LandmarkSet(key, tuple(Landmark(i + 1, *row) for i, row in enumerate(rows)))


_ISBI_ROWS = [
    ("sella", "S", "centre of the sella turcica"),
    ("nasion", "N", "most anterior point of the frontonasal suture"),
    ("orbitale", "Or", "lowest point on the inferior margin of the orbit"),
    ("porion", "Po", "uppermost point of the external auditory meatus"),
    ("subspinale", "A", "deepest point of the anterior maxillary concavity between ANS and prosthion"),
    ("supramentale", "B", "deepest point of the anterior mandibular concavity between infradentale and pogonion"),
    ("pogonion", "Pog", "most anterior point of the bony chin"),
    ("menton", "Me", "lowest point of the mandibular symphysis"),
    ("gnathion", "Gn", "point on the symphysis outline midway between pogonion and menton"),
    ("gonion", "Go", "most posterior-inferior point on the angle of the mandible"),
    ("lower_incisal_incision", "LIT", "incisal tip of the mandibular central incisor"),
    ("upper_incisal_incision", "UIT", "incisal tip of the maxillary central incisor"),
    ("upper_lip", "UL", "most anterior point of the upper lip (labrale superius)"),
    ("lower_lip", "LL", "most anterior point of the lower lip (labrale inferius)"),
    ("subnasale", "Sn", "junction of the columella and the upper lip"),
    ("soft_tissue_pogonion", "Pog'", "most anterior point of the soft-tissue chin"),
    ("posterior_nasal_spine", "PNS", "tip of the posterior nasal spine of the palatine bone"),
    ("anterior_nasal_spine", "ANS", "tip of the anterior nasal spine of the maxilla"),
    ("articulare", "Ar", "intersection of the posterior border of the ramus with the inferior border of the cranial base"),
]

ISBI2015 = _set("isbi2015", _ISBI_ROWS)
"""The 19 landmarks of the ISBI 2015 cephalometric challenge, in challenge order."""

CLDETECTION2023 = _set(
    "cldetection2023",
    _ISBI_ROWS
    + [
        ("symphysis_center", "D", "centre of the mandibular symphysis"),
        ("upper_incisor_apex", "U1A", "root apex of the maxillary central incisor"),
        ("lower_incisor_apex", "L1A", "root apex of the mandibular central incisor"),
        ("columella", "Cm", "most anterior point of the columella of the nose"),
        ("pterygomaxillary_fissure", "Ptm", "lowest point of the pterygomaxillary fissure"),
        ("condylion", "Co", "most superior-posterior point of the mandibular condyle"),
        ("pronasale", "Prn", "most anterior point of the nose tip"),
        ("basion", "Ba", "most anterior-inferior point of the foramen magnum"),
        ("pt_point", "PT", "junction of the pterygomaxillary fissure and the foramen rotundum"),
        ("bolton_point", "Bo", "highest point of the retrocondylar notch of the occipital bone"),
        ("upper_lip_junction", "UL'", "mucocutaneous junction of the upper lip"),
        ("lower_lip_junction", "LL'", "mucocutaneous junction of the lower lip"),
        ("soft_tissue_gnathion", "Gn'", "soft-tissue point over gnathion"),
        ("soft_tissue_menton", "Me'", "lowest point of the soft-tissue chin"),
        ("glabella", "G", "most prominent point of the frontal bone above the nasal root"),
        ("soft_tissue_nasion", "N'", "deepest point of the soft-tissue concavity over nasion"),
        ("cervical_point", "C", "deepest point of the soft-tissue contour between chin and neck"),
        ("upper_first_molar", "UMo", "mesial contact point of the maxillary first molar"),
        ("lower_first_molar", "LMo", "mesial contact point of the mandibular first molar"),
    ],
)
"""The 38 landmarks of the CL-detection 2023 challenge (ISBI 2015's 19 first; order as in the
organisers' release)."""

LANDMARK_SETS: dict[str, LandmarkSet] = {s.key: s for s in (ISBI2015, CLDETECTION2023)}


def get_landmark_set(key: str | LandmarkSet) -> LandmarkSet:
    """Look a landmark set up by key (``"isbi2015"``, ``"cldetection2023"``)."""
    if isinstance(key, LandmarkSet):
        return key
    try:
        return LANDMARK_SETS[key]
    except KeyError:
        raise ValueError(f"unknown landmark set {key!r}; known: {sorted(LANDMARK_SETS)}") from None
