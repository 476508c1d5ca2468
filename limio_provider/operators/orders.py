"""Operators that preview and submit Limio orders and return the results through XCom.

This module is imported at DAG-parse time, so it imports nothing heavy: the hook, ``requests`` and the
order models are imported when a task runs.
"""

from __future__ import annotations

import ast
import functools
import json
import threading
import time
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from airflow.providers.common.compat.sdk import BaseOperator

from limio_provider.exactly_once.identity import ExternalIdsDigest, external_id_for, work_of
from limio_provider.links.limio import LimioOrderLink

if TYPE_CHECKING:
    from decimal import Decimal

    from airflow.providers.common.compat.sdk import BaseOperatorLink, Context
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Asset, AssetAlias

    from limio_provider.approval import LimioApproval
    from limio_provider.exactly_once.ledger import OrderLedger
    from limio_provider.exactly_once.submitter import Submitter
    from limio_provider.exceptions import LimioOutcomeUnknownError
    from limio_provider.hooks.limio import LimioHook
    from limio_provider.models.results import PreviewResult

_Method = Callable[..., Any]


def keeps_failure(method: _Method) -> _Method:
    """Keep the exception a try of ``method`` failed with (``_lineage_error``), for the OpenLineage failure
    event: Airflow does not hand it to :meth:`get_openlineage_facets_on_failure`. A deferral is no failure."""

    @functools.wraps(method)
    def kept(self: _LimioSubmitOperator, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as error:
            self._lineage_error = error
            raise

    return kept


#: A preview check returns True to let the order through; False, or a string giving the reason, to stop it.
PreviewCheck = Callable[["PreviewResult"], "bool | str"]


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

    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return _rendered(name, value, dict)


def _rendered(name: str, value: Any, kind: type[Any]) -> Any:
    """A rendered template field that must be a ``kind`` (dict or list): as given, or parsed from a JSON (or
    Python-literal) string."""
    from limio_provider.exceptions import LimioValidationError

    noun = "JSON object" if kind is dict else "JSON list"
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
            try:  # a value rendered without render_template_as_native_obj comes out as its Python repr
                value = ast.literal_eval(text)
            except Exception:  # not a literal: SyntaxError, ValueError, TypeError ({[]: 1}), RecursionError...
                raise LimioValidationError(
                    f"invalid {name}: the template rendered to a string that is not a {noun}: {shown!r}"
                ) from None
    if not isinstance(value, kind):
        expected = "a JSON object (dict)" if kind is dict else "a list of orders"
        raise LimioValidationError(f"invalid {name}: expected {expected}, got {type(value).__name__}")
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
    :param allow_fields: fields to send as written although their names are one typo away from a field this
        provider knows (``proccess_immediately`` is refused, naming ``process_immediately``, unless listed
        here: a field Limio has that this provider does not model). Other unknown fields always pass.
    """

    template_fields: Sequence[str] = ("order", "limio_conn_id")
    template_fields_renderers = {"order": "json"}
    ui_color = "#e8f1fb"
    #: What a mapped task instance is called in the UI unless the DAG says otherwise: its order's external_id,
    #: which :meth:`_name_map_index` puts in the context as ``limio_external_id``.
    default_map_index_template: str | None = "{{ limio_external_id | default('') }}"

    def __init__(
        self,
        *,
        order: Any,
        limio_conn_id: str = "limio_default",
        hook_params: dict[str, Any] | None = None,
        allow_unmodelled: bool = False,
        allow_fields: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if hasattr(order, "model_dump") and callable(order.model_dump):  # a pydantic model: keep it serialisable
            order = order.model_dump(mode="json", by_alias=True, exclude_unset=True)
        self.order = order
        self.limio_conn_id = limio_conn_id
        self.hook_params = hook_params or {}
        self.allow_unmodelled = allow_unmodelled
        self.allow_fields = list(allow_fields)

    @cached_property
    def hook(self) -> LimioHook:
        from limio_provider.hooks.limio import LimioHook

        return LimioHook(self.limio_conn_id, **self.hook_params)

    def _name_map_index(self, context: Context, external_id: str | None) -> None:
        """Name a mapped task instance after its order's ``external_id`` in the UI, unless the DAG gave a
        ``map_index_template`` of its own (Airflow renders the context's template once the task has run)."""
        context["limio_external_id"] = external_id or ""  # type: ignore[typeddict-unknown-key]
        map_index = getattr(context.get("ti"), "map_index", None)
        mapped = isinstance(map_index, int) and map_index >= 0
        if mapped and context.get("map_index_template") is None and self.default_map_index_template:
            context["map_index_template"] = self.default_map_index_template

    def _order_body(self) -> dict[str, Any]:
        """The rendered order, validated: the JSON body to send."""
        return self._body_of(self.order)

    def _body_of(self, order: Any) -> dict[str, Any]:
        """``order`` (a dict, a model or a JSON object in a string), validated: the JSON body to send."""
        from limio_provider.models.orders import order_body

        return order_body(
            _as_dict("order", order), allow_unmodelled=self.allow_unmodelled, allow_fields=self.allow_fields
        )


class LimioPreviewOrderOperator(_LimioOrderOperator):
    """Preview an order (``POST /order/preview``): prices, invoices and schedule; nothing is created.

    Returns the preview as a JSON dict (XCom ``return_value``).
    """

    def execute(self, context: Context) -> dict[str, Any]:
        body = self._order_body()
        self._name_map_index(context, body.get("external_id"))
        preview = self.hook.preview_order(body, allow_unmodelled=self.allow_unmodelled, allow_fields=self.allow_fields)
        self.log.info(
            "Previewed %s order %s: total due %s",
            body["order_type"],
            body.get("external_id") or "(no external_id)",
            preview.total_due(),
        )
        return preview.to_json_dict()


def _orders_outlet(orders_asset: bool | str | Asset, conn_id: str) -> Asset | AssetAlias | None:
    """The outlet of a submit task's asset event: by default an alias resolved at run time to the tenant's
    orders asset (the connection is not read at parse time), else the asset given, or none.

    Airflow 3 only (imported from ``airflow.sdk``, which the DAG file has loaded: the compat module would add
    ``airflow.models``, 23 ms, at parse time). On 2.11 a task with a dataset alias in its outlets hung in
    ``dag.test()`` (writing its rendered fields), so there the operators declare none."""
    if not (orders_asset in (True, False, None) or isinstance(orders_asset, str) or hasattr(orders_asset, "uri")):
        raise ValueError(f"orders_asset must be True, False, a limio:// URI or an Asset, got {orders_asset!r}")
    try:
        from airflow.sdk import Asset, AssetAlias
    except ImportError:  # Airflow 2
        return None
    if orders_asset is True:
        return AssetAlias(name=f"limio_orders:{conn_id}")
    if isinstance(orders_asset, str) and orders_asset:
        return Asset(uri=orders_asset)
    return orders_asset if isinstance(orders_asset, Asset) else None


class _LimioSubmitOperator(_LimioOrderOperator):
    """What the submit operators share: the arguments of the protocol (:mod:`limio_provider.exactly_once`),
    which each runs through a :class:`~limio_provider.exactly_once.submitter.Submitter`, and the preview check.
    Their docstrings say what each argument does."""

    #: The task_state_store key of the task's record (:class:`~limio_provider.exactly_once.submitter.OrderRecord`).
    state_key = "limio_order"
    #: Whether each order's lines are logged at DEBUG (a batch: its results file says what became of each).
    quiet_orders = False
    #: Whether an order found before a first send is adopted (the single-order submit's argument).
    adopt_existing = True
    #: What this try did and the exception it failed with, for OpenLineage (set as the task runs; a deferred
    #: task resumes in a new process, with neither).
    _lineage_record: dict[str, Any] | None = None
    _lineage_error: Exception | None = None

    def __init__(
        self,
        *,
        preview_check: PreviewCheck | None = None,
        on_preview_reject: Literal["fail", "skip"] = "fail",
        dry_run: bool | str = False,
        on_unknown_outcome: Literal["fail", "resubmit", "ask"] = "fail",
        reconcile_pages: int = 5,
        reconcile_page_size: int = 100,
        allow_failed_order: bool = False,
        ledger_path: str | None = None,
        ledger_wait_timeout: float = 300.0,
        orders_asset: bool | str | Asset = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        #: Where this task's asset event goes (:func:`_orders_outlet`).
        self.orders_outlet = _orders_outlet(orders_asset, self.limio_conn_id)
        if self.orders_outlet is not None:
            self.outlets = [*self.outlets, self.orders_outlet]
        if on_preview_reject not in ("fail", "skip"):
            raise ValueError(f"on_preview_reject must be 'fail' or 'skip', got {on_preview_reject!r}")
        if on_unknown_outcome not in ("fail", "resubmit", "ask"):
            raise ValueError(f"on_unknown_outcome must be 'fail', 'resubmit' or 'ask', got {on_unknown_outcome!r}")
        self.preview_check = preview_check
        self.on_preview_reject = on_preview_reject
        # Not ``self.dry_run``: that is BaseOperator's method (``airflow tasks test --dry-run`` calls it).
        self.preview_only = dry_run
        self.on_unknown_outcome = on_unknown_outcome
        self.reconcile_pages = reconcile_pages
        self.reconcile_page_size = reconcile_page_size
        self.allow_failed_order = allow_failed_order
        self.ledger_path = ledger_path
        self.ledger_wait_timeout = ledger_wait_timeout

    def _start_try(self) -> None:
        """Forget the previous try's previews (a runner may reuse the operator)."""
        self._previewed_due: Decimal | None = None
        self._due_lock = threading.Lock()
        self._lineage_record = None
        self._lineage_error = None

    def _emit_orders_event(
        self, context: Context, extra: dict[str, Any], digest: ExternalIdsDigest | None = None
    ) -> None:
        """Give this task's event on the orders asset its ``extra`` (to the tenant's orders asset, through the
        alias, by default); Airflow records it when the task succeeds."""
        outlet = self.orders_outlet
        if outlet is None:
            return
        due = getattr(self, "_previewed_due", None)  # none after a deferral: the previews were another process's
        if due is not None:
            extra = {**extra, "total_due": str(due)}
        self._record_lineage(extra, digest)
        events = context.get("outlet_events")
        if events is None:  # execute() called outside Airflow's task runner (a script, a test's stub context)
            return
        from airflow.sdk import AssetAlias

        if isinstance(outlet, AssetAlias):
            from limio_provider.assets.limio import create_asset

            events[outlet].add(create_asset(tenant=self.hook.settings.tenant), extra=extra)
        else:
            events[outlet].extra.update(extra)

    def _record_lineage(self, extra: dict[str, Any], digest: ExternalIdsDigest | None = None) -> None:
        """Keep what this try did (an asset event's ``extra``) for its OpenLineage event."""
        if digest is None:
            digest = ExternalIdsDigest([extra["external_id"]] if extra.get("external_id") else [])
        self._lineage_record = {
            "orders": extra.get("orders", 0),
            "counts": dict(extra.get("counts") or {}),
            "externalIdsDigest": digest.hexdigest(),
            "totalDue": extra.get("total_due"),
            "resultsPath": extra.get("results_path"),
        }

    # -- OpenLineage: Airflow's OpenLineage provider calls these when it is installed and enabled ---------

    def get_openlineage_facets_on_start(self) -> OperatorLineage:
        """Inputs (the task's inlets; a batch's orders file) and outputs (the tenant's orders)."""
        from limio_provider.lineage import operator_lineage

        return operator_lineage(inputs=self._lineage_inputs(), outputs=self._lineage_outputs())

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        """As on start, with the ``limio`` run facet: orders, counts by outcome, the external ids' digest."""
        from limio_provider.lineage import operator_lineage

        record = self._lineage_record
        return operator_lineage(inputs=self._lineage_inputs(), outputs=self._lineage_outputs(), record=record)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> OperatorLineage:
        """As on complete, with the error: its class in the ``limio`` facet, its message in ``errorMessage``."""
        from limio_provider.lineage import operator_lineage

        record, error = self._lineage_record, self._lineage_error
        outputs = self._lineage_outputs()
        return operator_lineage(inputs=self._lineage_inputs(), outputs=outputs, record=record, error=error)

    def _lineage_inputs(self) -> list[Any]:
        from limio_provider.lineage import asset_datasets

        return asset_datasets(self.inlets)

    def _lineage_outputs(self) -> list[Any]:
        """The tenant's orders (whatever ``orders_asset`` says: the task writes them), the task's other
        outlets, and a batch's results file once it has one."""
        from limio_provider.lineage import asset_datasets, file_dataset, orders_dataset

        outputs = [orders_dataset(self.hook.settings.tenant), *asset_datasets(self.outlets)]
        results = (self._lineage_record or {}).get("resultsPath")
        return [*outputs, file_dataset(results)] if results else outputs

    def _prepared_body(self, order: Any, context: Context, *, log: bool = True) -> dict[str, Any]:
        """``order`` validated (:meth:`_body_of`), with its external_id: :func:`external_id_for` if it has none."""
        body = self._body_of(order)
        if not body.get("external_id"):
            ti, work = context["ti"], work_of(context)
            body["external_id"] = external_id_for(ti.dag_id, ti.task_id, work, body)
            if log:
                self.log.info(
                    "Derived external_id %s from dag %s, task %s, %s and the order's fingerprint",
                    body["external_id"],
                    ti.dag_id,
                    ti.task_id,
                    work,
                )
        return body

    def _submitter(self, ledger: OrderLedger | None, **seams: Any) -> Submitter:
        """The protocol (:mod:`limio_provider.exactly_once`), as this operator configures it."""
        from limio_provider.exactly_once.submitter import Submitter

        return Submitter(
            hook=self.hook,
            log=self.log,
            state_key=self.state_key,
            ledger=ledger,
            post=self._post,
            ledger_wait_timeout=self.ledger_wait_timeout,
            on_unknown_outcome=self.on_unknown_outcome,
            adopt_existing=self.adopt_existing,
            reconcile_page_size=self.reconcile_page_size,
            reconcile_pages=self.reconcile_pages,
            check=None if self.preview_check is None else self._check_preview,
            quiet=self.quiet_orders,
            **seams,
        )

    def _post(self, body: dict[str, Any]) -> Any:
        """Send ``body``, which :meth:`_prepared_body` validated (the hook's ``submit_order`` would again)."""
        return self.hook.send_order(body)

    def _check_preview(self, body: dict[str, Any]) -> dict[str, Any]:
        preview = self.hook.preview_order(body, allow_unmodelled=self.allow_unmodelled, allow_fields=self.allow_fields)
        if self.preview_check is None:
            return preview.to_json_dict()
        verdict = self.preview_check(preview)
        if verdict is True:
            with self._due_lock:  # a batch checks many at once
                self._previewed_due = (self._previewed_due or 0) + preview.total_due()
            (self.log.debug if self.quiet_orders else self.log.info)(
                "Order %s: preview_check accepted the preview: total due %s", body["external_id"], preview.total_due()
            )
            return preview.to_json_dict()
        reason = verdict if isinstance(verdict, str) and verdict else "preview_check refused the preview"
        total = f"total due {preview.total_due()}"
        message = f"order {body['external_id']} not submitted: {reason}" + ("" if total in reason else f" ({total})")
        if self.on_preview_reject == "skip":
            from airflow.providers.common.compat.sdk import AirflowSkipException

            raise AirflowSkipException(message)
        from limio_provider.exceptions import LimioPreviewRejectedError

        raise LimioPreviewRejectedError(message)


#: The answers a person is offered for an unknown outcome (``on_unknown_outcome="ask"``).
DECIDE_SEND, DECIDE_ADOPT, DECIDE_FAIL = "Send", "Adopt", "Fail"


class LimioSubmitOrderOperator(_LimioSubmitOperator):
    """Submit an order (``POST /order``) exactly once, and return Limio's answer as a JSON dict.

    An order without ``external_id`` gets :func:`external_id_for` the task instance, stable across
    retries; a user-provided one is always kept. ``order_id``, ``adopted`` and the ``Limio order`` link are
    pushed to XCom on every path that ends with an order.

    Exactly once (see docs/reliability.md): before sending, the task records its intent in
    ``task_state_store``; after the answer, the order. A retry with a stored order reconnects to it; a
    retry with only the intent looks for an order this task created (by ``external_id``, never one that
    existed before it sent) and adopts it, or follows ``on_unknown_outcome``. Without ``task_state_store``
    (Airflow before 3.3) every retry looks the order up by ``external_id`` first.

    :param preview_check: preview first and submit only if this callable accepts the
        :class:`~limio_provider.models.results.PreviewResult`: it returns True to submit, False or a string
        giving the reason to refuse.
    :param on_preview_reject: ``"fail"`` (default) fails the task with the reason; ``"skip"`` skips it.
    :param dry_run: preview and log what would be submitted, submit nothing; returns
        ``{"dry_run": true, "order": ..., "preview": ...}``. (templated, as the attribute ``preview_only``:
        ``dry_run`` is ``BaseOperator.dry_run()``, which ``airflow tasks test --dry-run`` calls)
    :param adopt_existing: before a first submit, look for an order with the same ``external_id`` (a
        previous run's) and adopt it instead of submitting again, unless it failed. Default True.
    :param on_unknown_outcome: when Limio may have received the order but it cannot be found by
        ``external_id`` within the reconcile budget: ``"fail"`` (default) fails the task naming the
        external_id; ``"resubmit"`` submits it again; ``"ask"`` (Airflow 3.1+) asks a person in Required
        Actions: send it, adopt the order they name, or fail (their answer is checked against Limio first, as
        ``python -m limio_provider.decide`` checks it).
    :param reconcile_pages: how many pages of the newest orders to search by ``external_id``.
    :param reconcile_page_size: orders per page when searching.
    :param allow_failed_order: succeed even when Limio answers that the order failed (default: the task
        fails with Limio's reason, after pushing the order's XComs).
    :param ledger_path: the order ledger's root (an ``ObjectStoragePath`` URI such as ``file:///data/ledger``
        or ``s3://aws_conn@bucket/ledger``), overriding the connection's ``ledger_path`` extra. With a
        ledger, an order is claimed once per tenant and external_id across runs and workers, and a ledger
        hit costs one object read and no Limio list read. (templated)
    :param ledger_wait_timeout: seconds to wait for another task instance that holds the ledger's claim on
        the same external_id to finish, before failing naming it.
    :param orders_asset: the asset this task updates when it succeeds, with a small extra (see the docs'
        "Chaining and reconciling"): ``True`` (default) the tenant's ``limio://<tenant>/orders``, a URI or an
        ``Asset`` instead, ``False`` none.
    :param wait_for_completion: after submitting, wait until Limio finishes processing the order; a failed
        order fails the task with Limio's reason.
    :param check_processing: with ``wait_for_completion``: once the order is complete, read its process events
        and fail (:class:`~limio_provider.exceptions.LimioProcessingFailedError`, with the plugins' messages)
        if one says a plugin failed: Limio marks an order complete even when its billing plugin failed.
    :param poll_interval: seconds between two reads of the order while waiting.
    :param wait_timeout: seconds to wait for a final status before failing.
    :param deferrable: wait in the triggerer instead of a worker slot. Default: ``[operators]
        default_deferrable``.
    :param approval: ask a person before sending (Airflow 3.1+): a :class:`~limio_provider.approval.LimioApproval`;
        the order is previewed and its total due put to them (``below_total_due`` spares small orders). Not
        asked when an earlier try of this task instance already sent it. See the docs' "Guard rails".
    """

    template_fields: Sequence[str] = (*_LimioOrderOperator.template_fields, "preview_only", "ledger_path")
    operator_extra_links: tuple[BaseOperatorLink, ...] = (LimioOrderLink(),)

    def __init__(
        self,
        *,
        adopt_existing: bool = True,
        wait_for_completion: bool = False,
        check_processing: bool = False,
        poll_interval: float = 30.0,
        wait_timeout: float = 3600.0,
        deferrable: bool | None = None,
        approval: LimioApproval | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.approval = approval
        self._approved: dict[str, Any] | None = None  # set when a person's approval resumes the task
        self.adopt_existing = adopt_existing
        self.wait_for_completion = wait_for_completion
        if check_processing and not wait_for_completion:
            raise ValueError(
                f"{type(self).__name__} {self.task_id!r}: check_processing reads the process events of a finished "
                "order: it needs wait_for_completion=True"
            )
        self.check_processing = check_processing
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout
        self.deferrable = deferrable
        #: The order's URL once this task instance has one (:class:`LimioOrderLink` reads it).
        self.limio_order_url: str | None = None

    # -- execute ----------------------------------------------------------------------------------------

    @keeps_failure
    def execute(self, context: Context) -> dict[str, Any]:
        self.limio_order_url = None  # a runner may reuse the operator for the next try
        self._start_try()
        body = self._prepared_order(context)
        self._record_lineage({"orders": 1, "external_id": body["external_id"]})
        self._name_map_index(context, body["external_id"])
        if _as_bool("dry_run", self.preview_only):
            preview = self._check_preview(body)
            self.log.info("Dry run: would submit %s order %s; nothing sent", body["order_type"], body["external_id"])
            return {"dry_run": True, "order": body, "preview": preview}
        from limio_provider.exactly_once.ledger import ledger_for

        ledger = ledger_for(self.hook.settings, self.ledger_path)
        if self.approval is not None:
            self._approve(context, body, ledger)
        from limio_provider.exceptions import LimioOutcomeUnknownError

        try:
            result, adopted, _, _ = self._submitter(ledger).submit_once(body, context)
        except LimioOutcomeUnknownError as exc:
            if self.on_unknown_outcome == "ask" and exc.ref is not None:
                self._ask_decision(context, body, exc)
            raise
        self._publish(context, result, adopted=adopted)
        finished = self._finish(context, result, adopted=adopted)
        self._emit_order_event(context, finished, adopted=adopted)
        return finished

    def _approve(self, context: Context, body: dict[str, Any], ledger: OrderLedger | None) -> None:
        """Ask a person before this order is sent (its preview's total due), unless it is under the approval's
        threshold or an earlier try of this task instance (or the ledger) already holds its send; parks the
        task until they answer. Resumed approved, check that the order is still the one approved."""
        from limio_provider.approval import ask, check_approved, require_hitl
        from limio_provider.exactly_once.identity import fingerprint

        assert self.approval is not None
        external_id = body["external_id"]
        if self._approved is not None:
            answer = check_approved(self._approved, fingerprint(body), f"order {external_id}")
            self.log.info("Sending order %s, %s", external_id, answer)
            return
        store = context.get("task_state_store")
        stored = store.get(self.state_key) if store is not None else None
        record = ledger.read(external_id) if ledger is not None else None
        if (isinstance(stored, dict) and stored.get("external_id") == external_id) or (
            record is not None and record.get("state") != "refused"
        ):
            self.log.info("Order %s was sent (or claimed) before: no approval asked for it", external_id)
            return
        require_hitl()
        from limio_provider.models.results import PreviewResult

        preview = PreviewResult.model_validate(self._check_preview(body))
        due = preview.total_due()
        if not self.approval.asks(1, due):
            self.log.info(
                "No approval asked: order %s, total due %s, under the approval's thresholds", external_id, due
            )
            return
        endpoint = "POST /admin/order" if body.get("forPartner") else "POST /order"
        text = (
            f"**Order `{external_id}`** ({body.get('order_type')}) through `{endpoint}` (connection "
            f"`{self.limio_conn_id}`), **total due {due}**.\n\nApproving sends this order as previewed and no other: "
            "if it changes before the task resumes, nothing is sent. Rejecting, or no answer within "
            f"{self.approval.timeout}, sends nothing."
        )
        ask(
            self,
            context,
            self.approval,
            subject=f"Send Limio order {external_id}, total due {due}?",
            body=text,
            method_name="execute_approved",
            kwargs={"digest": fingerprint(body)},
        )

    def _ask_decision(self, context: Context, body: dict[str, Any], error: LimioOutcomeUnknownError) -> None:
        """Put an unknown outcome to a person (Required Actions): send it, adopt the order they name, or fail.
        Their answer is the decision :mod:`limio_provider.decide` records, bound to this send (``error.ref``),
        and is checked against Limio when the task resumes."""
        from limio_provider.approval import LimioApproval, ask, require_hitl

        require_hitl()
        external_id = body["external_id"]
        text = (
            f"Limio may have received order `{external_id}`, and it was not found among its newest orders:\n\n"
            f"> {str(error)[:600]}\n\nLook it up in Limio by its external_id, then: **{DECIDE_SEND}** if Limio does "
            f"not have it (Limio is looked up once more first), **{DECIDE_ADOPT}** with its order id if it does, or "
            f"**{DECIDE_FAIL}**. This answers send `{error.ref}` only."
        )
        approval = self.approval or LimioApproval()
        ask(
            self,
            context,
            approval,
            subject=f"Limio order {external_id}: outcome unknown. Send, adopt or fail?",
            body=text,
            method_name="execute_decided",
            kwargs={"ref": error.ref, "external_id": external_id},
            options=[DECIDE_SEND, DECIDE_ADOPT, DECIDE_FAIL],
            default=DECIDE_FAIL,
            params={"order_id": "the order Limio holds, for Adopt"},
        )

    def execute_decided(self, context: Context, event: dict[str, Any], ref: str, external_id: str) -> dict[str, Any]:
        """Resumed with a person's decision on an unknown outcome: record it (bound to send ``ref``) as the
        decision Variable and run again, which checks it against Limio before applying it; Fail (or no answer)
        fails."""
        from airflow.providers.common.compat.sdk import Variable

        from limio_provider.exactly_once.decisions import decision_key
        from limio_provider.exceptions import LimioOutcomeUnknownError

        chosen = event.get("chosen_options") or []
        order_id = str((event.get("params_input") or {}).get("order_id") or "").strip()
        if "error" in event or chosen not in ([DECIDE_SEND], [DECIDE_ADOPT]):
            who = (event.get("responded_by_user") or {}).get("name") or "no answer in time"
            raise LimioOutcomeUnknownError(
                f"order {external_id}: its outcome stays unknown ({who}: fail); nothing was sent again",
                external_id=external_id,
                ref=ref,
            )
        if chosen == [DECIDE_ADOPT] and not order_id:
            from limio_provider.exceptions import LimioValidationError

            raise LimioValidationError(f"order {external_id}: Adopt needs the order id Limio holds; nothing was sent")
        value = f"send {ref}" if chosen == [DECIDE_SEND] else f"adopt {order_id} {ref}"
        Variable.set(decision_key(external_id), value)
        self.log.warning("A person decided order %s: %s (checked against Limio now)", external_id, value)
        return self.execute(context)

    def execute_approved(self, context: Context, event: dict[str, Any], digest: str) -> dict[str, Any]:
        """Resumed once a person answered (or the timeout passed): send if approved, else fail having sent
        nothing."""
        from limio_provider.approval import answer_of
        from limio_provider.exceptions import LimioApprovalError

        assert self.approval is not None
        approved, words = answer_of(event, self.approval)
        if not approved:
            raise LimioApprovalError(f"the order was {words}: nothing was sent")
        self._approved = {"digest": digest, "answer": words}
        return self.execute(context)

    def _emit_order_event(self, context: Context, result: dict[str, Any], *, adopted: bool) -> None:
        """The orders asset's event for this order (see :meth:`_emit_orders_event`)."""
        outcome = "adopted" if adopted else "submitted"
        extra = {"orders": 1, "counts": {outcome: 1}, "order_id": result["id"], "external_id": result["external_id"]}
        self._emit_orders_event(context, extra)

    def _prepared_order(self, context: Context) -> dict[str, Any]:
        """The validated body with its external_id; the connection is read and checked too (no network)."""
        body = self._prepared_body(self.order, context)
        self.hook.settings  # noqa: B018 - a bad connection (e.g. order_link_template) fails before any call
        return body

    # -- after the submit: XComs, a failed order, waiting ------------------------------------------------

    def _publish(self, context: Context, result: dict[str, Any], *, adopted: bool) -> None:
        """Push ``adopted``, ``order_id`` and the link for this try (XComs are cleared on each new try)."""
        ti = context["ti"]
        ti.xcom_push(key="adopted", value=adopted)
        ti.xcom_push(key="order_id", value=result["id"])
        self.limio_order_url = self.hook.order_url(result["id"])
        LimioOrderLink.persist(context, url=self.limio_order_url)

    def _finish(self, context: Context, result: dict[str, Any], *, adopted: bool) -> dict[str, Any]:
        """Fail on a failed order; wait for a final status if asked; the full result."""
        from limio_provider.triggers.limio import order_event, raise_for_event

        self._raise_if_failed(result)
        if not self.wait_for_completion:
            return result
        end_time = time.time() + self.wait_timeout
        event = order_event(self.hook, result["id"], end_time)
        if event is None and self._deferrable():
            from limio_provider.triggers.limio import LimioOrderTrigger

            self.defer(
                trigger=LimioOrderTrigger(
                    order_id=result["id"],
                    limio_conn_id=self.limio_conn_id,
                    poll_interval=self.poll_interval,
                    end_time=end_time,
                    hook_params=self.hook_params,
                ),
                method_name="execute_complete",
                kwargs={"result": result, "adopted": adopted},
            )
        while event is None:
            time.sleep(self.poll_interval)
            event = order_event(self.hook, result["id"], end_time)
        raise_for_event(event)
        if self.check_processing:
            self.hook.raise_for_processing(result["id"], event["order_status"])
        return {**result, "status": event["order_status"]}

    @keeps_failure
    def execute_complete(
        self, context: Context, event: dict[str, Any], result: dict[str, Any] | None = None, adopted: bool = False
    ) -> dict[str, Any]:
        """Resume after the trigger: push the XComs again, fail on a failed or timed-out order, else return
        the full submit result with its final status.

        ``result`` and ``adopted`` come through the deferral; a runner that passes only the event (``dag.test``
        does) gets them from the task's record, else the order is read back from Limio."""
        from limio_provider.triggers.limio import raise_for_event

        self.limio_order_url = None
        if result is None:
            from limio_provider.exactly_once.matching import result_of
            from limio_provider.exactly_once.submitter import OrderRecord

            stored = OrderRecord.stored(context, self.state_key, event["order_id"])
            result = stored.get("result") or result_of(self.hook.get_order(event["order_id"]))
            adopted = bool(stored.get("adopted", adopted))
        self._record_lineage({"orders": 1, "external_id": result.get("external_id")})
        self._publish(context, result, adopted=adopted)
        raise_for_event(event)
        if self.check_processing:
            self.hook.raise_for_processing(event["order_id"], event["order_status"])
        self._emit_order_event(context, result, adopted=adopted)
        return {**result, "status": event["order_status"]}

    def _raise_if_failed(self, result: dict[str, Any]) -> None:
        from limio_provider.exceptions import LimioOrderFailedError
        from limio_provider.models.results import OrderResult

        order = OrderResult.model_validate(result)
        if order.failed and not self.allow_failed_order:
            raise LimioOrderFailedError(
                f"Limio order {order.id} (external_id {order.external_id}) {order.status}: "
                f"{order.reason or 'no reason given'}. Not resubmitted; set allow_failed_order=True to accept it.",
                order_id=order.id,
                status=order.status,
            )

    def _deferrable(self) -> bool:
        if self.deferrable is not None:
            return self.deferrable
        from airflow.providers.common.compat.sdk import conf

        return conf.getboolean("operators", "default_deferrable", fallback=False)


def _admin_body(body: dict[str, Any], partner: Any) -> dict[str, Any]:
    """A validated ``body`` as an admin order for ``partner`` (an id, an object, or one rendered as JSON text),
    or for the order's own ``forPartner``."""
    from limio_provider.exceptions import LimioValidationError
    from limio_provider.models.orders import admin_order_body

    if isinstance(partner, str) and partner.strip() in ("", "None", "null", "[]", "{}"):
        raise LimioValidationError(
            f"invalid partner: it rendered to {partner!r}, not a partner id (a template whose value was empty or "
            "None, e.g. a missing param?); pass the partner organisation's id, or leave partner unset and put "
            "forPartner in the order"
        )
    if isinstance(partner, str) and partner.strip().startswith("{"):
        partner = _as_dict("partner", partner)
    return admin_order_body(body, partner)


class LimioAdminSubmitOrderOperator(LimioSubmitOrderOperator):
    """Submit an order with management credentials on behalf of a partner (``POST /admin/order``).

    :param partner: the partner organisation, sent as ``forPartner``: an id or an object. Required unless
        the order carries its own ``forPartner``; giving both is refused. (templated)
    """

    template_fields: Sequence[str] = (*LimioSubmitOrderOperator.template_fields, "partner")

    def __init__(self, *, partner: str | dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.partner = partner
        # Said at parse time when it is certain: a literal order without forPartner and no partner=.
        if partner is None and isinstance(self.order, dict) and "forPartner" not in self.order:
            raise ValueError(
                f"{type(self).__name__} {self.task_id!r}: partner is required: pass partner='partner-org-...' "
                "(the partner organisation the order is for) or put forPartner in the order"
            )

    def _body_of(self, order: Any) -> dict[str, Any]:
        return _admin_body(super()._body_of(order), self.partner)

    def _post(self, body: dict[str, Any]) -> Any:
        return self.hook.send_order(body, admin=True)
