"""Backfill a standing daily order into Limio over a fixed date range, rehearsing it first.

A partner has a standing daily top-up (a ``new`` order of ``TOP_UP_SEATS`` seats of ``TOP_UP_OFFER``) that
was not sent to Limio from 2026-01-01 to 2026-01-05. This DAG has one run per day of that range
(``catchup=True``, ``end_date`` closes the range), and each run:

1. ``build_daily_order`` builds that day's order, with ``external_id = backfill-<ds>`` and ``orderDate`` the
   logical date. The id depends on the logical date only, not on the run id, so a scheduled run, a backfill
   run and a re-run of the same day all send the same ``external_id``, and the submit operator adopts the
   order an earlier run created (found by ``external_id`` among Limio's newest orders) instead of
   submitting it twice. An operator-derived id would do the same (it names the day, not the run); an
   explicit one is easier to find in Limio.
2. ``submit_order`` submits it, or with the ``dry_run`` param previews it and submits nothing, returning
   ``{"dry_run": true, "order": ..., "preview": ...}``.

Rehearse the whole range, read the ``submit_order`` XComs and logs, then run it for real::

    airflow backfill create --dag-id limio_backfill_orders --from-date 2026-01-01 --to-date 2026-01-05 \\
        --dag-run-conf '{"dry_run": true}'
    airflow backfill create --dag-id limio_backfill_orders --from-date 2026-01-01 --to-date 2026-01-05 \\
        --reprocess-behavior completed

(``--reprocess-behavior completed`` makes new runs for days the rehearsal already ran. The CLI's own
``--dry-run`` only lists the runs it would create.) For one day: ``dag.test(logical_date=...,
run_conf={"dry_run": True})``.

The offer, payment and billing details below are placeholders: use your tenant's. A real ``new`` order's
``checkoutId`` comes from Limio's checkout API; here it is derived from the day like the ``external_id``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from airflow.sdk import Param, dag, task

from limio_provider.operators import LimioSubmitOrderOperator

TOP_UP_OFFER = {"id": "offer-digital-monthly", "version": "1"}
TOP_UP_SEATS = 5
PARTNER_BILLING = {"company": "Newsagents Ltd", "email": "billing@newsagents.example", "country": "GB"}
PARTNER_PAYMENT = {"type": "zuora", "zuora": {"refId": "pm-newsagents", "paymentGateway": "CreditCard_UK"}}


@task
def build_daily_order(ds: str | None = None) -> dict[str, Any]:
    """The standing top-up order for the logical date ``ds``."""
    return {
        "order_type": "new",
        "external_id": f"backfill-{ds}",
        "source": "airflow",
        "process_immediately": True,
        "orderDate": f"{ds}T00:00:00Z",
        "orderItems": [{"offer": TOP_UP_OFFER, "quantity": TOP_UP_SEATS}],
        "billingDetails": PARTNER_BILLING,
        "payment": PARTNER_PAYMENT,
        "checkoutId": f"basket-backfill-{ds}",
        "country": "GB",
    }


@dag(
    dag_id="limio_backfill_orders",
    schedule="@daily",
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    end_date=datetime(2026, 1, 5, tzinfo=timezone.utc),
    catchup=True,
    max_active_runs=1,  # one day at a time, oldest first
    tags=["limio", "example"],
    params={"dry_run": Param(False, type="boolean", description="Preview each order and submit nothing")},
    doc_md=__doc__,
)
def limio_backfill_orders() -> None:
    LimioSubmitOrderOperator(task_id="submit_order", order=build_daily_order(), dry_run="{{ params.dry_run }}")


limio_backfill_orders()
