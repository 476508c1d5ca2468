"""The provider on the CeleryExecutor: PostgreSQL, Redis, two Celery workers, every Airflow service its own
process. A mapped submit and a deferrable wait as on the LocalExecutor; then a batch split across the two
workers, sharing one ledger, with one worker SIGKILLed mid-batch: every order exactly once."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from limio_provider.exactly_once.ledger import parse_record
from limio_provider.testing.faults import Fault
from tests.deploy.harness import AIRFLOW, RUN_SECONDS, wait_until
from tests.deploy.scenarios import deferrable_wait, mapped_submit, one_order, submits, task_process, unique

if TYPE_CHECKING:
    from limio_provider.testing.emulator import LimioEmulator
    from tests.deploy.conftest import Deployment
    from tests.deploy.harness import Service

pytestmark = pytest.mark.deploy

#: Airflow fails a task whose worker stopped heartbeating after this many seconds (the deployment's setting),
#: then retries it on a live worker.
HEARTBEAT_TIMEOUT = 30


def test_mapped_submit_on_celery(celery: Deployment, emulator: LimioEmulator) -> None:
    mapped_submit(celery, emulator)


def test_deferrable_wait_on_celery(celery: Deployment, emulator: LimioEmulator) -> None:
    deferrable_wait(celery, emulator)


def test_backfill_example_rehearsed_then_backfilled_as_the_docs_say(
    celery: Deployment, emulator: LimioEmulator, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """docs/examples.md's commands, as written: a rehearsal with ``airflow dags test -c '{"dry_run": true}'``
    while the DAG is paused sends nothing; ``airflow backfill create ... --reprocess-behavior completed
    --dag-run-conf '{"dry_run": false}' --max-active-runs 1`` then sends every order of every day once (the
    rehearsed day too: its run is reused with the new conf), one run at a time, oldest first; the same command
    again adopts every order and sends none. On PostgreSQL: on SQLite the CLI's writes meet the scheduler's
    and fail now and then with "database is locked"."""
    from limio_provider.testing import sample_order

    api, dag_id, prefix = celery.api, "limio_backfill_orders", unique("bf")
    days = ["2026-01-01", "2026-01-02", "2026-01-03"]
    root, ledger = tmp_path_factory.mktemp("backfill-renewals"), tmp_path_factory.mktemp("backfill-ledger")
    (root / "renewals").mkdir()
    ids = {day: [f"{prefix}-{day}-{n}" for n in (1, 2)] for day in days}
    for day in days:
        lines = [json.dumps(sample_order(external_id)) for external_id in ids[day]]
        (root / "renewals" / f"{day}.jsonl").write_text("\n".join(lines) + "\n")
    api.set_variable("limio_renewals_root", root.as_uri())
    api.set_variable("limio_ledger_path", ledger.as_uri())
    every_id = [external_id for day in days for external_id in ids[day]]

    api.send("PATCH", f"dags/{dag_id}", {"is_paused": True})
    try:
        # -B: this deployment has two bundles (a single dags folder needs none).
        rehearse = [*AIRFLOW, "dags", "test", dag_id, days[0], "-c", '{"dry_run": true}', "-B", "examples"]
        celery.processes.run("rehearsal", rehearse)
        rehearsal_file = root / "renewals" / f"{days[0]}.results.dry-run.jsonl"  # never the real run's file
        rehearsed = [json.loads(line) for line in rehearsal_file.read_text().splitlines()]
        assert [line["outcome"] for line in rehearsed] == ["dry_run", "dry_run"], rehearsed
        assert not (root / "renewals" / f"{days[0]}.results.jsonl").exists()
        assert all(submits(emulator, external_id) == [] for external_id in every_id)
        assert not any(ledger.rglob("*.json")), "a rehearsal wrote to the ledger"
    finally:
        api.send("PATCH", f"dags/{dag_id}", {"is_paused": False})

    backfill = [
        *AIRFLOW, "backfill", "create", "--dag-id", dag_id, "--from-date", days[0], "--to-date", days[-1],
        "--reprocess-behavior", "completed", "--dag-run-conf", '{"dry_run": false}', "--max-active-runs", "1",
    ]  # fmt: skip
    for attempt in ("backfill", "backfill-again"):
        started = time.time()
        celery.processes.run(attempt, backfill)

        def runs(since: float = started) -> list[dict] | None:
            found = [
                run
                for run in api.get(f"dags/{dag_id}/dagRuns", limit=100, order_by="logical_date")["dag_runs"]
                if run["run_type"] == "backfill" and (run["logical_date"] or "")[:10] in days
            ]
            finished = len(found) == len(days) and all(run["state"] in ("success", "failed") for run in found)
            return found if finished and all(_at(run["end_date"]) >= since for run in found) else None

        found = wait_until(
            f"{attempt}: {len(days)} backfill runs to finish", runs, 3 * RUN_SECONDS, 1.0, celery.processes.tails
        )
        assert [run["state"] for run in found] == ["success"] * len(days), found
        assert [run["logical_date"][:10] for run in found] == days
        assert all(run["conf"].get("dry_run") is False for run in found), [run["conf"] for run in found]
        for earlier, later in zip(found, found[1:], strict=False):  # --max-active-runs 1: one day at a time
            assert _at(earlier["end_date"]) <= _at(later["start_date"]), (earlier, later)
        for run, day in zip(found, days, strict=True):
            summary = api.xcom(dag_id, run["dag_run_id"], "submit_renewals")
            # The same runs both times (reprocessed): their orders stay "submitted"; the second time, each row
            # says this try adopted it.
            assert {k: v for k, v in summary["counts"].items() if v} == {"submitted": 2}, (day, summary)
            rows = [json.loads(line) for line in (root / "renewals" / f"{day}.results.jsonl").read_text().splitlines()]
            this_try = {row.get("this_try") for row in rows}
            assert this_try == ({None} if attempt == "backfill" else {"adopted"}), (day, rows)
        if attempt == "backfill":
            # One backfill per DAG at a time: the next is refused until the scheduler marks this one complete
            # (it looks every 30 s).
            wait_until(
                "the scheduler to mark the backfill complete",
                lambda: all(b["completed_at"] for b in api.get("backfills", dag_id=dag_id)["backfills"]),
                RUN_SECONDS,
                1.0,
                celery.processes.tails,
            )
        # Every order once in Limio and once on the wire, however many times the days ran.
        for external_id in every_id:
            one_order(emulator, external_id)
            assert len(submits(emulator, external_id)) == 1, external_id


def test_a_worker_frozen_mid_batch_past_the_heartbeat_timeout_then_resumed_sends_nothing_more(
    celery: Deployment, emulator: LimioEmulator, tmp_path: Path
) -> None:
    """Issue 17, scenario 7: the worker running chunk 0 has its whole process tree frozen (SIGSTOP: the worker,
    its pool, the task supervisor and the task process, each in its own group) with orders in flight. Airflow
    fails the try once its heartbeat stops for HEARTBEAT_TIMEOUT and retries it on the other worker; while that
    retry runs, the frozen tree resumes (SIGCONT). The resumed try must send nothing more and leave the retry's
    results file alone: one order and one submit per external_id, every order in chunk 0's final results."""
    api, dag_id, prefix, size = celery.api, "deploy_batch_two_workers", unique("frozen"), 12
    ledger, results = tmp_path / "ledger", tmp_path / "results"
    results.mkdir()
    chunks = [[f"{prefix}-c{c}-{i}" for i in range(size)] for c in (0, 1)]
    emulator.add_fault(Fault(route="order", action="latency_only", latency=1.0))  # orders in flight when it freezes
    workers = [s for s in celery.processes.services if s.name.startswith("celery-worker-")]
    frozen: list[Any] = []
    try:
        params = {"prefix": prefix, "size": size, "shared": 0, "ledger_path": f"file://{ledger}"}
        run_id = api.trigger(dag_id, {**params, "results_root": f"file://{results}"})
        seen: dict[int, str] = {}

        def chunk_0_sending() -> bool:
            for ti in api.task_instances(dag_id, run_id):
                if ti["task_id"] == "submit_batch" and ti["state"] == "running" and ti["map_index"] not in seen:
                    process = task_process(ti["id"])
                    owner = _worker_of(process.pid, workers) if process is not None else None
                    if owner is not None:
                        seen[ti["map_index"]] = owner.name
            return 0 in seen and sum(bool(submits(emulator, e)) for e in chunks[0]) >= 3

        wait_until("chunk 0 to have sent 3 orders", chunk_0_sending, 120, 0.2, lambda: api.diagnose(dag_id, run_id))
        victim = next(s for s in workers if s.name == seen[0])
        frozen = victim.family()
        for process in frozen:
            process.suspend()
        frozen_at, sent_when_frozen = time.monotonic(), sum(bool(submits(emulator, e)) for e in chunks[0])

        def retried_and_running() -> bool:
            ti = api.ti(dag_id, run_id, "submit_batch", 0)
            return ti["try_number"] == 2 and ti["state"] == "running"

        wait_until(
            "chunk 0's retry to run on the other worker",
            retried_and_running,
            HEARTBEAT_TIMEOUT + 120,
            0.5,
            lambda: api.diagnose(dag_id, run_id),
        )
        retried_in = time.monotonic() - frozen_at
        for process in frozen:
            process.resume()
        state = api.wait_run(dag_id, run_id, timeout=RUN_SECONDS)
    finally:
        for process in frozen:
            try:
                process.resume()
            except Exception:  # noqa: BLE001 - gone: nothing to resume
                pass
        emulator.clear_faults()
    print(f"froze chunk 0 after {sent_when_frozen} of its orders were sent; its retry ran {retried_in:.0f} s later")

    for external_id in {*chunks[0], *chunks[1]}:
        assert len(submits(emulator, external_id)) == 1, f"{external_id}: {len(submits(emulator, external_id))} submits"
        one_order(emulator, external_id)
    assert state == "success", api.diagnose(dag_id, run_id)
    assert retried_in >= HEARTBEAT_TIMEOUT - 5, retried_in  # the retry came from the heartbeat timeout
    first = api.ti(dag_id, run_id, "submit_batch", 0)
    assert first["state"] == "success" and first["try_number"] == 2, first
    lines = [json.loads(line) for line in (results / "chunk-0.results.jsonl").read_text().splitlines()]
    assert sorted(line["external_id"] for line in lines) == sorted(chunks[0]), lines
    assert {line["outcome"] for line in lines} <= {"submitted", "adopted"}, lines
    for line in lines:
        assert line["order_id"] == one_order(emulator, line["external_id"])["id"], line
    records = [parse_record(path.read_bytes()) for path in ledger.rglob("*.json")]
    assert {r["state"] for r in records} == {"done"} and len(records) == 2 * size, records
    assert all(victim.alive() for victim in workers), "a worker did not survive its freeze"


