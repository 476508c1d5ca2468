"""Issue 21: a batch's approval in a real browser, in Airflow's own Required Actions form: the person reads the
preview pass's summary and clicks Send; the parked run resumes and sends the orders."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest

from tests.helpers import tail
from tests.ui import pages
from tests.ui.conftest import ARTIFACTS, START_SECONDS
from tests.ui.pages import button, click

if TYPE_CHECKING:
    from pathlib import Path

    from selenium.webdriver.remote.webdriver import WebDriver

    from limio_provider.testing.emulator import LimioEmulator
    from tests.ui.conftest import Airflow

pytestmark = pytest.mark.ui

DAG_ID, TASK_ID = "limio_ui_approval", "submit_batch"


def test_a_person_approves_a_batch_in_required_actions(
    browser: WebDriver, airflow: Airflow, emulator: LimioEmulator, tmp_path: Path
) -> None:
    airflow.dag_run_id()  # the session's first DAG run has finished: one `dags test` at a time on SQLite
    log = ARTIFACTS / "airflow-dags-test-approval.log"
    env = airflow.env | emulator.connection_env() | {"LIMIO_UI_LEDGER": f"file://{tmp_path}/ledger"}
    with log.open("wb") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "airflow", "dags", "test", DAG_ID, "2026-01-02"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        run_id = parked(airflow, run, log)
        assert not any(emulator.orders_with_external_id(f"ui-approval-{n}") for n in range(3))  # previewed only
        browser.get(f"{airflow.url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/{TASK_ID}/required_actions")
        page = pages.visible(browser, "//*[contains(., 'Send 3 Limio orders, total due 59.97?')]")
        pages.wait(browser).until(lambda _: "Orders to send" in page.text, "the summary is not shown")
        pages.screenshot(browser, "10-approval-required-action")
        click(browser, button("Send"))
        assert run.wait(timeout=START_SECONDS) == 0, tail(log)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert all(len(emulator.orders_with_external_id(f"ui-approval-{n}")) == 1 for n in range(3))
    ti = airflow.api(f"dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/{TASK_ID}")
    assert ti["state"] == "success", ti


def parked(airflow: Airflow, run: subprocess.Popen[bytes], log: Path) -> str:
    """The run id once its batch waits for a person (``awaiting_input``)."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if run.poll() is not None:
            pytest.fail(f"airflow dags test {DAG_ID} ended ({run.returncode}) before asking:\n{tail(log)}")
        runs = airflow.api(f"dags/{DAG_ID}/dagRuns").get("dag_runs", [])
        for dag_run in runs:
            path = f"dags/{DAG_ID}/dagRuns/{quote(dag_run['dag_run_id'], safe='')}/taskInstances/{TASK_ID}"
            try:
                state = airflow.api(path)["state"]
            except urllib.error.HTTPError:  # not made yet
                continue
            if state == "awaiting_input":
                return str(dag_run["dag_run_id"])
        time.sleep(0.5)
    pytest.fail(f"{DAG_ID} never asked within {START_SECONDS} s:\n{tail(log)}")
