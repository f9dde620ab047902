"""`make demo`: the main job on the embedded phantom data, end to end, with pictures.

1. train MAHT-Net with the bundle (phantom data generated on first use), then its refinement stage,
2. evaluate the best checkpoint (both stages) on the held-out phantom test split (MRE/SDR table),
3. predict a held-out image and draw predicted vs true landmarks,
4. audit the datalist (mean-shape overlay).

Every step is the command a user would type; they are printed before they run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str]) -> None:
    print("\n$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # not the repository's bundle/: its models/model.pt is the shipped real-film model, which a
    # phantom run must not replace
    parser.add_argument("--bundle", default=str(REPO / "runs" / "demo"), help="bundle root (models/, eval/, data/ go here)")
    parser.add_argument("--minutes", type=float, default=10.0, help="training wall-clock budget")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--refine-minutes", type=float, default=3.0, help="the refinement stage's training budget (0: none)")
    args = parser.parse_args()
    bundle = Path(args.bundle).absolute()
    configs = REPO / "bundle" / "configs"
    py = sys.executable
    t0 = time.perf_counter()
    run([py, "-m", "monai.bundle", "run", "training", "--config_file", str(configs / "train.json"), "--bundle_root", str(bundle),
         "--epochs", str(args.epochs), "--time_limit_minutes", str(args.minutes), "--progress_bar", "False", "--resume", "False",
         "--refine_stage", str(args.refine_minutes > 0), "--refine_minutes", str(args.refine_minutes)])
    run([py, "-m", "monai.bundle", "run", "evaluating", "--config_file", str([str(configs / "train.json"), str(configs / "evaluate.json")]),
         "--bundle_root", str(bundle)])
    datalist = bundle / "data" / "phantom" / "datalist.json"
    test_item = json.loads(datalist.read_text())["test"][0]
    image = (datalist.parent / test_item["image"]).resolve()
    out = bundle / "eval" / "demo"
    run([py, "-m", "maht_net.cli", "infer", "--bundle", str(bundle), "--input", str(image), "--out", str(out),
         "--spacing", str(test_item["spacing"][0]), str(test_item["spacing"][1])])

    import numpy as np

    from maht_net.io.image import load_xray
    from maht_net.io.predictions import read_prediction
    from maht_net.visualize import save_overlay

    pred = read_prediction(out / f"{test_item['id']}_landmarks.json")
    truth = np.array([[np.nan, np.nan] if p is None else p for p in test_item["landmarks"]], dtype=float)
    err = np.linalg.norm((pred["points"] - truth) * np.array(test_item["spacing"]), axis=1)
    picture = save_overlay(load_xray(image).image, out / f"{test_item['id']}_pred_vs_truth.png", points=pred["points"], truth=truth,
                           title=f"{test_item['id']} (held out): MRE {np.nanmean(err):.2f} mm; red + prediction, green truth")
    run([py, "-m", "maht_net.cli", "audit", str(datalist), "--out-dir", str(bundle / "eval" / "audit")])
    print(f"\ndemo finished in {(time.perf_counter() - t0) / 60:.1f} min")
    print(f"  metrics:  {bundle / 'eval' / 'metrics.json'}")
    print(f"  overlay:  {picture}")
    print(f"  curves:   tensorboard --logdir {bundle / 'eval'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
