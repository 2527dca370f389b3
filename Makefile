# Each target sets itself up: a virtual environment in .venv with acpsl and its extras.
# TORCH pins the CPU wheel this project is built and tested with; override it elsewhere,
# e.g. `make test TORCH=torch` on a machine with a CUDA build you want.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test,dev,digits,net,ray,tensorboard]'
	# compile the cut's Numba kernels now (cached beside the package), so that the first
	# scheme call of every later command loads them in well under a second
	$(BIN)/python -m acpsl.warmup
	touch $@

demo: $(BIN)/.installed  ## the main job: a short real split-learning run, no download
	$(BIN)/acpsl demo --overwrite  # replaces runs/demo of an earlier demo, saying so

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy

test: lint  ## lint, types, and the whole test suite (CPU, minutes)
	$(BIN)/pytest -q

bench: $(BIN)/.installed  ## benchmarks: each prints ratios measured in one run
	@failed=""; for b in benchmarks/bench_*.py; do echo "== $$b"; \
		$(BIN)/python $$b || failed="$$failed $$b"; done; \
	if [ -n "$$failed" ]; then echo "goals missed:$$failed"; exit 1; fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
