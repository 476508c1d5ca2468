"""Order and result models: what is validated, what passes through untouched."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from limio_provider.exceptions import LimioValidationError
from limio_provider.models import (
    ORDER_TYPES,
    ChangeOfferOrder,
    NewOrder,
    OrderResult,
    PreviewResult,
    UnmodelledOrder,
    parse_order,
    parse_partner,
)

NEW = {
    "order_type": "new",
    "orderItems": [{"offer": {"id": "o1", "version": "v1"}, "quantity": 2}],
    "billingDetails": {"firstName": "Ada"},
    "payment": {"type": "zuora", "zuora": {"refId": "pm-1"}},
    "checkoutId": "basket-1",
    "country": "GB",
}
SUB = {"forSubscription": {"id": "sub-1"}}
MINIMAL: dict[str, dict[str, Any]] = {
    "new": NEW,
    "change_offer": {"order_type": "change_offer", **SUB, "offer": {"id": "o2"}},
    "update_subscription": {"order_type": "update_subscription", "checkoutId": "basket-2"},
    "cancel_subscription": {"order_type": "cancel_subscription", "subscriptionId": "sub-1"},
    "change_address": {"order_type": "change_address", **SUB, "deliveryDetails": {"city": "Leeds"}},
    "change_payment": {"order_type": "change_payment", **SUB, "payment": {"type": "stripe"}},
    "renew": {"order_type": "renew", **SUB},
    "add_offer": {"order_type": "add_offer", **SUB, "offer": {"id": "o3"}},
    "gift_refund": {"order_type": "gift_refund"},
}


@pytest.mark.parametrize("order_type", sorted(ORDER_TYPES))
def test_each_order_type_round_trips_exactly(order_type: str) -> None:
    body = {**MINIMAL[order_type], "external_id": "E-1", "unknownField": {"kept": [1, "two"]}}
    order = parse_order(body)
    assert isinstance(order, ORDER_TYPES[order_type])
    assert order.to_json_dict() == body


def test_models_and_dicts_are_equivalent() -> None:
    model = NewOrder.model_validate(NEW)
    assert parse_order(model).to_json_dict() == parse_order(NEW).to_json_dict()


def test_unknown_order_type_lists_the_known_ones() -> None:
    with pytest.raises(LimioValidationError) as excinfo:
        parse_order({"order_type": "cancel_subscripton"})
    message = str(excinfo.value)
    assert "'cancel_subscripton'" in message
    for known in ORDER_TYPES:
        assert known in message


def test_escape_hatch_sends_unmodelled_types() -> None:
    body = {"order_type": "pay_invoice", "invoiceId": "INV-1"}
    assert parse_order(body, allow_unmodelled=True).to_json_dict() == body
    assert parse_order(UnmodelledOrder(**body)).to_json_dict() == body
    with pytest.raises(LimioValidationError, match="external_id"):
        parse_order({**body, "external_id": ""}, allow_unmodelled=True)


def test_every_bad_field_is_named_in_one_message() -> None:
    bad = {**NEW, "orderItems": [{"offer": {}, "quantity": 0}], "country": "", "orderDate": "soon"}
    with pytest.raises(LimioValidationError) as excinfo:
        parse_order(bad)
    message = str(excinfo.value)
    for path in ("orderItems[0].offer.id", "orderItems[0].quantity", "country", "orderDate"):
        assert f"  - {path}:" in message
    assert "Field required" in message


def test_external_id_must_be_printable_and_bounded() -> None:
    for bad in ("has space", "x" * 256, ""):
        with pytest.raises(LimioValidationError, match="external_id"):
            parse_order({**NEW, "external_id": bad})
    with pytest.raises(LimioValidationError) as error:
        parse_order({**NEW, "external_id": "has space"})
    assert "external_id: must be printable ASCII without spaces" in str(error.value)  # words, not the regex
    assert "pattern" not in str(error.value)


def test_subscription_orders_need_a_subscription() -> None:
    with pytest.raises(LimioValidationError, match="forSubscription"):
        parse_order({"order_type": "renew"})
    assert isinstance(parse_order({**MINIMAL["change_offer"], "forSubscription": {"name": "3V05"}}), ChangeOfferOrder)


def test_partner_forms() -> None:
    assert parse_partner("partner-1").to_json_dict() == {"id": "partner-1"}
    assert parse_partner({"id": "p", "region": "eu"}).to_json_dict() == {"id": "p", "region": "eu"}
    with pytest.raises(LimioValidationError, match="forPartner"):
        parse_partner({})


def test_results_keep_unknown_fields_and_read_lenient_amounts() -> None:
    result = OrderResult.model_validate({"id": "order-1", "status": "complete", "newThing": 1})
    assert result.to_json_dict() == {"id": "order-1", "status": "complete", "newThing": 1}
    preview = PreviewResult.model_validate(
        {"preview": {"previewResult": {"invoices": [{"amount": 19.99}, {"amount": "5.01"}]}}}
    )
    assert preview.total_due() == Decimal("25.00")
    schedule_only = PreviewResult.model_validate({"schedule": [{"amount": "7.50"}, {"amount": "100"}]})
    assert schedule_only.total_due() == Decimal("7.50")
    assert PreviewResult.model_validate({}).total_due() == 0


# -- numbers JSON cannot carry are refused before sending, naming the field --------------------------------


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ({"tracking": {"score": float("nan")}}, "tracking.score"),
        ({"tracking": {"weights": [1.0, float("inf")]}}, r"tracking.weights\[1\]"),
        ({"custom": -float("inf")}, "custom"),
        ({"custom": Decimal("NaN")}, "custom"),
        ({"tracking": {"big": 10**5000}}, "tracking.big"),
    ],
    ids=["nan", "inf-in-list", "minus-inf", "decimal-nan", "huge-int"],
)
def test_numbers_json_cannot_carry_are_refused_naming_the_field(extra: dict[str, Any], path: str) -> None:
    from limio_provider.models import order_body

    with pytest.raises(LimioValidationError, match=path):
        order_body({**NEW, **extra})


def test_a_rendered_template_with_nan_is_refused() -> None:
    import json as _json

    from limio_provider.models import order_body
    from limio_provider.operators.orders import _as_dict

    rendered = _json.dumps({**NEW, "tracking": {"score": 1.5}}).replace("1.5", "NaN")
    with pytest.raises(LimioValidationError, match="tracking.score"):
        order_body(_as_dict("order", rendered))


# -- admin orders: the partner once, in the order or as partner= -------------------------------------------


def test_admin_order_body_takes_the_partner_once() -> None:
    from limio_provider.models import admin_order_body

    assert admin_order_body(dict(NEW), "partner-1")["forPartner"] == {"id": "partner-1"}
    assert admin_order_body({**NEW, "forPartner": {"id": "p2"}})["forPartner"] == {"id": "p2"}
    with pytest.raises(LimioValidationError, match="given both in the order and as partner="):
        admin_order_body({**NEW, "forPartner": {"id": "p2"}}, "partner-1")
    with pytest.raises(LimioValidationError, match="forPartner: required"):
        admin_order_body(dict(NEW))


def test_results_are_read_leniently() -> None:
    from limio_provider.models import OrderObject

    order = OrderObject.model_validate({"id": 7, "created": 1767225600000, "status": None, "updated": {"a": 1}})
    assert (order.id, order.created, order.updated) == ("7", "1767225600000", '{"a": 1}')
    assert OrderResult.model_validate({"id": "o", "status": "failed", "message": "declined"}).reason == "declined"


@pytest.mark.parametrize(
    ("where", "typo", "meant"),
    [
        ((), "proccess_immediately", "process_immediately"),
        (("billingDetails",), "frstName", "firstName"),
        (("orderItems", 0), "quantty", "quantity"),
        ((), "externalId", "external_id"),
    ],
    ids=["top", "nested", "in-a-list", "camel-case"],
)
def test_a_near_miss_of_a_known_field_is_refused_naming_the_field_unless_allowed(
    where: tuple[Any, ...], typo: str, meant: str
) -> None:
    """Issue 18: ``proccess_immediately: true`` went to Limio as written, and the order was not processed
    immediately. Unknown fields still pass (Limio's schema is partly unpublished); a near miss of a known one
    is almost always a typo, refused before anything is sent; ``allow_fields`` lets a real one through."""
    from limio_provider.models.orders import order_body

    order = {**NEW, "billingDetails": dict(NEW["billingDetails"]), "orderItems": [dict(NEW["orderItems"][0])]}
    target: Any = order
    for step in where:
        target = target[step]
    target[typo] = 1
    path = ".".join(str(s) for s in where if isinstance(s, str))
    shown = (f"{path}[0]." if "orderItems" in where else f"{path}." if path else "") + typo
    with pytest.raises(LimioValidationError) as excinfo:
        order_body(order)
    assert f"{shown}: not a field this provider knows: did you mean {meant!r}?" in str(excinfo.value)
    body = order_body({**order, "customField": {"kept": True}}, allow_fields=[typo])  # the escape hatch
    assert body["customField"] == {"kept": True}  # a field unlike any known one passes untouched
