"""A smaller fault campaign than benchmarks/fault_campaign.py: every fault kind, with the operator's default
``on_unknown_outcome``; every order held once or failed loudly, none duplicated, lost or misreported."""

from __future__ import annotations

from benchmarks.campaign import FAULT_KINDS, LEDGER_KINDS, PROCESSED_KINDS, run_campaign


def test_every_faulted_order_is_held_once_or_fails_loudly_never_duplicated_lost_or_misreported() -> None:
    report = run_campaign(300, fault_share=0.45, seed=11)
    table = f"{report.table()}\n{report.verdict()}"
    assert set(report.rows) == {"no fault", *FAULT_KINDS, *LEDGER_KINDS}
    for kind, row in report.rows.items():
        assert row["intended"] >= 6, (kind, table)
    assert not report.unfired, [(o.external_id, o.kind) for o in report.unfired]  # every armed fault hit
    totals = report.totals
    assert totals["intended"] == 300
    assert (totals["duplicates"], totals["lost"], totals["misreported"]) == (0, 0, 0), table
    assert report.unaccounted == [], table
    assert totals["held once"] + totals["failed loudly"] == 300, table
    # After an ambiguous answer to a processed order, the operator finds the order it created.
    for kind in PROCESSED_KINDS:
        assert report.rows[kind]["held once"] == report.rows[kind]["intended"], (kind, table)
    # Retried faults end with the order; a request dropped unprocessed fails its task, naming the order.
    # A frozen try that resumes sends nothing; a failed ledger write costs one try, never an order.
    assert report.unfenced == [], [(o.external_id, o.zombie) for o in report.unfenced]
    assert all("LimioClaimLostError" in o.zombie for o in report.outcomes if o.kind == "zombie try")
    for kind in (
        "no fault",
        "429 + Retry-After",
        "503",
        "token expired mid-run",
        "credentials revoked, restored",
        *LEDGER_KINDS,
    ):
        assert report.rows[kind]["held once"] == report.rows[kind]["intended"], (kind, table)
    dropped = report.rows["dropped before processing"]
    assert (dropped["failed loudly"], dropped["loud, held"]) == (dropped["intended"], 0), table
    assert len(report.retry_after_sleeps) == report.rows["429 + Retry-After"]["intended"]
