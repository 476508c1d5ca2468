"""The code shown in the README and the docs runs as shown."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from limio_provider.testing import LimioEmulator
from tests.helpers import START, run_dag, states, xcom

ROOT = Path(__file__).parent.parent


def python_blocks(path: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / path).read_text(), flags=re.S)


@pytest.mark.usefixtures("airflow_db")
def test_readme_dag_previews_guards_and_submits(limio_emulator: LimioEmulator) -> None:
    namespace: dict[str, Any] = {}
    exec(python_blocks("README.md")[0], namespace)
    dag = namespace["renewals"]()
    run = run_dag(dag, logical_date=START)
    assert run.state == "success", states(run)
    (order,) = limio_emulator.orders_with_external_id("renew-sub-123-2026-01-01")
    assert xcom(run, "submit")[0]["id"] == order["id"]


def test_the_package_index_page_shows_the_readme_example_and_links_nowhere_relative() -> None:
    assert python_blocks("docs/package-index.md")[0] == python_blocks("README.md")[0]
    text = (ROOT / "docs/package-index.md").read_text()
    assert re.findall(r"\]\((?!https://)[^)]*\)", text) == []  # an index page has no repository to link into


def test_testing_page_fixture_example_runs(limio_emulator: LimioEmulator) -> None:
    namespace: dict[str, Any] = {}
    exec(python_blocks("docs/testing.md")[0], namespace)
    namespace["test_my_order"](limio_emulator)
    assert len(limio_emulator.orders) == 1
