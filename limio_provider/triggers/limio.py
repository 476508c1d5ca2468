"""LimioOrderTrigger: waits in the triggerer for an order to reach a final status."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Connection

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
        # What may block (importing the hook with requests and the models, TLS set-up, HTTP) runs in a thread:
        # the triggerer's event loop serves every other trigger meanwhile. What talks to the triggerer's
        # supervisor (the connection, secret masking) stays on the loop's own thread: see _read_connection.
        loop = asyncio.get_running_loop()
        connection = await _read_connection(self.limio_conn_id)
        hook = await asyncio.to_thread(self._hook, connection, _masking_on(loop))
        try:
            while True:
                event = await asyncio.to_thread(order_event, hook, self.order_id, self.end_time)
                if event is not None:
                    yield TriggerEvent(event)
                    return
                await asyncio.sleep(self.poll_interval)
        finally:
            hook.close()

    def _hook(self, connection: Connection, mask: Callable[[str], None]) -> LimioHook:
        from limio_provider.hooks.limio import LimioHook

        return LimioHook(self.limio_conn_id, connection=connection, mask=mask, **{**self.hook_params, "retry_limit": 0})


async def _read_connection(conn_id: str) -> Connection:
    """The connection, read without touching the triggerer's runner channel from another thread.

    Airflow 3.1's trigger runner answers its channel in order, one request at a time, on its event loop; a
    request sent from a worker thread (a sync ``get_connection`` or ``mask_secret`` in ``asyncio.to_thread``)
    goes through ``async_to_sync`` on another loop and can take another trigger's answer ("Response read out of
    order"), which kills the runner and every trigger in it. 3.3 made the channel thread-safe, but its async
    path is right there too, so 3.1 and 3.3 both read the connection with ``aget_connection`` on the loop.
    Airflow 2.11 has no runner channel (the triggerer reads the metadata database itself) and no
    ``aget_connection``: its sync read runs in a thread, as its own providers' triggers do.
    """
    from airflow.providers.common.compat.sdk import BaseHook

    aget_connection = getattr(BaseHook, "aget_connection", None)
    if aget_connection is not None:
        return await aget_connection(conn_id)
    return await asyncio.to_thread(BaseHook.get_connection, conn_id)


def _masking_on(loop: asyncio.AbstractEventLoop) -> Callable[[str], None]:
    """A ``mask`` for a hook that runs in a worker thread: it runs Airflow's ``mask_secret`` on the event loop's
    thread and waits for it, so a token is masked before the hook uses it. On the loop's thread, 3.1's and
    3.3's ``mask_secret`` mask in the trigger runner's process (where its log lines are redacted) and do not
    use the runner channel from a foreign thread; on 2.11 the triggerer's own masker is the only one."""

    async def on_loop(secret: str) -> None:
        from airflow.providers.common.compat.sdk import mask_secret

        mask_secret(secret)

    def mask(secret: str) -> None:
        asyncio.run_coroutine_threadsafe(on_loop(secret), loop).result(timeout=60)

    return mask


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
