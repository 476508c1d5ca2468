"""A batch's guard rails before its first submit: the preview pass and the budget (approval: test_approval.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG

from limio_provider.operators import LimioSubmitOrdersOperator
from limio_provider.testing import Fault, LimioEmulator
from tests.helpers import START, calls, in_use, new_order, run_dag, states, xcom

pytestmark = pytest.mark.usefixtures("airflow_db")

FAST = {"timeout": 2.0, "retry_backoff": 0.01}
PREVIEWS, POSTS = "/api/order/preview", "/api/order"
#: What the emulator's catalogue charges for a new_order() (one offer-digital-monthly).
PRICE = "19.99"


@pytest.fixture
def ledger_root(tmp_path: Path) -> str:
    return in_use(f"file://{tmp_path}/ledger")


def batch_dag(dag_id: str, ledger_root: str, tmp_path: Path, orders: list[dict[str, Any]], **kwargs: Any) -> DAG:
    with DAG(dag_id, schedule=None, start_date=START, params={"budget": None}) as dag:
        LimioSubmitOrdersOperator(
            task_id="submit",
            orders=orders,
            results_path=f"file://{tmp_path}/{dag_id}.results.jsonl",
            ledger_path=ledger_root,
            hook_params=FAST,
            **kwargs,
        )
    return dag


def test_a_batch_over_max_orders_sends_nothing_and_says_by_how_much(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path, task_log: Callable[[], str]
) -> None:
    big = new_order("BIG-0", orderItems=[{"offer": {"id": "offer-digital-monthly"}, "quantity": 10}])
    orders = [big] + [new_order(f"BIG-{n}") for n in range(1, 12)]
    run = run_dag(batch_dag("limio_budget_orders", ledger_root, tmp_path, orders, max_orders=10, retries=2))
    assert states(run)["submit"] == "failed"
    assert len(calls(limio_emulator, PREVIEWS)) == 12 and calls(limio_emulator, POSTS) == []
    assert limio_emulator.orders == {}
    output = task_log()
    assert "the batch is over its budget: 12 orders to send, 2 over max_orders=10" in output
    assert "Nothing was sent. Largest charges: BIG-0 199.9, BIG-" in output
    assert "try 2" not in output.lower()  # over budget: not retried (the same orders would be previewed again)
    (preview,) = xcom(run, "submit", key="preview")
    assert preview["orders"] == 12 and preview["total_due"] == "419.79"
    assert preview["largest"][0] == {"external_id": "BIG-0", "total_due": "199.9"} and len(preview["largest"]) == 5


def test_a_per_run_total_due_budget_from_the_run_conf(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path, task_log: Callable[[], str]
) -> None:
    orders = [new_order(f"DUE-{n}") for n in range(5)]  # 5 x 19.99 = 99.95
    dag = batch_dag("limio_budget_due", ledger_root, tmp_path, orders, max_total_due="{{ params.budget }}")
    run = run_dag(dag, conf={"budget": "99.00"})
    assert states(run)["submit"] == "failed" and calls(limio_emulator, POSTS) == []
    assert "total due 99.95, 0.95 over max_total_due=99.00" in task_log()

    run = run_dag(dag, conf={"budget": "100"})
    assert states(run)["submit"] == "success"
    assert len(calls(limio_emulator, POSTS)) == 5 and len(limio_emulator.orders) == 5


def test_orders_the_ledger_holds_are_not_counted_and_a_preview_that_fails_stops_the_batch(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path, task_log: Callable[[], str]
) -> None:
    first = [new_order(f"AGAIN-{n}") for n in range(4)]
    assert states(run_dag(batch_dag("limio_budget_first", ledger_root, tmp_path, first)))["submit"] == "success"
    again = first + [new_order(f"AGAIN-{n}") for n in range(4, 6)]
    run = run_dag(batch_dag("limio_budget_again", ledger_root, tmp_path, again, max_orders=2))
    assert states(run)["submit"] == "success"  # 2 to send: the 4 sent before are adopted, not charged again
    (preview,) = xcom(run, "submit", key="preview")
    assert (preview["orders"], preview["already_sent"]) == (2, 4)
    assert len(calls(limio_emulator, POSTS)) == 6

    limio_emulator.add_fault(Fault(route="preview", action="status", status=500, external_id="LOST-2"))
    lost = [new_order(f"LOST-{n}") for n in range(4)]
    run = run_dag(batch_dag("limio_budget_lost", ledger_root, tmp_path, lost, max_total_due=1000))
    assert states(run)["submit"] == "failed" and len(calls(limio_emulator, POSTS)) == 6
    assert "the preview pass could not preview 1 of 4 orders" in task_log()


@pytest.mark.parametrize(
    ("argument", "value", "message"),
    [
        ("max_orders", -1, "max_orders must be a whole number >= 0, got -1"),
        ("max_orders", 2.5, "max_orders must be a whole number >= 0"),
        ("max_total_due", "lots", "max_total_due must be an amount >= 0, got 'lots'"),
        ("max_total_due", float("nan"), "max_total_due must be an amount >= 0"),
    ],
)
def test_a_bad_budget_is_refused_when_the_dag_is_written(argument: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LimioSubmitOrdersOperator(task_id="submit", orders=[], results_path="file:///tmp/r.jsonl", **{argument: value})


def test_a_rendered_bad_budget_fails_before_any_request(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path, task_log: Callable[[], str]
) -> None:
    dag = batch_dag("limio_budget_bad", ledger_root, tmp_path, [new_order("B-1")], max_orders="{{ params.budget }}")
    run = run_dag(dag, conf={"budget": "ten"})
    assert states(run)["submit"] == "failed" and limio_emulator.requests == []
    assert "max_orders must be a whole number >= 0, got 'ten'" in task_log()


def test_an_approval_on_an_airflow_without_human_in_the_loop_fails_before_any_request(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path, task_log: Callable[[], str]
) -> None:
    import importlib.util

    from limio_provider.approval import LimioApproval

    try:
        hitl = importlib.util.find_spec("airflow.sdk.execution_time.hitl") is not None
    except ModuleNotFoundError:
        hitl = False
    if hitl:
        pytest.skip("this Airflow asks (tests/test_approval.py)")
    dag = batch_dag("limio_approval_old", ledger_root, tmp_path, [new_order("OLD-1")], approval=LimioApproval())
    run = run_dag(dag)
    assert states(run)["submit"] == "failed" and limio_emulator.requests == []
    assert "approval needs Airflow 3.1 or later (human-in-the-loop requests); nothing was sent" in task_log()


# -- preflight ----------------------------------------------------------------------------------------------


def unmarked(emulator: LimioEmulator, monkeypatch: pytest.MonkeyPatch, environment: str | None = None) -> None:
    """Point limio_default at ``emulator`` as a connection marked ``environment`` (``None``: not marked)."""
    connection = json.loads(emulator.connection_json())
    connection["extra"].pop("environment")
    if environment is not None:
        connection["extra"]["environment"] = environment
    monkeypatch.setenv("AIRFLOW_CONN_LIMIO_DEFAULT", json.dumps(connection))


@pytest.mark.parametrize("environment", [None, "production"])
def test_a_large_production_batch_needs_confirm_production(
    limio_emulator: LimioEmulator,
    ledger_root: str,
    tmp_path: Path,
    task_log: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
    environment: str | None,
) -> None:
    unmarked(limio_emulator, monkeypatch, environment)
    orders = [new_order(f"PROD-{n}") for n in range(4)]
    dag = batch_dag(
        "limio_production",
        ledger_root,
        tmp_path,
        orders,
        max_unconfirmed_orders=3,
        confirm_production="{{ params.confirm }}",
    )
    run = run_dag(dag, conf={"confirm": False})
    assert states(run)["submit"] == "failed" and limio_emulator.requests == []
    said = "is production" if environment else "does not say sandbox or production"
    assert f"connection 'limio_default' {said} (its environment extra), and this batch has 4 valid orders" in (
        task_log()
    )
    run = run_dag(dag, conf={"confirm": True})
    assert states(run)["submit"] == "success" and len(limio_emulator.orders) == 4
    assert "Preflight passed: token issued, the ledger creates atomically; connection 'limio_default' is" in (
        task_log()
    )


def test_a_sandbox_connection_sends_a_large_batch_unconfirmed(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path
) -> None:
    orders = [new_order(f"SBX-{n}") for n in range(4)]  # the emulator's connection says sandbox
    run = run_dag(batch_dag("limio_sandbox", ledger_root, tmp_path, orders, max_unconfirmed_orders=3))
    assert states(run)["submit"] == "success" and len(limio_emulator.orders) == 4


def test_a_ledger_that_cannot_be_written_stops_the_batch_before_any_request(
    limio_emulator: LimioEmulator, tmp_path: Path, task_log: Callable[[], str]
) -> None:
    (tmp_path / "ledger").write_text("a file where the ledger's folder should be")
    orders = [new_order(f"NOLEDGER-{n}") for n in range(3)]
    dag = batch_dag("limio_ledger_file", f"file://{tmp_path}/ledger", tmp_path, orders)
    run = run_dag(dag)
    assert states(run)["submit"] == "failed" and limio_emulator.requests == []
    assert "cannot be written (NotADirectoryError" in task_log()


def test_management_credentials_that_do_not_work_stop_a_partner_batch_before_any_order(
    limio_emulator: LimioEmulator,
    ledger_root: str,
    tmp_path: Path,
    task_log: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connection = json.loads(limio_emulator.connection_json(admin=True))
    connection["password"] = "not-the-management-secret"
    monkeypatch.setenv("AIRFLOW_CONN_LIMIO_ADMIN", json.dumps(connection))
    orders = [new_order(f"ADM-{n}") for n in range(3)]
    dag = batch_dag(
        "limio_admin_preflight", ledger_root, tmp_path, orders, partner="partner-org-1", limio_conn_id="limio_admin"
    )
    run = run_dag(dag)
    assert states(run)["submit"] == "failed"
    assert calls(limio_emulator, "/api/admin/order") == [] and limio_emulator.orders == {}
    assert "Limio refused the client credentials of connection 'limio_admin' (HTTP 401" in task_log()
