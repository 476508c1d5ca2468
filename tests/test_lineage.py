"""OpenLineage events of the submit operators, as Airflow's OpenLineage provider emits them: a DAG runs in a
fresh process (the provider reads its configuration once per process) against the emulator, and the events are
captured through OpenLineage's own file transport, then read back and asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from limio_provider.exactly_once.identity import ExternalIdsDigest
from tests.helpers import new_order, tail

if TYPE_CHECKING:
    from limio_provider.testing.emulator import LimioEmulator

pytest.importorskip("airflow.providers.openlineage", reason="the test extra installs Airflow's OpenLineage provider")

DAG = """
import json, sys
from datetime import datetime, timezone

from airflow.sdk import DAG, Asset

from limio_provider.operators.batch import LimioSubmitOrdersOperator
from limio_provider.operators.orders import LimioSubmitOrderOperator
from limio_provider.testing.dags import run_dag

orders, orders_file, ledger = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
with DAG("lineage", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc)) as dag:
    LimioSubmitOrderOperator(
        task_id="submit",
        order=orders["single"],
        inlets=[Asset("s3://billing/reconciled/2026-12-01.csv")],
        preview_check=lambda preview: True,
    )
    LimioSubmitOrdersOperator(task_id="batch", orders_path=orders_file, ledger_path=ledger)
    LimioSubmitOrderOperator(task_id="refused", order=orders["refused"], retries=0)
run_dag(dag, migrate=False, logical_date=datetime(2026, 12, 1, tzinfo=timezone.utc))
"""


@pytest.fixture
def lineage_events(
    airflow_db: None, limio_emulator: LimioEmulator, tmp_path: Path
) -> tuple[dict[tuple[str, str], dict[str, Any]], dict[str, Any]]:
    """Run the DAG above with the file transport; its events by (task, event type), and what it was given."""
    batch = [new_order(f"ol-batch-{n}") for n in range(3)]
    orders = {
        "single": new_order("ol-single"),
        # An offer the tenant does not sell: Limio refuses it (400), nothing is created.
        "refused": new_order("ol-refused", orderItems=[{"offer": {"id": "offer-nobody-sells"}, "quantity": 1}]),
    }
    orders_file = tmp_path / "orders.jsonl"
    orders_file.write_text("".join(json.dumps(order) + "\n" for order in batch))
    events_file, script = tmp_path / "events.jsonl", tmp_path / "lineage_dag.py"
    script.write_text(DAG)
    transport = {"type": "file", "log_file_path": str(events_file), "append": True}
    env = {**os.environ, "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(transport), "PYTHONPATH": os.getcwd()}
    argv = [sys.executable, str(script), json.dumps(orders), orders_file.as_uri(), (tmp_path / "ledger").as_uri()]
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        subprocess.run(argv, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=300, check=False)
    assert events_file.exists(), f"no OpenLineage event was written:\n{tail(log)}"
    events: dict[tuple[str, str], dict[str, Any]] = {}
    for line in events_file.read_text().splitlines():
        event = json.loads(line)
        task = event["job"]["name"].rpartition(".")[2]
        if event["job"]["name"].startswith("lineage."):
            events[(task, event["eventType"])] = event
    return events, {"batch": batch, "orders": orders, "orders_file": orders_file, "log": log}


def _names(datasets: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(dataset["namespace"], dataset["name"]) for dataset in datasets}


def test_submit_batch_and_failure_emit_their_lineage(
    lineage_events: tuple[dict[tuple[str, str], dict[str, Any]], dict[str, Any]], limio_emulator: LimioEmulator
) -> None:
    events, given = lineage_events
    orders = (f"limio://localhost:{limio_emulator.url.rsplit(':', 1)[1]}", "orders")
    assert {("submit", "COMPLETE"), ("batch", "COMPLETE"), ("refused", "FAIL")} <= set(events), (
        sorted(events),
        tail(given["log"]),
    )

    # A single order: the task's inlet in, the tenant's orders out; one order submitted, previewed first.
    submit = events[("submit", "COMPLETE")]
    assert _names(submit["inputs"]) == {("s3://billing", "reconciled/2026-12-01.csv")}
    assert _names(submit["outputs"]) == {orders}
    facet = submit["run"]["facets"]["limio"]
    assert facet["orders"] == 1 and facet["counts"] == {"submitted": 1}, facet
    assert facet["externalIdsDigest"] == ExternalIdsDigest(["ol-single"]).hexdigest()
    assert facet["totalDue"] == "19.99" and "error" not in facet, facet
    start = events[("submit", "START")]
    assert _names(start["outputs"]) == {orders} and "limio" not in start["run"]["facets"]

    # The batch: its orders file in, the tenant's orders and its results file out; three submitted.
    batch = events[("batch", "COMPLETE")]
    orders_file = Path(given["orders_file"])
    assert _names(batch["inputs"]) == {("file", str(orders_file))}
    assert _names(batch["outputs"]) == {orders, ("file", str(orders_file.with_suffix(".results.jsonl")))}
    facet = batch["run"]["facets"]["limio"]
    assert facet["orders"] == 3 and facet["counts"] == {"submitted": 3}, facet
    ids = [order["external_id"] for order in given["batch"]]
    assert facet["externalIdsDigest"] == ExternalIdsDigest(reversed(ids)).hexdigest()
    assert facet["resultsPath"] == orders_file.with_suffix(".results.jsonl").as_uri()

    # The refused order: the failure's class and message, the external id it was for; nothing in Limio.
    failed = events[("refused", "FAIL")]
    facet = failed["run"]["facets"]["limio"]
    assert facet["error"] == "LimioOrderRejectedError" and facet["orders"] == 1, facet
    assert facet["externalIdsDigest"] == ExternalIdsDigest(["ol-refused"]).hexdigest()
    assert "offer-nobody-sells" in failed["run"]["facets"]["errorMessage"]["message"]
    assert limio_emulator.orders_with_external_id("ol-refused") == []
    text = json.dumps(list(events.values()))
    assert limio_emulator.client_secret not in text and not any(token in text for token in limio_emulator.valid_tokens)


def test_digest_does_not_depend_on_order() -> None:
    ids = [f"renew-{n}" for n in range(50)]
    assert ExternalIdsDigest(ids).hexdigest() == ExternalIdsDigest(reversed(ids)).hexdigest()
    assert ExternalIdsDigest(ids).hexdigest() != ExternalIdsDigest(ids[:-1]).hexdigest()
    assert len(ExternalIdsDigest().hexdigest()) == 64


def test_the_operators_import_nothing_of_openlineage() -> None:
    """Installed or not, OpenLineage is imported only when its provider asks an operator for facets (Airflow
    itself reads every provider's get_provider_info: that is not ours)."""
    code = (
        "import sys, airflow.sdk; before = set(sys.modules)\n"
        "import limio_provider.operators.batch, limio_provider.operators.orders, limio_provider.assets.limio\n"
        "print(sorted(m for m in set(sys.modules) - before if 'openlineage' in m))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stdout
