"""Check that Limio processed the orders another DAG sent: scheduled on the tenant's orders asset.

Every submit operator (single, admin, batch) records an event on ``limio://<tenant>/orders`` when it succeeds,
so this DAG runs after each one, with no sensor: after ``limio_scheduled_renewals`` submits the day's
renewals, after a backfill day of ``limio_backfill_orders``, after any DAG of yours. Its one task,
``check_orders``, reads the triggering events' extras: a single order's event names its ``order_id``, a
batch's names its ``results_path`` (one line per order). It reads each of those orders back from Limio and
fails, naming them and Limio's reasons, if any order ``failed``; an order still ``submitted`` (Limio has not
finished processing it) is counted, not failed. It returns the counts by status as XCom.

``TENANT`` is your tenant's host as the Limio connection names it (lower case, no default port): the asset's
URI. It reads ``LIMIO_TENANT`` from the environment when set (e.g. ``localhost:8765`` for a local emulator);
edit the default to your own host. An order a batch sent is read back one request at a time: thousands of
orders make thousands of reads.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from airflow.providers.common.compat.assets import Asset
from airflow.providers.common.compat.sdk import dag, task

TENANT = os.environ.get("LIMIO_TENANT", "acme.prod.limio.com")
ORDERS = Asset(f"limio://{TENANT}/orders")


def order_ids(extras: list[dict[str, Any]]) -> list[str]:
    """The orders the events name: a single order's ``order_id``, and a batch's submitted or adopted orders,
    read from its results file."""
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    ids: list[str] = []
    for extra in extras:
        if extra.get("order_id"):
            ids.append(extra["order_id"])
        elif extra.get("results_path"):
            with ObjectStoragePath(extra["results_path"]).open("r") as results:
                rows = (json.loads(line) for line in results if line.strip())
                ids.extend(row["order_id"] for row in rows if row.get("order_id"))
    return list(dict.fromkeys(ids))  # a retried batch's file names an order once; a re-run may name it again


@task
def check_orders(**context: Any) -> dict[str, int]:
    """Read back every order the triggering events name; fail on a failed one."""
    from airflow.providers.common.compat.sdk import AirflowFailException

    from limio_provider.hooks.limio import LimioHook

    # Airflow 3 names them asset events, Airflow 2 dataset events.
    triggering = context.get("triggering_asset_events") or context.get("triggering_dataset_events") or {}
    extras = [event.extra or {} for events in triggering.values() for event in events]
    hook = LimioHook()
    statuses: Counter[str] = Counter()
    failed: list[str] = []
    for order_id in order_ids(extras):
        order = hook.get_order(order_id)
        statuses[order.status or "unknown"] += 1
        if order.failed:
            failed.append(f"{order_id} ({order.external_id}): {order.message or 'failed'}")
    if failed:
        raise AirflowFailException(f"{len(failed)} order(s) failed in Limio: " + "; ".join(failed[:20]))
    return dict(statuses)


@dag(
    dag_id="limio_orders_check",
    schedule=[ORDERS],
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["limio", "example"],
    doc_md=__doc__,
)
def limio_orders_check() -> None:
    check_orders()


limio_orders_check()
