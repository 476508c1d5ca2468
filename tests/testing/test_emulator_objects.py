"""The emulator's Objects API beyond orders, over real HTTP: what an order makes, ``/related``, paging, and the
"processed, billing failed" fault."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from limio_provider.models import ProcessEvent
from limio_provider.testing import Fault, LimioEmulator, sample_order
from limio_provider.testing.objects import BILLING_FAILURE
from tests.helpers import Client, Connect, Start

OBJECTS = "/api/objects/limio"
TYPES = ("orders", "subscriptions", "customers", "events", "process")
ORDER_SUMMARY = {"id", "status", "order_type", "external_id", "created", "updated", "order_reference"}
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


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
    assert customer["id"].startswith("cus-") and subscription["id"].startswith("sub-")
    assert (subscription["status"], subscription["owner"]) == ("active", order["owner"])
    kinds = (("events", event), ("process", process), ("subscriptions", subscription), ("customers", customer))
    for kind, obj in kinds:
        assert client.get(f"{OBJECTS}/{kind}/{obj['id']}").json() == obj
        assert (obj["service"], obj["mode"], obj["order"]) == ("limio", "test", order["id"])
        assert TIMESTAMP.fullmatch(obj["created"]) and TIMESTAMP.fullmatch(obj["updated"]), obj
    # A subscription's or customer's related objects: its order first, then the order's other objects.
    for kind, obj in (("subscriptions", subscription), ("customers", customer)):
        back = related(client, kind, obj["id"])
        assert [o["id"] for o in back["order"]] == [order["id"]] and obj["record_type"] not in back
        assert [o["id"] for o in back["process"]] == [process["id"]] and len(back) == 4


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
    assert ProcessEvent.model_validate(process).errors() == [f"zuora: {order['message']}"]  # as the hook reads it


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


def test_billing_fails_on_every_route_waits_for_an_order_and_reads_as_a_failed_process_event(
    emulators: Start, connect: Connect
) -> None:
    """With route ``*`` it hits only orders: a token, a list or a fetch does not use up its ``times``. The
    management client's ``/admin/order`` is an order too. The hook's model reads the failure."""
    emulator = emulators()
    emulator.add_fault(Fault(action="billing_fails", times=1))
    admin = connect(emulator, admin=True)
    admin.get(f"{OBJECTS}/events")
    admin.get(f"{OBJECTS}/orders")
    order = admin.order("/api/admin/order", forPartner={"id": "partner-org-1"}, process_immediately=True).json()
    again = admin.order("/api/admin/order", forPartner={"id": "partner-org-1"}, process_immediately=True).json()
    assert (order["status"], again["status"]) == ("complete", "complete")
    assert admin.get(f"{OBJECTS}/orders/{order['id']}").json()["status"] == "complete"
    events = [ProcessEvent.model_validate(related(admin, "orders", o["id"])["process"][0]) for o in (order, again)]
    assert [event.errors() for event in events] == [[f"zuora: {BILLING_FAILURE}"], []]


def test_the_hook_finds_a_billing_failure_in_a_complete_order(emu: LimioEmulator) -> None:
    """What the fault is for: the order is complete, and only its process events tell the hook it failed."""
    from limio_provider.exceptions import LimioProcessingFailedError
    from limio_provider.hooks.limio import LimioHook

    emu.add_fault(Fault(route="order", action="billing_fails", external_id="EXT-BILL", message="gateway timeout"))
    hook = LimioHook()
    billed, fine = (hook.submit_order(sample_order(external_id, process_immediately=True)) for external_id in
                    ("EXT-BILL", "EXT-FINE"))  # fmt: skip
    assert (billed.status, fine.status) == ("complete", "complete") and billed.id and fine.id
    with pytest.raises(LimioProcessingFailedError, match="zuora: gateway timeout"):
        hook.raise_for_processing(billed.id)
    hook.raise_for_processing(fine.id)  # no error


@pytest.mark.parametrize("route", ["list_orders", "get_object", "related", "token"])
def test_billing_fails_only_targets_order_routes(emulators: Start, connect: Connect, route: str) -> None:
    with pytest.raises(ValueError, match="billing_fails targets order, admin_order or"):
        Fault(route=route, action="billing_fails")
    answer = connect(emulators()).post("/_emulator/faults", json={"route": route, "action": "billing_fails"})
    assert answer.status_code == 400 and "billing_fails" in answer.json()["message"]


def test_a_queued_order_gets_its_process_event_when_it_finishes(emulators: Start, connect: Connect) -> None:
    """A ``billing_fails`` fault hit while the order is queued shows on the process event it gets later."""
    emulator = emulators(processing_delay=30)
    emulator.add_fault(Fault(route="order", action="billing_fails", external_id="EXT-Q2"))
    client = connect(emulator)
    fine, billed = (client.order(external_id=external_id).json() for external_id in ("EXT-Q1", "EXT-Q2"))
    assert [sorted(related(client, "orders", o["id"])) for o in (fine, billed)] == [["event"], ["event"]]
    assert client.get(f"{OBJECTS}/process").json()["items"] == []
    emulator.advance(29)
    assert sorted(related(client, "orders", fine["id"])) == ["event"]
    emulator.advance(2)
    assert sorted(related(client, "orders", fine["id"])) == ["customer", "event", "process", "subscription"]
    processes = [related(client, "orders", o["id"])["process"][0] for o in (fine, billed)]
    assert [p["status"] for p in processes] == ["complete", "failed"]
    assert processes[1]["pluginErrorOutput"] == [{"name": "zuora", "message": BILLING_FAILURE}]
    assert [emulator.orders[o["id"]]["status"] for o in (fine, billed)] == ["complete", "complete"]


@pytest.mark.parametrize("kind", TYPES)
def test_every_type_pages_newest_first_and_orders_made_between_pages_shift_nothing(
    emulators: Start, connect: Connect, kind: str
) -> None:
    """An order made after each page adds objects of every type; the walk still yields each object that was
    there when it began exactly once, newest first, and the new ones come first in a fresh list."""
    emulator = emulators()
    client = connect(emulator)
    made = [client.order(external_id=f"EXT-PG{n}", process_immediately=True).json()["id"] for n in range(7)]
    listed = client.get(f"{OBJECTS}/{kind}", params={"limit": 1000}).json()["items"]
    assert [item.get("order", item["id"]) for item in listed] == made[::-1]  # newest first (one per order)
    snapshot = [item["id"] for item in listed]
    walked: list[str] = []
    query: dict[str, Any] = {"limit": 2}
    pages = 0
    while True:
        page = client.get(f"{OBJECTS}/{kind}", params=query).json()
        walked += [o["id"] for o in page["items"]]
        pages += 1
        client.order(external_id=f"EXT-LATE{pages}", process_immediately=True)
        if not page["queryMore"]:
            break
        query = {"limit": 2, "queryMore": page["queryMore"]}
    assert len(snapshot) == 7 and pages == 4 and walked == snapshot
    fresh = client.get(f"{OBJECTS}/{kind}", params={"limit": 1000}).json()["items"]
    assert [o["id"] for o in fresh][pages:] == snapshot and len(fresh) == 7 + pages
    if kind == "orders":  # the orders list still answers summaries
        assert all(set(item) == ORDER_SUMMARY for item in fresh)
    else:  # the other types answer whole objects
        assert all(client.get(f"{OBJECTS}/{kind}/{item['id']}").json() == item for item in fresh[:3])


@pytest.mark.parametrize(
    "path",
    [
        f"{OBJECTS}/gadgets",
        f"{OBJECTS}/identities/id-1",  # a type Limio documents, the emulator does not serve
        f"{OBJECTS}/subscriptions/sub-nope",
        f"{OBJECTS}/customers/cus-nope",
        f"{OBJECTS}/events/event-nope",
        f"{OBJECTS}/process/process_event-nope",
        f"{OBJECTS}/orders/order-nope/related",
        f"{OBJECTS}/subscriptions/sub-nope/related",
    ],
)
def test_unknown_types_and_objects_are_404(api: Client, path: str) -> None:
    api.order(process_immediately=True)
    answer = api.get(path)
    assert (answer.status_code, answer.json()) == (404, {"message": "Not found"})


def test_the_objects_routes_need_a_token(emulators: Start, connect: Connect) -> None:
    emulator = emulators()
    client = connect(emulator)
    order = client.order(process_immediately=True).json()
    (event,) = client.get(f"{OBJECTS}/events").json()["items"]
    stranger = connect(emulator, authorised=False)
    paths = [
        f"{OBJECTS}/events",
        f"{OBJECTS}/events/{event['id']}",
        f"{OBJECTS}/events/{event['id']}/related",
        f"{OBJECTS}/orders/{order['id']}/related",
        f"{OBJECTS}/customers/cus-nope",
    ]
    assert [stranger.get(path).status_code for path in paths] == [401] * len(paths)
    stranger.session.headers["Authorization"] = "Bearer not-a-token"
    assert [stranger.get(path).status_code for path in paths] == [401] * len(paths)


def test_reset_forgets_the_objects(emulators: Start, connect: Connect) -> None:
    emulator: LimioEmulator = emulators()
    client = connect(emulator)
    order = client.order(process_immediately=True).json()
    emulator.reset()
    client = connect(emulator)
    assert client.get(f"{OBJECTS}/orders/{order['id']}/related").status_code == 404
    assert all(every(client, kind, 10) == [] for kind in TYPES)
    client.order(process_immediately=True)  # the store works again after a reset
    assert [len(every(client, kind, 10)) for kind in TYPES] == [1] * len(TYPES)


def test_the_testing_page_shows_the_process_event_its_billing_fails_spec_makes(
    emulators: Start, connect: Connect
) -> None:
    """docs/testing.md's ``billing_fails`` spec, posted as it shows, makes the process event it shows."""
    text = (Path(__file__).parents[2] / "docs/testing.md").read_text()
    (shown,) = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, flags=re.S)]
    (spec,) = [json.loads(body) for body in re.findall(r"-d '(\{[^']*billing_fails[^']*\})'", text)]
    emulator = emulators()
    client = connect(emulator)
    assert client.post("/_emulator/faults", json=spec).status_code == 200
    order = client.order(external_id=spec["external_id"], process_immediately=True).json()
    (process,) = related(client, "orders", order["id"])["process"]
    assert set(process) == set(shown)
    same = set(shown) - {"id", "order", "eventId", "created", "updated"}
    assert {key: process[key] for key in same} == {key: shown[key] for key in same}
