"""Exactly-once submit and waiting for completion, run with dag.test() against the emulator with faults."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG
from packaging.version import Version

from limio_provider.exactly_once.decisions import decision_key
from limio_provider.operators import LimioSubmitOrderOperator
from limio_provider.sensors.limio import LimioOrderSensor
from limio_provider.testing import Fault, LimioEmulator
from tests.helpers import AIRFLOW_VERSION, START, needs_airflow, new_order, run_dag, states, xcom

#: Without task_state_store (before Airflow 3.3) and without a ledger, a retry cannot tell a refusal in an
#: earlier try from a lost answer, so it fails safe instead of sending.
needs_store = needs_airflow("3.3", "task_state_store tells a retry that an earlier try was refused")

pytestmark = pytest.mark.usefixtures("airflow_db")
FAST = {"hook_params": {"timeout": 1.5, "retry_backoff": 0.01}}  # short, yet far above a loaded CI box


@pytest.fixture
def limio_emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[LimioEmulator]:
    """The plugin's emulator, whose tenant also has the partner organisations partner-a and partner-b."""
    from limio_provider.testing.emulator import PARTNERS

    with LimioEmulator(partners=[*PARTNERS, "partner-a", "partner-b"]) as emulator:
        for name, value in emulator.connection_env().items():
            monkeypatch.setenv(name, value)
        yield emulator


@pytest.fixture(params=["no-ledger", "local", "s3"])
def ledger(request: pytest.FixtureRequest) -> str | None:
    """No ledger, or a ledger root on the local disk or on S3 (moto; not installed in the older Airflow lines'
    test environments, where the S3 case is skipped)."""
    if request.param == "no-ledger":
        return None
    if request.param == "s3":
        pytest.importorskip("moto")
    return str(request.getfixturevalue(f"{request.param}_ledger_root"))


def submit_dag(dag_id: str, **op_kwargs: Any) -> DAG:
    with DAG(dag_id, schedule=None, start_date=START) as dag:
        LimioSubmitOrderOperator(task_id="submit", **{**FAST, **op_kwargs})
    return dag


def sent_external_ids(emulator: LimioEmulator) -> list[str]:
    return [r.body["external_id"] for r in emulator.requests if r.path == "/api/order"]


@pytest.mark.parametrize(
    "fault",
    [
        Fault(route="order", action="process_then_status", status=502, times=1),
        Fault(route="order", action="process_then_hang", latency=3.0, times=1),
    ],
    ids=["processed-then-502", "processed-then-no-answer"],
)
def test_ambiguous_submit_is_reconciled_in_the_same_try_and_not_called_adopted(
    limio_emulator: LimioEmulator, fault: Fault, task_log: Callable[[], str]
) -> None:
    task_log()
    limio_emulator.add_fault(fault)
    run = run_dag(submit_dag(f"limio_amb_{fault.action}", order=new_order("EXT-AMB")))
    assert run.state == "success", states(run)
    (order,) = limio_emulator.orders_with_external_id("EXT-AMB")
    (result,) = xcom(run, "submit")
    assert result["id"] == order["id"]
    assert xcom(run, "submit", "adopted") == [False]  # this try created it: nothing earlier was adopted
    assert sent_external_ids(limio_emulator) == ["EXT-AMB"]  # sent once, never resent
    warnings = [line for line in task_log().splitlines() if "warning" in line.lower()]
    assert any("Limio may or may not have created the order with external_id 'EXT-AMB'" in w for w in warnings)
    resolved = f"Outcome of order EXT-AMB was unknown; resolved: Limio created it as {order['id']}"
    assert any(resolved in w for w in warnings)


