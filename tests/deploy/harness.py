"""The deployment tests' machinery: Airflow's processes (each in its own process group, logs to files) and a
small client of Airflow's REST API (``/api/v2``; the Simple auth manager makes everyone an admin: on 3.3 no
token, on 3.1 one it gives without credentials).

Every wait is bounded, and a wait that runs out fails the test with what it saw and the tails of the logs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
import pytest
import requests

from tests.helpers import AIRFLOW_VERSION, free_port, tail

REPO = Path(__file__).resolve().parents[2]
#: ``artifacts/deploy/`` on the primary line, ``artifacts/deploy-airflow-3.1/`` (...) on the others.
_LINE = "{}.{}".format(*AIRFLOW_VERSION.release[:2])
ARTIFACTS = REPO / "artifacts" / ("deploy" if AIRFLOW_VERSION.release[:2] >= (3, 3) else f"deploy-airflow-{_LINE}")
TEST_DAGS = Path(__file__).resolve().parent / "dags"
EXAMPLE_DAGS = REPO / "dags_examples"
AIRFLOW = [sys.executable, "-m", "airflow"]
#: How long Airflow may take to start: migrate, then four processes importing Airflow side by side on 2 cores.
START_SECONDS = 180
#: How long one DAG run may take (a task start costs a few seconds of CPU on 2 cores).
RUN_SECONDS = 120


def wait_until(
    what: str, check: Callable[[], Any], timeout: float, interval: float = 0.25, detail: Callable[[], str] = str
) -> Any:
    """``check()``'s first truthy value, polled every ``interval`` s; the test fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s\n{detail()}", pytrace=False)
        time.sleep(interval)


@dataclass
class Service:
    """One long-running process this harness started, in its own process group."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    #: What asks it to stop (PostgreSQL: SIGINT, its fast shutdown; SIGTERM waits for every client to leave).
    stop_signal: int = signal.SIGTERM
    #: Killed on purpose by a test: its death is not a failure.
    killed: bool = False

    def alive(self) -> bool:
        return self.process.poll() is None

    def family(self) -> list[psutil.Process]:
        """The process and every descendant (a worker's task processes too), wherever their groups are."""
        try:
            process = psutil.Process(self.process.pid)
            return [process, *process.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, grace: float = 20.0, family: list[psutil.Process] | None = None, signalled: bool = False) -> None:
        """SIGTERM to its process group (unless ``signalled`` already: a second SIGTERM makes Airflow's services
        exit at once, skipping their clean-up), then SIGKILL to the group and to every descendant still alive."""
        family = self.family() if family is None else family
        if self.alive():
            if not signalled:
                _signal_group(self.process.pid, self.stop_signal)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.process.pid, signal.SIGKILL)
        _, left = psutil.wait_procs(family, timeout=5)
        for process in left:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(left, timeout=5)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


