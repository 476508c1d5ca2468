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

from airflow.providers.common.compat.sdk import BaseOperator, ResumableJobMixin

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
        shown = text if len(text) <= 80 else text[:80] + "..."
        try:
            value = json.loads(text)
        except RecursionError:
            raise LimioValidationError(
                f"invalid {name}: the template rendered to JSON nested too deeply to read: {shown!r}"
            ) from None
        except ValueError:
            try:  # a dict rendered without render_template_as_native_obj comes out as its Python repr
                value = ast.literal_eval(text)
            except Exception:  # not a literal: SyntaxError, ValueError, TypeError ({[]: 1}), RecursionError...
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
        from limio_provider.models.orders import order_body

        return order_body(_as_dict("order", self.order), allow_unmodelled=self.allow_unmodelled)


class LimioPreviewOrderOperator(_LimioOrderOperator):
    """Preview an order (``POST /order/preview``): prices, invoices and schedule; nothing is created.

    Returns the preview as a JSON dict (XCom ``return_value``).
    """

    def execute(self, context: Context) -> dict[str, Any]:
        body = self._order_body()
        preview = self.hook.preview_order(body, allow_unmodelled=self.allow_unmodelled)
        self.log.info("Previewed %s order: total due %s", body["order_type"], preview.total_due())
        return preview.to_json_dict()


