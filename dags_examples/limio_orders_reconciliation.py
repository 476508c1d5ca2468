"""Reconcile the orders another DAG sent with what Limio holds: scheduled on the tenant's orders asset.

Every submit operator (single, admin, batch) records an event on ``limio://<tenant>/orders`` when it succeeds,
so this DAG runs after each one, with no sensor: after ``limio_scheduled_renewals`` submits the day's
renewals, after a backfill day of ``limio_backfill_orders``, after any DAG of yours. ``intended_orders`` reads
the triggering events' extras (a single order's event names its ``external_id``; a batch's names its
``results_path``, one line per order) and ``reconcile`` compares those orders with Limio's
(``LimioReconcileOrdersOperator``): each must be there once and complete, and with ``check_processing`` its
process events must show no failed plugin (Limio marks an order complete even when billing failed). The task
fails naming every order that did not reconcile; its report (one line per order) is written under
``REPORTS``.

``TENANT`` is your tenant's host as the Limio connection names it (lower case, no default port): the asset's
URI. It reads ``LIMIO_TENANT`` from the environment when set (e.g. ``localhost:8765`` for a local emulator),
and ``REPORTS`` reads ``LIMIO_REPORTS`` (an ``ObjectStoragePath`` URI); edit the defaults to your own. The
reconciliation lists the tenant's orders (one request per 1,000) and reads each order's process events (one
request per order): see "Chaining and reconciling" in the docs.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any

from airflow.providers.common.compat.assets import Asset
from airflow.providers.common.compat.sdk import dag, task

from limio_provider.operators import LimioReconcileOrdersOperator

TENANT = os.environ.get("LIMIO_TENANT", "acme.prod.limio.com")
REPORTS = os.environ.get("LIMIO_REPORTS", "file:///tmp/limio-reports")
ORDERS = Asset(f"limio://{TENANT}/orders")


def external_ids(extras: list[dict[str, Any]]) -> list[str]:
    """The orders the events name: a single order's ``external_id``, and a batch's submitted or adopted
    orders, read from its results file."""
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    ids: list[str] = []
    for extra in extras:
        if extra.get("external_id"):
            ids.append(extra["external_id"])
        elif extra.get("results_path"):
            lines = ObjectStoragePath(extra["results_path"]).read_text().splitlines()
            rows = (json.loads(line) for line in lines if line.strip())
            ids.extend(row["external_id"] for row in rows if row.get("outcome") in ("submitted", "adopted"))
    return list(dict.fromkeys(ids))  # a retried batch's file names an order once; a re-run may name it again


@task
def intended_orders(**context: Any) -> list[str]:
    """The external ids of the orders the triggering events name."""
    # Airflow 3 names them asset events, Airflow 2 dataset events.
    triggering = context.get("triggering_asset_events") or context.get("triggering_dataset_events") or {}
    return external_ids([event.extra or {} for events in triggering.values() for event in events])


@dag(
    dag_id="limio_orders_reconciliation",
    schedule=[ORDERS],
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["limio", "example"],
    doc_md=__doc__,
)
def limio_orders_reconciliation() -> None:
    LimioReconcileOrdersOperator(
        task_id="reconcile",
        external_ids=intended_orders(),
        report_path=REPORTS + "/{{ run_id | replace(':', '') | replace('+', '') }}.jsonl",
        check_processing=True,
    )


limio_orders_reconciliation()
