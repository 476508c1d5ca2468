"""Request bodies of Limio's order endpoints (``POST /order``, ``/order/preview``, ``/admin/order``).

Limio publishes the body as a ``oneOf`` of variants chosen by ``order_type``. Only ``new`` is fully
documented; the other variants are modelled from Limio's guides and public code and say so in their
docstrings. Every model keeps fields it does not know and sends them untouched, and wire names are spelt
exactly as Limio spells them (a mix of camelCase and snake_case).
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterator
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)

NonEmptyStr = Annotated[str, StringConstraints(strip_whitespace=False, min_length=1, max_length=10_000)]
#: Limio documents no length for ``external_id``; 255 keeps it inside any sane string column.
EXTERNAL_ID_PATTERN = r"^[\x21-\x7e]+$"
ExternalId = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=EXTERNAL_ID_PATTERN)]
#: Patterns said in words in error messages.
_PATTERN_WORDS = {EXTERNAL_ID_PATTERN: "must be printable ASCII without spaces (letters, digits, - _ . : / etc.)"}


def _iso_datetime(value: str) -> str:
    """Check that ``value`` is an ISO 8601 date or date-time, and keep the caller's exact spelling."""
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("must be an ISO 8601 date or date-time, e.g. 2026-01-31T00:00:00Z") from None
    return value


IsoDateTime = Annotated[str, AfterValidator(_iso_datetime)]


class LimioModel(BaseModel):
    """Base of all wire models: unknown fields are kept and sent back untouched."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, str_strip_whitespace=False)

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON-ready body: only the fields that were set, with Limio's spelling."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class Address(LimioModel):
    """A billing or delivery address. Limio marks none of its fields required."""

    firstName: str | None = None
    lastName: str | None = None
    email: str | None = None
    workEmail: str | None = None
    phone: str | None = None
    workPhone: str | None = None
    otherPhone: str | None = None
    company: str | None = None
    address1: str | None = None
    address2: str | None = None
    city: str | None = None
    state: str | None = None
    postalCode: str | None = None
    country: str | None = None


class Offer(LimioModel):
    """A published Limio offer, referred to by ``id`` and ``version`` (other offer fields pass through)."""

    id: NonEmptyStr
    version: str | None = None


class OrderItem(LimioModel):
    """One line of a ``new`` order: an offer and a quantity."""

    offer: Offer
    quantity: Annotated[int, Field(ge=1)] = 1
    type: str | None = None


class Payment(LimioModel):
    """A payment method. Limio's ``Payment`` ``oneOf`` is not published: ``type`` is required and the
    provider-specific sub-object (``zuora``, ``stripe``, ...) passes through untouched."""

    type: NonEmptyStr


class ForSubscription(LimioModel):
    """The subscription an order acts on: ``id`` (``sub-...``) or ``name`` (its reference)."""

    id: NonEmptyStr | None = None
    name: NonEmptyStr | None = None

    @model_validator(mode="after")
    def _id_or_name(self) -> ForSubscription:
        if self.id is None and self.name is None:
            raise ValueError("needs 'id' (sub-...) or 'name' (the subscription reference)")
        return self


class AdminPartner(LimioModel):
    """``forPartner`` of an admin order. Limio does not publish its fields: ``id`` is inferred, and any
    other field passes through untouched."""

    id: NonEmptyStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _not_empty(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data:
            raise ValueError("must name the partner organisation, e.g. {'id': 'partner-org-...'}")
        return data


class OrderBase(LimioModel):
    """Fields common to every order type."""

    order_type: NonEmptyStr
    external_id: ExternalId | None = None
    source: str | None = None
    initiated_source: str | None = None
    process_immediately: bool | None = None
    orderDate: IsoDateTime | None = None


class NewOrder(OrderBase):
    """Create Subscription (``new``): the one order type Limio documents in full."""

    order_type: Literal["new"]
    orderItems: Annotated[list[OrderItem], Field(min_length=1)]
    billingDetails: Address
    deliveryDetails: Address | None = None
    customerDetails: dict[str, Any] | None = None
    tracking: dict[str, Any] | None = None
    orderDiscount: dict[str, Any] | None = None
    payment: Payment
    checkoutId: NonEmptyStr
    country: Annotated[str, StringConstraints(min_length=2, max_length=3)]


class SubscriptionOrder(OrderBase):
    """An order that acts on an existing subscription.

    Limio's current convention is ``forSubscription`` (``id`` or ``name``); older payloads used
    ``subscriptionId``. One of the two is required.
    """

    forSubscription: ForSubscription | None = None
    subscriptionId: NonEmptyStr | None = None
    effectiveDate: IsoDateTime | None = None

    @model_validator(mode="after")
    def _targets_a_subscription(self) -> SubscriptionOrder:
        if self.forSubscription is None and self.subscriptionId is None:
            raise ValueError("needs 'forSubscription' ({'id': 'sub-...'} or {'name': ...}) or 'subscriptionId'")
        return self


class ChangeOfferOrder(SubscriptionOrder):
    """Change Offer (``change_offer``). Fields from Limio's switch components (inferred)."""

    order_type: Literal["change_offer"]
    offer: Offer
    quantity: Annotated[int, Field(ge=1)] | None = None
    change_type: str | None = None


