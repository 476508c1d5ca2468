"""The "Limio order" extra link, read from the URL the submit operators push to XCom."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from airflow.providers.common.compat.sdk import BaseOperatorLink, XCom

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context, TaskInstanceKey


class LimioOrderLink(BaseOperatorLink):
    """Links a submit task instance (mapped ones included) to the order it created."""

    name = "Limio order"
    key: ClassVar[str] = "limio_order_url"

    #: The operator attribute holding the URL in the worker that ran the task (``None``: no order).
    attribute: ClassVar[str] = "limio_order_url"

    @classmethod
    def persist(cls, context: Context, *, url: str) -> None:
        """Push the order's URL to XCom for this task instance."""
        context["ti"].xcom_push(key=cls.key, value=url)

    def get_link(self, operator: Any, *, ti_key: TaskInstanceKey) -> str:
        # Airflow 3 computes each link in the worker as the task ends: the operator that ran knows whether it
        # has an order, and asking XCom for a task without one would log "XCom not found" at ERROR.
        if hasattr(operator, self.attribute):
            return getattr(operator, self.attribute) or ""
        return XCom.get_value(key=self.key, ti_key=ti_key) or ""
