"""Issue 21: a batch against a tenant limited to 100 requests a second learns the rate Limio accepts.

Run: ``.venv/bin/python benchmarks/bench_rate.py [--orders 5000] [--limit 100] [--burst B] [--no-retry-after]``.
The emulator runs in its own process with ``--rate-limit`` (a token bucket of ``--burst``, default one
second's worth; 429 beyond it). First one batch (``max_in_flight=64``), then two at once, each a ``dag.test()``
in a process of its own (their own SQLite home, ledger and orders), as two Airflow workers would be. Prints
what Limio accepted as a share of the limit, the share of requests answered 429, failed orders, and each
concurrent batch's share of what Limio accepted while both ran. Goals (issue 21): >= 90 %, <= 5 %, 0, 40-60 %.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def child(name: str, orders: int, in_flight: int) -> None:
    """One batch, in this process: its summary as the last line of standard output."""
    home = tempfile.mkdtemp(prefix=f"limio-bench-rate-{name}-")
    os.environ.update(
        AIRFLOW_HOME=home,
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=os.path.join(home, "dags"),
        AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING",
    )
    from datetime import timedelta

    from airflow.sdk import DAG
    from airflow.utils import db

    from limio_provider.exactly_once.ledger import start_ledger
    from limio_provider.operators import LimioSubmitOrdersOperator
    from limio_provider.testing import sample_order
    from tests.helpers import START, run_dag, xcom

    db.resetdb()
    work = Path(home) / "work"
    work.mkdir()
    orders_file = work / "orders.jsonl"
    orders_file.write_text("".join(json.dumps(sample_order(f"{name}-{n}")) + "\n" for n in range(orders)))
    start_ledger(f"file://{work}/ledger", START - timedelta(days=1))  # in use before the work: no look-ups
    with DAG(f"bench_rate_{name}", schedule=None, start_date=START) as dag:
        LimioSubmitOrdersOperator(
            task_id="submit",
            orders_path=f"file://{orders_file}",
            ledger_path=f"file://{work}/ledger",
            max_in_flight=in_flight,
            max_failed=orders,
        )
    run = run_dag(dag)
    (summary,) = xcom(run, "submit")
    print(json.dumps({"state": str(run.state), "summary": summary}), flush=True)


def start_emulator(limit: float, burst: float | None, retry_after: bool) -> tuple[subprocess.Popen[str], str, str]:
    command = [sys.executable, "-m", "limio_provider.testing", "--port", "0", "--rate-limit", str(limit)]
    command += ["--rate-limit-burst", str(burst)] if burst else []
    command += [] if retry_after else ["--no-retry-after"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stdout is not None
    conn = ""
    for line in process.stdout:
        if line.startswith("export AIRFLOW_CONN_LIMIO_DEFAULT="):
            conn = line.split("=", 1)[1].strip().strip("'")
        if line.startswith("Press Ctrl+C"):
            break
    return process, conn, json.loads(conn)["host"]


def requests_of(url: str) -> list[dict]:
    import urllib.request

    with urllib.request.urlopen(url + "/_emulator/requests", timeout=60) as answer:
        return [r for r in json.loads(answer.read())["requests"] if r["path"].startswith("/api/")]


def run_batches(names: list[str], orders: int, in_flight: int, conn: str) -> list[dict]:
    env = {**os.environ, "AIRFLOW_CONN_LIMIO_DEFAULT": conn, "PYTHONPATH": str(ROOT)}
    script = str(Path(__file__).resolve())
    children = [
        subprocess.Popen(
            [sys.executable, script, "--child", name, "--orders", str(orders), "--in-flight", str(in_flight)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for name in names
    ]
    # Started together; shares are measured while both send.
    outputs = []
    for process in children:
        out, _ = process.communicate(timeout=3600)
        if process.returncode != 0:
            raise SystemExit(f"a batch process failed ({process.returncode}):\n{out[-3000:]}")
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    return outputs


def owner(record: dict, names: list[str]) -> str | None:
    body = record.get("body")
    external_id = body.get("external_id") if isinstance(body, dict) else None
    return next((name for name in names if str(external_id).startswith(f"{name}-")), None)


def measure(records: list[dict], limit: float) -> tuple[float, float, float]:
    """Accepted requests a second as a share of ``limit``, over the span of ``records``; the share answered 429;
    the span in seconds."""
    times = [r["received_at"] for r in records]
    span = max(times) - min(times)
    accepted = sum(r["status"] == 200 for r in records)
    limited = sum(r["status"] == 429 for r in records)
    return accepted / span / limit, limited / len(records), span


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=5000)
    parser.add_argument("--limit", type=float, default=100.0)
    parser.add_argument("--burst", type=float, default=None)
    parser.add_argument("--no-retry-after", action="store_true")
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=["one", "two"], help="run only the single or the concurrent case")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.orders, args.in_flight)
        return

    emulator, conn, url = start_emulator(args.limit, args.burst, not args.no_retry_after)
    import urllib.request

    verdicts = []
    try:
        print(
            f"Emulator: {args.limit:.0f} requests/s, burst {args.burst or args.limit:.0f}, "
            f"{'no ' if args.no_retry_after else ''}Retry-After; batches of {args.orders} orders, "
            f"max_in_flight={args.in_flight}"
        )
        if args.only in (None, "one"):
            started = time.monotonic()
            (one,) = run_batches(["ONE"], args.orders, args.in_flight, conn)
            records = [r for r in requests_of(url) if owner(r, ["ONE"])]
            share, limited, span = measure(records, args.limit)
            counts = one["summary"]["counts"]
            failed = one["summary"]["failures"]
            print(
                f"one batch: {counts['submitted']} submitted, {failed} failed, in {span:.1f} s of requests "
                f"({time.monotonic() - started:.0f} s with dag.test); Limio accepted {100 * share:.1f} % of its "
                f"limit; {100 * limited:.2f} % of {len(records)} requests answered 429; batch summary rate: "
                f"{one['summary'].get('rate')}"
            )
            verdicts.append(share >= 0.9 and limited <= 0.05 and failed == 0)
            urllib.request.urlopen(urllib.request.Request(url + "/_emulator/reset", method="POST"), timeout=30)
            spec = {"per_second": args.limit, "burst": args.burst, "retry_after": not args.no_retry_after}
            request = urllib.request.Request(
                url + "/_emulator/rate-limit", data=json.dumps(spec).encode(), method="POST"
            )
            urllib.request.urlopen(request, timeout=30)
        if args.only in (None, "two"):
            names = ["AAA", "BBB"]
            outputs = run_batches(names, args.orders, args.in_flight, conn)
            records = requests_of(url)
            by = {name: [r for r in records if owner(r, [name]) == name] for name in names}
            start = max(min(r["received_at"] for r in by[name]) for name in names)
            end = min(max(r["received_at"] for r in by[name]) for name in names)
            both = {name: [r for r in by[name] if start <= r["received_at"] <= end] for name in names}
            accepted = {name: sum(r["status"] == 200 for r in both[name]) for name in names}
            total = sum(accepted.values())
            overlap = [r for name in names for r in both[name]]
            share, limited, _ = measure(overlap, args.limit)
            failed = sum(output["summary"]["failures"] for output in outputs)
            shares = {name: accepted[name] / total for name in names}
            print(
                f"two batches at once: {end - start:.1f} s together; Limio accepted {100 * share:.1f} % of its "
                f"limit; shares {', '.join(f'{n} {100 * s:.1f} %' for n, s in shares.items())}; "
                f"{100 * limited:.2f} % answered 429; {failed} failed"
            )
            verdicts.append(all(0.4 <= s <= 0.6 for s in shares.values()) and failed == 0)
    finally:
        emulator.terminate()
        emulator.wait(10)
    print("PASS" if all(verdicts) else "FAIL")


if __name__ == "__main__":
    main()
