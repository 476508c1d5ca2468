"""The batch submit, run with dag.test() against the emulator (with faults) and a local order ledger."""

from __future__ import annotations

import gzip
import json
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG, task

from limio_provider.exactly_once.ledger import parse_record
from limio_provider.links.limio import LimioResultsFileLink
from limio_provider.operators import LimioSubmitOrdersOperator
from limio_provider.testing import Fault, LimioEmulator
from tests.helpers import START, calls, in_use, limio_tenant, new_order, run_dag, states, xcom

pytestmark = pytest.mark.usefixtures("airflow_db")
FAST = {"timeout": 2.0, "retry_backoff": 0.01}
ORDER_POSTS, LIST_READS = "/api/order", "/api/objects/limio/orders"


@pytest.fixture
def ledger_root(tmp_path: Path) -> str:
    return in_use(f"file://{tmp_path}/ledger")


def orders(prefix: str, count: int, **fields: Any) -> list[dict[str, Any]]:
    return [new_order(f"{prefix}-{n}", **fields) for n in range(count)]


def write_jsonl(path: Path, lines: list[Any]) -> str:
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return f"file://{path}"


def batch_dag(dag_id: str, ledger_root: str, **kwargs: Any) -> DAG:
    with DAG(dag_id, schedule=None, start_date=START) as dag:
        LimioSubmitOrdersOperator(task_id="submit", ledger_path=ledger_root, **{"hook_params": FAST, **kwargs})
    return dag


def results(uri: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(uri.removeprefix("file://")).read_text().splitlines()]


def summary_of(run: Any) -> dict[str, Any]:
    (summary,) = xcom(run, "submit")
    return summary


def assert_each_order_once(emulator: LimioEmulator, rows: list[dict[str, Any]]) -> None:
    """Every submitted or adopted order is in Limio exactly once, as reported; an unknown one is not there."""
    for row in rows:
        found = emulator.orders_with_external_id(row["external_id"])
        if row["outcome"] in ("submitted", "adopted"):
            assert [order["id"] for order in found] == [row["order_id"]], row
        else:
            assert found == [], row


# -- input: an upstream XCom list, a .jsonl file, a .jsonl.gz file --------------------------------------


def test_a_list_of_orders_from_an_upstream_task(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path
) -> None:
    results_uri = f"file://{tmp_path}/out/list.results.jsonl"
    with DAG("limio_batch_list", schedule=None, start_date=START) as dag:

        @task
        def make_orders() -> list[dict[str, Any]]:
            unnamed = new_order()
            del unnamed["external_id"]  # gets a derived external_id, as the single-order submit gives it
            return [*orders("LIST", 4), unnamed]

        LimioSubmitOrdersOperator(
            task_id="submit", orders=make_orders(), results_path=results_uri, ledger_path=ledger_root, hook_params=FAST
        )
    run = run_dag(dag)
    assert run.state == "success", states(run)
    summary = summary_of(run)
    assert summary["counts"]["submitted"] == 5 and summary["failures"] == 0
    assert summary["results_path"] == results_uri
    assert xcom(run, "submit", LimioResultsFileLink.key) == []  # a local file: no link a browser would follow
    rows = results(results_uri)
    assert sorted(row["index"] for row in rows) == [0, 1, 2, 3, 4]
    assert {row["outcome"] for row in rows} == {"submitted"}
    derived = next(row for row in rows if row["index"] == 4)["external_id"]
    assert derived.startswith("airflow-")
    assert_each_order_once(limio_emulator, rows)
    assert len(calls(limio_emulator, ORDER_POSTS)) == 5


@pytest.mark.parametrize("name", ["renewals.jsonl", "renewals.jsonl.gz"])
def test_a_json_lines_file_plain_or_gzipped(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path, name: str
) -> None:
    uri = write_jsonl(tmp_path / name, [*orders("FILE", 3)[:2], "", orders("FILE", 3)[2]])  # a blank line
    run = run_dag(batch_dag(f"limio_batch_{name.replace('.', '_')}", ledger_root, orders_path=uri))
    assert run.state == "success", states(run)
    results_uri = f"file://{tmp_path}/renewals.results.jsonl"  # next to the input by default
    assert summary_of(run)["results_path"] == results_uri
    rows = results(results_uri)
    assert sorted(row["line"] for row in rows) == [1, 2, 4]
    assert {row["outcome"] for row in rows} == {"submitted"}
    assert_each_order_once(limio_emulator, rows)


