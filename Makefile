# Two commands for a fresh machine: `make demo` and `make test` (each creates the venv if missing).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)

.PHONY: demo test test-slow install freeze clean serve

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	$(PY) -m pip install -q -c constraints.txt -e ".[all]"
	@rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m pytest -q

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
