"""Pytest plugin (entry point ``pytest11``): the ``limio_emulator`` fixture.

Kept cheap to import: the emulator itself is imported when a test first asks for the fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from limio_provider.testing.emulator import LimioEmulator


@pytest.fixture
def limio_emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[LimioEmulator]:
    """A running Limio emulator for one test, with ``AIRFLOW_CONN_LIMIO_DEFAULT`` (its client) and
    ``AIRFLOW_CONN_LIMIO_ADMIN`` (its management client, for ``/admin/order``) pointing at it."""
    from limio_provider.testing.emulator import LimioEmulator

    with LimioEmulator() as emulator:
        for name, value in emulator.connection_env().items():
            monkeypatch.setenv(name, value)
        yield emulator
