"""The reconciliation of what was meant to be ordered with what Limio holds, run with dag.test() against the
emulator: a batch's results file, an orders file, a list of ids; missing, failed, duplicate and unexpected orders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG

from limio_provider.hooks.limio import LimioHook
from limio_provider.operators.batch import LimioSubmitOrdersOperator
from limio_provider.operators.reconcile import LimioReconcileOrdersOperator
from limio_provider.testing import LimioEmulator
from tests.helpers import START, in_use, new_order, run_dag, states, xcom

pytestmark = pytest.mark.usefixtures("airflow_db")
DECLINED = {"payment": {"type": "zuora", "zuora": {"refId": "pm-declined", "paymentGateway": "CreditCard_UK"}}}


@pytest.fixture
def declining(monkeypatch: pytest.MonkeyPatch) -> Any:
    """An emulator (its connections in the environment) that declines the payment ``pm-declined``."""
    with LimioEmulator(decline_payment_refs={"pm-declined"}) as emulator:
        for name, value in emulator.connection_env().items():
            monkeypatch.setenv(name, value)
        yield emulator


def report(uri: str) -> dict[str, list[dict[str, Any]]]:
    """The report's lines by external_id."""
    lines: dict[str, list[dict[str, Any]]] = {}
    for text in Path(uri.removeprefix("file://")).read_text().splitlines():
        line = json.loads(text)
        lines.setdefault(line["external_id"], []).append(line)
    return lines


def test_a_batch_reconciled_finds_failed_missing_duplicate_and_unexpected_orders(
    declining: LimioEmulator, tmp_path: Path
) -> None:
    """A batch sends four orders (one declined: Limio fails it). Before it, another tool sent one of them (the
    batch's ledger knows nothing of it, so the batch sends its own: a duplicate) and an order with the batch's
    prefix that nobody intended. Each is found and named."""
    orders = [new_order("rc-1"), new_order("rc-2"), new_order("rc-3", **DECLINED), new_order("rc-4")]
    orders_file = tmp_path / "orders.jsonl"
    orders_file.write_text("".join(json.dumps(order) + "\n" for order in orders))
    with DAG("limio_reconcile_batch", schedule=None, start_date=START) as dag:
        batch = LimioSubmitOrdersOperator(
            task_id="submit",
            orders_path=orders_file.as_uri(),
            ledger_path=in_use(f"file://{tmp_path}/ledger"),
            max_failed=1,
        )
        batch >> LimioReconcileOrdersOperator(
            task_id="reconcile",
            intended_path="{{ ti.xcom_pull(task_ids='submit')['results_path'] }}",
            external_id_prefix="rc-",
            max_problems=10,
        )
    hook = LimioHook()
    hook.submit_order(new_order("rc-2"))  # an order for rc-2, not through the batch
    hook.submit_order(new_order("rc-stray"))  # the batch's prefix, never intended
    results = Path(f"{orders_file.with_suffix('')}.results.jsonl")
    run = run_dag(dag)
    assert states(run) == {"submit": "success", "reconcile": "success"}, states(run)

    (summary,) = xcom(run, "reconcile")
    lines = report(summary["report_path"])
    assert summary["report_path"] == f"{results.as_uri()}.reconciliation.jsonl"
    assert [line["status"] for line in lines["rc-1"]] == ["created"]
    assert lines["rc-1"][0]["order_id"] == declining.orders_with_external_id("rc-1")[0]["id"]
    assert sorted(line["status"] for line in lines["rc-2"]) == ["created", "unexpected"]
    assert {line["order_id"] for line in lines["rc-2"]} == {o["id"] for o in declining.orders_with_external_id("rc-2")}
    assert lines["rc-3"][0]["status"] == "failed" and "declined" in lines["rc-3"][0]["message"]
    assert lines["rc-stray"][0]["status"] == "unexpected"
    assert summary["counts"] == {"created": 3, "failed": 1, "unexpected": 2}, summary
    assert summary["problems"] == 3 and summary["intended"] == 4


