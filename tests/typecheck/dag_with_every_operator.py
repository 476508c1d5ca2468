"""A DAG as a user writes one, for ``make lint``: mypy must accept every operator used the usual ways
(literal dicts, models, XComArgs, templates, mapping, ``>>``). Never run; pytest does not collect it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow.providers.common.compat.sdk import dag, task

from limio_provider.models import NewOrder
from limio_provider.operators import (
    LimioAdminSubmitOrderOperator,
    LimioExportObjectsOperator,
    LimioPreviewOrderOperator,
    LimioReconcileOrdersOperator,
    LimioSubmitOrderOperator,
    LimioSubmitOrdersOperator,
)
from limio_provider.sensors.limio import LimioOrderSensor


def accept_cheap(preview: Any) -> bool | str:
    return preview.total_due() < 100 or f"total due {preview.total_due()} is 100 or more"


@task
def orders() -> list[dict[str, Any]]:
    return [{"order_type": "new", "external_id": "renewal-1", "orderItems": []}]


@dag(schedule=None, start_date=datetime(2026, 1, 1, tzinfo=UTC))
def every_operator() -> None:
    built = orders()
    preview = LimioPreviewOrderOperator(task_id="preview", order={"order_type": "new", "external_id": "x"})
    submit = LimioSubmitOrderOperator(
        task_id="submit",
        order=NewOrder.model_validate({"order_type": "new", "external_id": "y"}),
        preview_check=accept_cheap,
        dry_run="{{ params.dry_run }}",
        wait_for_completion=True,
        check_processing=True,
        deferrable=True,
        hook_params={"timeout": 60},
    )
    mapped = LimioSubmitOrderOperator.partial(task_id="mapped", on_unknown_outcome="fail").expand(order=built)
    admin = LimioAdminSubmitOrderOperator(task_id="admin", order={"external_id": "z"}, partner="partner-7")
    batch = LimioSubmitOrdersOperator(
        task_id="batch", orders=built, results_path="s3://aws_default@bucket/results.jsonl", max_in_flight=16
    )
    files = LimioSubmitOrdersOperator(task_id="files", orders_path="file:///data/renewals.jsonl", partner={"id": "p"})
    order_id = "{{ ti.xcom_pull('submit', key='order_id') }}"
    wait = LimioOrderSensor(task_id="wait", order_id=order_id, mode="reschedule", check_processing=True)
    export = LimioExportObjectsOperator(task_id="export", object_type="orders", path="s3://aws_default@b/{{ ds }}")
    reconcile = LimioReconcileOrdersOperator(
        task_id="reconcile", intended_path="{{ ti.xcom_pull('batch')['results_path'] }}", check_processing=True
    )
    by_ids = LimioReconcileOrdersOperator(
        task_id="by_ids", external_ids=built, report_path="file:///tmp/report.jsonl", max_problems=2
    )
    preview >> submit >> wait
    mapped >> [admin, batch, files]
    batch >> [export, reconcile, by_ids]


every_operator()
