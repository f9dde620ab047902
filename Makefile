# Two commands for a fresh machine: `make demo` and `make test` (each creates the venv if missing).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)

.PHONY: demo lint test test-slow install freeze clean serve pretrained cross-validate bench-install bench-accuracy bench-robustness bench-speed check-gpu tune

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	$(PY) -m pip install -q -c constraints.txt -e ".[all]"
	@rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

LINT_PATHS := maht_net tests scripts bundle monailabel_app

lint: $(STAMP)
	$(PY) -m ruff check $(LINT_PATHS)

test: lint
	$(PY) -m pytest -q --durations=15

test-slow: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

freeze: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | grep -v -E '^(nvidia-|cuda-|triton)' > constraints.txt.new

clean:
	rm -rf runs dist .pytest_cache

# MONAI Label server for 3D Slicer / OHIF on a folder of cephalograms: make serve STUDIES=DIR
STUDIES ?=
HOST ?= 127.0.0.1
PORT ?= 8000
BUNDLE ?= bundle
SERVE_CONF ?=

serve: $(STAMP)
	@test -n "$(STUDIES)" || { echo "usage: make serve STUDIES=/path/to/cephalograms [PORT=8000] [HOST=127.0.0.1] [BUNDLE=bundle] [SERVE_CONF='--conf default_spacing 0.1']" >&2; exit 2; }
	@test -d "$(STUDIES)" || { echo "STUDIES=$(STUDIES) is not a folder" >&2; exit 2; }
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(PY) -m monailabel.main start_server --app monailabel_app \
		--studies "$(STUDIES)" --host $(HOST) --port $(PORT) --conf bundle $(BUNDLE) --conf zoo_source local $(SERVE_CONF)

# Benchmarks on the real films (../shared/data/hamedan-ceph; docs/benchmarks.md). Long: ~20 min per
# contender on the cpu track. The peer toolkit landmarker 0.4.1 caps scipy below 1.16 while this
# stack pins scipy 1.17.1, so it is installed without its dependency list (it runs on 1.17; the
# benchmark and tests/test_benchmark.py exercise it); hence a make target, not a pip extra.
TRACK ?= cpu
CONTENDERS ?=
BENCH_OUT ?= runs/bench-accuracy
bench-install: $(STAMP)
	$(PY) -m pip install -q --no-deps landmarker==0.4.1

bench-accuracy: bench-install
	$(PY) scripts/benchmark_accuracy.py --track $(TRACK) --out $(BENCH_OUT) $(if $(CONTENDERS),--contenders $(CONTENDERS))

bench-robustness: $(STAMP)
	$(PY) scripts/benchmark_robustness.py --checkpoint $(BENCH_OUT)/$(TRACK)/runs/fixed/maht_net/models/model.pt \
		--datalist $(BENCH_OUT)/$(TRACK)/hamedan.json

bench-speed: bench-install
	$(PY) scripts/benchmark_speed.py --checkpoint $(BENCH_OUT)/$(TRACK)/runs/fixed/maht_net/models/model.pt \
		--datalist $(BENCH_OUT)/$(TRACK)/hamedan.json

check-gpu: $(STAMP)  # the checks that need a CUDA GPU (docs/benchmarks.md, "On a GPU")
	PYTHON=$(PY) bash scripts/check_gpu.sh runs/gpu-check

# Hyper-parameter search over the training recipe on the development films (docs/tuning.md): an
# Optuna study in $(TUNE_OUT)/study.db; re-running the same command resumes it. Long: each trial
# trains for the track's budget (20 min on the cpu track), shared by its folds.
TRIALS ?= 20
FOLDS ?= 3
TUNE_OUT ?= runs/tune
tune: $(STAMP)
	$(PY) scripts/tune.py --track $(TRACK) --trials $(TRIALS) --folds $(FOLDS) --out $(TUNE_OUT)

# The shipped model (bundle/models/model.pt), retrained from the shared development films of both
# sites (docs in bundle/docs/README.md): the recipe's 5-fold cross-validation (its pooled per-site
# figures become eval_metrics; resumable, below), then the shipped model on every film: the first
# stage at about the steps of a fold's (40 epochs of 170 films: 27 of 250), the refinement stage
# 2000 steps (a fold's 600 are 0.02-0.05 mm behind), its uncertainty calibration carried over from
# the model it replaces (fitted on the validation films held out of that one; scripts/pretrained.py).
# Long: about 4.7 hours on 2 CPU cores (five folds of about 47 minutes, then 44 minutes for the shipped model).
PRETRAINED_OUT ?= runs/pretrained
pretrained: cross-validate
	$(PY) scripts/pretrained.py --out $(PRETRAINED_OUT)-all --all-films --epochs 27 --refine-minutes 90 \
		--refine-iterations 2000 --drop-disputed --figures $(CV_OUT)/summary.json --ship

# 5-fold cross-validation of the shipped recipe on the development films of both sites (docs/
# benchmarks.md): each fold trains both stages on 70 Hamedan + 100 ISBI films and scores its 20 + 30
# held-out films; then one pooled figure per site over all 249 films (Hamedan film 123 left out:
# its two annotations are 7 mm apart, --drop-disputed). Re-running skips the folds whose run
# finished. Long: about 50 minutes per fold on 2 cores (the refinement stage trains the shipped
# recipe's 2000 steps); `scripts/pretrained.py --restamp $(CV_OUT)/summary.json` quotes it for the shipped model.
CV_OUT ?= runs/cv2
cross-validate: $(STAMP)
	@for k in 0 1 2 3 4; do test -f $(CV_OUT)/fold$$k/summary.json || $(PY) scripts/pretrained.py --out $(CV_OUT)/fold$$k \
		--fold $$k --epochs 40 --refine-minutes 90 --refine-iterations 2000 --drop-disputed || exit 1; done
	$(PY) scripts/pretrained.py --out $(CV_OUT) --pool-folds $(foreach k,0 1 2 3 4,$(CV_OUT)/fold$(k))
