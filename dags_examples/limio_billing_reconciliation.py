"""Correct Limio subscriptions after the nightly billing reconciliation.

Reconciliation compares what Limio bills with what customers are entitled to (your CRM or ledger) and
produces adjustments. This DAG turns them into Limio orders:

1. ``reconcile_billing`` returns the adjustments. Here they are fixed sample data computed inside the task;
   in production this task would query your ledger. A ``downgrade`` moves a subscription to a cheaper offer
   (``change_offer``), a ``cancel`` cancels it (``cancel_subscription``), and an adjustment with a
   ``partner_id`` belongs to a partner's customer.
2. ``build_change_orders`` builds the orders for our own customers, and ``build_partner_orders`` those for
   partners' customers (each ``{"order": ..., "partner": <partner id>}``): one order per adjustment, with
   ``external_id = recon-<adjustment_id>-<ds>``.
3. ``submit_adjustments`` submits our orders (one mapped task instance each) and
   ``submit_partner_adjustments`` submits the partner ones (one each, however many partners there are)
   through ``/admin/order`` with ``forPartner``, on the ``limio_admin`` connection: Limio's management
   credentials, which only ``/admin/order`` needs (``limio_default`` holds the ordinary client).
   Both preview every order first: ``within_adjustment_limit`` refuses any order that would charge more
   than ``MAX_ADJUSTMENT_AMOUNT`` at once, and ``on_preview_reject="skip"`` marks that task instance
   skipped (the reason is in its log) so a person can review it, while the others go through.

Limio publishes no schema for ``change_offer`` or ``cancel_subscription``; the fields used here
(``forSubscription``, ``offer.id``) follow Limio's own components and are inferred.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import dag, task

from limio_provider.operators import LimioAdminSubmitOrderOperator, LimioSubmitOrderOperator

if TYPE_CHECKING:
    from limio_provider.models import PreviewResult

#: An adjustment that would charge more than this at once is held for a person to review.
MAX_ADJUSTMENT_AMOUNT = Decimal("50.00")


def within_adjustment_limit(preview: PreviewResult) -> bool | str:
    """The submit operators' ``preview_check``: True to submit, or the reason to hold the order back."""
    due = preview.total_due()
    if due > MAX_ADJUSTMENT_AMOUNT:
        return f"would charge {due}, over the {MAX_ADJUSTMENT_AMOUNT} limit for automatic adjustments"
    return True


@task
def reconcile_billing() -> list[dict[str, Any]]:
    """The adjustments found by reconciliation (sample data: replace with a query of your ledger)."""
    return [
        {
            "adjustment_id": "adj-0001",
            "kind": "downgrade",
            "subscription_id": "sub-2001",
            "offer_id": "offer-digital-monthly",
            "reason": "billed for print + digital, entitled to digital only",
        },
        {
            "adjustment_id": "adj-0002",
            "kind": "cancel",
            "subscription_id": "sub-2002",
            "reason": "cancelled in the CRM, still active in billing",
        },
        {
            "adjustment_id": "adj-0003",
            "kind": "downgrade",
            "subscription_id": "sub-2003",
            "offer_id": "offer-digital-annual",  # 199.00 up front: over the limit, held for review
            "reason": "premium bundle not delivered, move to digital annual",
        },
        {
            "adjustment_id": "adj-0004",
            "kind": "downgrade",
            "subscription_id": "sub-2004",
            "offer_id": "offer-digital-monthly",
            "partner_id": "partner-org-newsagents",
            "reason": "partner reports the customer dropped print delivery",
        },
    ]


def _order_for(adjustment: dict[str, Any], day: str) -> dict[str, Any]:
    """The Limio order that applies ``adjustment``, keyed by adjustment id and reconciliation day."""
    order: dict[str, Any] = {
        "forSubscription": {"id": adjustment["subscription_id"]},
        "external_id": f"recon-{adjustment['adjustment_id']}-{day}",
        "source": "airflow",
        "process_immediately": True,
    }
    if adjustment["kind"] == "downgrade":
        return {"order_type": "change_offer", **order, "offer": {"id": adjustment["offer_id"]}}
    if adjustment["kind"] == "cancel":
        return {"order_type": "cancel_subscription", **order}
    raise ValueError(f"adjustment {adjustment['adjustment_id']}: unknown kind {adjustment['kind']!r}")


def _run_day(ds: str | None, dag_run: Any) -> str:
    """The reconciliation day: ``ds``, or for a run without a logical date, the day of its ``run_after``."""
    return ds or dag_run.run_after.date().isoformat()


@task
def build_change_orders(
    adjustments: list[dict[str, Any]], ds: str | None = None, dag_run: Any = None
) -> list[dict[str, Any]]:
    """The orders for the adjustments of our own customers (no ``partner_id``)."""
    return [_order_for(a, _run_day(ds, dag_run)) for a in adjustments if not a.get("partner_id")]


@task
def build_partner_orders(
    adjustments: list[dict[str, Any]], ds: str | None = None, dag_run: Any = None
) -> list[dict[str, Any]]:
    """``{"order": ..., "partner": ...}`` for each adjustment of a partner's customer."""
    return [
        {"order": _order_for(a, _run_day(ds, dag_run)), "partner": a["partner_id"]}
        for a in adjustments
        if a.get("partner_id")
    ]


@dag(
    dag_id="limio_billing_reconciliation",
    schedule="0 6 * * *",  # daily, after the nightly billing run
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["limio", "example"],
    doc_md=__doc__,
)
def limio_billing_reconciliation() -> None:
    adjustments = reconcile_billing()
    LimioSubmitOrderOperator.partial(
        task_id="submit_adjustments", preview_check=within_adjustment_limit, on_preview_reject="skip"
    ).expand(order=build_change_orders(adjustments))
    LimioAdminSubmitOrderOperator.partial(
        task_id="submit_partner_adjustments",
        limio_conn_id="limio_admin",
        preview_check=within_adjustment_limit,
        on_preview_reject="skip",
    ).expand_kwargs(build_partner_orders(adjustments))


limio_billing_reconciliation()
