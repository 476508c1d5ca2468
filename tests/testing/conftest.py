"""Fixtures for the emulator's own tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from limio_provider.testing import LimioEmulator
from tests.helpers import Client, Connect, Start


@pytest.fixture
def connect() -> Iterator[Connect]:
    """``connect(emulator, authorised=True, admin=False)``: a :class:`Client` (``admin``: with the management
    client's token), closed after the test."""
    clients: list[Client] = []

    def _connect(emulator: LimioEmulator, authorised: bool = True, admin: bool = False) -> Client:
        clients.append(Client(emulator, authorised, admin))
        return clients[-1]

    yield _connect
    for client in clients:
        client.session.close()


@pytest.fixture
def emulators() -> Iterator[Start]:
    """``emulators(**options)``: a started emulator with those options, stopped after the test."""
    started: list[LimioEmulator] = []

    def _start(**options: Any) -> LimioEmulator:
        started.append(LimioEmulator(**options).start())
        return started[-1]

    yield _start
    for emulator in started:
        emulator.stop()


@pytest.fixture
def emu(limio_emulator: LimioEmulator) -> LimioEmulator:
    """The ``limio_emulator`` fixture, under a shorter name."""
    return limio_emulator


@pytest.fixture
def api(emu: LimioEmulator, connect: Connect) -> Client:
    """An authorised client of ``emu``."""
    return connect(emu)


@pytest.fixture
def admin_api(emu: LimioEmulator, connect: Connect) -> Client:
    """A client of ``emu`` with the management client's token (for ``/admin/order``)."""
    return connect(emu, admin=True)
