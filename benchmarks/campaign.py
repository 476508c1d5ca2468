"""A fault campaign: many orders through the submit operator's logic against the emulator, with faults.

A developer tool, not part of the shipped package: ``benchmarks/fault_campaign.py`` runs the full campaign and
``tests/testing/test_campaign.py`` a smaller one. It calls the operator's ``execute()`` the way Airflow's task
runner does (which needs Airflow's ``ExecutorSafeguard`` sentinel): a fresh operator per try, the same
``task_state_store`` across tries, and up to ``retries`` retries when a try raises. The operator runs with its
default ``on_unknown_outcome`` ("fail"). About ``fault_share`` of the orders get one injected fault each,
spread evenly over :data:`FAULT_KINDS`; the emulator serves HTTPS, so a TLS fault is a real TLS failure.

At the end every intended order is checked against what the emulator holds. Each must be exactly one of:

- held once: the emulator holds exactly one order for its ``external_id`` and the task's final try returned
  that order's id;
- failed loudly: the task's final try raised a ``LimioError`` naming the ``external_id`` (whether or not an
  order is held; the ``loud, held`` column counts those with an order).

Anything else is a defect: ``duplicates`` (orders held beyond one), ``lost`` (no order held and the task did
not fail loudly) or ``misreported`` (an order is held but the task reported another id, or none without
failing loudly).
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from limio_provider.testing import sample_order
from limio_provider.testing.emulator import LimioEmulator
from limio_provider.testing.faults import Fault

#: Where a redirect fault points: another loopback port (discard), which nothing should ever reach.
REDIRECT_ELSEWHERE = "http://127.0.0.1:9/elsewhere"
#: The 5xx statuses the hook lists nowhere (neither "not processed" nor "refused"), alternated in one kind.
UNLISTED_5XX = (520, 501, 524)

FAULT_KINDS = (
    "429 + Retry-After",
    "503",
    "dropped before processing",
    "processed, then 502",
    "processed, then 520/501/524",
    "processed, then 307 redirect",
    "processed, then no answer",
    "processed, truncated body",
    "processed, undecodable body",
    "processed, garbage 2xx",
    "processed, then reset",
    "processed, then TLS error",
    "processed, answer trickled",
    "processed, head trickled",
    "processed, bad chunked body",
    "processed, gzip bomb",
    "token expired mid-run",
    "credentials revoked, restored",
)

#: Kinds of the single-order campaign only, on the order ledger (a local one, for those orders alone):
#: - "zombie try": try 1 is paused right before its "sent" write (a frozen worker), try 2 runs to the end, then
#:   try 1 resumes: it must send nothing (LimioClaimLostError);
#: - "ledger: sent write fails": the record's "sent" write fails (ENOSPC) in try 1: nothing left; try 2 sends;
#: - "ledger: done write fails": the "done" write fails after Limio created the order: try 1 reports it
#:   created (LimioOrderNotRecordedError), try 2 records it.
LEDGER_KINDS = ("zombie try", "ledger: sent write fails", "ledger: done write fails")

#: The kinds whose order Limio processes before the answer goes wrong: the operator must find its order.
PROCESSED_KINDS = tuple(kind for kind in FAULT_KINDS if kind.startswith("processed"))

#: The Retry-After of the "429 + Retry-After" fault, in seconds.
RETRY_AFTER = 2
#: How long the "processed, then no answer" fault holds the connection before closing it unanswered, in seconds.
HANG_SECONDS = 0.5

#: The hooks' ``max_answer_bytes`` in both campaigns (the "gzip bomb" kind decodes to 16 MiB).
MAX_ANSWER_BYTES = 2**20

#: The columns of a report row, in table order.
COLUMNS = ("intended", "held once", "failed loudly", "loud, held", "duplicates", "lost", "misreported")


@dataclass
class TaskInstanceStub:
    """What the submit operator reads from ``context["ti"]``; XComs pushed by the current try are kept."""

    dag_id: str
    task_id: str
    map_index: int
    try_number: int = 1
    stats_tags: dict[str, str] = field(default_factory=dict)
    xcoms: dict[str, Any] = field(default_factory=dict)

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


class TaskStateStoreStub:
    """The ``task_state_store`` of one task instance: JSON values that survive its retries."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self._values.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self._values[key] = value

    def delete(self, key: str) -> None:
        self._values.pop(key, None)


