# Two commands on a fresh machine: `make demo` and `make test`. Everything installs into .venv with uv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed

.PHONY: test test-ui test-deploy test-compat lint docs package demo bench lock clean

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
	$(PY) -m pytest -m "not ui and not deploy"

# Airflow's UI in a headless Chromium (tests/ui): the Limio connection form and its Test button, and the task's
# "Limio order" link, against a real `airflow api-server` and the emulator. The browser is the OS's chromium and
# chromium-driver, installed by .ci/install-browser (apt-get, as root) or named in a clear error. Screenshots and
# the Airflow logs in artifacts/ui/. Measured on 2 cores: 51-58 s warm (about 25 s of it starting Airflow: db
# migrate, then the api-server beside one `airflow dags test`); about 20 s more on a first run, for apt-get.
test-ui: $(STAMP)
	.ci/install-browser
	$(PY) -m pytest -m ui tests/ui

# A real single-machine deployment (tests/deploy), driven through the REST API: the Limio emulator in the
# test process; a scratch home on SQLite, `airflow db migrate`, then api-server, scheduler (LocalExecutor),
# dag-processor and triggerer as separate processes. Scenarios: a mapped submit (XComs, the extra link), a
# deferrable wait through the triggerer, a task process SIGKILLed mid-submit (the retry adopts the order), an
# outcome-unknown failure cleared after the documented decision Variable, and the example DAGs; every
# external_id exactly once in the emulator. Then on the CeleryExecutor: PostgreSQL and Redis from the OS packages
# (.ci/install-deploy-services, apt-get as root), each a fresh instance on a free port started by the tests, two
# Celery workers; the mapped submit and the deferrable wait again, and a batch split across the two workers
# sharing one ledger, one worker SIGKILLed mid-batch
# (the task heartbeat timeout is 30 s there, not 300). Logs in artifacts/deploy/. Measured on 2 cores: 3 min 33 s to
# 3 min 44 s warm, about 100 s of it the LocalExecutor part and about 2 min the Celery one (30 s of that waiting for
# the heartbeat timeout); a first run adds the apt-get install and the deploy extra's pip install.
DEPLOY_STAMP := $(VENV)/.installed-deploy
$(DEPLOY_STAMP): $(STAMP)
	$(UV) pip install --quiet --compile-bytecode --python $(PY) -c constraints.txt -e '.[test,deploy]'
	touch $@

# The other claimed lines under a real triggerer, each from its compat venv. Airflow 3.1: the LocalExecutor scenarios
# that go through the triggerer and the REST API: mapped submits, a deferrable submit-and-wait (connection from the
# environment), a deferrable sensor and a submit-and-wait on a connection stored in the metadata database, the
# triggerer healthy after them (3.1's runner channel is not thread-safe: see limio_provider/triggers/limio.py).
# Airflow 2.11 (tests/deploy/test_airflow_2.py): scheduler (SequentialExecutor) and triggerer as processes, driven
# through the CLI, the same deferrable waits on both kinds of connection. Measured on 2 cores: 41 s and 26 s warm.
DEPLOY_31_TESTS := tests/deploy/test_local_executor.py -k "mapped or deferrable or approved"

test-deploy: $(DEPLOY_STAMP) .venv-compat-airflow-3.1/.installed .venv-compat-airflow-2.11/.installed
	.ci/install-deploy-services
	$(PY) -m pytest -m deploy tests/deploy
	@echo "== Airflow $$(.venv-compat-airflow-3.1/bin/python -c 'import airflow; print(airflow.__version__)'): the triggerer scenarios"
	.venv-compat-airflow-3.1/bin/python -m pytest -m deploy -p no:cacheprovider $(DEPLOY_31_TESTS)
	@echo "== Airflow $$(.venv-compat-airflow-2.11/bin/python -c 'import airflow; print(airflow.__version__)'): the triggerer scenarios"
	.venv-compat-airflow-2.11/bin/python -m pytest -m deploy -p no:cacheprovider tests/deploy/test_airflow_2.py

