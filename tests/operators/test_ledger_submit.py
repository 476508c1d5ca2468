"""The single-order operators with an order ledger: a ledger hit costs one object read and no Limio list read,
across runs, on a busy tenant; one body per external_id; refusals do not block a corrected order."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG

from limio_provider.hooks.limio import LimioHook
from limio_provider.ledger import OrderLedger, Owner, fingerprint
from limio_provider.operators import LimioSubmitOrderOperator
from limio_provider.testing import Fault, LimioEmulator
from tests.helpers import START, calls, new_order, run_dag, states, xcom

pytestmark = pytest.mark.usefixtures("airflow_db")
FAST = {"timeout": 2.0, "retry_backoff": 0.01}


@pytest.fixture
def ledger_root(tmp_path: Path) -> str:
    return f"file://{tmp_path}/ledger"


def submit_dag(dag_id: str, order: dict[str, Any], ledger_root: str, **kwargs: Any) -> DAG:
    with DAG(dag_id, schedule=None, start_date=START) as dag:
        LimioSubmitOrderOperator(task_id="submit", order=order, ledger_path=ledger_root, hook_params=FAST, **kwargs)
    return dag


def list_reads(emulator: LimioEmulator) -> int:
    return len(calls(emulator, "/api/objects/limio/orders"))


def test_a_rerun_on_a_busy_tenant_adopts_from_the_ledger_without_listing(
    limio_emulator: LimioEmulator, ledger_root: str
) -> None:
    first = run_dag(submit_dag("limio_ledger_first", new_order("EXT-LEDGER"), ledger_root))
    assert first.state == "success", states(first)
    (created,) = xcom(first, "submit")
    record_file = Path(ledger_root.removeprefix("file://")) / limio_tenant(limio_emulator) / "EXT-LEDGER.json"
    written = record_file.read_text()
    hook = LimioHook(**FAST)
    for n in range(600):  # a web shop's afternoon: the order drops out of the newest 500
        hook.submit_order(new_order(f"SHOP-{n}"))
    before = len(limio_emulator.requests)
    second = run_dag(submit_dag("limio_ledger_second", new_order("EXT-LEDGER"), ledger_root))
    assert second.state == "success", states(second)
    assert [o["id"] for o in limio_emulator.orders_with_external_id("EXT-LEDGER")] == [created["id"]]
    assert xcom(second, "submit")[0]["id"] == created["id"]
    assert xcom(second, "submit", "adopted") == [True]
    assert limio_emulator.requests[before:] == []  # one object read, no Limio call at all
    assert record_file.read_text() == written  # adopting reads the record; only its claimer writes it
    record = json.loads(written)
    assert (record["state"], record["order_id"], record["fingerprint"]) == (
        "done",
        created["id"],
        fingerprint(new_order("EXT-LEDGER")),
    )
    assert record["claimed_by"]["dag_id"] == "limio_ledger_first"


def limio_tenant(emulator: LimioEmulator) -> str:
    from urllib.parse import quote, urlsplit

    return quote(urlsplit(emulator.url).netloc, safe="")


def test_the_same_external_id_with_another_body_is_refused_naming_both_fingerprints(
    limio_emulator: LimioEmulator, ledger_root: str, task_log: Callable[[], str]
) -> None:
    run_dag(submit_dag("limio_ledger_body_1", new_order("EXT-BODY"), ledger_root))
    other = new_order("EXT-BODY", country="IE")
    run = run_dag(submit_dag("limio_ledger_body_2", other, ledger_root))
    assert states(run)["submit"] == "failed"
    assert len(limio_emulator.orders_with_external_id("EXT-BODY")) == 1
    output = task_log()
    assert fingerprint(new_order("EXT-BODY")) in output and fingerprint(other) in output


def test_a_refused_order_does_not_block_a_corrected_one(limio_emulator: LimioEmulator, ledger_root: str) -> None:
    limio_emulator.add_fault(Fault(route="order", action="status", status=400, message="bad offer", times=1))
    refused = run_dag(submit_dag("limio_ledger_refused", new_order("EXT-FIX"), ledger_root))
    assert states(refused)["submit"] == "failed"
    corrected = run_dag(submit_dag("limio_ledger_corrected", new_order("EXT-FIX", country="IE"), ledger_root))
    assert corrected.state == "success", states(corrected)
    (order,) = limio_emulator.orders_with_external_id("EXT-FIX")
    assert order["country"] == "IE"


def test_a_claim_held_by_another_task_instance_is_never_sent_twice(
    limio_emulator: LimioEmulator, ledger_root: str, task_log: Callable[[], str]
) -> None:
    body = new_order("EXT-HELD")
    ledger = OrderLedger(ledger_root, LimioHook(**FAST).settings.api_url.split("//")[1].split("/")[0])
    created, record = ledger.claim("EXT-HELD", fingerprint(body), Owner("other_dag", "run-1", "submit"))
    assert created
    ledger.update(record, "unknown")  # the other worker sent it and never learnt the outcome
    run = run_dag(submit_dag("limio_ledger_held", body, ledger_root, ledger_wait_timeout=0.3))
    assert states(run)["submit"] == "failed"
    assert calls(limio_emulator, "/api/order") == []
    assert "EXT-HELD" in task_log()


@pytest.mark.parametrize("decision", ["send", "adopt"])
def test_a_persons_decision_reaches_another_task_instances_unknown_ledger_record(
    limio_emulator: LimioEmulator, ledger_root: str, decision: str
) -> None:
    from airflow.models.variable import Variable

    from limio_provider.operators.orders import decision_key

    external_id = f"EXT-DEC-{decision}"
    body = new_order(external_id)
    hook = LimioHook(**FAST)
    ledger = OrderLedger(ledger_root, hook.settings.api_url.split("//")[1].split("/")[0])
    created, record = ledger.claim(external_id, fingerprint(body), Owner("other_dag", "run-1", "submit"))
    ledger.update(record, "unknown")  # the other task instance sent it, never learnt the outcome, and failed
    if decision == "adopt":  # Limio had it after all: the person found it
        existing = hook.submit_order(body)
        Variable.set(decision_key(external_id), f"adopt {existing.id}")
    else:
        Variable.set(decision_key(external_id), "send")
    before = len(calls(limio_emulator, "/api/order"))
    run = run_dag(submit_dag(f"limio_ledger_decided_{decision}", body, ledger_root, ledger_wait_timeout=30))
    assert run.state == "success", states(run)
    (order,) = limio_emulator.orders_with_external_id(external_id)
    assert xcom(run, "submit", "order_id") == [order["id"]]
    assert len(calls(limio_emulator, "/api/order")) - before == (1 if decision == "send" else 0)
    assert (ledger.read(external_id) or {})["state"] == "done"  # the decision reached the ledger record
    assert (ledger.read(external_id) or {})["order_id"] == order["id"]
    assert Variable.get(decision_key(external_id), None) is None


def test_a_retry_after_an_unknown_outcome_reconciles_through_the_ledger(
    limio_emulator: LimioEmulator, ledger_root: str
) -> None:
    from datetime import timedelta

    limio_emulator.add_fault(Fault(route="order", action="process_then_status", status=504, times=1))
    limio_emulator.add_fault(Fault(route="list_orders", action="status", status=503, times=5))  # try 1 cannot look
    dag = submit_dag("limio_ledger_retry", new_order("EXT-LR"), ledger_root, retries=1, retry_delay=timedelta(0))
    run = run_dag(dag)
    assert run.state == "success", states(run)
    (order,) = limio_emulator.orders_with_external_id("EXT-LR")
    assert xcom(run, "submit")[0]["id"] == order["id"]
    assert len(calls(limio_emulator, "/api/order")) == 1


def test_a_retry_after_a_refused_try_submits_through_the_ledger_on_every_airflow(
    limio_emulator: LimioEmulator, ledger_root: str
) -> None:
    """Without task_state_store (before 3.3) only the ledger tells the retry that try 1 was refused."""
    from datetime import timedelta

    limio_emulator.add_fault(Fault(route="order", action="status", status=503, times=5))  # try 1: every retry
    dag = submit_dag(
        "limio_ledger_refused_retry", new_order("EXT-RR"), ledger_root, retries=1, retry_delay=timedelta(0)
    )
    run = run_dag(dag)
    assert run.state == "success", states(run)
    assert len(limio_emulator.orders_with_external_id("EXT-RR")) == 1
    assert list_reads(limio_emulator) == 0  # the ledger said "refused": nothing to look up


def test_without_a_ledger_the_task_says_how_far_its_protection_reaches(
    limio_emulator: LimioEmulator, task_log: Callable[[], str]
) -> None:
    with DAG("limio_no_ledger", schedule=None, start_date=START) as dag:
        LimioSubmitOrderOperator(task_id="submit", order=new_order("EXT-NL"), hook_params=FAST)
    run_dag(dag)
    assert "protection against another run sending order EXT-NL is limited to the 500 newest" in "".join(task_log())
