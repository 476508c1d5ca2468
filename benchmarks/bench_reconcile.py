"""A reconciliation over a 10,000-order backfill whose billing failed for some orders after Limio completed them.

Run: ``.venv/bin/python benchmarks/bench_reconcile.py [--orders 10000] [--failure-rate 0.03]``. Goal: the
reconciliation (``LimioReconcileOrdersOperator`` with ``check_processing``) finds every order whose billing
failed, and no other; the task fails (more problems than ``max_problems=0``) naming them.

The emulator runs in its own process, with its fault "processed, billing failed" on a seeded share of the
orders (the order completes; its process event says the billing plugin failed). The backfill is one batch
(``LimioSubmitOrdersOperator``, a local ledger); the reconciliation reads the batch's results file. The
ground truth is the emulator's own process events, read through the Objects API.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: `benchmarks` package

from benchmarks.bench_batch_memory import start_emulator, write_orders  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=10_000)
    parser.add_argument("--failure-rate", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=20)
    args = parser.parse_args()

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="limio-bench-reconcile-"))
    (work / "airflow-home").mkdir()
    os.environ.update({"AIRFLOW_HOME": str(work / "airflow-home"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"})
    emulator, connection = start_emulator(dict(os.environ))
    os.environ["AIRFLOW_CONN_LIMIO_DEFAULT"] = connection
    url = json.loads(connection)["host"]
    try:
        fault = {"route": "order", "action": "billing_fails", "probability": args.failure_rate, "seed": args.seed}
        request = urllib.request.Request(
            url + "/_emulator/faults", json.dumps(fault).encode(), {"Content-Type": "application/json"}
        )
        urllib.request.urlopen(request, timeout=30).read()
        figures = run(work, args, url)
    finally:
        emulator.terminate()
        emulator.wait(30)
    found, injected = figures["found"], figures["injected"]
    print(
        f"backfill: {args.orders} orders in one batch, {figures['batch_seconds']:.1f} s; billing failed (injected) "
        f"for {len(injected)} ({len(injected) / args.orders:.1%})"
    )
    print(
        f"reconciliation: {figures['reconcile_seconds']:.1f} s ({figures['requests']} requests), counts "
        f"{figures['summary']['counts']}; found {len(found & injected)} of {len(injected)} injected failures "
        f"({len(found & injected) / max(len(injected), 1):.1%}), {len(found - injected)} reported that were not"
    )
    print(f"  the task failed as it should: {figures['error'][:200]}")
    ok = found == injected and bool(injected) and figures["error"].startswith("LimioReconciliationError")
    print(f"total {time.perf_counter() - started:.1f} s (scratch: {work})")
    print(f"PASS: every injected billing failure found, none other ({len(found)})" if ok else "FAIL")
    if ok:
        shutil.rmtree(work, ignore_errors=True)
    raise SystemExit(0 if ok else 1)


def run(work: Path, args: argparse.Namespace, url: str) -> dict[str, Any]:
    from airflow.sdk.bases.operator import ExecutorSafeguard

    from benchmarks.campaign import TaskInstanceStub, TaskStateStoreStub
    from limio_provider.hooks.limio import LimioHook
    from limio_provider.models.results import ProcessEvent
    from limio_provider.operators.batch import LimioSubmitOrdersOperator
    from limio_provider.operators.reconcile import LimioReconcileOrdersOperator

    orders_file = work / "backfill.jsonl"
    write_orders(orders_file, args.orders, "RECON")
    batch = LimioSubmitOrdersOperator(
        task_id="backfill", orders_path=orders_file.as_uri(), ledger_path=(work / "ledger").as_uri(), max_in_flight=16
    )
    context: Any = {
        "ti": TaskInstanceStub("bench_reconcile", "backfill", -1),
        "run_id": "bench",
        "task_state_store": TaskStateStoreStub(),
    }
    sentinel = {f"{type(batch).__name__}__sentinel": ExecutorSafeguard.sentinel_value}
    clock = time.perf_counter()
    results = batch.execute(context, **sentinel)["results_path"]
    batch_seconds = time.perf_counter() - clock

    hook = LimioHook()
    failed_events = [
        ProcessEvent.model_validate(item)
        for items, _ in hook.object_pages("process", page_size=1000)
        for item in items
        if ProcessEvent.model_validate(item).errors()
    ]
    orders = {order.id: order.external_id for order in hook.list_orders(page_size=1000)}
    injected = {orders.get(str(event.model_extra.get("order"))) for event in failed_events} - {None}

    reconcile = LimioReconcileOrdersOperator(
        task_id="reconcile", intended_path=results, check_processing=True, external_id_prefix="RECON-"
    )
    context["ti"] = TaskInstanceStub("bench_reconcile", "reconcile", -1)
    before = requests_made(url)
    clock = time.perf_counter()
    error = ""
    try:
        reconcile.execute(context, **{f"{type(reconcile).__name__}__sentinel": ExecutorSafeguard.sentinel_value})
    except Exception as exc:  # noqa: BLE001 - the expected failure, reported
        error = f"{type(exc).__name__}: {exc}"
    reconcile_seconds = time.perf_counter() - clock
    summary = context["ti"].xcoms.get("return_value") or {}
    report = Path(summary["report_path"].removeprefix("file://"))
    found = {
        line["external_id"]
        for line in map(json.loads, report.read_text().splitlines())
        if line["status"] == "failed_downstream"
    }
    return {
        "batch_seconds": batch_seconds,
        "reconcile_seconds": reconcile_seconds,
        "requests": requests_made(url) - before,
        "summary": summary,
        "found": found,
        "injected": injected,
        "error": error,
    }


def requests_made(url: str) -> int:
    """How many requests the emulator at ``url`` has recorded."""
    with urllib.request.urlopen(url + "/_emulator/requests", timeout=120) as answer:
        return len(json.loads(answer.read())["requests"])


if __name__ == "__main__":
    main()
