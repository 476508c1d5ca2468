"""The provider in a real single-machine deployment (LocalExecutor, SQLite, every Airflow service its own
process), driven through the REST API: runs, deferral through the triggerer, a task process killed
mid-submit, and the recovery of an outcome-unknown failure. The emulator's orders are the ground truth:
exactly one per ``external_id``."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest

from limio_provider.testing.faults import Fault
from tests.deploy.harness import AIRFLOW, EXAMPLE_DAGS, RUN_SECONDS, wait_until
from tests.deploy.scenarios import (
    deferrable_wait,
    mapped_submit,
    one_order,
    sensor_with_stored_connection,
    submits,
    task_process,
    unique,
)

if TYPE_CHECKING:
    from limio_provider.testing.emulator import LimioEmulator
    from tests.deploy.conftest import Deployment

pytestmark = pytest.mark.deploy


def test_mapped_submit_one_order_each_with_xcom_and_link(local: Deployment, emulator: LimioEmulator) -> None:
    mapped_submit(local, emulator)


def test_deferrable_wait_defers_and_resumes_through_the_triggerer(local: Deployment, emulator: LimioEmulator) -> None:
    deferrable_wait(local, emulator)


def test_deferrable_sensor_with_a_stored_connection_and_a_healthy_triggerer(
    local: Deployment, emulator: LimioEmulator
) -> None:
    sensor_with_stored_connection(local, emulator)


def test_task_killed_mid_submit_retries_and_adopts_the_order(local: Deployment, emulator: LimioEmulator) -> None:
    api, dag_id, external_id = local.api, "deploy_retry_submit", unique("killed")
    # Limio creates the order, then the answer never comes: the task hangs inside its POST.
    emulator.add_fault(Fault(route="order", action="process_then_hang", latency=90, external_id=external_id, times=1))
    run_id = api.trigger(dag_id, {"external_id": external_id})
    wait_until(
        "the order to reach Limio",
        lambda: emulator.orders_with_external_id(external_id),
        90,
        0.2,
        lambda: api.diagnose(dag_id, run_id),
    )
    ti = api.ti(dag_id, run_id, "submit")
    assert ti["state"] == "running" and ti["try_number"] == 1, ti
    process = wait_until("the task's process", lambda: task_process(ti["id"]), 10)
    process.kill()  # SIGKILL: no exception handler, no on_kill, nothing written on the way out
    killed_at = time.monotonic()

    assert api.wait_run(dag_id, run_id) == "success", api.diagnose(dag_id, run_id)
    assert time.monotonic() - killed_at < RUN_SECONDS
    ti = api.ti(dag_id, run_id, "submit")
    assert ti["state"] == "success" and ti["try_number"] == 2, ti
    order = one_order(emulator, external_id)
    assert api.xcom(dag_id, run_id, "submit", "order_id") == order["id"]
    assert api.xcom(dag_id, run_id, "submit", "adopted") is True
    posts = submits(emulator, external_id)
    assert len(posts) == 1, f"the retry sent the order again: {posts}"


def _fail_with_unknown_outcome(local: Deployment, emulator: LimioEmulator, external_id: str) -> tuple[str, str]:
    """Run the no-retry submit (a fault already armed): it must fail with LimioOutcomeUnknownError. The run
    id and the failed try's log."""
    api, dag_id = local.api, "deploy_no_retry_submit"
    run_id = api.trigger(dag_id, {"external_id": external_id})
    assert api.wait_run(dag_id, run_id) == "failed", api.diagnose(dag_id, run_id)
    ti = api.ti(dag_id, run_id, "submit")
    assert ti["state"] == "failed" and ti["try_number"] == 1, ti
    log = api.log(dag_id, run_id, "submit", 1)
    assert "LimioOutcomeUnknownError" in log, log[-3000:]
    assert external_id in log
    return run_id, log


