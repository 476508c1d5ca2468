"""Real single-machine Airflow deployments for the deployment tests (``make test-deploy``), one per test module
(the next starts after the last one stopped): a Limio emulator in this process for the session (its state is
what the tests assert on), a scratch Airflow home, ``airflow db migrate``, then ``api-server``, ``scheduler``,
``dag-processor`` and ``triggerer`` as separate processes, each in its own process group, all stopped at the end
even on failure. ``local``: LocalExecutor on SQLite. ``celery``: CeleryExecutor with PostgreSQL and Redis started
by the tests (``tests/deploy/services.py``) and two Celery workers.

The DAGs are two bundles: ``tests/deploy/dags`` (one small DAG per scenario) and ``dags_examples``. The
scheduler makes no runs of its own (``use_job_schedule`` off): only the runs the tests trigger. Logs (each
process's and the task logs) go to ``artifacts/deploy/<local|celery>/`` (``artifacts/deploy-airflow-3.1/`` when run
from Airflow 3.1's venv, as ``make test-deploy`` does for the LocalExecutor scenarios that touch the triggerer).
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.deploy.harness import (
    AIRFLOW,
    ARTIFACTS,
    START_SECONDS,
    AirflowApi,
    Processes,
    airflow_env,
    wait_until,
)
from tests.helpers import free_port

if TYPE_CHECKING:
    from limio_provider.testing.emulator import LimioEmulator

#: The DAGs every scenario needs parsed before the first trigger.
TEST_DAG_IDS = (
    "deploy_mapped_submit",
    "deploy_deferred_wait",
    "deploy_sensor_stored_connection",
    "deploy_retry_submit",
    "deploy_no_retry_submit",
    "deploy_batch_two_workers",
)
EXAMPLE_DAG_IDS = ("limio_scheduled_renewals", "limio_billing_reconciliation", "limio_backfill_orders")
#: How long an order without process_immediately stays ``submitted`` in the emulator (the deferrable wait).
PROCESSING_DELAY = 8.0


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """``artifacts/deploy/``, emptied once per session."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def emulator() -> Iterator[LimioEmulator]:
    """The Limio tenant every Airflow process talks to (``AIRFLOW_CONN_LIMIO_DEFAULT``)."""
    from limio_provider.testing.emulator import LimioEmulator

    with LimioEmulator(processing_delay=PROCESSING_DELAY) as running:
        yield running


@pytest.fixture(autouse=True)
def every_external_id_once(emulator: LimioEmulator) -> Iterator[None]:
    """After every test, whatever it checked: Limio holds at most one order per external_id."""
    yield
    counts = Counter(order.get("external_id") for order in emulator.orders.values())
    twice = {external_id: n for external_id, n in counts.items() if n > 1}
    assert not twice, f"external_ids with more than one order in Limio: {twice}"


@dataclass
class Deployment:
    """A running Airflow: its REST API, its processes and where their logs are."""

    api: AirflowApi
    processes: Processes
    logs: Path


