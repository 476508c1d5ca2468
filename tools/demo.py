"""``make demo``: run an example DAG with ``airflow dags test`` against a local Limio emulator.

Sets up an Airflow home with SQLite under ``--home``, starts the emulator on a free loopback port, points
``AIRFLOW_CONN_LIMIO_DEFAULT`` at it, runs the DAG, prints what Limio (the emulator) received, and stops
the emulator. Safe to run again: each run starts a fresh emulator and reuses the migrated database.

A DAG that reads input files gets sample ones under ``--home`` first (see ``SAMPLE_DATA``): for
``limio_backfill_orders``, the logical date's renewals file, with its Variables pointing at local ``file://``
folders, so the demo needs no cloud storage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from limio_provider.testing import sample_order
from limio_provider.testing.emulator import LimioEmulator


def _backfill_sample(home: Path, day: str) -> tuple[dict[str, str], Path]:
    """``<home>/backfill/renewals/<day>.jsonl`` with three orders, a fresh ledger (the emulator is fresh too),
    and the Variables naming them; returns the environment and the results file the DAG will write."""
    root, ledger = home / "backfill", home / "backfill-ledger"
    shutil.rmtree(ledger, ignore_errors=True)
    (root / "renewals").mkdir(parents=True, exist_ok=True)
    orders = [json.dumps(sample_order(f"renewal-{day}-{n}")) for n in (1, 2, 3)]
    (root / "renewals" / f"{day}.jsonl").write_text("\n".join(orders) + "\n")
    env = {"AIRFLOW_VAR_LIMIO_RENEWALS_ROOT": root.as_uri(), "AIRFLOW_VAR_LIMIO_LEDGER_PATH": ledger.as_uri()}
    return env, root / "renewals" / f"{day}.results.jsonl"


#: Sample input written before the run, by DAG id: ``(home, day) -> (environment, results file)``.
SAMPLE_DATA = {"limio_backfill_orders": _backfill_sample}


def _airflow(args: list[str], env: dict[str, str], log: Path) -> int:
    with log.open("a") as out:
        out.write(f"\n$ airflow {' '.join(args)}\n")
        out.flush()
        return subprocess.run(
            [sys.executable, "-m", "airflow", *args], env=env, stdout=out, stderr=subprocess.STDOUT, check=False
        ).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dags-folder", type=Path, default=Path("dags_examples"), help="where the DAG files are")
    parser.add_argument("--home", type=Path, default=Path(".demo"), help="scratch folder: Airflow home, logs")
    parser.add_argument("--dag-id", default="limio_scheduled_renewals", help="the DAG to run")
    parser.add_argument("--logical-date", default="2026-01-01", help="the run's logical date (YYYY-MM-DD)")
    args = parser.parse_args(argv)

    home = args.home.resolve()
    airflow_home = home / "airflow-home"
    airflow_home.mkdir(parents=True, exist_ok=True)
    log = home / "airflow-dags-test.log"
    log.write_text("")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(args.dags_folder.resolve()),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    print(f"Airflow home (SQLite): {airflow_home}")
    results = None
    if args.dag_id in SAMPLE_DATA:
        sample_env, results = SAMPLE_DATA[args.dag_id](home, args.logical_date[:10])
        results.unlink(missing_ok=True)
        env.update(sample_env)
        print(f"Sample input: {', '.join(f'{k}={v}' for k, v in sample_env.items())}")
    started = time.monotonic()
    if _airflow(["db", "migrate"], env, log) != 0:
        print(f"airflow db migrate failed; see {log}")
        return 1

    with LimioEmulator(processing_delay=0.0) as emulator:
        env.update(emulator.connection_env())  # limio_default, and limio_admin: its management client
        print(f"Limio emulator: {emulator.url}")
        print(f"Running: airflow dags test {args.dag_id} {args.logical_date} ...")
        code = _airflow(["dags", "test", args.dag_id, args.logical_date], env, log)
        previews = [r for r in emulator.requests if r.path == "/api/order/preview" and r.status == 200]
        submitted = sorted(emulator.orders.values(), key=lambda o: o.get("external_id") or "")

    print()
    print(f"DAG run {args.dag_id} ({args.logical_date}): {'success' if code == 0 else 'FAILED'}")
    print(f"Orders previewed: {len(previews)}")
    print(f"Orders submitted: {len(submitted)}")
    for order in submitted:
        partner = order.get("forPartner")
        via = f"  /admin/order for partner {partner.get('id', partner)}" if isinstance(partner, dict) else ""
        print(f"  {order.get('external_id'):40s} {order['id']}  {order.get('order_type'):20s} {order['status']}{via}")
    if results is not None:
        lines = results.read_text().splitlines() if results.exists() else []
        outcomes = Counter(json.loads(line)["outcome"] for line in lines)
        shown = ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items())) or "not written"
        print(f"Results file: {results} ({shown})")
    print(f"Logs (airflow dags test runs the tasks in-process, so the task logs are here too): {log}")
    print(f"Took {time.monotonic() - started:.1f} s")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