def test_unknown_outcome_not_found_fails_by_default_naming_the_external_id(
    limio_emulator: LimioEmulator, task_log: Callable[[], str]
) -> None:
    limio_emulator.add_fault(Fault(route="order", action="drop", times=1))  # not processed, but ambiguous
    dag = submit_dag("limio_amb_fail", order=new_order("EXT-LOST"), retries=1, retry_delay=timedelta(0))
    run = run_dag(dag)
    assert states(run)["submit"] == "failed"
    assert limio_emulator.orders == {}
    assert sent_external_ids(limio_emulator) == ["EXT-LOST"]  # the retry looked it up and did not resend
    output = task_log()
    assert "Limio may have received order EXT-LOST" in output
    assert 'airflow variables set limio_decision.EXT-LOST "send ' in output  # what to do, in the error itself
    noise = [line for line in output.splitlines() if "VARIABLE_NOT_FOUND" in line or "Variable not found" in line]
    if AIRFLOW_VERSION >= Version("3.3"):  # Airflow 3.1's task SDK logs any missing Variable at ERROR
        assert noise == []  # asking for a decision logs no error


def test_a_failed_look_up_after_an_unknown_outcome_says_the_outcome_is_unknown(
    limio_emulator: LimioEmulator, task_log: Callable[[], str], ledger: str | None
) -> None:
    """Issue 17, scenario 6: Limio creates the order and answers 502; the look-up that follows gets a 500. The
    try fails saying the order may exist, naming it and the decision (not a bare server error); its retry
    looks again and adopts."""
    limio_emulator.add_fault(Fault(route="order", action="process_then_status", status=502, times=1))
    if ledger is None:  # the look before sending (a ledger in use vouches for a first send instead)
        limio_emulator.add_fault(Fault(route="list_orders", action="latency_only", times=1))
    limio_emulator.add_fault(Fault(route="list_orders", action="status", status=500, times=1))  # the one after
    task_log()
    dag = submit_dag(
        "limio_lookup_5xx",
        order=new_order("EXT-LOOK-5XX"),
        retries=1,
        retry_delay=timedelta(0),
        ledger_path=ledger,
    )
    run = run_dag(dag)
    assert run.state == "success", states(run)
    (order,) = limio_emulator.orders_with_external_id("EXT-LOOK-5XX")
    assert sent_external_ids(limio_emulator) == ["EXT-LOOK-5XX"]
    assert [result["id"] for result in xcom(run, "submit")] == [order["id"]]
    output = task_log()
    assert "LimioOutcomeUnknownError" in output  # the look-up's own error is only its cause
    assert "Limio may have received order EXT-LOOK-5XX, and looking it up failed" in output
    assert "A retry of this task looks again and sends nothing" in output


def decide_after_the_first_try(
    external_id: str, value: str, refs: list[str] | None = None, ledger: str | None = None
) -> Callable[[Any], None]:
    """An ``on_retry_callback`` that does what a person does after the first try's unknown outcome: sets the
    decision Variable to ``value`` with ``{ref}``, the name of the send it answers, filled in. The error gives
    that name; Airflow 3.1 passes no exception to the callback, so it is worked out as the provider does (the
    ``ledger``'s record, else the task instance), and noted in ``refs`` for the test to find in the error."""
    from limio_provider.exactly_once.decisions import ledger_ref, outcome_ref
    from limio_provider.exactly_once.ledger import OrderLedger
    from limio_provider.hooks.limio import LimioHook

    def decide(context: Any) -> None:
        ti = context["ti"]
        holder = [ti.dag_id, context["run_id"], ti.task_id, getattr(ti, "map_index", -1)]
        ref = outcome_ref(external_id, {"task_instance": holder})
        if ledger is not None:
            entry = OrderLedger(ledger, LimioHook().settings.tenant).read(external_id)
            assert entry is not None, f"no ledger record of {external_id}"
            ref = ledger_ref(external_id, entry)
        if refs is not None:
            refs.append(ref)
        set_variable(decision_key(external_id), value.format(ref=ref))

    return decide


def decided_dag(
    dag_id: str,
    external_id: str,
    decision: str,
    refs: list[str] | None = None,
    ledger: str | None = None,
    **op_kwargs: Any,
) -> DAG:
    """A submit of ``external_id`` with one retry, before which a person records ``decision`` (see
    :func:`decide_after_the_first_try`), through ``ledger`` if given."""
    return submit_dag(
        dag_id,
        order=new_order(external_id),
        retries=1,
        retry_delay=timedelta(0),
        on_retry_callback=decide_after_the_first_try(external_id, decision, refs, ledger),
        ledger_path=ledger,
        **op_kwargs,
    )