# -- validation: before the first request -------------------------------------------------------------


def test_an_invalid_order_refuses_the_batch_naming_line_and_field_before_any_request(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path, task_log: Callable[[], str]
) -> None:
    bad = new_order("BAD-1", orderItems=[{"offer": {}, "quantity": 1}])
    uri = write_jsonl(tmp_path / "orders.jsonl", [*orders("OK", 2), bad, "{not json", orders("OK", 3)[2]])
    run = run_dag(batch_dag("limio_batch_invalid", ledger_root, orders_path=uri))
    assert states(run)["submit"] == "failed"
    assert limio_emulator.requests == []
    output = task_log()
    assert "2 of 5 orders are invalid; nothing was sent" in output
    assert "line 3: invalid 'new' order: orderItems[0].offer.id: Field required" in output
    assert "line 4: not a JSON object" in output
    assert not (tmp_path / "orders.results.jsonl").exists()


def test_on_invalid_skip_sends_the_valid_ones_and_counts_the_invalid(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path
) -> None:
    bad = new_order("BAD-2", order_type="no_such_type")
    lines = [orders("SKIP", 1)[0], bad, orders("SKIP", 2)[1], "not json"]
    uri = write_jsonl(tmp_path / "orders.jsonl", lines)
    run = run_dag(batch_dag("limio_batch_skip", ledger_root, orders_path=uri, on_invalid="skip", max_failed=2))
    assert run.state == "success", states(run)
    summary = summary_of(run)
    assert (summary["counts"]["submitted"], summary["counts"]["invalid"], summary["failures"]) == (2, 2, 2)
    # A line without an external_id is shown without one, not as the string "None" (issue 18).
    assert [f["external_id"] for f in summary["first_failures"]] == ["BAD-2", None]
    rows = {row["line"]: row for row in results(f"file://{tmp_path}/orders.results.jsonl")}
    assert rows[2]["outcome"] == "invalid" and rows[2]["external_id"] == "BAD-2"
    assert "order_type" in rows[2]["error"]
    assert [r.body["external_id"] for r in calls(limio_emulator, ORDER_POSTS)].count("BAD-2") == 0


def test_without_a_ledger_the_batch_fails_before_any_request_saying_how_to_configure_one(
    limio_emulator: LimioEmulator, tmp_path: Path, task_log: Callable[[], str]
) -> None:
    with DAG("limio_batch_no_ledger", schedule=None, start_date=START) as dag:
        LimioSubmitOrdersOperator(task_id="submit", orders=orders("NL", 2), results_path=f"file://{tmp_path}/r.jsonl")
    run = run_dag(dag)
    assert states(run)["submit"] == "failed"
    assert limio_emulator.requests == []
    output = task_log()
    assert "LimioConfigError" in output and "needs an order ledger" in output and "ledger_path extra" in output


# -- exactly once: re-runs, retries, faults ------------------------------------------------------------


@pytest.mark.parametrize("backend", ["local", "s3"])
@pytest.mark.parametrize("how", ["moved", "wiped"])
def test_a_rerun_on_a_new_or_wiped_ledger_looks_up_work_older_than_it_and_sends_nothing_again(
    limio_emulator: LimioEmulator, tmp_path: Path, how: str, backend: str, request: pytest.FixtureRequest
) -> None:
    """Issue 17, scenario 3: 20 orders sent through a ledger, then the ledger moved to a new root (as from
    file:// to s3://) or its prefix wiped. The re-run's ledger knows nothing, and is younger than the work: each
    order is looked up in Limio before its first send and adopted; none is sent twice."""
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    base = f"file://{tmp_path}" if backend == "local" else request.getfixturevalue("s3_ledger_root").rsplit("/", 1)[0]
    uri = write_jsonl(tmp_path / "orders.jsonl", orders("MOVED", 20))
    first_root = f"{base}/ledger-a"  # a new ledger: its first run looks each order up, and finds none
    first = run_dag(batch_dag("limio_batch_moved_1", first_root, orders_path=uri))
    assert first.state == "success", states(first)
    assert summary_of(first)["counts"]["submitted"] == 20
    if how == "wiped":
        old = ObjectStoragePath(first_root)
        old.fs.rm(old.path, recursive=True)
        assert not old.fs.exists(old.path)
    second_root = first_root if how == "wiped" else f"{base}/ledger-b"
    before = len(limio_emulator.requests)
    second = run_dag(batch_dag("limio_batch_moved_2", second_root, orders_path=uri))
    assert second.state == "success", states(second)
    assert summary_of(second)["counts"]["adopted"] == 20
    assert not [r for r in limio_emulator.requests[before:] if r.path == ORDER_POSTS]
    assert len([r for r in limio_emulator.requests[before:] if r.path == LIST_READS]) >= 20
    for n in range(20):
        assert len(limio_emulator.orders_with_external_id(f"MOVED-{n}")) == 1
    note = json.loads((ObjectStoragePath(second_root) / limio_tenant(limio_emulator) / ".ledger").read_text())
    assert note["since"] > START.isoformat()  # "since now": the work (logical date START) is older


