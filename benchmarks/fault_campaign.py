"""The fault campaign: 2,000 orders through the submit operator's logic with about 20 % injected faults.

Run: ``make bench`` or ``.venv/bin/python benchmarks/fault_campaign.py [--orders 2000] [--seed 7]``.
Prints a table per fault kind: orders intended, orders the emulator holds, duplicates, lost, misreported.
Goal: 0 duplicates, 0 lost, 0 misreported. See limio_provider/testing/campaign.py for how each fault is made.
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="limio-campaign-"))
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")  # else one INFO line per order

from limio_provider.testing.campaign import run_campaign  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--fault-share", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    report = run_campaign(args.orders, fault_share=args.fault_share, seed=args.seed)
    print(report.table())
    print(
        f"{report.orders} orders in {report.seconds:.1f} s; Retry-After of 2 s honoured "
        f"{len(report.retry_after_sleeps)} times"
    )
    totals = report.totals
    ok = totals["duplicates"] == totals["lost"] == totals["misreported"] == 0
    print("PASS: no duplicate, lost or misreported order" if ok else "FAIL")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
