"""The Limio emulator, over real HTTP on loopback (no mocks)."""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from typing import Any

import pytest
import requests

from limio_provider.models import OrderPage, OrderResult, PreviewResult
from limio_provider.testing import Fault, LimioEmulator
from limio_provider.testing.emulator import load_catalogue
from tests.helpers import ADMIN_CLIENT_ID, ADMIN_SECRET, CLIENT_ID, SECRET, Client, Connect, Start, token_form
from tests.helpers import emulator_order as new_order

# -- OAuth ---------------------------------------------------------------------------------------------


def test_token_from_form_body_opens_the_api(emu: LimioEmulator, connect: Connect) -> None:
    client = connect(emu, authorised=False)
    answer = client.post("/oauth2/token", data=token_form())
    assert answer.status_code == 200
    token = answer.json()
    assert token["token_type"] == "Bearer" and token["expires_in"] == 3600
    assert len(token["access_token"]) >= 32
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    listed = client.get("/api/objects/limio/orders", headers=bearer)
    assert listed.status_code == 200 and listed.json() == {"items": [], "queryMore": None}


def test_token_from_http_basic(emu: LimioEmulator, connect: Connect) -> None:
    client = connect(emu, authorised=False)
    form = {"grant_type": "client_credentials"}
    answer = client.post("/oauth2/token", data=form, auth=(CLIENT_ID, SECRET))
    assert answer.status_code == 200 and answer.json()["token_type"] == "Bearer"
    wrong = client.post("/oauth2/token", data=form, auth=(CLIENT_ID, "not-it"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"


@pytest.mark.parametrize(
    "form",
    [token_form(secret="wrong"), token_form(client_id="someone-else"), {"grant_type": "client_credentials"}],
    ids=["wrong-secret", "wrong-id", "missing"],
)
def test_bad_client_credentials_get_401(emu: LimioEmulator, connect: Connect, form: dict) -> None:
    answer = connect(emu, authorised=False).post("/oauth2/token", data=form)
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_client" and answer.json()["message"]


def test_wrong_grant_type_gets_400(emu: LimioEmulator, connect: Connect) -> None:
    answer = connect(emu, authorised=False).post("/oauth2/token", data=token_form(grant_type="password"))
    assert answer.status_code == 400 and answer.json()["error"] == "unsupported_grant_type"


def test_api_needs_a_current_bearer_token(emulators: Start, connect: Connect) -> None:
    emulator = emulators(token_ttl=60)
    orders = "/api/objects/limio/orders"
    anonymous = connect(emulator, authorised=False)
    refused = anonymous.get(orders)
    assert refused.status_code == 401 and refused.json() == {"message": "Unauthorized"}
    assert anonymous.get(orders, headers={"Authorization": "Bearer made-up"}).status_code == 401
    client = connect(emulator)
    assert client.get(orders).status_code == 200
    emulator.advance(59.9)
    assert client.get(orders).status_code == 200
    emulator.advance(0.1)
    assert client.get(orders).status_code == 401  # expired
    fresh = connect(emulator)
    assert fresh.get(orders).status_code == 200
    emulator.revoke_tokens()
    assert fresh.get(orders).status_code == 401


# -- submitting orders ---------------------------------------------------------------------------------


def test_async_order_is_submitted_then_completes_after_the_processing_delay(emulators: Start, connect: Connect) -> None:
    emulator = emulators(processing_delay=30)
    client = connect(emulator)
    answer = client.order(external_id="EXT-ASYNC")
    assert answer.status_code == 200 and set(answer.json()) == set(OrderResult.model_fields)
    result = OrderResult.model_validate(answer.json())
    assert result.status == "submitted" and result.external_id == "EXT-ASYNC"
    assert re.fullmatch(r"order-[0-9a-f]{32}", result.id or "")
    assert re.fullmatch(r"[A-Z0-9]{12}", result.order_reference or "")
    assert re.fullmatch(r"[A-Z0-9]{12}", result.subscriptionReference or "")
    assert re.fullmatch(r"id-[0-9a-f]{32}", result.owner or "")
    url = f"/api/objects/limio/orders/{result.id}"
    assert client.get(url).json()["status"] == "submitted"
    emulator.advance(29.9)
    assert client.get(url).json()["status"] == "submitted"
    emulator.advance(0.1)
    stored = client.get(url).json()
    assert stored["status"] == "complete" and "message" not in stored
    assert stored["order_type"] == "new" and stored["external_id"] == "EXT-ASYNC"
    assert stored["orderItems"] == new_order()["orderItems"]  # the body is kept
    assert stored["created"].endswith("Z") and stored["updated"] > stored["created"]
    assert emulator.orders[result.id]["status"] == "complete"


def test_process_immediately_answers_the_final_status(api: Client) -> None:
    answer = api.order(process_immediately=True)
    assert answer.status_code == 200 and answer.json()["status"] == "complete"


def test_declined_payment_fails_the_order_with_a_reason(emulators: Start, connect: Connect) -> None:
    emulator = emulators(decline_payment_refs=["pm-declined"], processing_delay=5)
    client = connect(emulator)
    declined = {"type": "zuora", "zuora": {"refId": "pm-declined"}}
    now = client.order(payment=declined, process_immediately=True).json()
    assert now["status"] == "failed" and "pm-declined" in now["message"]
    later = client.order(payment=declined).json()
    assert later["status"] == "submitted"
    emulator.advance(5)
    stored = client.get(f"/api/objects/limio/orders/{later['id']}").json()
    assert stored["status"] == "failed" and "declined" in stored["message"]
    assert client.order(process_immediately=True).json()["status"] == "complete"  # another payment method


def test_repeated_external_id_creates_a_second_order(api: Client, emu: LimioEmulator) -> None:
    first, second = (api.order(external_id="EXT-TWICE").json()["id"] for _ in range(2))
    assert first != second
    assert [order["id"] for order in emu.orders_with_external_id("EXT-TWICE")] == [first, second]


def test_subscription_order_reuses_the_subscription_name(api: Client) -> None:
    answer = api.post("/api/order", json={"order_type": "renew", "forSubscription": {"name": "3V053CN9SFIG"}})
    assert answer.status_code == 200 and answer.json()["subscriptionReference"] == "3V053CN9SFIG"


def test_admin_order_needs_a_valid_for_partner(admin_api: Client, emu: LimioEmulator) -> None:
    for partner in ({}, {"forPartner": {}}, {"forPartner": None}, {"forPartner": {"id": "partner-org-nobody"}}):
        answer = admin_api.post("/api/admin/order", json={**new_order(), **partner})
        assert answer.status_code == 400
        message = answer.json()["message"]
        assert message.startswith("Invalid partner organisation or malformed order payload: ")
        assert "forPartner" in message
    assert "no partner organisation 'partner-org-nobody'" in message  # the last: a partner Limio does not know
    created = admin_api.order("/api/admin/order", forPartner={"id": "partner-org-1"})
    assert created.status_code == 200
    assert emu.orders[created.json()["id"]]["forPartner"] == {"id": "partner-org-1"}
    plain = admin_api.order(forPartner={"any": "thing"})
    assert emu.orders[plain.json()["id"]]["forPartner"] == {"any": "thing"}  # passed through on /order


def test_admin_order_needs_the_management_client(emu: LimioEmulator, api: Client, admin_api: Client) -> None:
    order = new_order(external_id="EXT-ADMIN", forPartner={"id": "partner-org-1"})
    refused = api.post("/api/admin/order", json=order)  # the ordinary client's token
    assert refused.status_code == 403 and "management credentials" in refused.json()["message"]
    assert emu.orders == {}
    assert admin_api.post("/api/admin/order", json=order).status_code == 200
    for path in ("/api/order", "/api/order/preview"):  # management credentials open the rest of the API too
        assert admin_api.order(path).status_code == 200


def test_lenient_accepts_what_limio_refuses(emulators: Start, connect: Connect) -> None:
    emulator = emulators(lenient=True)
    client = connect(emulator)  # the ordinary client
    unknown = {"orderItems": [{"offer": {"id": "offer-nobody-sells"}, "quantity": 1}]}
    answer = client.order("/api/admin/order", forPartner={"id": "partner-org-nobody"}, **unknown)
    assert answer.status_code == 200
    assert client.order("/api/order", **unknown).status_code == 200
    assert client.post("/api/admin/order", json=new_order()).status_code == 400  # malformed is still malformed


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (new_order(orderItems=[{"offer": {"id": "offer-gone"}, "quantity": 1}]), "orderItems[0].offer.id"),
        ({"order_type": "change_offer", "forSubscription": {"id": "sub-1"}, "offer": {"id": "offer-gone"}}, "offer.id"),
        ({"order_type": "add_offer", "forSubscription": {"id": "sub-1"}, "offer": {"id": "offer-gone"}}, "offer.id"),
    ],
    ids=["new", "change_offer", "add_offer"],
)
def test_an_offer_outside_the_catalogue_is_refused(
    admin_api: Client, emu: LimioEmulator, body: dict[str, Any], named: str
) -> None:
    for path in ("/api/order", "/api/order/preview", "/api/admin/order"):
        answer = admin_api.post(path, json={**body, "forPartner": {"id": "partner-org-1"}})
        assert answer.status_code == 400, path
        assert f"{named}: no published offer 'offer-gone' in the catalogue" in answer.json()["message"], path
    assert emu.orders == {}


