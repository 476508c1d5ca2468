"""Operators that preview and submit Limio orders and return the results through XCom.

This module is imported at DAG-parse time, so it imports nothing heavy: the hook, ``requests`` and the
order models are imported when a task runs.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from airflow.providers.common.compat.sdk import BaseOperator

from limio_provider.links.limio import LimioOrderLink

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context
    from limio_provider.hooks.limio import LimioHook
    from limio_provider.models.results import PreviewResult

#: A preview check returns True to let the order through; False, or a string giving the reason, to stop it.
PreviewCheck = Callable[["PreviewResult"], "bool | str"]


def external_id_for(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """The ``external_id`` the submit operators give an order that has none.

    ``airflow-`` followed by 32 hex digits of a SHA-256 over dag_id, run_id, task_id and map_index (never the
    try number), so every retry of a task instance sends the same id and different task instances never
    share one. 40 printable ASCII characters.
    """
    key = "\x1f".join((dag_id, run_id, task_id, str(map_index)))
    return "airflow-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def _as_bool(name: str, value: Any) -> bool:
    """A flag that may arrive rendered by Jinja as text ("True", "false")."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", "", "none"):
        return False
    from limio_provider.exceptions import LimioValidationError

    raise LimioValidationError(f"invalid {name}: expected true or false, got {value!r}")


def _as_dict(name: str, value: Any) -> dict[str, Any]:
    """The rendered ``order``: a dict, a model, or a JSON (or Python-literal) object in a string."""
    from pydantic import BaseModel

    from limio_provider.exceptions import LimioValidationError

    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_unset=True)
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text)
        except ValueError:
            try:  # a dict rendered without render_template_as_native_obj comes out as its Python repr
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                shown = text if len(text) <= 80 else text[:80] + "..."
                raise LimioValidationError(
                    f"invalid {name}: the template rendered to a string that is not a JSON object: {shown!r}"
                ) from None
    if not isinstance(value, dict):
        raise LimioValidationError(f"invalid {name}: expected a JSON object (dict), got {type(value).__name__}")
    return value


