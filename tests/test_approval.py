"""A person's approval before a batch sends (Airflow 3.3): the DAG runs for real with ``dag.test()``, and the
answer goes through Airflow's own REST API (its FastAPI app, in this process) or, for a timeout, the scheduler's
own sweep of requests whose time ran out."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    from airflow.sdk.exceptions import TaskAwaitingInput  # noqa: F401 - Airflow 3.3 parks a task awaiting input
except ImportError:
    pytest.skip("approval is tested end to end on Airflow 3.3", allow_module_level=True)

from datetime import timedelta  # noqa: E402

from airflow.providers.common.compat.sdk import DAG  # noqa: E402

from limio_provider.approval import APPROVE, REJECT, LimioApproval  # noqa: E402
from limio_provider.operators import LimioSubmitOrdersOperator  # noqa: E402
from limio_provider.testing import LimioEmulator  # noqa: E402
from tests.helpers import START, calls, in_use, new_order, run_dag, states, xcom  # noqa: E402

pytestmark = pytest.mark.usefixtures("airflow_db")

PREVIEWS, POSTS = "/api/order/preview", "/api/order"


@pytest.fixture
def rest(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Airflow's REST API (``/api/v2``), its real app in this process, every caller an admin."""
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "limio-tests-only")
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    with TestClient(create_app()) as client:
        yield client


def parked(dag_id: str, timeout: float = 60.0) -> tuple[str, dict[str, Any]]:
    """Wait for the run of ``dag_id`` to ask a person; its run id and the request's detail."""
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with create_session() as session:
            ti = session.query(TaskInstance).filter_by(dag_id=dag_id, state=TaskInstanceState.AWAITING_INPUT).first()
            detail = session.get(HITLDetail, ti.id) if ti is not None else None
            if ti is not None and detail is not None:
                return ti.run_id, {"subject": detail.subject, "body": detail.body, "options": detail.options}
        time.sleep(0.2)
    raise AssertionError(f"{dag_id} never asked for approval")


def answering(answer: Callable[[str], None], dag_id: str) -> tuple[threading.Thread, dict[str, Any]]:
    """A thread that waits for ``dag_id`` to ask, records the request, then answers with ``answer(run_id)``."""
    seen: dict[str, Any] = {}

    def run() -> None:
        run_id, seen["request"] = parked(dag_id)
        answer(run_id)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, seen


def respond(rest: Any, dag_id: str, option: str) -> Callable[[str], None]:
    def answer(run_id: str) -> None:
        url = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/submit/-1/hitlDetails"
        reply = rest.patch(url, json={"chosen_options": [option], "params_input": {}})
        assert reply.status_code == 200, reply.text

    return answer


def batch_dag(dag_id: str, tmp_path: Path, orders_path: str, **kwargs: Any) -> DAG:
    with DAG(dag_id, schedule=None, start_date=START) as dag:
        LimioSubmitOrdersOperator(
            task_id="submit",
            orders_path=orders_path,
            ledger_path=in_use(f"file://{tmp_path}/ledger"),
            hook_params={"timeout": 2.0, "retry_backoff": 0.01},
            **kwargs,
        )
    return dag


def orders_file(tmp_path: Path, count: int, prefix: str = "OK") -> str:
    path = tmp_path / "orders.jsonl"
    path.write_text("".join(json.dumps(new_order(f"{prefix}-{n}")) + "\n" for n in range(count)))
    return f"file://{path}"


def test_an_approved_batch_sends_what_the_request_summarised(
    limio_emulator: LimioEmulator, tmp_path: Path, rest: Any, task_log: Callable[[], str]
) -> None:
    dag = batch_dag("limio_approval_yes", tmp_path, orders_file(tmp_path, 6), approval=LimioApproval())
    thread, seen = answering(respond(rest, "limio_approval_yes", APPROVE), "limio_approval_yes")
    run = run_dag(dag)
    thread.join(5)
    assert states(run)["submit"] == "success"
    request = seen["request"]
    assert request["options"] == [APPROVE, REJECT]
    assert request["subject"] == "Send 6 Limio orders, total due 119.94?"
    assert "| Orders to send | 6 |" in request["body"] and "| `OK-5` | 19.99 |" in request["body"]
    assert "No earlier run of this task to compare with." in request["body"]
    assert len(calls(limio_emulator, PREVIEWS)) == 6 and len(calls(limio_emulator, POSTS)) == 6
    assert len(limio_emulator.orders) == 6 and xcom(run, "submit")[0]["counts"]["submitted"] == 6
    assert "Sending the orders approved" in task_log()


