"""LimioOrderTrigger: waits in the triggerer for an order to reach a final status."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

if TYPE_CHECKING:
    from limio_provider.hooks.limio import LimioHook


class LimioOrderTrigger(BaseTrigger):
    """Poll ``GET /objects/limio/orders/{id}`` until the order succeeds, fails, or ``end_time`` passes.

    Serialised with the connection id, the order id and the operator's ``hook_params`` (never a token or
    secret), so the triggerer talks to Limio with the worker's base path, TLS, proxy and timeout settings.
    Its hook makes no retries of its own: a transient error counts as "not yet". The HTTP calls are
    :meth:`LimioHook.get_order <limio_provider.hooks.limio.LimioHook.get_order>`, run in a thread: the same
    client, retries and errors as every other call. Emits one JSON event:
    ``{"status": "success" | "failed" | "timeout" | "error", "order_id", "order_status", "message"}``.

    :param order_id: the Limio order id.
    :param limio_conn_id: the Limio connection.
    :param poll_interval: seconds between two reads.
    :param end_time: Unix time after which the trigger gives up with a ``timeout`` event.
    :param hook_params: keyword arguments for :class:`~limio_provider.hooks.limio.LimioHook` (its options).
    """

    def __init__(
        self,
        *,
        order_id: str,
        limio_conn_id: str,
        poll_interval: float,
        end_time: float,
        hook_params: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.order_id = order_id
        self.limio_conn_id = limio_conn_id
        self.poll_interval = poll_interval
        self.end_time = end_time
        self.hook_params = dict(hook_params or {})

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "order_id": self.order_id,
                "limio_conn_id": self.limio_conn_id,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
                "hook_params": self.hook_params,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # Everything that may block (importing the hook with requests and the models, reading the connection,
        # HTTP) runs in a thread: the triggerer's event loop serves every other trigger meanwhile.
        hook = await asyncio.to_thread(self._hook)
        try:
            while True:
                event = await asyncio.to_thread(order_event, hook, self.order_id, self.end_time)
                if event is not None:
                    yield TriggerEvent(event)
                    return
                await asyncio.sleep(self.poll_interval)
        finally:
            hook.close()

    def _hook(self) -> LimioHook:
        from limio_provider.hooks.limio import LimioHook

        return LimioHook(self.limio_conn_id, **{**self.hook_params, "retry_limit": 0})


def order_event(hook: Any, order_id: str, end_time: float) -> dict[str, Any] | None:
    """Read the order once: a final event, or ``None`` while it is still processing.

    Transient errors (rate limits, 5xx, lost connections after the hook's own retries) count as "still
    processing" until ``end_time``; anything else is an ``error`` event.
    """
    from limio_provider.exceptions import LimioError, LimioRateLimitedError, LimioServerError

    event: dict[str, Any] = {"order_id": order_id, "order_status": None, "message": ""}
    try:
        order = hook.get_order(order_id)
    except (LimioRateLimitedError, LimioServerError) as exc:
        order, event["message"] = None, str(exc)
    except LimioError as exc:
        return {**event, "status": "error", "message": str(exc)}
    if order is not None:
        event["order_status"] = order.status
        if order.succeeded:
            return {**event, "status": "success", "message": f"order {order_id} is {order.status}"}
        if order.failed:
            return {**event, "status": "failed", "message": order.message or f"order {order_id} is {order.status}"}
    if time.time() >= end_time:
        last = f" (last read: {event['message'] or event['order_status']})"
        return {**event, "status": "timeout", "message": f"order {order_id} did not finish in time{last}"}
    return None


def raise_for_event(event: dict[str, Any]) -> None:
    """Turn a non-success event into the matching typed error."""
    from limio_provider.exceptions import LimioError, LimioOrderFailedError, LimioWaitTimeoutError

    status = event.get("status")
    if status == "success":
        return
    message = f"Limio order {event.get('order_id')}: {event.get('message')}"
    if status == "failed":
        raise LimioOrderFailedError(message, order_id=event.get("order_id"), status=event.get("order_status"))
    if status == "timeout":
        raise LimioWaitTimeoutError(message)
    raise LimioError(message)
