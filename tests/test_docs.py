"""The code shown in the README and the docs runs as shown."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from limio_provider.testing import LimioEmulator
from tests.helpers import START, new_order, run_dag, states, xcom

ROOT = Path(__file__).parent.parent


def python_blocks(path: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / path).read_text(), flags=re.S)


@pytest.mark.usefixtures("airflow_db")
def test_readme_dag_previews_guards_and_submits(limio_emulator: LimioEmulator) -> None:
    namespace: dict[str, Any] = {}
    exec(python_blocks("README.md")[0], namespace)
    dag = namespace["renewals"]()
    run = run_dag(dag, logical_date=START)
    assert run.state == "success", states(run)
    (order,) = limio_emulator.orders.values()
    assert order["external_id"].startswith("airflow-") and order["order_type"] == "renew"
    assert xcom(run, "submit")[0]["id"] == order["id"]
    # preview_check previewed it once, before the one submit
    assert [r.path for r in limio_emulator.requests if r.method == "POST"][-2:] == ["/api/order/preview", "/api/order"]
    assert sum(r.path == "/api/order/preview" for r in limio_emulator.requests) == 1


def test_the_package_index_page_shows_the_readme_example_and_links_nowhere_relative() -> None:
    assert python_blocks("docs/package-index.md")[0] == python_blocks("README.md")[0]
    text = (ROOT / "docs/package-index.md").read_text()
    assert re.findall(r"\]\((?!https://)[^)]*\)", text) == []  # an index page has no repository to link into


def test_testing_page_fixture_example_runs(limio_emulator: LimioEmulator) -> None:
    namespace: dict[str, Any] = {}
    exec(python_blocks("docs/testing.md")[0], namespace)
    namespace["test_my_order"](limio_emulator)
    assert len(limio_emulator.orders) == 1


def test_models_page_examples_run() -> None:
    blocks = [block for block in python_blocks("docs/models.md") if "@dag" not in block]
    assert len(blocks) == 4
    for block in blocks:
        exec(block, {})


@pytest.mark.usefixtures("airflow_db")
def test_models_page_dag_reads_the_preview_back_into_a_model(limio_emulator: LimioEmulator) -> None:
    (block,) = [block for block in python_blocks("docs/models.md") if "@dag" in block]
    namespace: dict[str, Any] = {}
    exec(block, namespace)
    run = run_dag(namespace["preview_signup"]())
    assert run.state == "success", states(run)
    # The emulator's price of the offer. The tasks return "19.99"; str(): on Airflow 3 xcom() reads a string
    # that looks like a number back as the number (downstream tasks get the string).
    assert [str(value) for value in xcom(run, "pulled") + xcom(run, "passed")] == ["19.99", "19.99"]


def test_testing_page_script_runs_a_dag_in_a_fresh_airflow_home(tmp_path: Path) -> None:
    """The ``run_dag`` script, as a user runs it: its own process, a new ``AIRFLOW_HOME``, no DB yet."""
    (script,) = [block for block in python_blocks("docs/testing.md") if "run_dag(" in block]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW__DATABASE__"))}
    env.update(AIRFLOW_HOME=str(tmp_path / "home"), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "success {'submit': 'success'}" in done.stdout
    assert (tmp_path / "home" / "airflow.db").exists()  # migrated by run_dag


def test_testing_page_python_example_runs() -> None:
    (block,) = [block for block in python_blocks("docs/testing.md") if "add_fault" in block]
    saved = dict(os.environ)
    try:
        exec(block, {})
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.usefixtures("airflow_db")
def test_operators_page_examples_run(limio_emulator: LimioEmulator, tmp_path: Path) -> None:
    import importlib.util

    imports, mapping, sensor = python_blocks("docs/operators.md")
    exec(imports, {})
    # A DAG file of its own, as a user has it: serializing preview_check reads its source.
    (tmp_path / "mapped_renewals_doc.py").write_text(mapping)
    spec = importlib.util.spec_from_file_location("mapped_renewals_doc", tmp_path / "mapped_renewals_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run = run_dag(module.mapped_renewals())
    assert run.state == "success", states(run)
    assert sorted(o["forSubscription"]["id"] for o in limio_emulator.orders.values()) == ["sub-1", "sub-2", "sub-3"]
    exec(sensor, {})


def test_guard_rails_page_example_builds_the_batch_it_describes() -> None:
    from airflow.providers.common.compat.sdk import DAG

    (block,) = python_blocks("docs/guard-rails.md")
    scope: dict[str, Any] = {}
    with DAG("guard_rails_doc", schedule=None, start_date=START) as dag:
        exec(block, scope)
    batch = dag.get_task("submit_renewals")
    assert batch.max_orders == "{{ params.max_orders }}" and batch.max_total_due == 250_000
    assert batch.approval.asks(499, Decimal("19999")) is False and batch.approval.asks(500, Decimal(0)) is True
    assert {"max_orders", "max_total_due", "confirm_production"} <= set(batch.template_fields)


def test_production_page_duplicate_check_names_an_external_id_limio_holds_twice(
    limio_emulator: LimioEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    from limio_provider.hooks.limio import LimioHook

    hook = LimioHook()
    for external_id in ("EXT-ONCE", "EXT-TWICE", "EXT-TWICE"):  # the second EXT-TWICE: sent by another tool
        hook.submit_order(new_order(external_id))
    import textwrap

    (block,) = python_blocks("docs/production.md")
    exec(textwrap.dedent(block), {})  # indented: it sits in a list item
    assert capsys.readouterr().out.strip() == "['EXT-TWICE']"


def test_chaining_page_recomputes_a_batchs_external_ids_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The recipe gives what the OpenLineage facet says (``ExternalIdsDigest``), from a results file."""
    from limio_provider.exactly_once.identity import ExternalIdsDigest

    ids = ["renew-1", "renew-2", "renew-3"]
    monkeypatch.chdir(tmp_path)
    rows = [json.dumps({"external_id": i, "outcome": "submitted"}) + "\n" for i in reversed(ids)]
    (tmp_path / "2026-12-01.results.jsonl").write_text("".join(rows))
    (block,) = python_blocks("docs/chaining.md")
    exec(block, {})
    assert capsys.readouterr().out.strip() == ExternalIdsDigest(ids).hexdigest()


