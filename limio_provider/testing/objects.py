"""The emulator's Objects API beyond orders: the events, process events, customers and subscriptions an order
makes, and what ``/related`` answers.

Everything here is emulator behaviour, shaped after what Limio documents (its object samples, the error
webhook's ``pluginErrorOutput``): when an order is received it gets an event (``event-...``, "Order
Received"); when it finishes, a process event (``process_event-...``) with what its plugins did; a ``new``
order that completes also makes a customer (``cus-...``) and a subscription (``sub-...``, whose ``ref`` names
the order). Not thread-safe on its own: the emulator calls it under its lock.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

#: The object types the emulator serves besides ``orders``, and the ``record_type`` of each.
RECORD_TYPES = {"subscriptions": "subscription", "customers": "customer", "events": "event", "process": "process"}
#: The billing plugin the emulator's process events name, and the message of a "billing failed" fault.
BILLING_PLUGIN = "zuora"
BILLING_FAILURE = "Zuora: the subscription could not be created: payment gateway timeout"


class ObjectStore:
    """Objects by type, oldest first, each with ``id``, ``record_type``, ``service``, ``mode``, ``created`` and
    ``updated``, and ``order`` (the order it belongs to)."""

    def __init__(self) -> None:
        self._by_type: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in RECORD_TYPES}
        self._ids: dict[str, list[str]] = {kind: [] for kind in RECORD_TYPES}  # oldest first, to slice a page
        self._by_order: dict[str, list[tuple[str, str]]] = {}  # order id -> (type, id) of its objects

    def clear(self) -> None:
        for objects in self._by_type.values():
            objects.clear()
        for ids in self._ids.values():
            ids.clear()
        self._by_order.clear()

    def ids(self, kind: str) -> list[str]:
        """The ids of ``kind``'s objects, oldest first: the store's own list (not a copy, so a page is sliced
        from it in ``O(limit)``); read it under the emulator's lock and never change it."""
        return self._ids[kind]

    def get(self, kind: str, object_id: str) -> dict[str, Any] | None:
        found = self._by_type[kind].get(object_id)
        return dict(found) if found is not None else None

    def of_order(self, order_id: str) -> list[dict[str, Any]]:
        """The objects ``order_id`` made, oldest first."""
        return [dict(self._by_type[kind][object_id]) for kind, object_id in self._by_order.get(order_id, [])]

    def received(self, order: dict[str, Any], at: str) -> None:
        """An order arrived: its "Order Received" event."""
        self._add(
            "events",
            "event",
            order,
            at,
            external_id=order.get("external_id"),
            event={"message": "Order Received", "type": f"order.{order.get('order_type')}"},
        )

    def finished(self, order: dict[str, Any], reason: str | None, billing_failure: str | None, at: str) -> None:
        """An order finished (``complete``, or ``failed`` with ``reason``): its process event, whose billing
        plugin failed with ``billing_failure`` if given (the order stays complete: Limio's docs say a webhook
        fires whatever later plugins do); a completed ``new`` order's customer and subscription."""
        errors = [{"name": BILLING_PLUGIN, "message": message} for message in (reason, billing_failure) if message]
        events = [obj for obj in self.of_order(order["id"]) if obj["record_type"] == "event"]
        self._add(
            "process",
            "process_event",
            order,
            at,
            eventId=events[0]["id"] if events else None,
            external_id=order.get("external_id"),
            status="failed" if errors else "complete",
            pluginOutput=[{"name": BILLING_PLUGIN, "status": "failed" if errors else "success"}],
            pluginErrorOutput=errors,
        )
        if order.get("status") != "complete" or order.get("order_type") != "new":
            return
        customer = self._add("customers", "cus", order, at, owner=order.get("owner"))
        self._add(
            "subscriptions",
            "sub",
            order,
            at,
            name=order.get("subscriptionReference"),
            reference=order.get("subscriptionReference"),
            ref=f"{order['id']}/{uuid.uuid4()}",
            customer=customer["id"],
            owner=order.get("owner"),
            status="active",
            start=at[:10],
        )

    def _add(self, kind: str, prefix: str, order: dict[str, Any], at: str, **fields: Any) -> dict[str, Any]:
        object_id = f"{prefix}-{secrets.token_hex(16)}"
        stored = {
            "id": object_id,
            "record_type": RECORD_TYPES[kind],
            "service": "limio",
            "mode": "test",
            "order": order["id"],
            "created": at,
            "updated": at,
            **fields,
        }
        self._by_type[kind][object_id] = stored
        self._ids[kind].append(object_id)
        self._by_order.setdefault(order["id"], []).append((kind, object_id))
        return stored
