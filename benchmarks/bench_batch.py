"""P3: the batch operator against mapped single-order tasks, Limio answering each submit after 50 ms.

Run: ``.venv/bin/python benchmarks/bench_batch.py [--orders 2000] [--mapped 40] [--in-flight 16]``.
The emulator runs in its own process; both DAGs run with ``dag.test()`` on a scratch SQLite home. Prints
orders/s of each and their ratio, and the POSTs and list reads of a re-run of the completed batch.
Latency bound: ``in_flight / 0.05 s`` (320 orders/s at 16).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root
HOME = tempfile.mkdtemp(prefix="limio-bench-batch-")
os.environ["AIRFLOW_HOME"] = HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = os.path.join(HOME, "dags")
os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "INFO"  # what users run: per-order lines would show
os.makedirs(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])


def start_emulator() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "limio_provider.testing", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("export AIRFLOW_CONN_LIMIO_DEFAULT="):
            os.environ["AIRFLOW_CONN_LIMIO_DEFAULT"] = json.loads(json.dumps(line.split("=", 1)[1].strip().strip("'")))
        if line.startswith("Press Ctrl+C"):
            break
    return process, json.loads(os.environ["AIRFLOW_CONN_LIMIO_DEFAULT"])["host"]


def control(url: str, path: str, body: dict | None = None, method: str = "POST") -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method)
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def counts(url: str) -> tuple[int, int]:
    recorded = control(url, "/_emulator/requests", method="GET")["requests"]
    posts = sum(r["path"] == "/api/order" for r in recorded)
    lists = sum(r["path"] == "/api/objects/limio/orders" for r in recorded)
    return posts, lists


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--mapped", type=int, default=40)
    parser.add_argument("--in-flight", type=int, default=16)
    args = parser.parse_args()

    from airflow.sdk import DAG
    from airflow.utils import db

    from limio_provider.exactly_once.ledger import start_ledger
    from limio_provider.operators import LimioSubmitOrderOperator, LimioSubmitOrdersOperator
    from limio_provider.testing import sample_order
    from tests.helpers import START, run_dag, xcom

    db.resetdb()
    emulator, url = start_emulator()
    try:
        control(url, "/_emulator/faults", {"route": "order", "action": "latency_only", "latency": 0.05})
        work = Path(HOME) / "work"
        work.mkdir()
        orders_file = work / "orders.jsonl"
        orders_file.write_text("".join(json.dumps(sample_order(f"P3-{n}")) + "\n" for n in range(args.orders)))

        # A ledger in use since before the work (a new one looks each order of older work up first: not the
        # steady state this measures).
        start_ledger(f"file://{work}/ledger", START - timedelta(days=1))
        with DAG("bench_batch", schedule=None, start_date=START) as batch:
            LimioSubmitOrdersOperator(
                task_id="submit",
                orders_path=f"file://{orders_file}",
                ledger_path=f"file://{work}/ledger",
                max_in_flight=args.in_flight,
            )
        import psutil

        cpu = psutil.Process(emulator.pid).cpu_times
        emulator_cpu = sum(cpu()[:2])
        own_cpu = sum(psutil.Process().cpu_times()[:2])
        started = time.perf_counter()
        run = run_dag(batch)
        batch_seconds = time.perf_counter() - started
        emulator_cpu = sum(cpu()[:2]) - emulator_cpu
        own_cpu = sum(psutil.Process().cpu_times()[:2]) - own_cpu
        (summary,) = xcom(run, "submit")
        batch_rate = args.orders / batch_seconds

        mapped_orders = [sample_order(f"P3-MAPPED-{n}") for n in range(args.mapped)]
        with DAG("bench_mapped", schedule=None, start_date=START) as mapped:
            LimioSubmitOrderOperator.partial(task_id="submit").expand(order=mapped_orders)
        started = time.perf_counter()
        run_dag(mapped)
        mapped_rate = args.mapped / (time.perf_counter() - started)

        before = counts(url)
        run_dag(batch)
        after = counts(url)
    finally:
        emulator.terminate()
        emulator.wait(10)

    print(
        f"batch:  {args.orders} orders, max_in_flight={args.in_flight}: {batch_seconds:.1f} s wall "
        f"(dag.test included), {batch_rate:.0f} orders/s; task's own rate {summary.get('orders_per_second')}"
    )
    print(
        f"CPU during the batch run: emulator {emulator_cpu:.1f} s, Airflow + the task {own_cpu:.1f} s "
        f"(2 cores: {2 * batch_seconds:.1f} s available)"
    )
    print(f"mapped: {args.mapped} orders as mapped single-order tasks: {mapped_rate:.2f} orders/s")
    print(f"ratio batch/mapped: {batch_rate / mapped_rate:.0f}x; latency bound {args.in_flight / 0.05:.0f} orders/s")
    print(f"summary XCom: {len(json.dumps(summary))} bytes; outcomes {summary.get('outcomes') or summary}")
    print(f"re-run of the completed batch: {after[0] - before[0]} order POSTs, {after[1] - before[1]} list reads")


if __name__ == "__main__":
    main()