def start_deployment(
    name: str,
    tmp_path_factory: pytest.TempPathFactory,
    emulator: LimioEmulator,
    artifacts: Path,
    *,
    executor: str,
    backing: Callable[[Processes], dict[str, str]] | None = None,
    workers: int = 0,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Deployment]:
    """Start ``backing`` services (they return the environment that points Airflow at them), migrate a scratch
    home, start the four Airflow services and ``workers`` Celery workers, wait until they are healthy and every
    DAG is parsed; yield; stop everything, whatever happened."""
    logs = artifacts / name
    logs.mkdir(parents=True)
    home = tmp_path_factory.mktemp(f"airflow-deploy-{name}")
    api_port = free_port()
    extra = emulator.connection_env() | (extra_env or {})
    env = airflow_env(home, api_port=api_port, logs=logs, executor=executor, extra=extra)
    processes = Processes(env=env, logs=logs)
    try:
        if backing is not None:
            processes.env |= backing(processes)
        processes.run("airflow-db-migrate", [*AIRFLOW, "db", "migrate"])
        processes.start(
            "api-server", [*AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(api_port), "--workers", "1"]
        )
        processes.start("scheduler", [*AIRFLOW, "scheduler"])
        processes.start("dag-processor", [*AIRFLOW, "dag-processor"])
        processes.start("triggerer", [*AIRFLOW, "triggerer"])
        for number in range(1, workers + 1):
            processes.start(
                f"celery-worker-{number}",
                [*AIRFLOW, "celery", "worker", "--concurrency", "1", "--celery-hostname", f"worker{number}@%h"],
                # Each worker serves its task logs on its own port (one machine, two workers).
                env={"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())},
            )
        api = AirflowApi(f"http://127.0.0.1:{api_port}", processes)

        def ready() -> bool:
            processes.check_alive()
            return api.healthy() and all(
                " ready." in service.log.read_text(errors="replace")
                for service in processes.services
                if service.name.startswith("celery-worker-")
            )

        wait_until(f"{name}: Airflow's services healthy", ready, START_SECONDS, 0.5, processes.tails)

        def parsed() -> bool:
            processes.check_alive()
            return api.has_dags((*TEST_DAG_IDS, *EXAMPLE_DAG_IDS))

        wait_until(
            f"{name}: the DAGs parsed",
            parsed,
            START_SECONDS,
            0.5,
            lambda: f"import errors: {api.import_errors()}\n{processes.tails()}",
        )
        yield Deployment(api=api, processes=processes, logs=logs)
    finally:
        processes.close()


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory, emulator: LimioEmulator, artifacts: Path) -> Iterator[Deployment]:
    """Airflow with the LocalExecutor on SQLite: api-server, scheduler, dag-processor, triggerer (for the
    tests of one module: it is stopped before the next deployment starts). The example limio_orders_reconciliation is
    scheduled on the emulator's orders asset (``LIMIO_TENANT``)."""
    tenant = {"LIMIO_TENANT": "localhost:" + emulator.url.rsplit(":", 1)[1]}
    yield from start_deployment(
        "local", tmp_path_factory, emulator, artifacts, executor="LocalExecutor", extra_env=tenant
    )


@pytest.fixture(scope="module")
def celery(tmp_path_factory: pytest.TempPathFactory, emulator: LimioEmulator, artifacts: Path) -> Iterator[Deployment]:
    """Airflow with the CeleryExecutor: PostgreSQL (metadata and Celery results) and Redis (broker) from the OS
    packages, the four Airflow services and two Celery workers of one slot each."""
    from tests.deploy.services import scratch_dir, start_postgres, start_redis

    scratch = [scratch_dir("limio-deploy-pg-", owner="postgres" if os.geteuid() == 0 else None)]

    def backing(processes: Processes) -> dict[str, str]:
        database = start_postgres(processes, scratch[0])
        scratch.append(scratch_dir("limio-deploy-redis-"))
        broker = start_redis(processes, scratch[1])
        return {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database.replace("postgresql://", "postgresql+psycopg2://", 1),
            "AIRFLOW__CELERY__BROKER_URL": broker,
            # SQLAlchemy 2.1 wants the driver named; Airflow 3.3 reaches the same database through asyncpg too.
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + database.replace("postgresql://", "postgresql+psycopg2://", 1),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
        }

    try:
        yield from start_deployment(
            "celery", tmp_path_factory, emulator, artifacts, executor="CeleryExecutor", backing=backing, workers=2
        )
    finally:
        for path in scratch:
            shutil.rmtree(path, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The LocalExecutor deployment's tests first, the CeleryExecutor's after (the order of the brief: the
    single-machine deployment is the one that matters most)."""
    items.sort(key=lambda item: "tests/deploy/test_celery_executor.py" in item.nodeid)
