"""The example DAGs in dags_examples/: they parse cleanly and run to success against the Limio emulator."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from limio_provider.testing import Fault, LimioEmulator, sample_order
from tests.helpers import moto_client, run_dag, states, xcom

pytestmark = pytest.mark.usefixtures("airflow_db")

EXAMPLES = Path(__file__).resolve().parents[2] / "dags_examples"
DAG_IDS = {
    "limio_scheduled_renewals",
    "limio_billing_reconciliation",
    "limio_backfill_orders",
    "limio_orders_reconciliation",
}


def day(d: int, month: int = 1, year: int = 2026) -> datetime:
    return datetime(year, month, d, tzinfo=UTC)


@pytest.fixture
def limio_emulator(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[LimioEmulator]:
    """The plugin's emulator, strict (as Limio is) unless a test is parametrised ``indirect`` with "lenient":
    a DAG written against the strict emulator must run unchanged against the lenient one."""
    with LimioEmulator(lenient=getattr(request, "param", "strict") == "lenient") as emulator:
        for name, value in emulator.connection_env().items():
            monkeypatch.setenv(name, value)
        yield emulator


STRICT_AND_LENIENT = pytest.mark.parametrize("limio_emulator", ["strict", "lenient"], indirect=True)


@pytest.fixture(scope="module")
def dagbag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(EXAMPLES))


def example(dagbag: Any, dag_id: str) -> Any:
    """A fresh copy of an example DAG: dag.test() runs tasks in this process, and a run's ``run_conf``
    is written into the tasks' own ``Param`` objects (``process_params``), so it would leak into the next
    run of the same DAG object. ``BaseOperator.__deepcopy__`` shares ``params`` with the original (a
    shallow-copied attribute), so each task's params are copied too."""
    dag = copy.deepcopy(dagbag.get_dag(dag_id))
    for task in dag.tasks:
        task.params = copy.deepcopy(task.params)
    return dag


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
    assert backfill.max_active_runs == 1
    assert {name: backfill.params[name] for name in ("dry_run", "day")} == {"dry_run": False, "day": None}
    (submit,) = backfill.tasks
    assert type(submit).__name__ == "LimioSubmitOrdersOperator"
    assert "renewals/" in submit.orders_path and "{{" in submit.orders_path  # a template: no parse-time I/O
    assert dagbag.get_dag("limio_scheduled_renewals").catchup is False


# -- limio_scheduled_renewals ---------------------------------------------------------------------


@STRICT_AND_LENIENT
def test_renewals_previews_then_submits_the_due_renewals(
    dagbag: Any, limio_emulator: LimioEmulator, task_log: Callable[[], str]
) -> None:
    task_log()
    run = run_dag(example(dagbag, "limio_scheduled_renewals"), logical_date=day(1))
    assert run.state == "success", states(run)
    assert "error" not in task_log().lower()  # a run that is fine prints no error (e.g. "XCom not found")

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


def test_renewals_reads_the_file_named_by_the_param(dagbag: Any, limio_emulator: LimioEmulator, tmp_path: Path) -> None:
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


@STRICT_AND_LENIENT
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


class Renewals:
    """The backfill's daily renewal files and their results, in a fresh moto bucket (through boto3, not the
    code under test)."""

    def __init__(self, moto_s3: str, ledger_root: str) -> None:

        self.bucket = ledger_root.split("@", 1)[1].split("/", 1)[0]
        self.ledger_root = ledger_root  # s3://limio_s3@<bucket>/ledger: limio_ledger_path
        self.root = ledger_root.removesuffix("/ledger") + "/limio"  # limio_renewals_root, in the same bucket
        self.s3 = moto_client(moto_s3)

    def write(self, ds: str, count: int) -> list[str]:
        """``<root>/renewals/<ds>.jsonl`` with ``count`` orders; their external_ids in file order."""
        ids = [f"renewal-{ds}-{n}" for n in range(1, count + 1)]
        body = "".join(json.dumps(sample_order(external_id)) + "\n" for external_id in ids)
        self.s3.put_object(Bucket=self.bucket, Key=f"limio/renewals/{ds}.jsonl", Body=body.encode())
        return ids

    def results(self, ds: str, dry_run: bool = False) -> list[dict[str, Any]]:
        """The lines of ``<root>/renewals/<ds>.results.jsonl`` (a dry run's: ``<ds>.results.dry-run.jsonl``)."""
        key = f"limio/renewals/{ds}.results{'.dry-run' if dry_run else ''}.jsonl"
        data = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return [json.loads(line) for line in data.decode().splitlines()]

    def keys(self, prefix: str) -> list[str]:
        listing = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for item in listing.get("Contents", []))


@pytest.fixture
def renewals(moto_s3: str, s3_ledger_root: str, monkeypatch: pytest.MonkeyPatch) -> Renewals:
    """A moto bucket holding the renewal files and the ledger, named to the DAG by its two Variables."""
    renewals = Renewals(moto_s3, s3_ledger_root)
    monkeypatch.setenv("AIRFLOW_VAR_LIMIO_RENEWALS_ROOT", renewals.root)
    monkeypatch.setenv("AIRFLOW_VAR_LIMIO_LEDGER_PATH", renewals.ledger_root)
    return renewals