class UpdateSubscriptionOrder(OrderBase):
    """Update Subscription (``update_subscription``): submitted with the ``checkoutId`` of the update
    basket, or with ``forSubscription`` (the final submit's exact schema is inferred)."""

    order_type: Literal["update_subscription"]
    forSubscription: ForSubscription | None = None
    checkoutId: NonEmptyStr | None = None

    @model_validator(mode="after")
    def _basket_or_subscription(self) -> UpdateSubscriptionOrder:
        if self.forSubscription is None and self.checkoutId is None:
            raise ValueError("needs 'checkoutId' (the update basket) or 'forSubscription'")
        return self


class CancelSubscriptionOrder(SubscriptionOrder):
    """Cancel Subscription (``cancel_subscription``). Fields from Limio's order types (inferred)."""

    order_type: Literal["cancel_subscription"]
    cancelDate: IsoDateTime | None = None


class ChangeAddressOrder(SubscriptionOrder):
    """Update/Change Address (``change_address``, value inferred from Limio code). At least one address."""

    order_type: Literal["change_address"]
    address: Address | None = None
    billingDetails: Address | None = None
    deliveryDetails: Address | None = None

    @model_validator(mode="after")
    def _some_address(self) -> ChangeAddressOrder:
        if self.address is None and self.billingDetails is None and self.deliveryDetails is None:
            raise ValueError("needs at least one of 'billingDetails', 'deliveryDetails' or 'address'")
        return self


class ChangePaymentOrder(SubscriptionOrder):
    """Change Payment Method (``change_payment``, value inferred from Limio code)."""

    order_type: Literal["change_payment"]
    payment: Payment
    billingDetails: Address | None = None


class RenewOrder(SubscriptionOrder):
    """Renew (``renew``): seen only in Limio code and events; its fields are inferred."""

    order_type: Literal["renew"]


class AddOfferOrder(SubscriptionOrder):
    """Add Offer (``add_offer``): seen only in Limio code; fields inferred."""

    order_type: Literal["add_offer"]
    offer: Offer
    quantity: Annotated[int, Field(ge=1)] | None = None


class GiftRefundOrder(OrderBase):
    """Gift Refund (``gift_refund``, value from Limio code). Its fields are unknown and pass through."""

    order_type: Literal["gift_refund"]


class UnmodelledOrder(OrderBase):
    """Escape hatch: an order type this provider does not model yet (e.g. ``pay_invoice``).

    Only the common fields are checked; everything else is sent untouched. Build it explicitly
    (``UnmodelledOrder(order_type="pay_invoice", ...)``) or pass ``allow_unmodelled=True``.
    """


LimioOrder = Annotated[
    NewOrder
    | ChangeOfferOrder
    | UpdateSubscriptionOrder
    | CancelSubscriptionOrder
    | ChangeAddressOrder
    | ChangePaymentOrder
    | RenewOrder
    | AddOfferOrder
    | GiftRefundOrder,
    Field(discriminator="order_type"),
]

