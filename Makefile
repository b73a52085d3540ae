# Two entry points (see README): `make demo` runs a search, `make test` runs the tests.
# Both create or refresh .venv from pyproject.toml + requirements.lock first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# pytest workers for `make test`: a file each, the end-to-end files first (tests/conftest.py
# orders them; xdist's own reorder, by number of tests, would put them last)
TEST_WORKERS ?= 2
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-fast lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $(STAMP)

demo: venv
	$(PY) -m tune_losses.search --space search_spaces/quickstart.yaml

test: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	TUNE_LOSSES_REQUIRE_DATA=$${TUNE_LOSSES_REQUIRE_DATA:-0} $(PY) -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

bench: venv
	$(PY) benchmarks/bench_losses.py

clean:
	rm -rf ray_results mlruns mlruns.db mlartifacts .pytest_cache
