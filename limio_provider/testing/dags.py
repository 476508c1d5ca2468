"""Run a DAG with ``dag.test()`` from a script or a test, on every Airflow line the provider supports.

``dag.test()`` needs a migrated metadata database, and Airflow 3 runs only DAGs it has serialized; Airflow 2
calls the logical date ``execution_date``. :func:`run_dag` does all three, so the same call works from a
plain script (``python my_check.py``) and from pytest::

    from limio_provider.testing import LimioEmulator, run_dag, task_states, xcom_values

    with LimioEmulator() as emulator:
        os.environ.update(emulator.connection_env())
        run = run_dag(my_dag, logical_date=datetime(2026, 1, 1, tzinfo=UTC))
        assert run.state == "success", task_states(run)
        print(xcom_values(run, "submit"))

Airflow is imported only when a function is called, so importing :mod:`limio_provider.testing` stays cheap.
"""

from __future__ import annotations

import os
from datetime import datetime
from importlib.metadata import version
from typing import Any

_migrated = False
#: ``logical_date`` not given: Airflow's default (now). ``None`` is a run without a logical date (Airflow 3).
_DEFAULT = object()


def _airflow_major() -> int:
    return int(version("apache-airflow").split(".")[0])


def migrate_db() -> None:
    """Create or upgrade the metadata database ``AIRFLOW_HOME`` names, as ``airflow db migrate`` does (once
    per process: later calls do nothing)."""
    global _migrated
    if _migrated:
        return
    from airflow.utils import db

    db.upgradedb()
    _migrated = True


def run_dag(
    dag: Any,
    *,
    logical_date: datetime | None | object = _DEFAULT,
    conf: dict[str, Any] | None = None,
    migrate: bool = True,
    **kwargs: Any,
) -> Any:
    """Run ``dag`` once with ``dag.test()`` and return its ``DagRun`` (``.state``, ``.run_id``).

    :param dag: a DAG object (from a DAG file or built in code).
    :param logical_date: the run's logical date; not given: now; ``None`` (Airflow 3): a run without one, as
        the UI's Trigger button may make.
    :param conf: the run's ``conf`` (``params`` it overrides, e.g. ``{"dry_run": True}``).
    :param migrate: migrate the metadata database first (once per process); ``False`` when a fixture has.
    :param kwargs: passed on to ``dag.test()``.
    """
    if migrate:
        migrate_db()
    if conf is not None:
        kwargs["run_conf"] = conf
    if logical_date is not _DEFAULT:
        kwargs["execution_date" if _airflow_major() < 3 else "logical_date"] = logical_date
    if _airflow_major() >= 3:
        _serialize(dag)
    return dag.test(**kwargs)


def _serialize(dag: Any) -> None:
    """Write ``dag`` to the metadata database: Airflow 3's ``dag.test()`` runs only serialized DAGs."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager

    try:
        from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    except ImportError:  # Airflow 3.0 and 3.1
        from airflow.models.dagbag import DagBag, sync_bag_to_db  # type: ignore[no-redef]

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=os.devnull)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)


def xcom_values(run: Any, task_id: str, key: str = "return_value") -> list[Any]:
    """Every value of ``key`` that ``task_id`` pushed in ``run``, ordered by map index (one item for an
    unmapped task; ``[]`` if it pushed none)."""
    import airflow.models.xcom as xcom_module
    from airflow.utils.session import create_session

    # Airflow 2's XCom rows deserialise their value when loaded; Airflow 3's XComModel deserialises on request.
    XComModel: Any = xcom_module.XCom if _airflow_major() < 3 else xcom_module.XComModel

    with create_session() as session:
        rows = (
            session.query(XComModel)
            .filter_by(dag_id=run.dag_id, run_id=run.run_id, task_id=task_id, key=key)
            .order_by(XComModel.map_index)
            .all()
        )
        if _airflow_major() < 3:
            return [row.value for row in rows]
        return [XComModel.deserialize_value(row) for row in rows]


def task_states(run: Any) -> dict[str, str]:
    """The task states of ``run`` by task id (``task[i]`` for mapped instances)."""
    from airflow.utils.session import create_session

    with create_session() as session:
        return {
            (ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"): ti.state
            for ti in run.get_task_instances(session=session)
        }
