"""Crash test: the submit task's OS process is SIGKILLed after Limio created the order, before the task finished.

The Airflow side is real and unassisted: ``airflow api-server --apps execution`` and ``airflow dags test
--use-executor`` (LocalExecutor, on this session's SQLite DB) run as subprocesses, so the task runs in a
process of its own under a task supervisor, as on a deployed worker. The Limio emulator runs in the test
process; the task reaches it through ``AIRFLOW_CONN_LIMIO_DEFAULT``.

Try 1 stores its intent, sends ``POST /api/order``; the emulator creates the order and never answers
(``process_then_hang``). The test SIGKILLs the one process holding a connection to the emulator. Try 2
finds the intent in ``task_state_store``, looks the order up by ``external_id`` and adopts it.

How Airflow 3.3 notices the death (nothing in this test helps it): the supervisor sees exit code -9 and logs
``final_state=up_for_retry`` but sends no state to the API server (it treats up_for_retry as a state the
task reports itself, and the task is dead), so the task instance stays ``running``. The LocalExecutor then
reports the workload as finished; ``dag.test``'s loop, like the scheduler, processes that executor event,
finds the task instance still running ("task-state-changed-externally" error in the log) and fails it via
``handle_failure``, which, with a retry left, makes it ``up_for_retry`` (the history row of try 1 says
``failed``). The loop then queues try 2.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any

import psutil
import pytest

from limio_provider.testing import Fault, LimioEmulator
from tests.helpers import new_order, xcom

pytestmark = pytest.mark.usefixtures("airflow_db")

DAG_ID = "limio_crash_sigkill"
EXTERNAL_ID = "EXT-CRASH-SIGKILL"
STARTUP_TIMEOUT = 60.0  # cold-starting two Airflow processes on a busy 2-CPU machine takes ~20 s
RECOVERY_TIMEOUT = 60.0  # from the kill to the end of `airflow dags test` (~4 s)

DAG_FILE = '''\
"""Written by tests/operators/test_crash.py: one submit task, one retry, no delay."""

from datetime import datetime, timedelta, timezone

from airflow.providers.common.compat.sdk import DAG
from limio_provider.operators import LimioSubmitOrderOperator

with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc)):
    LimioSubmitOrderOperator(
        task_id="submit",
        order={order!r},
        retries=1,
        retry_delay=timedelta(seconds=0),
        hook_params={{"timeout": 60}},
    )
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until(what: str, condition: Callable[[], Any], timeout: float, *alive: subprocess.Popen[bytes]) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s or if a process exits."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        for proc in alive:
            if proc.poll() is not None:
                raise AssertionError(f"waiting for {what}: {proc.args[3:5]} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"waiting for {what}: timed out after {timeout:.0f} s")
        time.sleep(0.1)


def _healthy(url: str) -> bool:
    try:  # the first request builds the versioned API (several seconds); a long timeout lets it finish
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _processes_connected_to(root: psutil.Process, port: int) -> list[psutil.Process]:
    """The descendants of ``root`` with a TCP connection open to ``127.0.0.1:port``."""
    found = []
    for proc in root.children(recursive=True):
        try:
            if any(conn.raddr and conn.raddr.port == port for conn in proc.net_connections(kind="tcp")):
                found.append(proc)
        except psutil.Error:  # exited meanwhile
            pass
    return found


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGKILL each subprocess's process group and every descendant (the supervisor puts each task process
    in a group of its own, so a group kill alone would miss it), then reap them."""
    for proc in procs:
        try:
            descendants = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for child in descendants:
            try:
                child.kill()
            except psutil.Error:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        psutil.wait_procs(descendants, timeout=10)