def test_a_ledger_started_before_the_work_does_not_look_up_a_first_send(
    limio_emulator: LimioEmulator, tmp_path: Path
) -> None:
    """A ledger said to hold everything since before the work (start_ledger): a first send is not looked up."""
    from limio_provider.exactly_once.ledger import start_ledger

    root = f"file://{tmp_path}/ledger"
    start_ledger(root, START - timedelta(days=1))
    run = run_dag(batch_dag("limio_batch_started", root, orders=orders("STARTED", 3), results_path=f"{root}.jsonl"))
    assert run.state == "success", states(run)
    assert not calls(limio_emulator, LIST_READS)
    assert summary_of(run)["counts"]["submitted"] == 3


def test_a_rerun_of_a_completed_batch_adopts_everything_without_calling_limio(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path
) -> None:
    uri = write_jsonl(tmp_path / "orders.jsonl", orders("RERUN", 12))
    first = run_dag(batch_dag("limio_batch_rerun_1", ledger_root, orders_path=uri))
    assert first.state == "success", states(first)
    created = {row["external_id"]: row["order_id"] for row in results(f"file://{tmp_path}/orders.results.jsonl")}
    before = len(limio_emulator.requests)
    second = run_dag(batch_dag("limio_batch_rerun_2", ledger_root, orders_path=uri))
    assert second.state == "success", states(second)
    after = limio_emulator.requests[before:]
    assert [r for r in after if r.path in (ORDER_POSTS, LIST_READS)] == []  # 0 order POSTs, 0 list reads
    assert after == []  # not even a token: a ledger hit calls Limio for nothing
    assert summary_of(second)["counts"]["adopted"] == 12
    rows = results(f"file://{tmp_path}/orders.results.jsonl")
    assert {row["external_id"]: row["order_id"] for row in rows} == created
    # Read from the ledger, not from Limio now: each status says when Limio gave it (issue 18).
    assert all(row["status"] == "submitted" and row["status_at"].endswith("Z") for row in rows), rows[0]
    assert_each_order_once(limio_emulator, rows)


def test_a_retried_batch_adopts_what_is_done_and_reconciles_what_is_unknown_never_resending(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path, task_log: Callable[[], str]
) -> None:
    limio_emulator.add_fault(Fault(route="order", action="process_then_status", status=502, times=3))
    limio_emulator.add_fault(Fault(route="list_orders", action="status", status=400, times=3))  # try 1 cannot look
    uri = write_jsonl(tmp_path / "orders.jsonl", orders("RETRY", 10))
    dag = batch_dag("limio_batch_retry", ledger_root, orders_path=uri, retries=1, retry_delay=timedelta(0))
    run = run_dag(dag)
    assert run.state == "success", states(run)
    rows = results(f"file://{tmp_path}/orders.results.jsonl")  # try 2's
    # Try 1 sent them all: they stay "submitted" for this task instance; try 2 found them (issue 18: a re-run
    # rewrote submitted rows as adopted).
    assert Counter((row["outcome"], row.get("this_try")) for row in rows) == {("submitted", "adopted"): 10}
    assert_each_order_once(limio_emulator, rows)
    assert len(calls(limio_emulator, ORDER_POSTS)) == 10  # each sent once, by try 1; try 2 sent nothing
    # Try 1 could not look the three up: unknown (Limio may hold them), not refused by the look-up's 400.
    assert '"submitted": 7, "adopted": 0, "refused": 0, "unknown": 3' in task_log()