def test_batch_across_two_workers_one_killed_mid_batch_every_order_once(
    celery: Deployment, emulator: LimioEmulator, tmp_path: Path
) -> None:
    """Last in this module: it leaves one worker."""
    api, dag_id, prefix, size, shared = celery.api, "deploy_batch_two_workers", unique("batch"), 10, 4
    ledger, results = tmp_path / "ledger", tmp_path / "results"
    results.mkdir()
    chunks = [
        [f"{prefix}-c0-{i}" for i in range(size)] + [f"{prefix}-shared-{i}" for i in range(shared)],
        [f"{prefix}-shared-{i}" for i in range(shared)] + [f"{prefix}-c1-{i}" for i in range(size)],
    ]
    hung = [f"{prefix}-c0-5", f"{prefix}-c0-6"]
    # First matching fault wins: chunk 0's sixth and seventh orders are created and then never answered, so
    # both its request slots hang (max_in_flight=2) and its worker dies waiting; the orders it has claimed are
    # at most two more of its own (it works on twice as many orders as slots), never a shared one. Were chunk 0
    # to die holding a shared order's claim, chunk 1 would wait for it (ledger_wait_timeout) on the surviving
    # worker's only slot, which chunk 0's retry needs: the waiter, not the order, would be stuck (docs/production.md).
    # Every other submit is answered late, so chunk 1 is still running when the worker dies.
    for external_id in hung:
        emulator.add_fault(
            Fault(route="order", action="process_then_hang", latency=150, external_id=external_id, times=1)
        )
    emulator.add_fault(Fault(route="order", action="latency_only", latency=0.4))
    workers = [s for s in celery.processes.services if s.name.startswith("celery-worker-")]
    try:
        run_id = api.trigger(
            dag_id,
            {
                "prefix": prefix,
                "size": size,
                "shared": shared,
                "ledger_path": f"file://{ledger}",
                "results_root": f"file://{results}",
            },
        )
        seen: dict[int, str] = {}  # map index -> the worker whose process tree ran it

        def chunk_0_hung() -> bool:
            for ti in api.task_instances(dag_id, run_id):
                if ti["task_id"] == "submit_batch" and ti["state"] == "running" and ti["map_index"] not in seen:
                    process = task_process(ti["id"])
                    owner = _worker_of(process.pid, workers) if process is not None else None
                    if owner is not None:
                        seen[ti["map_index"]] = owner.name
            return 0 in seen and all(emulator.orders_with_external_id(external_id) for external_id in hung)

        wait_until(
            "chunk 0 to hang on its sixth and seventh orders",
            chunk_0_hung,
            120,
            0.2,
            lambda: api.diagnose(dag_id, run_id),
        )
        # Chunk 1 must be running on the other worker (it is slowed down: it cannot have finished yet).
        wait_until("chunk 1 to be seen on a worker", lambda: chunk_0_hung() and 1 in seen, 30, 0.2, lambda: str(seen))
        assert seen[0] != seen[1], f"both chunks ran on {seen[0]}: the batch was not split across the workers"
        victim = next(s for s in workers if s.name == seen[0])
        killed = celery.processes.kill(victim)  # the worker, its pool, the supervisor and the task: SIGKILL
        killed_at = time.monotonic()
        assert not victim.alive() and killed

        state = api.wait_run(dag_id, run_id, timeout=HEARTBEAT_TIMEOUT + 150)
        recovered_in = time.monotonic() - killed_at
    finally:
        emulator.clear_faults()

    # Never twice, whatever the outcome: at most one submit on the wire and one order per external_id.
    for external_id in {*chunks[0], *chunks[1]}:
        assert len(submits(emulator, external_id)) <= 1, f"{external_id} was submitted more than once"
        assert len(emulator.orders_with_external_id(external_id)) <= 1, external_id
    assert state == "success", api.diagnose(dag_id, run_id)

    first, second = api.ti(dag_id, run_id, "submit_batch", 0), api.ti(dag_id, run_id, "submit_batch", 1)
    assert first["state"] == "success" and first["try_number"] == 2, first  # retried on the surviving worker
    assert second["state"] == "success" and second["try_number"] == 1, second
    assert recovered_in < HEARTBEAT_TIMEOUT + 120, recovered_in  # not Airflow's default 300 s

    # Every order exactly once: one order in Limio and one submit on the wire per external_id.
    for external_id in {*chunks[0], *chunks[1]}:
        one_order(emulator, external_id)
        assert len(submits(emulator, external_id)) == 1, f"{external_id} was submitted more than once"

    # What each chunk says: chunk 0's retry adopted what its dead try had done (the hung orders included, found
    # by external_id) and sent the rest; nothing failed; one result line per order.
    for index, external_ids in enumerate(chunks):
        summary = api.xcom(dag_id, run_id, "submit_batch", map_index=index)
        assert summary["total"] == len(external_ids) and summary["failures"] == 0, summary
        lines = [json.loads(line) for line in (results / f"chunk-{index}.results.jsonl").read_text().splitlines()]
        assert sorted(line["external_id"] for line in lines) == sorted(external_ids), lines
        outcomes = {line["external_id"]: line["outcome"] for line in lines}
        assert set(outcomes.values()) <= {"submitted", "adopted"}, outcomes
        for line in lines:
            assert line["order_id"] == one_order(emulator, line["external_id"])["id"], line
        if index == 0:  # the frozen try sent them; the try that took over found them: this task's, adopted now
            this_try = {line["external_id"]: line.get("this_try") for line in lines}
            assert all(outcomes[external_id] == "submitted" for external_id in hung), outcomes
            assert all(this_try[external_id] == "adopted" for external_id in hung), this_try
    # The ledger both workers shared: one record per order, every one done.
    records = [parse_record(path.read_bytes()) for path in ledger.rglob("*.json")]
    assert sorted(r["external_id"] for r in records) == sorted({*chunks[0], *chunks[1]}), records
    assert {r["state"] for r in records} == {"done"}, records


def _worker_of(pid: int, workers: list[Service]) -> Service | None:
    """The Celery worker whose process tree holds ``pid``."""
    for worker in workers:
        if pid in {process.pid for process in worker.family()}:
            return worker
    return None


def _at(timestamp: str) -> float:
    """An API timestamp in seconds since the epoch."""
    from datetime import datetime

    return datetime.fromisoformat(timestamp).timestamp()
