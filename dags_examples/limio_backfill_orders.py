"""Backfill a range of days of renewal orders into Limio from daily files, rehearsing it first.

A billing system writes each day's renewals to a JSON Lines file in object storage,
``<root>/renewals/<day>.jsonl`` (e.g. ``s3://aws_default@billing/limio/renewals/2026-01-03.jsonl``): one Limio
order body per line, each with an explicit ``external_id`` such as ``renewal-2026-01-03-1``. The files of
2026-01-01 to 2026-01-05 were never sent to Limio. This DAG has one run per day of that range
(``catchup=True``, ``end_date`` closes it; ``max_active_runs=1`` runs one day at a time, oldest first), and
each run has one task, ``submit_renewals`` (``LimioSubmitOrdersOperator``), which:

- reads that day's file and validates every order before sending any (one bad line fails the run and sends
  nothing);
- submits them a few at a time (``max_in_flight``), each exactly once through the order ledger;
- writes one result line per order next to the input, ``<root>/renewals/<day>.results.jsonl``
  (``outcome``: ``submitted``, ``adopted``, ``refused``, ``unknown``, ``failed``, ``invalid`` or ``dry_run``);
- returns a small summary as XCom (``total``, ``counts`` by outcome, ``failures``, ``results_path``...), and
  fails at the end if any order was not submitted (``max_failed=0``): the results file says which, and an
  ``unknown`` one must be looked up in Limio by its ``external_id`` before it is sent again.

**Which day.** The run's logical date (``ds``) for scheduled and backfill runs. A run triggered by hand
without a logical date (Airflow 3 allows it; then ``ds`` is not set) uses the day of the run's
``run_after``, i.e. the day it was triggered, rather than failing or reading a file named ``None``: a run
without a logical date has no data interval to name a past day, and "send today's file now" is what such a
trigger most plausibly means (if that file grows later, a new run of the day adopts what was sent and sends
only the new lines). The ``day`` param (``YYYY-MM-DD``) overrides both, for a manual run of any day: trigger
with ``{"day": "2026-01-03"}``. The day only names the file: the ``external_id`` is in the file, so a run of a
day always sends the same ids, whichever kind of run it is.

**Re-runs.** The ledger records every order sent. A retried task, a cleared run or a new run of the same day
(a scheduled run, a backfill, a manual trigger) adopts the orders the ledger holds as done (``adopted`` in
the results) and sends none of them again. Put the ledger where every worker sees it (S3, not a worker's
disk): it is what makes a re-run safe.

**Configuration**, read when a task runs, never when the file is parsed (no I/O at parse time):

- Variable ``limio_renewals_root``: the files' root, an ``ObjectStoragePath`` URI; default
  ``file:///tmp/limio-backfill``. The storage connection goes in the URI (``s3://<aws_conn_id>@bucket/...``).
- Variable ``limio_ledger_path``: the order ledger's root (e.g. ``s3://aws_default@billing/limio-ledger``).
  Unset, the Limio connection's ``ledger_path`` extra is used, which is where other DAGs' orders are
  recorded too; with neither, the task fails before sending anything.
- Param ``dry_run`` (default false): preview every order and send nothing; the results say ``dry_run`` with
  each order's ``total_due``, and the ledger is not written.
- Param ``day``: see above.

Variables can come from the environment (``AIRFLOW_VAR_LIMIO_RENEWALS_ROOT``, ``AIRFLOW_VAR_LIMIO_LEDGER_PATH``).

Rehearse before the first real run, while the DAG is paused: Airflow runs no task of a paused DAG, and
unpausing starts the catch-up, which sends every day of the range for real, one day at a time. So rehearse
each day without a scheduler, read its results file, then unpause::

    airflow dags test limio_backfill_orders 2026-01-03 -c '{"dry_run": true}'
    airflow dags unpause limio_backfill_orders

To send days again later, give every setting: ``airflow backfill create`` keeps a re-processed run's old conf
unless told, and follows its own ``--max-active-runs`` (default 10), not this DAG's::

    airflow backfill create --dag-id limio_backfill_orders --from-date 2026-01-01 --to-date 2026-01-05 \\
        --reprocess-behavior completed --dag-run-conf '{"dry_run": false}' --max-active-runs 1
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.providers.common.compat.sdk import Param, dag

from limio_provider.operators import LimioSubmitOrdersOperator

#: That day's file. The day is the ``day`` param, else the logical date, else (a manual run without a logical
#: date) the ``run_after`` day: ``ds`` is not defined in such a run, so the template formats the dag run's own
#: dates with the ``ds`` filter. The results go next to it, as ``<day>.results.jsonl``.
ORDERS_PATH = (
    "{{ var.value.get('limio_renewals_root', 'file:///tmp/limio-backfill').rstrip('/') }}"
    "/renewals/{{ params.day or (dag_run.logical_date or dag_run.run_after) | ds }}.jsonl"
)
#: Empty when the Variable is unset: the operator then uses the Limio connection's ``ledger_path`` extra.
LEDGER_PATH = "{{ var.value.get('limio_ledger_path', '') }}"


@dag(
    dag_id="limio_backfill_orders",
    schedule="@daily",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    end_date=datetime(2026, 1, 5, tzinfo=UTC),
    catchup=True,
    max_active_runs=1,  # one day at a time, oldest first
    tags=["limio", "example"],
    params={
        "dry_run": Param(False, type="boolean", description="Preview every order and submit nothing"),
        "day": Param(
            None,
            type=["null", "string"],
            pattern=r"^\d{4}-\d{2}-\d{2}$",
            description="The day whose file to send (YYYY-MM-DD); default: the logical date, or the run_after day",
        ),
    },
    doc_md=__doc__,
)
def limio_backfill_orders() -> None:
    LimioSubmitOrdersOperator(
        task_id="submit_renewals",
        orders_path=ORDERS_PATH,
        ledger_path=LEDGER_PATH,
        dry_run="{{ params.dry_run }}",
        max_in_flight=4,
        max_failed=0,
    )


limio_backfill_orders()
