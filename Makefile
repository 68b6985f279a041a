# Two commands do all the set-up on a fresh machine with only python3: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: demo test lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	touch $(DEMO_STAMP)

# The whole stack from examples/demo.yaml; Ctrl-C stops it.
demo: $(DEMO_STAMP)
	$(BIN)/meshgate up -f examples/demo.yaml

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/policy.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

# Soak test (not CI, 10 minutes by default): steady traffic through the demo stack (`meshgate up`), then
# RSS and fd growth of every process; exits 1 on growth or unexpected answers. Shorter: SOAK_ARGS="--duration 180".
.PHONY: soak
soak: $(STAMP)
	$(BIN)/python bench/soak.py $(SOAK_ARGS)