def set_variable(key: str, value: str) -> None:
    from airflow.models.variable import Variable

    Variable.set(key, value)


def get_variable(key: str) -> str | None:
    from airflow.models.variable import Variable

    return Variable.get(key, None)


def test_a_person_decides_send_after_an_unknown_outcome(
    limio_emulator: LimioEmulator, task_log: Callable[[], str]
) -> None:
    """The documented recovery: the error names a Variable; 'send' there reaches the next try, which sends once."""
    limio_emulator.add_fault(Fault(route="order", action="drop", times=1))  # not processed, but ambiguous
    task_log()
    key = decision_key("EXT-DECIDE")
    assert key == "limio_decision.EXT-DECIDE"
    # Set once the first try has failed, from its error; its retry is what a person's clear starts.
    dag = decided_dag("limio_decide_send", "EXT-DECIDE", "send {ref}", refs := [])
    run = run_dag(dag)
    assert run.state == "success", states(run)
    assert len(limio_emulator.orders_with_external_id("EXT-DECIDE")) == 1
    assert sent_external_ids(limio_emulator) == ["EXT-DECIDE", "EXT-DECIDE"]  # the lost one, then the decided one
    assert get_variable(key) is None  # taken once: never applied to a later unknown outcome
    output = task_log()
    assert f"Variable {key} says Limio does not have order EXT-DECIDE: sending it" in output
    assert f'airflow variables set {key} "send {refs[0]}"' in output  # the error named the send decided on


def test_the_unknown_outcome_error_names_the_decision_variable(limio_emulator: LimioEmulator) -> None:
    limio_emulator.add_fault(Fault(route="order", action="drop", times=1))
    run = run_dag(submit_dag("limio_decide_named", order=new_order("EXT-NAMED")))
    assert states(run)["submit"] == "failed"
    from limio_provider.exactly_once.decisions import how_to_decide

    assert 'airflow variables set limio_decision.EXT-NAMED "send 0123abcd"' in how_to_decide("EXT-NAMED", "0123abcd")


@pytest.mark.parametrize("right_order", [True, False], ids=["its-order", "another-order"])
def test_a_person_decides_adopt_after_an_unknown_outcome(limio_emulator: LimioEmulator, right_order: bool) -> None:
    from limio_provider.hooks.limio import LimioHook

    # An order with this external_id exists before the task sends (so it is not "created by this task", and the
    # lookup after the lost answer does not take it); the person looked in Limio and says it is the one.
    existing = LimioHook().submit_order(new_order("EXT-ADOPT" if right_order else "EXT-OTHER"))
    limio_emulator.add_fault(Fault(route="order", action="drop", times=1))
    dag = decided_dag(
        f"limio_decide_adopt_{right_order}", "EXT-ADOPT", f"adopt {existing.id} {{ref}}", adopt_existing=False
    )
    run = run_dag(dag)
    if right_order:
        assert run.state == "success", states(run)
        assert xcom(run, "submit", "order_id") == [existing.id]
        assert xcom(run, "submit", "adopted") == [True]
    else:  # the named order carries another external_id: refused, nothing sent
        assert states(run)["submit"] == "failed"
    assert sent_external_ids(limio_emulator)[1:] == ["EXT-ADOPT"]  # after the existing order: only the lost send
    # Used up once applied; a refused one is kept (never applied) for the person to correct.
    left = get_variable(decision_key("EXT-ADOPT"))
    assert left is None if right_order else str(left).startswith(f"adopt {existing.id} ")


def test_unknown_outcome_not_found_resubmits_when_asked(limio_emulator: LimioEmulator) -> None:
    limio_emulator.add_fault(Fault(route="order", action="drop", times=1))
    run = run_dag(submit_dag("limio_amb_resubmit", order=new_order("EXT-RE"), on_unknown_outcome="resubmit"))
    assert run.state == "success", states(run)
    assert len(limio_emulator.orders_with_external_id("EXT-RE")) == 1
    assert sent_external_ids(limio_emulator) == ["EXT-RE", "EXT-RE"]


