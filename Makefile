# Everything a newcomer needs: `make demo` and `make test`. Nothing is installed by hand.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EDGEQ  := $(VENV)/bin/edgeq
STAMP  := $(VENV)/.edgeq-installed
DEMO_RECIPE ?= recipes/minilm-int8-cpu.yaml

.PHONY: install demo test test-fast bench clean system-deps

install: $(STAMP)

# torch first, pinned to the local CPU build: an unpinned torch pulls several GB of CUDA packages.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[export,models,gguf,genai,qnn,test,ray]'
	touch $(STAMP)

demo: install
	$(EDGEQ) build $(DEMO_RECIPE)

system-deps:
	bash scripts/system-deps.sh

test: install system-deps
	$(PY) -m pytest

# On every change: unit tests and one tiny build per part of the pipeline, no real model, no qemu, no browser.
test-fast: install
	$(PY) -m pytest -m fast

bench: install
	$(PY) -m pip install --quiet -e '.[bench]'
	$(EDGEQ) build $(DEMO_RECIPE) > /dev/null
	$(PY) bench/compare_minilm.py
	$(EDGEQ) build recipes/tiny-llama-int4.yaml > /dev/null
	$(PY) bench/compare_lm.py
	$(EDGEQ) build recipes/smollm2-int4.yaml > /dev/null || test $$? -eq 3
	$(PY) bench/compare_lm_genai.py --build build/smollm2-int4

clean:
	rm -rf build .pytest_cache
