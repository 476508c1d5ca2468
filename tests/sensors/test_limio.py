"""LimioOrderSensor with dag.test() against the emulator: an order id that rendered to nothing is refused."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from airflow.providers.common.compat.sdk import DAG, task

from limio_provider.sensors.limio import LimioOrderSensor
from limio_provider.testing import LimioEmulator
from tests.helpers import START, run_dag, states

pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.mark.parametrize("native", [False, True], ids=["text", "native"])
def test_an_order_id_that_rendered_to_nothing_is_refused_naming_the_template(
    limio_emulator: LimioEmulator, task_log: Callable[[], str], native: bool
) -> None:
    task_log()
    with DAG(
        f"limio_sensor_none_{native}", schedule=None, start_date=START, render_template_as_native_obj=native
    ) as dag:

        @task
        def no_order() -> None:  # an upstream that made no order (skipped, refused, or the wrong task)
            return None

        no_order() >> LimioOrderSensor(
            task_id="wait",
            order_id="{{ ti.xcom_pull(task_ids='no_order', key='order_id') }}",
            poke_interval=0.1,
            timeout=5,
            mode="reschedule",
        )
    run = run_dag(dag)
    assert states(run)["wait"] == "failed"
    assert limio_emulator.requests == []  # Limio was asked nothing: no token, no GET of order "None"
    log = task_log()
    assert "invalid order_id: \"{{ ti.xcom_pull(task_ids='no_order', key='order_id') }}\" rendered to" in log