ORDER_TYPES: dict[str, type[OrderBase]] = {
    "new": NewOrder,
    "change_offer": ChangeOfferOrder,
    "update_subscription": UpdateSubscriptionOrder,
    "cancel_subscription": CancelSubscriptionOrder,
    "change_address": ChangeAddressOrder,
    "change_payment": ChangePaymentOrder,
    "renew": RenewOrder,
    "add_offer": AddOfferOrder,
    "gift_refund": GiftRefundOrder,
}

_ORDER_ADAPTER: TypeAdapter[OrderBase] = TypeAdapter(LimioOrder)
_PARTNER_ADAPTER: TypeAdapter[AdminPartner] = TypeAdapter(AdminPartner)


def format_validation_error(what: str, error: ValidationError) -> str:
    """One readable message: each bad field path and why, e.g. ``orderItems[0].offer.id: Field required``."""
    lines = []
    for item in error.errors(include_url=False, include_input=False):
        path = ""
        for part in item["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            elif part not in ORDER_TYPES:  # the union's tag adds nothing for the reader
                path += f".{part}" if path else str(part)
        reason = item["msg"].removeprefix("Value error, ")
        if item["type"] == "string_pattern_mismatch":
            reason = _PATTERN_WORDS.get(item.get("ctx", {}).get("pattern", ""), reason)
        lines.append(f"  - {path or '(order)'}: {reason}")
    return f"invalid {what}:\n" + "\n".join(lines)


def _validation_error(message: str) -> Exception:
    """A :class:`LimioValidationError`, imported only when needed: the emulator uses these models without
    loading Airflow."""
    from limio_provider.exceptions import LimioValidationError

    return LimioValidationError(message)


def parse_order(order: Any, *, allow_unmodelled: bool = False) -> OrderBase:
    """Validate ``order`` (a dict or a model) into the model of its ``order_type``.

    :param order: the order body, as a dict (as Limio spells it) or an already-built model.
    :param allow_unmodelled: accept an ``order_type`` this provider does not model, checking only the
        common fields.
    :raises LimioValidationError: naming each bad field and why; nothing is sent.
    """
    if isinstance(order, UnmodelledOrder):
        allow_unmodelled = True
    if isinstance(order, OrderBase):
        order = order.model_dump(mode="python", by_alias=True, exclude_unset=True)
    if not isinstance(order, dict):
        raise _validation_error(
            f"invalid order: expected a JSON object (dict) or an order model, got {type(order).__name__}"
        )
    order_type = order.get("order_type")
    if not isinstance(order_type, str) or not order_type:
        raise _validation_error("invalid order:\n  - order_type: required, one of " + ", ".join(sorted(ORDER_TYPES)))
    if order_type not in ORDER_TYPES:
        if not allow_unmodelled:
            raise _validation_error(
                f"invalid order:\n  - order_type: unknown order type {order_type!r}; known types are "
                + ", ".join(sorted(ORDER_TYPES))
                + ". To send a type this provider does not model yet, use UnmodelledOrder or "
                "allow_unmodelled=True."
            )
        adapter: TypeAdapter[OrderBase] = TypeAdapter(UnmodelledOrder)
    else:
        adapter = _ORDER_ADAPTER
    try:
        return adapter.validate_python(order)
    except ValidationError as exc:
        raise _validation_error(format_validation_error(f"{order_type!r} order", exc)) from None


def order_body(order: Any, *, allow_unmodelled: bool = False, allow_fields: Collection[str] = ()) -> dict[str, Any]:
    """:func:`parse_order`, then the JSON body to send: only the fields that were set, spelt as Limio does.

    :param allow_fields: fields to send as written although their names are one typo away from a field this
        provider knows (a field Limio has that this provider does not model yet).
    :raises LimioValidationError: also when a pass-through value cannot be sent as JSON (not JSON, or
        nested too deeply), or its name is one typo away from a known field, naming the field.
    """
    model = parse_order(order, allow_unmodelled=allow_unmodelled)
    what = f"{model.order_type!r} order"
    fields = model.model_dump(mode="python", by_alias=True, exclude_unset=True)
    problems = list(_near_misses(model, "", frozenset(allow_fields)))
    try:  # the common case, at C speed: every number can be written out
        json.dumps(fields, allow_nan=False, default=_plain)
    except (ValueError, RecursionError):  # which field, and why
        problems += list(_unsendable(fields, ""))
    if problems:
        raise _validation_error(f"invalid {what}:\n" + "\n".join(f"  - {path}: {why}" for path, why in problems))
    try:
        return model.to_json_dict()
    except ValueError:  # PydanticSerializationError
        raise _validation_error(_unserializable(what, model)) from None


def _near_misses(model: BaseModel, path: str, allowed: frozenset[str]) -> Iterator[tuple[str, str]]:
    """Fields of ``model`` (and of the models in it) that this provider does not know and whose names are one
    typo away from one it does (``proccess_immediately``): almost always a typo, which Limio would ignore.
    Other unknown fields pass through untouched (Limio's schema is partly unpublished)."""
    import difflib

    declared = type(model).model_fields
    known = set(declared) | {info.alias for info in declared.values() if info.alias}
    for key in model.model_extra or {}:
        if key not in allowed and (near := difflib.get_close_matches(key, known, n=1, cutoff=0.8)):
            yield (
                f"{path}{key}",
                f"not a field this provider knows: did you mean {near[0]!r}? (if Limio has a field spelt "
                f"{key!r}, allow it with allow_fields=[{key!r}])",
            )
    for name in model.model_fields_set & set(declared):
        value, shown = getattr(model, name), declared[name].alias or name
        items = enumerate(value) if isinstance(value, list) else [(None, value)]
        for index, item in items:
            if isinstance(item, BaseModel):
                where = f"{path}{shown}" if index is None else f"{path}{shown}[{index}]"
                yield from _near_misses(item, where + ".", allowed)


def _plain(value: Any) -> Any:
    """What :func:`json.dumps` checks a value as: a ``Decimal`` as a float (``NaN`` stays ``NaN``), the rest as
    text (pydantic serialises them)."""
    return float(value) if isinstance(value, Decimal) else str(value)


def _unsendable(value: Any, path: str, depth: int = 0) -> Iterator[tuple[str, str]]:
    """Numbers JSON cannot carry, with their field path: NaN and infinities (pydantic would send them as
    ``null``) and integers too long to write out."""
    if depth > 200:
        return  # left to the serialiser, which names the field
    if isinstance(value, float | Decimal) and not isinstance(value, bool):
        if not math.isfinite(value):
            yield path or "(order)", f"{value} is not a number JSON can carry; send a finite number"
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            str(value)
        except ValueError:
            yield path or "(order)", "integer too large to send; send it as a string"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _unsendable(item, f"{path}.{key}" if path else str(key), depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _unsendable(item, f"{path}[{index}]", depth + 1)


def _unserializable(what: str, model: LimioModel) -> str:
    """The message for a valid ``model`` that cannot be sent as JSON, naming each top-level field at fault."""
    lines = []
    declared = [name for name in type(model).model_fields if name in model.model_fields_set]
    for name in (*declared, *(model.model_extra or {})):
        try:
            model.model_dump(mode="json", include={name})
        except ValueError as exc:
            lines.append(f"  - {name}: cannot be sent as JSON ({exc})")
    return f"invalid {what}:\n" + "\n".join(lines or ["  - (order): cannot be sent as JSON"])


def admin_order_body(body: dict[str, Any], partner: Any = None) -> dict[str, Any]:
    """``body`` (a validated order body) with its ``forPartner`` checked, given either in the order or as
    ``partner`` (an id string, a dict or a model), never both.

    :raises LimioValidationError: both or neither were given, or the partner is malformed.
    """
    if partner is not None and body.get("forPartner") is not None:
        raise _validation_error(
            "invalid admin order:\n  - forPartner: given both in the order and as partner=; give the partner once"
        )
    value = partner if partner is not None else body.get("forPartner")
    if value is None:
        raise _validation_error(
            "invalid admin order:\n  - forPartner: required; pass partner='partner-org-...' or put forPartner in "
            "the order"
        )
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return {**body, "forPartner": parse_partner(value).to_json_dict()}


def parse_partner(partner: Any) -> AdminPartner:
    """Validate the ``forPartner`` of an admin order: a dict, a model, or a partner id string."""
    if isinstance(partner, str):
        partner = {"id": partner}
    try:
        return _PARTNER_ADAPTER.validate_python(partner)
    except ValidationError as exc:
        raise _validation_error(format_validation_error("forPartner", exc)) from None
