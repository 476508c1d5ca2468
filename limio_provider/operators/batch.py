"""Submit a batch of Limio orders from one task: each exactly once, through the order ledger, a few at a time.

This module is imported at DAG-parse time, so it imports nothing heavy: the hook, ``requests`` and the
order models are imported when a task runs.
"""

from __future__ import annotations

import gzip
import hashlib
import heapq
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, cast

from limio_provider.exactly_once.identity import ExternalIdsDigest, work_of
from limio_provider.links.limio import LimioResultsFileLink, browser_url
from limio_provider.operators.orders import (
    PreviewCheck,
    _admin_body,
    _as_bool,
    _LimioSubmitOperator,
    _rendered,
    keeps_failure,
)

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import BaseOperatorLink, Context, ObjectStoragePath

    from limio_provider.approval import LimioApproval
    from limio_provider.exactly_once.ledger import OrderLedger
    from limio_provider.hooks.limio import LimioHook
    from limio_provider.hooks.rate import AdaptiveRate

#: What became of each order, as the results file and the summary say.
OUTCOMES = ("submitted", "adopted", "refused", "unknown", "failed", "invalid", "dry_run", "already_sent")
#: The outcomes counted against ``max_failed``.
FAILURES = ("refused", "unknown", "failed", "invalid")
#: Invalid orders named in the error that refuses a batch; the rest are counted.
MAX_PROBLEMS_SHOWN = 20
#: Result lines written to the results file at once.
RESULTS_CHUNK = 256
#: The summary (XCom ``return_value``) stays under this many bytes of JSON.
MAX_SUMMARY_BYTES = 2000
#: The ``task_state_store`` key of the approval a try of the batch was given (with the digest of its orders).
APPROVAL_KEY = "limio_approval"
#: The largest charges a preview pass names (the budget's error, the approval's summary).
LARGEST_SHOWN = 5
#: Arguments of the single-order submit that a batch does not take, and what to do instead (a user moving from
#: mapped single-order tasks to a batch gets this, not BaseOperator's "invalid arguments").
_NOT_FOR_A_BATCH = {
    "order": "give the orders as orders= (a list) or orders_path= (a JSON Lines file)",
    "wait_for_completion": "wait for the orders downstream, e.g. with LimioOrderSensor",
    "poll_interval": "a batch does not wait for completion",
    "wait_timeout": "a batch does not wait for completion",
    "deferrable": "a batch does not wait for completion",
    "adopt_existing": "a batch always has a ledger, which decides adoption",
}


@dataclass
class _PreviewTally:
    """What a batch's preview pass found: how many orders it would send and what they come to."""

    orders: int = 0  # previewed, not sent before: this run would send them
    total_due: Decimal = Decimal(0)
    already_sent: int = 0  # the ledger holds their orders: adopted, not charged again
    refused: int = 0  # Limio or preview_check refused the preview: they would be refused
    failed: int = 0  # not previewed (an error): what they come to is not known
    invalid: int = 0
    largest: list[tuple[Decimal, str]] = field(default_factory=list)  # a heap of the LARGEST_SHOWN largest

    def add(self, row: dict[str, Any]) -> None:
        outcome = row["outcome"]
        if outcome == "dry_run":
            due = Decimal(row["total_due"])
            self.orders += 1
            self.total_due += due
            entry = (due, str(row["external_id"]))
            if len(self.largest) < LARGEST_SHOWN:
                heapq.heappush(self.largest, entry)
            else:
                heapq.heappushpop(self.largest, entry)
        elif outcome == "already_sent":
            self.already_sent += 1
        elif outcome == "refused":
            self.refused += 1
        elif outcome == "invalid":
            self.invalid += 1
        else:
            self.failed += 1

    def as_dict(self) -> dict[str, Any]:
        largest = sorted(self.largest, reverse=True)
        return {
            "orders": self.orders,
            "total_due": str(self.total_due),
            "already_sent": self.already_sent,
            "refused": self.refused,
            "failed": self.failed,
            "invalid": self.invalid,
            "largest": [{"external_id": external_id[:64], "total_due": str(due)} for due, external_id in largest],
        }


@dataclass
class _Item:
    """One order of the batch as read: where it is, its body to send (``None`` if invalid) and why not."""

    position: dict[str, int]  # {"line": n} (a file, 1-based) or {"index": i} (a list)
    where: str  # "line 12" or "orders[11]"
    body: dict[str, Any] | None
    external_id: str | None
    error: str | None
    derived: bool = False  # the external_id is derived (the order has none)
    digest: bytes = b""  # a file's line: its number and text, hashed (what the sending pass compares)


def _budget_orders(value: Any) -> int | None:
    """``max_orders`` as given or rendered: a whole number >= 0, or ``None``."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    try:
        number = int(value) if not isinstance(value, bool | float) else None
    except ValueError:
        number = None
    if number is None or number < 0:
        raise ValueError(f"max_orders must be a whole number >= 0, got {value!r}")
    return number


def _budget_due(value: Any) -> Decimal | None:
    """``max_total_due`` as given or rendered: an amount >= 0, or ``None``."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    try:
        amount = Decimal(str(value)) if not isinstance(value, bool) else None
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite() or amount < 0:
        raise ValueError(f"max_total_due must be an amount >= 0, got {value!r}")
    return amount


def _check_budget(
    tally: _PreviewTally, preview: dict[str, Any], max_orders: int | None, max_due: Decimal | None
) -> None:
    """:raises LimioBudgetExceededError: the preview pass came to more than a budget (nothing was sent)."""
    from limio_provider.exceptions import LimioBudgetExceededError

    over = []
    if max_orders is not None and tally.orders > max_orders:
        over.append(f"{tally.orders} orders to send, {tally.orders - max_orders} over max_orders={max_orders}")
    if max_due is not None and tally.total_due > max_due:
        over.append(f"total due {tally.total_due}, {tally.total_due - max_due} over max_total_due={max_due}")
    if over:
        largest = ", ".join(f"{row['external_id']} {row['total_due']}" for row in preview["largest"])
        raise LimioBudgetExceededError(
            f"the batch is over its budget: {'; '.join(over)}. Nothing was sent. Largest charges: {largest}",
            preview=preview,
        )


