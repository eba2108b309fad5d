# Two commands a user needs: `make demo` (the main job) and `make test`.
# Each creates (or reuses) a local virtual environment in .venv.
#
# `make test` is every gate CI enforces (.ci/run calls it), in order:
#   lint       ruff on the sources, tests and benchmarks
#   typecheck  mypy --strict on src/ (configuration in pyproject.toml)
#   unit       the whole suite (unit, ZEO, property tests)
#   pure       the unit tests again (less those PURE_SKIP names) with the
#              pure-Python twins forced
#              (PCLASSES_PURE_PYTHON=1): what a user without a compiler gets
#              (the property tests and ZODB's own suite, which exercise the
#              same engine and the registry, run once, in unit)
#   wheel      builds the wheel, installs it into a fresh virtual environment
#              and runs a smoke subset from a directory where src/ is not
#              importable
PYTHON ?= python3
# test processes (pytest-xdist): one per core of the 2-core CI machine
JOBS ?= 2
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WHEELHOUSE := build/wheelhouse
SMOKE := build/smoke
SMOKE_TESTS := tests/test_installed.py tests/test_cli.py tests/test_layout.py tests/test_errors.py

test-deps:
	sh scripts/install-test-deps.sh || echo 'make: chromium could not be installed; the browser tests will be skipped'

.PHONY: test-deps demo test lint typecheck unit pure wheel bench clean

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip 'setuptools>=77'
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m pclasses.demo var $(if $(TARGET),--target '$(TARGET)')

test: lint typecheck unit pure wheel

lint: $(STAMP)
	$(BIN)/ruff check --quiet src tests proptests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) test-deps
	$(BIN)/python -m pytest -q -n $(JOBS)

# Left out of the pure run: ZODB's own suite, and tests of storage servers,
# SQL stores and report rendering, whose records go through the same engine
# paths as the FileStorage tests that stay (about 40% of the run's time).
PURE_SKIP := test_zodb_dropin test_relstorage test_relstorage_blocks test_refs_storages \
	test_sql_postgres test_sql_store test_sql_model test_gc_live test_zeo_storage \
	test_zeo_scan test_demo_targets test_report_browser test_report_plots test_pgserver \
	test_bench_scale

pure: $(STAMP)
	PCLASSES_PURE_PYTHON=1 $(BIN)/python -m pytest -q -n $(JOBS) tests \
	  $(foreach t,$(PURE_SKIP),--ignore=tests/$(t).py)

wheel: $(STAMP)
	rm -rf $(WHEELHOUSE) $(SMOKE)
	$(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir $(WHEELHOUSE) .
	$(BIN)/python -m venv $(SMOKE)/venv
	$(SMOKE)/venv/bin/python -m pip install --quiet "$$(ls $(WHEELHOUSE)/pclasses-*.whl)[test]"
	mkdir -p $(SMOKE)/tests
	cp tests/conftest.py tests/netutil.py tests/oracles.py $(SMOKE_TESTS) $(SMOKE)/tests/
	cp -r design pyproject.toml $(SMOKE)/
	cd $(SMOKE) && PCLASSES_TEST_INSTALLED=1 venv/bin/python -m pytest -q -p no:cacheprovider tests

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) var build