def _decide_and_clear(local: Deployment, run_id: str, external_id: str, log: str, decision: str) -> None:
    """The documented recovery: the Variable the error names, then clear the task; the run must succeed."""
    import re

    api, dag_id, variable = local.api, "deploy_no_retry_submit", f"limio_decision.{external_id}"
    match = re.search(rf'airflow variables set {re.escape(variable)} \\?"send ([0-9a-f]{{8}})', log)
    assert match, "the error does not say what to do"
    api.set_variable(variable, f"{decision} {match.group(1)}")  # the decision names the send it answers
    api.clear(dag_id, run_id, ["submit"])
    assert api.wait_run(dag_id, run_id) == "success", api.diagnose(dag_id, run_id)
    ti = api.ti(dag_id, run_id, "submit")
    assert ti["state"] == "success" and ti["try_number"] == 2, ti
    # A decision is used once: a later run that ends the same way must not apply it again unasked.
    assert api.variable(variable) is None, "the decision Variable is still set"


@pytest.mark.parametrize("answer", ["Reject", "Send"])
def test_a_batch_waits_for_a_person_and_sends_only_when_approved_through_the_rest_api(
    local: Deployment, emulator: LimioEmulator, tmp_path: Path, answer: str
) -> None:
    """Issue 21: the batch previews its orders, asks (Required Actions), and waits with no worker slot (3.3:
    ``awaiting_input``; 3.1: deferred to Airflow's HITLTrigger, under a real triggerer); a person's answer through
    the REST API resumes it under the real scheduler."""
    api, dag_id, prefix = local.api, "deploy_batch_approval", unique("approval")
    params = {"prefix": prefix, "count": 3, "ledger_path": f"file://{tmp_path}/ledger"}
    run_id = api.trigger(dag_id, {**params, "results_root": f"file://{tmp_path}"})
    # Airflow 3.3 parks the task awaiting input; 3.1 defers it to HITLTrigger, on the triggerer.
    api.wait_ti(dag_id, run_id, "submit_batch", states=("awaiting_input", "deferred"))
    path = f"dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/submit_batch/-1/hitlDetails"
    detail = api.get(path)
    assert detail["subject"] == "Send 3 Limio orders, total due 59.97?", detail
    assert detail["options"] == ["Send", "Reject"] and detail["defaults"] == ["Reject"], detail
    assert "| Orders to send | 3 |" in detail["body"]
    assert all(not emulator.orders_with_external_id(f"{prefix}-{i}") for i in range(3))  # previewed, not sent
    # Airflow 3.3.2: an answer that lands before the scheduler has seen the parked process exit makes that stale
    # "success" event fail the resumed task ("finished with state success, but ... queued"). A person takes
    # longer than the scheduler's loop; a script answering at once would hit it.
    time.sleep(3)
    api.send("PATCH", path, {"chosen_options": [answer], "params_input": {}})
    state = api.wait_run(dag_id, run_id)
    if answer == "Send":
        assert state == "success", api.diagnose(dag_id, run_id)
        assert all(len(emulator.orders_with_external_id(f"{prefix}-{i}")) == 1 for i in range(3))
    else:
        assert state == "failed", api.diagnose(dag_id, run_id)
        assert all(not emulator.orders_with_external_id(f"{prefix}-{i}") for i in range(3))
        answered = api.get(path)
        assert answered["chosen_options"] == ["Reject"] and answered["response_received"], answered
        assert api.ti(dag_id, run_id, "submit_batch")["state"] == "failed"


def test_unknown_outcome_not_in_limio_decided_send(local: Deployment, emulator: LimioEmulator) -> None:
    external_id = unique("unknown-send")
    # The connection closes before Limio processes anything: the order does not exist, nobody can know that.
    emulator.add_fault(Fault(route="order", action="drop", external_id=external_id, times=1))
    run_id, log = _fail_with_unknown_outcome(local, emulator, external_id)
    assert emulator.orders_with_external_id(external_id) == []

    _decide_and_clear(local, run_id, external_id, log, "send")
    order = one_order(emulator, external_id)
    assert local.api.xcom("deploy_no_retry_submit", run_id, "submit", "order_id") == order["id"]


