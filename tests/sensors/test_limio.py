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


def test_check_processing_fails_on_a_complete_order_whose_billing_failed(
    limio_emulator: LimioEmulator, task_log: Callable[[], str]
) -> None:
    from limio_provider.hooks.limio import LimioHook
    from limio_provider.testing import Fault, sample_order

    limio_emulator.add_fault(Fault(route="order", action="billing_fails", external_id="EXT-SENSE-BF"))
    hook = LimioHook()
    failed = hook.submit_order(sample_order("EXT-SENSE-BF", process_immediately=True))
    billed = hook.submit_order(sample_order("EXT-SENSE-OK", process_immediately=True))
    with DAG("limio_sensor_processing", schedule=None, start_date=START) as dag:
        for name, order in (("failed", failed), ("billed", billed)):
            LimioOrderSensor(task_id=name, order_id=order.id, check_processing=True, poke_interval=0.1, timeout=5)
        LimioOrderSensor(task_id="unchecked", order_id=failed.id, poke_interval=0.1, timeout=5)
    task_log()
    run = run_dag(dag)
    assert states(run) == {"failed": "failed", "billed": "success", "unchecked": "success"}
    assert f"Limio order {failed.id} is complete, but its processing failed: zuora: " in task_log()