def test_an_external_id_repeated_in_the_batch_is_sent_once(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path
) -> None:
    limio_emulator.add_fault(Fault(route="order", action="latency_only", latency=0.2))  # all three in flight at once
    run = run_dag(
        batch_dag(
            "limio_batch_twice",
            ledger_root,
            orders=[new_order("TWICE")] * 3,
            max_in_flight=3,
            results_path=f"file://{tmp_path}/twice.results.jsonl",
        )
    )
    assert run.state == "success", states(run)
    (order,) = limio_emulator.orders_with_external_id("TWICE")
    assert len(calls(limio_emulator, ORDER_POSTS)) == 1
    rows = results(f"file://{tmp_path}/twice.results.jsonl")
    assert [row["order_id"] for row in rows] == [order["id"]] * 3
    assert sorted(row["outcome"] for row in rows) == ["adopted", "adopted", "submitted"]


def test_faults_give_each_order_at_most_once_and_fail_the_task_at_the_end_with_the_summary(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path, task_log: Callable[[], str]
) -> None:
    limio_emulator.add_fault(Fault(route="order", action="process_then_status", status=502, probability=0.2, seed=1))
    limio_emulator.add_fault(Fault(route="order", action="drop", probability=0.1, seed=2))
    limio_emulator.add_fault(
        Fault(route="order", action="status", status=429, retry_after=0.1, probability=0.1, seed=3)
    )
    uri = write_jsonl(tmp_path / "orders.jsonl", orders("FAULT", 40))
    run = run_dag(batch_dag("limio_batch_faults", ledger_root, orders_path=uri))
    assert states(run)["submit"] == "failed"
    rows = results(f"file://{tmp_path}/orders.results.jsonl")
    assert len(rows) == 40  # every order reported, though the task failed
    outcomes = Counter(row["outcome"] for row in rows)
    assert outcomes["unknown"] > 0 and outcomes["submitted"] > 0 and set(outcomes) == {"unknown", "submitted"}
    assert_each_order_once(limio_emulator, rows)  # the 502s were found and reported submitted; drops unknown
    statuses = Counter(r.status for r in calls(limio_emulator, ORDER_POSTS))
    assert statuses[None] == outcomes["unknown"] and statuses[502] > 0 and statuses[429] > 0
    summary = summary_of(run)  # pushed before failing
    assert summary["counts"]["unknown"] == outcomes["unknown"] and summary["failures"] == outcomes["unknown"]
    output = task_log()
    assert f"{outcomes['unknown']} of 40 orders were not submitted (unknown {outcomes['unknown']})" in output
    assert '"counts": {"submitted": ' in output  # the summary is in the error
    assert "Progress: 40/40 orders done" in output


def test_max_failed_tolerates_failures(limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path) -> None:
    limio_emulator.add_fault(Fault(route="order", action="drop", times=2))
    limio_emulator.add_fault(Fault(route="order", action="status", status=400, message="bad offer", times=1))
    uri = write_jsonl(tmp_path / "orders.jsonl", orders("TOL", 8))
    run = run_dag(batch_dag("limio_batch_tolerate", ledger_root, orders_path=uri, max_failed=3))
    assert run.state == "success", states(run)
    summary = summary_of(run)
    counts = summary["counts"]
    assert (counts["submitted"], counts["unknown"], counts["refused"], summary["failures"]) == (5, 2, 1, 3)
    assert {f["outcome"] for f in summary["first_failures"]} <= {"unknown", "refused"}
    rows = results(f"file://{tmp_path}/orders.results.jsonl")
    refused = next(row for row in rows if row["outcome"] == "refused")
    assert "bad offer" in refused["error"]
    assert_each_order_once(limio_emulator, rows)


# -- admin orders, dry runs, preview checks --------------------------------------------------------------


def test_partner_sends_every_order_to_admin_order(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path
) -> None:
    run = run_dag(
        batch_dag(
            "limio_batch_partner",
            ledger_root,
            orders=orders("ADM", 3),
            partner="partner-org-1",
            limio_conn_id="limio_admin",  # management credentials: only they may use /admin/order
            results_path=f"file://{tmp_path}/admin.results.jsonl",
        )
    )
    assert run.state == "success", states(run)
    admin = calls(limio_emulator, "/api/admin/order")
    assert sorted(r.body["external_id"] for r in admin) == ["ADM-0", "ADM-1", "ADM-2"]
    assert {json.dumps(r.body["forPartner"]) for r in admin} == {'{"id": "partner-org-1"}'}
    assert calls(limio_emulator, ORDER_POSTS) == []