def test_every_python_block_in_the_docs_is_run_by_a_test() -> None:
    """The tests above run each block; a new block must get a test (and this count an update)."""
    counted = {
        path.relative_to(ROOT).as_posix(): len(python_blocks(str(path.relative_to(ROOT))))
        for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    }
    assert {path: n for path, n in counted.items() if n} == {
        "README.md": 1,
        "docs/chaining.md": 1,
        "docs/guard-rails.md": 1,
        "docs/models.md": 5,
        "docs/operators.md": 3,
        "docs/package-index.md": 1,  # the README's block (checked above)
        "docs/production.md": 1,
        "docs/testing.md": 3,
    }


def test_the_errors_page_names_every_exception() -> None:
    import limio_provider.exceptions as exceptions

    names = [name for name, value in vars(exceptions).items() if isinstance(value, type) and name.startswith("Limio")]
    text = (ROOT / "docs/errors-and-retries.md").read_text()
    assert len(names) >= 14
    assert [name for name in names if not re.search(rf"\b{name}\b", text)] == []


def test_the_connection_pages_examples_are_connections_the_hook_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ``export AIRFLOW_CONN_...='...'`` of docs/connection.md (JSON or URI) reads as a Limio connection with
    the extras the page says; the order link template among them."""
    import shlex

    from limio_provider.hooks.limio import LimioHook

    text = (ROOT / "docs/connection.md").read_text()
    exports = re.findall(r"^export (AIRFLOW_CONN_\w+)=('.*?')$", text, flags=re.S | re.M)
    assert len(exports) == 4, exports  # JSON: default and admin; URI: a tenant and the emulator
    links = []
    for name, quoted in exports:
        monkeypatch.setenv(name, shlex.split(quoted)[0])
        hook = LimioHook(name.removeprefix("AIRFLOW_CONN_").lower())
        assert hook.settings.client_id, name
        links.append(hook.order_url("order-1"))
    link = "https://crm.example.com/limio/orders/order-1"
    assert links == [link, link, link, None]  # the emulator's URI sets none: no link