def test_unknown_outcome_in_limio_but_not_found_decided_adopt(local: Deployment, emulator: LimioEmulator) -> None:
    external_id = unique("unknown-adopt")
    # Limio creates the order and answers 502; the lookups that follow do not find it (an empty order list).
    emulator.add_fault(Fault(route="order", action="process_then_status", status=502, external_id=external_id, times=1))
    emulator.add_fault(Fault(route="list_orders", action="process_then_garbage", body={"items": []}, times=2))
    try:
        run_id, log = _fail_with_unknown_outcome(local, emulator, external_id)
    finally:
        emulator.clear_faults()
    order = one_order(emulator, external_id)

    _decide_and_clear(local, run_id, external_id, log, f"adopt {order['id']}")
    assert one_order(emulator, external_id)["id"] == order["id"]
    assert local.api.xcom("deploy_no_retry_submit", run_id, "submit", "order_id") == order["id"]
    assert local.api.xcom("deploy_no_retry_submit", run_id, "submit", "adopted") is True


def test_example_dags_run_and_a_second_run_adopts_every_order(local: Deployment, emulator: LimioEmulator) -> None:
    """The shipped examples as a user runs them: the renewals twice (the second run must adopt every order the
    first sent), the reconciliation once (one adjustment held back by its preview check)."""
    api = local.api
    renewals = [api.trigger("limio_scheduled_renewals"), api.trigger("limio_scheduled_renewals")]
    reconciliation = api.trigger("limio_billing_reconciliation")
    for dag_id, run_id in [
        *(("limio_scheduled_renewals", r) for r in renewals),
        ("limio_billing_reconciliation", reconciliation),
    ]:
        assert api.wait_run(dag_id, run_id, timeout=2 * RUN_SECONDS) == "success", api.diagnose(dag_id, run_id)

    # The renewals due on the run's day, as the DAG reads them from its sample export.
    day = api.run("limio_scheduled_renewals", renewals[0])["run_after"][:10]
    with (EXAMPLE_DAGS / "data" / "renewals_due.csv").open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["due_date"] <= day]
    due = sorted(rows, key=lambda row: (row["due_date"], row["subscription_id"]))
    assert due, "no renewal due: the test would prove nothing"
    for i, row in enumerate(due):
        order = one_order(emulator, f"renew-{row['subscription_id']}-{row['due_date']}")
        ids = [api.xcom("limio_scheduled_renewals", r, "submit_renewals", "order_id", map_index=i) for r in renewals]
        adopted = [api.xcom("limio_scheduled_renewals", r, "submit_renewals", "adopted", map_index=i) for r in renewals]
        assert ids == [order["id"]] * 2 and sorted(adopted) == [False, True], (row, ids, adopted)
    for run_id in renewals:
        summary = api.xcom("limio_scheduled_renewals", run_id, "summarize")
        assert summary["submitted"] == summary["previewed"] == len(due), summary

    day = api.run("limio_billing_reconciliation", reconciliation)["run_after"][:10]
    states = api.states("limio_billing_reconciliation", reconciliation)
    assert sorted(str(s) for t, s in states.items() if t.startswith("submit_adjustments[")) == [
        "skipped",
        "success",
        "success",
    ]
    assert states["submit_partner_adjustments[0]"] == "success", states
    for adjustment in ("adj-0001", "adj-0002", "adj-0004"):
        one_order(emulator, f"recon-{adjustment}-{day}")
    assert emulator.orders_with_external_id(f"recon-adj-0003-{day}") == []  # over the limit: held for review