def test_a_batch_with_its_results_on_s3_links_to_them_in_the_s3_console(
    limio_emulator: LimioEmulator, s3_ledger_root: str
) -> None:
    results_uri = s3_ledger_root.removesuffix("/ledger") + "/out/day 1.results.jsonl"
    run = run_dag(batch_dag("limio_batch_s3_link", s3_ledger_root, orders=orders("S3L", 2), results_path=results_uri))
    assert run.state == "success", states(run)
    bucket = results_uri.split("@", 1)[1].split("/", 1)[0]
    console = f"https://s3.console.aws.amazon.com/s3/object/{bucket}?prefix=out%2Fday%201.results.jsonl"
    assert xcom(run, "submit", LimioResultsFileLink.key) == [console]


def test_dry_run_previews_each_order_and_sends_nothing(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path, task_log: Callable[[], str]
) -> None:
    task_log()

    def check(preview: Any) -> bool | str:
        return True if preview.total_due() < 30 else "too dear"

    dear = new_order("DRY-DEAR", orderItems=[{"offer": {"id": "offer-digital-monthly"}, "quantity": 2}])
    batch = [*orders("DRY", 2), dear]
    run = run_dag(
        batch_dag(
            "limio_batch_dry",
            ledger_root,
            orders=batch,
            dry_run=True,
            preview_check=check,
            max_failed=1,
            results_path=f"file://{tmp_path}/dry.results.jsonl",
        )
    )
    assert run.state == "success", states(run)
    assert not (tmp_path / "dry.results.jsonl").exists()  # the real run's results file: never a dry run's
    rows = {row["external_id"]: row for row in results(f"file://{tmp_path}/dry.results.dry-run.jsonl")}
    assert rows["DRY-0"]["outcome"] == rows["DRY-1"]["outcome"] == "dry_run"
    assert rows["DRY-0"]["total_due"] == "19.99"
    assert rows["DRY-DEAR"]["outcome"] == "refused" and "too dear" in rows["DRY-DEAR"]["error"]
    assert len(calls(limio_emulator, "/api/order/preview")) == 3
    assert calls(limio_emulator, ORDER_POSTS) == []
    assert not list(Path(ledger_root.removeprefix("file://")).rglob("*.json"))  # a dry run claims nothing
    assert "previewing them, 8 at a time, through POST /order/preview" in task_log()  # issue 18: not POST /order


# -- throughput: concurrency, shared backoff, rate, a big batch ------------------------------------------


def most_within(times: list[float], window: float) -> int:
    """The most of ``times`` that fall within one ``window`` of seconds."""
    times = sorted(times)
    return max(sum(1 for t in times[i:] if t - start < window) for i, start in enumerate(times))


def test_max_in_flight_runs_submits_concurrently(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path
) -> None:
    limio_emulator.add_fault(Fault(route="order", action="latency_only", latency=0.2))
    run = run_dag(
        batch_dag(
            "limio_batch_concurrent",
            ledger_root,
            orders=orders("CONC", 40),
            max_in_flight=8,
            results_path=f"file://{tmp_path}/conc.results.jsonl",
        )
    )
    assert run.state == "success", states(run)
    received = [r.received_at for r in calls(limio_emulator, ORDER_POSTS)]
    assert len(received) == 40
    assert most_within(received, 0.2) >= 5  # each answer takes 0.2 s: these were in flight together
    # More orders than that are worked on at once (ledger writes overlap requests); never more requests.
    assert most_within(received, 0.19) <= 8
    assert max(received) - min(received) < 40 * 0.2 / 3  # far from one at a time
    assert summary_of(run)["counts"]["submitted"] == 40
    assert len(calls(limio_emulator, "/oauth2/token")) == 1  # one hook, one token, for every worker


def test_the_hook_pools_as_many_connections_as_orders_in_flight(limio_emulator: LimioEmulator, tmp_path: Path) -> None:
    operator = LimioSubmitOrdersOperator(
        task_id="submit", orders=[], results_path=f"file://{tmp_path}/r.jsonl", max_in_flight=12
    )
    adapter = operator.hook.session.get_adapter(limio_emulator.url)
    assert (adapter._pool_connections, adapter._pool_maxsize) == (12, 12)
    operator.hook.close()


