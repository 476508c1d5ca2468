"""Which of Limio's orders is this order: found by ``external_id`` among the newest, matched on its partner."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from limio_provider.hooks.limio import LimioHook
    from limio_provider.models.results import OrderObject


def orders_for(
    hook: LimioHook, external_id: str, partner: str | None, *, page_size: int = 100, max_pages: int = 5
) -> tuple[list[OrderObject], list[OrderObject]]:
    """The orders carrying ``external_id`` among the ``page_size * max_pages`` newest, newest first, read whole:
    ``(those that may be partner's, those of another partner)`` (``partner`` ``None``: an order for no
    partner). The order list gives summaries without a partner, so each order found is read (rarely more
    than one)."""
    summaries = hook.find_orders(external_id, page_size=page_size, max_pages=max_pages)
    found = [hook.get_order(summary.id) for summary in summaries if summary.id]
    return [o for o in found if for_partner(o, partner)], [o for o in found if not for_partner(o, partner)]


def not_this_order(order: OrderObject, external_id: str, partner: str | None) -> str | None:
    """Why ``order`` cannot be the order ``external_id`` of ``partner`` (see :func:`orders_for`), or ``None``."""
    if order.external_id != external_id:
        return f"order {order.id} has external_id {order.external_id!r}, not {external_id!r}"
    if not for_partner(order, partner):
        shown = partner_id((order.model_extra or {}).get("forPartner"))
        return f"order {order.id} is for partner {shown!r}, not {partner!r}"
    return None


def partner_id(value: Any) -> str | None:
    """The partner organisation's id in a ``forPartner`` (an object with ``id``, or the id itself)."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def for_partner(order: OrderObject, partner: str | None) -> bool:
    """Whether ``order`` may be the order of ``partner`` (``None``: an order for no partner). An order that
    shows a ``forPartner`` must show this one. One that shows none matches on its external_id alone: Limio does
    not document whether its order objects carry ``forPartner`` (the emulator's do, as sent)."""
    extra = order.model_extra or {}
    return "forPartner" not in extra or partner_id(extra["forPartner"]) == partner


def result_of(order: OrderObject, *, status_only: bool = False) -> dict[str, Any]:
    """The submit result of an order read back from Limio: the fields a submit answer has, and Limio's
    ``message`` when it gave one (a failed order's reason)."""
    from limio_provider.models.results import OrderResult

    dump = order.model_dump(mode="json")
    keys = {"status", "message"} if status_only else {*OrderResult.model_fields, "message"}
    return {key: value for key, value in dump.items() if key in keys and (value is not None or key != "message")}