class LimioSubmitOrderOperator(ResumableJobMixin, _LimioOrderOperator):
    """Submit an order (``POST /order``) exactly once, and return Limio's answer as a JSON dict.

    An order without ``external_id`` gets :func:`external_id_for` the task instance, stable across
    retries; a user-provided one is always kept. ``order_id`` and the ``Limio order`` link are pushed to
    XCom as soon as Limio answers.

    Exactly once (see docs/reliability.md): before sending, the task records its intent in
    ``task_state_store``; after the answer, the order id (through Airflow's ``ResumableJobMixin``). A retry
    with an order id reconnects to that order; a retry with only the intent looks the order up by
    ``external_id`` and adopts it, or follows ``on_unknown_outcome``. Without ``task_state_store`` (Airflow
    before 3.3) every retry looks the order up by ``external_id`` first.

    :param preview_check: preview first and submit only if this callable accepts the
        :class:`~limio_provider.models.results.PreviewResult`: it returns True to submit, False or a string
        giving the reason to refuse.
    :param on_preview_reject: ``"fail"`` (default) fails the task with the reason; ``"skip"`` skips it.
    :param dry_run: preview and log what would be submitted, submit nothing; returns
        ``{"dry_run": true, "order": ..., "preview": ...}``. (templated)
    :param adopt_existing: before a first submit, look for an order with the same ``external_id`` (a
        previous run's) and adopt it instead of submitting again, unless it failed. Default True.
    :param on_unknown_outcome: when Limio may have received the order but it cannot be found by
        ``external_id`` within the reconcile budget: ``"fail"`` (default) fails the task naming the
        external_id; ``"resubmit"`` submits it again.
    :param reconcile_pages: how many pages of the newest orders to search by ``external_id``.
    :param reconcile_page_size: orders per page when searching.
    :param wait_for_completion: after submitting, wait until Limio finishes processing the order; a failed
        order fails the task with Limio's reason.
    :param poll_interval: seconds between two reads of the order while waiting.
    :param wait_timeout: seconds to wait for a final status before failing.
    :param deferrable: wait in the triggerer instead of a worker slot. Default: ``[operators]
        default_deferrable``.
    """

    template_fields: Sequence[str] = (*_LimioOrderOperator.template_fields, "dry_run")
    operator_extra_links = (LimioOrderLink(),)
    external_id_key = "limio_order_id"
    intent_key = "limio_order_intent"

    def __init__(
        self,
        *,
        preview_check: PreviewCheck | None = None,
        on_preview_reject: Literal["fail", "skip"] = "fail",
        dry_run: bool | str = False,
        adopt_existing: bool = True,
        on_unknown_outcome: Literal["fail", "resubmit"] = "fail",
        reconcile_pages: int = 5,
        reconcile_page_size: int = 100,
        wait_for_completion: bool = False,
        poll_interval: float = 30.0,
        wait_timeout: float = 3600.0,
        deferrable: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if on_preview_reject not in ("fail", "skip"):
            raise ValueError(f"on_preview_reject must be 'fail' or 'skip', got {on_preview_reject!r}")
        if on_unknown_outcome not in ("fail", "resubmit"):
            raise ValueError(f"on_unknown_outcome must be 'fail' or 'resubmit', got {on_unknown_outcome!r}")
        self.preview_check = preview_check
        self.on_preview_reject = on_preview_reject
        self.dry_run = dry_run
        self.adopt_existing = adopt_existing
        self.on_unknown_outcome = on_unknown_outcome
        self.reconcile_pages = reconcile_pages
        self.reconcile_page_size = reconcile_page_size
        self.wait_for_completion = wait_for_completion
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout
        self.deferrable = deferrable

    # -- the order ------------------------------------------------------------------------------------

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

    # -- execute ----------------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        if _as_bool("dry_run", self.dry_run):
            body = self._with_external_id(self._order_body(), context)
            preview = self._check_preview(body)
            self.log.info("Dry run: would submit %s order %s; nothing sent", body["order_type"], body["external_id"])
            return {"dry_run": True, "order": body, "preview": preview}
        return self.execute_resumable(context)

    def submit_job(self, context: Context) -> str | None:
        """Submit the order once (or adopt the one a previous try or run created); return its id."""
        from limio_provider.exceptions import LimioError, LimioOutcomeUnknownError

        body = self._with_external_id(self._order_body(), context)
        external_id = body["external_id"]
        store = context.get("task_state_store")
        intent = store.get(self.intent_key) if store is not None else None
        earlier_try_may_have_sent = (
            isinstance(intent, dict) and intent.get("external_id") == external_id
            if store is not None
            else context["ti"].try_number > 1
        )
        if earlier_try_may_have_sent or self.adopt_existing:
            found = self._reconcile(external_id)
            if found is not None and not found.failed:
                return self._record(context, found.model_dump(mode="json"), adopted=True)
            if earlier_try_may_have_sent and found is None:
                self._unknown_outcome(external_id, "an earlier try may have sent it")

        if self.preview_check is not None:
            self._check_preview(body)
        if store is not None:
            store.set(self.intent_key, {"external_id": external_id, "state": "sending"})
        for attempt in (1, 2):
            try:
                result = self._send(body)
            except LimioOutcomeUnknownError as exc:
                found = self._reconcile(external_id)
                if found is not None:
                    return self._record(context, found.model_dump(mode="json"), adopted=True)
                if attempt == 2:
                    raise
                self._unknown_outcome(external_id, str(exc))
            except LimioError:
                if store is not None:  # Limio answered: nothing was created, a retry may submit afresh
                    store.delete(self.intent_key)
                raise
            else:
                return self._record(context, result.to_json_dict(), adopted=False)
        raise AssertionError("unreachable")

    def _reconcile(self, external_id: str) -> Any:
        found = self.hook.find_order(
            external_id, page_size=self.reconcile_page_size, max_pages=self.reconcile_pages
        )
        self.log.info(
            "Looked up external_id %s among the %d newest orders: %s",
            external_id,
            self.reconcile_page_size * self.reconcile_pages,
            f"found {found.id} ({found.status})" if found else "not found",
        )
        return found

    def _unknown_outcome(self, external_id: str, why: str) -> None:
        """Not found after an ambiguous submit: fail (default) or let the caller resubmit."""
        from limio_provider.exceptions import LimioOutcomeUnknownError

        budget = self.reconcile_page_size * self.reconcile_pages
        if self.on_unknown_outcome == "resubmit":
            self.log.warning(
                "Order %s not found among the %d newest orders (%s); resubmitting (on_unknown_outcome='resubmit')",
                external_id, budget, why,
            )
            return
        raise LimioOutcomeUnknownError(
            f"Limio may have received order {external_id} ({why}) but it is not among the {budget} newest "
            "orders; not resubmitting. Check Limio for this external_id, then clear the task to submit it "
            "(or set on_unknown_outcome='resubmit').",
            external_id=external_id,
        )

    def _record(self, context: Context, result: dict[str, Any], *, adopted: bool) -> str | None:
        """Keep the result for this task instance and push ``order_id`` and the link right away."""
        from limio_provider.models.results import OrderResult

        result = {k: v for k, v in result.items() if k in OrderResult.model_fields} if adopted else result
        order_id = result.get("id")
        store = context.get("task_state_store")
        if store is not None:
            store.set(self.intent_key, {"external_id": result.get("external_id"), "state": "sent", "result": result})
        self._result = result
        context["ti"].xcom_push(key="adopted", value=adopted)
        if order_id:
            context["ti"].xcom_push(key="order_id", value=order_id)
            LimioOrderLink.persist(context, url=self.hook.order_url(order_id))
        self.log.info(
            "%s order %s: id %s, status %s",
            "Adopted existing" if adopted else "Submitted",
            result.get("external_id"), order_id, result.get("status"),
        )
        return order_id

    # -- ResumableJobMixin: reconnecting and waiting ------------------------------------------------------

    def get_job_status(self, external_id: Any, context: Context) -> str:
        order = self.hook.get_order(str(external_id))
        self._final_status = order.status
        if order.succeeded:
            return "succeeded"
        return "failed" if order.failed else "active"

    def is_job_active(self, status: str) -> bool:
        return status == "active"

    def is_job_succeeded(self, status: str) -> bool:
        return status == "succeeded"

    def poll_until_complete(self, external_id: Any, context: Context) -> None:
        if not self.wait_for_completion or external_id is None:
            return
        import time

        from airflow.providers.common.compat.sdk import conf
        from limio_provider.triggers.limio import LimioOrderTrigger, order_event, raise_for_event

        end_time = time.time() + self.wait_timeout
        deferrable = self.deferrable
        if deferrable is None:
            deferrable = conf.getboolean("operators", "default_deferrable", fallback=False)
        event = order_event(self.hook, str(external_id), end_time)
        if event is None and deferrable:
            trigger = LimioOrderTrigger(
                order_id=str(external_id),
                limio_conn_id=self.limio_conn_id,
                poll_interval=self.poll_interval,
                end_time=end_time,
            )
            self.defer(trigger=trigger, method_name="execute_complete")
        while event is None:
            time.sleep(self.poll_interval)
            event = order_event(self.hook, str(external_id), end_time)
        raise_for_event(event)
        self._final_status = event["order_status"]

    def get_job_result(self, external_id: Any, context: Context) -> dict[str, Any]:
        result = getattr(self, "_result", None)
        if result is None:  # a retry reconnected to the order an earlier try submitted
            result = self._stored_result(context) or self.hook.get_order(str(external_id)).model_dump(mode="json")
            self._record(context, result, adopted=True)  # XComs are per try: push them again
            result = self._result
        final_status = getattr(self, "_final_status", None)
        return {**result, "status": final_status} if final_status else result

    def _stored_result(self, context: Context) -> dict[str, Any] | None:
        store = context.get("task_state_store")
        intent = store.get(self.intent_key) if store is not None else None
        return intent.get("result") if isinstance(intent, dict) else None

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Resume after the trigger: fail on a failed or timed-out order, else return the submit result."""
        from limio_provider.triggers.limio import raise_for_event

        raise_for_event(event)
        result = self._stored_result(context) or {"id": event["order_id"]}
        return {**result, "status": event["order_status"]}


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
