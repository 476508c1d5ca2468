"""The single-order operators with an order ledger: a ledger hit costs one object read and no Limio list read,
across runs, on a busy tenant; one body per external_id; refusals do not block a corrected order."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG

from limio_provider.exactly_once.identity import fingerprint
from limio_provider.exactly_once.ledger import OrderLedger, Owner, parse_record
from limio_provider.hooks.limio import LimioHook
from limio_provider.operators import LimioSubmitOrderOperator
from limio_provider.testing import Fault, LimioEmulator
from tests.helpers import START, calls, new_order, run_dag, states, xcom

pytestmark = pytest.mark.usefixtures("airflow_db")
FAST = {"timeout": 2.0, "retry_backoff": 0.01}


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
    record_file = OrderLedger(ledger_root, LimioHook(**FAST).settings.tenant).path("EXT-LEDGER")
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
    record = parse_record(written.encode())
    assert (record["state"], record["order_id"], record["fingerprint"]) == (
        "done",
        created["id"],
        fingerprint(new_order("EXT-LEDGER")),
    )
    assert record["claimed_by"]["dag_id"] == "limio_ledger_first"


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
    ledger = OrderLedger(ledger_root, LimioHook(**FAST).settings.tenant)
    created, record = ledger.claim("EXT-HELD", fingerprint(body), Owner("other_dag", "run-1", "submit"))
    assert created
    ledger.update(ledger.update(record, "sent"), "unknown")  # the other worker sent it and never learnt the outcome
    run = run_dag(submit_dag("limio_ledger_held", body, ledger_root, ledger_wait_timeout=0.3))
    assert states(run)["submit"] == "failed"
    assert calls(limio_emulator, "/api/order") == []
    assert "EXT-HELD" in task_log()


@pytest.mark.parametrize("decision", ["send", "adopt"])
def test_a_persons_decision_reaches_another_task_instances_unknown_ledger_record(
    limio_emulator: LimioEmulator, ledger_root: str, decision: str
) -> None:
    from airflow.models.variable import Variable

    from limio_provider.exactly_once.decisions import decision_key, outcome_ref

    external_id = f"EXT-DEC-{decision}"
    body = new_order(external_id)
    hook = LimioHook(**FAST)
    ledger = OrderLedger(ledger_root, hook.settings.tenant)
    created, record = ledger.claim(external_id, fingerprint(body), Owner("other_dag", "run-1", "submit"))
    ledger.update(ledger.update(record, "sent"), "unknown")  # sent, outcome never learnt, failed
    ref = outcome_ref(external_id, {"claimed_by": record["claimed_by"], "claimed_at": record["claimed_at"]})
    if decision == "adopt":  # Limio had it after all: the person found it
        existing = hook.submit_order(body)
        Variable.set(decision_key(external_id), f"adopt {existing.id} {ref}")
    else:
        Variable.set(decision_key(external_id), f"send {ref}")
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


def spelt_connection(monkeypatch: pytest.MonkeyPatch, emulator: LimioEmulator, conn_id: str, **fields: Any) -> None:
    """``conn_id`` as the emulator with its host (and port) spelt another way."""
    connection = json.loads(emulator.connection_json())
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({**connection, **fields}))


def test_a_rerun_through_the_same_tenant_spelt_another_way_sends_nothing(
    limio_emulator: LimioEmulator, ledger_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17, scenario 3: the ledger's tenant was the host as spelt, so 127.0.0.1 vs localhost, or the port
    in the Port field, gave an empty ledger and every order was sent again."""
    port = limio_emulator.url.rsplit(":", 1)[1]
    spelt_connection(monkeypatch, limio_emulator, "limio_ip", host=f"http://127.0.0.1:{port}")
    spelt_connection(monkeypatch, limio_emulator, "limio_name", host="http://LOCALHOST", port=int(port))
    order = new_order("EXT-SPELT")
    first = run_dag(submit_dag("limio_spelt_1", order, ledger_root, limio_conn_id="limio_ip"))
    assert first.state == "success", states(first)
    before = len(limio_emulator.requests)
    second = run_dag(submit_dag("limio_spelt_2", order, ledger_root, limio_conn_id="limio_name"))
    assert second.state == "success", states(second)
    assert len(limio_emulator.orders_with_external_id("EXT-SPELT")) == 1
    assert xcom(second, "submit", "adopted") == [True]
    assert limio_emulator.requests[before:] == []  # adopted from the ledger: no Limio call at all


def test_records_under_the_host_as_spelt_before_are_still_found(
    limio_emulator: LimioEmulator, ledger_root: str
) -> None:
    """A ledger written before tenant names were canonical (its folder is the host as the connection spelt it,
    here 127.0.0.1:<port>): an upgrade adopts its orders and sends nothing."""
    order = new_order("EXT-OLD-FOLDER")
    created = LimioHook(**FAST).submit_order(order)
    old = OrderLedger(ledger_root, limio_emulator.url.removeprefix("http://"))
    _, record = old.claim("EXT-OLD-FOLDER", fingerprint(order), Owner("old_dag", "run-1", "submit"))
    old.update(record, "done", order_id=created.id, result=created.to_json_dict())
    before = len(limio_emulator.requests)
    run = run_dag(submit_dag("limio_old_folder", order, ledger_root))
    assert run.state == "success", states(run)
    assert xcom(run, "submit", "adopted") == [True] and xcom(run, "submit")[0]["id"] == created.id
    assert limio_emulator.requests[before:] == []


