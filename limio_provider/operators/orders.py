"""Operators that preview and submit Limio orders and return the results through XCom.

This module is imported at DAG-parse time, so it imports nothing heavy: the hook, ``requests`` and the
order models are imported when a task runs.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from airflow.providers.common.compat.sdk import BaseOperator

from limio_provider.links.limio import LimioOrderLink

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import BaseOperatorLink, Context

    from limio_provider.hooks.limio import LimioHook
    from limio_provider.ledger import OrderLedger
    from limio_provider.models.results import OrderObject, PreviewResult

#: A preview check returns True to let the order through; False, or a string giving the reason, to stop it.
PreviewCheck = Callable[["PreviewResult"], "bool | str"]


def external_id_for(dag_id: str, task_id: str, work: str, order: dict[str, Any]) -> str:
    """The ``external_id`` the submit operators give an order that has none: it names the work, not the run.

    ``airflow-`` followed by 32 hex digits of a SHA-256 over dag_id, task_id, ``work`` (what identifies the
    run's work: see :func:`work_of`) and a fingerprint of the order body (its ``external_id`` aside). Every
    try, and every new run of the same work (a re-run of a date, a backfill of a day already run), derives
    the same id for the same order; a mapped order keeps its id when the upstream list is reordered. Two
    identical orders in one run get the same id: give them explicit ids. 40 printable ASCII characters.
    """
    body = {key: value for key, value in order.items() if key != "external_id"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    key = "\x1f".join((dag_id, task_id, work, hashlib.sha256(canonical.encode()).hexdigest()))
    return "airflow-" + hashlib.sha256(key.encode()).hexdigest()[:32]


#: Prefix of the Airflow Variable through which a person decides an order whose outcome stayed unknown.
DECISION_PREFIX = "limio_decision."


def decision_key(external_id: str) -> str:
    """The Airflow Variable that carries a person's decision for order ``external_id``:
    ``limio_decision.<external_id>`` (a SHA-256 for an id too long for a Variable name). Its value is
    ``send <ref>`` (I checked: Limio does not have it; send it) or ``adopt <order id> <ref>`` (Limio has it as
    that order), where ``ref`` names the send it answers (:func:`outcome_ref`; the error gives it). The submit
    task reads it only when an order's outcome is unknown, and deletes it once it is applied."""
    if len(DECISION_PREFIX) + len(external_id) <= 250:  # Airflow's longest Variable key
        return DECISION_PREFIX + external_id
    return DECISION_PREFIX + "sha256-" + hashlib.sha256(external_id.encode()).hexdigest()


def outcome_ref(external_id: str, holder: dict[str, Any]) -> str:
    """A short name (8 hex digits) for one send of ``external_id`` whose outcome is unknown, which a person's
    decision must repeat: a decision answers that send and no other. ``holder`` is what tells the sends apart:
    the ledger record's ``claimed_by`` and ``claimed_at`` (every claim of the external_id is another), or
    without a ledger the task instance."""
    text = json.dumps([external_id, holder], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _ledger_ref(external_id: str, entry: dict[str, Any]) -> str:
    return outcome_ref(external_id, {"claimed_by": entry.get("claimed_by"), "claimed_at": entry.get("claimed_at")})


def work_of(context: Context) -> str:
    """What identifies a run's work: its data interval, else its logical date, else (a run with neither,
    e.g. triggered without a logical date) its run id."""
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if start is not None and end is not None:
        return f"interval:{start.isoformat()}/{end.isoformat()}"
    logical_date = context.get("logical_date")
    if logical_date is not None:
        return f"date:{logical_date.isoformat()}"
    return f"run:{context['run_id']}"


def _older_than(context: Context, ledger: OrderLedger) -> bool:
    """Whether the run's work (its data interval's end, else its logical date) is older than ``ledger``: then
    orders for it may have been sent before the ledger existed. A run with neither is new work."""
    work = context.get("data_interval_end") or context.get("logical_date")
    return work is not None and work < ledger.since()


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
        return self._body_of(self.order)

    def _body_of(self, order: Any) -> dict[str, Any]:
        """``order`` (a dict, a model or a JSON object in a string), validated: the JSON body to send."""
        from limio_provider.models.orders import order_body

        return order_body(_as_dict("order", order), allow_unmodelled=self.allow_unmodelled)


class LimioPreviewOrderOperator(_LimioOrderOperator):
    """Preview an order (``POST /order/preview``): prices, invoices and schedule; nothing is created.

    Returns the preview as a JSON dict (XCom ``return_value``).
    """

    def execute(self, context: Context) -> dict[str, Any]:
        body = self._order_body()
        preview = self.hook.preview_order(body, allow_unmodelled=self.allow_unmodelled)
        self.log.info("Previewed %s order: total due %s", body["order_type"], preview.total_due())
        return preview.to_json_dict()


class _OrderRecord:
    """What a submit task instance has done, kept in ``task_state_store`` under one key, and mirrored to the
    order ledger when one is configured: the only code that reads or writes either. Without a store
    (Airflow before 3.3) the task's own record does not survive the try; the ledger's does.

    The task's record is ``{"external_id", "state", "seen", "order_id", "result", "adopted"}``: ``state`` is
    ``sending`` (written before the request leaves), ``unknown`` (sent, outcome not proven) or ``sent``
    (Limio's answer, or the order found, is in ``result``); ``seen`` lists the ids of orders that already
    carried this external_id before sending, which this task never adopts as its own. The ledger's states
    are ``claimed``, ``sent``, ``unknown``, ``done`` and ``refused`` (:mod:`limio_provider.ledger`).
    """

    def __init__(self, context: Context, key: str, external_id: str, ledger: OrderLedger | None = None) -> None:
        self._store = context.get("task_state_store")
        self.key = key
        self.external_id = external_id
        self.ledger = ledger
        self.entry: dict[str, Any] = {}  # the ledger record this task holds
        self.first_claim = False  # whether the claim created the external_id's record (none existed)
        self.token = os.urandom(16).hex()  # this try's: its writes fail once another try holds the claim

    @property
    def durable(self) -> bool:
        return self._store is not None

    def ref(self, context: Context) -> str:
        """The :func:`outcome_ref` of this task's send: its ledger record's, else its task instance's."""
        if self.entry:
            return _ledger_ref(self.external_id, self.entry)
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        holder = [ti.dag_id, context["run_id"], ti.task_id, -1 if map_index is None else map_index]
        return outcome_ref(self.external_id, {"task_instance": holder})

    def load(self) -> dict[str, Any]:
        """The record of this external_id, or ``{}``."""
        value = self._store.get(self.key) if self._store is not None else None
        return value if isinstance(value, dict) and value.get("external_id") == self.external_id else {}

    def save(self, state: str, **fields: Any) -> None:
        """Write this task's record (and the ledger's). ``sent`` says Limio holds the order: when writing it
        fails, the error says so and names the order (:class:`LimioOrderNotRecordedError`), whatever failed.

        The ledger is written first (its write fails once another try holds the claim: then this try's record
        is left alone), except for ``sent``, a fact worth keeping whoever holds the claim.
        """
        from limio_provider.exceptions import LimioClaimLostError, LimioOutcomeUnknownError

        record = {"external_id": self.external_id, "state": state, **fields}
        try:
            if self._store is not None and state == "sent":
                self._store.set(self.key, record)
            # An adopted entry is done already, and is another task's claim: it is not written again.
            if self.ledger is not None and self.entry and self.entry.get("state") != "done":
                if state == "sent":
                    result = fields["result"]
                    changes = {"order_id": fields["order_id"], "status": result.get("status"), "result": result}
                    self.entry = self.ledger.update(self.entry, "done", **changes)
                else:
                    self.entry = self.ledger.update(self.entry, "sent" if state == "sending" else "unknown")
            if self._store is not None and state != "sent":
                self._store.set(self.key, record)
        except LimioClaimLostError as exc:
            if state == "unknown":  # this try sent it, holding the claim then: what became of it is not known
                raise LimioOutcomeUnknownError(
                    f"Limio may have received order {self.external_id} (the submit's outcome is unknown), and "
                    f"{exc}: that try looks it up",
                    external_id=self.external_id,
                ) from exc
            if state != "sent":
                raise
            raise self._not_recorded(fields["order_id"], bool(fields.get("adopted")), exc) from exc
        except Exception as exc:
            if state == "sending":  # a local failure, before the request: it never left
                from limio_provider.exceptions import LimioError

                raise LimioError(
                    f"order {self.external_id} was not sent: recording that it is leaving failed "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
            if state != "sent":
                raise
            raise self._not_recorded(fields["order_id"], bool(fields.get("adopted")), exc) from exc

    def _not_recorded(self, order_id: str, adopted: bool, exc: Exception) -> Exception:
        from limio_provider.exceptions import LimioOrderNotRecordedError

        return LimioOrderNotRecordedError(
            f"Limio holds order {self.external_id} as {order_id}, and recording it failed "
            f"({type(exc).__name__}: {exc}); it is never sent again: a retry of this task finds it and records it",
            external_id=self.external_id,
            order_id=order_id,
            adopted=adopted,
        )

    def repair(self, body: dict[str, Any], context: Context, result: dict[str, Any]) -> None:
        """Make the ledger say what this task's record says: Limio holds ``result`` (an earlier try stored its
        id and then failed to write the ledger). Another body's record under this external_id is left alone."""
        from limio_provider.ledger import Owner, fingerprint

        if self.ledger is None:
            return
        owner, body_fingerprint = Owner.of(context), fingerprint(body)
        try:
            _, entry = self.ledger.claim(self.external_id, body_fingerprint, owner, self.token)
            if entry.get("state") != "done" and entry.get("fingerprint") == body_fingerprint:
                changes = {"order_id": result["id"], "status": result.get("status"), "result": result}
                self.entry = self.ledger.update(
                    {**entry, "external_id": self.external_id}, "done", claimed_by=vars(owner).copy(), **changes
                )
        except Exception as exc:
            raise self._not_recorded(result["id"], True, exc) from exc

    def clear(self, error: str) -> None:
        """Nothing was created: forget the intent; the ledger says ``refused`` (a corrected order may claim
        the external_id again). Once another try holds the ledger's claim, both records are that try's."""
        from limio_provider.exceptions import LimioClaimLostError

        if self.ledger is not None and self.entry:
            try:
                self.entry = self.ledger.update(self.entry, "refused", error=error[:500])
            except LimioClaimLostError as exc:
                log.warning("%s", exc)
                return
            except Exception as exc:  # the record stays as it was: a retry resumes or looks the order up
                log.warning(
                    "Order %s: writing the ledger's refusal failed: %s: %s", self.external_id, type(exc).__name__, exc
                )
        if self._store is not None:
            self._store.delete(self.key)

    def claim(
        self,
        body: dict[str, Any],
        context: Context,
        wait_timeout: float,
        decide: Callable[[dict[str, Any]], Any] | None = None,
    ) -> str:
        """Take the ledger's claim on this external_id: ``send``, ``adopt`` (the ledger holds Limio's order:
        :attr:`entry` has it) or ``reconcile`` (an earlier try of this task may have sent it).

        ``decide(record)`` returns a person's decision on the outcome of another task instance's send that never
        learnt it (a ``sent``/``unknown`` ledger record; the decision must name that record's outcome): the
        record is then set ``refused`` ("send": Limio does not have it, looked up again) or ``done`` (an order
        result: Limio has it) instead of waited for.

        :raises LimioOutcomeUnknownError: another task instance holds the claim and did not finish within
            ``wait_timeout`` seconds.
        """
        from limio_provider.exceptions import LimioOutcomeUnknownError
        from limio_provider.ledger import Owner, fingerprint, next_step

        assert self.ledger is not None
        owner, body_fingerprint = Owner.of(context), fingerprint(body)
        created, entry = self.ledger.claim(self.external_id, body_fingerprint, owner, self.token)
        self.first_claim = created  # no record existed: the ledger knows nothing of this external_id
        for _ in range(3):
            if created:
                break
            step = next_step(entry, body_fingerprint, owner)
            if step == "wait" and decide is not None and entry.get("state") in ("sent", "unknown"):
                decision = decide(entry)
                if decision == "send":
                    entry = self.ledger.update({**entry, "external_id": self.external_id}, "refused", error="decided")
                    step = "reclaim"
                elif decision is not None:
                    order_id, result = decision["id"], decision
                    self.entry = self.ledger.update(
                        {**entry, "external_id": self.external_id},
                        "done",
                        order_id=order_id,
                        status=result.get("status"),
                        result=result,
                    )
                    return "adopt"
            if step == "wait":
                entry = self.ledger.wait_final(self.external_id, wait_timeout) or {"state": "refused"}
                step = next_step(
                    {**entry, "fingerprint": entry.get("fingerprint", body_fingerprint)}, body_fingerprint, owner
                )
                if step == "wait":
                    if entry.get("state") in ("sent", "unknown"):  # a decision applies where it may have been sent
                        what = how_to_decide(self.external_id, _ledger_ref(self.external_id, entry))
                    else:  # claimed: not sent yet
                        what = (
                            "It has not sent it yet: if that task instance is not running, clear it (its retry "
                            "takes the claim up again)."
                        )
                    raise LimioOutcomeUnknownError(
                        f"order {self.external_id} is claimed in the ledger by {entry.get('claimed_by')} (state "
                        f"{entry.get('state')} since {entry.get('updated_at')}) and did not finish within "
                        f"{wait_timeout:.0f} s; not sending it a second time. {what}",
                        external_id=self.external_id,
                    )
            if step == "reclaim":
                created, entry = self.ledger.reclaim(
                    {**entry, "external_id": self.external_id}, body_fingerprint, owner, self.token
                )
                continue
            # An earlier try's claim is taken over (its writes, and so its sends, fail from now on); an adopted
            # one is only read.
            self.entry = entry if step == "adopt" else self.ledger.take(entry, owner, self.token)
            return {"adopt": "adopt", "resume": "send", "reconcile": "reconcile"}[step]
        if not created:
            raise LimioOutcomeUnknownError(
                f"order {self.external_id}: the ledger claim keeps changing hands; not sending it",
                external_id=self.external_id,
            )
        self.entry = entry
        return "send"

    @staticmethod
    def sent(context: Context, key: str, order_id: str) -> dict[str, Any]:
        """The stored record of order ``order_id``, or ``{}`` (for a resumed task, which knows only the id)."""
        store = context.get("task_state_store")
        value = store.get(key) if store is not None else None
        return value if isinstance(value, dict) and value.get("order_id") == order_id else {}


class LimioSubmitOrderOperator(_LimioOrderOperator):
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
        external_id; ``"resubmit"`` submits it again.
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
    :param wait_for_completion: after submitting, wait until Limio finishes processing the order; a failed
        order fails the task with Limio's reason.
    :param poll_interval: seconds between two reads of the order while waiting.
    :param wait_timeout: seconds to wait for a final status before failing.
    :param deferrable: wait in the triggerer instead of a worker slot. Default: ``[operators]
        default_deferrable``.
    """

    template_fields: Sequence[str] = (*_LimioOrderOperator.template_fields, "preview_only", "ledger_path")
    operator_extra_links: tuple[BaseOperatorLink, ...] = (LimioOrderLink(),)
    #: The ``task_state_store`` key of the submit's record (see :class:`_OrderRecord`).
    state_key = "limio_order"

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
        allow_failed_order: bool = False,
        ledger_path: str | None = None,
        ledger_wait_timeout: float = 300.0,
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
        # Not ``self.dry_run``: that is BaseOperator's method (``airflow tasks test --dry-run`` calls it).
        self.preview_only = dry_run
        self.adopt_existing = adopt_existing
        self.on_unknown_outcome = on_unknown_outcome
        self.reconcile_pages = reconcile_pages
        self.reconcile_page_size = reconcile_page_size
        self.allow_failed_order = allow_failed_order
        self.ledger_path = ledger_path
        self.ledger_wait_timeout = ledger_wait_timeout
        self.wait_for_completion = wait_for_completion
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout
        self.deferrable = deferrable
        #: The order's URL once this task instance has one (:class:`LimioOrderLink` reads it).
        self.limio_order_url: str | None = None

    # -- execute ----------------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        self.limio_order_url = None  # a runner may reuse the operator for the next try
        body = self._prepared_order(context)
        if _as_bool("dry_run", self.preview_only):
            preview = self._check_preview(body)
            self.log.info("Dry run: would submit %s order %s; nothing sent", body["order_type"], body["external_id"])
            return {"dry_run": True, "order": body, "preview": preview}
        result, adopted = self._submit_once(body, context)
        self._publish(context, result, adopted=adopted)
        return self._finish(context, result, adopted=adopted)

    def _prepared_order(self, context: Context) -> dict[str, Any]:
        """The validated body with its external_id; the connection is read and checked too (no network)."""
        body = self._prepared_body(self.order, context)
        self.hook.settings  # noqa: B018 - a bad connection (e.g. order_link_template) fails before any call
        return body

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

    # -- the submit: every transition of its record, top to bottom ------------------------------------

    def _submit_once(self, body: dict[str, Any], context: Context) -> tuple[dict[str, Any], bool]:
        """The order for ``body``: submitted once by this task instance, or found; and whether an earlier try
        or run created it (``adopted``)."""
        external_id, partner = body["external_id"], _partner_id(body.get("forPartner"))
        record = _OrderRecord(context, self.state_key, external_id, self.hook.ledger(self.ledger_path))
        stored = record.load()

        # 1. An order an earlier try stored always wins; the ledger is made to say so (that try may have failed
        #    to write it).
        if stored.get("order_id"):
            order = self.hook.get_order(stored["order_id"])
            self._log_order(
                "Order %s (%s) was submitted by an earlier try; reconnecting (status %s)",
                stored["order_id"],
                external_id,
                order.status,
            )
            reconnected = {**stored["result"], **_result_of(order, status_only=True)}
            record.repair(body, context, reconnected)
            return reconnected, True

        # 2. The ledger, if any: one object read says whether this external_id is taken, across runs and workers.
        step = "send"
        if record.ledger is not None:
            step = record.claim(
                body, context, self.ledger_wait_timeout, lambda entry: self._decided_for(entry, partner)
            )
            if step == "adopt":
                result = record.entry["result"] or {"id": record.entry["order_id"], "external_id": external_id}
                self._log_order(
                    "Order %s is in the ledger as %s: adopting it (no Limio call)", external_id, result["id"]
                )
                record.save("sent", order_id=result["id"], result=result, adopted=True)
                return result, True

        # 3. An earlier try sent it and never learnt the outcome: only an order it could have created counts.
        earlier_try_sent = stored.get("state") in ("sending", "unknown") or step == "reconcile"
        if earlier_try_sent or (not record.durable and record.ledger is None and context["ti"].try_number > 1):
            seen = stored.get("seen")  # None: any order with this external_id may be ours
            # A person's decision is read before looking; a 'send' is used up (deleted) after the look, whatever
            # it finds, and before sending: a send lost again asks again.
            decided = self._decided(external_id, partner, record.ref(context))
            if isinstance(decided, dict):
                record.save("sent", order_id=decided["id"], result=decided, adopted=True)
                return decided, True
            found = self._created_since(external_id, seen, partner)
            if decided == "send":
                self._send_decided(external_id, found)
            if found is not None:
                self.log.warning(
                    "An earlier try sent order %s and its outcome was unknown; Limio has it as %s (%s): adopting it",
                    external_id,
                    found["id"],
                    found.get("status"),
                )
                record.save("sent", order_id=found["id"], result=found, adopted=True)
                return found, True
            why = "an earlier try sent it and its outcome is unknown"
            if decided is None and self.on_unknown_outcome != "resubmit":
                raise self._unknown_outcome(external_id, why, record.ref(context))
            self.log.warning("Order %s not found (%s): sending it", external_id, why)
        # 4. A first send, claimed in the ledger: Limio is not searched (nothing was sent under this external_id
        #    through this ledger), unless the work is older than the ledger (sent before it existed, maybe).
        elif record.ledger is not None and not (record.first_claim and _older_than(context, record.ledger)):
            seen = None
        # 5. A first send without a ledger, or with one younger than the work: what already carries this
        #    external_id among the newest orders? (an earlier run's order is adopted)
        else:
            earlier, seen = self._look_before_first_send(external_id, partner, record.ledger)
            if earlier is not None:
                record.save("sent", order_id=earlier["id"], result=earlier, adopted=True)
                return earlier, True

        if self.preview_check is not None:
            self._check_preview(body)
        result = self._send_recorded(body, record, seen)
        if result is None and self.on_unknown_outcome == "resubmit":
            self.log.warning("Resubmitting order %s (on_unknown_outcome='resubmit')", external_id)
            result = self._send_recorded(body, record, seen)
        if result is None:
            raise self._unknown_outcome(external_id, "the submit's outcome is unknown", record.ref(context))
        return result, False

    def _look_before_first_send(
        self, external_id: str, partner: str | None, ledger: OrderLedger | None
    ) -> tuple[dict[str, Any] | None, list[str]]:
        """Before a first send the ledger cannot vouch for: an earlier order to adopt (``adopt_existing``), if
        Limio holds one, and the ids of the orders already carrying this external_id (never this send's)."""
        if ledger is None:
            self.log.info(
                "No order ledger: protection against another run sending order %s is limited to the %d newest "
                "orders; set the connection's ledger_path extra to remember every order sent",
                external_id,
                self.reconcile_page_size * self.reconcile_pages,
            )
        else:
            self.log.info(
                "The order ledger holds what was sent through it since %s; this run's work is older, so order "
                "%s may have been sent before (under another ledger, or one since wiped): looking it up first",
                ledger.since().isoformat(),
                external_id,
            )
        existing = self._lookup(external_id, partner)
        earlier = next((order for order in existing if not order.failed), None) if self.adopt_existing else None
        if earlier is not None:
            self.log.info("Order %s already exists as %s (an earlier run's): adopting it", external_id, earlier.id)
            return _result_of(earlier), []
        return None, [order.id for order in existing if order.id]

    def _send_recorded(
        self, body: dict[str, Any], record: _OrderRecord, seen: list[str] | None
    ) -> dict[str, Any] | None:
        """Send once: Limio's answer, or the order this send created when the answer was lost, or ``None``
        when the outcome stays unknown. The record says ``sending`` before the request leaves."""
        from limio_provider.exceptions import LimioClaimLostError, LimioError, LimioOutcomeUnknownError

        external_id = body["external_id"]
        try:
            # "sending" is written once this order holds one of the hook's in-flight slots (a batch's orders
            # queue for them): one killed while queueing is recorded as never sent, not as an unknown outcome.
            # The token comes first (a refresh then stalls no request between its turn and the wire), then the
            # order's turn (_pace), then the record, then the request.
            with self.hook.in_flight_slot():
                self.hook.get_token()
                self._pace()
                record.save("sending", seen=seen)
                answer = self._post(body)
        except LimioClaimLostError:
            raise  # another try holds the claim: it owns this order's record, and this try sent nothing
        except LimioOutcomeUnknownError as exc:
            record.save("unknown", seen=seen)
            self.log.warning("%s", exc)
            found = self._created_since(external_id, seen, _partner_id(body.get("forPartner")))
            if found is None:
                return None
            self.log.warning(
                "Outcome of order %s was unknown; resolved: Limio created it as %s (%s)",
                external_id,
                found["id"],
                found.get("status"),
            )
            record.save("sent", order_id=found["id"], result=found, adopted=False)
            return found
        except LimioError as exc:
            record.clear(str(exc))  # refused by Limio, or never left this worker: nothing was created
            raise
        result = answer.to_json_dict()
        record.save("sent", order_id=result["id"], result=result, adopted=False)
        self._log_order("Submitted order %s: id %s, status %s", external_id, result["id"], result.get("status"))
        return result

    def _pace(self) -> None:
        """Wait for this submit's turn, right before it is recorded and sent (a batch's max_orders_per_second)."""

    def _log_order(self, message: str, *args: Any) -> None:
        """What became of the order, at INFO (a batch says it per order at DEBUG: its results file says it)."""
        self.log.info(message, *args)

    def _post(self, body: dict[str, Any]) -> Any:
        """Send ``body``, which :meth:`_prepared_body` validated (the hook's ``submit_order`` would again)."""
        return self.hook._submit("/order", body)

    def _lookup(self, external_id: str, partner: str | None) -> list[OrderObject]:
        """The orders among the newest that may be this one: its external_id, and its partner (``None``: an
        order for no partner) where Limio shows the order's ``forPartner``. The order list gives summaries, so
        each order with this external_id (rarely more than one) is read whole for its partner."""
        ours, others = orders_for(
            self.hook, external_id, partner, page_size=self.reconcile_page_size, max_pages=self.reconcile_pages
        )
        self.log.info(
            "Looked up external_id %s among the %d newest orders: %s",
            external_id,
            self.reconcile_page_size * self.reconcile_pages,
            ", ".join(
                [f"{order.id} ({order.status})" for order in ours]
                + [f"{order.id} ({order.status}, another partner: not this order)" for order in others]
            )
            or "not found",
        )
        return ours

    def _created_since(self, external_id: str, seen: list[str] | None, partner: str | None) -> dict[str, Any] | None:
        """The newest order with ``external_id`` that is not among ``seen`` (``None``: any), as a result.

        Asked only about an order that may have been sent: when the look-up itself fails, the order's outcome is
        unknown, and the error says so, names it and says what a person can do (the look-up's own error, a 5xx
        say, would read as if nothing was created).
        """
        from limio_provider.exceptions import LimioError, LimioOutcomeUnknownError

        try:
            orders = self._lookup(external_id, partner)
        except LimioError as exc:
            raise LimioOutcomeUnknownError(
                f"Limio may have received order {external_id}, and looking it up failed: {exc}. A retry of this "
                "task looks again and sends nothing.",
                external_id=external_id,
            ) from exc
        found = [order for order in orders if seen is None or order.id not in seen]
        return _result_of(found[0]) if found else None

    def _unknown_outcome(self, external_id: str, why: str, ref: str) -> Exception:
        """The error of an order that may exist but cannot be found: it names the external_id."""
        from limio_provider.exceptions import LimioOutcomeUnknownError

        budget = self.reconcile_page_size * self.reconcile_pages
        return LimioOutcomeUnknownError(
            f"Limio may have received order {external_id} ({why}) but it is not among the {budget} newest "
            f"orders; not resubmitting. {how_to_decide(external_id, ref)}",
            external_id=external_id,
        )

    def _decided_for(self, entry: dict[str, Any], partner: str | None) -> str | dict[str, Any] | None:
        """A person's decision on another task instance's send (its ledger ``entry``): ``send`` only once Limio
        has been looked up again and does not hold the order (if it does, that order's result: it is adopted)."""
        external_id = entry["external_id"]
        decided = self._decided(external_id, partner, _ledger_ref(external_id, entry))
        if decided == "send":
            found = self._created_since(external_id, None, partner)
            self._send_decided(external_id, found)
            return "send" if found is None else found
        return decided

    def _send_decided(self, external_id: str, found: dict[str, Any] | None) -> None:
        """Use up a ``send`` decision, Limio having been looked up again: it found ``found`` (then that order is
        taken, not sent again), or nothing (then the order is sent, once: the decision is gone before it is,
        so a send lost again asks again)."""
        from airflow.providers.common.compat.sdk import Variable

        key = decision_key(external_id)
        Variable.delete(key)
        if found is None:
            self.log.warning(
                "Variable %s says Limio does not have order %s: sending it (Variable deleted)", key, external_id
            )
        else:
            self.log.warning(
                "Order %s was decided 'send', but Limio has it now as %s (%s): adopting it, not sending "
                "(Variable %s deleted)",
                external_id,
                found["id"],
                found.get("status"),
                key,
            )

    def _decided(self, external_id: str, partner: str | None, ref: str) -> str | dict[str, Any] | None:
        """A person's decision on the send of order ``external_id`` named ``ref`` (see :func:`decision_key`,
        :func:`outcome_ref`), taken once: ``"send"``, the adopted order's result, or ``None`` when there is none.
        An ``adopt`` is deleted once its order is read and checked (this external_id and partner); a ``send`` by
        the caller, once Limio was looked up again, before sending (:meth:`_send_decided`). One that answers
        another send is refused and left set.

        :raises LimioValidationError: the Variable holds something else, answers another send, or names an
            order with another external_id or partner.
        """
        from airflow.providers.common.compat.sdk import Variable

        from limio_provider.exceptions import LimioValidationError

        key = decision_key(external_id)
        value = Variable.get(key, None)  # positional: Airflow 2 calls the default default_var
        if value is None:
            return None
        words = str(value).split()
        if not (words[:1] == ["send"] and len(words) == 2) and not (words[:1] == ["adopt"] and len(words) == 3):
            raise LimioValidationError(
                f"invalid Variable {key}: expected 'send {ref}' or 'adopt <order id> {ref}' (the send it answers), "
                f"got {str(value)[:100]!r}"
            )
        if words[-1] != ref:
            raise LimioValidationError(
                f"invalid Variable {key}: it answers the send {words[-1]!r} of order {external_id}, not this one "
                f"({ref!r}); not applying it. {how_to_decide(external_id, ref)}"
            )
        if words[0] == "send":  # deleted by the caller once it has looked Limio up, before it sends
            return "send"
        # Checked before the Variable is deleted: a failed read or a wrong order leaves the decision to correct.
        order = self.hook.get_order(words[1])
        problem = not_this_order(order, external_id, partner)
        if problem is not None:
            raise LimioValidationError(f"invalid Variable {key}: {problem}; not adopting it")
        Variable.delete(key)
        self.log.warning(
            "Variable %s says Limio has order %s as %s: adopting it (Variable deleted)", key, external_id, order.id
        )
        return _result_of(order)

    def _check_preview(self, body: dict[str, Any]) -> dict[str, Any]:
        preview = self.hook.preview_order(body, allow_unmodelled=self.allow_unmodelled)
        if self.preview_check is None:
            return preview.to_json_dict()
        verdict = self.preview_check(preview)
        if verdict is True:
            return preview.to_json_dict()
        reason = verdict if isinstance(verdict, str) and verdict else "preview_check refused the preview"
        total = f"total due {preview.total_due()}"
        message = f"order {body['external_id']} not submitted: {reason}" + ("" if total in reason else f" ({total})")
        if self.on_preview_reject == "skip":
            from airflow.providers.common.compat.sdk import AirflowSkipException

            raise AirflowSkipException(message)
        from limio_provider.exceptions import LimioPreviewRejectedError

        raise LimioPreviewRejectedError(message)

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
        return {**result, "status": event["order_status"]}

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
            stored = _OrderRecord.sent(context, self.state_key, event["order_id"])
            result = stored.get("result") or _result_of(self.hook.get_order(event["order_id"]))
            adopted = bool(stored.get("adopted", adopted))
        self._publish(context, result, adopted=adopted)
        raise_for_event(event)
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


def how_to_decide(external_id: str, ref: str) -> str:
    """What a person does about the send ``ref`` of an order whose outcome is unknown: the error message's last
    sentence. The decision repeats ``ref``: it answers that send and no other."""
    key = decision_key(external_id)
    return (
        f"Check Limio for external_id {external_id}, then set the Airflow Variable {key} to 'send {ref}' (Limio "
        f"does not have it) or 'adopt <order id> {ref}' (it does), e.g. `airflow variables set {key} \"send "
        f'{ref}"` (or `python -m limio_provider.decide {external_id} {ref} send`, which checks Limio first), and '
        "clear this task (docs: production.md, recovery actions)."
    )


def orders_for(
    hook: LimioHook, external_id: str, partner: str | None, *, page_size: int = 100, max_pages: int = 5
) -> tuple[list[OrderObject], list[OrderObject]]:
    """The orders carrying ``external_id`` among the ``page_size * max_pages`` newest, newest first, read whole:
    ``(those that may be partner's, those of another partner)`` (``partner`` ``None``: an order for no
    partner). The order list gives summaries without a partner, so each order found is read (rarely more
    than one)."""
    summaries = hook.find_orders(external_id, page_size=page_size, max_pages=max_pages)
    found = [hook.get_order(summary.id) for summary in summaries if summary.id]
    return [o for o in found if _for_partner(o, partner)], [o for o in found if not _for_partner(o, partner)]


def not_this_order(order: OrderObject, external_id: str, partner: str | None) -> str | None:
    """Why ``order`` cannot be the order ``external_id`` of ``partner`` (see :func:`orders_for`), or ``None``."""
    if order.external_id != external_id:
        return f"order {order.id} has external_id {order.external_id!r}, not {external_id!r}"
    if not _for_partner(order, partner):
        shown = _partner_id((order.model_extra or {}).get("forPartner"))
        return f"order {order.id} is for partner {shown!r}, not {partner!r}"
    return None


def _partner_id(value: Any) -> str | None:
    """The partner organisation's id in a ``forPartner`` (an object with ``id``, or the id itself)."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def _for_partner(order: OrderObject, partner: str | None) -> bool:
    """Whether ``order`` may be the order of ``partner`` (``None``: an order for no partner). An order that
    shows a ``forPartner`` must show this one. One that shows none matches on its external_id alone: Limio does
    not document whether its order objects carry ``forPartner`` (the emulator's do, as sent)."""
    extra = order.model_extra or {}
    return "forPartner" not in extra or _partner_id(extra["forPartner"]) == partner


def _result_of(order: OrderObject, *, status_only: bool = False) -> dict[str, Any]:
    """The submit result of an order read back from Limio: the fields a submit answer has, and Limio's
    ``message`` when it gave one (a failed order's reason)."""
    from limio_provider.models.results import OrderResult

    dump = order.model_dump(mode="json")
    keys = {"status", "message"} if status_only else {*OrderResult.model_fields, "message"}
    return {key: value for key, value in dump.items() if key in keys and (value is not None or key != "message")}


def _admin_body(body: dict[str, Any], partner: Any) -> dict[str, Any]:
    """A validated ``body`` as an admin order for ``partner`` (an id, an object, or one rendered as JSON text),
    or for the order's own ``forPartner``."""
    from limio_provider.models.orders import admin_order_body

    if isinstance(partner, str) and partner.strip().startswith("{"):
        partner = _as_dict("partner", partner)
    return admin_order_body(body, partner or None)


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
        return self.hook._submit("/admin/order", body)