@needs_store
def test_a_rejected_submit_clears_the_intent_so_a_retry_submits(limio_emulator: LimioEmulator) -> None:
    limio_emulator.add_fault(Fault(route="order", action="status", status=503, times=5))  # retries exhausted
    dag = submit_dag("limio_clear_intent", order=new_order("EXT-503"), retries=1, retry_delay=timedelta(0))
    run = run_dag(dag)
    assert run.state == "success", states(run)
    assert len(limio_emulator.orders_with_external_id("EXT-503")) == 1


def test_an_order_a_previous_run_completed_is_adopted_not_duplicated(limio_emulator: LimioEmulator) -> None:
    first = run_dag(submit_dag("limio_adopt_1", order=new_order("EXT-ONCE", process_immediately=True)))
    second = run_dag(submit_dag("limio_adopt_2", order=new_order("EXT-ONCE", process_immediately=True)))
    assert first.state == second.state == "success"
    (order,) = limio_emulator.orders_with_external_id("EXT-ONCE")
    assert xcom(second, "submit")[0]["id"] == order["id"]
    assert xcom(first, "submit", "adopted") == [False]
    assert xcom(second, "submit", "adopted") == [True]


def test_a_failed_earlier_order_is_not_adopted(limio_emulator: LimioEmulator) -> None:
    limio_emulator.decline_payment_refs = frozenset({"pm-1"})
    run_dag(submit_dag("limio_failed_1", order=new_order("EXT-F", process_immediately=True)))
    limio_emulator.decline_payment_refs = frozenset()
    run = run_dag(submit_dag("limio_failed_2", order=new_order("EXT-F", process_immediately=True)))
    assert [o["status"] for o in limio_emulator.orders_with_external_id("EXT-F")] == ["failed", "complete"]
    assert xcom(run, "submit")[0]["status"] == "complete"


@pytest.mark.parametrize("deferrable", [False, True])
def test_wait_for_completion_returns_the_final_status(limio_emulator: LimioEmulator, deferrable: bool) -> None:
    limio_emulator.processing_delay = 1.0  # several polls before it completes
    dag = submit_dag(
        f"limio_wait_{deferrable}",
        order=new_order("EXT-W"),
        wait_for_completion=True,
        poll_interval=0.1,
        deferrable=deferrable,
    )
    run = run_dag(dag)
    assert run.state == "success", states(run)
    (result,) = xcom(run, "submit")
    assert result["status"] == "complete"
    gets = [r for r in limio_emulator.requests if r.path.startswith("/api/objects/limio/orders/")]
    assert len(gets) >= 2  # it polled while the order was "submitted"


@pytest.mark.parametrize("deferrable", [False, True])
def test_a_failed_order_fails_the_task_with_limios_reason(
    limio_emulator: LimioEmulator, deferrable: bool, task_log: Callable[[], str]
) -> None:
    limio_emulator.decline_payment_refs = frozenset({"pm-1"})
    dag = submit_dag(
        f"limio_wait_fail_{deferrable}",
        order=new_order("EXT-DECLINED"),
        wait_for_completion=True,
        poll_interval=0.05,
        deferrable=deferrable,
    )
    run = run_dag(dag)
    assert states(run)["submit"] == "failed"
    (order,) = limio_emulator.orders_with_external_id("EXT-DECLINED")
    assert order["status"] == "failed"
    assert order["message"] in task_log()


def test_waiting_is_bounded(limio_emulator: LimioEmulator, task_log: Callable[[], str]) -> None:
    limio_emulator.processing_delay = 3600
    dag = submit_dag(
        "limio_wait_timeout",
        order=new_order("EXT-SLOW"),
        wait_for_completion=True,
        poll_interval=0.05,
        wait_timeout=0.3,
    )
    run = run_dag(dag)
    assert states(run)["submit"] == "failed"
    assert "did not finish in time" in task_log()


