"""A batch that asks a person before sending (issue 21): the UI test answers it in the browser.
``LIMIO_UI_LEDGER`` names its ledger; its results file is next to it."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.providers.common.compat.sdk import dag

from limio_provider.approval import LimioApproval
from limio_provider.operators import LimioSubmitOrdersOperator
from limio_provider.testing import sample_order

LEDGER = os.environ.get("LIMIO_UI_LEDGER", "file:///tmp/limio-ui/ledger")


@dag(dag_id="limio_ui_approval", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["limio"])
def limio_ui_approval() -> None:
    LimioSubmitOrdersOperator(
        task_id="submit_batch",
        orders=[sample_order(f"ui-approval-{n}") for n in range(3)],
        results_path=f"{LEDGER}-approval.results.jsonl",
        ledger_path=LEDGER,
        approval=LimioApproval(timeout=timedelta(minutes=10)),
    )


limio_ui_approval()