def test_backfill_example_from_the_trigger_button(
    local: Deployment, emulator: LimioEmulator, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The backfill example triggered as the UI's Trigger button does (no logical date, no conf): it sends the
    file of the day it was triggered, through the batch operator and a ledger, not a file named ``None``."""
    import json
    from datetime import UTC, datetime, timedelta

    from limio_provider.testing import sample_order

    root, ledger = tmp_path_factory.mktemp("renewals"), tmp_path_factory.mktemp("ledger")
    (root / "renewals").mkdir()
    now = datetime.now(UTC)
    days = sorted({(now + timedelta(days=d)).date().isoformat() for d in (0, 1)})  # a trigger near midnight
    for day in days:
        lines = [json.dumps(sample_order(f"deploy-backfill-{day}-{n}")) for n in (1, 2)]
        (root / "renewals" / f"{day}.jsonl").write_text("\n".join(lines) + "\n")
    local.api.set_variable("limio_renewals_root", root.as_uri())
    local.api.set_variable("limio_ledger_path", ledger.as_uri())
    run_id = local.api.trigger("limio_backfill_orders")
    assert local.api.wait_run("limio_backfill_orders", run_id, timeout=RUN_SECONDS) == "success", local.api.diagnose(
        "limio_backfill_orders", run_id
    )
    day = local.api.run("limio_backfill_orders", run_id)["run_after"][:10]
    for n in (1, 2):
        one_order(emulator, f"deploy-backfill-{day}-{n}")
    summary = local.api.xcom("limio_backfill_orders", run_id, "submit_renewals")
    assert summary["counts"]["submitted"] == 2 and summary["results_path"].endswith(f"/renewals/{day}.results.jsonl")


def test_the_renewals_orders_asset_starts_limio_orders_reconciliation_under_the_scheduler(
    local: Deployment, emulator: LimioEmulator
) -> None:
    """Last in this module: the scheduler is restarted with its own scheduling on (the deployment runs it off,
    and Airflow creates asset-triggered runs only when it is on), every DAG but the renewals and the check
    paused. The renewals' asset events start limio_orders_reconciliation, which reconciles the orders they name
    with Limio's (their process events too)."""
    api = local.api
    for dag in api.get("dags", limit=100)["dags"]:
        if dag["dag_id"] not in ("limio_scheduled_renewals", "limio_orders_reconciliation"):
            api.send("PATCH", f"dags/{dag['dag_id']}", {"is_paused": True})
    scheduler = next(service for service in local.processes.services if service.name == "scheduler")
    scheduler.killed = True  # stopped on purpose
    scheduler.stop()
    scheduling = {"AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "True"}
    local.processes.start("scheduler-scheduling", [*AIRFLOW, "scheduler"], env=scheduling)

    dag_id = "limio_scheduled_renewals"
    run_id = api.trigger(dag_id)
    assert api.wait_run(dag_id, run_id) == "success", api.diagnose(dag_id, run_id)
    tis = api.task_instances("limio_scheduled_renewals", run_id)
    count = sum(1 for ti in tis if ti["task_id"] == "submit_renewals")
    renewal_ids = {
        api.xcom("limio_scheduled_renewals", run_id, "submit_renewals", "order_id", map_index=i) for i in range(count)
    } - {None}
    assert renewal_ids, "the renewals run sent no order: the test would prove nothing"

    def finished_runs_naming_the_renewals() -> list[dict] | None:
        runs = api.get("dags/limio_orders_reconciliation/dagRuns", limit=100)["dag_runs"]
        finished = [run for run in runs if run["state"] in ("success", "failed")]
        named: set[str] = set()
        for run in finished:
            path = f"dags/limio_orders_reconciliation/dagRuns/{quote(run['dag_run_id'], safe='')}/upstreamAssetEvents"
            named |= {(event["extra"] or {}).get("order_id") for event in api.get(path)["asset_events"]}
        return finished if renewal_ids <= named else None

    what = "limio_orders_reconciliation to run on the renewals' events"
    finished = wait_until(what, finished_runs_naming_the_renewals, RUN_SECONDS, 1.0)
    assert {run["run_type"] for run in finished} == {"asset_triggered"}, finished
    assert {run["state"] for run in finished} == {"success"}, [
        api.diagnose("limio_orders_reconciliation", run["dag_run_id"]) for run in finished
    ]
    summaries = [api.xcom("limio_orders_reconciliation", run["dag_run_id"], "reconcile") for run in finished]
    assert all(summary["problems"] == 0 for summary in summaries), summaries
    assert sum(summary["counts"].get("created", 0) for summary in summaries) >= len(renewal_ids), summaries
    related = {r.path for r in emulator.requests if r.method == "GET" and r.path.endswith("/related")}
    assert {f"/api/objects/limio/orders/{order_id}/related" for order_id in renewal_ids} <= related
