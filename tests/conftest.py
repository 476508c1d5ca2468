"""Test set-up: a throw-away AIRFLOW_HOME (set before anything imports Airflow) and a SQLite DB on demand."""

from __future__ import annotations

import os
import tempfile

os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="limio-airflow-home-")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = os.path.join(os.environ["AIRFLOW_HOME"], "dags")
os.makedirs(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.pop("AIRFLOW_CONN_LIMIO_DEFAULT", None)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """A fresh SQLite metadata DB under the test AIRFLOW_HOME, created once per session."""
    from airflow.utils import db

    db.resetdb()