def _tail(path: Path, chars: int = 2000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return f"\n--- end of {path.name} ---\n{text[-chars:]}"


def _summary(path: Path) -> str:
    """What each try did, from the output of `airflow dags test` (task logs included)."""
    text = path.read_text(errors="replace") if path.exists() else ""
    keep = re.compile(r"\[(error|critical) |Workload finished|Looked up external_id|order EXT-|DagRun Finished")
    lines = [line[:400] for line in text.splitlines() if keep.search(line)]
    return f"\n--- {path.name}, the lines that matter ---\n" + "\n".join(lines)


def test_a_task_killed_after_limio_created_the_order_is_retried_and_adopts_it(tmp_path: Path) -> None:
    from airflow.models import DagRun, TaskInstance
    from airflow.models.taskinstancehistory import TaskInstanceHistory
    from airflow.utils.session import create_session

    dags_folder = tmp_path / "dags"
    dags_folder.mkdir()
    (dags_folder / "limio_crash_dag.py").write_text(DAG_FILE.format(dag_id=DAG_ID, order=new_order(EXTERNAL_ID)))
    api_log, dags_log = tmp_path / "api-server.log", tmp_path / "dags-test.log"
    airflow = [sys.executable, "-m", "airflow"]
    procs: list[subprocess.Popen[bytes]] = []
    outputs: list[IO[bytes]] = []

    def start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        outputs.append(log.open("wb"))
        proc = subprocess.Popen(
            [*airflow, *args], env=env, stdout=outputs[-1], stderr=subprocess.STDOUT, start_new_session=True
        )
        procs.append(proc)
        return proc

    with LimioEmulator() as emulator:
        emulator.add_fault(Fault(route="order", action="process_then_hang", latency=30, times=1))
        emulator_port = int(emulator.url.rsplit(":", 1)[1])
        api_port = _free_port()
        env = {
            **os.environ,  # AIRFLOW_HOME and the SQLite DB of this session (tests/conftest.py)
            **emulator.connection_env(),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "1",  # LocalExecutor forks this many workers up front
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            # The executor signs the task's token, the API server checks it: they must share the key.
            "AIRFLOW__API_AUTH__JWT_SECRET": "limio-crash-test-" + "0" * 64,
            # The API server's first request takes several seconds while it builds its versioned routes;
            # with the default 5 s timeout a task's `PATCH .../run` can time out and be sent twice.
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
            # Speed only: once its task process is gone, the supervisor can sit out one select() of up to
            # this many seconds (default 5) before it reaps it, after the kill and again after try 2.
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
        }
        try:
            start(["api-server", "--apps", "execution", "-H", "127.0.0.1", "-p", str(api_port)], api_log, env)
            dags_test = start(["dags", "test", "--use-executor", DAG_ID, "2026-01-01"], dags_log, env)
            started = time.monotonic()
            _wait_until(
                "the execution API",
                lambda: _healthy(f"http://127.0.0.1:{api_port}/execution/health"),
                STARTUP_TIMEOUT,
                *procs,
            )

            def order_created_and_unanswered() -> bool:
                posts = [r for r in emulator.requests if r.path == "/api/order"]
                return len(posts) == 1 and posts[0].status is None and len(emulator.orders) == 1

            _wait_until("the order to reach Limio", order_created_and_unanswered, STARTUP_TIMEOUT, *procs)
            # The task process is the only one talking to Limio: the supervisor talks to the API server.
            (task,) = _wait_until(
                "the task's connection to Limio",
                lambda: _processes_connected_to(psutil.Process(dags_test.pid), emulator_port),
                10,
                dags_test,
            )
            killed_pid = task.pid
            task.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            returncode = dags_test.wait(timeout=RECOVERY_TIMEOUT)
            done = time.monotonic() - killed_at
            print(f"killed the task {killed_at - started:.1f} s after the start; Airflow done {done:.1f} s later")
        except Exception as exc:
            raise AssertionError(f"{exc}{_summary(dags_log)}{_tail(dags_log)}{_tail(api_log)}") from exc
        finally:
            _stop(procs)
            for out in outputs:
                out.close()
        orders = emulator.orders
        requests = emulator.requests

    logs = _summary(dags_log)
    assert returncode == 0, f"airflow dags test failed{logs}"
    assert len(orders) == 1, orders
    (order,) = orders.values()
    assert order["external_id"] == EXTERNAL_ID
    posts = [i for i, r in enumerate(requests) if r.method == "POST" and r.path == "/api/order"]
    assert len(posts) == 1, f"the order was sent {len(posts)} times"
    lookups = [i for i, r in enumerate(requests) if r.path == "/api/objects/limio/orders"]
    assert lookups and lookups[-1] > posts[0], "the retry did not look the order up by external_id"

    with create_session() as session:
        (run,) = session.query(DagRun).filter_by(dag_id=DAG_ID).all()
        (ti,) = session.query(TaskInstance).filter_by(dag_id=DAG_ID, run_id=run.run_id).all()
        tries = session.query(TaskInstanceHistory).filter_by(dag_id=DAG_ID, run_id=run.run_id).all()
        assert (run.state, ti.state, ti.try_number) == ("success", "success", 2), logs
        # Try 1 is the process this test killed; Airflow 3.3 records it as "failed" (see the module docstring).
        assert [(t.try_number, t.pid) for t in tries] == [(1, killed_pid)], logs
        assert tries[0].state in ("failed", "up_for_retry"), logs
        run_ref = SimpleNamespace(dag_id=DAG_ID, run_id=run.run_id)
    (result,) = xcom(run_ref, "submit")
    assert result["id"] == order["id"]
    assert xcom(run_ref, "submit", "order_id") == [order["id"]]
    assert xcom(run_ref, "submit", "adopted") == [True]