# The other supported Airflow lines, each in its own venv from its own compiled constraints (compat/*.txt), and
# the declared floors (lowest-direct): imports, provider registration through Airflow's CLI, the example DAGs
# through `airflow dags test`, the hook, model and emulator tests and the exactly-once tests that apply (tests
# of 3.3-only behaviour skip themselves, saying why). Measured on 2 cores in a fresh clone: the tests take
# 118 s on 2.11 and 253 s on 3.1 (tests/conftest.py builds 3.1's in-process Execution API app once), plus
# building the three venvs.
COMPAT_LINES := airflow-2.11 airflow-3.1
COMPAT_TESTS := tests/test_get_provider_info.py tests/tools/test_demo.py tests/hooks tests/models tests/triggers tests/sensors tests/assets \
	tests/testing/test_emulator.py tests/testing/test_emulator_faults.py tests/testing/test_emulator_objects.py \
	tests/operators/test_orders.py tests/operators/test_exactly_once.py tests/operators/test_ledger_submit.py \
	tests/operators/test_export.py tests/operators/test_reconcile.py tests/operators/test_batch_guards.py \
	tests/test_docs.py::test_testing_page_script_runs_a_dag_in_a_fresh_airflow_home
FLOOR_TESTS := tests/test_get_provider_info.py tests/hooks tests/models

.venv-compat-%/.installed: compat/%.txt pyproject.toml $(STAMP)
	rm -rf .venv-compat-$*
	$(PYTHON) -m venv --without-pip .venv-compat-$*
	$(UV) pip install --quiet --compile-bytecode --python .venv-compat-$*/bin/python -c compat/$*.txt -e . pytest hypothesis
	touch $@

test-compat: $(foreach line,$(COMPAT_LINES) lowest-direct,.venv-compat-$(line)/.installed)
	@for line in $(COMPAT_LINES); do \
		echo "== $$line: Airflow $$(.venv-compat-$$line/bin/python -c 'import airflow; print(airflow.__version__)')"; \
		.venv-compat-$$line/bin/python -m pytest -q -p no:cacheprovider $(COMPAT_TESTS) || exit 1; \
	done
	@echo "== the declared floors (lowest-direct): $$(grep -E '^(apache-airflow|apache-airflow-providers-common-compat|pydantic|requests)==' compat/lowest-direct.txt | tr '\n' ' ')"
	.venv-compat-lowest-direct/bin/python -m pytest -q -p no:cacheprovider $(FLOOR_TESTS)

# Lint, format and types (settings in pyproject.toml; ruff's C901 holds every provider function outside testing/
# to cyclomatic complexity 15). mypy also checks a DAG as a user writes one, so the operators' signatures
# type-check downstream.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy limio_provider dags_examples/limio_backfill_orders.py tests/typecheck/dag_with_every_operator.py

# The docs site (mkdocs.yml): docs/ and an API reference generated from the docstrings, built into site/.
# Strict: a warning (a broken link or anchor, a docstring griffe cannot read, a cross-reference to nothing)
# fails it. Not -q: that hides the warnings and passes. Measured on 2 cores: 4.3 s.
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

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
	$(UV) pip compile --quiet --python-version 3.11 pyproject.toml --extra test --extra s3 --extra deploy requirements.in -o constraints.txt
	for line in $(COMPAT_LINES); do \
		$(UV) pip compile --quiet --python-version 3.11 pyproject.toml compat/$$line.in -o compat/$$line.txt || exit 1; \
	done
	$(UV) pip compile --quiet --python-version 3.11 --resolution lowest-direct pyproject.toml compat/lowest-direct.in \
		-o compat/lowest-direct.txt

clean:
	rm -rf $(VENV) .venv-wheel .venv-compat-* dist .demo .pytest_cache site
