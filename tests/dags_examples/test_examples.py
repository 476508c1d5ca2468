"""The example DAGs in dags_examples/: they parse cleanly and run to success against the Limio emulator."""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from limio_provider.testing import LimioEmulator
from tests.helpers import run_dag, states, xcom

pytestmark = pytest.mark.usefixtures("airflow_db")

EXAMPLES = Path(__file__).resolve().parents[2] / "dags_examples"
DAG_IDS = {"limio_scheduled_renewals", "limio_billing_reconciliation", "limio_backfill_orders"}


def day(d: int, month: int = 1, year: int = 2026) -> datetime:
    return datetime(year, month, d, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def dagbag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(EXAMPLES))


def example(dagbag: Any, dag_id: str) -> Any:
    """A fresh copy of an example DAG: dag.test() runs tasks in this process, and a run's ``run_conf``
    is written into the DAG's own ``Param`` objects (``process_params``), so it would leak into the next
    run of the same DAG object."""
    return copy.deepcopy(dagbag.get_dag(dag_id))


def posted(emulator: LimioEmulator, path: str) -> list[dict[str, Any]]:
    """The bodies the emulator received on ``path`` (e.g. ``/api/order``), oldest first."""
    return [r.body for r in emulator.requests if r.method == "POST" and r.path == path]


def external_ids(emulator: LimioEmulator) -> list[str]:
    return [order["external_id"] for order in emulator.orders.values()]


def test_examples_parse_without_errors(dagbag: Any) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == DAG_IDS
    for dag_id in DAG_IDS:
        dag = dagbag.get_dag(dag_id)
        assert {"limio", "example"} <= set(dag.tags), dag_id
        assert dag.doc_md, dag_id
    backfill = dagbag.get_dag("limio_backfill_orders")
    assert backfill.catchup is True
    assert (backfill.start_date, backfill.end_date) == (day(1), day(5))
    assert dagbag.get_dag("limio_scheduled_renewals").catchup is False


# -- limio_scheduled_renewals ---------------------------------------------------------------------


def test_renewals_previews_then_submits_the_due_renewals(dagbag: Any, limio_emulator: LimioEmulator) -> None:
    run = run_dag(example(dagbag, "limio_scheduled_renewals"), logical_date=day(1))
    assert run.state == "success", states(run)

    expected = [
        "renew-sub-1001-2025-12-28",
        "renew-sub-1002-2025-12-31",
        "renew-sub-1003-2026-01-01",
        "renew-sub-1004-2026-01-01",
    ]  # sub-1005 is due on 2026-01-15: not yet
    previews = posted(limio_emulator, "/api/order/preview")
    submits = posted(limio_emulator, "/api/order")
    paths = [r.path for r in limio_emulator.requests if r.path.startswith("/api/order")]
    assert paths == ["/api/order/preview"] * 4 + ["/api/order"] * 4  # every preview before any submit
    assert sorted(p["external_id"] for p in previews) == expected
    assert sorted(s["external_id"] for s in submits) == expected
    assert sorted(external_ids(limio_emulator)) == expected  # four orders, no duplicate external_id
    assert {o["order_type"] for o in limio_emulator.orders.values()} == {"renew"}
    assert sorted(s["forSubscription"]["id"] for s in submits) == ["sub-1001", "sub-1002", "sub-1003", "sub-1004"]
    assert all(s["process_immediately"] is True and s["source"] == "airflow" for s in submits)

    results = xcom(run, "submit_renewals")
    assert [r["external_id"] for r in results] == expected  # map index order = due-date order
    due = sum(Decimal(p["schedule"][0]["amount"]) for p in xcom(run, "preview_renewals"))
    assert due > 0
    (summary,) = xcom(run, "summarize")
    assert summary == {
        "previewed": 4,
        "submitted": 4,
        "orders": [{"external_id": r["external_id"], "id": r["id"], "status": "complete"} for r in results],
        "total_due": str(due.quantize(Decimal("0.01"))),
    }
    assert {o["id"] for o in summary["orders"]} == set(limio_emulator.orders)


def test_renewals_reads_the_file_named_by_the_param(
    dagbag: Any, limio_emulator: LimioEmulator, tmp_path: Path
) -> None:
    csv = tmp_path / "due.csv"
    csv.write_text(
        "subscription_id,subscription_ref,customer_email,offer_id,due_date\n"
        "sub-9001,REF9001,x@example.com,offer-digital-monthly,2026-02-01\n"
        "sub-9002,REF9002,y@example.com,offer-digital-monthly,2026-02-02\n"
    )
    run = run_dag(
        example(dagbag, "limio_scheduled_renewals"), logical_date=day(1, month=2), run_conf={"renewals_file": str(csv)}
    )
    assert run.state == "success", states(run)
    assert external_ids(limio_emulator) == ["renew-sub-9001-2026-02-01"]
    (summary,) = xcom(run, "summarize")
    assert (summary["previewed"], summary["submitted"]) == (1, 1)


