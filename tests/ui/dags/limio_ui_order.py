"""One order submitted to the emulator, so the UI has a task instance with a "Limio order" link."""

from __future__ import annotations

from datetime import datetime

from airflow.providers.common.compat.sdk import dag

from limio_provider.operators import LimioSubmitOrderOperator
from limio_provider.testing import sample_order


@dag(dag_id="limio_ui_order", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["limio"])
def limio_ui_order() -> None:
    LimioSubmitOrderOperator(task_id="submit_order", order=sample_order("ui-order-1", process_immediately=True))


limio_ui_order()
