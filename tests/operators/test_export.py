"""The export of Limio objects to JSON Lines, against the emulator: every page, the run's window, bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG

from limio_provider.hooks.limio import LimioHook
from limio_provider.operators.export import LimioExportObjectsOperator
from limio_provider.testing import Fault, LimioEmulator
from tests.helpers import START, needs_airflow, new_order, run_dag, states, xcom

pytestmark = pytest.mark.usefixtures("airflow_db")
LIST = "/api/objects/limio/orders"


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def list_reads(emulator: LimioEmulator) -> list[Any]:
    return [request for request in emulator.requests if request.path == LIST]


def test_every_order_through_every_page_once(limio_emulator: LimioEmulator, tmp_path: Path) -> None:
    hook = LimioHook()
    ids = {hook.submit_order(new_order(f"exp-{n}")).id for n in range(7)}
    target = tmp_path / "out" / "orders.jsonl"
    with DAG("limio_export_all", schedule=None, start_date=START) as dag:
        LimioExportObjectsOperator(task_id="export", object_type="orders", path=target.as_uri(), page_size=3)
    run = run_dag(dag)
    assert states(run) == {"export": "success"}
    exported = lines(target)
    assert sorted(order["id"] for order in exported) == sorted(ids)  # each once
    assert {order["external_id"] for order in exported} == {f"exp-{n}" for n in range(7)}
    (summary,) = xcom(run, "export")
    assert summary == {
        "object_type": "orders",
        "path": target.as_uri(),
        "exported": 7,
        "undated": 0,
        "outside_window": 0,
        "pages": 3,
        "window": None,  # a manual run's interval is a point: everything
        "resumed": False,
    }
    assert not (tmp_path / "out" / "orders.jsonl.parts").exists()  # the parts are joined and removed

    bounded = tmp_path / "two-pages.jsonl"
    with DAG("limio_export_max_pages", schedule=None, start_date=START) as dag:
        LimioExportObjectsOperator(
            task_id="export", object_type="orders", path=bounded.as_uri(), page_size=3, max_pages=2
        )
    run = run_dag(dag)
    assert len(lines(bounded)) == 6 and xcom(run, "export")[0]["pages"] == 2  # the last page read is written


def test_the_runs_window_and_stopping_at_its_start(limio_emulator: LimioEmulator, tmp_path: Path) -> None:
    """Orders made two days apart (the emulator's clock moved on): a window around the second day keeps only
    its orders; with ``stop_at_window_start`` (the emulator lists newest first) the older pages are not read."""
    hook = LimioHook()
    old = {hook.submit_order(new_order(f"old-{n}")).id for n in range(6)}
    limio_emulator.advance(2 * 86400)
    new = {hook.submit_order(new_order(f"new-{n}")).id for n in range(2)}
    now = datetime.now(UTC) + timedelta(days=2)
    context: dict[str, Any] = {
        "data_interval_start": now - timedelta(hours=1),
        "data_interval_end": now + timedelta(hours=1),
    }
    for stop in (False, True):
        target = tmp_path / f"window-{stop}.jsonl"
        export = LimioExportObjectsOperator(
            task_id=f"window_{stop}",
            object_type="orders",
            path=target.as_uri(),
            page_size=2,
            stop_at_window_start=stop,
        )
        before = len(list_reads(limio_emulator))
        summary = export.execute(context)  # type: ignore[arg-type]
        assert {order["id"] for order in lines(target)} == new
        assert summary["exported"] == 2 and summary["window"] == [
            context["data_interval_start"].isoformat(),
            context["data_interval_end"].isoformat(),
        ]
        reads = len(list_reads(limio_emulator)) - before
        assert (reads, summary["outside_window"]) == ((2, 2) if stop else (4, len(old))), (stop, summary)


def test_a_bad_object_type_fails_before_any_call(limio_emulator: LimioEmulator, tmp_path: Path) -> None:
    with DAG("limio_export_bad", schedule=None, start_date=START) as dag:
        LimioExportObjectsOperator(task_id="export", object_type="order", path=(tmp_path / "x.jsonl").as_uri())
    run = run_dag(dag)
    assert states(run) == {"export": "failed"}
    assert limio_emulator.requests == []
    with pytest.raises(ValueError, match="page_size must be an integer from 1 to 1000"):
        LimioExportObjectsOperator(task_id="big", object_type="orders", path="file:///x", page_size=5000)


@needs_airflow("3.3", "task_state_store, where the export records its progress, is Airflow 3.3's")
def test_a_retry_resumes_after_the_last_recorded_part(
    limio_emulator: LimioEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The third page read fails (a 500, no read retries): the retry starts at the cursor the first try recorded
    after its second part, not at the first page, and the file has every order once."""
    import limio_provider.operators.export as export_module

    monkeypatch.setattr(export_module, "PART_OBJECTS", 2)
    hook = LimioHook()
    ids = {hook.submit_order(new_order(f"resume-{n}")).id for n in range(9)}
    # Seeded: the first two list reads pass, the third fails (once).
    limio_emulator.add_fault(Fault(route="list_orders", status=500, times=1, probability=0.5, seed=0))
    target = tmp_path / "resumed.jsonl"
    with DAG("limio_export_resume", schedule=None, start_date=START) as dag:
        LimioExportObjectsOperator(
            task_id="export",
            object_type="orders",
            path=target.as_uri(),
            page_size=2,
            hook_params={"retry_limit": 0},
            retries=1,
            retry_delay=timedelta(0),
        )
    run = run_dag(dag)
    assert states(run) == {"export": "success"}
    reads = list_reads(limio_emulator)
    assert [read.status for read in reads][:3] == [200, 200, 500]
    assert sum("queryMore" not in read.query for read in reads) == 1  # the first page was read once
    assert reads[3].query["queryMore"] == reads[2].query["queryMore"]  # the retry re-reads the failed page
    assert sorted(order["id"] for order in lines(target)) == sorted(ids)
    (summary,) = xcom(run, "export")
    assert summary["resumed"] is True and summary["exported"] == 9 and summary["pages"] == 5, summary
    assert not (tmp_path / "resumed.jsonl.parts").exists()


def test_process_events_exported_as_limio_sent_them(limio_emulator: LimioEmulator, tmp_path: Path) -> None:
    """Any Objects API type, not only orders: the process events, whole (plugin errors included)."""
    limio_emulator.add_fault(Fault(route="order", action="billing_fails", external_id="exp-bf"))
    hook = LimioHook()
    for external_id in ("exp-ok", "exp-bf"):
        hook.submit_order(new_order(external_id, process_immediately=True))
    target = tmp_path / "process.jsonl"
    with DAG("limio_export_process", schedule=None, start_date=START) as dag:
        LimioExportObjectsOperator(task_id="export", object_type="process", path=target.as_uri(), window="all")
    run = run_dag(dag)
    assert states(run) == {"export": "success"}
    exported = {event["external_id"]: event for event in lines(target)}
    assert sorted(exported) == ["exp-bf", "exp-ok"]
    assert exported["exp-ok"]["pluginErrorOutput"] == []
    assert exported["exp-bf"]["pluginErrorOutput"][0]["name"] == "zuora"
    assert [r.path for r in limio_emulator.requests if "/objects/" in r.path] == ["/api/objects/limio/process"]


def test_an_export_to_s3_joins_its_parts_and_leaves_none(
    limio_emulator: LimioEmulator, s3_ledger_root: str, moto_s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On object storage (moto's S3): the parts are objects under ``<path>.parts/``, joined and removed."""
    import limio_provider.operators.export as export_module
    from tests.helpers import moto_client

    monkeypatch.setattr(export_module, "PART_OBJECTS", 2)
    hook = LimioHook()
    ids = {hook.submit_order(new_order(f"s3-{n}")).id for n in range(5)}
    root = s3_ledger_root.removesuffix("/ledger")
    bucket = root.split("@", 1)[1]
    with DAG("limio_export_s3", schedule=None, start_date=START) as dag:
        LimioExportObjectsOperator(
            task_id="export", object_type="orders", path=f"{root}/exports/orders.jsonl", page_size=2
        )
    run = run_dag(dag)
    assert states(run) == {"export": "success"}
    s3 = moto_client(moto_s3)
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix="exports/").get("Contents", [])]
    assert keys == ["exports/orders.jsonl"]  # no part left behind
    body = s3.get_object(Bucket=bucket, Key="exports/orders.jsonl")["Body"].read().decode()
    assert sorted(json.loads(line)["id"] for line in body.splitlines()) == sorted(ids)
