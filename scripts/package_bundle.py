"""Zip the bundle (configs, docs, the shipped weights, the maht-net wheel) for another site.

    python scripts/package_bundle.py --bundle bundle --out dist
    # at the other site, next to the public packages of constraints.txt:
    python -m monai.bundle download --name maht_net_cephalometric \
        --url file://$PWD/dist/maht_net_cephalometric_v0.4.2.zip --bundle_dir ./bundles
    pip install --no-deps bundles/maht_net_cephalometric/wheels/maht_net-*.whl
"""

from __future__ import annotations

import argparse

from maht_net.engine.bundle import BUNDLE_NAME, package_bundle


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="bundle", help="trained bundle folder (with models/model.pt)")
    parser.add_argument("--out", default="dist", help="output folder for the zip")
    parser.add_argument("--name", default=BUNDLE_NAME)
    parser.add_argument("--with-torchscript", action="store_true", help="also ship models/model.ts (export it first)")
    parser.add_argument("--no-wheel", action="store_true", help="leave out wheels/maht_net-*.whl (the site installs maht-net itself)")
    args = parser.parse_args()
    files = ("model.pt", "model.ts") if args.with_torchscript else ("model.pt",)
    print(f"wrote {package_bundle(args.bundle, args.out, args.name, files, wheel=not args.no_wheel)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
