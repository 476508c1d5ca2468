"""One order submitted to the emulator, and a batch of two, so the UI has task instances with a "Limio order"
and a "Limio results file" link. ``LIMIO_UI_LEDGER`` names the batch's ledger and ``LIMIO_UI_RESULTS`` its
results file (on S3, moto's: a local file gets no link)."""

from __future__ import annotations

import os
from datetime import datetime

from airflow.providers.common.compat.sdk import dag

from limio_provider.operators import LimioSubmitOrderOperator, LimioSubmitOrdersOperator
from limio_provider.testing import sample_order

LEDGER = os.environ.get("LIMIO_UI_LEDGER", "file:///tmp/limio-ui/ledger")
RESULTS = os.environ.get("LIMIO_UI_RESULTS", "file:///tmp/limio-ui/batch.results.jsonl")


@dag(dag_id="limio_ui_order", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["limio"])
def limio_ui_order() -> None:
    LimioSubmitOrderOperator(task_id="submit_order", order=sample_order("ui-order-1", process_immediately=True))
    LimioSubmitOrdersOperator(
        task_id="submit_batch",
        orders=[sample_order("ui-batch-1"), sample_order("ui-batch-2")],
        results_path=RESULTS,
        ledger_path=LEDGER,
    )


limio_ui_order()
