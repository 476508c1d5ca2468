"""The order operators, run for real with dag.test() on SQLite against the Limio emulator."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG, task

from limio_provider.links.limio import LimioOrderLink
from limio_provider.models import NewOrder, order_body
from limio_provider.operators import (
    LimioAdminSubmitOrderOperator,
    LimioPreviewOrderOperator,
    LimioSubmitOrderOperator,
    external_id_for,
)
from limio_provider.testing import Fault, LimioEmulator
from tests.helpers import START, needs_airflow, new_order, run_dag, states, xcom

pytestmark = pytest.mark.usefixtures("airflow_db")


# -- construction is declarative ---------------------------------------------------------------------


def all_operators() -> list[Any]:
    with DAG("limio_construct", schedule=None, start_date=START) as dag:
        ops = [
            LimioPreviewOrderOperator(task_id="preview", order=new_order("P")),
            LimioSubmitOrderOperator(
                task_id="submit", order=NewOrder.model_validate(new_order("S")), dry_run="{{ params.x }}"
            ),
            LimioAdminSubmitOrderOperator(task_id="admin", order=new_order("A"), partner="partner-1"),
        ]
    assert dag.task_dict
    return ops


def test_operators_serialize_and_deserialize() -> None:
    try:
        from airflow.serialization.serialized_objects import OperatorSerialization
    except ImportError:  # before Airflow 3.2
        from airflow.serialization.serialized_objects import (  # type: ignore[attr-defined,no-redef]
            SerializedBaseOperator as OperatorSerialization,
        )

    for op in all_operators():
        data = OperatorSerialization.serialize_operator(op)
        json.dumps(data)  # fully JSON
        back = OperatorSerialization.deserialize_operator(data)
        assert back.task_id == op.task_id
        assert set(op.template_fields) <= set(back.template_fields)
        assert "order" in back.template_fields
        assert back.template_fields_renderers["order"] == "json"
    submit = all_operators()[1]
    assert submit.order == new_order("S")  # a model becomes its JSON dict at construction
    assert [link.name for link in submit.operator_extra_links] == ["Limio order"]


def test_constructing_does_no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_LIMIO_DEFAULT", raising=False)
    # No connection exists and no server runs: construction must not notice.
    op = LimioSubmitOrderOperator(task_id="t", order={"order_type": "nonsense"}, limio_conn_id="missing")
    assert "hook" not in op.__dict__


def test_external_id_names_the_work_and_the_order() -> None:
    order, other = new_order(), new_order(country="IE")
    a = external_id_for("d", "t", "date:2026-01-01", order)
    assert a == external_id_for("d", "t", "date:2026-01-01", {**order, "external_id": "ignored"})
    assert len(a) == 40 and a.startswith("airflow-")
    variants = {
        a,
        external_id_for("d", "t", "date:2026-01-02", order),
        external_id_for("d", "t2", "date:2026-01-01", order),
        external_id_for("d2", "t", "date:2026-01-01", order),
        external_id_for("d", "t", "date:2026-01-01", other),
    }
    assert len(variants) == 5


# -- running them ---------------------------------------------------------------------------------


def test_preview_then_submit_chained_through_xcom(limio_emulator: LimioEmulator, task_log: Callable[[], str]) -> None:
    task_log()
    with DAG("limio_chain", schedule=None, start_date=START) as dag:

        @task
        def build() -> dict[str, Any]:
            return new_order("EXT-CHAIN")

        order = build()
        preview = LimioPreviewOrderOperator(task_id="preview", order=order)
        submit = LimioSubmitOrderOperator(task_id="submit", order=order)
        preview >> submit

    run = run_dag(dag)
    assert run.state == "success", states(run)
    (preview_json,) = xcom(run, "preview")
    assert preview_json["preview"]["previewResult"]["invoices"]
    assert "Previewed new order EXT-CHAIN: total due 19.99" in task_log()  # issue 18: the line names the order
    (result,) = xcom(run, "submit")
    assert result["external_id"] == "EXT-CHAIN"  # a user-provided external_id is kept
    assert result["id"] in limio_emulator.orders
    assert xcom(run, "submit", "order_id") == [result["id"]]
    assert xcom(run, "submit", LimioOrderLink.key) == [f"{limio_emulator.url}/_emulator/orders/{result['id']}"]
    if hasattr(LimioOrderLink(), "xcom_key"):  # Airflow 3: its own reading of the link's XCom
        assert xcom(run, "submit", LimioOrderLink().xcom_key) == xcom(run, "submit", LimioOrderLink.key)


@pytest.mark.parametrize("native", [False, True])
def test_jinja_template_orders_render_with_and_without_native_objects(
    limio_emulator: LimioEmulator, native: bool
) -> None:
    with DAG(f"limio_jinja_{native}", schedule=None, start_date=START, render_template_as_native_obj=native) as dag:

        @task
        def build() -> dict[str, Any]:
            return new_order("EXT-JINJA", process_immediately=True)

        build() >> LimioSubmitOrderOperator(task_id="submit", order="{{ ti.xcom_pull(task_ids='build') }}")

    run = run_dag(dag)
    assert run.state == "success", states(run)
    (result,) = xcom(run, "submit")
    assert result["status"] == "complete"
    assert len(limio_emulator.orders_with_external_id("EXT-JINJA")) == 1


def test_template_that_is_not_a_json_object_fails_clearly(limio_emulator: LimioEmulator) -> None:
    with DAG("limio_bad_template", schedule=None, start_date=START) as dag:
        LimioSubmitOrderOperator(task_id="submit", order="{{ 'not json at all' }}")
    run = run_dag(dag)
    assert states(run)["submit"] == "failed"
    assert limio_emulator.requests == []


def test_missing_external_id_is_derived_from_the_task_instance(limio_emulator: LimioEmulator) -> None:
    body = new_order()
    del body["external_id"]
    with DAG("limio_derived_id", schedule=None, start_date=START) as dag:
        LimioSubmitOrderOperator(task_id="submit", order=body)
    run = run_dag(dag)
    (result,) = xcom(run, "submit")
    work = f"interval:{START.isoformat()}/{START.isoformat()}"
    assert result["external_id"] == external_id_for("limio_derived_id", "submit", work, order_body(body))


@needs_airflow("3.0", "Airflow 2's dag.test() reuses the run of a date instead of making a new one")
def test_a_new_run_of_the_same_date_adopts_instead_of_submitting_again(limio_emulator: LimioEmulator) -> None:
    body = new_order()
    del body["external_id"]
    with DAG("limio_rerun_same_date", schedule=None, start_date=START) as dag:
        LimioSubmitOrderOperator(task_id="submit", order=body)
    first = run_dag(dag)
    (first_result,) = xcom(first, "submit")  # dag.test() replaces a run of the same logical date
    second = run_dag(dag)
    assert first.run_id != second.run_id
    assert len(limio_emulator.orders) == 1
    assert xcom(second, "submit")[0]["id"] == first_result["id"]
    assert xcom(second, "submit", "adopted") == [True]


def test_mapped_ids_follow_the_order_not_its_position(limio_emulator: LimioEmulator) -> None:
    orders = [{k: v for k, v in new_order(country=c).items() if k != "external_id"} for c in ("GB", "IE", "FR")]

    def mapped_dag() -> DAG:
        with DAG("limio_mapped_ids", schedule=None, start_date=START, params={"orders": []}) as dag:

            @task
            def upstream(params: Any = None) -> list[dict[str, Any]]:
                return params["orders"]

            LimioSubmitOrderOperator.partial(task_id="submit").expand(order=upstream())
        return dag

    ids = []
    for batch in (orders, [orders[2], orders[0], orders[1]]):  # the upstream list reordered between runs
        run = run_dag(mapped_dag(), run_conf={"orders": batch})
        assert run.state == "success", states(run)
        ids.append({result["id"]: result["external_id"] for result in xcom(run, "submit")})
    assert ids[0] == ids[1]  # each order kept its id though its position changed
    assert len(limio_emulator.orders) == 3  # the second run adopted each order, none under another's id
    assert xcom(run, "submit", "adopted") == [True, True, True]


@needs_airflow("3.3", "task_state_store tells the retry that try 1 was refused")
def test_external_id_survives_a_task_retry(limio_emulator: LimioEmulator) -> None:
    body = new_order()
    del body["external_id"]
    limio_emulator.add_fault(Fault(route="order", action="status", status=400, message="try again", times=1))
    with DAG("limio_retry_id", schedule=None, start_date=START) as dag:
        LimioSubmitOrderOperator(task_id="submit", order=body, retries=1, retry_delay=timedelta(seconds=0))
    run = run_dag(dag)
    assert run.state == "success", states(run)
    first, second = (r.body["external_id"] for r in limio_emulator.requests if r.path == "/api/order")
    work = f"interval:{START.isoformat()}/{START.isoformat()}"
    assert first == second == external_id_for("limio_retry_id", "submit", work, order_body(body))


def test_mapped_submit_pushes_a_link_per_map_index(limio_emulator: LimioEmulator) -> None:
    with DAG("limio_mapped", schedule=None, start_date=START) as dag:
        LimioSubmitOrderOperator.partial(task_id="submit").expand(order=[new_order(f"EXT-M{i}") for i in range(3)])
    run = run_dag(dag)
    assert run.state == "success", states(run)
    results = xcom(run, "submit")
    assert [r["external_id"] for r in results] == ["EXT-M0", "EXT-M1", "EXT-M2"]
    links = xcom(run, "submit", LimioOrderLink.key)
    assert links == [f"{limio_emulator.url}/_emulator/orders/{r['id']}" for r in results]
    assert len(limio_emulator.orders) == 3


@needs_airflow("3.0", "a task's map_index_template rendered by the task runner")
def test_mapped_submits_and_previews_are_named_by_their_external_id(limio_emulator: LimioEmulator) -> None:
    """Issue 18: mapped submits showed only 0..N in the UI; each is named by its order's external_id unless
    the DAG gives a map_index_template of its own."""
    with DAG("limio_mapped_names", schedule=None, start_date=START) as dag:
        orders = [new_order(f"EXT-NAME-{i}") for i in range(2)]
        LimioSubmitOrderOperator.partial(task_id="submit").expand(order=orders)
        LimioPreviewOrderOperator.partial(task_id="preview").expand(order=orders)
        LimioSubmitOrderOperator.partial(task_id="own", map_index_template="order {{ ti.map_index }}").expand(
            order=[new_order(f"EXT-OWN-{i}") for i in range(2)]
        )
    run = run_dag(dag)
    assert run.state == "success", states(run)
    names: dict[str, list[str]] = {}
    for ti in sorted(run.get_task_instances(), key=lambda ti: (ti.task_id, ti.map_index)):
        names.setdefault(ti.task_id, []).append(ti.rendered_map_index)
    assert names == {
        "submit": ["EXT-NAME-0", "EXT-NAME-1"],
        "preview": ["EXT-NAME-0", "EXT-NAME-1"],
        "own": ["order 0", "order 1"],
    }


@pytest.mark.parametrize(("on_reject", "state"), [("fail", "failed"), ("skip", "skipped")])
def test_preview_check_guards_the_submit(
    limio_emulator: LimioEmulator, on_reject: str, state: str, task_log: Callable[[], str]
) -> None:
    task_log()
    with DAG(f"limio_guard_{on_reject}", schedule=None, start_date=START) as dag:
        LimioSubmitOrderOperator(
            task_id="cheap",
            order=new_order("EXT-CHEAP"),
            preview_check=lambda preview: preview.total_due() < 100_000,
        )
        LimioSubmitOrderOperator(
            task_id="dear",
            order=new_order("EXT-DEAR"),
            preview_check=lambda preview: f"total due {preview.total_due()} is over the limit",
            on_preview_reject=on_reject,
        )
    run = run_dag(dag)
    assert states(run) == {"cheap": "success", "dear": state}
    log = task_log()
    assert re.search(r"EXT-DEAR not submitted: total due [\d.]+ is over the limit", log)
    assert "(total due" not in log  # the reason already says the total: not repeated
    assert "Order EXT-CHEAP: preview_check accepted the preview: total due 19.99" in log  # issue 18: the verdict
    assert "XCom not found" not in log  # the task without an order has no link, and no error says so
    assert xcom(run, "dear", LimioOrderLink.key) == []
    assert len(limio_emulator.orders_with_external_id("EXT-CHEAP")) == 1
    assert limio_emulator.orders_with_external_id("EXT-DEAR") == []
    previews = [r for r in limio_emulator.requests if r.path == "/api/order/preview"]
    assert len(previews) == 2


def test_dry_run_previews_and_submits_nothing(limio_emulator: LimioEmulator) -> None:
    with DAG("limio_dry", schedule=None, start_date=START, params={"dry_run": True}) as dag:
        LimioSubmitOrderOperator(task_id="submit", order=new_order("EXT-DRY"), dry_run="{{ params.dry_run }}")
    run = run_dag(dag)
    (result,) = xcom(run, "submit")
    assert result["dry_run"] is True
    assert result["order"]["external_id"] == "EXT-DRY"
    assert result["preview"]["schedule"]
    assert limio_emulator.orders == {}


def test_the_dry_run_argument_leaves_base_operator_dry_run_callable() -> None:
    """``airflow tasks test --dry-run`` calls ``BaseOperator.dry_run()``: the argument must not shadow it."""
    from limio_provider.operators import LimioSubmitOrdersOperator

    operators = [
        LimioSubmitOrderOperator(task_id="one", order=new_order("EXT-DRY"), dry_run="{{ params.dry_run }}"),
        LimioSubmitOrdersOperator(task_id="many", orders_path="file:///orders.jsonl", dry_run="{{ params.dry_run }}"),
    ]
    for operator in operators:
        assert operator.preview_only == "{{ params.dry_run }}"
        assert "preview_only" in operator.template_fields
        operator.dry_run()  # renders nothing, sends nothing, raises nothing


def test_admin_operator_posts_for_partner_with_the_management_connection(limio_emulator: LimioEmulator) -> None:
    with DAG("limio_admin", schedule=None, start_date=START) as dag:
        partner = "{{ 'partner-org-1' }}"
        LimioAdminSubmitOrderOperator(
            task_id="admin", order=new_order("EXT-ADM"), partner=partner, limio_conn_id="limio_admin"
        )
        # The ordinary client on /admin/order: Limio refuses it (management credentials only), nothing is created.
        LimioAdminSubmitOrderOperator(task_id="not_admin", order=new_order("EXT-NOT-ADM"), partner=partner)
    run = run_dag(dag)
    assert states(run) == {"admin": "success", "not_admin": "failed"}
    admin = [r for r in limio_emulator.requests if r.path == "/api/admin/order"]
    assert sorted((r.body["external_id"], r.status) for r in admin) == [("EXT-ADM", 200), ("EXT-NOT-ADM", 403)]
    assert {r.body["forPartner"]["id"] for r in admin} == {"partner-org-1"}
    assert xcom(run, "admin", "order_id")
    assert limio_emulator.orders_with_external_id("EXT-NOT-ADM") == []


@pytest.mark.parametrize("rendered", ["None", "null", "  ", ""])
def test_a_partner_that_rendered_to_nothing_is_refused_before_any_call(
    limio_emulator: LimioEmulator, tmp_path: Any, rendered: str, task_log: Callable[[], str]
) -> None:
    """Issue 18: ``partner="{{ params.partner }}"`` rendered to None, null or blanks sent
    ``forPartner: {"id": "None"}`` from the single and the batch operator, and the task succeeded."""
    from limio_provider.operators import LimioSubmitOrdersOperator

    task_log()
    with DAG("limio_admin_nothing", schedule=None, start_date=START, params={"partner": rendered}) as dag:
        LimioAdminSubmitOrderOperator(task_id="admin", order=new_order("EXT-ADM-0"), partner="{{ params.partner }}")
        LimioSubmitOrdersOperator(
            task_id="batch",
            orders=[new_order("EXT-ADM-1")],
            partner="{{ params.partner }}",
            ledger_path=f"file://{tmp_path}/ledger",
            results_path=f"file://{tmp_path}/results.jsonl",
        )
    run = run_dag(dag)
    assert states(run) == {"admin": "failed", "batch": "failed"}
    assert [r.path for r in limio_emulator.requests if r.path != "/oauth2/token"] == []
    assert f"invalid partner: it rendered to {rendered!r}, not a partner id" in task_log()


def test_admin_operator_without_a_partner_fails_at_parse_naming_the_task() -> None:
    with DAG("limio_admin_no_partner", schedule=None, start_date=START):
        with pytest.raises(ValueError, match=r"LimioAdminSubmitOrderOperator 'admin': partner is required"):
            LimioAdminSubmitOrderOperator(task_id="admin", order=new_order("EXT-ADM"))
        # The order's own forPartner, or an order known only at run time, is checked when the task runs.
        LimioAdminSubmitOrderOperator(task_id="own", order=new_order("EXT-OWN", forPartner={"id": "partner-7"}))
        LimioAdminSubmitOrderOperator(task_id="later", order="{{ ti.xcom_pull('build') }}")


def test_operators_module_imports_nothing_heavy() -> None:
    import subprocess
    import sys

    probe = (
        "import sys, airflow.providers.common.compat.sdk; before = set(sys.modules); "
        "import limio_provider.operators.orders, limio_provider.operators.batch, limio_provider.operators.export, "
        "limio_provider.operators.reconcile; "
        "print(sorted(m for m in ('requests', 'limio_provider.hooks.limio', "
        "'limio_provider.models.orders') if m in sys.modules and m not in before))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


# -- check_processing: complete, but billing failed ------------------------------------------------------


@pytest.mark.parametrize("deferrable", [False, True], ids=["worker", "triggerer"])
def test_check_processing_fails_an_order_whose_billing_failed_and_passes_a_billed_one(
    limio_emulator: LimioEmulator, task_log: Callable[[], str], deferrable: bool
) -> None:
    """Limio completes both orders; the billing plugin fails for one (the emulator's fault): only its process
    event says so. With check_processing that task fails with the plugin's message, the other succeeds."""
    limio_emulator.processing_delay = 0.3
    limio_emulator.add_fault(Fault(route="order", action="billing_fails", external_id=f"EXT-BF-{deferrable}"))
    with DAG(f"limio_check_processing_{deferrable}", schedule=None, start_date=START) as dag:
        for name in ("BF", "OK"):
            LimioSubmitOrderOperator(
                task_id=f"submit_{name.lower()}",
                order=new_order(f"EXT-{name}-{deferrable}"),
                wait_for_completion=True,
                check_processing=True,
                poll_interval=0.05,
                deferrable=deferrable,
            )
    task_log()
    run = run_dag(dag)
    assert states(run) == {"submit_bf": "failed", "submit_ok": "success"}
    (failed,) = limio_emulator.orders_with_external_id(f"EXT-BF-{deferrable}")
    assert failed["status"] == "complete"  # the order itself looks fine
    log = task_log()
    assert f"Limio order {failed['id']} is complete, but its processing failed: zuora: " in log
    assert xcom(run, "submit_bf", "order_id") == [failed["id"]]  # the order exists: its id is pushed


def test_check_processing_needs_wait_for_completion() -> None:
    with pytest.raises(ValueError, match="check_processing reads the process events of a finished order"):
        LimioSubmitOrderOperator(task_id="submit", order=new_order("EXT-CP"), check_processing=True)