class _LimioOrderOperator(BaseOperator):
    """Shared arguments and plumbing of the Limio order operators.

    :param order: the order body: a dict as Limio spells it, an order model, an upstream task's result
        (``XComArg``) or a Jinja template rendering to a JSON object. Validated before any network call.
        (templated)
    :param limio_conn_id: the Limio connection. (templated)
    :param hook_params: keyword arguments for :class:`~limio_provider.hooks.limio.LimioHook`, e.g.
        ``{"timeout": 60, "retry_limit": 2}``.
    :param allow_unmodelled: send an ``order_type`` this provider does not model yet (only the common fields
        are checked).
    """

    template_fields: Sequence[str] = ("order", "limio_conn_id")
    template_fields_renderers = {"order": "json"}
    ui_color = "#e8f1fb"

    def __init__(
        self,
        *,
        order: Any,
        limio_conn_id: str = "limio_default",
        hook_params: dict[str, Any] | None = None,
        allow_unmodelled: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if hasattr(order, "model_dump") and callable(order.model_dump):  # a pydantic model: keep it serialisable
            order = order.model_dump(mode="json", by_alias=True, exclude_unset=True)
        self.order = order
        self.limio_conn_id = limio_conn_id
        self.hook_params = hook_params or {}
        self.allow_unmodelled = allow_unmodelled

    @cached_property
    def hook(self) -> LimioHook:
        from limio_provider.hooks.limio import LimioHook

        return LimioHook(self.limio_conn_id, **self.hook_params)

    def _order_body(self) -> dict[str, Any]:
        """The rendered order, validated: the JSON body to send."""
        from limio_provider.models.orders import parse_order

        body = _as_dict("order", self.order)
        return parse_order(body, allow_unmodelled=self.allow_unmodelled).to_json_dict()


class LimioPreviewOrderOperator(_LimioOrderOperator):
    """Preview an order (``POST /order/preview``): prices, invoices and schedule; nothing is created.

    Returns the preview as a JSON dict (XCom ``return_value``).
    """

    def execute(self, context: Context) -> dict[str, Any]:
        body = self._order_body()
        preview = self.hook.preview_order(body, allow_unmodelled=self.allow_unmodelled)
        self.log.info("Previewed %s order: total due %s", body["order_type"], preview.total_due())
        return preview.to_json_dict()


class LimioSubmitOrderOperator(_LimioOrderOperator):
    """Submit an order (``POST /order``) and return Limio's answer as a JSON dict (XCom ``return_value``).

    An order without ``external_id`` gets :func:`external_id_for` the task instance, stable across
    retries; a user-provided one is always kept. ``order_id`` and the ``Limio order`` link are pushed to
    XCom as soon as Limio answers.

    :param preview_check: preview first and submit only if this callable accepts the
        :class:`~limio_provider.models.results.PreviewResult`: it returns True to submit, False or a string
        giving the reason to refuse.
    :param on_preview_reject: ``"fail"`` (default) fails the task with the reason; ``"skip"`` skips it.
    :param dry_run: preview and log what would be submitted, submit nothing; returns
        ``{"dry_run": true, "order": ..., "preview": ...}``. (templated)
    """

    template_fields: Sequence[str] = (*_LimioOrderOperator.template_fields, "dry_run")
    operator_extra_links = (LimioOrderLink(),)

    def __init__(
        self,
        *,
        preview_check: PreviewCheck | None = None,
        on_preview_reject: Literal["fail", "skip"] = "fail",
        dry_run: bool | str = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if on_preview_reject not in ("fail", "skip"):
            raise ValueError(f"on_preview_reject must be 'fail' or 'skip', got {on_preview_reject!r}")
        self.preview_check = preview_check
        self.on_preview_reject = on_preview_reject
        self.dry_run = dry_run

    def _with_external_id(self, body: dict[str, Any], context: Context) -> dict[str, Any]:
        if body.get("external_id"):
            return body
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        external_id = external_id_for(ti.dag_id, context["run_id"], ti.task_id, -1 if map_index is None else map_index)
        return {**body, "external_id": external_id}

    def _check_preview(self, body: dict[str, Any]) -> dict[str, Any]:
        preview = self.hook.preview_order(body, allow_unmodelled=self.allow_unmodelled)
        if self.preview_check is None:
            return preview.to_json_dict()
        verdict = self.preview_check(preview)
        if verdict is True:
            return preview.to_json_dict()
        reason = verdict if isinstance(verdict, str) and verdict else "preview_check refused the preview"
        message = f"order {body['external_id']} not submitted: {reason} (total due {preview.total_due()})"
        if self.on_preview_reject == "skip":
            from airflow.providers.common.compat.sdk import AirflowSkipException

            raise AirflowSkipException(message)
        from limio_provider.exceptions import LimioPreviewRejectedError

        raise LimioPreviewRejectedError(message)

    def _send(self, body: dict[str, Any]) -> Any:
        return self.hook.submit_order(body, allow_unmodelled=self.allow_unmodelled)

    def execute(self, context: Context) -> dict[str, Any]:
        body = self._with_external_id(self._order_body(), context)
        dry_run = _as_bool("dry_run", self.dry_run)
        preview = self._check_preview(body) if self.preview_check is not None or dry_run else None
        if dry_run:
            self.log.info("Dry run: would submit %s order %s; nothing sent", body["order_type"], body["external_id"])
            return {"dry_run": True, "order": body, "preview": preview}
        result = self._send(body)
        if result.id:
            context["ti"].xcom_push(key="order_id", value=result.id)
            LimioOrderLink.persist(context, url=self.hook.order_url(result.id))
        self.log.info(
            "Submitted %s order %s: id %s, status %s", body["order_type"], body["external_id"], result.id, result.status
        )
        return result.to_json_dict()


class LimioAdminSubmitOrderOperator(LimioSubmitOrderOperator):
    """Submit an order with management credentials on behalf of a partner (``POST /admin/order``).

    :param partner: the partner organisation, sent as ``forPartner``: an id or an object. (templated)
    """

    template_fields: Sequence[str] = (*LimioSubmitOrderOperator.template_fields, "partner")

    def __init__(self, *, partner: str | dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.partner = partner

    def _order_body(self) -> dict[str, Any]:
        body = super()._order_body()
        from limio_provider.models.orders import parse_partner

        partner = self.partner
        if isinstance(partner, str) and partner.strip().startswith("{"):
            partner = _as_dict("partner", partner)
        body["forPartner"] = parse_partner(partner).to_json_dict()
        return body

    def _send(self, body: dict[str, Any]) -> Any:
        return self.hook.submit_admin_order(body, allow_unmodelled=self.allow_unmodelled)
