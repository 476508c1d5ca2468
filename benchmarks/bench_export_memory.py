"""The export's memory at 100,000 orders: ``LimioExportObjectsOperator`` reading every page of a busy tenant.

Run: ``.venv/bin/python benchmarks/bench_export_memory.py [--orders 100000] [--page-size 1000]`` (``--orders
5000`` for a quick check). Goal: peak RSS growth of the task process at most 100 MB during ``execute()``
(measured as the batch's P4 is: :func:`benchmarks.bench_batch_memory.measure`), every order exported once.

The emulator runs in its own process (its orders are its memory, not the task's) and is filled through its
API, a few connections at a time. The task runs in a child process (this script with ``--worker``) with a stub
context and ``task_state_store``; the export goes to a local file, its parts beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: `benchmarks` package

from benchmarks.bench_batch_memory import MAX_GROWTH_MB, measure, start_emulator  # noqa: E402


def run_worker(args: argparse.Namespace) -> int:
    """One export task: ``execute()`` with a stub context, measured; what happened to ``--status``."""
    from airflow.sdk.bases.operator import ExecutorSafeguard

    from benchmarks.campaign import TaskInstanceStub, TaskStateStoreStub
    from limio_provider.operators.export import LimioExportObjectsOperator

    operator = LimioExportObjectsOperator(
        task_id="export", object_type="orders", path=args.path, window="all", page_size=args.page_size
    )
    context: Any = {
        "ti": TaskInstanceStub("bench_export_memory", "export", -1),
        "run_id": "bench",
        "task_state_store": TaskStateStoreStub(),
    }
    as_task_runner = {f"{type(operator).__name__}__sentinel": ExecutorSafeguard.sentinel_value}
    status = measure(lambda: operator.execute(context, **as_task_runner))
    Path(args.status).write_text(json.dumps(status, default=str))
    return 0 if status["error"] is None else 1


def fill(connection: str, count: int) -> float:
    """Submit ``count`` orders to the emulator through its API (8 connections); the seconds it took."""
    os.environ["AIRFLOW_CONN_LIMIO_DEFAULT"] = connection
    from limio_provider.hooks.limio import LimioHook
    from limio_provider.testing import sample_order

    started = time.perf_counter()
    hooks = [LimioHook() for _ in range(8)]

    def send(start: int) -> None:
        hook = hooks[start % len(hooks)]
        for n in range(start, count, len(hooks)):
            hook.submit_order(sample_order(f"EXPORT-{n:06d}", process_immediately=True))

    with ThreadPoolExecutor(len(hooks)) as pool:
        list(pool.map(send, range(len(hooks))))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--path", "--status"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        raise SystemExit(run_worker(args))

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="limio-bench-export-"))
    (work / "airflow-home").mkdir()
    env = {**os.environ, "AIRFLOW_HOME": str(work / "airflow-home"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    emulator, connection = start_emulator(env)
    env["AIRFLOW_CONN_LIMIO_DEFAULT"] = connection
    target, status_file = work / "orders.jsonl", work / "status.json"
    try:
        fill_seconds = fill(connection, args.orders)
        command = [
            sys.executable, str(Path(__file__).resolve()), "--worker", "--path", target.as_uri(),
            "--status", str(status_file), "--page-size", str(args.page_size),
        ]  # fmt: skip
        with (work / "task.log").open("wb") as log:
            subprocess.run(command, check=False, env=env, stdout=log, stderr=subprocess.STDOUT)
    finally:
        emulator.terminate()
        emulator.wait(30)
    if not status_file.exists():
        raise SystemExit(f"the task process wrote no status; see {work / 'task.log'}")
    status = json.loads(status_file.read_text())
    ids = set()
    lines = 0
    if target.exists():
        with target.open() as exported:
            for line in exported:
                lines += 1
                ids.add(json.loads(line)["external_id"])
    mb = 1024 * 1024
    growth = (status["peak"] - status["rss_before"]) / mb
    print(f"emulator filled with {args.orders} orders in {fill_seconds:.1f} s")
    print(
        f"export: {lines} lines ({target.stat().st_size / mb if target.exists() else 0:.1f} MB), "
        f"{len(ids)} distinct external ids, page_size={args.page_size}; execute() {status['seconds']:.1f} s, "
        f"task CPU {status['cpu_seconds']:.1f} s; summary {status['summary']}"
    )
    print(
        f"  task RSS: {status['rss_before'] / mb:.1f} MB before execute(), peak {status['peak'] / mb:.1f} MB "
        f"({status['peak_from']}), growth {growth:.1f} MB (goal <= {MAX_GROWTH_MB:.0f} MB); "
        f"growth / exported MB = {growth / max(target.stat().st_size / mb if target.exists() else 1, 1e-9):.2f}"
    )
    if status["error"]:
        print(f"  the task raised: {status['error'][:500]}")
    ok = growth <= MAX_GROWTH_MB and lines == len(ids) == args.orders and not status["error"]
    print(f"total {time.perf_counter() - started:.1f} s (scratch: {work})")
    print(f"PASS: RSS growth {growth:.1f} MB <= {MAX_GROWTH_MB:.0f} MB, every order once" if ok else "FAIL")
    if ok and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