@pytest.mark.parametrize(("mode", "deferrable"), [("poke", False), ("reschedule", False), ("poke", True)])
def test_sensor_waits_for_the_submitted_order(limio_emulator: LimioEmulator, mode: str, deferrable: bool) -> None:
    limio_emulator.processing_delay = 0.3
    with DAG(f"limio_sensor_{mode}_{deferrable}", schedule=None, start_date=START) as dag:
        submit = LimioSubmitOrderOperator(task_id="submit", order=new_order("EXT-S"))
        sense = LimioOrderSensor(
            task_id="wait",
            order_id="{{ ti.xcom_pull(task_ids='submit', key='order_id') }}",
            poke_interval=0.1,
            timeout=30,
            mode=mode,
            deferrable=deferrable,
        )
        submit >> sense
    run = run_dag(dag)
    assert run.state == "success", states(run)
    (order,) = limio_emulator.orders_with_external_id("EXT-S")
    assert order["status"] == "complete"


def test_sensor_fails_on_a_failed_order(limio_emulator: LimioEmulator) -> None:
    limio_emulator.decline_payment_refs = frozenset({"pm-1"})
    with DAG("limio_sensor_fail", schedule=None, start_date=START) as dag:
        submit = LimioSubmitOrderOperator(task_id="submit", order=new_order("EXT-SF"))
        sense = LimioOrderSensor(
            task_id="wait", order_id="{{ ti.xcom_pull(task_ids='submit', key='order_id') }}", poke_interval=0.05
        )
        submit >> sense
    run = run_dag(dag)
    assert states(run) == {"submit": "success", "wait": "failed"}


def test_without_task_state_store_every_retry_reconciles_first(limio_emulator: LimioEmulator) -> None:
    """Airflow before 3.3 has no task_state_store: a retry (try_number > 1) must look before it sends."""
    try:
        from airflow.sdk.bases.operator import ExecutorSafeguard
    except ImportError:  # Airflow 2
        from airflow.models.baseoperator import ExecutorSafeguard  # type: ignore[no-redef]

    from benchmarks.campaign import TaskInstanceStub
    from limio_provider.exceptions import LimioOutcomeUnknownError
    from limio_provider.hooks.limio import LimioHook

    def attempt(try_number: int, external_id: str) -> dict[str, Any]:
        operator = LimioSubmitOrderOperator(
            task_id="submit", order=new_order(external_id), adopt_existing=False, **FAST
        )
        ti = TaskInstanceStub("old_airflow", "submit", -1, try_number=try_number)
        sentinel = getattr(ExecutorSafeguard, "sentinel_value", None)  # Airflow 2 has none to give
        as_task_runner = {f"{type(operator).__name__}__sentinel": sentinel} if sentinel else {}
        return operator.execute({"ti": ti, "run_id": "r1"}, **as_task_runner)  # no task_state_store

    # Try 1 died after Limio created the order: try 2 adopts it and sends nothing.
    created = LimioHook().submit_order(new_order("EXT-OLD-SENT")).id
    assert attempt(2, "EXT-OLD-SENT")["id"] == created
    # Try 1 got no answer and Limio never saw the order: try 2 does not resend blindly.
    limio_emulator.add_fault(Fault(route="order", action="drop", times=1))
    with pytest.raises(LimioOutcomeUnknownError):
        attempt(1, "EXT-OLD-LOST")
    with pytest.raises(LimioOutcomeUnknownError, match="an earlier try sent it"):
        attempt(2, "EXT-OLD-LOST")
    assert sent_external_ids(limio_emulator) == ["EXT-OLD-SENT", "EXT-OLD-LOST"]
    assert limio_emulator.orders_with_external_id("EXT-OLD-LOST") == []


# -- a lookup after an ambiguous submit adopts only what this attempt could have created ---------------