def test_a_503_with_retry_after_pauses_the_whole_batch(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path
) -> None:
    limio_emulator.add_fault(Fault(route="order", action="status", status=503, retry_after=0.6, external_id="PAUSE-5"))
    limio_emulator.add_fault(Fault(route="order", action="latency_only", latency=0.02))  # orders keep coming
    run = run_dag(
        batch_dag(
            "limio_batch_503",
            ledger_root,
            orders=orders("PAUSE", 30),
            max_in_flight=4,
            results_path=f"file://{tmp_path}/pause.results.jsonl",
            hook_params={**FAST, "retry_limit": 1},
        )
    )
    posts = calls(limio_emulator, ORDER_POSTS)
    assert states(run)["submit"] == "failed"  # PAUSE-5 is refused twice: retries run out
    first_503 = min(r.received_at for r in posts if r.status == 503)
    during = [r for r in posts if first_503 + 0.2 < r.received_at < first_503 + 0.55]
    assert during == []  # nobody started a submit while the batch was paused
    rows = {row["external_id"]: row for row in results(f"file://{tmp_path}/pause.results.jsonl")}
    assert rows["PAUSE-5"]["outcome"] == "failed" and "503" in rows["PAUSE-5"]["error"]
    assert Counter(row["outcome"] for row in rows.values()) == {"submitted": 29, "failed": 1}


@pytest.mark.parametrize("retry_after", [True, False], ids=["retry-after", "no-retry-after"])
def test_a_rate_limited_batch_slows_down_instead_of_pausing(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path, retry_after: bool
) -> None:
    limio_emulator.set_rate_limit(40, burst=10, retry_after=retry_after)
    run = run_dag(
        batch_dag(
            "limio_batch_429",
            ledger_root,
            orders=orders("RL", 120),
            max_in_flight=16,
            results_path=f"file://{tmp_path}/rl.results.jsonl",
            # A 429 without Retry-After waits its own backoff: a realistic one (10 ms retries would meet the
            # empty bucket again and again, whatever the rate).
            hook_params={**FAST, "retry_backoff": 0.5, "retry_limit": 8},
        )
    )
    assert run.state == "success", states(run)
    rows = results(f"file://{tmp_path}/rl.results.jsonl")
    assert_each_order_once(limio_emulator, rows)
    posts = calls(limio_emulator, ORDER_POSTS)
    limited = [r.received_at for r in posts if r.status == 429]
    accepted = sorted(r.received_at for r in posts if r.status == 200)
    assert limited, "the batch never met the limit"
    # Slowed, not stopped: orders kept being accepted in the second after the first 429 (each 429'd request
    # waits its own Retry-After, 1 s), and fewer were refused than accepted (most 429s are the first second's,
    # before the first cut: 16 in flight against a bucket of 10).
    assert [t for t in accepted if limited[0] < t < limited[0] + 0.9]
    assert len(limited) < len(accepted)
    summary = summary_of(run)
    assert summary["rate"]["limited"] == len(limited) and 0 < summary["rate"]["requests_per_second"] < 60