def test_a_loaded_catalogue_prices_previews_and_replaces_the_default(
    emulators: Start, connect: Connect, tmp_path: Any
) -> None:
    path = tmp_path / "catalogue.json"
    pro = {"name": "Pro", "price": "120", "currency": "EUR", "period_months": 12}
    path.write_text(json.dumps({"offer-pro-yearly": pro}))
    emulator = emulators(catalogue=load_catalogue(str(path)))
    client = connect(emulator)
    items = {"orderItems": [{"offer": {"id": "offer-pro-yearly"}, "quantity": 2}]}
    priced = PreviewResult.model_validate(preview(client, new_order(**items)))
    assert (priced.total_due(), priced.schedule[0]["currency"]) == (Decimal("240.00"), "EUR")
    assert client.order(**items).status_code == 200
    assert client.order().status_code == 400  # offer-digital-monthly: not in this tenant's catalogue
    path.write_text(json.dumps({"offer-x": {"price": "free"}}))
    with pytest.raises(ValueError, match="catalogue offer 'offer-x'"):
        load_catalogue(str(path))


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (new_order(orderItems=[{"offer": {}, "quantity": 1}]), "orderItems[0].offer.id"),
        ({k: v for k, v in new_order().items() if k != "checkoutId"}, "checkoutId"),
        (new_order(order_type="teleport"), "unknown order type 'teleport'"),
        ([new_order()], "JSON object"),
    ],
    ids=["missing-offer-id", "missing-checkout", "unknown-order-type", "not-an-object"],
)
def test_malformed_order_gets_400_naming_it(admin_api: Client, emu: LimioEmulator, body: Any, named: str) -> None:
    for path in ("/api/order", "/api/admin/order", "/api/order/preview"):
        answer = admin_api.post(path, json=body)
        assert answer.status_code == 400 and named in answer.json()["message"]
    assert emu.orders == {}


