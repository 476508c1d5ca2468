"""Reconcile what was meant to be ordered with what Limio holds, and fail past a threshold.

This module is imported at DAG-parse time, so it imports nothing heavy: the hook is imported when a task runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperator

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

    from limio_provider.hooks.limio import LimioHook

#: What the report says of each order, and which of those count against ``max_problems``.
STATUSES = ("created", "pending", "not_created", "failed", "failed_downstream", "missing", "unexpected")
PROBLEMS = ("failed", "failed_downstream", "missing", "unexpected")
#: A batch's outcomes that say Limio holds the order, and those that say it does not (an ``unknown`` says
#: neither: found, it is reconciled as created; not found, as not created).
_SENT = ("submitted", "adopted", "already_sent", "failed")
_NOT_SENT = ("refused", "invalid", "dry_run")
#: Problems named in the summary and in the error; the report file has them all.
SHOWN = 10


class LimioReconcileOrdersOperator(BaseOperator):
    """Compare the orders that were meant to exist with the orders Limio holds, write a report (JSON Lines,
    one line per order), return a summary through XCom, and fail when more than ``max_problems`` orders are
    ``missing``, ``failed``, ``failed_downstream`` or ``unexpected``.

    What was intended: a batch's results file (each line's ``outcome`` says whether Limio should hold the
    order: ``submitted``/``adopted`` yes, ``refused``/``invalid``/``dry_run`` no, ``unknown`` either), an
    orders file (every line with its ``external_id``), or a list of external ids. What Limio holds: its
    order list (every page, or ``max_pages``), or an export of it (:class:`LimioExportObjectsOperator`'s
    file) given as ``limio_orders_path``. Each intended order is ``created`` (one order, final and not
    failed), ``pending`` (one order, still processing), ``failed`` (Limio failed it), ``failed_downstream``
    (complete, but a process event says a plugin such as billing failed: with ``check_processing``),
    ``missing`` (meant to exist, not found) or ``not_created`` (meant not to exist, and does not). An order
    is ``unexpected`` when Limio holds it although it was meant not to exist, when a second order carries an
    intended external_id (a duplicate), or when it carries ``external_id_prefix`` and was not intended.

    :param intended_path: a batch's results file or an orders file (JSON Lines), an ``ObjectStoragePath``
        URI. (templated)
    :param external_ids: the intended external ids, instead of a file (a list, or an upstream XCom).
        (templated)
    :param report_path: where to write the report (default: ``<intended_path>.reconciliation.jsonl``;
        required with ``external_ids``). (templated)
    :param limio_orders_path: read Limio's orders from this JSON Lines export instead of listing them.
        (templated)
    :param external_id_prefix: orders in Limio whose external_id starts with this and that were not
        intended are ``unexpected`` (without it, other orders of the tenant are none of this task's business).
    :param check_processing: read each created order's process events (``/related``: one request per order)
        and report a failed plugin as ``failed_downstream``, with the plugin's message.
    :param max_problems: the problems tolerated before the task fails (default 0).
    :param page_size: orders per page when listing Limio's orders.
    :param max_pages: list at most this many pages (``None``: every page).
    :param limio_conn_id: the Limio connection. (templated)
    :param hook_params: keyword arguments for :class:`~limio_provider.hooks.limio.LimioHook`.
    """

    template_fields: Sequence[str] = (
        "intended_path",
        "external_ids",
        "report_path",
        "limio_orders_path",
        "limio_conn_id",
    )
    ui_color = "#e8f1fb"

    def __init__(
        self,
        *,
        intended_path: str | None = None,
        external_ids: Any = None,
        report_path: str | None = None,
        limio_orders_path: str | None = None,
        external_id_prefix: str | None = None,
        check_processing: bool = False,
        max_problems: int = 0,
        page_size: int = 1000,
        max_pages: int | None = None,
        limio_conn_id: str = "limio_default",
        hook_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (intended_path is None) == (external_ids is None):
            raise ValueError("give intended_path (a results or orders file) or external_ids, not both")
        if external_ids is not None and report_path is None:
            raise ValueError("report_path is required with external_ids (there is no file to put it beside)")
        if not isinstance(max_problems, int) or max_problems < 0:
            raise ValueError(f"max_problems must be a non-negative integer, got {max_problems!r}")
        self.intended_path = intended_path
        self.external_ids = external_ids
        self.report_path = report_path
        self.limio_orders_path = limio_orders_path
        self.external_id_prefix = external_id_prefix
        self.check_processing = check_processing
        self.max_problems = max_problems
        self.page_size = page_size
        self.max_pages = max_pages
        self.limio_conn_id = limio_conn_id
        self.hook_params = hook_params or {}

    @cached_property
    def hook(self) -> LimioHook:
        from limio_provider.hooks.limio import LimioHook

        return LimioHook(self.limio_conn_id, **self.hook_params)

    def execute(self, context: Context) -> dict[str, Any]:
        from limio_provider.exactly_once.ledger import make_folder, storage_path
        from limio_provider.exceptions import LimioReconciliationError

        report_uri = self.report_path or f"{self.intended_path}.reconciliation.jsonl"
        report_file = storage_path("report_path", report_uri)  # usable before any call
        intended = self._intended()  # external_id -> whether Limio should hold it (None: either)
        found: dict[str, list[dict[str, Any]]] = {}
        unexpected: list[dict[str, Any]] = []
        for order in self._limio_orders():
            external_id = order.get("external_id")
            if not isinstance(external_id, str):
                continue
            if external_id in intended:
                found.setdefault(external_id, []).append(order)
            elif self.external_id_prefix and external_id.startswith(self.external_id_prefix):
                unexpected.append(_line(external_id, "unexpected", order, "not intended"))
        counts = dict.fromkeys(STATUSES, 0)
        shown: list[dict[str, Any]] = []
        make_folder(report_file.parent)
        with report_file.open("w") as report:

            def write(line: dict[str, Any]) -> None:
                counts[line["status"]] += 1
                if line["status"] in PROBLEMS and len(shown) < SHOWN:
                    shown.append(line)
                report.write(json.dumps(line, default=str) + "\n")

            for external_id, expected in intended.items():
                for line in self._reconcile(external_id, expected, found.get(external_id, [])):
                    write(line)
            for line in unexpected:
                write(line)
        problems = sum(counts[status] for status in PROBLEMS)
        summary = {
            "intended": len(intended),
            "counts": {status: n for status, n in counts.items() if n},
            "problems": problems,
            "max_problems": self.max_problems,
            "report_path": report_uri,
            "first_problems": [
                {key: line.get(key) for key in ("external_id", "status", "order_id", "message")} for line in shown
            ],
        }
        self.log.info("Reconciliation: %s", json.dumps(summary, default=str))
        if problems > self.max_problems:
            context["ti"].xcom_push(key="return_value", value=summary)
            named = "; ".join(
                f"{line['external_id']} {line['status']}" + (f" ({line['message']})" if line.get("message") else "")
                for line in shown
            )
            raise LimioReconciliationError(
                f"{problems} of {len(intended)} orders did not reconcile (more than max_problems="
                f"{self.max_problems}): {named}; every order is in {report_uri}",
                summary=summary,
            )
        return summary

    # -- what was intended, what Limio holds ---------------------------------------------------------------

    def _intended(self) -> dict[str, bool | None]:
        from limio_provider.exceptions import LimioValidationError

        if self.external_ids is not None:
            ids = self.external_ids
            if isinstance(ids, str) or not all(isinstance(i, str) and i for i in ids):
                raise LimioValidationError(f"invalid external_ids: expected a list of non-empty strings, got {ids!r}")
            return dict.fromkeys(ids, True)
        intended: dict[str, bool | None] = {}
        for number, row in _json_lines("intended_path", str(self.intended_path)):
            external_id = row.get("external_id")
            if not isinstance(external_id, str) or not external_id:
                raise LimioValidationError(
                    f"intended_path {self.intended_path} line {number} has no external_id: reconcile a batch's "
                    "results file instead, which names every order's (derived ones too)"
                )
            outcome = row.get("outcome")
            expected = True if outcome is None or outcome in _SENT else False if outcome in _NOT_SENT else None
            if intended.get(external_id) is not True:  # a re-run's second line for an order never undoes the first
                intended[external_id] = expected
        return intended

    def _limio_orders(self) -> Iterator[dict[str, Any]]:
        if self.limio_orders_path is not None:
            for _, row in _json_lines("limio_orders_path", str(self.limio_orders_path)):
                yield row
            return
        for items, _ in self.hook.object_pages("orders", page_size=self.page_size, max_pages=self.max_pages):
            yield from items

    def _reconcile(self, external_id: str, expected: bool | None, orders: list[dict[str, Any]]) -> Iterator[dict]:
        """The report's lines for one intended order: its own, and one per duplicate."""
        from limio_provider.models.results import OrderObject

        if not orders:
            yield _line(external_id, "missing" if expected else "not_created", None, None)
            return
        first, *duplicates = orders
        if expected is False:
            yield _line(external_id, "unexpected", first, "Limio holds an order the batch says it never created")
        else:
            order = OrderObject.model_validate(first)
            if order.failed:  # a list's summary may not carry the reason: the order does
                message = order.message or (self.hook.get_order(str(order.id)).message if order.id else None)
                yield _line(external_id, "failed", first, message or "failed")
            elif not order.succeeded:
                yield _line(external_id, "pending", first, None)
            elif self.check_processing and (errors := self.hook.processing_errors(str(order.id))):
                yield _line(external_id, "failed_downstream", first, "; ".join(errors)[:500])
            else:
                yield _line(external_id, "created", first, None)
        for duplicate in duplicates:
            yield _line(external_id, "unexpected", duplicate, "a second order with this external_id")


def _line(external_id: str, status: str, order: dict[str, Any] | None, message: str | None) -> dict[str, Any]:
    order = order or {}
    return {
        "external_id": external_id,
        "status": status,
        "order_id": order.get("id"),
        "order_status": order.get("status"),
        "message": message,
    }


def _json_lines(name: str, uri: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """The JSON objects of a JSON Lines file (gzip if named ``.gz``), one at a time, with their line numbers;
    blank lines skipped. Read as the batch reads its orders file."""
    from limio_provider.exactly_once.ledger import storage_path
    from limio_provider.exceptions import LimioValidationError
    from limio_provider.operators.batch import _file_lines

    for number, text, error in _file_lines(storage_path(name, uri), uri):
        try:
            row = json.loads(text) if error is None else None  # type: ignore[arg-type]
        except ValueError as exc:
            error = f"not JSON: {exc}"
        if error is not None or not isinstance(row, dict):
            raise LimioValidationError(f"{name} {uri} line {number} is {error or 'not a JSON object'}")
        yield number, row
