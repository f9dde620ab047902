#!/usr/bin/env bash
# The checks that need a CUDA GPU (CI has none; run them where one is lent): the shipped model end
# to end on the GPU against the CPU (largest landmark distance, latency, MRE per site) and its
# network's GPU figures (scripts/benchmark_speed.py --device-only), channels-last against contiguous
# weights (--memory-formats), then the tests whose code
# paths change on a GPU (the bundle's training with AMP, evaluation and inference of both stages,
# the command line's default device).
#
#   bash scripts/check_gpu.sh [OUT_DIR]        # make check-gpu; logs in OUT_DIR (runs/gpu-check)
#
# PYTHON (default python3), DATALIST (default datalists/two_sites.json: its test section, so the
# development films must be there) and PYTEST_ARGS (e.g. "-n 3 -k 'not mlflow'") adjust it.
set -o pipefail
out=${1:-runs/gpu-check}
py=${PYTHON:-python3}
mkdir -p "$out"
"$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU here: nothing to check')" || exit 1
"$py" scripts/benchmark_speed.py --checkpoint bundle/models/model.pt --datalist "${DATALIST:-datalists/two_sites.json}" \
    --images 50 --repeats 3 --device cuda --device-only --json "$out/speed.json" 2>&1 | tee "$out/speed.log" || exit 1
# channels-last (the networks' build) against contiguous weights on the GPU, paired: CPU-measured only so far
"$py" scripts/benchmark_speed.py --checkpoint bundle/models/model.pt --memory-formats --device cuda --repeats 20 \
    --json "$out/memory_formats.json" 2>&1 | tee "$out/memory_formats.log" || exit 1
eval "\"$py\" -m pytest -q -p no:cacheprovider tests/test_bundle.py tests/test_refine.py tests/test_shipped_model.py ${PYTEST_ARGS:-}" 2>&1 | tee "$out/pytest.log"
