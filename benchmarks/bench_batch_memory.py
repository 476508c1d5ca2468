"""P4: the batch operator's memory and XCom at 100,000 orders, and what the order ledger adds per order.

Run: ``.venv/bin/python benchmarks/bench_batch_memory.py [--orders 100000] [--in-flight 16] [--ab-orders 0]``
(``--orders 5000`` for a quick check). Goal: peak RSS growth of the task process at most 100 MB during
``execute()``, summary XCom at most 2 KB.

- The emulator runs in its own process (plain HTTP, no latency): it keeps every order in memory, which is its
  memory, not the task's.
- The orders are a local JSON Lines file, the ledger a local ``file://`` directory on the same disk, both in a
  scratch directory. The batch task runs in a child process (this script with ``--worker``): it builds
  ``LimioSubmitOrdersOperator``, records its RSS just before ``execute()``, samples its RSS every 10 ms from a
  thread during ``execute()``, and reads ``ru_maxrss`` before and after (if ``ru_maxrss`` rose during
  ``execute()``, the peak is the higher of it and the samples; else the process's peak came before
  ``execute()`` and the sampled peak is used). Growth = peak - RSS before ``execute()``.
- The ledger's added cost per order is measured in isolation, on the same disk as the run's ledger and on
  tmpfs (``/dev/shm``): a claim and two updates (``sent``, then ``done`` with Limio's answer) per order, as
  the operator writes them, one thread (latency) and ``--in-flight`` threads (throughput: what a batch with
  that many orders in flight pays). ``--ab-orders N`` also runs N orders end to end twice, the ledger on disk
  and on tmpfs, and prints the difference per order (the fsyncs' share in a real run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: `benchmarks` package

CONN_ID = "limio_default"
MAX_GROWTH_MB = 100.0
MAX_XCOM_BYTES = 2048
TMPFS = "/dev/shm"


# -- the task process ------------------------------------------------------------------------------------


def run_worker(args: argparse.Namespace) -> int:
    """One batch task: ``execute()`` with a stub context, its RSS sampled; what happened to ``--status``."""
    from airflow.sdk.bases.operator import ExecutorSafeguard

    from benchmarks.campaign import TaskInstanceStub, TaskStateStoreStub
    from limio_provider.operators.batch import LimioSubmitOrdersOperator

    operator = LimioSubmitOrdersOperator(
        task_id="submit",
        orders_path=args.orders_path,
        ledger_path=args.ledger_path,
        max_in_flight=args.in_flight,
        limio_conn_id=CONN_ID,
        progress_interval=30.0,
    )
    ti = TaskInstanceStub("bench_batch_memory", "submit", -1)
    context: Any = {"ti": ti, "run_id": "bench", "task_state_store": TaskStateStoreStub()}
    as_task_runner = {f"{type(operator).__name__}__sentinel": ExecutorSafeguard.sentinel_value}
    status = measure(lambda: operator.execute(context, **as_task_runner))
    status["xcom"] = ti.xcoms.get("return_value", status["summary"])
    error = status["error"]
    Path(args.status).write_text(json.dumps(status, default=str))
    return 0 if error is None else 1


def measure(call: Callable[[], Any]) -> dict[str, Any]:
    """Run ``call`` in this process with its RSS sampled every 10 ms from a thread, ``ru_maxrss`` read before
    and after; what it returned (``summary``, or the ``summary`` of what it raised) and the figures."""
    import psutil

    process = psutil.Process()
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            stop.wait(0.01)

    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    rss_before = process.memory_info().rss
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    peak[0] = rss_before
    sampler.start()
    cpu_before = process.cpu_times()
    started = time.perf_counter()
    error: str | None = None
    summary: Any = None
    try:
        summary = call()
    except Exception as exc:  # noqa: BLE001 - reported, the benchmark fails
        summary, error = getattr(exc, "summary", None), f"{type(exc).__name__}: {str(exc)[:1000]}"
    seconds = time.perf_counter() - started
    cpu_after = process.cpu_times()
    stop.set()
    sampler.join()
    rss_after = process.memory_info().rss
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    exact = maxrss_after > maxrss_before  # the lifetime peak was reached during the call
    return {
        "seconds": seconds,
        "cpu_seconds": (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system),
        "rss_before": rss_before,
        "rss_after": rss_after,
        "peak": max(maxrss_after, peak[0]) if exact else peak[0],
        "peak_sampled": peak[0],
        "peak_from": "ru_maxrss and the samples, the higher" if exact else "sampled every 10 ms",
        "summary": summary,
        "error": error,
    }


def run_ledger_probe(args: argparse.Namespace) -> int:
    """The ledger's writes for ``--probe-orders`` orders under ``--ledger-path``: a claim, ``sent``, ``done``
    each, as the operator writes them; one thread, then ``--in-flight`` threads. Prints JSON."""
    from limio_provider.exactly_once.identity import fingerprint
    from limio_provider.exactly_once.ledger import OrderLedger, Owner
    from limio_provider.testing import sample_order

    ledger = OrderLedger(args.ledger_path, "127.0.0.1:8080")
    owner = Owner("bench_batch_memory", "bench", "submit")
    result = {"id": "order-" + "0" * 32, "status": "complete", "external_id": None, "order_type": "new"}

    def one(external_id: str) -> None:
        body = sample_order(external_id, process_immediately=True)
        created, record = ledger.claim(external_id, fingerprint(body), owner)
        assert created
        record = ledger.update(record, "sent")
        answer = {**result, "external_id": external_id}
        ledger.update(record, "done", order_id=answer["id"], status="complete", result=answer)

    n = args.probe_orders
    timings: dict[str, float] = {}
    started = time.perf_counter()
    for i in range(n):
        one(f"probe-serial-{i}")
    timings["serial_ms"] = (time.perf_counter() - started) / n * 1000
    started = time.perf_counter()
    with ThreadPoolExecutor(args.in_flight) as pool:
        list(pool.map(one, (f"probe-parallel-{i}" for i in range(n))))
    timings["parallel_ms"] = (time.perf_counter() - started) / n * 1000
    print(json.dumps(timings))
    return 0


# -- the benchmark ---------------------------------------------------------------------------------------


def start_emulator(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """The emulator in its own process (plain HTTP, a free port); its ``AIRFLOW_CONN_LIMIO_DEFAULT`` value."""
    process = subprocess.Popen(
        [sys.executable, "-m", "limio_provider.testing", "--port", "0"], stdout=subprocess.PIPE, text=True, env=env
    )
    assert process.stdout is not None
    connection = None
    for line in process.stdout:
        if line.startswith("export AIRFLOW_CONN_LIMIO_DEFAULT="):
            connection = line.split("=", 1)[1].strip().strip("'")
        if line.startswith("Press Ctrl+C"):
            break
    if connection is None:
        process.kill()
        raise RuntimeError("the emulator did not start")
    return process, connection


def order_posts(url: str) -> int:
    with urllib.request.urlopen(url + "/_emulator/requests", timeout=120) as answer:
        recorded = json.loads(answer.read())["requests"]
    return sum(r["path"] == "/api/order" for r in recorded)


def run_batch(work: Path, orders_file: Path, ledger_dir: Path, args: argparse.Namespace, env: dict[str, str]) -> dict:
    """One batch task in a child process; its status."""
    status_file = work / f"status-{ledger_dir.name}-{time.monotonic_ns()}.json"
    command = [
        sys.executable, str(Path(__file__).resolve()), "--worker",
        "--orders-path", f"file://{orders_file}", "--ledger-path", f"file://{ledger_dir}",
        "--in-flight", str(args.in_flight), "--status", str(status_file),
    ]  # fmt: skip
    with (work / "task.log").open("ab") as log:
        code = subprocess.run(command, check=False, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if not status_file.exists():
        raise RuntimeError(f"the task process exited {code} without a status; see {work / 'task.log'}")
    return json.loads(status_file.read_text())


def write_orders(path: Path, count: int, prefix: str) -> None:
    from limio_provider.testing import sample_order

    with path.open("w") as out:
        for n in range(count):
            out.write(json.dumps(sample_order(f"{prefix}-{n:06d}", process_immediately=True)) + "\n")


def ledger_probe(root: Path, args: argparse.Namespace, env: dict[str, str]) -> dict[str, float]:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--ledger-probe", "--ledger-path", f"file://{root}",
        "--probe-orders", str(args.probe_orders), "--in-flight", str(args.in_flight),
    ]  # fmt: skip
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--in-flight", type=int, default=16, help="the operator's max_in_flight")
    parser.add_argument("--probe-orders", type=int, default=2000, help="orders of the isolated ledger timing")
    parser.add_argument("--ab-orders", type=int, default=0, help="also run this many orders, ledger on disk vs tmpfs")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ledger-probe", action="store_true", help=argparse.SUPPRESS)
    for name in ("--orders-path", "--ledger-path", "--status"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        raise SystemExit(run_worker(args))
    if args.ledger_probe:
        raise SystemExit(run_ledger_probe(args))

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="limio-bench-memory-"))
    home = work / "airflow-home"
    home.mkdir()
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",  # what users run: the progress lines
    }
    emulator, connection = start_emulator(env)
    env["AIRFLOW_CONN_LIMIO_DEFAULT"] = connection
    url = json.loads(connection)["host"]
    try:
        orders_file = work / "orders.jsonl"
        write_orders(orders_file, args.orders, "P4")
        status = run_batch(work, orders_file, work / "ledger", args, env)
        posts = order_posts(url)
        ab: dict[str, dict[str, Any]] = {}
        if args.ab_orders:
            for name, base in (("disk", work), ("tmpfs", Path(tempfile.mkdtemp(prefix="limio-bench-ab-", dir=TMPFS)))):
                ab_file = work / f"ab-{name}.jsonl"
                write_orders(ab_file, args.ab_orders, f"AB-{name}")
                ab[name] = run_batch(work, ab_file, base / f"ledger-ab-{name}", args, env)
                if base != work:
                    shutil.rmtree(base, ignore_errors=True)
    finally:
        emulator.terminate()
        emulator.wait(30)
    probe_tmpfs = Path(tempfile.mkdtemp(prefix="limio-bench-probe-", dir=TMPFS))
    try:
        probes = {"disk": ledger_probe(work / "ledger-probe", args, env), "tmpfs": ledger_probe(probe_tmpfs, args, env)}
    finally:
        shutil.rmtree(probe_tmpfs, ignore_errors=True)

    mb = 1024 * 1024
    growth = (status["peak"] - status["rss_before"]) / mb
    xcom_bytes = len(json.dumps(status["xcom"], default=str))
    summary = status["summary"] or {}
    counts = {k: v for k, v in (summary.get("counts") or {}).items() if v}
    print(
        f"batch: {args.orders} orders from a local JSONL file ({orders_file.stat().st_size / mb:.1f} MB), "
        f"max_in_flight={args.in_flight}, ledger on local disk; {posts} order POSTs; outcomes {counts}"
    )
    print(
        f"  execute(): {status['seconds']:.1f} s, {args.orders / status['seconds']:.0f} orders/s "
        f"(validation pass included; task's own figure {summary.get('orders_per_second')}); "
        f"task CPU {status['cpu_seconds']:.1f} s"
    )
    print(
        f"  task RSS: {status['rss_before'] / mb:.1f} MB before execute(), peak {status['peak'] / mb:.1f} MB "
        f"({status['peak_from']}; sampled peak {status['peak_sampled'] / mb:.1f} MB), {status['rss_after'] / mb:.1f} "
        f"MB after: growth {growth:.1f} MB (goal <= {MAX_GROWTH_MB:.0f} MB)"
    )
    print(f"  summary XCom: {xcom_bytes} bytes of JSON (goal <= {MAX_XCOM_BYTES})")
    if status["error"]:
        print(f"  the task raised: {status['error'][:500]}")
    print(f"ledger, in isolation ({args.probe_orders} orders: claim + 'sent' + 'done' each, as the operator does):")
    for name, where in (("disk", f"local disk ({work})"), ("tmpfs", TMPFS)):
        probe = probes[name]
        print(
            f"  {where}: {probe['serial_ms']:.2f} ms/order on one thread (the latency one order pays), "
            f"{probe['parallel_ms']:.2f} ms/order with {args.in_flight} threads (what the batch's throughput pays)"
        )
    print(
        f"  the ledger's added cost per order on local disk: {probes['disk']['serial_ms']:.2f} ms of latency per "
        f"order, {probes['disk']['parallel_ms']:.2f} ms per order of batch time at {args.in_flight} in flight "
        f"(of which fsync/disk, vs tmpfs: {probes['disk']['parallel_ms'] - probes['tmpfs']['parallel_ms']:.2f} ms)"
    )
    if ab:
        per_order = {name: run["seconds"] / args.ab_orders * 1000 for name, run in ab.items()}
        print(
            f"end to end, {args.ab_orders} orders each: ledger on disk {ab['disk']['seconds']:.1f} s "
            f"({per_order['disk']:.2f} ms/order), on tmpfs {ab['tmpfs']['seconds']:.1f} s ({per_order['tmpfs']:.2f} "
            f"ms/order): disk adds {per_order['disk'] - per_order['tmpfs']:.2f} ms/order"
        )
    complete = not status["error"] and summary.get("total") == args.orders
    ok = growth <= MAX_GROWTH_MB and xcom_bytes <= MAX_XCOM_BYTES and complete
    print(f"total {time.perf_counter() - started:.1f} s (scratch: {work})")
    print(
        f"PASS: RSS growth {growth:.1f} MB <= {MAX_GROWTH_MB:.0f} MB, XCom {xcom_bytes} B <= {MAX_XCOM_BYTES} B"
        if ok
        else "FAIL"
    )
    if ok and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
