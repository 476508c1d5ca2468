"""Response bodies of Limio's order and objects endpoints.

All fields are optional and unknown fields are kept: Limio documents these responses only partly.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BeforeValidator

from limio_provider.models.orders import LimioModel


def _as_text(value: Any) -> str | None:
    """Read a field Limio documents loosely: text stays text, a number (e.g. epoch milliseconds) becomes
    its digits, and any other shape is kept as its JSON text. Never fatal."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    try:
        return json.dumps(value, sort_keys=True, default=str)
    except ValueError:
        return str(value)


#: A string field of an answer, read leniently (see :func:`_as_text`).
Text = Annotated[str | None, BeforeValidator(_as_text)]


def _orders_only(value: Any) -> Any:
    """The items of an order page that are objects; anything else in the list is skipped, not fatal."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def to_amount(value: Any) -> Decimal | None:
    """Read an amount Limio sent as a number or a string (``19.99`` or ``"19.99"``); ``None`` if absent."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


class _OrderFields(LimioModel):
    """What every answer about an order has: its id, status and external_id, and how to read the status."""

    id: Text = None
    status: Text = None
    external_id: Text = None

    @property
    def succeeded(self) -> bool:
        """Limio finished processing the order successfully."""
        return (self.status or "").strip().lower() in SUCCESS_STATUSES

    @property
    def failed(self) -> bool:
        """Limio stopped processing the order with a failure."""
        return (self.status or "").strip().lower() in FAILURE_STATUSES


class OrderResult(_OrderFields):
    """The answer to ``POST /order`` and ``POST /admin/order``."""

    order_reference: Text = None
    subscriptionReference: Text = None
    owner: Text = None

    @property
    def reason(self) -> str | None:
        """Limio's ``message`` on a failed order, if it sent one."""
        return _as_text((self.model_extra or {}).get("message"))


class PreviewResult(LimioModel):
    """The answer to ``POST /order/preview``: ``preview`` (Zuora-shaped) and the billing ``schedule``.

    Amounts arrive as numbers or strings; they are kept as sent, and :meth:`total_due` reads them.
    """

    preview: dict[str, Any] | None = None
    schedule: list[dict[str, Any]] | None = None

    def invoices(self) -> list[dict[str, Any]]:
        """The previewed invoices (``preview.previewResult.invoices``), empty if none."""
        result = (self.preview or {}).get("previewResult") or {}
        return list(result.get("invoices") or [])

    def total_due(self) -> Decimal:
        """What the customer would be charged next: the sum of the previewed invoices' ``amount``, or if
        there are none, the first ``schedule`` entry's ``amount``. Zero when the preview has neither."""
        amounts = [to_amount(invoice.get("amount")) for invoice in self.invoices()]
        if not amounts and self.schedule:
            amounts = [to_amount(self.schedule[0].get("amount"))]
        return sum((a for a in amounts if a is not None), Decimal(0))


#: Order statuses read as finished. Limio documents only ``complete`` and mentions "order complete" and
#: "change complete"; the rest are inferred. Compared case-insensitively; any other status is "processing".
SUCCESS_STATUSES = frozenset({"complete", "completed", "order complete", "change complete", "success", "succeeded"})
FAILURE_STATUSES = frozenset({"failed", "failure", "error", "errored", "rejected", "cancelled", "canceled"})


class OrderObject(_OrderFields):
    """An order as the Objects API returns it (``GET /objects/limio/orders/{id}``).

    Limio does not publish this schema or its status values; ``status`` is read as a plain string, and a
    failed order's reason is in :attr:`message`.
    """

    order_type: Text = None
    created: Text = None
    updated: Text = None
    message: Text = None


#: The object types of the Objects API (``GET /objects/limio/{path_type}``), as its docs enumerate them.
OBJECT_PATH_TYPES = frozenset(
    {
        "orders",
        "customers",
        "subscriptions",
        "identities",
        "address",
        "schedules",
        "payment_methods",
        "subscription_offers",
        "user_entitlements",
        "gift_code",
        "promo_codes_v2",
        "events",
        "process",
    }
)


class OrderPage(LimioModel):
    """One page of ``GET /objects/limio/orders``: ``items`` and the ``queryMore`` cursor (shape inferred)."""

    items: Annotated[list[OrderObject], BeforeValidator(_orders_only)] = []
    queryMore: Text = None


class ProcessEvent(LimioModel):
    """A process event (``GET /objects/limio/process/{id}``, or an item of an order's ``/related``): one
    execution of the order's processing pipeline, with what its plugins reported. Limio documents the error
    webhook's ``pluginErrorOutput: [{name, message}]`` and says a failed critical plugin fails the order and a
    non-critical one may fail without stopping it; the event's own schema is not published (``status`` is read
    as a plain string)."""

    id: Text = None
    status: Text = None
    pluginErrorOutput: Annotated[list[dict[str, Any]], BeforeValidator(_orders_only)] = []

    @staticmethod
    def is_one(item: dict[str, Any]) -> bool:
        """Whether a ``/related`` item is a process event (its ``record_type``, or its ``process_event-`` id)."""
        kind = str(item.get("record_type") or "").lower()
        return kind in ("process", "process_event") or str(item.get("id") or "").startswith("process_event-")

    def errors(self) -> list[str]:
        """Each plugin error as ``name: message``; a failed event without any says so."""
        found = [f"{e.get('name') or 'plugin'}: {e.get('message') or 'failed'}" for e in self.pluginErrorOutput]
        if not found and (self.status or "").strip().lower() in FAILURE_STATUSES:
            found = [f"process event {self.id} {self.status}"]
        return found