def test_past_max_problems_the_task_fails_naming_them_and_the_report_has_every_order(
    limio_emulator: LimioEmulator, tmp_path: Path
) -> None:
    """A results file that says two orders were submitted which Limio does not hold, and one refused that
    Limio does hold: more problems than allowed."""
    hook = LimioHook()
    held = hook.submit_order(new_order("held"))
    refused_but_there = hook.submit_order(new_order("refused-but-there"))
    rows = [
        {"external_id": "held", "outcome": "submitted", "order_id": held.id},
        {"external_id": "lost-1", "outcome": "submitted", "order_id": "order-lost-1"},
        {"external_id": "lost-2", "outcome": "adopted", "order_id": "order-lost-2"},
        {"external_id": "refused-but-there", "outcome": "refused"},
        {"external_id": "refused-and-not", "outcome": "refused"},
        {"external_id": "unknown-not-there", "outcome": "unknown"},
    ]
    results = tmp_path / "day.results.jsonl"
    results.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with DAG("limio_reconcile_threshold", schedule=None, start_date=START) as dag:
        LimioReconcileOrdersOperator(task_id="reconcile", intended_path=results.as_uri(), max_problems=2)
    run = run_dag(dag)
    assert states(run) == {"reconcile": "failed"}
    (summary,) = xcom(run, "reconcile")
    assert summary["counts"] == {"created": 1, "missing": 2, "unexpected": 1, "not_created": 2}, summary
    assert {(p["external_id"], p["status"]) for p in summary["first_problems"]} == {
        ("lost-1", "missing"),
        ("lost-2", "missing"),
        ("refused-but-there", "unexpected"),
    }
    lines = report(summary["report_path"])
    assert lines["refused-but-there"][0]["order_id"] == refused_but_there.id
    assert lines["unknown-not-there"][0]["status"] == "not_created"


def test_an_export_or_a_list_of_ids_and_bad_input_fails_before_any_call(
    limio_emulator: LimioEmulator, tmp_path: Path
) -> None:
    hook = LimioHook()
    order = hook.submit_order(new_order("listed"))
    export = tmp_path / "limio-orders.jsonl"
    export.write_text(json.dumps({"id": order.id, "external_id": "listed", "status": "complete"}) + "\n")
    report_uri = (tmp_path / "reports" / "not-made-yet" / "ids.report.jsonl").as_uri()  # its folder is made
    with DAG("limio_reconcile_ids", schedule=None, start_date=START) as dag:
        LimioReconcileOrdersOperator(
            task_id="from_export",
            external_ids=["listed", "never-sent"],
            report_path=report_uri,
            limio_orders_path=export.as_uri(),
            max_problems=1,
        )
    lists_before = len([r for r in limio_emulator.requests if r.path == "/api/objects/limio/orders"])
    run = run_dag(dag)
    assert states(run) == {"from_export": "success"}
    (summary,) = xcom(run, "from_export")
    assert summary["counts"] == {"created": 1, "missing": 1}
    assert len([r for r in limio_emulator.requests if r.path == "/api/objects/limio/orders"]) == lists_before

    no_id = tmp_path / "orders-without-ids.jsonl"
    no_id.write_text(json.dumps({k: v for k, v in new_order("x").items() if k != "external_id"}) + "\n")
    with DAG("limio_reconcile_bad", schedule=None, start_date=START) as dag:
        LimioReconcileOrdersOperator(task_id="bad", intended_path=no_id.as_uri())
    requests_before = len(limio_emulator.requests)
    run = run_dag(dag)
    assert states(run) == {"bad": "failed"}
    assert len(limio_emulator.requests) == requests_before  # refused before any call
    with pytest.raises(ValueError, match="intended_path .* or external_ids, not both"):
        LimioReconcileOrdersOperator(task_id="both", intended_path="file:///x", external_ids=["a"])
    with pytest.raises(ValueError, match="report_path is required with external_ids"):
        LimioReconcileOrdersOperator(task_id="nowhere", external_ids=["a"])
