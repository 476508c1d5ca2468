"""Small DAGs the deployment tests (tests/deploy) trigger through the REST API, one scenario each.

Every order's ``external_id`` comes from the run's ``conf`` (``params``), so each test run sends orders no
other run has sent, and the emulator's orders can be counted per ``external_id``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.providers.common.compat.sdk import dag, task

from limio_provider.operators import LimioSubmitOrderOperator, LimioSubmitOrdersOperator
from limio_provider.sensors.limio import LimioOrderSensor
from limio_provider.testing import sample_order

START = datetime(2026, 1, 1)


@task
def build_orders(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """``params.count`` orders named ``<params.prefix>-<i>``."""
    assert params is not None
    return [sample_order(f"{params['prefix']}-{i}", process_immediately=True) for i in range(int(params["count"]))]


@dag(dag_id="deploy_mapped_submit", schedule=None, start_date=START, catchup=False, params={"prefix": "m", "count": 4})
def deploy_mapped_submit() -> None:
    """A mapped submit: one task instance per order."""
    LimioSubmitOrderOperator.partial(task_id="submit").expand(order=build_orders())


@dag(dag_id="deploy_deferred_wait", schedule=None, start_date=START, catchup=False, params={"external_id": "w-1"})
def deploy_deferred_wait() -> None:
    """Submit, then wait for Limio to finish the order in the triggerer (the emulator's processing_delay)."""
    LimioSubmitOrderOperator(
        task_id="submit_and_wait",
        order=sample_order("{{ params.external_id }}"),  # no process_immediately: it stays submitted a while
        wait_for_completion=True,
        deferrable=True,
        poll_interval=1,
        wait_timeout=120,
    )


@dag(dag_id="deploy_retry_submit", schedule=None, start_date=START, catchup=False, params={"external_id": "k-1"})
def deploy_retry_submit() -> None:
    """One submit with Airflow retries: the test kills its process mid-submit."""
    LimioSubmitOrderOperator(
        task_id="submit",
        order=sample_order("{{ params.external_id }}", process_immediately=True),
        retries=2,
        retry_delay=timedelta(seconds=1),
        hook_params={"timeout": 60},  # the hung POST outlives the kill
    )


@dag(dag_id="deploy_no_retry_submit", schedule=None, start_date=START, catchup=False, params={"external_id": "u-1"})
def deploy_no_retry_submit() -> None:
    """One submit without Airflow retries: an unknown outcome fails the task until a person decides."""
    LimioSubmitOrderOperator(
        task_id="submit",
        order=sample_order("{{ params.external_id }}", process_immediately=True),
        retries=0,
    )


@dag(
    dag_id="deploy_sensor_stored_connection",
    schedule=None,
    start_date=START,
    catchup=False,
    params={"external_id": "s-1", "conn_id": "limio_stored"},
)
def deploy_sensor_stored_connection() -> None:
    """A connection stored in the metadata database (the test creates it through the REST API): submit, then a
    deferrable sensor and a deferrable submit-and-wait, both in the triggerer at the same time."""
    submit = LimioSubmitOrderOperator(
        task_id="submit",
        limio_conn_id="{{ params.conn_id }}",
        order=sample_order("{{ params.external_id }}"),  # no process_immediately: it stays submitted a while
    )
    sensor = LimioOrderSensor(
        task_id="wait",
        limio_conn_id="{{ params.conn_id }}",
        order_id="{{ ti.xcom_pull(task_ids='submit', key='order_id') }}",
        deferrable=True,
        poke_interval=1,
        timeout=120,
    )
    submit >> sensor
    LimioSubmitOrderOperator(
        task_id="submit_and_wait",
        limio_conn_id="{{ params.conn_id }}",
        order=sample_order("{{ params.external_id }}-w"),
        wait_for_completion=True,
        deferrable=True,
        poll_interval=1,
        wait_timeout=120,
    )


@task
def batch_chunks(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Two chunks of ``params.size`` orders each, the second starting with ``params.shared`` orders the first
    ends with (both chunks carry them: the shared ledger lets only one send each)."""
    assert params is not None
    prefix, size, root = params["prefix"], int(params["size"]), params["results_root"]
    shared = [sample_order(f"{prefix}-shared-{i}", process_immediately=True) for i in range(int(params["shared"]))]
    own = [[sample_order(f"{prefix}-c{c}-{i}", process_immediately=True) for i in range(size)] for c in (0, 1)]
    return [
        {"orders": own[0] + shared, "results_path": f"{root}/chunk-0.results.jsonl"},
        {"orders": shared + own[1], "results_path": f"{root}/chunk-1.results.jsonl"},
    ]


@dag(
    dag_id="deploy_batch_two_workers",
    schedule=None,
    start_date=START,
    catchup=False,
    params={"prefix": "b", "size": 10, "shared": 4, "ledger_path": "", "results_root": ""},
)
def deploy_batch_two_workers() -> None:
    """A batch split in two mapped task instances (one per Celery worker) sharing one ledger."""
    LimioSubmitOrdersOperator.partial(
        task_id="submit_batch",
        ledger_path="{{ params.ledger_path }}",
        max_in_flight=2,
        max_failed=0,
        retries=1,
        retry_delay=timedelta(seconds=1),
        hook_params={"timeout": 90},  # the hung POST outlives the worker
    ).expand_kwargs(batch_chunks())


@dag(
    dag_id="deploy_batch_approval",
    schedule=None,
    start_date=START,
    catchup=False,
    params={"prefix": "a", "count": 3, "ledger_path": "", "results_root": ""},
)
def deploy_batch_approval() -> None:
    """A batch that asks a person first (Airflow 3.1+), answered through the REST API."""
    from limio_provider.approval import LimioApproval

    LimioSubmitOrdersOperator(
        task_id="submit_batch",
        orders=build_orders(),
        results_path="{{ params.results_root }}/approved.results.jsonl",
        ledger_path="{{ params.ledger_path }}",
        approval=LimioApproval(timeout=timedelta(minutes=10)),
    )


deploy_mapped_submit()
deploy_batch_approval()
deploy_deferred_wait()
deploy_sensor_stored_connection()
deploy_retry_submit()
deploy_no_retry_submit()
deploy_batch_two_workers()
