# The two commands a new user runs: `make run` and `make test`. Each installs what it needs when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test install lint format bench clean

run: install
	$(BIN)/python -m devstack.run

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

install: $(VENV)/.installed node_modules/.installed

# Reinstalled only when a dependency list changes, so a second `make` is quick.
$(VENV)/.installed: pyproject.toml collector/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]" -e ./collector
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	DEBUG=true $(BIN)/mypy deployments portal collector/src/collector scoring tributary_sdk

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Each prints its table; results are recorded in bench/RESULTS.md. The scoring benchmark needs wrk (apt-get install wrk).
bench: install
	$(BIN)/python bench/collector_bench.py
	$(BIN)/python bench/portal_bench.py
	$(BIN)/python bench/scoring_bench.py

clean:
	rm -rf $(VENV) node_modules var