@dataclass
class Outcome:
    """What happened to one intended order."""

    external_id: str
    kind: str
    reported_id: str | None = None
    error: str | None = None  # the final try's, if it raised
    failed_loudly: bool = False
    tries: int = 0
    errors: list[str] = field(default_factory=list)  # every failed try's, in order
    held_ids: list[str] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)  # the faults armed for this order's own requests
    zombie: str | None = None  # a "zombie try" order: how its frozen try 1 ended once it resumed

    @property
    def held_once(self) -> bool:
        return len(self.held_ids) == 1 and self.reported_id == self.held_ids[0]

    def describe(self) -> str:
        """One line for a defect: what each try did and what the emulator holds."""
        tries = [*self.errors[: self.tries - (self.reported_id is not None)]]
        if self.reported_id is not None:
            tries.append(f"returned order {self.reported_id}")
        return f"{self.external_id} [{self.kind}]: emulator holds {self.held_ids or 'nothing'}; " + "; ".join(
            f"try {n}: {what}" for n, what in enumerate(tries, 1)
        )


@dataclass
class Report:
    """Per fault kind: orders intended, held once, failed loudly, duplicated, lost and misreported."""

    rows: dict[str, Counter[str]]
    orders: int
    seconds: float
    retry_after_sleeps: list[float]
    outcomes: list[Outcome]

    @property
    def totals(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for row in self.rows.values():
            total.update(row)
        return total

    @property
    def unaccounted(self) -> list[Outcome]:
        """Orders that are neither held once nor failed loudly (each counted as lost or misreported)."""
        return [o for o in self.outcomes if not o.held_once and not o.failed_loudly]

    @property
    def unfired(self) -> list[Outcome]:
        """Orders whose armed fault never hit a request (the campaign did not test what it says)."""
        return [o for o in self.outcomes if any(fault.times for fault in o.faults)]

    @property
    def unfenced(self) -> list[Outcome]:
        """ "zombie try" orders whose frozen try, resumed, did anything but fail with LimioClaimLostError."""
        return [o for o in self.outcomes if o.kind == "zombie try" and "LimioClaimLostError" not in (o.zombie or "")]

    @property
    def ok(self) -> bool:
        totals = self.totals
        clean = totals["duplicates"] == totals["lost"] == totals["misreported"] == 0
        return clean and not self.unaccounted and not self.unfenced

    def table(self) -> str:
        width = max(len(kind) for kind in (*self.rows, "total"))
        header = f"{'fault':{width}s} " + " ".join(f"{column:>{max(len(column), 5)}s}" for column in COLUMNS)
        lines = [header, "-" * len(header)]
        for kind, row in [*self.rows.items(), ("total", self.totals)]:
            cells = " ".join(f"{row[column]:{max(len(column), 5)}d}" for column in COLUMNS)
            lines.append(f"{kind:{width}s} {cells}")
        return "\n".join(lines)

    def verdict(self) -> str:
        """Whether every intended order was held once or failed loudly; else one line per order that was not."""
        unaccounted = self.unaccounted
        if not unaccounted:
            return f"every one of the {self.orders} intended orders was held once or failed loudly"
        first = (
            f"{len(unaccounted)} of the {self.orders} intended orders were neither held once nor failed loudly "
            "(counted as lost if no order is held, else misreported):"
        )
        return "\n".join([first, *(f"  {outcome.describe()}" for outcome in unaccounted)])


def tally(row: Counter[str], outcome: Outcome) -> None:
    """Count ``outcome`` (its ``held_ids`` set) in its fault kind's report ``row``."""
    row["intended"] += 1
    row["held once"] += outcome.held_once
    row["failed loudly"] += outcome.failed_loudly
    row["loud, held"] += outcome.failed_loudly and bool(outcome.held_ids)
    row["duplicates"] += max(0, len(outcome.held_ids) - 1)
    if not outcome.held_once and not outcome.failed_loudly:
        row["misreported" if outcome.held_ids else "lost"] += 1


def _inject(
    emulator: LimioEmulator,
    kind: str,
    external_id: str,
    nth: int = 0,
    *,
    retry_after: float = RETRY_AFTER,
    hang: float = HANG_SECONDS,
) -> list[Fault]:
    """Arm the one fault ``kind`` for this order (``nth``: its rank among the orders of that kind); the faults
    aimed at its own requests are returned. ``retry_after`` is the 429's ``Retry-After`` and ``hang`` how long
    "no answer" holds the connection (a batch, which pauses whole for a 429, uses a shorter one)."""

    def on_submit(action: str, **fault: Any) -> list[Fault]:
        return [emulator.add_fault(Fault(route="order", action=action, times=1, external_id=external_id, **fault))]

    if kind == "429 + Retry-After":
        return on_submit("status", status=429, retry_after=retry_after)
    if kind == "503":
        return [emulator.add_fault(Fault(route="order", status=503, times=2, external_id=external_id))]
    if kind == "dropped before processing":
        return on_submit("drop")
    if kind == "processed, then 502":
        return on_submit("process_then_status", status=502)
    if kind == "processed, then 520/501/524":
        return on_submit("process_then_status", status=UNLISTED_5XX[nth % len(UNLISTED_5XX)])
    if kind == "processed, then 307 redirect":
        return on_submit("process_then_status", status=307, location=REDIRECT_ELSEWHERE)
    if kind == "processed, then no answer":
        return on_submit("process_then_hang", latency=hang)
    if kind == "processed, truncated body":
        return on_submit("process_then_truncate")
    if kind == "processed, undecodable body":
        return on_submit("process_then_undecodable")
    if kind == "processed, garbage 2xx":
        return on_submit("process_then_garbage", body={})
    if kind == "processed, then reset":
        return on_submit("process_then_reset")
    if kind == "processed, then TLS error":
        return on_submit("process_then_tls_error")
    if kind == "processed, answer trickled":  # a byte every 50 ms: each read is on time, the answer is not
        return on_submit("process_then_trickle", latency=0.05)
    if kind == "processed, head trickled":  # the status line and headers a byte every 50 ms
        return on_submit("process_then_trickle_head", latency=0.05)
    if kind == "processed, bad chunked body":  # a chunk-size line that is not hex
        return on_submit("process_then_bad_chunked")
    if kind == "processed, gzip bomb":  # a few KB on the wire, 16 MiB decoded: past the hook's MAX_ANSWER_BYTES
        return on_submit("process_then_gzip_bomb", size=16 * 2**20)
    if kind == "token expired mid-run":
        emulator.advance(emulator.token_ttl + 1)  # every token issued so far expires at Limio
        return []
    if kind == "credentials revoked, restored":
        emulator.revoke_tokens()
        emulator.add_fault(Fault(route="token", action="status", status=401, times=2, message="invalid_client"))
        return []
    raise ValueError(f"unknown fault kind {kind!r}")


def _run_task(
    operator_for: Any, outcome: Outcome, index: int, retries: int, store: Any = None, first_try: int = 1
) -> None:
    """Run one task instance, as Airflow would: up to ``retries`` retries when a try raises."""
    from airflow.sdk.bases.operator import ExecutorSafeguard

    from limio_provider.exceptions import LimioError

    store, ti = store or TaskStateStoreStub(), TaskInstanceStub("campaign", "submit", index)
    for try_number in range(first_try, retries + 2):
        ti.try_number, ti.xcoms, outcome.tries = try_number, {}, try_number
        operator = operator_for(outcome.external_id)
        context = {"ti": ti, "run_id": "campaign", "task_state_store": store}
        as_task_runner = {f"{type(operator).__name__}__sentinel": ExecutorSafeguard.sentinel_value}
        try:
            result = operator.execute(context, **as_task_runner)
        except Exception as exc:  # noqa: BLE001 - Airflow fails the try, and retries, on any exception
            outcome.error = f"{type(exc).__name__}: {exc}"
            outcome.errors.append(outcome.error)
            outcome.failed_loudly = isinstance(exc, LimioError) and outcome.external_id in str(exc)
            continue
        outcome.reported_id, outcome.error, outcome.failed_loudly = result.get("id"), None, False
        return


def _run_zombie(operator_for: Any, outcome: Outcome, index: int, retries: int) -> None:
    """Try 1 pauses at its order's turn, right before its "sent" write (a worker frozen there); Airflow, giving
    up on it, runs try 2 (and retries) to the end; then try 1 resumes. Its end is the first of ``errors``."""
    import threading

    from airflow.sdk.bases.operator import ExecutorSafeguard

    store = TaskStateStoreStub()
    paused, resume = threading.Event(), threading.Event()
    first = operator_for(outcome.external_id, own_hook=True)
    submitter = first._submitter  # its order's turn, right before its "sent" write: frozen there until try 2 ends
    first._submitter = lambda ledger, **seams: submitter(ledger, pace=lambda: (paused.set(), resume.wait(60)))
    ended: list[str] = []

    def try_1() -> None:
        ti = TaskInstanceStub("campaign", "submit", index)
        context = {"ti": ti, "run_id": "campaign", "task_state_store": store}
        try:
            result = first.execute(context, **{f"{type(first).__name__}__sentinel": ExecutorSafeguard.sentinel_value})
            ended.append(f"zombie try 1 returned order {result.get('id')}")
        except Exception as exc:  # noqa: BLE001 - what it raised is the finding
            ended.append(f"zombie try 1: {type(exc).__name__}: {exc}")

    thread = threading.Thread(target=try_1)
    thread.start()
    if not paused.wait(60):
        resume.set()
        thread.join()
        outcome.errors.append(f"zombie try 1 never reached its send: {ended}")
        return
    _run_task(operator_for, outcome, index, retries, store=store, first_try=2)
    resume.set()
    thread.join(120)
    outcome.zombie = ended[0] if ended else "zombie try 1 did not end"
    outcome.faults[0].times = 0


def run_campaign(orders: int = 2000, *, fault_share: float = 0.2, retries: int = 3, seed: int = 7) -> Report:
    """Run ``orders`` orders through the submit operator (default ``on_unknown_outcome``) against a fresh HTTPS
    emulator, and check each against what the emulator holds."""
    import errno
    import tempfile
    from types import SimpleNamespace
    from urllib.parse import quote

    from limio_provider.exactly_once import ledger as ledger_module
    from limio_provider.hooks.limio import LimioHook
    from limio_provider.operators.orders import LimioSubmitOrderOperator

    kinds = (*FAULT_KINDS, *LEDGER_KINDS)
    rng = random.Random(seed)
    faulted = rng.sample(range(orders), round(orders * fault_share))
    kind_of = {index: kinds[n % len(kinds)] for n, index in enumerate(faulted)}
    nth_of = {index: n // len(kinds) for n, index in enumerate(faulted)}
    ledger_root = f"file://{tempfile.mkdtemp(prefix='limio-campaign-ledger-')}"
    # A ledger write armed to fail: the record's file name -> (the state whose write fails, its marker).
    failing_writes: dict[str, tuple[str, Any]] = {}
    real_swap = ledger_module._swap

    def swap(fs: Any, path: str, expected: dict[str, Any], data: bytes, *, durable: bool) -> None:
        name = path.rsplit("/", 1)[-1]
        state, marker = failing_writes.get(name, (None, None))
        if state is not None and f'"state": "{state}"'.encode() in data:
            del failing_writes[name]
            marker.times = 0
            raise OSError(errno.ENOSPC, "No space left on device (the campaign's ledger fault)")
        real_swap(fs, path, expected, data, durable=durable)

    outcomes: list[Outcome] = []
    sleeps: list[float] = []
    started = time.perf_counter()
    with LimioEmulator(token_ttl=3600, tls=True) as emulator:
        previous = os.environ.get("AIRFLOW_CONN_LIMIO_CAMPAIGN")
        os.environ["AIRFLOW_CONN_LIMIO_CAMPAIGN"] = emulator.connection_json()  # trusts the emulator's CA
        try:
            # One hook for the whole run, as a long-lived worker would hold one: its token outlives faults.
            hook = LimioHook(
                "limio_campaign", sleep=sleeps.append, timeout=0.25, retry_limit=3, max_answer_bytes=MAX_ANSWER_BYTES
            )

            ledger_ids: set[str] = set()

            def operator_for(external_id: str, own_hook: bool = False) -> LimioSubmitOrderOperator:
                operator = LimioSubmitOrderOperator(
                    task_id="submit",
                    order=sample_order(external_id, process_immediately=True),
                    limio_conn_id="limio_campaign",
                    ledger_path=ledger_root if external_id in ledger_ids else None,
                )
                # A zombie try has its own hook (a worker of its own): its paused send holds its hook's slot.
                operator.__dict__["hook"] = (
                    LimioHook("limio_campaign", timeout=0.25, retry_limit=3, max_answer_bytes=MAX_ANSWER_BYTES)
                    if own_hook
                    else hook
                )
                return operator

            ledger_module._swap = swap
            for index in range(orders):
                outcome = Outcome(f"campaign-{seed}-{index:05d}", kind_of.get(index, "no fault"))
                if outcome.kind in LEDGER_KINDS:
                    ledger_ids.add(outcome.external_id)
                    outcome.faults = [SimpleNamespace(times=1)]  # set to 0 when it fires
                    if outcome.kind != "zombie try":
                        state = "sent" if outcome.kind == "ledger: sent write fails" else "done"
                        failing_writes[quote(outcome.external_id, safe="") + ".json"] = (state, outcome.faults[0])
                    else:
                        _run_zombie(operator_for, outcome, index, retries)
                        outcomes.append(outcome)
                        continue
                elif index in kind_of:
                    outcome.faults = _inject(emulator, outcome.kind, outcome.external_id, nth_of[index])
                _run_task(operator_for, outcome, index, retries)
                outcomes.append(outcome)
            held = emulator.orders
            hook.close()
        finally:
            ledger_module._swap = real_swap
            if previous is None:
                os.environ.pop("AIRFLOW_CONN_LIMIO_CAMPAIGN", None)
            else:
                os.environ["AIRFLOW_CONN_LIMIO_CAMPAIGN"] = previous
    by_external_id: dict[str, list[str]] = {}
    for order in held.values():
        by_external_id.setdefault(order["external_id"], []).append(order["id"])
    rows: dict[str, Counter[str]] = {kind: Counter() for kind in ("no fault", *kinds)}
    for outcome in outcomes:
        outcome.held_ids = by_external_id.get(outcome.external_id, [])
        tally(rows[outcome.kind], outcome)
    retry_after = [s for s in sleeps if s == float(RETRY_AFTER)]
    return Report(rows, orders, time.perf_counter() - started, retry_after, outcomes)
