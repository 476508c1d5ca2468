# Two commands on a fresh machine: `make demo` and `make test`. Everything installs into .venv with uv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed

.PHONY: test lint package demo bench lock clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || { $(PY) -m pip --version >/dev/null 2>&1 || $(PY) -m ensurepip --default-pip >/dev/null; \
		$(PY) -m pip install --quiet --disable-pip-version-check uv; }
	@# Bytecode compiled once here: with PYTHONDONTWRITEBYTECODE set (as on CI) every Python process the tests
	@# start (Airflow CLI, task runners, ledger race workers) would otherwise compile Airflow again (~2x the import time).
	$(UV) pip install --quiet --compile-bytecode --python $(PY) -c constraints.txt -e '.[test]'
	touch $@

# The main job: the scheduled-renewals example DAG against a local Limio emulator, on SQLite, in .demo/.
demo: $(STAMP)
	$(PY) -m tools.demo --dags-folder dags_examples --home .demo

test: $(STAMP)
	$(PY) -m pytest

# Lint, format and types (settings in pyproject.toml). mypy also checks a DAG as a user writes one, so the
# operators' signatures type-check downstream.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy limio_provider dags_examples/limio_backfill_orders.py tests/typecheck/dag_with_every_operator.py

# The package as users get it: build sdist and wheel, check their metadata, install the wheel alone (no extras)
# into a fresh venv and import every public module there.
package: $(STAMP)
	rm -rf dist .venv-wheel
	$(UV) build --quiet -o dist
	$(VENV)/bin/twine check --strict dist/*
	$(PYTHON) -m venv --without-pip .venv-wheel
	$(UV) pip install --quiet --python .venv-wheel/bin/python -c constraints.txt dist/*.whl
	.venv-wheel/bin/python -I tools/check_wheel.py dist/*.whl

# Every script in benchmarks/ (not the package's __init__ nor campaign.py, the engine fault_campaign.py runs).
BENCHMARKS := $(filter-out benchmarks/__init__.py benchmarks/campaign.py,$(wildcard benchmarks/*.py))

bench: $(STAMP)
	@for b in $(BENCHMARKS); do echo "== $$b"; $(PY) $$b || exit 1; done

# Re-pin every dependency (Airflow 3.3 primary) after changing pyproject.toml or requirements.in.
lock: $(STAMP)
	$(UV) pip compile --quiet --python-version 3.11 pyproject.toml --extra test --extra s3 requirements.in -o constraints.txt

clean:
	rm -rf $(VENV) .venv-wheel dist .demo .pytest_cache