def _one_line(message: str) -> str:
    """A validation message (``invalid 'new' order:\\n  - path: why...``) on one line: ``head: path: why; ...``."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    if not lines:
        return ""
    head, details = lines[0].rstrip(":"), [line.removeprefix("- ") for line in lines[1:]]
    return f"{head}: {'; '.join(details)}" if details else head


def _as_list(value: Any) -> list[Any]:
    """The rendered ``orders``: a list, or a JSON (or Python-literal) list in a string."""
    return _rendered("orders", list(value) if isinstance(value, tuple) else value, list)


def default_results_path(orders_path: str) -> str:
    """Where the results of ``orders_path`` go by default: next to it, as ``<name>.results.jsonl``
    (``renewals.jsonl`` and ``renewals.jsonl.gz`` give ``renewals.results.jsonl``)."""
    stem = orders_path.removesuffix(".gz")
    for suffix in (".jsonl", ".ndjson", ".json"):
        if stem.endswith(suffix):
            stem = stem.removesuffix(suffix)
            break
    return stem + ".results.jsonl"


def dry_run_path(results_path: str) -> str:
    """Where a dry run writes its results: next to the real run's, never over them
    (``renewals.results.jsonl`` gives ``renewals.results.dry-run.jsonl``)."""
    stem = results_path.removesuffix(".gz")
    for suffix in (".jsonl", ".ndjson", ".json"):
        if stem.endswith(suffix):
            return stem.removesuffix(suffix) + ".dry-run" + suffix
    return stem + ".dry-run"


def _file_lines(path: ObjectStoragePath, uri: str) -> Iterator[tuple[int, str | None, str | None]]:
    """``(line number, text, error)`` of each non-blank line of a JSON Lines file (gzip if named ``.gz``),
    read as a stream: one line in memory at a time."""
    from limio_provider.exceptions import LimioConfigError, LimioValidationError

    number = 0
    try:
        raw = path.open("rb")
    except FileNotFoundError:
        raise LimioConfigError(f"orders_path {uri} does not exist") from None
    with raw:
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if path.name.endswith(".gz") else raw
        try:
            for number, data in enumerate(_read_lines(stream), 1):  # number is read after the loop, too
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield number, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})"
                    continue
                text = text.removeprefix("\ufeff") if number == 1 else text
                if text.strip():
                    yield number, text, None
        except (OSError, EOFError) as exc:  # a corrupt or cut-short gzip stream, a storage error
            raise LimioValidationError(
                f"invalid orders_path {uri}: cannot be read after line {number}: {type(exc).__name__}: {exc}"
            ) from None


def _same_file(a: ObjectStoragePath, b: ObjectStoragePath) -> bool:
    """Whether two paths name one file: on a local disk the same file after links and ``.``/``..`` (or the same
    inode), on an object store the same bucket and key whichever connection names it."""
    import posixpath

    from fsspec.implementations.local import LocalFileSystem

    if isinstance(a.fs, LocalFileSystem) and isinstance(b.fs, LocalFileSystem):
        if os.path.realpath(a.path) == os.path.realpath(b.path):
            return True
        try:
            first, second = os.stat(a.path), os.stat(b.path)
        except OSError:
            return False
        return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)
    return type(a.fs) is type(b.fs) and posixpath.normpath(a.path.strip("/")) == posixpath.normpath(b.path.strip("/"))


def _read_lines(stream: Any) -> Iterator[bytes]:
    """The lines of a binary ``stream``, read 64 KiB at a time (an fsspec file is not always iterable by line,
    e.g. a local one under Airflow 2)."""
    rest = b""
    while chunk := stream.read(65536):
        *lines, rest = (rest + chunk).split(b"\n")
        yield from lines
    if rest:
        yield rest


class LimioSubmitOrdersOperator(_LimioSubmitOperator):
    """Submit a batch of orders (``POST /order``, or ``POST /admin/order`` with ``partner``), each exactly once,
    a few at a time, and write one result line per order; returns a small summary (XCom ``return_value``).

    Every order is validated, and given its external_id, exactly as :class:`LimioSubmitOrderOperator` does
    (an order without one gets :func:`~limio_provider.exactly_once.identity.external_id_for`), and goes through
    the same exactly-once submit. All of them are validated before the first request: a file is read twice
    (a validation pass, then a sending pass), one line at a time, so memory does not grow with it.

    An order ledger is required (the connection's ``ledger_path`` extra, or ``ledger_path``): it is the
    record of every order. A retried or cleared task, or a new run of the same work, adopts the orders it
    holds as done without calling Limio, looks up by external_id those an earlier try of this task
    instance sent without learning the outcome, and never sends an order twice. Orders repeating an
    external_id within the batch are sent one at a time: a repeat adopts the first one's order (or, with a
    different body, is refused by the ledger).

    The orders share one hook: one token and one pool of ``max_in_flight`` connections, through which at most
    ``max_in_flight`` requests (and a token request) are in flight at once; twice as many orders are worked on
    at once, so that one order's ledger writes overlap another's request. Any backoff the hook takes (a 429's
    ``Retry-After``, a retried 503...) pauses the whole batch: no worker starts an order or sends a submit until
    it has passed.

    Each line of the results file is ``{"line": n}`` (or ``{"index": i}`` for a list), ``external_id``,
    ``outcome``, ``order_id``, ``status`` and ``error``, written as each order finishes (not in input
    order), plus ``this_try`` and ``status_at`` where they apply. ``outcome`` is what became of the order for
    this task instance, the same in every try: ``submitted`` (this task instance created the order; a later
    try that found it adds ``"this_try": "adopted"``), ``adopted`` (another run had, or an earlier line of
    the batch named it), ``refused`` (Limio, the preview check or the ledger refused it: nothing was
    created), ``unknown`` (Limio may hold it: check it by external_id before sending it again), ``failed``
    (Limio answered that the order failed, or it was not sent; ``order_id`` names an order Limio already
    holds under its external_id, if any), ``invalid`` (not sent), and in a dry run ``dry_run`` (previewed
    only; the line also has ``total_due``) or ``already_sent`` (the ledger holds its order). A status read
    from the ledger rather than from Limio now carries ``status_at``, when Limio gave it.

    The summary is ``{"total", "counts": {outcome: n}, "failures", "max_failed", "results_path",
    "duration_seconds", "orders_per_second", "dry_run", "first_failures"}`` (under 2 KB). The task fails at
    the end, after writing the results and pushing the summary, if more than ``max_failed`` orders were
    refused, unknown, failed or invalid; and if Limio created any order whose recording then failed (a ledger
    write: its line says ``submitted`` with the order id and the error, the summary has ``not_recorded``), so
    that the task's retry records it (and sends nothing).

    :param orders: the orders: a list of order bodies (dicts as Limio spells them, models, or JSON objects
        in strings), typically an upstream task's result (``XComArg``), or a template rendering to a JSON
        list. Give ``orders`` or ``orders_path``, not both. (templated)
    :param orders_path: a JSON Lines file of orders, one JSON object a line, as an ``ObjectStoragePath`` URI
        (``file:///data/renewals.jsonl``, ``s3://aws_conn@bucket/renewals.jsonl.gz``); gzip if its name ends
        with ``.gz``. Blank lines are skipped; results name orders by line number. (templated)
    :param results_path: where the results go, as an ``ObjectStoragePath`` URI (overwritten by each try; a
        dry run's go next to it, as ``<name>.dry-run.jsonl``). Default with ``orders_path``: next to it, as
        ``<name>.results.jsonl``; required with ``orders``. Never the orders file, however spelt. (templated)
    :param on_invalid: ``"fail"`` (default) refuses the whole batch before sending anything if any order is
        invalid, naming each by line number (or list index) and field; ``"skip"`` sends the valid ones and
        counts the invalid ones as not submitted.
    :param max_in_flight: requests to Limio in flight at once, 1 to 64. Default 8.
    :param max_orders_per_second: at most this many submits (previews, with ``dry_run``) per second across
        the batch; default: no limit beyond ``max_in_flight``.
    :param max_failed: how many orders may end refused, unknown, failed or invalid before the task fails (at
        the end, with the summary in its error). Default 0.
    :param max_orders: the budget's number of orders: with it, every order is previewed before the first
        submit (a preview pass), and if more than ``max_orders`` would be sent (orders the ledger holds
        already are not counted), nothing is sent and the task fails saying by how much. A per-run value can
        come from a template (``"{{ params.max_orders }}"``). (templated)
    :param max_total_due: the budget's total due (the previews' ``total_due``, summed, in the tenant's
        currency), checked as ``max_orders`` is. (templated)
    :param confirm_production: send a batch of more than ``max_unconfirmed_orders`` valid orders through a
        production connection (its ``environment`` extra says ``production``, or says nothing). (templated)
    :param max_unconfirmed_orders: the most valid orders a batch sends to production without
        ``confirm_production``. Default 1000.
    :param approval: ask a person before sending (Airflow 3.1+): a :class:`~limio_provider.approval.LimioApproval`
        naming when to ask and for how long; the preview pass's summary is what they approve. See the docs'
        "Guard rails".
    :param partner: submit every order with management credentials on behalf of this partner
        (``POST /admin/order``, sent as ``forPartner``): an id or an object; an order carrying its own
        ``forPartner`` is refused as invalid. Default: ``POST /order``. (templated)
    :param progress_interval: seconds between two progress lines in the log (done/total, orders/s, ETA,
        failures so far).
    :param preview_check: preview each order first and submit it only if this callable accepts the
        :class:`~limio_provider.models.results.PreviewResult`: it returns True to submit, False or a string
        giving the reason to refuse (the order's outcome is then ``refused``).
    :param on_preview_reject: accepted as by the single-order submit, without effect: in a batch an order
        whose preview ``preview_check`` refuses is ``refused``, and the batch goes on.
    :param dry_run: preview each order (and apply ``preview_check``), send nothing; results say
        ``dry_run``, or ``already_sent`` with the order id where the ledger holds the order. The ledger is read,
        never written. (templated, as the attribute ``preview_only``)
    :param on_unknown_outcome: when Limio may have received an order but it cannot be found by
        ``external_id`` within the reconcile budget: ``"fail"`` (default) makes its outcome ``unknown``;
        ``"resubmit"`` submits it again.
    :param reconcile_pages: how many pages of the newest orders to search by ``external_id``.
    :param reconcile_page_size: orders per page when searching.
    :param allow_failed_order: count an order Limio answers as failed as ``submitted`` (or ``adopted``)
        rather than ``failed``.
    :param ledger_path: the order ledger's root (an ``ObjectStoragePath`` URI such as
        ``file:///data/ledger`` or ``s3://aws_conn@bucket/ledger``), overriding the connection's
        ``ledger_path`` extra; one of them is required. (templated)
    :param ledger_wait_timeout: seconds to wait for another task instance that holds the ledger's claim on
        one of the orders to finish, before that order's outcome is ``unknown``.
    :param orders_asset: the asset this task updates when it succeeds, with a small extra (see the docs'
        "Chaining and reconciling"): ``True`` (default) the tenant's ``limio://<tenant>/orders``, a URI or an
        ``Asset`` instead, ``False`` none.
    :param limio_conn_id: the Limio connection. (templated)
    :param hook_params: keyword arguments for :class:`~limio_provider.hooks.limio.LimioHook`, e.g.
        ``{"timeout": 60, "retry_limit": 2}``.
    :param allow_unmodelled: send an ``order_type`` this provider does not model yet (only the common fields
        are checked).
    """

    quiet_orders = True  # its results file says what became of each order
    default_map_index_template = None  # many orders: the DAG names a mapped batch (e.g. by its orders_path)

    template_fields: Sequence[str] = (
        "orders",
        "orders_path",
        "results_path",
        "limio_conn_id",
        "preview_only",
        "ledger_path",
        "partner",
        "max_orders",
        "max_total_due",
        "confirm_production",
    )
    template_fields_renderers = {"orders": "json"}
    operator_extra_links: tuple[BaseOperatorLink, ...] = (LimioResultsFileLink(),)

    def __init__(
        self,
        *,
        orders: Any = None,
        orders_path: str | None = None,
        results_path: str | None = None,
        on_invalid: Literal["fail", "skip"] = "fail",
        max_in_flight: int = 8,
        max_orders_per_second: float | None = None,
        max_failed: int = 0,
        max_orders: int | str | None = None,
        max_total_due: Decimal | float | str | None = None,
        approval: LimioApproval | None = None,
        confirm_production: bool | str = False,
        max_unconfirmed_orders: int = 1000,
        partner: str | dict[str, Any] | None = None,
        progress_interval: float = 5.0,
        preview_check: PreviewCheck | None = None,
        dry_run: bool | str = False,
        **kwargs: Any,
    ) -> None:
        for name, instead in _NOT_FOR_A_BATCH.items():
            if name in kwargs:
                raise ValueError(f"LimioSubmitOrdersOperator does not take {name}: {instead}")
        super().__init__(order=None, preview_check=preview_check, dry_run=dry_run, **kwargs)
        if self.on_unknown_outcome == "ask":
            raise ValueError(
                "LimioSubmitOrdersOperator does not take on_unknown_outcome='ask': a batch's unknown orders are "
                "rows of its results file; decide them with python -m limio_provider.decide, then clear the task"
            )
        if (orders is None) == (orders_path is None):
            raise ValueError("give the orders as orders= (a list) or orders_path= (a JSON Lines file), not both")
        if orders is not None and results_path is None:
            raise ValueError("results_path is required with orders= (with orders_path= it defaults to next to it)")
        if on_invalid not in ("fail", "skip"):
            raise ValueError(f"on_invalid must be 'fail' or 'skip', got {on_invalid!r}")
        if not isinstance(max_in_flight, int) or isinstance(max_in_flight, bool) or not 1 <= max_in_flight <= 64:
            raise ValueError(f"max_in_flight must be an integer from 1 to 64, got {max_in_flight!r}")
        if max_orders_per_second is not None and not (
            isinstance(max_orders_per_second, int | float) and max_orders_per_second > 0
        ):
            raise ValueError(f"max_orders_per_second must be a positive number, got {max_orders_per_second!r}")
        if not isinstance(max_failed, int) or isinstance(max_failed, bool) or max_failed < 0:
            raise ValueError(f"max_failed must be an integer >= 0, got {max_failed!r}")
        if not progress_interval > 0:
            raise ValueError(f"progress_interval must be positive, got {progress_interval!r}")
        self.orders = orders
        self.orders_path = orders_path
        self.results_path = results_path
        self.on_invalid = on_invalid
        self.max_in_flight = max_in_flight
        self.max_orders_per_second = max_orders_per_second
        self.max_failed = max_failed
        self.max_orders = max_orders
        self.max_total_due = max_total_due
        if not (isinstance(max_orders, str) and "{" in max_orders):
            _budget_orders(max_orders)  # a template is checked once rendered
        if not (isinstance(max_total_due, str) and "{" in max_total_due):
            _budget_due(max_total_due)
        self.approval = approval
        if not isinstance(max_unconfirmed_orders, int) or max_unconfirmed_orders < 0:
            raise ValueError(f"max_unconfirmed_orders must be a whole number >= 0, got {max_unconfirmed_orders!r}")
        self.confirm_production = confirm_production
        self.max_unconfirmed_orders = max_unconfirmed_orders
        self._approved: dict[str, Any] | None = None  # set when a person's approval resumes the task
        self.partner = partner
        self.progress_interval = progress_interval
        #: This try's results file, as a browser shows it (:class:`LimioResultsFileLink` reads it).
        self.limio_results_url: str | None = None

    @cached_property
    def _rate(self) -> AdaptiveRate:
        from limio_provider.hooks.rate import AdaptiveRate

        return AdaptiveRate(self.max_orders_per_second)

    @cached_property
    def hook(self) -> LimioHook:
        """One hook for the whole batch: one token, a pool of ``max_in_flight`` connections, and the batch's
        request rate (:class:`~limio_provider.hooks.rate.AdaptiveRate`)."""
        from limio_provider.hooks.limio import LimioHook

        return LimioHook(
            self.limio_conn_id,
            pool_size=self.max_in_flight,
            max_in_flight=self.max_in_flight,
            rate=self._rate,
            **self.hook_params,
        )

    # -- what differs from the single-order submit: partner orders ------------------------------------------

    def _body_of(self, order: Any) -> dict[str, Any]:
        body = super()._body_of(order)
        return body if self.partner is None else _admin_body(body, self.partner)

    def _post(self, body: dict[str, Any]) -> Any:
        return self.hook.send_order(body, admin=self.partner is not None)

    # -- execute -------------------------------------------------------------------------------------------

    @keeps_failure
    def execute(self, context: Context) -> dict[str, Any]:
        from limio_provider.exactly_once.ledger import Owner
        from limio_provider.exactly_once.submitter import NotRecorded
        from limio_provider.exceptions import LimioBatchFailedError, LimioClaimLostError

        started = time.monotonic()
        self.limio_results_url = None  # a runner may reuse the operator for the next try
        self._start_try()
        dry_run = _as_bool("dry_run", self.preview_only)
        budget = _budget_orders(self.max_orders), _budget_due(self.max_total_due)  # rendered: checked again
        ledger = self._ledger()
        results_uri, results_file = self._results_uri(dry_run)
        self._link_results(context, results_uri)

        # 1. Validation pass: every order, before the first request.
        total = self._validation_pass(context, dry_run, results_uri)

        # 2. Sending pass.
        counts = dict.fromkeys(OUTCOMES, 0)
        external_ids = ExternalIdsDigest()  # of every order with an id, whatever its outcome (OpenLineage)
        first_failures: list[dict[str, Any]] = []
        not_recorded: list[str] = []  # order ids Limio holds whose recording failed
        self._batch_lock = threading.Lock()
        self._preflight_lock, self._preflight_done = threading.Lock(), False
        self._batch_in_flight: dict[str, threading.Event] = {}
        self._batch_stopped: str | None = None
        self._file_changed: str | None = None
        # This try holds the task instance: a later try (Airflow thought this one dead) says so in the ledger,
        # and this one, should it resume, stops and leaves the results file to it.
        owner, token = Owner.of(context), os.urandom(16).hex()
        # Each order through the protocol, paced (a task killed while waiting for its turn sent nothing).
        self._not_recorded = None if dry_run else NotRecorded(context)
        self._orders = self._submitter(
            ledger,
            pace=self._paced,
            superseded=lambda: self._superseded(),
            not_recorded=self._not_recorded,
        )
        self._superseded: Callable[[], str | None] = lambda: None
        if not dry_run:  # a dry run writes nothing to the ledger, and has no budget or approval
            self._guard(context, total, started, *budget)  # before the first submit
            ledger.hold_task_instance(owner, token)
            self._superseded = lambda: _superseded(ledger.task_instance_holder(owner), token)
        with self._results_file(results_file, token) as results:
            # Written a few hundred lines at a time.
            lines: list[str] = []

            def record(row: dict[str, Any]) -> None:
                lines.append(json.dumps(row, default=str))
                if len(lines) >= RESULTS_CHUNK:
                    write_lines()
                counts[row["outcome"]] += 1
                external_ids.add(row.get("external_id"))
                if row["outcome"] in ("submitted", "adopted") and row.get("error"):
                    not_recorded.append(str(row["order_id"]))
                if row["outcome"] in FAILURES and len(first_failures) < 3:
                    first_failures.append(
                        {
                            "external_id": None if row.get("external_id") is None else str(row["external_id"])[:64],
                            "outcome": row["outcome"],
                            "error": str(row.get("error"))[:160],
                        }
                    )

            def write_lines() -> None:
                if lines:
                    results.write(("\n".join(lines) + "\n").encode())  # a retry rewrites the whole file
                    lines.clear()

            try:
                self._send_all(context, total, dry_run, record, counts, started)
            finally:
                write_lines()
                self.hook.close()
        if superseded := self._superseded():
            raise LimioClaimLostError(
                f"this try of the batch was {superseded}: it sent nothing more once it knew, and leaves "
                f"{results_uri} to that try",
                external_id=None,
            )

        duration = time.monotonic() - started
        done = sum(counts.values())
        failures = sum(counts[outcome] for outcome in FAILURES)
        summary: dict[str, Any] = {
            "total": done,
            "counts": counts,
            "failures": failures,
            "max_failed": self.max_failed,
            "results_path": results_uri,
            "duration_seconds": round(duration, 3),
            "orders_per_second": round(done / duration, 2) if duration > 0 else None,
            "dry_run": dry_run,
            "first_failures": first_failures,
        }
        if self._rate.limited:  # Limio said too fast (429) or not now (503): what the batch learnt
            summary["rate"] = self._rate.summary()
        if self._batch_stopped:
            summary["stopped"] = self._batch_stopped[:300]
        if not_recorded:
            summary["not_recorded"] = len(not_recorded)
        summary = _small(summary)
        self.log.info("Batch done: %s", json.dumps(summary))
        self._emit_batch_event(context, counts, results_uri, dry_run, external_ids)
        if self._file_changed:
            context["ti"].xcom_push(key="return_value", value=summary)
            raise LimioBatchFailedError(
                f"the orders file {self.orders_path} changed after it was validated ({self._file_changed}): no "
                f"order was sent past that point; what was is in {results_uri}. Fix the file, or let it be, and "
                "run the task again: the ledger keeps what was sent from being sent twice",
                summary=summary,
            )
        if not_recorded:  # created, but the ledger does not say so: the retry writes it (and sends nothing)
            context["ti"].xcom_push(key="return_value", value=summary)
            raise LimioBatchFailedError(
                f"Limio holds {len(not_recorded)} orders of this batch whose recording failed (e.g. "
                f"{', '.join(not_recorded[:3])}; their rows in {results_uri} say submitted, with the error): a "
                "retry of this task records them and sends none of them again",
                summary=summary,
            )
        if failures > self.max_failed:
            context["ti"].xcom_push(key="return_value", value=summary)
            shown = ", ".join(f"{outcome} {counts[outcome]}" for outcome in FAILURES if counts[outcome])
            raise LimioBatchFailedError(
                f"{failures} of {done} orders were not submitted ({shown}), more than max_failed="
                f"{self.max_failed}; every order's outcome is in {results_uri}. Summary: {json.dumps(summary)}",
                summary=summary,
            )
        return summary

    def _guard(
        self, context: Context, total: int, started: float, max_orders: int | None, max_due: Decimal | None
    ) -> None:
        """The guard rails before the first submit: the ledger's preflight, then (with a budget or an approval)
        a preview pass, the budget, and a person's approval (which parks the task until they answer). Nothing
        is sent unless every one of them passes."""
        assert self._orders.ledger is not None
        self._orders.ledger.preflight()  # no Limio call: a batch the ledger answers whole calls Limio for nothing
        if max_orders is None and max_due is None and self.approval is None:
            return
        if self.approval is not None:
            from limio_provider.approval import check_approved, require_hitl

            require_hitl()  # before the preview pass
            approved = self._approved or self._approved_before(context)
            if approved is not None:
                answer = check_approved(approved, self._orders_digest, "the orders")
                self.log.info("Sending the orders %s (orders digest %s)", answer, self._orders_digest)
                return
        self._preflight()  # before a person is asked to approve what could not be sent
        self.log.info("Preview pass: previewing the %d orders before the first submit (budget, approval)", total)
        tally = self._preview_pass(context, total, started)
        preview = tally.as_dict()
        context["ti"].xcom_push(key="preview", value={**preview, "run_id": context.get("run_id")})
        self.log.info("Preview pass done: %s", json.dumps(preview))
        _check_budget(tally, preview, max_orders, max_due)
        if self.approval is None:
            return
        if tally.orders == 0 or not self.approval.asks(tally.orders, tally.total_due):
            self.log.info(
                "No approval asked: %d orders, total due %s, under the approval's thresholds",
                tally.orders,
                tally.total_due,
            )
            return
        from limio_provider.approval import ask

        subject = f"Send {tally.orders} Limio orders, total due {tally.total_due}?"
        body = self._approval_body(context, preview)
        ask(
            self,
            context,
            self.approval,
            subject=subject,
            body=body,
            method_name="execute_approved",
            kwargs={"digest": self._orders_digest},
        )

    def _approved_before(self, context: Context) -> dict[str, Any] | None:
        """The approval an earlier try of this task instance was given for these same orders (Airflow 3.3's
        ``task_state_store``), if any."""
        store = context.get("task_state_store")
        kept = store.get(APPROVAL_KEY) if store is not None else None
        return kept if isinstance(kept, dict) and kept.get("digest") == self._orders_digest else None

    def execute_approved(self, context: Context, event: dict[str, Any], digest: str) -> dict[str, Any]:
        """Resumed once a person answered the approval request (or its timeout passed): send the orders if
        approved and still the ones approved; else fail, having sent nothing."""
        from limio_provider.approval import answer_of
        from limio_provider.exceptions import LimioApprovalError

        assert self.approval is not None
        approved, words = answer_of(event, self.approval)
        if not approved:
            raise LimioApprovalError(f"the batch was {words}: nothing was sent")
        self._approved = {"digest": digest, "answer": words}
        store = context.get("task_state_store")
        if store is not None:  # a retry of this task instance sends these orders without asking again
            store.set(APPROVAL_KEY, self._approved)
        return self.execute(context)

    def _approval_body(self, context: Context, preview: dict[str, Any]) -> str:
        """The approval request's Markdown: what the preview pass found, and how it compares with the last run."""
        endpoint = "POST /admin/order" if self.partner is not None else "POST /order"
        rows = [
            ("Orders to send", str(preview["orders"])),
            ("Total due", preview["total_due"]),
            ("Sent before (adopted, not charged again)", str(preview["already_sent"])),
            ("Refused by their preview (not sent)", str(preview["refused"])),
            ("Invalid (not sent)", str(preview["invalid"])),
        ]
        lines = [
            f"**{preview['orders']} orders** through `{endpoint}` (connection `{self.limio_conn_id}`), "
            f"**total due {preview['total_due']}**.",
            "",
            "| | |",
            "|---|---|",
            *(f"| {name} | {value} |" for name, value in rows),
            "",
        ]
        if preview["largest"]:
            lines += ["Largest charges:", "", "| external_id | total due |", "|---|---|"]
            lines += [f"| `{row['external_id']}` | {row['total_due']} |" for row in preview["largest"]]
            lines.append("")
        lines.append(self._change_from_last_run(context, preview))
        source = self.orders_path if self.orders_path is not None else "orders= (a list)"
        lines += [
            "",
            f"Orders: `{source}` (digest `{self._orders_digest}`). Approving sends these orders and no others: "
            "if they change before the task resumes, nothing is sent. Rejecting, or no answer within "
            f"{self.approval.timeout if self.approval else ''}, sends nothing.",
        ]
        return "\n".join(lines)

    def _change_from_last_run(self, context: Context, preview: dict[str, Any]) -> str:
        """How this preview compares with the last earlier run's of this task, where one exists."""
        ti = context["ti"]
        try:
            last = ti.xcom_pull(task_ids=ti.task_id, key="preview", include_prior_dates=True)
        except Exception as exc:  # an XCom backend that cannot look back: say so rather than fail the batch
            return f"No comparison with the last run ({type(exc).__name__})."
        earlier = [
            value
            for value in (last if isinstance(last, list) else [last])
            if isinstance(value, dict) and "orders" in value and value.get("run_id") != context.get("run_id")
        ]
        if not earlier:
            return "No earlier run of this task to compare with."
        last = earlier[-1]  # oldest first
        then_orders, then_due = int(last["orders"]), Decimal(str(last["total_due"]))
        change = Decimal(preview["total_due"]) - then_due
        share = f" ({100 * change / then_due:+.1f} %)" if then_due else ""
        return (
            f"Change from the last run (`{last.get('run_id')}`: {then_orders} orders, total due {then_due}): "
            f"{preview['orders'] - then_orders:+d} orders, total due {change:+}{share}."
        )

    def _check_production(self) -> None:
        """A batch of more than ``max_unconfirmed_orders`` valid orders through a production connection (or one
        that does not say) needs ``confirm_production``: checked before any request.

        :raises LimioConfigError: it is not confirmed; nothing was sent.
        """
        from limio_provider.exceptions import LimioConfigError

        environment = self.hook.settings.options.environment
        if environment == "sandbox" or self._valid <= self.max_unconfirmed_orders:
            return
        if _as_bool("confirm_production", self.confirm_production):
            self.log.info("Production batch of %d orders: confirmed (confirm_production)", self._valid)
            return
        said = "is production" if environment == "production" else "does not say sandbox or production"
        raise LimioConfigError(
            f"connection {self.limio_conn_id!r} {said} (its environment extra), and this batch has {self._valid} "
            f"valid orders, more than max_unconfirmed_orders={self.max_unconfirmed_orders}: nothing was sent. "
            "Set confirm_production=True (e.g. from the run's conf) to send it, or mark a test tenant's "
            'connection {"environment": "sandbox"}'
        )

    def _paced(self) -> None:
        """An order's turn to be sent: the preflight first (once), then the batch's rate."""
        self._preflight()
        self._rate.turn()

    def _preflight(self) -> None:
        """Once per try, right before the first order is sent (or previewed for a budget or an approval): the
        token works and a partner batch's management credentials read Limio (the ledger's atomic create was
        proven before the first order). A batch that sends nothing (a re-run the ledger answers) calls Limio
        for nothing.

        :raises LimioConfigError: one of them does not; nothing was sent.
        """
        from limio_provider.exceptions import LimioConfigError, LimioError

        with self._preflight_lock:
            if self._preflight_done:
                return
            try:
                self.hook.get_token()
                if self.partner is not None:  # Limio documents no harmless /admin call: a read with its token
                    next(self.hook.list_orders(page_size=1, max_pages=1), None)
            except LimioError as exc:
                raise LimioConfigError(f"preflight: {exc}; nothing was sent") from exc
            self._preflight_done = True
            self.log.info(
                "Preflight passed: token issued%s, the ledger creates atomically; connection %r is %s",
                ", management credentials read Limio" if self.partner is not None else "",
                self.limio_conn_id,
                self.hook.settings.options.environment or "not marked (production)",
            )

    def _preview_pass(self, context: Context, total: int, started: float) -> _PreviewTally:
        """Preview every order this run would send (those the ledger holds are not), as a dry run does, and
        tally what they come to.

        :raises LimioError: an order could not be previewed (what the batch comes to is not known), or the
            orders file changed meanwhile: nothing was sent.
        """
        from limio_provider.exceptions import LimioError

        tally = _PreviewTally()
        counts = dict.fromkeys(OUTCOMES, 0)

        def record(row: dict[str, Any]) -> None:
            counts[row["outcome"]] += 1
            tally.add(row)

        self._send_all(context, total, True, record, counts, started)
        stopped, self._batch_stopped = self._batch_stopped, None
        self._previewed_due = None  # the sending pass's preview_check counts its own
        if self._file_changed:
            raise LimioError(
                f"the orders file {self.orders_path} changed during the preview pass ({self._file_changed}): "
                "nothing was sent"
            )
        if stopped or tally.failed:
            why = f" (the pass stopped: {stopped})" if stopped else ""
            raise LimioError(
                f"the preview pass could not preview {tally.failed} of {total} orders{why}: what the batch comes "
                "to is not known, so nothing was sent"
            )
        return tally

    def _ledger(self) -> OrderLedger:
        """The order ledger the batch requires (a bad connection fails here, before any call)."""
        from limio_provider.exactly_once.ledger import ledger_for
        from limio_provider.exceptions import LimioConfigError

        ledger = ledger_for(self.hook.settings, self.ledger_path)
        if ledger is None:
            raise LimioConfigError(
                "LimioSubmitOrdersOperator needs an order ledger, which remembers every order sent so that a "
                "retried or re-run batch never sends one twice: set the Limio connection's ledger_path extra "
                '(e.g. {"ledger_path": "s3://aws_default@bucket/limio-ledger"}) or the operator\'s ledger_path '
                "argument (file:///var/lib/limio-ledger on a single machine)"
            )
        return ledger

    @contextmanager
    def _results_file(self, results_file: ObjectStoragePath, token: str) -> Iterator[Any]:
        """This try's results file, open for writing. Each try writes a file of its own: on a local disk it is
        renamed into place at once (progress shows there; a superseded try writes on in a file no longer
        named), on an object store moved there at the end, unless a later try holds the task instance."""
        from fsspec.implementations.local import LocalFileSystem

        from limio_provider.exactly_once.ledger import make_folder

        fs = results_file.fs
        local = isinstance(fs, LocalFileSystem)
        partial = f"{results_file.path}.{token}.partial"
        make_folder(results_file.parent)
        try:
            with fs.open(partial, "wb") as results:
                if local:
                    os.replace(partial, results_file.path)
                yield results
        finally:
            if not local and self._superseded():
                fs.rm_file(partial)
            elif not local:
                fs.mv(partial, results_file.path)

    def _validation_pass(self, context: Context, dry_run: bool, results_uri: str) -> int:
        """Validate every order before the first request (one line at a time), and say what comes next: the
        number of orders.

        :raises LimioValidationError: an invalid order, with ``on_invalid="fail"``: nothing was sent.
        """
        from limio_provider.exceptions import LimioValidationError

        total = invalid = derived = 0
        problems: list[str] = []
        self._validated = bytearray()  # 8 bytes per line of a file: what the sending pass must read again
        orders = hashlib.sha256()  # of every order as validated: what an approval answers
        for item in self._items(context):
            self._validated += item.digest
            orders.update(item.digest or json.dumps([item.where, item.body, item.error], default=str).encode())
            total += 1
            derived += item.derived
            if item.error is not None:
                invalid += 1
                if len(problems) < MAX_PROBLEMS_SHOWN:
                    problems.append(f"{item.where}: {item.error}")
        self._orders_digest = orders.hexdigest()[:16]
        self._valid = total - invalid
        if not dry_run:
            self._check_production()
        if invalid and self.on_invalid == "fail":
            more = f"\n  ... and {invalid - len(problems)} more" if invalid > len(problems) else ""
            raise LimioValidationError(
                f"{invalid} of {total} orders are invalid; nothing was sent (on_invalid='fail'; "
                "on_invalid='skip' sends the valid ones):\n  " + "\n  ".join(problems) + more
            )
        if derived:
            ti = context["ti"]
            self.log.info(
                "%d orders have no external_id: each gets one derived from dag %s, task %s, %s and the order's "
                "fingerprint",
                derived,
                ti.dag_id,
                ti.task_id,
                work_of(context),
            )
        self.log.info(
            "Validated %d orders (%d invalid%s); %s them, %d at a time, through %s; results to %s",
            total,
            invalid,
            ", skipped" if invalid else "",
            "previewing" if dry_run else "submitting",
            self.max_in_flight,
            "POST /order/preview" if dry_run else "POST /admin/order" if self.partner is not None else "POST /order",
            results_uri,
        )

        return total

    def on_kill(self) -> None:
        """Start no more orders; those in flight end and are recorded."""
        self._batch_stopped = "the task was killed"

    def _emit_batch_event(
        self, context: Context, counts: dict[str, int], results_uri: str, dry_run: bool, digest: ExternalIdsDigest
    ) -> None:
        """The orders asset's event for this batch (none for a dry run): how many orders, by outcome, and where
        their results are. Airflow records it only if the task succeeds."""
        extra = {
            "orders": sum(counts.values()),
            "counts": {outcome: n for outcome, n in counts.items() if n},
            "results_path": results_uri[:500],
        }
        if dry_run:
            self._record_lineage(extra, digest)
        else:
            self._emit_orders_event(context, extra, digest)

    def _lineage_inputs(self) -> list[Any]:
        """The task's inlets and its orders file."""
        from limio_provider.lineage import file_dataset

        inputs = super()._lineage_inputs()
        return inputs if self.orders_path is None else [*inputs, file_dataset(str(self.orders_path))]

    def _link_results(self, context: Context, results_uri: str) -> None:
        """Give this try's task instance its "Limio results file" link, where a browser can show the file."""
        self.limio_results_url = browser_url(results_uri)
        LimioResultsFileLink.persist(context, url=self.limio_results_url)

    def _results_uri(self, dry_run: bool) -> tuple[str, ObjectStoragePath]:
        from limio_provider.exceptions import LimioConfigError

        # (__init__ requires results_path with orders=)
        uri = str(self.results_path) if self.results_path is not None else default_results_path(str(self.orders_path))
        if dry_run:  # a rehearsal never overwrites what a real run wrote
            uri = dry_run_path(uri)
        from limio_provider.exactly_once.ledger import storage_path

        results = storage_path("results_path", uri)  # usable (scheme, filesystem) before any call
        if self.orders_path is not None and _same_file(results, storage_path("orders_path", self.orders_path)):
            raise LimioConfigError(
                f"results_path {uri} is the orders file {self.orders_path} (the same file, spelt another way): "
                "writing the results there would destroy the orders; give the results another path"
            )
        return uri, results

    def _items(self, context: Context) -> Iterator[_Item]:
        """Each order of the batch, read afresh and prepared for sending (no network call)."""
        from limio_provider.exactly_once.ledger import storage_path

        if self.orders_path is not None:
            uri = str(self.orders_path)
            for number, text, error in _file_lines(storage_path("orders_path", self.orders_path), uri):
                item = self._line_item(number, text, error, context)
                item.digest = hashlib.blake2b(f"{number}\n{text or error}".encode(), digest_size=8).digest()
                yield item
        else:
            for index, order in enumerate(_as_list(self.orders)):
                yield self._prepared_item({"index": index}, f"orders[{index}]", order, context)

    def _line_item(self, number: int, text: str | None, error: str | None, context: Context) -> _Item:
        position, where = {"line": number}, f"line {number}"
        if error is not None:
            return _Item(position, where, None, None, error)
        try:
            order = json.loads(text)  # type: ignore[arg-type]
        except (ValueError, RecursionError) as exc:
            return _Item(position, where, None, None, f"not a JSON object: {exc}")
        return self._prepared_item(position, where, order, context)

    def _prepared_item(self, position: dict[str, int], where: str, order: Any, context: Context) -> _Item:
        given = order.get("external_id") if isinstance(order, dict) else None
        given = given if isinstance(given, str) else None
        try:
            body = self._prepared_body(order, context, log=False)
        except ValueError as exc:  # LimioValidationError, naming each bad field
            return _Item(position, where, None, given, _one_line(str(exc)))
        return _Item(position, where, body, body["external_id"], None, derived=given is None)

    def _send_all(
        self,
        context: Context,
        total: int,
        dry_run: bool,
        record: Any,
        counts: dict[str, int],
        started: float,
    ) -> None:
        """Send (or preview) every valid order, ``max_in_flight`` at a time; ``record`` each result as it ends."""
        import queue
        from concurrent.futures import Future, ThreadPoolExecutor

        # The ledger is each order's record: the task's one task_state_store key is not for thousands of orders.
        order_context = cast("Context", {k: v for k, v in context.items() if k != "task_state_store"})
        pending: set[Future[dict[str, Any]]] = set()
        finished: queue.SimpleQueue[Future[dict[str, Any]]] = queue.SimpleQueue()  # in the order they end
        next_log = time.monotonic() + self.progress_interval
        next_holder_check = time.monotonic() + 1.0

        def drain(until: int) -> None:
            nonlocal next_log
            while len(pending) > until:
                try:
                    future = finished.get(timeout=max(0.0, next_log - time.monotonic()))
                    pending.discard(future)
                    record(future.result())
                except queue.Empty:
                    pass
                if time.monotonic() >= next_log:
                    self._log_progress(counts, total, started)
                    next_log = time.monotonic() + self.progress_interval

        # Twice as many orders as requests in flight: one order's ledger writes overlap another's request.
        workers = 2 * self.max_in_flight
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="limio-batch")
        read = 0
        try:
            for item in self._items(context):
                self._check_as_validated(item, read)
                read += 1
                if item.body is None:
                    record(self._row(item, "invalid", error=item.error))
                    continue
                if time.monotonic() >= next_holder_check and not self._batch_stopped:
                    next_holder_check = time.monotonic() + 1.0
                    if superseded := self._superseded():
                        self._stop(superseded)
                if self._batch_stopped:
                    record(self._row(item, "failed", error=f"not sent: the batch stopped: {self._batch_stopped}"))
                    continue
                drain(workers - 1)
                future = pool.submit(self._run_one, item, order_context, dry_run)
                pending.add(future)
                future.add_done_callback(finished.put)
            drain(0)
            if 8 * read < len(self._validated):
                self._file_changed = f"it has {read} orders now; {len(self._validated) // 8} were validated"
                self._stop(f"the orders file changed after it was validated: {self._file_changed}")
        except BaseException as exc:  # killed, timed out: start nothing more; what is in flight ends and is recorded
            self._batch_stopped = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            for future in pending:
                if future.done() and not future.cancelled():
                    record(future.result())
        self._log_progress(counts, total, started)

    def _check_as_validated(self, item: _Item, index: int) -> None:
        """Stop the batch if ``item`` (the ``index``-th read) is not the line the validation pass read there: the
        orders file changed in between (rewritten, truncated, replaced); nothing past that point is sent."""
        if not item.digest or self._file_changed:
            return
        validated = self._validated[8 * index : 8 * index + 8]
        if item.digest != validated:
            self._file_changed = (
                f"{item.where} is not the line validated" if validated else f"{item.where} was not there"
            )
            self._stop(f"the orders file changed after it was validated: {self._file_changed}")

    def _log_progress(self, counts: dict[str, int], total: int, started: float) -> None:
        done = sum(counts.values())
        elapsed = time.monotonic() - started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = f"{(total - done) / rate:.0f} s" if rate > 0 and total > done else "-"
        failed = {outcome: counts[outcome] for outcome in FAILURES if counts[outcome]}
        self.log.info(
            "Progress: %d/%d orders done (%.1f orders/s, ETA %s); not submitted so far: %d%s",
            done,
            total,
            rate,
            eta,
            sum(failed.values()),
            f" ({', '.join(f'{k} {v}' for k, v in failed.items())})" if failed else "",
        )

    @staticmethod
    def _row(item: _Item, outcome: str, **fields: Any) -> dict[str, Any]:
        return {
            **item.position,
            "external_id": item.external_id,
            "outcome": outcome,
            "order_id": None,
            "status": None,
            "error": None,
            **fields,
        }

    @contextmanager
    def _exclusive(self, external_id: str) -> Iterator[None]:
        """One order per external_id at a time: a repeat within the batch waits for the first to end."""
        while True:
            with self._batch_lock:
                running = self._batch_in_flight.get(external_id)
                if running is None:
                    self._batch_in_flight[external_id] = threading.Event()
                    break
            running.wait()
        try:
            yield
        finally:
            with self._batch_lock:
                self._batch_in_flight.pop(external_id).set()

    def _run_one(self, item: _Item, context: Context, dry_run: bool) -> dict[str, Any]:
        """One order, start to end, in a worker thread: its result line (never raises)."""
        from limio_provider.exceptions import LimioExternalIdTakenError, LimioOrderNotRecordedError
        from limio_provider.models.results import OrderResult, PreviewResult

        assert item.body is not None and item.external_id is not None
        if self._batch_stopped:
            return self._row(item, "failed", error=f"not sent: the batch stopped: {self._batch_stopped}")
        with self._exclusive(item.external_id):
            self._rate.wait_pause()
            try:
                if dry_run:
                    done = self._sent_before(item.external_id)
                    if done is not None:  # a real run sent it: a real run now would adopt it, not send it
                        return self._row(
                            item,
                            "already_sent",
                            order_id=done["order_id"],
                            status=done["status"],
                            status_at=done["updated_at"],
                        )
                    preview = self._check_preview(item.body)
                    total_due = PreviewResult.model_validate(preview).total_due()
                    return self._row(item, "dry_run", total_due=str(total_due))
                submitted = self._orders.submit_once(item.body, context)
            except LimioExternalIdTakenError as exc:  # not sent, but Limio holds an order of that external_id
                return self._row(item, "failed", order_id=exc.order_id, error=_one_line(str(exc))[:1000])
            except LimioOrderNotRecordedError as exc:  # created: its row says so, with the order's id
                if self._not_recorded is not None:  # and the next try reconnects to it by that id
                    self._not_recorded.add(exc.external_id, exc.order_id)
                outcome = "adopted" if exc.adopted else "submitted"
                return self._row(item, outcome, order_id=exc.order_id, error=_one_line(str(exc))[:1000])
            except Exception as exc:
                outcome, error = self._outcome_of(exc)
                return self._row(item, outcome, error=error)
        order = OrderResult.model_validate(submitted.result)
        # The first outcome for this task instance: "submitted" if it created the order, in any try; what this
        # try did instead, and how old a status read from the ledger is, in fields of their own.
        row = self._row(item, "submitted" if submitted.by_this_task else "adopted", order_id=order.id)
        row["status"] = order.status
        if submitted.adopted and submitted.by_this_task:
            row["this_try"] = "adopted"
        if submitted.status_at is not None:
            row["status_at"] = submitted.status_at
        if order.failed and not self.allow_failed_order:
            reason = order.reason or "no reason given"
            row.update(outcome="failed", error=f"Limio order {order.id} {order.status}: {reason}")
        return row

    def _sent_before(self, external_id: str) -> dict[str, Any] | None:
        """The ledger's record of ``external_id`` if Limio holds its order (``done``), read only: a dry run
        writes nothing to the ledger."""
        ledger = self._orders.ledger
        record = ledger.read(external_id) if ledger is not None else None
        return record if record is not None and record.get("state") == "done" and record.get("order_id") else None

    def _stop(self, why: str) -> None:
        """Start no more orders (those started end, and are recorded)."""
        with self._batch_lock:
            if not self._batch_stopped:
                self._batch_stopped = why
                self.log.error("Stopping the batch: %s", why)

    def _outcome_of(self, exc: Exception) -> tuple[str, str]:
        """The outcome of an order whose submit raised ``exc``, and the error to report."""
        from airflow.providers.common.compat.sdk import AirflowSkipException

        from limio_provider.exceptions import (
            LimioAuthError,
            LimioClaimLostError,
            LimioConfigError,
            LimioError,
            LimioNotFoundError,
            LimioOrderRejectedError,
            LimioOutcomeUnknownError,
            LimioPreviewRejectedError,
            LimioValidationError,
        )

        message = _one_line(str(exc))[:1000]
        if isinstance(exc, LimioOutcomeUnknownError):
            return "unknown", message
        if isinstance(exc, LimioNotFoundError):
            return "failed", message
        refused = AirflowSkipException | LimioPreviewRejectedError | LimioOrderRejectedError | LimioValidationError
        if isinstance(exc, refused):
            return "refused", message
        if isinstance(exc, LimioAuthError) and exc.status == 403:
            return "refused", message
        if isinstance(exc, LimioClaimLostError):  # another try of this task instance runs: it owns the batch
            self._stop(f"{self._superseded() or 'superseded'}: {message}")
            return "failed", message
        if isinstance(exc, LimioAuthError | LimioConfigError):  # every other order would fail alike
            self._stop(message)
            return "failed", message
        if isinstance(exc, LimioError):
            return "failed", message
        # Not one of the provider's errors (a ledger write failing...): whether it was sent is not proven.
        return "unknown", f"{type(exc).__name__}: {message}"


def _superseded(holder: dict[str, Any], token: str) -> str | None:
    """Why this try (``token``) no longer runs its task instance, if a later try holds it (``holder``)."""
    if holder.get("token") in (None, token):
        return None
    return (
        f"superseded by try {holder.get('try_number')} of this task instance (on {holder.get('host')}, pid "
        f"{holder.get('pid')}, since {holder.get('since')})"
    )


def _small(summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` within :data:`MAX_SUMMARY_BYTES` of JSON: the first failures are dropped if need be."""
    while len(json.dumps(summary, default=str)) > MAX_SUMMARY_BYTES and summary["first_failures"]:
        summary = {**summary, "first_failures": summary["first_failures"][:-1]}
    if len(json.dumps(summary, default=str)) > MAX_SUMMARY_BYTES:  # a very long results_path
        summary = {**summary, "results_path": summary["results_path"][:500]}
    return summary
