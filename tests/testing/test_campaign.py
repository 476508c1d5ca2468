"""A smaller fault campaign than benchmarks/fault_campaign.py: every fault kind, no order duplicated or lost."""

from __future__ import annotations

from limio_provider.testing.campaign import FAULT_KINDS, run_campaign


def test_faulted_orders_are_neither_duplicated_nor_lost_nor_misreported() -> None:
    report = run_campaign(210, fault_share=0.2, seed=11)
    assert set(report.rows) == {"no fault", *FAULT_KINDS}
    for kind, row in report.rows.items():
        assert row["intended"] >= 6, (kind, report.table())
        assert row["held"] == row["intended"], report.table()
    totals = report.totals
    assert totals["intended"] == 210
    assert (totals["duplicates"], totals["lost"], totals["misreported"]) == (0, 0, 0), report.table()
    assert len(report.retry_after_sleeps) == report.rows["429 + Retry-After"]["intended"]