def test_an_earlier_failed_order_is_never_taken_for_the_one_an_ambiguous_submit_sent(
    limio_emulator: LimioEmulator,
) -> None:
    limio_emulator.decline_payment_refs = frozenset({"pm-1"})
    run_dag(submit_dag("limio_old_failed_1", order=new_order("EXT-OF", process_immediately=True)))
    (failed,) = limio_emulator.orders_with_external_id("EXT-OF")
    limio_emulator.add_fault(Fault(route="order", action="drop", times=1))  # the new order is never created
    run = run_dag(submit_dag("limio_old_failed_2", order=new_order("EXT-OF")))
    assert states(run)["submit"] == "failed"
    assert [o["id"] for o in limio_emulator.orders_with_external_id("EXT-OF")] == [failed["id"]]
    assert xcom(run, "submit") == []


def test_after_an_ambiguous_submit_the_new_order_is_found_next_to_an_earlier_failed_one(
    limio_emulator: LimioEmulator,
) -> None:
    limio_emulator.decline_payment_refs = frozenset({"pm-1"})
    run_dag(submit_dag("limio_next_to_failed_1", order=new_order("EXT-NF", process_immediately=True)))
    limio_emulator.decline_payment_refs = frozenset()
    limio_emulator.add_fault(Fault(route="order", action="process_then_status", status=520, times=1))
    run = run_dag(submit_dag("limio_next_to_failed_2", order=new_order("EXT-NF", process_immediately=True)))
    assert run.state == "success", states(run)
    failed, created = limio_emulator.orders_with_external_id("EXT-NF")
    (result,) = xcom(run, "submit")
    assert (result["id"], result["status"]) == (created["id"], "complete")
    assert failed["status"] == "failed"


# -- a stored order id always wins; every success path pushes every XCom --------------------------------


@needs_store
def test_a_retry_reconnects_to_the_stored_order_without_searching(limio_emulator: LimioEmulator) -> None:
    limio_emulator.processing_delay = 2.0  # still processing when the retry reconnects
    limio_emulator.add_fault(Fault(route="list_orders", action="latency_only", times=1))  # try 1's look-up
    limio_emulator.add_fault(Fault(route="list_orders", action="status", status=400))  # any later search fails
    limio_emulator.add_fault(Fault(route="get_order", action="status", status=404, times=1))  # try 1 dies
    dag = submit_dag(
        "limio_stored_id_wins",
        order=new_order("EXT-SW"),
        wait_for_completion=True,
        poll_interval=0.05,
        on_unknown_outcome="resubmit",
        retries=1,
        retry_delay=timedelta(0),
    )
    run = run_dag(dag)
    assert run.state == "success", states(run)
    (order,) = limio_emulator.orders_with_external_id("EXT-SW")
    assert sent_external_ids(limio_emulator) == ["EXT-SW"]
    (result,) = xcom(run, "submit")
    assert result["id"] == order["id"]
    assert result["status"] == "complete"
    assert result["order_reference"] == order["order_reference"]  # the full result, not just id and status
    assert xcom(run, "submit", "order_id") == [order["id"]]
    assert xcom(run, "submit", "adopted") == [True]
    assert xcom(run, "submit", "limio_order_url")[0].endswith(order["id"])


def test_a_retry_never_resubmits_an_order_it_stored_that_failed(limio_emulator: LimioEmulator) -> None:
    limio_emulator.decline_payment_refs = frozenset({"pm-1"})
    dag = submit_dag(
        "limio_stored_failed",
        order=new_order("EXT-SF2"),
        wait_for_completion=True,
        poll_interval=0.05,
        on_unknown_outcome="resubmit",
        retries=1,
        retry_delay=timedelta(0),
    )
    run = run_dag(dag)
    assert states(run)["submit"] == "failed"
    (order,) = limio_emulator.orders_with_external_id("EXT-SF2")
    assert order["status"] == "failed"
    assert sent_external_ids(limio_emulator) == ["EXT-SF2"]  # try 2 reconnected to it, and did not resend
    assert xcom(run, "submit", "order_id") == [order["id"]]


