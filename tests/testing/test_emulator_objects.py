"""The emulator's Objects API beyond orders, over real HTTP: what an order makes, ``/related``, paging, and the
"processed, billing failed" fault."""

from __future__ import annotations

from typing import Any

import pytest

from limio_provider.testing import Fault, LimioEmulator
from limio_provider.testing.objects import BILLING_FAILURE
from tests.helpers import Client, Connect, Start

OBJECTS = "/api/objects/limio"


def related(client: Client, kind: str, object_id: str) -> dict[str, list[dict[str, Any]]]:
    """``/related`` of an object, by record type."""
    answer = client.get(f"{OBJECTS}/{kind}/{object_id}/related")
    assert answer.status_code == 200, answer.text
    found: dict[str, list[dict[str, Any]]] = {}
    for item in answer.json()["items"]:
        found.setdefault(item["record_type"], []).append(item)
    return found


def every(client: Client, kind: str, limit: int) -> list[dict[str, Any]]:
    """Every object of ``kind``, page by page through ``queryMore``."""
    items, query = [], {"limit": limit}
    while True:
        page = client.get(f"{OBJECTS}/{kind}", params=query).json()
        items += page["items"]
        if not page["queryMore"]:
            return items
        query = {"limit": limit, "queryMore": page["queryMore"]}


def test_a_new_order_makes_an_event_a_process_event_a_customer_and_a_subscription(
    emulators: Start, connect: Connect
) -> None:
    emulator = emulators()
    client = connect(emulator)
    order = client.order(external_id="EXT-OBJ", process_immediately=True).json()
    objects = related(client, "orders", order["id"])
    assert sorted(objects) == ["customer", "event", "process", "subscription"]
    (event,) = objects["event"]
    assert event["event"] == {"message": "Order Received", "type": "order.new"} and event["id"].startswith("event-")
    (process,) = objects["process"]
    assert process["id"].startswith("process_event-") and process["eventId"] == event["id"]
    assert (process["status"], process["pluginErrorOutput"]) == ("complete", [])
    (subscription,) = objects["subscription"]
    (customer,) = objects["customer"]
    assert subscription["ref"].startswith(order["id"] + "/") and subscription["customer"] == customer["id"]
    assert subscription["name"] == order["subscriptionReference"]
    for kind, obj in (("events", event), ("process", process), ("subscriptions", subscription)):
        assert client.get(f"{OBJECTS}/{kind}/{obj['id']}").json() == obj
        assert obj["created"].endswith("Z") and obj["service"] == "limio"
    # A subscription's related objects: its order first, then the order's other objects.
    back = related(client, "subscriptions", subscription["id"])
    assert [o["id"] for o in back["order"]] == [order["id"]] and "subscription" not in back


def test_a_declined_order_has_a_failed_process_event_and_no_subscription(emulators: Start, connect: Connect) -> None:
    emulator = emulators(decline_payment_refs={"pm-ok"})
    client = connect(emulator)
    order = client.order(process_immediately=True).json()
    assert order["status"] == "failed"
    objects = related(client, "orders", order["id"])
    assert sorted(objects) == ["event", "process"]
    (process,) = objects["process"]
    assert process["status"] == "failed"
    assert process["pluginErrorOutput"] == [{"name": "zuora", "message": order["message"]}]


def test_billing_fails_completes_the_order_and_fails_only_its_process_event(emulators: Start, connect: Connect) -> None:
    """Set from another process, as users do: through ``POST /_emulator/faults``. It hits the external_id it
    names, ``times`` times."""
    emulator = emulators()
    client = connect(emulator)
    spec = {"route": "order", "action": "billing_fails", "external_id": "EXT-BF", "times": 1, "message": "gateway"}
    assert client.post("/_emulator/faults", json=spec).status_code == 200
    orders = [client.order(external_id=external_id, process_immediately=True).json() for external_id in
              ("EXT-OTHER", "EXT-BF", "EXT-BF")]  # fmt: skip
    assert [order["status"] for order in orders] == ["complete"] * 3
    processes = [related(client, "orders", order["id"])["process"][0] for order in orders]
    assert [p["pluginErrorOutput"] for p in processes] == [[], [{"name": "zuora", "message": "gateway"}], []]
    assert [p["status"] for p in processes] == ["complete", "failed", "complete"]
    assert "subscription" in related(client, "orders", orders[1]["id"])  # the order itself went through
    emulator.add_fault(Fault(route="order", action="billing_fails"))
    order = client.order(process_immediately=True).json()
    (process,) = related(client, "orders", order["id"])["process"]
    assert process["pluginErrorOutput"] == [{"name": "zuora", "message": BILLING_FAILURE}]


def test_a_queued_order_gets_its_process_event_when_it_finishes(emulators: Start, connect: Connect) -> None:
    emulator = emulators(processing_delay=30)
    client = connect(emulator)
    order = client.order().json()
    assert sorted(related(client, "orders", order["id"])) == ["event"]
    emulator.advance(31)
    assert sorted(related(client, "orders", order["id"])) == ["customer", "event", "process", "subscription"]


def test_every_type_pages_newest_first_and_objects_made_while_paging_shift_nothing(
    emulators: Start, connect: Connect
) -> None:
    emulator = emulators()
    client = connect(emulator)
    for n in range(5):
        client.order(external_id=f"EXT-PG{n}", process_immediately=True)
    first = client.get(f"{OBJECTS}/events", params={"limit": 2}).json()
    client.order(external_id="EXT-LATE", process_immediately=True)  # made while paging
    rest: list[dict[str, Any]] = []
    query = {"limit": 2, "queryMore": first["queryMore"]}
    while query["queryMore"]:
        page = client.get(f"{OBJECTS}/events", params=query).json()
        rest += page["items"]
        query["queryMore"] = page["queryMore"]
    walked = [e["external_id"] for e in first["items"] + rest]
    assert walked == [f"EXT-PG{n}" for n in reversed(range(5))]  # once each, newest first, EXT-LATE not shifted in
    for kind, count in (("events", 6), ("process", 6), ("customers", 6), ("subscriptions", 6)):
        assert len({o["id"] for o in every(client, kind, 4)}) == count, kind


@pytest.mark.parametrize(
    "path",
    [f"{OBJECTS}/process/process_event-nope", f"{OBJECTS}/orders/order-nope/related", f"{OBJECTS}/gadgets"],
)
def test_unknown_objects_are_404_and_every_route_needs_a_token(emulators: Start, connect: Connect, path: str) -> None:
    emulator = emulators()
    assert connect(emulator).get(path).status_code == 404
    assert connect(emulator, authorised=False).get(f"{OBJECTS}/events").status_code == 401


def test_reset_forgets_the_objects(emulators: Start, connect: Connect) -> None:
    emulator: LimioEmulator = emulators()
    client = connect(emulator)
    client.order(process_immediately=True)
    emulator.reset()
    client = connect(emulator)
    assert all(every(client, kind, 10) == [] for kind in ("events", "process", "customers", "subscriptions"))