@dataclass
class Processes:
    """The services of one deployment: started in order, stopped in reverse order (always: see ``close``)."""

    env: dict[str, str]
    logs: Path
    services: list[Service] = field(default_factory=list)

    def run(self, name: str, argv: list[str], timeout: float = START_SECONDS) -> None:
        """Run a command to completion (e.g. ``airflow db migrate``); the test fails if it fails."""
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            try:
                done = subprocess.run(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name} took over {timeout:.0f} s:\n{tail(log)}", pytrace=False)
        if done.returncode != 0:
            pytest.fail(f"{name} failed ({done.returncode}):\n{tail(log)}", pytrace=False)

    def start(
        self, name: str, argv: list[str], env: Mapping[str, str] | None = None, stop_signal: int = signal.SIGTERM
    ) -> Service:
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv,
                env={**self.env, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, stopped as one
            )
        service = Service(name, process, log, stop_signal)
        self.services.append(service)
        return service

    def kill(self, service: Service) -> list[int]:
        """SIGKILL ``service``, its process group and every descendant at once, as a machine losing it would;
        the pids killed."""
        family = service.family()
        service.killed = True
        _signal_group(service.process.pid, signal.SIGKILL)
        for process in family:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(family, timeout=10)
        service.process.wait(timeout=10)
        return [process.pid for process in family]

    def check_alive(self) -> None:
        for service in self.services:
            if not service.alive() and not service.killed:
                pytest.fail(
                    f"{service.name} exited ({service.process.returncode}):\n{tail(service.log)}", pytrace=False
                )

    def tails(self, lines: int = 15) -> str:
        return "\n".join(f"--- {s.name} ({s.log}):\n{tail(s.log, lines)}" for s in self.services)

    def mentions(self, text: str, lines: int = 30) -> str:
        """The last ``lines`` lines of each process's log that mention ``text``."""
        found = []
        for s in self.services:
            log = s.log.read_text(errors="replace") if s.log.exists() else ""
            hits = [line for line in log.splitlines() if text in line]
            if hits:
                found.append(f"--- {s.name} lines with {text}:\n" + "\n".join(hits[-lines:]))
        return "\n".join(found)

    def close(self) -> None:
        """Stop every service: SIGTERM to all their groups at once, then each is waited for (and killed)."""
        families = [service.family() for service in self.services]
        for service in self.services:
            if service.alive():
                _signal_group(service.process.pid, service.stop_signal)
        for service, family in zip(self.services, families, strict=True):
            service.stop(family=family, signalled=True)


#: What in a triggerer's log says it is not well: a trigger runner that died (3.x), a runner channel answered out
#: of order (3.1), a trigger that failed, any traceback.
TRIGGERER_TROUBLE = ("Response read out of order", "Trigger runner process has died", "Trigger failed", "Traceback")


def triggerer_log_problems(processes: Processes) -> list[str]:
    """What says the deployment's triggerer is not well, from its process and its log (any Airflow line)."""
    triggerer = next(s for s in processes.services if s.name == "triggerer")
    problems = [] if triggerer.alive() else ["the triggerer exited"]
    text = triggerer.log.read_text(errors="replace")
    return problems + [f"the triggerer's log shows {sign!r}" for sign in TRIGGERER_TROUBLE if sign in text]


def failed_by_asset_alias_race(processes: Processes) -> set[str]:
    """The task instances (ids) the API server failed on a success report for Airflow's race on the asset
    alias's link to an asset (a unique-constraint error on ``asset_alias_asset``: docs/chaining.md)."""
    api_server = next(s for s in processes.services if s.name == "api-server")
    # One entry per record: a timestamped line and what follows it (a traceback).
    entries = re.split(r"\n(?=\d{4}-\d{2}-\d{2}T)", api_server.log.read_text(errors="replace"))

    def field(name: str, entry: str) -> str | None:
        found = re.search(rf"\b{name}=(\S+)", entry.partition("\n")[0])
        return found.group(1) if found else None

    raced = [e for e in entries if "Error updating Task Instance state" in e and "asset_alias_asset" in e]
    # Airflow 3.1 names the task instance on the error; 3.3 only the request, named again when the state is set.
    request_ids = {field("correlation_id", e) for e in raced} - {None}
    named = [e for e in entries if "new_state=failed" in e and field("correlation_id", e) in request_ids]
    return {ti_id for e in raced + named if (ti_id := field("ti_id", e))}