def order_ids(emulator: LimioEmulator, ids: list[str]) -> dict[str, str]:
    """The Limio order id of each external_id in ``ids`` (each must have exactly one order)."""
    found = {}
    for external_id in ids:
        (order,) = emulator.orders_with_external_id(external_id)
        found[external_id] = order["id"]
    return found


@STRICT_AND_LENIENT
def test_backfill_submits_each_days_file_once_and_a_rerun_adopts(
    dagbag: Any, limio_emulator: LimioEmulator, renewals: Renewals
) -> None:
    files = {"2026-01-01": renewals.write("2026-01-01", 3), "2026-01-02": renewals.write("2026-01-02", 2)}
    renewals.write("2026-01-03", 2)  # a later day's file: neither run may read it
    dag = example(dagbag, "limio_backfill_orders")

    runs = {"2026-01-01": run_dag(dag, logical_date=day(1)), "2026-01-02": run_dag(dag, logical_date=day(2))}
    assert [run.state for run in runs.values()] == ["success", "success"], [states(r) for r in runs.values()]
    assert sorted(external_ids(limio_emulator)) == sorted(files["2026-01-01"] + files["2026-01-02"])
    assert len(posted(limio_emulator, "/api/order")) == 5
    created = {ds: order_ids(limio_emulator, ids) for ds, ids in files.items()}  # one order per external_id
    assert renewals.keys("limio/renewals/") == [
        f"limio/renewals/2026-01-0{d}{suffix}" for d in (1, 2) for suffix in (".jsonl", ".results.jsonl")
    ] + ["limio/renewals/2026-01-03.jsonl"]
    for ds, run in runs.items():
        rows = renewals.results(ds)
        assert sorted(row["line"] for row in rows) == list(range(1, len(files[ds]) + 1))
        assert {row["external_id"]: (row["outcome"], row["order_id"]) for row in rows} == {
            external_id: ("submitted", order_id) for external_id, order_id in created[ds].items()
        }
        (summary,) = xcom(run, "submit_renewals")
        assert summary["counts"]["submitted"] == summary["total"] == len(files[ds])
        assert (summary["failures"], summary["dry_run"]) == (0, False)
        assert summary["results_path"] == f"{renewals.root}/renewals/{ds}.results.jsonl"
    assert renewals.keys("ledger/"), "nothing was recorded in the S3 ledger"

    # A new run of day 1 (another run id, same logical date) finds every order in the ledger: it adopts
    # them and sends nothing.
    rerun = run_dag(dag, logical_date=day(1))
    assert rerun.state == "success", states(rerun)
    assert rerun.run_id != runs["2026-01-01"].run_id
    assert len(posted(limio_emulator, "/api/order")) == 5  # no new order POST
    assert sorted(external_ids(limio_emulator)) == sorted(files["2026-01-01"] + files["2026-01-02"])
    assert {row["external_id"]: (row["outcome"], row["order_id"]) for row in renewals.results("2026-01-01")} == {
        external_id: ("adopted", order_id) for external_id, order_id in created["2026-01-01"].items()
    }
    (summary,) = xcom(rerun, "submit_renewals")
    assert summary["counts"]["adopted"] == summary["total"] == 3
    assert summary["counts"]["submitted"] == summary["failures"] == 0


def test_backfill_dry_run_previews_every_order_and_submits_nothing(
    dagbag: Any, limio_emulator: LimioEmulator, renewals: Renewals
) -> None:
    ids = renewals.write("2026-01-03", 2)
    run = run_dag(example(dagbag, "limio_backfill_orders"), logical_date=day(3), run_conf={"dry_run": True})
    assert run.state == "success", states(run)

    assert sorted(p["external_id"] for p in posted(limio_emulator, "/api/order/preview")) == ids
    assert posted(limio_emulator, "/api/order") == [] and limio_emulator.orders == {}
    rows = renewals.results("2026-01-03", dry_run=True)
    assert sorted((row["external_id"], row["outcome"]) for row in rows) == [(i, "dry_run") for i in ids]
    assert "limio/renewals/2026-01-03.results.jsonl" not in renewals.keys("limio/renewals/")  # the real run's
    assert {row["total_due"] for row in rows} == {"19.99"}  # one seat of offer-digital-monthly each
    (summary,) = xcom(run, "submit_renewals")
    assert (summary["dry_run"], summary["counts"]["dry_run"], summary["counts"]["submitted"]) == (True, 2, 0)
    assert renewals.keys("ledger/") == ["ledger/.ledger"]  # a rehearsal records nothing (the fixture's .ledger)