def test_a_rejected_batch_sends_nothing(
    limio_emulator: LimioEmulator, tmp_path: Path, rest: Any, task_log: Callable[[], str]
) -> None:
    dag = batch_dag("limio_approval_no", tmp_path, orders_file(tmp_path, 4), approval=LimioApproval())
    thread, _ = answering(respond(rest, "limio_approval_no", REJECT), "limio_approval_no")
    run = run_dag(dag)
    thread.join(5)
    assert states(run)["submit"] == "failed"
    assert len(calls(limio_emulator, PREVIEWS)) == 4 and calls(limio_emulator, POSTS) == []
    assert limio_emulator.orders == {}
    assert "LimioApprovalError: the batch was rejected by" in task_log()


def test_no_answer_within_the_timeout_is_a_rejection(
    limio_emulator: LimioEmulator, tmp_path: Path, task_log: Callable[[], str]
) -> None:
    def time_out(run_id: str) -> None:
        """What the scheduler does each loop: resolve requests whose time ran out (here, with their default)."""
        from airflow.jobs.job import Job
        from airflow.jobs.scheduler_job_runner import SchedulerJobRunner

        time.sleep(1.2)
        SchedulerJobRunner(job=Job()).check_awaiting_input_timeouts()

    approval = LimioApproval(timeout=timedelta(seconds=1))
    dag = batch_dag("limio_approval_late", tmp_path, orders_file(tmp_path, 3), approval=approval)
    thread, _ = answering(time_out, "limio_approval_late")
    run = run_dag(dag)
    thread.join(5)
    assert states(run)["submit"] == "failed" and calls(limio_emulator, POSTS) == []
    assert "the batch was not approved within 0:00:01 (no answer counts as a rejection): nothing was sent" in task_log()


def test_orders_changed_while_awaiting_approval_are_not_sent(
    limio_emulator: LimioEmulator, tmp_path: Path, rest: Any, task_log: Callable[[], str]
) -> None:
    path = orders_file(tmp_path, 3)
    approve = respond(rest, "limio_approval_changed", APPROVE)

    def edit_then_approve(run_id: str) -> None:
        file = Path(path.removeprefix("file://"))
        file.write_text(file.read_text() + json.dumps(new_order("SNUCK-IN")) + "\n")
        approve(run_id)

    dag = batch_dag("limio_approval_changed", tmp_path, path, approval=LimioApproval())
    thread, _ = answering(edit_then_approve, "limio_approval_changed")
    run = run_dag(dag)
    thread.join(5)
    assert states(run)["submit"] == "failed" and calls(limio_emulator, POSTS) == []
    assert "the orders changed after they were approved (approved by" in task_log()


def test_under_the_thresholds_no_one_is_asked_and_the_next_run_shows_the_change(
    limio_emulator: LimioEmulator, tmp_path: Path, rest: Any, task_log: Callable[[], str]
) -> None:
    small = LimioApproval(below_orders=5, below_total_due="100")
    run = run_dag(batch_dag("limio_approval_small", tmp_path, orders_file(tmp_path, 4), approval=small))
    assert states(run)["submit"] == "success" and len(calls(limio_emulator, POSTS)) == 4
    assert "No approval asked: 4 orders, total due 79.96, under the approval's thresholds" in task_log()

    # The next run of the same DAG has 6 new orders: over the threshold, and its request compares them.
    dag = batch_dag("limio_approval_small", tmp_path, orders_file(tmp_path, 6, "NEXT"), approval=small)
    thread, seen = answering(respond(rest, "limio_approval_small", APPROVE), "limio_approval_small")
    run = run_dag(dag, logical_date=START + timedelta(days=1))
    thread.join(5)
    assert states(run)["submit"] == "success" and len(calls(limio_emulator, POSTS)) == 10
    assert "4 orders, total due 79.96): +2 orders, total due +39.98 (+50.0 %)." in seen["request"]["body"]


# -- a single order ------------------------------------------------------------------------------------------


def single_dag(dag_id: str, tmp_path: Path, external_id: str, approval: LimioApproval) -> DAG:
    from limio_provider.operators import LimioSubmitOrderOperator

    with DAG(dag_id, schedule=None, start_date=START) as dag:
        LimioSubmitOrderOperator(
            task_id="submit",
            order=new_order(external_id),
            ledger_path=in_use(f"file://{tmp_path}/ledger"),
            hook_params={"timeout": 2.0, "retry_backoff": 0.01},
            approval=approval,
        )
    return dag