def test_the_tenant_extra_names_one_tenant_reached_through_two_host_names(
    limio_emulator: LimioEmulator, ledger_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DNS alias cannot be recognised from the host: the `tenant` extra names the tenant for both."""
    port = limio_emulator.url.rsplit(":", 1)[1]
    extra = {**json.loads(limio_emulator.connection_json())["extra"], "tenant": "Acme.Limio.Test"}
    spelt_connection(monkeypatch, limio_emulator, "limio_a", host=f"http://127.0.0.1:{port}", extra=extra)
    spelt_connection(monkeypatch, limio_emulator, "limio_b", host=f"http://127.0.0.2:{port}", extra=extra)
    assert LimioHook("limio_a").settings.tenant == LimioHook("limio_b").settings.tenant == "acme.limio.test"
    order = new_order("EXT-ALIAS")
    for n, conn_id in enumerate(("limio_a", "limio_b")):
        run = run_dag(submit_dag(f"limio_alias_{n}", order, ledger_root, limio_conn_id=conn_id))
        assert run.state == "success", states(run)
    assert len(limio_emulator.orders_with_external_id("EXT-ALIAS")) == 1
    assert OrderLedger(ledger_root, "acme.limio.test").path("EXT-ALIAS").exists()


def test_a_send_decision_on_another_task_instances_record_looks_limio_up_first(
    limio_emulator: LimioEmulator, ledger_root: str, task_log: Callable[[], str]
) -> None:
    """Issue 17, scenario 2: 'send' for another task instance's `sent` record marked it refused and sent with no
    look-up at all: two orders when that send had reached Limio. Now Limio is looked up first, and the order
    it holds is adopted."""
    from airflow.models.variable import Variable

    from limio_provider.exactly_once.decisions import decision_key, outcome_ref

    body = new_order("EXT-DEC-LOOK")
    hook = LimioHook(**FAST)
    ledger = OrderLedger(ledger_root, hook.settings.tenant)
    _, record = ledger.claim("EXT-DEC-LOOK", fingerprint(body), Owner("other_dag", "run-1", "submit"))
    record = ledger.update(record, "sent")  # the other task instance's send left ...
    existing = hook.submit_order(body)  # ... and reached Limio; the person judged wrongly
    ref = outcome_ref("EXT-DEC-LOOK", {"claimed_by": record["claimed_by"], "claimed_at": record["claimed_at"]})
    Variable.set(decision_key("EXT-DEC-LOOK"), f"send {ref}")
    task_log()
    run = run_dag(submit_dag("limio_ledger_decided_look", body, ledger_root, ledger_wait_timeout=30))
    assert run.state == "success", states(run)
    assert [o["id"] for o in limio_emulator.orders_with_external_id("EXT-DEC-LOOK")] == [existing.id]
    assert xcom(run, "submit", "order_id") == [existing.id]
    assert "was decided 'send', but Limio has it now as" in task_log()


def test_a_decision_answering_another_send_is_refused_and_kept(
    limio_emulator: LimioEmulator, ledger_root: str, task_log: Callable[[], str]
) -> None:
    """Issue 17, scenario 1: a decision left in its Variable was applied to a later, different unknown outcome
    of the same external_id. A decision names the send it answers; for any other it is refused, loudly."""
    from airflow.models.variable import Variable

    from limio_provider.exactly_once.decisions import decision_key

    body = new_order("EXT-DEC-STALE")
    ledger = OrderLedger(ledger_root, LimioHook(**FAST).settings.tenant)
    _, record = ledger.claim("EXT-DEC-STALE", fingerprint(body), Owner("other_dag", "run-1", "submit"))
    ledger.update(ledger.update(record, "sent"), "unknown")
    Variable.set(decision_key("EXT-DEC-STALE"), "send 0badc0de")  # an earlier send's decision, never used
    task_log()
    run = run_dag(submit_dag("limio_ledger_decided_stale", body, ledger_root, ledger_wait_timeout=0.3))
    assert states(run)["submit"] == "failed"
    assert calls(limio_emulator, "/api/order") == []
    assert "it answers the send '0badc0de' of order EXT-DEC-STALE, not this one" in task_log()
    assert Variable.get(decision_key("EXT-DEC-STALE"), None) == "send 0badc0de"


def test_a_claim_not_yet_sent_asks_for_no_decision(
    limio_emulator: LimioEmulator, ledger_root: str, task_log: Callable[[], str]
) -> None:
    """A decision applies to a send whose outcome is unknown: for a claim that has sent nothing, the error
    suggests none (one set there was ignored, then applied to a later outcome: issue 17, scenario 1)."""
    body = new_order("EXT-CLAIMED")
    ledger = OrderLedger(ledger_root, LimioHook(**FAST).settings.tenant)
    ledger.claim("EXT-CLAIMED", fingerprint(body), Owner("other_dag", "run-1", "submit"))
    task_log()
    run = run_dag(submit_dag("limio_ledger_claimed", body, ledger_root, ledger_wait_timeout=0.3))
    assert states(run)["submit"] == "failed"
    output = task_log()
    assert "It has not sent it yet: if that task instance is not running, clear it" in output
    assert "airflow variables set" not in output