def test_backfill_without_a_logical_date_reads_the_run_after_day(
    dagbag: Any, limio_emulator: LimioEmulator, renewals: Renewals
) -> None:
    """A manual trigger may have no logical date (``ds`` unset): the run reads its ``run_after`` day's file,
    or the ``day`` param's."""
    day3, day4 = renewals.write("2026-01-03", 1), renewals.write("2026-01-04", 2)

    run = run_dag(example(dagbag, "limio_backfill_orders"), logical_date=None, run_after=day(4) + timedelta(hours=9))
    assert run.state == "success", states(run)
    assert run.logical_date is None
    assert sorted(external_ids(limio_emulator)) == day4
    assert [row["outcome"] for row in renewals.results("2026-01-04")] == ["submitted", "submitted"]
    (summary,) = xcom(run, "submit_renewals")
    assert summary["results_path"] == f"{renewals.root}/renewals/2026-01-04.results.jsonl"

    chosen = run_dag(
        example(dagbag, "limio_backfill_orders"),
        logical_date=None,
        run_after=day(4) + timedelta(hours=10),
        run_conf={"day": "2026-01-03"},
    )
    assert chosen.state == "success", states(chosen)
    assert sorted(external_ids(limio_emulator)) == sorted(day4 + day3)
    assert [row["outcome"] for row in renewals.results("2026-01-03")] == ["submitted"]
    assert not [key for key in renewals.keys("limio/") if "None" in key]


# -- limio_orders_reconciliation ------------------------------------------------------------------------


def triggering(uri: str, before: int = 0) -> dict[str, list[Any]]:
    """``triggering_asset_events`` as a run of limio_orders_reconciliation gets it: the events Airflow recorded
    on ``uri`` (after the first ``before``), each with its ``extra``."""
    from tests.assets.test_limio import events

    return {uri: [SimpleNamespace(extra=extra) for extra in events(uri)[before:]]}


def reconcile(dagbag: Any, ids: list[str], report: Path) -> tuple[dict[str, Any] | None, Exception | None]:
    """The example's ``reconcile`` task, run on ``ids`` (what ``intended_orders`` returned) as its run would."""
    task = copy.copy(dagbag.get_dag("limio_orders_reconciliation").get_task("reconcile"))
    task.external_ids, task.report_path = ids, report.as_uri()
    pushed: dict[str, Any] = {}
    ti = SimpleNamespace(xcom_push=lambda key, value: pushed.update({key: value}))
    try:
        return task.execute({"ti": ti}), None
    except Exception as error:  # the summary was pushed before the task failed
        return pushed.get("return_value"), error


def test_orders_reconciliation_reconciles_what_a_mapped_submit_and_a_batch_recorded(
    dagbag: Any, limio_emulator: LimioEmulator, renewals: Renewals, tmp_path: Path
) -> None:
    from tests.assets.test_limio import events

    uri = f"limio://localhost:{limio_emulator.url.rsplit(':', 1)[1]}/orders"  # the emulator, as the tenant
    before = len(events(uri))
    assert run_dag(example(dagbag, "limio_scheduled_renewals"), logical_date=day(1)).state == "success"
    renewals.write("2026-01-01", 2)
    assert run_dag(example(dagbag, "limio_backfill_orders"), logical_date=day(1)).state == "success"

    intended = dagbag.get_dag("limio_orders_reconciliation").get_task("intended_orders").python_callable
    ids = intended(triggering_asset_events=triggering(uri, before))
    assert sorted(ids) == sorted(external_ids(limio_emulator))  # four renewals (an event each), two backfill orders
    summary, error = reconcile(dagbag, ids, tmp_path / "report.jsonl")
    assert error is None and summary is not None
    assert summary["counts"] == {"created": 6} and summary["problems"] == 0, summary
    related = {r.path for r in limio_emulator.requests if r.path.endswith("/related")}
    assert related == {f"/api/objects/limio/orders/{order_id}/related" for order_id in limio_emulator.orders}


def test_orders_reconciliation_fails_naming_an_order_whose_billing_failed(
    dagbag: Any, limio_emulator: LimioEmulator, tmp_path: Path
) -> None:
    """Limio completes the order, but its billing plugin fails (the emulator's fault): only its process event
    says so, and the reconciliation names it with the plugin's message."""
    from limio_provider.hooks.limio import LimioHook

    limio_emulator.add_fault(Fault(route="order", action="billing_fails", external_id="EXT-BILLING-FAILS"))
    hook = LimioHook()
    hook.submit_order(sample_order("EXT-BILLED", process_immediately=True))
    failed = hook.submit_order(sample_order("EXT-BILLING-FAILS", process_immediately=True))
    assert failed.status == "complete"  # the order itself looks fine
    summary, error = reconcile(dagbag, ["EXT-BILLED", "EXT-BILLING-FAILS"], tmp_path / "report.jsonl")
    assert error is not None and summary is not None
    assert summary["counts"] == {"created": 1, "failed_downstream": 1}, summary
    assert "EXT-BILLING-FAILS failed_downstream (zuora: " in str(error)
