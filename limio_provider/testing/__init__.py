"""A local Limio emulator, like moto for AWS: ``LimioEmulator``, ``Fault`` and a ``limio_emulator`` fixture;
and ``run_dag`` to run a DAG with ``dag.test()`` on any supported Airflow.

``LimioEmulator`` is imported on first use, so loading the pytest plugin stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from limio_provider.testing.dags import migrate_db, run_dag, task_states, xcom_values
from limio_provider.testing.faults import Fault

if TYPE_CHECKING:
    from limio_provider.testing.emulator import LimioEmulator

__all__ = ["Fault", "LimioEmulator", "migrate_db", "run_dag", "sample_order", "task_states", "xcom_values"]


def sample_order(external_id: str = "EXT-1", **fields: Any) -> dict[str, Any]:
    """A valid ``new`` order for an offer in the emulator's catalogue; ``fields`` override or add fields.

    Its payment ``refId`` is ``pm-1``: pass ``decline_payment_refs={"pm-1"}`` to the emulator to see it fail.
    """
    return {
        "order_type": "new",
        "external_id": external_id,
        "orderItems": [{"offer": {"id": "offer-digital-monthly"}, "quantity": 1}],
        "billingDetails": {"firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com", "country": "GB"},
        "payment": {"type": "zuora", "zuora": {"refId": "pm-1", "paymentGateway": "CreditCard_UK"}},
        "checkoutId": "basket-22e3d318",
        "country": "GB",
        **fields,
    }


def __getattr__(name: str) -> Any:
    """Import ``LimioEmulator`` (and with it the order models) only when asked for."""
    if name == "LimioEmulator":
        from limio_provider.testing.emulator import LimioEmulator

        return LimioEmulator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
