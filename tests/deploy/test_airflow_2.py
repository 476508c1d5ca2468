"""The trigger under a real Airflow 2.11 triggerer (``make test-deploy`` runs this module from 2.11's compat venv;
on Airflow 3 it skips: ``test_local_executor`` covers 3.1 and 3.3 through the REST API).

Airflow 2.11 has no REST API without a webserver and a login, so this deployment is driven as an operator on the
machine would drive it: ``airflow db migrate``, ``airflow connections add`` (a connection stored in the metadata
database), the scheduler (SequentialExecutor, the only one SQLite allows) and the triggerer as processes,
``airflow dags trigger``; states are read from the SQLite metadata database.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.deploy.harness import (
    AIRFLOW,
    RUN_SECONDS,
    START_SECONDS,
    TEST_DAGS,
    Processes,
    triggerer_log_problems,
    wait_until,
)
from tests.deploy.scenarios import one_order, unique
from tests.helpers import AIRFLOW_VERSION, free_port

if TYPE_CHECKING:
    from limio_provider.testing.emulator import LimioEmulator

pytestmark = [
    pytest.mark.deploy,
    pytest.mark.skipif(AIRFLOW_VERSION.major >= 3, reason="Airflow 2 only: Airflow 3 runs test_local_executor"),
]


class Airflow2:
    """A running Airflow 2 deployment: its processes, and its metadata database read directly."""

    def __init__(self, processes: Processes, database: Path, logs: Path) -> None:
        self.processes, self.database, self.logs = processes, database, logs

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Rows of ``sql``; an empty list while the scheduler holds SQLite's write lock."""
        try:
            with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=5) as db:
                return db.execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            return []

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        run_id = unique("manual")
        argv = [*AIRFLOW, "dags", "trigger", dag_id, "--run-id", run_id, "--conf", json.dumps(conf)]
        self.processes.run(f"trigger-{run_id}", argv)
        return run_id

    def states(self, dag_id: str, run_id: str) -> dict[str, tuple[str | None, int]]:
        """``{task_id: (state, try_number)}``."""
        rows = self.query(
            "SELECT task_id, state, try_number FROM task_instance WHERE dag_id = ? AND run_id = ?", dag_id, run_id
        )
        return {task_id: (state, tries) for task_id, state, tries in rows}

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        rows = self.query("SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", dag_id, run_id)
        return rows[0][0] if rows else None

    def wait_run(self, dag_id: str, run_id: str, timeout: float = RUN_SECONDS) -> str:
        def final() -> str | None:
            self.processes.check_alive()
            state = self.run_state(dag_id, run_id)
            return state if state in ("success", "failed") else None

        return wait_until(
            f"run {dag_id}/{run_id} to finish", final, timeout, 0.5, lambda: self.diagnose(dag_id, run_id)
        )

    def triggerer_problems(self) -> list[str]:
        problems = triggerer_log_problems(self.processes)
        beats = self.query("SELECT state, latest_heartbeat FROM job WHERE job_type = 'TriggererJob' ORDER BY id DESC")
        if not beats or beats[0][0] != "running":
            problems.append(f"the triggerer's job: {beats[:1]}")
        return problems

    def diagnose(self, dag_id: str, run_id: str) -> str:
        return f"task states: {self.states(dag_id, run_id)}\n{self.processes.tails()}"


@pytest.fixture(scope="module")
def airflow2(tmp_path_factory: pytest.TempPathFactory, emulator: LimioEmulator, artifacts: Path) -> Iterator[Airflow2]:
    logs = artifacts / "airflow-2"
    logs.mkdir(parents=True)
    home = tmp_path_factory.mktemp("airflow-2-home")
    database = home / "airflow.db"
    env = {name: value for name, value in os.environ.items() if not name.startswith("AIRFLOW")}
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # the executor runs `airflow`
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{database}",
        "AIRFLOW__CORE__EXECUTOR": "SequentialExecutor",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(TEST_DAGS),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__FERNET_KEY": "",
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL": "5",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(logs / "task-logs"),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        **emulator.connection_env(),
    }
    processes = Processes(env=env, logs=logs)
    try:
        processes.run("airflow-db-migrate", [*AIRFLOW, "db", "migrate"])
        stored = emulator.connection_json()
        processes.run("connections-add", [*AIRFLOW, "connections", "add", "limio_stored", "--conn-json", stored])
        processes.start("scheduler", [*AIRFLOW, "scheduler"])
        processes.start("triggerer", [*AIRFLOW, "triggerer"])
        airflow = Airflow2(processes, database, logs)

        def ready() -> bool:
            processes.check_alive()
            dags = airflow.query("SELECT dag_id FROM dag WHERE is_active = 1")
            triggerer = airflow.query("SELECT 1 FROM job WHERE job_type = 'TriggererJob' AND state = 'running'")
            wanted = {"deploy_deferred_wait", "deploy_sensor_stored_connection"}
            return bool(triggerer) and wanted <= {dag_id for (dag_id,) in dags}

        wait_until("Airflow 2: the triggerer running and the DAGs parsed", ready, START_SECONDS, 0.5, processes.tails)
        yield airflow
    finally:
        processes.close()


def test_deferrable_sensor_and_waits_under_a_real_airflow_2_triggerer(
    airflow2: Airflow2, emulator: LimioEmulator
) -> None:
    """A deferrable submit-and-wait on the connection from the environment, and a deferrable sensor and
    submit-and-wait on one stored in the metadata database, all through the triggerer; it is still well after."""
    stored_id, env_id = unique("sensor2"), unique("deferred2")
    stored = airflow2.trigger("deploy_sensor_stored_connection", {"external_id": stored_id, "conn_id": "limio_stored"})
    from_env = airflow2.trigger("deploy_deferred_wait", {"external_id": env_id})

    seen: set[str] = set()

    def deferred_seen() -> bool:
        airflow2.processes.check_alive()
        for dag_id, run_id, task_id in (
            ("deploy_sensor_stored_connection", stored, "wait"),
            ("deploy_deferred_wait", from_env, "submit_and_wait"),
        ):
            if airflow2.states(dag_id, run_id).get(task_id, (None, 0))[0] == "deferred":
                seen.add(task_id)
        return seen == {"wait", "submit_and_wait"}

    started = time.monotonic()
    wait_until("both waits deferred", deferred_seen, 2 * RUN_SECONDS, 0.2, airflow2.processes.tails)
    for dag_id, run_id in (("deploy_sensor_stored_connection", stored), ("deploy_deferred_wait", from_env)):
        assert airflow2.wait_run(dag_id, run_id, 2 * RUN_SECONDS) == "success", airflow2.diagnose(dag_id, run_id)
        states = airflow2.states(dag_id, run_id)
        assert all(state == ("success", 1) for state in states.values()), states
    for external_id in (stored_id, f"{stored_id}-w", env_id):
        assert one_order(emulator, external_id)["status"] == "complete"
    assert time.monotonic() - started < 4 * RUN_SECONDS
    assert not airflow2.triggerer_problems(), airflow2.triggerer_problems()