def test_invalid_json_gets_400(api: Client, emu: LimioEmulator) -> None:
    answer = api.post("/api/order", data=b"{not json", headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and "not valid JSON" in answer.json()["message"]
    assert emu.requests[-1].body == "{not json"


# -- preview -------------------------------------------------------------------------------------------


def preview(api: Client, order: dict[str, Any]) -> dict[str, Any]:
    """Preview ``order`` and check the answer's shape."""
    answer = api.post("/api/order/preview", json=order)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["preview"]["success"] is True and body["preview"]["previewResult"]["invoices"]
    assert body["schedule"][0]["type"] == "Schedule"
    return body


def test_preview_prices_new_orders_from_the_catalogue(api: Client, emu: LimioEmulator) -> None:
    items = [
        {"offer": {"id": "offer-digital-monthly"}, "quantity": 2},
        {"offer": {"id": "offer-digital-annual"}, "quantity": 1},
    ]
    body = preview(api, new_order(orderItems=items, orderDate="2026-01-31T00:00:00Z"))
    invoices = body["preview"]["previewResult"]["invoices"]
    assert [invoice["amount"] for invoice in invoices] == [39.98, 199.0]
    assert invoices[0]["targetDate"] == "2026-01-31" and invoices[0]["invoiceItems"]["unitPrice"] == 19.99
    assert invoices[0]["invoiceItems"]["serviceEndDate"] == "2026-02-27"
    schedule = body["schedule"][0]
    assert schedule["amount"] == "238.98" and schedule["amountWithoutTax"] == "238.98"  # strings, like Limio
    assert schedule["currency"] == "GBP" and schedule["schedule_date"] == "2026-01-31"
    assert PreviewResult.model_validate(body).total_due() == Decimal("238.98")
    assert emu.orders == {}  # nothing persisted


def test_preview_of_other_order_types(api: Client) -> None:
    target = {"forSubscription": {"id": "sub-1"}}
    change = preview(api, {"order_type": "change_offer", "offer": {"id": "offer-digital-annual"}, **target})
    assert PreviewResult.model_validate(change).total_due() == Decimal("199.00")
    cancel = preview(api, {"order_type": "cancel_subscription", **target})["preview"]["previewResult"]
    assert cancel["invoices"][0]["amount"] == 0 and cancel["creditMemos"][0]["amount"] < 0
    renew = preview(api, {"order_type": "renew", **target})
    assert PreviewResult.model_validate(renew).total_due() == -Decimal(str(cancel["creditMemos"][0]["amount"]))
    assert renew["preview"]["previewResult"]["creditMemos"] == [] and Decimal(renew["schedule"][0]["amount"]) > 0
    update = preview(api, {"order_type": "change_address", **target, "billingDetails": {"city": "Leeds"}})
    assert PreviewResult.model_validate(update).total_due() == 0


def test_preview_of_an_unknown_offer_has_a_stable_price_when_lenient(emulators: Start, connect: Connect) -> None:
    client = connect(emulators(lenient=True))
    order = new_order(orderItems=[{"offer": {"id": "4f0c1e5b7d9a"}, "quantity": 1}])
    first, again = (PreviewResult.model_validate(preview(client, order)).total_due() for _ in range(2))
    assert first == again and Decimal("5.00") <= first < Decimal("50.00")


# -- reading orders ------------------------------------------------------------------------------------


def test_unknown_order_is_404(api: Client) -> None:
    answer = api.get("/api/objects/limio/orders/order-missing")
    assert answer.status_code == 404 and answer.json() == {"message": "Not found"}


def test_list_pages_newest_first_and_covers_every_order_once(api: Client) -> None:
    url = "/api/objects/limio/orders"
    created = [api.order(external_id=f"EXT-{i}").json()["id"] for i in range(7)]
    page = OrderPage.model_validate(api.get(url, params={"limit": 3}).json())
    late = api.order().json()["id"]  # created while paging: must not shift the pages
    seen: list[str | None] = []
    while True:
        seen += [item.id for item in page.items]
        assert all(item.status and item.order_type == "new" and item.created for item in page.items)
        if page.queryMore is None:
            break
        page = OrderPage.model_validate(api.get(url, params={"limit": 3, "queryMore": page.queryMore}).json())
    assert seen == created[::-1]
    assert [item["id"] for item in api.get(url).json()["items"]] == [late, *created[::-1]]


@pytest.mark.parametrize("query", [{"limit": 0}, {"limit": 1001}, {"limit": "ten"}, {"queryMore": "bogus"}])
def test_list_rejects_bad_paging(api: Client, query: dict) -> None:
    answer = api.get("/api/objects/limio/orders", params=query)
    assert answer.status_code == 400 and answer.json()["message"]


def test_unknown_route_is_404_and_wrong_method_405(api: Client) -> None:
    assert api.get("/api/nothing-here").status_code == 404
    wrong = api.get("/api/order")
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "POST"


def test_requests_are_recorded_with_secrets_redacted(api: Client, emu: LimioEmulator) -> None:
    api.post("/api/order", json=new_order(), params={"trace": "1"})
    token, order = emu.requests
    assert (token.method, token.path, token.status) == ("POST", "/oauth2/token", 200)
    assert token.body["client_secret"] == "REDACTED" and token.body["client_id"] == CLIENT_ID
    assert (order.path, order.query, order.status) == ("/api/order", {"trace": "1"}, 200)
    assert order.headers["Authorization"] == "REDACTED" and order.body == new_order()
    assert token.received_at <= order.received_at


def test_concurrent_submits_are_all_kept(emu: LimioEmulator, connect: Connect) -> None:
    clients = [connect(emu) for _ in range(4)]
    statuses: list[int] = []

    def submit(client: Client) -> None:
        statuses.extend(client.order().status_code for _ in range(10))

    threads = [threading.Thread(target=submit, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 40 and len(emu.orders) == 40


# -- faults --------------------------------------------------------------------------------------------


def test_status_fault_answers_without_processing(api: Client, emu: LimioEmulator) -> None:
    emu.add_fault(Fault(route="order", status=429, retry_after=7, message="Slow down"))
    answer = api.order()
    assert answer.status_code == 429 and answer.json() == {"message": "Slow down"}
    assert answer.headers["Retry-After"] == "7"
    assert emu.orders == {} and emu.requests[-1].status == 429
    assert api.order("/api/order/preview").status_code == 200  # another route


def test_drop_fault_closes_the_connection_before_processing(api: Client, emu: LimioEmulator) -> None:
    emu.add_fault(Fault(route="order", action="drop", times=1))
    with pytest.raises(requests.ConnectionError):
        api.order()
    assert emu.orders == {} and emu.requests[-1].status is None
    assert api.order().status_code == 200  # a new connection works


def test_process_then_status_creates_the_order_but_answers_502(api: Client, emu: LimioEmulator) -> None:
    emu.add_fault(Fault(route="order", action="process_then_status"))
    answer = api.order(external_id="EXT-AMBIGUOUS")
    assert answer.status_code == 502 and answer.json() == {"message": "Bad Gateway"}
    assert len(emu.orders_with_external_id("EXT-AMBIGUOUS")) == 1


def test_process_then_hang_creates_the_order_and_never_answers(emulators: Start, connect: Connect) -> None:
    emulator = emulators()
    client = connect(emulator, admin=True)
    emulator.add_fault(Fault(route="admin_order", action="process_then_hang"))  # holds 30 s by default
    with pytest.raises(requests.ReadTimeout):
        order = new_order(external_id="EXT-HUNG", forPartner="partner-org-1")
        client.post("/api/admin/order", json=order, timeout=1.0)
    assert len(emulator.orders_with_external_id("EXT-HUNG")) == 1
    assert emulator.requests[-1].status is None
    started = time.monotonic()
    emulator.stop()  # must not wait for the hang
    assert time.monotonic() - started < 2


def test_latency_only_fault_answers_normally_but_late(api: Client) -> None:
    api.emulator.add_fault(Fault(route="get_order", action="latency_only", latency=0.2))
    started = time.monotonic()
    assert api.get("/api/objects/limio/orders/order-missing").status_code == 404
    assert time.monotonic() - started >= 0.2


def test_revoke_tokens_fault_gets_401_until_a_new_token(emu: LimioEmulator, api: Client, connect: Connect) -> None:
    emu.add_fault(Fault(route="list_orders", action="revoke_tokens", times=1))
    assert api.get("/api/objects/limio/orders").status_code == 401
    assert api.get("/api/objects/limio/orders").status_code == 401  # the token stays revoked
    assert connect(emu).get("/api/objects/limio/orders").status_code == 200


def test_token_route_fault(emu: LimioEmulator, connect: Connect) -> None:
    emu.add_fault(Fault(route="token", status=503, times=1))
    client = connect(emu, authorised=False)
    assert client.post("/oauth2/token", data=token_form()).status_code == 503
    assert client.post("/oauth2/token", data=token_form()).status_code == 200


def test_times_limits_a_fault_and_the_first_match_wins(api: Client, emu: LimioEmulator) -> None:
    fault = emu.add_fault(Fault(route="order", status=503, times=2))
    emu.add_fault(Fault(route="*", status=500, times=1))
    assert [api.order().status_code for _ in range(4)] == [503, 503, 500, 200]
    assert fault.times == 0


def test_probability_with_a_seed_is_reproducible(api: Client, emu: LimioEmulator) -> None:
    draws = random.Random(42)
    expected = [503 if draws.random() < 0.5 else 200 for _ in range(12)]
    emu.add_fault(Fault(route="preview", status=503, probability=0.5, seed=42))
    assert [api.order("/api/order/preview").status_code for _ in range(12)] == expected
    assert 200 in expected and 503 in expected


def test_external_id_fault_only_hits_that_order(api: Client, emu: LimioEmulator) -> None:
    emu.add_fault(Fault(route="order", status=502, external_id="EXT-BAD"))
    assert api.order(external_id="EXT-GOOD").status_code == 200
    assert api.order(external_id="EXT-BAD").status_code == 502
    assert [order["external_id"] for order in emu.orders.values()] == ["EXT-GOOD"]


def test_invalid_faults_are_refused() -> None:
    with pytest.raises(ValueError, match="action"):
        Fault(action="explode")
    with pytest.raises(ValueError, match="probability"):
        Fault(probability=1.5)
    with pytest.raises(ValueError, match="unknown fields"):
        Fault.from_dict({"route": "order", "colour": "red"})


def test_admin_http_routes(api: Client, emu: LimioEmulator, connect: Connect) -> None:
    admin = connect(emu, authorised=False)  # the emulator's own routes need no token
    added = admin.post("/_emulator/faults", json={"route": "order", "status": 503, "times": 1})
    assert added.status_code == 200 and added.json()["fault"]["action"] == "status"
    assert [api.order().status_code for _ in range(2)] == [503, 200]
    assert admin.post("/_emulator/faults", json={"action": "explode"}).status_code == 400
    admin.post("/_emulator/faults", json={"route": "order", "action": "drop"})
    assert admin.request("DELETE", "/_emulator/faults").status_code == 200
    assert api.order().status_code == 200
    recorded = admin.get("/_emulator/requests").json()["requests"]
    assert [r["status"] for r in recorded] == [200, 503, 200, 200]  # token + 3 orders; admin calls unrecorded
    assert recorded[1]["headers"]["Authorization"] == "REDACTED"
    assert admin.post("/_emulator/revoke-tokens").status_code == 200
    assert api.order().status_code == 401
    assert admin.post("/_emulator/reset").status_code == 200
    assert emu.orders == {} and emu.requests == []


# -- CLI and pytest plugin -----------------------------------------------------------------------------


def test_cli_prints_the_connection_and_serves_until_sigterm() -> None:
    command = [sys.executable, "-m", "limio_provider.testing", "--port", "0", "--client-secret", "s3cret"]
    command += ["--partner", "partner-org-7"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(4)]
        exports = dict(line.split(" ", 1)[1].split("=", 1) for line in lines if line.startswith("export "))
        connection = json.loads(shlex.split(exports["AIRFLOW_CONN_LIMIO_DEFAULT"])[0])
        admin = json.loads(shlex.split(exports["AIRFLOW_CONN_LIMIO_ADMIN"])[0])
        assert connection["conn_type"] == "limio" and connection["password"] == "s3cret"
        assert (admin["login"], admin["password"]) == (ADMIN_CLIENT_ID, ADMIN_SECRET)
        assert connection["host"] in lines[0]
        url = f"{connection['host']}/oauth2/token"
        assert requests.post(url, data=token_form(secret="s3cret"), timeout=5).status_code == 200
        form = token_form(ADMIN_SECRET, client_id=ADMIN_CLIENT_ID)
        token = requests.post(url, data=form, timeout=5).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        for partner, status in (("partner-org-7", 200), ("partner-org-1", 400)):  # --partner replaces the default
            order = new_order(forPartner={"id": partner})
            answer = requests.post(f"{connection['host']}/api/admin/order", json=order, headers=headers, timeout=5)
            assert answer.status_code == status, partner
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        process.kill()
        process.wait()


def test_limio_emulator_fixture_sets_the_airflow_connection(limio_emulator: LimioEmulator) -> None:
    connection = json.loads(os.environ["AIRFLOW_CONN_LIMIO_DEFAULT"])
    expected = {
        "conn_type": "limio",
        "host": limio_emulator.url,
        "login": CLIENT_ID,
        "password": SECRET,
        "extra": {
            "order_link_template": f"{limio_emulator.url}/_emulator/orders/{{order_id}}",
            "environment": "sandbox",
        },
    }
    assert connection == expected
    admin = json.loads(os.environ["AIRFLOW_CONN_LIMIO_ADMIN"])  # the management client, for /admin/order
    assert admin == {**expected, "login": ADMIN_CLIENT_ID, "password": ADMIN_SECRET}
    url = f"{connection['host']}/oauth2/token"
    assert requests.post(url, data=token_form(), timeout=5).status_code == 200


def test_order_page_shows_the_order_to_a_browser_without_a_token(emu: LimioEmulator, connect: Connect) -> None:
    order_id = connect(emu).order(external_id="EXT-PAGE").json()["id"]
    link = json.loads(emu.connection_json())["extra"]["order_link_template"].format(order_id=order_id)
    page = requests.get(link, timeout=5)  # no Authorization: as a person's browser
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert order_id in page.text and "EXT-PAGE" in page.text
    assert requests.get(f"{emu.url}/_emulator/orders/order-nope", timeout=5).status_code == 404
    # Limio's own URL for the order (the hook's default link) needs a token.
    assert requests.get(f"{emu.url}/api/objects/limio/orders/{order_id}", timeout=5).status_code == 401


# -- the tenant's rate limit (emulator behaviour) --------------------------------------------------------


def test_rate_limit_answers_429_beyond_the_bucket_and_processes_nothing(api: Client, emu: LimioEmulator) -> None:
    emu.set_rate_limit(5, burst=3)
    statuses = [api.order(external_id=f"EXT-RL-{n}").status_code for n in range(6)]
    assert statuses[:3] == [200] * 3 and 429 in statuses[3:]
    refused = [r for r in emu.requests if r.status == 429]
    assert {r.body["external_id"] for r in refused}.isdisjoint(o["external_id"] for o in emu.orders.values())
    answer = api.get("/api/objects/limio/orders")
    assert answer.status_code == 429 and answer.headers["Retry-After"] == "1"  # reads count too
    assert answer.json() == {"message": "Too Many Requests"}
    time.sleep(0.25)  # a fifth of a second refills one request at 5/s
    assert api.get("/api/objects/limio/orders").status_code == 200


def test_rate_limit_without_retry_after_spares_the_token_endpoint_and_lifts(
    emu: LimioEmulator, connect: Connect
) -> None:
    emu.set_rate_limit(1, burst=1, retry_after=False)
    client = connect(emu)  # its token was fetched: the token endpoint is not limited
    assert client.get("/api/objects/limio/orders").status_code == 200
    limited = client.get("/api/objects/limio/orders")
    assert limited.status_code == 429 and "Retry-After" not in limited.headers
    assert [client.post("/oauth2/token", data=token_form()).status_code for _ in range(3)] == [200] * 3
    emu.set_rate_limit(None)
    assert [client.get("/api/objects/limio/orders").status_code for _ in range(5)] == [200] * 5


def test_rate_limit_holds_a_steady_rate(api: Client, emu: LimioEmulator) -> None:
    emu.set_rate_limit(40, burst=4)
    started, accepted = time.monotonic(), 0
    while time.monotonic() - started < 1.0:
        accepted += api.get("/api/objects/limio/orders").status_code == 200
    assert 40 <= accepted <= 4 + 40 * (time.monotonic() - started) + 1


def test_rate_limit_over_the_control_route_and_the_command_line(emu: LimioEmulator, connect: Connect) -> None:
    control = requests.post(f"{emu.url}/_emulator/rate-limit", json={"per_second": 1, "burst": 1}, timeout=5)
    assert control.status_code == 200
    client = connect(emu)
    assert [client.get("/api/objects/limio/orders").status_code for _ in range(2)] == [200, 429]
    bad = requests.post(f"{emu.url}/_emulator/rate-limit", json={"per_second": -1}, timeout=5)
    assert bad.status_code == 400 and "per_second" in bad.json()["message"]
    assert requests.post(f"{emu.url}/_emulator/rate-limit", json={"burst": 2}, timeout=5).status_code == 400
    requests.post(f"{emu.url}/_emulator/reset", timeout=5)
    assert [connect(emu).get("/api/objects/limio/orders").status_code for _ in range(3)] == [200] * 3
    from limio_provider.testing.__main__ import main

    assert main(["--port", "0", "--rate-limit", "0"]) == 2