def test_the_deferred_path_pushes_every_xcom_and_returns_the_full_result(limio_emulator: LimioEmulator) -> None:
    limio_emulator.processing_delay = 0.5
    dag = submit_dag(
        "limio_deferred_xcoms",
        order=new_order("EXT-DX"),
        wait_for_completion=True,
        poll_interval=0.05,
        deferrable=True,
    )
    run = run_dag(dag)
    assert run.state == "success", states(run)
    (order,) = limio_emulator.orders_with_external_id("EXT-DX")
    (result,) = xcom(run, "submit")
    assert (result["id"], result["status"], result["external_id"]) == (order["id"], "complete", "EXT-DX")
    assert result["order_reference"] == order["order_reference"]
    assert xcom(run, "submit", "order_id") == [order["id"]]
    assert xcom(run, "submit", "adopted") == [False]
    assert xcom(run, "submit", "limio_order_url")[0].endswith(order["id"])


# -- a failed order fails the task, after its XComs are pushed -----------------------------------------


@pytest.mark.parametrize("allow", [False, True])
def test_an_order_limio_answers_as_failed_fails_the_task_unless_allowed(
    limio_emulator: LimioEmulator, task_log: Callable[[], str], allow: bool
) -> None:
    limio_emulator.decline_payment_refs = frozenset({"pm-1"})
    dag = submit_dag(
        f"limio_failed_now_{allow}", order=new_order("EXT-FN", process_immediately=True), allow_failed_order=allow
    )
    run = run_dag(dag)
    (order,) = limio_emulator.orders_with_external_id("EXT-FN")
    assert order["status"] == "failed"
    assert xcom(run, "submit", "order_id") == [order["id"]]  # findable either way
    if allow:
        assert run.state == "success", states(run)
        assert xcom(run, "submit")[0]["status"] == "failed"
    else:
        assert states(run)["submit"] == "failed"
        assert order["message"] in task_log()


# -- refused before any network call --------------------------------------------------------------------


def test_admin_operator_refuses_a_partner_given_twice(limio_emulator: LimioEmulator) -> None:
    from limio_provider.operators import LimioAdminSubmitOrderOperator

    with DAG("limio_partner_twice", schedule=None, start_date=START) as dag:
        LimioAdminSubmitOrderOperator(
            task_id="submit", order=new_order("EXT-PT", forPartner={"id": "p-own"}), partner="p-other", **FAST
        )
    run = run_dag(dag)
    assert states(run)["submit"] == "failed"
    assert limio_emulator.requests == []


