"""`make demo` end to end: its own Airflow home, a real `airflow dags test`, an emulator, a summary."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tools.demo import main

ROOT = Path(__file__).parent.parent.parent


def test_demo_runs_the_renewals_example_and_can_run_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_LIMIO_DEFAULT", raising=False)
    args = ["--dags-folder", str(ROOT / "dags_examples"), "--home", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "DAG run limio_scheduled_renewals (2026-01-01): success" in out
    assert "Orders previewed: 4" in out and "Orders submitted: 4" in out
    assert out.count(" complete") == 4
    assert (tmp_path / "airflow-home" / "airflow.db").exists()
    assert "Submitted order renew-sub-1001-2025-12-28" in (tmp_path / "airflow-dags-test.log").read_text()
    assert main(args) == 0  # a second run reuses the home and starts a fresh emulator
    assert "Orders submitted: 4" in capsys.readouterr().out


@pytest.fixture(scope="module")
def examples_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Airflow home for the examples below: its database is migrated once (slow on some Airflow lines)."""
    return tmp_path_factory.mktemp("examples")


@pytest.mark.parametrize(
    ("dag_id", "expected"),
    [
        ("limio_billing_reconciliation", "Orders submitted: 3"),
        ("limio_backfill_orders", "(3 submitted)"),  # the day's renewals file, through the batch operator
    ],
)
def test_the_other_examples_run_through_airflow_dags_test(
    dag_id: str, expected: str, examples_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_LIMIO_DEFAULT", raising=False)
    code = main(["--dags-folder", str(ROOT / "dags_examples"), "--home", str(examples_home), "--dag-id", dag_id])
    out = capsys.readouterr().out
    assert code == 0, (examples_home / "airflow-dags-test.log").read_text()[-3000:]
    assert f"DAG run {dag_id} (2026-01-01): success" in out
    assert expected in out
    if dag_id == "limio_billing_reconciliation":  # which order went where, for whom
        assert re.search(r"complete  /admin/order for partner \S+", out), out
