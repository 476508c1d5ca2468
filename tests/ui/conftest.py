"""The UI tests' world, built once per session: a Limio emulator in this process, a scratch Airflow home (SQLite)
with one DAG run that submitted an order to the emulator, a real ``airflow api-server`` on a free loopback port,
and a headless Chromium from the OS packages (``.ci/install-browser``) driven through its chromedriver.

Screenshots and the Airflow processes' logs go to ``artifacts/ui/`` at the top of the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers import LIMIO_S3_CONN_ID, free_port, moto_client, tail

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

    from limio_provider.testing.emulator import LimioEmulator

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "ui"
DAGS_FOLDER = Path(__file__).resolve().parent / "dags"
DAG_ID, TASK_ID, EXTERNAL_ID = "limio_ui_order", "submit_order", "ui-order-1"
BATCH_TASK_ID = "submit_batch"
CHROMIUM = os.environ.get("LIMIO_UI_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("LIMIO_UI_CHROMEDRIVER", "/usr/bin/chromedriver")
#: How long a page may take to show what a test waits for (the first page load compiles nothing: it is fast).
WAIT_SECONDS = 30
#: How long Airflow may take to start (migrate, then the api-server and the DAG run side by side on 2 cores).
START_SECONDS = 120


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """``artifacts/ui/``, emptied once per session."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def emulator() -> Iterator[LimioEmulator]:
    """The Limio tenant everything talks to: the api-server (connection tests), the DAG run and the browser."""
    from limio_provider.testing.emulator import LimioEmulator

    with LimioEmulator() as running:
        yield running


@pytest.fixture(scope="session")
def results_bucket(moto_s3: str) -> str:
    """A bucket in moto for the UI batch's results: ``s3://limio_s3@<bucket>``."""

    client = moto_client(moto_s3)
    client.create_bucket(Bucket="limio-ui-results")
    return f"s3://{LIMIO_S3_CONN_ID}@limio-ui-results"


@dataclass
class Airflow:
    """The running Airflow: its api-server's URL and the DAG run's id (once :meth:`dag_run_id` has waited)."""

    url: str
    env: dict[str, str]
    dag_test: subprocess.Popen[bytes]
    dag_test_log: Path
    _run_id: str | None = None

    def api(self, path: str) -> Any:
        """GET ``/api/v2/<path>`` (the Simple auth manager makes everyone an admin: no token)."""
        import json

        with urllib.request.urlopen(f"{self.url}/api/v2/{path}", timeout=30) as answer:
            return json.load(answer)

    def dag_run_id(self) -> str:
        """The run ``airflow dags test`` made, once it has finished (it was started beside the api-server)."""
        if self._run_id is None:
            try:
                code = self.dag_test.wait(timeout=START_SECONDS)
            except subprocess.TimeoutExpired:
                self.dag_test.kill()
                pytest.fail(f"airflow dags test {DAG_ID} took over {START_SECONDS} s:\n{tail(self.dag_test_log)}")
            if code != 0:
                pytest.fail(f"airflow dags test {DAG_ID} failed ({code}):\n{tail(self.dag_test_log)}")
            runs = self.api(f"dags/{DAG_ID}/dagRuns")["dag_runs"]
            assert len(runs) == 1 and runs[0]["state"] == "success", runs
            self._run_id = runs[0]["dag_run_id"]
        return self._run_id


@pytest.fixture(scope="session")
def airflow(
    tmp_path_factory: pytest.TempPathFactory,
    emulator: LimioEmulator,
    artifacts: Path,
    results_bucket: str,
    limio_s3_conn: str,
) -> Iterator[Airflow]:
    """A scratch Airflow home on SQLite, migrated; then ``airflow api-server`` and ``airflow dags test`` of the
    UI DAG (an order submitted to the emulator) started together. Yields once the api-server answers."""
    home = tmp_path_factory.mktemp("airflow-ui-home")
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AIRFLOW_", "AIRFLOW__"))}
    env |= {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",  # no login page
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",  # the connection list's Test button
        "NO_PROXY": "127.0.0.1,localhost",
    }
    airflow_cli = [sys.executable, "-m", "airflow"]
    migrate_log = artifacts / "airflow-db-migrate.log"
    with migrate_log.open("wb") as out:
        migrated = subprocess.run([*airflow_cli, "db", "migrate"], env=env, stdout=out, stderr=subprocess.STDOUT)
    if migrated.returncode != 0:
        pytest.fail(f"airflow db migrate failed:\n{tail(migrate_log)}")

    port = free_port()
    server_log, dag_test_log = artifacts / "airflow-api-server.log", artifacts / "airflow-dags-test.log"
    with server_log.open("wb") as server_out, dag_test_log.open("wb") as dag_out:
        server = subprocess.Popen(
            [*airflow_cli, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env,
            stdout=server_out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as one below
        )
        batch = {  # the batch's ledger on disk, its results on S3 (moto's): where its link leads
            "LIMIO_UI_LEDGER": f"file://{tmp_path_factory.mktemp('limio-ui-ledger')}",
            "LIMIO_UI_RESULTS": f"{results_bucket}/batch.results.jsonl",
            f"AIRFLOW_CONN_{LIMIO_S3_CONN_ID.upper()}": limio_s3_conn,
        }
        dag_env = env | emulator.connection_env() | batch  # limio_default: the emulator
        dag_test = subprocess.Popen(
            [*airflow_cli, "dags", "test", DAG_ID, "2026-01-01"], env=dag_env, stdout=dag_out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            if server.poll() is not None:
                pytest.fail(f"airflow api-server exited ({server.returncode}):\n{tail(server_log)}")
            try:
                with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"airflow api-server did not answer within {START_SECONDS} s:\n{tail(server_log)}")
            time.sleep(0.25)
        yield Airflow(url=url, env=env, dag_test=dag_test, dag_test_log=dag_test_log)
    finally:
        for process in (dag_test, server):
            if process.poll() is None:
                if process is server:
                    os.killpg(server.pid, 15)  # the group this fixture started: the api-server and its workers
                else:
                    process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.fixture(scope="session")
def browser(artifacts: Path) -> Iterator[WebDriver]:
    """Headless Chromium from the OS packages, through the OS's chromedriver (never Selenium Manager)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(
            f"no browser for the UI tests: {', '.join(missing)} missing. Run them with `make test-ui`, which "
            "installs Debian's chromium and chromium-driver (.ci/install-browser), or set LIMIO_UI_CHROMIUM and "
            "LIMIO_UI_CHROMEDRIVER.",
            pytrace=False,
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        "--lang=en-US",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(argument)
    service = Service(
        CHROMEDRIVER, service_args=["--log-level=WARNING"], log_output=str(artifacts / "chromedriver.log")
    )
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(WAIT_SECONDS)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item, so the screenshot fixture knows whether the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(autouse=True)
def screenshot_on_failure(request: pytest.FixtureRequest, artifacts: Path) -> Iterator[None]:
    """A screenshot of the browser (if the test used it) when a UI test fails: ``artifacts/ui/FAILED-<test>.png``."""
    yield
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed and "browser" in request.fixturenames:
        driver = request.getfixturevalue("browser")
        for handle in driver.window_handles:
            driver.switch_to.window(handle)
            driver.save_screenshot(str(artifacts / f"FAILED-{request.node.name}-{handle[:8]}.png"))