@pytest.mark.parametrize("answer", [APPROVE, REJECT])
def test_a_single_order_is_sent_only_once_approved(
    limio_emulator: LimioEmulator, tmp_path: Path, rest: Any, task_log: Callable[[], str], answer: str
) -> None:
    dag_id = f"limio_approval_single_{answer.lower()}"
    dag = single_dag(dag_id, tmp_path, f"ONE-{answer}", LimioApproval(below_total_due="10"))
    thread, seen = answering(respond(rest, dag_id, answer), dag_id)
    run = run_dag(dag)
    thread.join(5)
    assert seen["request"]["subject"] == f"Send Limio order ONE-{answer}, total due 19.99?"
    assert len(calls(limio_emulator, PREVIEWS)) == 1
    if answer == APPROVE:
        assert states(run)["submit"] == "success"
        assert [order["external_id"] for order in limio_emulator.orders.values()] == [f"ONE-{answer}"]
    else:
        assert states(run)["submit"] == "failed" and calls(limio_emulator, POSTS) == []
        assert "LimioApprovalError: the order was rejected by" in task_log()


def test_a_single_order_under_the_threshold_is_sent_without_asking(
    limio_emulator: LimioEmulator, tmp_path: Path, task_log: Callable[[], str]
) -> None:
    run = run_dag(single_dag("limio_approval_single_small", tmp_path, "ONE-SMALL", LimioApproval(below_total_due=20)))
    assert states(run)["submit"] == "success" and len(limio_emulator.orders) == 1
    assert "No approval asked: order ONE-SMALL, total due 19.99, under the approval's thresholds" in task_log()


# -- an unknown outcome, put to a person -----------------------------------------------------------------------


def unknown_dag(dag_id: str, tmp_path: Path, external_id: str) -> DAG:
    from limio_provider.operators import LimioSubmitOrderOperator

    with DAG(dag_id, schedule=None, start_date=START) as dag:
        LimioSubmitOrderOperator(
            task_id="submit",
            order=new_order(external_id),
            ledger_path=in_use(f"file://{tmp_path}/ledger"),
            hook_params={"timeout": 2.0, "retry_backoff": 0.01, "retry_limit": 0},
            on_unknown_outcome="ask",
        )
    return dag


def decide(rest: Any, dag_id: str, option: str, order_id: Callable[[], str] | None = None) -> Callable[[str], None]:
    def answer(run_id: str) -> None:
        url = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/submit/-1/hitlDetails"
        params = {"order_id": order_id() if order_id else ""}
        reply = rest.patch(url, json={"chosen_options": [option], "params_input": params})
        assert reply.status_code == 200, reply.text

    return answer


def test_an_unknown_outcome_decided_send_is_sent_once_after_looking_again(
    limio_emulator: LimioEmulator, tmp_path: Path, rest: Any
) -> None:
    from limio_provider.testing import Fault

    limio_emulator.add_fault(Fault(route="order", action="drop", external_id="LOST-SEND", times=1))
    dag = unknown_dag("limio_decide_send", tmp_path, "LOST-SEND")
    thread, seen = answering(decide(rest, "limio_decide_send", "Send"), "limio_decide_send")
    run = run_dag(dag)
    thread.join(5)
    assert seen["request"]["options"] == ["Send", "Adopt", "Fail"]
    assert "outcome unknown" in seen["request"]["subject"]
    assert states(run)["submit"] == "success"
    assert len(limio_emulator.orders_with_external_id("LOST-SEND")) == 1
    assert len(calls(limio_emulator, POSTS)) == 2  # the lost one, and the one sent on the decision


def test_an_unknown_outcome_decided_adopt_takes_the_order_the_person_named(
    limio_emulator: LimioEmulator, tmp_path: Path, rest: Any
) -> None:
    from limio_provider.testing import Fault

    # Limio creates it and answers 502; the look-up that follows does not find it (an empty order list).
    limio_emulator.add_fault(Fault(route="order", action="process_then_status", status=502, external_id="LOST-ADOPT"))
    limio_emulator.add_fault(Fault(route="list_orders", action="process_then_garbage", body={"items": []}, times=1))
    dag = unknown_dag("limio_decide_adopt", tmp_path, "LOST-ADOPT")

    def the_order() -> str:
        (order,) = limio_emulator.orders_with_external_id("LOST-ADOPT")
        return str(order["id"])

    thread, _ = answering(decide(rest, "limio_decide_adopt", "Adopt", the_order), "limio_decide_adopt")
    run = run_dag(dag)
    thread.join(5)
    assert states(run)["submit"] == "success"
    assert len(limio_emulator.orders_with_external_id("LOST-ADOPT")) == 1 and len(calls(limio_emulator, POSTS)) == 1
    assert xcom(run, "submit", key="order_id") == [the_order()]
