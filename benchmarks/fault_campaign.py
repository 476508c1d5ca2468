"""The fault campaign: 2,000 orders through the submit operator's logic with about 20 % injected faults.

Run: ``make bench`` or ``.venv/bin/python benchmarks/fault_campaign.py [--orders 2000] [--seed 7]``.
The operator runs with its default ``on_unknown_outcome`` ("fail") against an HTTPS emulator. Prints a table
per fault kind: orders intended, held once, failed loudly (and of those, with an order held), duplicates,
lost, misreported; then a line on every order that was neither held once nor failed loudly.
Goal: 0 duplicates, 0 lost, 0 misreported. See benchmarks/campaign.py for how each fault is made.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: `benchmarks` package


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--fault-share", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--log-level", help="Airflow's log level (default ERROR): WARNING shows each ambiguous answer and how it ended"
    )
    args = parser.parse_args()
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="limio-campaign-"))
    if args.log_level or "AIRFLOW__LOGGING__LOGGING_LEVEL" not in os.environ:  # before Airflow is imported
        os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = args.log_level or "ERROR"

    from benchmarks.campaign import RETRY_AFTER, run_campaign

    report = run_campaign(args.orders, fault_share=args.fault_share, seed=args.seed)
    print(report.table())
    print(report.verdict())
    print(
        f"{report.orders} orders in {report.seconds:.1f} s; Retry-After of {RETRY_AFTER} s honoured "
        f"{len(report.retry_after_sleeps)} times"
    )
    zombies = [o for o in report.outcomes if o.kind == "zombie try"]
    print(
        f"zombie tries: {len(zombies)} resumed after their retry ended; {len(zombies) - len(report.unfenced)} "
        "failed with LimioClaimLostError, sending nothing"
    )
    for outcome in report.unfenced:
        print(f"  NOT FENCED: {outcome.external_id}: {outcome.zombie}")
    for outcome in report.unfired:
        print(f"WARNING: a fault armed for {outcome.external_id} [{outcome.kind}] never fired")
    print("PASS: no duplicate, lost or misreported order" if report.ok else "FAIL")
    raise SystemExit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