def test_renewals_on_a_day_with_nothing_due_submits_nothing(
    dagbag: Any, limio_emulator: LimioEmulator, tmp_path: Path
) -> None:
    csv = tmp_path / "due.csv"
    csv.write_text(
        "subscription_id,subscription_ref,customer_email,offer_id,due_date\n"
        "sub-9003,REF9003,z@example.com,offer-digital-monthly,2026-03-01\n"
    )
    run = run_dag(
        example(dagbag, "limio_scheduled_renewals"), logical_date=day(1, month=2), run_conf={"renewals_file": str(csv)}
    )
    assert run.state == "success", states(run)
    assert states(run)["submit_renewals"] == "skipped"  # mapped over no orders
    assert limio_emulator.requests == []
    assert xcom(run, "summarize") == [{"previewed": 0, "submitted": 0, "orders": [], "total_due": "0.00"}]


# -- limio_billing_reconciliation -----------------------------------------------------------------


def test_reconciliation_submits_adjustments_and_holds_the_expensive_one(
    dagbag: Any, limio_emulator: LimioEmulator
) -> None:
    run = run_dag(example(dagbag, "limio_billing_reconciliation"), logical_date=day(1))
    assert run.state == "success", states(run)
    assert states(run) == {
        "reconcile_billing": "success",
        "build_change_orders": "success",
        "build_partner_orders": "success",
        "submit_adjustments[0]": "success",
        "submit_adjustments[1]": "success",
        "submit_adjustments[2]": "skipped",  # adj-0003 would charge 199.00, over MAX_ADJUSTMENT_AMOUNT
        "submit_partner_adjustments[0]": "success",
    }

    previews = posted(limio_emulator, "/api/order/preview")
    assert sorted(p["external_id"] for p in previews) == [f"recon-adj-000{i}-2026-01-01" for i in (1, 2, 3, 4)]
    assert limio_emulator.orders_with_external_id("recon-adj-0003-2026-01-01") == []

    direct = {body["external_id"]: body for body in posted(limio_emulator, "/api/order")}  # any map order
    assert sorted(direct) == ["recon-adj-0001-2026-01-01", "recon-adj-0002-2026-01-01"]
    downgrade, cancel = direct["recon-adj-0001-2026-01-01"], direct["recon-adj-0002-2026-01-01"]
    assert downgrade["order_type"] == "change_offer"
    assert downgrade["offer"] == {"id": "offer-digital-monthly"}
    assert downgrade["forSubscription"] == {"id": "sub-2001"}
    assert cancel["order_type"] == "cancel_subscription"
    assert cancel["forSubscription"] == {"id": "sub-2002"}
    assert "forPartner" not in downgrade and "forPartner" not in cancel

    (partner,) = posted(limio_emulator, "/api/admin/order")
    assert partner["forPartner"] == {"id": "partner-org-newsagents"}
    assert (partner["order_type"], partner["external_id"]) == ("change_offer", "recon-adj-0004-2026-01-01")

    assert sorted(external_ids(limio_emulator)) == [f"recon-adj-000{i}-2026-01-01" for i in (1, 2, 4)]
    assert [r["external_id"] for r in xcom(run, "submit_adjustments")] == [
        "recon-adj-0001-2026-01-01",
        "recon-adj-0002-2026-01-01",
    ]
    (partner_result,) = xcom(run, "submit_partner_adjustments")
    assert partner_result["id"] in limio_emulator.orders


# -- limio_backfill_orders ------------------------------------------------------------------------


def test_backfill_one_order_per_day_rehearsed_with_dry_run(dagbag: Any, limio_emulator: LimioEmulator) -> None:
    dag = example(dagbag, "limio_backfill_orders")

    first = run_dag(dag, logical_date=day(1))
    second = run_dag(dag, logical_date=day(2))
    assert (first.state, second.state) == ("success", "success")
    assert external_ids(limio_emulator) == ["backfill-2026-01-01", "backfill-2026-01-02"]
    assert [o["orderDate"] for o in limio_emulator.orders.values()] == ["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"]
    assert {o["order_type"] for o in limio_emulator.orders.values()} == {"new"}
    (result,) = xcom(first, "submit_order")
    assert (result["external_id"], result["status"]) == ("backfill-2026-01-01", "complete")

    # Re-running a day (a new run id) sends the same external_id, so the operator adopts the order the
    # first run created instead of submitting it twice.
    rerun = run_dag(dag, logical_date=day(1))
    assert rerun.state == "success", states(rerun)
    assert rerun.run_id != first.run_id
    (again,) = xcom(rerun, "submit_order")
    assert (again["external_id"], again["id"]) == ("backfill-2026-01-01", result["id"])
    assert len(limio_emulator.orders_with_external_id("backfill-2026-01-01")) == 1
    assert len(posted(limio_emulator, "/api/order")) == 2

    # A rehearsal of another day previews and submits nothing.
    rehearsal = run_dag(example(dagbag, "limio_backfill_orders"), logical_date=day(3), run_conf={"dry_run": True})
    assert rehearsal.state == "success", states(rehearsal)
    (dry,) = xcom(rehearsal, "submit_order")
    assert dry["dry_run"] is True and dry["order"]["external_id"] == "backfill-2026-01-03"
    assert dry["preview"]["schedule"][0]["amount"] == "99.95"  # 5 seats of offer-digital-monthly
    assert posted(limio_emulator, "/api/order/preview")[-1]["external_id"] == "backfill-2026-01-03"
    assert len(posted(limio_emulator, "/api/order")) == 2  # no new submission
    assert external_ids(limio_emulator) == ["backfill-2026-01-01", "backfill-2026-01-02"]
