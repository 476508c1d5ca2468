"""A local Limio emulator, like moto for AWS: ``LimioEmulator``, ``Fault`` and a ``limio_emulator`` fixture.

``LimioEmulator`` is imported on first use, so loading the pytest plugin stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from limio_provider.testing.faults import Fault

if TYPE_CHECKING:
    from limio_provider.testing.emulator import LimioEmulator

__all__ = ["Fault", "LimioEmulator"]


def __getattr__(name: str) -> Any:
    """Import ``LimioEmulator`` (and with it the order models) only when asked for."""
    if name == "LimioEmulator":
        from limio_provider.testing.emulator import LimioEmulator

        return LimioEmulator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
