#!/usr/bin/env python
"""Write the standard splits of ``datalists/`` from the data sets as they are distributed.

- ``hamedan.json``: the 100 Hamedan films, truth = mean of the 2 annotators (LabelMe, every fix
  audited), nominal 0.127 mm/px, the benchmarks' seeded 70/10/20 split (``--seed``; the same
  split as ``two_sites.json``'s Hamedan films and ``scripts/benchmark_accuracy.py``);
- ``isbi2015_<split>_<truth>.json``: the ISBI 2015 challenge splits present under
  ``isbi2015-ceph/`` (``train``: 150 films; ``test1``/``test2`` when their films and annotations
  are there), truth ``mean`` of the two doctors and ``senior``, 0.1 mm/px.

Image paths are relative to the data root (the folder holding ``hamedan-ceph/`` and
``isbi2015-ceph/``), which each file names as ``data_root`` (relative to the repository), as in
``two_sites.json``. ``two_sites.json`` itself is written by ``scripts/pretrained.py`` (its
sha256 is recorded in the shipped model). Example::

    python scripts/make_datalists.py --data-root ../shared/data --out datalists
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from maht_net.datasets.isbi2015 import prepare_isbi2015  # noqa: E402
from maht_net.datasets.labelme import prepare_labelme  # noqa: E402
from maht_net.io.atomic import write_json_atomic  # noqa: E402
from maht_net.io.datalist import datalist_sections  # noqa: E402

HAMEDAN_SPACING_MM = 0.127
TRUTHS = ("mean", "senior")


def relative_to_root(datalist: Path, root: Path, out: Path, data_root: str) -> Path:
    """Copy ``datalist`` to ``out`` with its image paths relative to ``root`` and ``data_root`` set."""
    doc = json.loads(datalist.read_text())
    for section in datalist_sections(doc):
        for item in doc[section]:
            item["image"] = (datalist.parent / item["image"]).resolve().relative_to(root).as_posix()
    doc["data_root"] = data_root
    doc["description"] += f"; image paths relative to the data root ({data_root})"
    write_json_atomic(out, doc, indent=1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data", help="folder holding hamedan-ceph/ and isbi2015-ceph/")
    ap.add_argument("--out", type=Path, default=REPO / "datalists")
    ap.add_argument("--seed", type=int, default=0, help="seed of the Hamedan split")
    args = ap.parse_args(argv)
    root = args.data_root.resolve()
    hamedan, isbi = root / "hamedan-ceph", root / "isbi2015-ceph"
    for d in (hamedan, isbi):
        if not d.is_dir():
            raise SystemExit(f"{d}: not found (--data-root must hold hamedan-ceph/ and isbi2015-ceph/)")
    # the data root as the files name it: relative to the repository when it lies beside it
    data_root = os.path.relpath(root, REPO) if root.is_relative_to(REPO.parent) else str(root)
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ham, _ = prepare_labelme(
            hamedan / "images", [hamedan / "annotations" / "annotator1", hamedan / "annotations" / "annotator2"], tmp / "hamedan.json",
            spacing=HAMEDAN_SPACING_MM, val_fraction=0.1, test_fraction=0.2, seed=args.seed,
        )  # fmt: skip
        written.append(relative_to_root(ham, root, args.out / "hamedan.json", data_root))
        for truth in TRUTHS:
            for path in prepare_isbi2015(isbi, tmp / truth, truth=truth, folds=0):
                split = path.stem.removeprefix("isbi2015_")
                written.append(relative_to_root(path, root, args.out / f"isbi2015_{split}_{truth}.json", data_root))
    for path in written:
        doc = json.loads(path.read_text())
        print(f"wrote {path}: " + ", ".join(f"{s} {len(doc[s])}" for s in datalist_sections(doc)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
