"""Renew the Limio subscriptions that are due, every day.

A billing system exports the subscriptions due for renewal to a CSV file (columns ``subscription_id``,
``subscription_ref``, ``customer_email``, ``offer_id``, ``due_date``). Each day this DAG:

1. ``read_due_renewals`` reads the file named by the ``renewals_file`` param and keeps the rows due on or
   before the run's logical date (``ds``), so a renewal missed on its day is picked up the next day;
2. ``build_orders`` turns each row into one ``renew`` order for ``forSubscription.id``;
3. ``preview_renewals`` previews every order (one mapped task instance per order), and only when all
   previews succeed does ``submit_renewals`` submit them (again one mapped instance per order);
4. ``summarize`` logs a summary and returns it as XCom: counts, the submitted orders and the total due.

Every order carries ``external_id = renew-<subscription_id>-<due_date>``: the same renewal always gets the
same id, whichever run (scheduled, retried, re-run, or the next day's for an overdue row) submits it. The
submit operator looks for an order with that id among Limio's newest orders first and adopts it instead of
submitting again (``adopt_existing``, on by default). That lookup covers only the newest orders and Limio
itself documents no duplicate detection, so the export should still drop renewed rows.

Limio's ``renew`` order type is inferred: it appears in Limio code and events, not in the published Orders
API. Its fields here (``forSubscription`` plus the common ``external_id``, ``source`` and
``process_immediately``) are the provider's best reading; check them against your tenant first.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow.providers.common.compat.sdk import Param, TriggerRule, dag, task

from limio_provider.operators import LimioPreviewOrderOperator, LimioSubmitOrderOperator

log = logging.getLogger(__name__)

#: The sample export shipped next to this file. Building a path does no I/O, so it is fine at parse time.
DEFAULT_RENEWALS_FILE = str(Path(__file__).parent / "data" / "renewals_due.csv")


@task
def read_due_renewals(renewals_file: str, ds: str | None = None, dag_run: Any = None) -> list[dict[str, str]]:
    """The CSV rows due on or before ``ds`` (a run without a logical date uses its ``run_after`` day),
    oldest due date first."""
    import csv
    from datetime import date

    run_date = date.fromisoformat(ds) if ds else dag_run.run_after.date()
    with open(renewals_file, newline="", encoding="utf-8") as handle:
        rows = [{key.strip(): (value or "").strip() for key, value in row.items()} for row in csv.DictReader(handle)]
    due = [row for row in rows if date.fromisoformat(row["due_date"]) <= run_date]
    log.info("%d of %d subscriptions in %s are due on or before %s", len(due), len(rows), renewals_file, run_date)
    return sorted(due, key=lambda row: (row["due_date"], row["subscription_id"]))


@task
def build_orders(renewals: list[dict[str, str]]) -> list[dict[str, Any]]:
    """One ``renew`` order per due subscription, keyed by subscription and due date."""
    return [
        {
            "order_type": "renew",
            "forSubscription": {"id": row["subscription_id"]},
            "external_id": f"renew-{row['subscription_id']}-{row['due_date']}",
            "source": "airflow",
            "process_immediately": True,
        }
        for row in renewals
    ]


@task(trigger_rule=TriggerRule.NONE_FAILED)  # also runs, and reports zero, on a day with nothing due
def summarize(previews: list[dict[str, Any]], results: list[dict[str, Any]]) -> dict[str, Any]:
    """Log what was renewed and return it as JSON-ready XCom."""
    from decimal import Decimal

    from limio_provider.models import PreviewResult

    # Mapped results arrive as lazy sequences: read them by index up to len(). Iterating one asks for the item
    # after the last, and Airflow logs that lookup's "XCom not found" at ERROR although nothing is wrong.
    previews = [previews[i] for i in range(len(previews))]
    results = [results[i] for i in range(len(results))]
    total = sum((PreviewResult.model_validate(p).total_due() for p in previews), Decimal(0))
    orders = [{"external_id": r.get("external_id"), "id": r.get("id"), "status": r.get("status")} for r in results]
    summary = {
        "previewed": len(previews),
        "submitted": len(orders),
        "orders": orders,
        "total_due": str(total.quantize(Decimal("0.01"))),
    }
    log.info("Renewed %d subscriptions (%d previewed), total due %s", len(orders), len(previews), summary["total_due"])
    for order in orders:
        log.info("  %s -> order %s (%s)", order["external_id"], order["id"], order["status"])
    return summary


@dag(
    dag_id="limio_scheduled_renewals",
    schedule="@daily",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["limio", "example"],
    params={
        "renewals_file": Param(
            DEFAULT_RENEWALS_FILE, type="string", description="CSV export of the subscriptions due for renewal"
        ),
    },
    doc_md=__doc__,
)
def limio_scheduled_renewals() -> None:
    orders = build_orders(read_due_renewals("{{ params.renewals_file }}"))
    previews = LimioPreviewOrderOperator.partial(task_id="preview_renewals").expand(order=orders)
    results = LimioSubmitOrderOperator.partial(task_id="submit_renewals").expand(order=orders)
    previews >> results  # nothing is submitted unless every order previews cleanly
    summarize(previews=previews.output, results=results.output)


limio_scheduled_renewals()
