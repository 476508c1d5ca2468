"""LimioOrderSensor: waits for a Limio order to finish processing."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseSensorOperator

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

    from limio_provider.hooks.limio import LimioHook


class LimioOrderSensor(BaseSensorOperator):
    """Wait until a Limio order reaches a final status; fail the task if the order failed.

    Statuses Limio documents as final (``complete``, ...) succeed; failure statuses (``failed``, ...) fail with
    Limio's reason; any other status counts as still processing. Transient read errors count as "not yet".

    :param order_id: the Limio order id, e.g. ``"{{ ti.xcom_pull(task_ids='submit', key='order_id') }}"``.
        (templated)
    :param limio_conn_id: the Limio connection. (templated)
    :param hook_params: keyword arguments for :class:`~limio_provider.hooks.limio.LimioHook`.
    :param check_processing: once the order is complete, read its process events and fail
        (:class:`~limio_provider.exceptions.LimioProcessingFailedError`, with the plugins' messages) if one
        says a plugin failed: Limio marks an order complete even when its billing plugin failed.
    :param deferrable: wait in the triggerer. Default: ``[operators] default_deferrable``.
    """

    template_fields: Sequence[str] = ("order_id", "limio_conn_id")

    def __init__(
        self,
        *,
        order_id: str,
        limio_conn_id: str = "limio_default",
        hook_params: dict[str, Any] | None = None,
        check_processing: bool = False,
        deferrable: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.check_processing = check_processing
        self.order_id = order_id
        self._order_id_as_given = order_id  # not templated: names the upstream XCom if it renders to nothing
        self.limio_conn_id = limio_conn_id
        self.hook_params = hook_params or {}
        self.deferrable = deferrable

    @cached_property
    def hook(self) -> LimioHook:
        from limio_provider.hooks.limio import LimioHook

        return LimioHook(self.limio_conn_id, **self.hook_params)

    def poke(self, context: Context) -> bool:
        from limio_provider.triggers.limio import order_event, raise_for_event

        event = order_event(self.hook, self.order_id, end_time=float("inf"))
        if event is None:
            self.log.info("Limio order %s is still processing", self.order_id)
            return False
        raise_for_event(event)
        if self.check_processing:
            self.hook.raise_for_processing(self.order_id, event["order_status"])
        return True

    def execute(self, context: Context) -> Any:
        self._check_order_id()
        deferrable = self.deferrable
        if deferrable is None:
            from airflow.providers.common.compat.sdk import conf

            deferrable = conf.getboolean("operators", "default_deferrable", fallback=False)
        if not deferrable:
            return super().execute(context)
        if self.poke(context):
            return None
        from limio_provider.triggers.limio import LimioOrderTrigger

        self.defer(
            trigger=LimioOrderTrigger(
                order_id=self.order_id,
                limio_conn_id=self.limio_conn_id,
                poll_interval=self.poke_interval,
                end_time=time.time() + self.timeout,
                hook_params=self.hook_params,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def _check_order_id(self) -> None:
        """Refuse an order id that rendered to nothing (an upstream without an order) before asking Limio."""
        value = self.order_id
        if isinstance(value, str) and value.strip() and value.strip() not in ("None", "null", "[]", "{}"):
            return
        from limio_provider.exceptions import LimioValidationError

        raise LimioValidationError(
            f"invalid order_id: {self._order_id_as_given!r} rendered to {value!r}, not an order id. The upstream "
            "task pushed no order (it failed, was skipped, or the task id or XCom key is wrong); the sensor "
            "asks Limio nothing"
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> None:
        from limio_provider.triggers.limio import raise_for_event

        raise_for_event(event)
        if self.check_processing:
            self.hook.raise_for_processing(event["order_id"], event["order_status"])
        self.log.info("Limio order %s is %s", event["order_id"], event["order_status"])