def test_an_unknown_link_placeholder_fails_the_task_before_any_call(
    limio_emulator: LimioEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    connection = json.loads(limio_emulator.connection_json())
    extra = {"order_link_template": "https://app.example/{order}"}
    monkeypatch.setenv("AIRFLOW_CONN_LIMIO_DEFAULT", json.dumps({**connection, "extra": extra}))
    run = run_dag(submit_dag("limio_bad_link", order=new_order("EXT-BL")))
    assert states(run)["submit"] == "failed"
    assert limio_emulator.requests == []


def admin_dag(dag_id: str, external_id: str, partner: str, **op_kwargs: Any) -> DAG:
    from limio_provider.operators import LimioAdminSubmitOrderOperator

    with DAG(dag_id, schedule=None, start_date=START) as dag:
        LimioAdminSubmitOrderOperator(
            task_id="submit",
            order=new_order(external_id),
            partner=partner,
            **{**FAST, "limio_conn_id": "limio_admin", **op_kwargs},
        )
    return dag


def admin_orders(emulator: LimioEmulator, external_id: str) -> list[tuple[str, str]]:
    """``(order id, partner id)`` of every order Limio holds with ``external_id``."""
    return [(o["id"], (o.get("forPartner") or {}).get("id")) for o in emulator.orders_with_external_id(external_id)]


def test_another_partners_order_with_the_same_external_id_is_never_adopted(
    limio_emulator: LimioEmulator, ledger: str | None
) -> None:
    """Issue 17, scenario 8: without a ledger, the look-up before sending adopted partner A's order for partner
    B's task, so B's order was never created and the task succeeded."""
    from limio_provider.hooks.limio import LimioHook

    theirs = LimioHook("limio_admin").submit_admin_order(new_order("EXT-PARTNERS"), partner={"id": "partner-a"})
    run = run_dag(admin_dag("limio_partner_b", "EXT-PARTNERS", "partner-b", ledger_path=ledger))
    assert run.state == "success", states(run)
    (result,) = xcom(run, "submit")
    assert xcom(run, "submit", "adopted") == [False] and result["id"] != theirs.id
    assert sorted(admin_orders(limio_emulator, "EXT-PARTNERS"), key=lambda o: o[1]) == [
        (theirs.id, "partner-a"),
        (result["id"], "partner-b"),
    ]


def test_an_adopt_decision_naming_another_partners_order_is_refused_and_kept(
    limio_emulator: LimioEmulator, task_log: Callable[[], str], ledger: str | None
) -> None:
    """Issue 17, scenario 8: ``adopt <id>`` was accepted for an order of another partner."""
    from limio_provider.hooks.limio import LimioHook

    theirs = LimioHook("limio_admin").submit_admin_order(new_order("EXT-ADOPT-P"), partner={"id": "partner-a"})
    limio_emulator.add_fault(Fault(route="admin_order", action="drop", times=1))  # partner B's: outcome unknown
    key = decision_key("EXT-ADOPT-P")
    task_log()
    decide = decide_after_the_first_try("EXT-ADOPT-P", f"adopt {theirs.id} {{ref}}", ledger=ledger)  # A's order
    run = run_dag(
        admin_dag(
            "limio_adopt_p",
            "EXT-ADOPT-P",
            "partner-b",
            retries=1,
            retry_delay=timedelta(0),
            on_retry_callback=decide,
            ledger_path=ledger,
        )
    )
    assert states(run)["submit"] == "failed"
    assert admin_orders(limio_emulator, "EXT-ADOPT-P") == [(theirs.id, "partner-a")]
    assert f"order {theirs.id} is for partner 'partner-a', not 'partner-b'; not adopting it" in task_log()
    assert str(get_variable(key)).startswith(f"adopt {theirs.id} ")  # refused, not used up: a person corrects it


def test_an_adopt_decision_is_not_used_up_when_reading_the_order_fails(
    limio_emulator: LimioEmulator, ledger: str | None
) -> None:
    """Issue 17, scenario 8: the Variable was deleted before the order it names was read: a 5xx there used the
    decision up."""
    limio_emulator.add_fault(Fault(route="order", action="process_then_status", status=502, times=1))
    limio_emulator.add_fault(Fault(route="list_orders", action="process_then_garbage", body={"items": []}))
    limio_emulator.add_fault(Fault(route="get_order", action="status", status=500, times=1))  # the decision's read
    key = decision_key("EXT-ADOPT-5XX")
    dag = decided_dag("limio_adopt_5xx", "EXT-ADOPT-5XX", "adopt order-named-by-a-person {ref}", ledger=ledger)
    run = run_dag(dag)
    assert states(run)["submit"] == "failed"
    assert [r.status for r in limio_emulator.requests if r.path.startswith("/api/objects/limio/orders/")] == [500]
    assert str(get_variable(key)).startswith("adopt order-named-by-a-person ")  # the failed read used nothing up


def test_a_send_decision_is_not_used_up_when_the_look_up_before_sending_fails(
    limio_emulator: LimioEmulator,
) -> None:
    """'send' is used up after Limio was looked up again, before the order is sent: a look-up that fails leaves
    it set, and nothing is sent."""
    limio_emulator.add_fault(Fault(route="order", action="drop", times=1))
    limio_emulator.add_fault(Fault(route="list_orders", action="latency_only", times=2))  # the first try's looks
    limio_emulator.add_fault(Fault(route="list_orders", action="status", status=500, times=1))  # the retry's
    dag = decided_dag("limio_send_lookup_5xx", "EXT-SEND-5XX", "send {ref}", refs := [])
    run = run_dag(dag)
    assert states(run)["submit"] == "failed"
    assert sent_external_ids(limio_emulator) == ["EXT-SEND-5XX"]  # the lost send only
    assert get_variable(decision_key("EXT-SEND-5XX")) == f"send {refs[0]}"