def test_max_orders_per_second_spaces_the_submits(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 18: the spacing held where an order took its turn, so a stall between its turn and the wire (here
    a slow first token, and a ledger whose first "sent" writes take 0.35 s) released the orders queued behind
    it at once. It holds where the request leaves."""
    from limio_provider.exactly_once import ledger

    limio_emulator.add_fault(Fault(route="token", action="latency_only", latency=0.6, times=1))
    real_swap, slow = ledger._swap, iter(range(3))

    def stalling_swap(fs: Any, path: str, expected: Any, data: bytes, *, durable: bool) -> None:
        if b'"state": "sent"' in data and next(slow, None) is not None:
            time.sleep(0.35)
        real_swap(fs, path, expected, data, durable=durable)

    monkeypatch.setattr(ledger, "_swap", stalling_swap)
    run = run_dag(
        batch_dag(
            "limio_batch_rate",
            ledger_root,
            orders=orders("RATE", 6),
            max_orders_per_second=10,
            results_path=f"file://{tmp_path}/rate.results.jsonl",
        )
    )
    assert run.state == "success", states(run)
    received = sorted(r.received_at for r in calls(limio_emulator, ORDER_POSTS))
    assert received[-1] - received[0] >= 0.45  # 6 submits, 0.1 s apart
    assert most_within(received, 0.07) == 1  # spaced where they leave (30 ms for scheduling), whatever stalled


def test_the_summary_of_a_thousand_orders_is_under_2_kb(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path
) -> None:
    limio_emulator.add_fault(
        Fault(route="order", action="status", status=400, message="x" * 400, probability=0.05, seed=4)
    )
    path = tmp_path / ("long-name-" * 10 + "orders.jsonl.gz")
    uri = write_jsonl(path, orders("K" * 60, 1000))
    run = run_dag(batch_dag("limio_batch_1000", ledger_root, orders_path=uri, max_in_flight=16, max_failed=1000))
    assert run.state == "success", states(run)
    summary = summary_of(run)
    assert len(json.dumps(summary)) < 2048
    assert summary["total"] == 1000 and summary["counts"]["refused"] > 0
    assert summary["counts"]["submitted"] + summary["counts"]["refused"] == 1000
    assert summary["first_failures"] and summary["orders_per_second"] > 0
    assert len(limio_emulator.orders) == summary["counts"]["submitted"]


def test_an_order_is_recorded_sent_only_once_it_holds_an_in_flight_slot(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path
) -> None:
    """The batch works on twice as many orders as it has slots. One queueing for a slot must not be in the ledger
    as "sent": a task killed then would leave it "unknown" although it never left (found on Celery, a worker
    SIGKILLed mid-batch)."""
    import threading

    limio_emulator.add_fault(Fault(route="order", action="latency_only", latency=1.0, times=2))
    uri = write_jsonl(tmp_path / "orders.jsonl", orders("SLOT", 4))
    folder = Path(ledger_root.removeprefix("file://"))
    most_sent, done = 0, threading.Event()

    def watch() -> None:
        nonlocal most_sent
        while not done.is_set():
            states = []
            for path in folder.rglob("*.json"):
                try:
                    states.append((parse_record(path.read_bytes()) or {}).get("state"))
                except (OSError, ValueError):  # replaced while read
                    pass
            most_sent = max(most_sent, states.count("sent"))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        run = run_dag(batch_dag("limio_batch_slots", ledger_root, orders_path=uri, max_in_flight=1))
    finally:
        done.set()
        watcher.join()
    assert run.state == "success", states(run)
    assert most_sent == 1  # the order in flight; the one queueing behind it is still only "claimed"
    assert_each_order_once(limio_emulator, results(summary_of(run)["results_path"]))


# -- the batch never destroys or outruns its input (issue 18) ----------------------------------------------


@pytest.mark.parametrize("spelling", ["dot", "double-slash", "symlink"])
def test_a_results_path_naming_the_orders_file_another_way_is_refused_before_any_call(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path, spelling: str
) -> None:
    """Issue 18: ``file:///d/./orders.jsonl``, ``//`` or a symlink passed the string comparison; the results
    file was opened (truncated) over the orders, and the task succeeded with 0 of 5 orders sent."""
    orders_path = write_jsonl(tmp_path / "orders.jsonl", orders("SAME", 5))
    text = (tmp_path / "orders.jsonl").read_text()
    if spelling == "symlink":
        (tmp_path / "link.jsonl").symlink_to(tmp_path / "orders.jsonl")
        results_path = f"file://{tmp_path}/link.jsonl"
    else:
        results_path = f"file://{tmp_path}/./orders.jsonl" if spelling == "dot" else f"file://{tmp_path}//orders.jsonl"
    run = run_dag(batch_dag("limio_batch_same", ledger_root, orders_path=orders_path, results_path=results_path))
    assert states(run) == {"submit": "failed"}
    assert (tmp_path / "orders.jsonl").read_text() == text  # the orders, untouched
    assert [r.path for r in limio_emulator.requests if r.path != "/oauth2/token"] == []


@pytest.mark.parametrize("change", ["truncated", "rewritten", "grown"])
def test_an_orders_file_changed_after_validation_stops_the_batch_naming_the_change(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """Issue 18: the sending pass never checked that it read what the validation pass validated. The file is
    changed between the two passes: nothing the validation pass did not see is sent, and the task fails
    saying what changed (a truncated file sent nothing, and the task had succeeded)."""
    path = tmp_path / "orders.jsonl"
    orders_path = write_jsonl(path, orders("CHG", 4))
    validation_pass = LimioSubmitOrdersOperator._validation_pass

    def then_change(self: Any, *args: Any, **kwargs: Any) -> int:
        total = validation_pass(self, *args, **kwargs)
        kept = {"truncated": [], "rewritten": orders("CHG", 2) + orders("OTHER", 2), "grown": orders("CHG", 6)}
        write_jsonl(path, kept[change])
        return total

    monkeypatch.setattr(LimioSubmitOrdersOperator, "_validation_pass", then_change)
    run = run_dag(batch_dag("limio_batch_changed", ledger_root, orders_path=orders_path))
    assert states(run) == {"submit": "failed"}
    sent = sorted(r.body["external_id"] for r in calls(limio_emulator, ORDER_POSTS))
    assert sent == {"truncated": [], "rewritten": ["CHG-0", "CHG-1"], "grown": [f"CHG-{n}" for n in range(4)]}[change]
    summary = summary_of(run)
    assert "changed after it was validated" in summary["stopped"], summary


def test_a_dry_run_after_the_real_run_says_what_was_sent_and_leaves_its_results_alone(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path
) -> None:
    """Issue 18: a rehearsal after the real run previewed every order as "would send" although the ledger held
    each as done, and overwrote the real run's results file (every order id gone from it)."""
    results_path = f"file://{tmp_path}/real.results.jsonl"
    real = run_dag(batch_dag("limio_batch_real", ledger_root, orders=orders("AGAIN", 3), results_path=results_path))
    assert real.state == "success", states(real)
    written = (tmp_path / "real.results.jsonl").read_text()
    batch = [*orders("AGAIN", 3), new_order("AGAIN-NEW")]
    rehearsal = run_dag(
        batch_dag("limio_batch_rehearsal", ledger_root, orders=batch, results_path=results_path, dry_run=True)
    )
    assert rehearsal.state == "success", states(rehearsal)
    assert (tmp_path / "real.results.jsonl").read_text() == written
    rows = {row["external_id"]: row for row in results(f"file://{tmp_path}/real.results.dry-run.jsonl")}
    for n in range(3):
        (order,) = limio_emulator.orders_with_external_id(f"AGAIN-{n}")
        assert (rows[f"AGAIN-{n}"]["outcome"], rows[f"AGAIN-{n}"]["order_id"]) == ("already_sent", order["id"])
        assert rows[f"AGAIN-{n}"]["status_at"].endswith("Z")  # the ledger's status, dated
    assert rows["AGAIN-NEW"]["outcome"] == "dry_run"
    previews = [r.body["external_id"] for r in calls(limio_emulator, "/api/order/preview")]
    assert previews == ["AGAIN-NEW"]  # only what a real run would send
    assert summary_of(rehearsal)["counts"]["already_sent"] == 3


def test_an_edited_line_whose_external_id_names_a_sent_order_says_limio_holds_it_not_refused(
    limio_emulator: LimioEmulator, ledger_root: str, tmp_path: Path
) -> None:
    """Issue 18: a batch run again after a line with an explicit external_id was edited reported the row
    ``refused`` ("nothing was created") with no order id, while Limio held the first run's order."""
    first = run_dag(
        batch_dag(
            "limio_batch_edit_1", ledger_root, orders=orders("EDIT", 2), results_path=f"file://{tmp_path}/1.jsonl"
        )
    )
    assert first.state == "success", states(first)
    (held,) = limio_emulator.orders_with_external_id("EDIT-1")
    edited = [new_order("EDIT-0"), new_order("EDIT-1", country="IE")]
    second = run_dag(
        batch_dag("limio_batch_edit_2", ledger_root, orders=edited, results_path=f"file://{tmp_path}/2.jsonl")
    )
    assert second.state == "failed", states(second)
    row = {row["external_id"]: row for row in results(f"file://{tmp_path}/2.jsonl")}["EDIT-1"]
    assert (row["outcome"], row["order_id"]) == ("failed", held["id"]), row
    assert f"Limio holds it as order {held['id']}" in row["error"] and "was not sent" in row["error"]
    assert len(limio_emulator.orders_with_external_id("EDIT-1")) == 1
    (invalid,) = [f for f in summary_of(second)["first_failures"]]
    assert invalid["external_id"] == "EDIT-1"


def test_an_s3_results_path_naming_the_orders_object_through_another_connection_is_refused(
    limio_emulator: LimioEmulator,
    ledger_root: str,
    s3_ledger_root: str,
    limio_s3_conn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 18: ``s3://conn@b/k`` and ``s3://b/k`` (the default AWS connection) are one object."""
    from limio_provider.exactly_once.ledger import storage_path

    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", limio_s3_conn)
    bucket = s3_ledger_root.split("@", 1)[1].split("/", 1)[0]
    orders_uri = f"s3://limio_s3@{bucket}/in/orders.jsonl"
    text = "".join(json.dumps(order) + "\n" for order in orders("S3SAME", 3))
    storage_path("orders_path", orders_uri).write_text(text)
    run = run_dag(
        batch_dag(
            "limio_batch_s3_same", ledger_root, orders_path=orders_uri, results_path=f"s3://{bucket}/in/orders.jsonl"
        )
    )
    assert states(run) == {"submit": "failed"}
    assert storage_path("orders_path", orders_uri).read_text() == text
    assert [r.path for r in limio_emulator.requests if r.path != "/oauth2/token"] == []