def airflow_env(home: Path, *, api_port: int, logs: Path, executor: str, extra: Mapping[str, str]) -> dict[str, str]:
    """The environment every Airflow process of a deployment shares (nothing inherited from ``AIRFLOW_*``)."""
    bundles = [
        {
            "name": "deploy-tests",
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(TEST_DAGS)},
        },
        {
            "name": "examples",
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(EXAMPLE_DAGS)},
        },
    ]
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AIRFLOW_", "AIRFLOW__"))}
    env |= {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__EXECUTOR": executor,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(TEST_DAGS),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__PARALLELISM": "8",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",  # /api/v2 without a token
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__API_AUTH__JWT_SECRET": "limio-deploy-tests-" + "not-a-secret-" * 4,  # >= 64 bytes for HS512
        # Free ports for the log servers (8793 and 8794 by default): another deployment may be running.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__CORE__FERNET_KEY": "",
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "60",
        # Only the runs the tests trigger: no cron intervals, no catch-up runs of the examples.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        # A task whose worker died is failed (and retried) after 30 s instead of Airflow's 300 s.
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(logs / "task-logs"),
        "AIRFLOW__LOGGING__DAG_PROCESSOR_CHILD_PROCESS_LOG_DIRECTORY": str(logs / "dag-processor-logs"),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    return env | dict(extra)


class AirflowApi:
    """Airflow's REST API (``/api/v2``) for the tests: trigger, wait, read states, XComs, links and logs."""

    def __init__(self, url: str, processes: Processes) -> None:
        self.url = url
        self.processes = processes
        self.http = requests.Session()
        self.http.trust_env = False  # never a proxy to loopback

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        answer = self.http.request(method, f"{self.url}/api/v2/{path}", timeout=30, **kwargs)
        if answer.status_code == 401 and "Authorization" not in self.http.headers:
            # Airflow 3.1 asks for a token even when everyone is an admin: it gives one without credentials.
            token = self.http.get(f"{self.url}/auth/token", timeout=30)
            if token.status_code in (200, 201):
                self.http.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
                answer = self.http.request(method, f"{self.url}/api/v2/{path}", timeout=30, **kwargs)
        return answer

    def get(self, path: str, **params: Any) -> Any:
        answer = self._call("GET", path, params=params)
        assert answer.status_code == 200, f"GET {path}: {answer.status_code} {answer.text[:500]}"
        return answer.json()

    def send(self, method: str, path: str, body: Any, expect: Iterable[int] = (200, 201)) -> Any:
        answer = self._call(method, path, json=body)
        assert answer.status_code in tuple(expect), f"{method} {path}: {answer.status_code} {answer.text[:500]}"
        return answer.json() if answer.content else None

    # -- readiness ----------------------------------------------------------------------------------

    def healthy(self) -> bool:
        """The api-server answers and the scheduler, dag-processor and triggerer have heartbeat."""
        try:
            health = self._call("GET", "monitor/health").json()
        except (requests.RequestException, ValueError):
            return False
        parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
        return all((health.get(part) or {}).get("status") == "healthy" for part in parts)

    def has_dags(self, dag_ids: Iterable[str]) -> bool:
        return all(self._call("GET", f"dags/{dag_id}").status_code == 200 for dag_id in dag_ids)

    def import_errors(self) -> str:
        errors = self.get("importErrors").get("import_errors", [])
        return "\n".join(f"{e.get('filename')}: {e.get('stack_trace', '')[-800:]}" for e in errors) or "none"

    # -- runs ---------------------------------------------------------------------------------------

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, logical_date: str | None = None) -> str:
        """A manual run of ``dag_id``; its run id."""
        body = {"logical_date": logical_date, "conf": conf or {}}
        return self.send("POST", f"dags/{dag_id}/dagRuns", body)["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.get(f"dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")

    def wait_run(self, dag_id: str, run_id: str, timeout: float = RUN_SECONDS) -> str:
        """The run's final state (``success`` or ``failed``), waiting at most ``timeout`` s."""

        def final() -> str | None:
            self.processes.check_alive()
            state = self.run(dag_id, run_id)["state"]
            return state if state in ("success", "failed") else None

        return wait_until(
            f"run {dag_id}/{run_id} to finish", final, timeout, 0.5, lambda: self.diagnose(dag_id, run_id)
        )

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.get(f"dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances", limit=1000)["task_instances"]

    def states(self, dag_id: str, run_id: str, tis: list[dict[str, Any]] | None = None) -> dict[str, str | None]:
        """``{task_id or task_id[map_index]: state}`` (of ``tis`` when given)."""
        return {
            ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else ""): ti["state"]
            for ti in (self.task_instances(dag_id, run_id) if tis is None else tis)
        }

    def ti_path(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
        path = f"dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"
        return path if map_index < 0 else f"{path}/{map_index}"

    def ti(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        return self.get(self.ti_path(dag_id, run_id, task_id, map_index))

    def wait_ti(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        states: Iterable[str],
        timeout: float = RUN_SECONDS,
        map_index: int = -1,
    ) -> dict[str, Any]:
        wanted = set(states)

        def reached() -> dict[str, Any] | None:
            self.processes.check_alive()
            ti = self.ti(dag_id, run_id, task_id, map_index)
            return ti if ti["state"] in wanted else None

        return wait_until(
            f"task {dag_id}/{run_id}/{task_id} to be {sorted(wanted)}",
            reached,
            timeout,
            0.2,
            lambda: self.diagnose(dag_id, run_id),
        )

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        path = f"dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/xcomEntries/{key}"
        return self.get(path, map_index=map_index)["value"]

    def links(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        path = f"dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/links"
        return self.get(path, map_index=map_index)["extra_links"]

    def log(self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> str:
        """The task's log of one try, as text."""
        path = f"dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/logs/{try_number}"
        answer = self._call(
            "GET", path, params={"map_index": map_index, "full_content": "true"}, headers={"Accept": "application/json"}
        )
        assert answer.status_code == 200, f"GET {path}: {answer.status_code} {answer.text[:500]}"
        content = answer.json().get("content")
        if isinstance(content, list):
            return "\n".join(json.dumps(line) if not isinstance(line, str) else line for line in content)
        return str(content)

    def clear(self, dag_id: str, run_id: str, task_ids: list[str], only_failed: bool = False) -> None:
        body = {
            "dry_run": False,
            "dag_run_id": run_id,
            "task_ids": task_ids,
            "only_failed": only_failed,
            "reset_dag_runs": True,
        }
        self.send("POST", f"dags/{dag_id}/clearTaskInstances", body)

    def set_connection(self, conn_id: str, connection: dict[str, Any]) -> None:
        """Store ``connection`` (an ``AIRFLOW_CONN_*`` JSON object) in the metadata database as ``conn_id``."""
        body = {**connection, "connection_id": conn_id, "extra": json.dumps(connection.get("extra") or {})}
        self.send("POST", "connections", body)

    def triggerer_problems(self) -> list[str]:
        """What says the triggerer is not well: its health in ``/monitor/health``, and errors its log shows
        (a trigger runner that died, a runner channel answered out of order)."""
        problems = triggerer_log_problems(self.processes)
        health = self._call("GET", "monitor/health").json()
        if (health.get("triggerer") or {}).get("status") != "healthy":
            problems.append(f"triggerer health: {health.get('triggerer')}")
        return problems

    def set_variable(self, key: str, value: str) -> None:
        self.send("POST", "variables", {"key": key, "value": value})

    def variable(self, key: str) -> str | None:
        """The Variable's value, or None if it is not set."""
        answer = self._call("GET", f"variables/{quote(key, safe='')}")
        assert answer.status_code in (200, 404), f"GET variables/{key}: {answer.status_code} {answer.text[:500]}"
        return answer.json()["value"] if answer.status_code == 200 else None

    def diagnose(self, dag_id: str, run_id: str) -> str:
        """Task states; each failed try's own log and what the processes logged of it; errors the processes
        logged; the end of every process's log."""
        parts = []
        try:
            tis = self.task_instances(dag_id, run_id)
            parts.append(f"task states: {self.states(dag_id, run_id, tis)}")
            for ti in tis:
                if ti["state"] in ("failed", "upstream_failed", "up_for_retry") and ti["try_number"]:
                    log = self.log(dag_id, run_id, ti["task_id"], ti["try_number"], ti["map_index"])
                    tail = "\n".join(log.splitlines()[-40:])
                    parts.append(f"--- {ti['task_id']}[{ti['map_index']}] try {ti['try_number']} ({ti['id']}):\n{tail}")
                    parts.append(self.processes.mentions(ti["id"]))
        except Exception as exc:  # the diagnosis must not hide the failure it explains
            parts.append(f"diagnosis failed: {exc!r}")
        return "\n".join([*parts, self.processes.mentions("[error"), self.processes.tails()])
