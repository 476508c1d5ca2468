"""Test set-up: a throw-away AIRFLOW_HOME (set before anything imports Airflow) and a SQLite DB on demand."""

from __future__ import annotations

import os
import tempfile

os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="limio-airflow-home-")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = os.path.join(os.environ["AIRFLOW_HOME"], "dags")
os.makedirs(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.pop("AIRFLOW_CONN_LIMIO_DEFAULT", None)

from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402

from tests.helpers import Capture  # noqa: E402


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """A fresh SQLite metadata DB under the test AIRFLOW_HOME, created once per session."""
    from airflow.utils import db

    db.resetdb()



@pytest.fixture
def capture() -> Iterator[Capture]:
    """A loopback server that records what reaches it: a redirect target or a proxy must see nothing."""
    with Capture() as server:
        yield server
