"""One fact, one record: an order Limio created is reported as created whatever local write fails after it, and
the retry that knows its id writes the ledger (issue 17, scenario 5). Each test runs on a local ledger, whose
writes fail as a full disk does, and on S3 (moto), whose PUTs the test server fails (``ledger_write_fault``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG

from limio_provider.exactly_once.ledger import OrderLedger
from limio_provider.hooks.limio import LimioHook
from limio_provider.operators import LimioSubmitOrderOperator, LimioSubmitOrdersOperator
from limio_provider.testing import LimioEmulator
from tests.helpers import S3_PUT_FAULTS, START, ledger_write_fault, new_order, run_dag, states, xcom

pytestmark = pytest.mark.usefixtures("airflow_db")
FAST = {"timeout": 2.0, "retry_backoff": 0.01}
#: A record's "done" write (the fault is removed when the first try fails: see ``first_try_only``).
DONE = '"state": "done"'


def first_try_only(then: Callable[[], None] = lambda: None) -> Callable[[Any], None]:
    """An ``on_retry_callback`` that ends the S3 faults when the first try fails, then calls ``then``."""

    def on_retry(context: Any) -> None:
        S3_PUT_FAULTS.clear()
        then()

    return on_retry


@pytest.fixture(autouse=True)
def no_s3_faults_left() -> Iterator[None]:
    yield
    S3_PUT_FAULTS.clear()


def ledger_record(root: str, external_id: str) -> dict[str, Any] | None:
    return OrderLedger(root, LimioHook().settings.tenant).read(external_id)


def test_an_order_whose_ledger_write_failed_is_reported_created_and_the_retry_records_it(
    limio_emulator: LimioEmulator, ledger_root: str, task_log: Callable[[], str]
) -> None:
    fault = ledger_write_fault(ledger_root, "EXT-REC-1", DONE)
    task_log()
    with DAG("limio_not_recorded", schedule=None, start_date=START) as dag:
        LimioSubmitOrderOperator(
            task_id="submit",
            order=new_order("EXT-REC-1"),
            ledger_path=ledger_root,
            hook_params=FAST,
            retries=1,
            retry_delay=timedelta(0),
            on_retry_callback=first_try_only(),
        )
    run = run_dag(dag)
    assert run.state == "success", states(run)
    assert fault["hits"] > 0, "the fault never fired: the test proves nothing"
    (order,) = limio_emulator.orders_with_external_id("EXT-REC-1")
    output = task_log()
    assert "LimioOrderNotRecordedError" in output
    assert f"Limio holds order EXT-REC-1 as {order['id']}, and recording it failed" in output
    assert [result["id"] for result in xcom(run, "submit")] == [order["id"]]
    record = ledger_record(ledger_root, "EXT-REC-1")
    assert record is not None and (record["state"], record["order_id"]) == ("done", order["id"]), record
    assert record["claimed_by"]["try_number"] == 2  # the retry that knew the id wrote it


def test_a_batch_row_says_submitted_when_recording_failed_and_the_retry_records_it(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path
) -> None:
    fault = ledger_write_fault(ledger_root, "EXT-REC-B-1", DONE)
    results_path = tmp_path / "batch.results.jsonl"
    tries: list[str] = []  # the results file as each failed try left it

    with DAG("limio_batch_not_recorded", schedule=None, start_date=START) as dag:
        LimioSubmitOrdersOperator(
            task_id="submit",
            orders=[new_order(f"EXT-REC-B-{n}") for n in range(3)],
            ledger_path=ledger_root,
            results_path=f"file://{results_path}",
            hook_params=FAST,
            retries=1,
            retry_delay=timedelta(0),
            on_retry_callback=first_try_only(lambda: tries.append(results_path.read_text())),
        )
    run = run_dag(dag)
    assert run.state == "success", states(run)
    assert fault["hits"] > 0, "the fault never fired: the test proves nothing"
    (text,) = tries
    first = [json.loads(line) for line in text.splitlines()]
    row = next(row for row in first if row["external_id"] == "EXT-REC-B-1")
    (order,) = limio_emulator.orders_with_external_id("EXT-REC-B-1")
    assert (row["outcome"], row["order_id"]) == ("submitted", order["id"]), row
    assert "recording it failed" in row["error"]
    for n in range(3):
        (created,) = limio_emulator.orders_with_external_id(f"EXT-REC-B-{n}")
        record = ledger_record(ledger_root, f"EXT-REC-B-{n}")
        assert record is not None and (record["state"], record["order_id"]) == ("done", created["id"]), record


def test_a_retried_batch_reconnects_by_id_to_an_order_it_failed_to_record_past_the_newest_500(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path
) -> None:
    """The first try kept the id of the order whose ledger record it failed to write (in task_state_store, as
    it happened): the retry reconnects to it by that id, although 600 orders of a busy tenant came after it
    and a look-up by external_id (the newest 500) would not find it: adopted, not unknown, sent once."""
    fault = ledger_write_fault(ledger_root, "EXT-REC-K-1", DONE)
    results_path = tmp_path / "batch.results.jsonl"
    before_retry: list[int] = []

    def busy_tenant() -> None:
        hook = LimioHook(**FAST)
        for n in range(600):
            hook.submit_order(new_order(f"SHOP-K-{n}"))
        before_retry.append(len(limio_emulator.requests))

    with DAG("limio_batch_not_recorded_busy", schedule=None, start_date=START) as dag:
        LimioSubmitOrdersOperator(
            task_id="submit",
            orders=[new_order(f"EXT-REC-K-{n}") for n in range(3)],
            ledger_path=ledger_root,
            results_path=f"file://{results_path}",
            hook_params=FAST,
            retries=1,
            retry_delay=timedelta(0),
            on_retry_callback=first_try_only(busy_tenant),
        )
    run = run_dag(dag)
    assert run.state == "success", states(run)
    assert fault["hits"] > 0, "the fault never fired: the test proves nothing"
    (order,) = limio_emulator.orders_with_external_id("EXT-REC-K-1")
    rows = {row["external_id"]: row for row in map(json.loads, results_path.read_text().splitlines())}
    row = rows["EXT-REC-K-1"]
    assert (row["outcome"], row["this_try"], row["order_id"]) == ("submitted", "adopted", order["id"])
    (start,) = before_retry
    retry = [r.path for r in limio_emulator.requests[start:] if r.path != "/oauth2/token"]
    assert retry == [f"/api/objects/limio/orders/{order['id']}"]  # by its id: no list read, no send
    record = ledger_record(ledger_root, "EXT-REC-K-1")
    assert record is not None and (record["state"], record["order_id"]) == ("done", order["id"]), record


#: A record's "sent" write, the last step before the request leaves.
SENT = '"state": "sent"'


def test_an_order_whose_sent_write_failed_was_not_sent_and_says_so(
    limio_emulator: LimioEmulator, ledger_root: str, task_log: Callable[[], str]
) -> None:
    """The ledger's "sent" write fails (an S3 5xx): the request never leaves, the error says it was not sent (a
    local failure: neither "unknown" nor "refused"), and the retry sends it once."""
    fault = ledger_write_fault(ledger_root, "EXT-REC-S", SENT)
    task_log()
    posts_in_try_1: list[int] = []
    with DAG("limio_sent_not_recorded", schedule=None, start_date=START) as dag:
        LimioSubmitOrderOperator(
            task_id="submit",
            order=new_order("EXT-REC-S"),
            ledger_path=ledger_root,
            hook_params=FAST,
            retries=1,
            retry_delay=timedelta(0),
            on_retry_callback=first_try_only(
                lambda: posts_in_try_1.append(sum(r.path == "/api/order" for r in limio_emulator.requests))
            ),
        )
    run = run_dag(dag)
    assert run.state == "success", states(run)
    assert fault["hits"] > 0, "the fault never fired: the test proves nothing"
    assert posts_in_try_1 == [0]
    output = task_log()
    assert "order EXT-REC-S was not sent: recording that it is leaving failed" in output
    assert "LimioOutcomeUnknownError" not in output
    (order,) = limio_emulator.orders_with_external_id("EXT-REC-S")
    assert [result["id"] for result in xcom(run, "submit")] == [order["id"]]


def test_a_batch_row_says_failed_not_unknown_when_the_sent_write_failed(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path
) -> None:
    fault = ledger_write_fault(ledger_root, "EXT-REC-BS-1", SENT)
    results_path = tmp_path / "batch.results.jsonl"
    with DAG("limio_batch_sent_not_recorded", schedule=None, start_date=START) as dag:
        LimioSubmitOrdersOperator(
            task_id="submit",
            orders=[new_order(f"EXT-REC-BS-{n}") for n in range(3)],
            ledger_path=ledger_root,
            results_path=f"file://{results_path}",
            hook_params=FAST,
        )
    run = run_dag(dag)
    assert run.state == "failed", states(run)
    assert fault["hits"] > 0, "the fault never fired: the test proves nothing"
    rows = {row["external_id"]: row for row in map(json.loads, results_path.read_text().splitlines())}
    row = rows["EXT-REC-BS-1"]
    assert row["outcome"] == "failed" and "was not sent: recording that it is leaving failed" in row["error"], row
    assert not limio_emulator.orders_with_external_id("EXT-REC-BS-1")
    assert not [
        r for r in limio_emulator.requests if isinstance(r.body, dict) and r.body.get("external_id") == "EXT-REC-BS-1"
    ]
    assert {rows[f"EXT-REC-BS-{n}"]["outcome"] for n in (0, 2)} == {"submitted"}
