"""A fault campaign: many orders through the submit operator's logic against the emulator, with faults.

Each order goes through :class:`~limio_provider.operators.orders.LimioSubmitOrderOperator` ``execute()`` the
way Airflow runs it: a fresh operator per try, the same ``task_state_store`` across tries, and up to
``retries`` retries when a try raises. About ``fault_share`` of the orders get one injected fault each, spread
evenly over :data:`FAULT_KINDS`. At the end every order is checked against what the emulator holds: no
duplicates, nothing lost, no task reporting an order other than the one Limio has.

Run the full campaign with ``benchmarks/fault_campaign.py``; the test suite runs a smaller one.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from limio_provider.testing import sample_order
from limio_provider.testing.emulator import LimioEmulator
from limio_provider.testing.faults import Fault

FAULT_KINDS = (
    "429 + Retry-After",
    "503",
    "dropped before processing",
    "processed, then 502",
    "processed, then no answer",
    "token expired mid-run",
    "credentials revoked, restored",
)


@dataclass
class _TaskInstance:
    """What the operator reads from ``context["ti"]``; XComs pushed by the current try are kept."""

    dag_id: str
    task_id: str
    map_index: int
    try_number: int = 1
    stats_tags: dict[str, str] = field(default_factory=dict)
    xcoms: dict[str, Any] = field(default_factory=dict)

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


class _StateStore:
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
    error: str | None = None
    tries: int = 0


@dataclass
class Report:
    """Per fault kind: orders intended, held by the emulator, duplicated, lost and misreported."""

    rows: dict[str, Counter[str]]
    orders: int
    seconds: float
    retry_after_sleeps: list[float]

    @property
    def totals(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for row in self.rows.values():
            total.update(row)
        return total

    def table(self) -> str:
        header = f"{'fault':32s} {'intended':>8s} {'held':>6s} {'duplicates':>10s} {'lost':>5s} {'misreported':>11s}"
        lines = [header, "-" * len(header)]
        for kind, row in [*self.rows.items(), ("total", self.totals)]:
            lines.append(
                f"{kind:32s} {row['intended']:8d} {row['held']:6d} {row['duplicates']:10d} {row['lost']:5d} "
                f"{row['misreported']:11d}"
            )
        return "\n".join(lines)


def _inject(emulator: LimioEmulator, kind: str, external_id: str) -> None:
    """Arm the one fault ``kind`` for the next request of this order."""
    if kind == "429 + Retry-After":
        emulator.add_fault(Fault(route="order", action="status", status=429, retry_after=2, times=1, external_id=external_id))
    elif kind == "503":
        emulator.add_fault(Fault(route="order", action="status", status=503, times=2, external_id=external_id))
    elif kind == "dropped before processing":
        emulator.add_fault(Fault(route="order", action="drop", times=1, external_id=external_id))
    elif kind == "processed, then 502":
        emulator.add_fault(Fault(route="order", action="process_then_status", status=502, times=1, external_id=external_id))
    elif kind == "processed, then no answer":
        emulator.add_fault(Fault(route="order", action="process_then_hang", latency=0.5, times=1, external_id=external_id))
    elif kind == "token expired mid-run":
        emulator.advance(emulator.token_ttl + 1)  # every token issued so far expires at Limio
    elif kind == "credentials revoked, restored":
        emulator.revoke_tokens()
        emulator.add_fault(Fault(route="token", action="status", status=401, times=2, message="invalid_client"))


def run_campaign(orders: int = 2000, *, fault_share: float = 0.2, retries: int = 3, seed: int = 7) -> Report:
    """Run ``orders`` orders through the submit operator against a fresh emulator and check the result.

    Uses ``on_unknown_outcome="resubmit"``: the emulator lists an order as soon as it exists, so "not found
    among the newest orders" after an ambiguous submit proves it was never created (see docs/reliability.md
    for why "fail" is the default against real Limio).
    """
    import os

    from airflow.sdk.bases.operator import ExecutorSafeguard

    from limio_provider.exceptions import LimioError
    from limio_provider.hooks.limio import LimioHook
    from limio_provider.operators.orders import LimioSubmitOrderOperator

    rng = random.Random(seed)
    faulted = rng.sample(range(orders), round(orders * fault_share))
    kind_of = {index: FAULT_KINDS[n % len(FAULT_KINDS)] for n, index in enumerate(faulted)}
    outcomes: list[Outcome] = []
    sleeps: list[float] = []
    started = time.perf_counter()
    with LimioEmulator(token_ttl=3600) as emulator:
        previous = os.environ.get("AIRFLOW_CONN_LIMIO_CAMPAIGN")
        os.environ["AIRFLOW_CONN_LIMIO_CAMPAIGN"] = emulator.connection_json()
        try:
            # One hook for the whole run, as a long-lived worker would hold one: its token outlives faults.
            hook = LimioHook("limio_campaign", sleep=sleeps.append, timeout=0.25, retry_limit=3)
            for index in range(orders):
                external_id = f"campaign-{seed}-{index:05d}"
                outcome = Outcome(external_id, kind_of.get(index, "no fault"))
                if index in kind_of:
                    _inject(emulator, outcome.kind, external_id)
                store, ti = _StateStore(), _TaskInstance("campaign", "submit", index)
                for try_number in range(1, retries + 2):
                    ti.try_number, ti.xcoms, outcome.tries = try_number, {}, try_number
                    operator = LimioSubmitOrderOperator(
                        task_id="submit",
                        order=sample_order(external_id, process_immediately=True),
                        limio_conn_id="limio_campaign",
                        on_unknown_outcome="resubmit",
                    )
                    operator.__dict__["hook"] = hook
                    context = {"ti": ti, "run_id": "campaign", "task_state_store": store}
                    as_task_runner = {f"{type(operator).__name__}__sentinel": ExecutorSafeguard.sentinel_value}
                    try:
                        result = operator.execute(context, **as_task_runner)
                    except LimioError as exc:
                        outcome.error = f"{type(exc).__name__}: {exc}"
                        continue
                    outcome.reported_id, outcome.error = result.get("id"), None
                    break
                outcomes.append(outcome)
            held = emulator.orders
        finally:
            if previous is None:
                os.environ.pop("AIRFLOW_CONN_LIMIO_CAMPAIGN", None)
            else:
                os.environ["AIRFLOW_CONN_LIMIO_CAMPAIGN"] = previous
    by_external_id: dict[str, list[str]] = {}
    for order in held.values():
        by_external_id.setdefault(order["external_id"], []).append(order["id"])
    rows: dict[str, Counter[str]] = {kind: Counter() for kind in ("no fault", *FAULT_KINDS)}
    for outcome in outcomes:
        ids = by_external_id.get(outcome.external_id, [])
        row = rows[outcome.kind]
        row["intended"] += 1
        row["held"] += bool(ids)
        row["duplicates"] += max(0, len(ids) - 1)
        row["lost"] += not ids
        row["misreported"] += outcome.reported_id is None or [outcome.reported_id] != ids
    retry_after = [s for s in sleeps if s == 2.0]
    return Report(rows, orders, time.perf_counter() - started, retry_after)
