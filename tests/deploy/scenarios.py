"""Scenarios more than one deployment runs (LocalExecutor, CeleryExecutor), and their helpers."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import psutil

from tests.deploy.harness import failed_by_asset_alias_race

if TYPE_CHECKING:
    from limio_provider.testing.emulator import LimioEmulator
    from tests.deploy.conftest import Deployment


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def one_order(emulator: LimioEmulator, external_id: str) -> dict:
    orders = emulator.orders_with_external_id(external_id)
    assert len(orders) == 1, f"{external_id}: {len(orders)} orders in Limio: {orders}"
    return orders[0]


def submits(emulator: LimioEmulator, external_id: str) -> list:
    """The submits (``POST /order``) Limio received for ``external_id``."""
    return [
        r
        for r in emulator.requests
        if r.method == "POST"
        and r.path.endswith("/order")
        and isinstance(r.body, dict)
        and r.body.get("external_id") == external_id
    ]


def task_process(ti_id: str) -> psutil.Process | None:
    """The process running task instance ``ti_id``: the Task SDK titles it ``airflow worker -- <ti id>``."""
    for process in psutil.process_iter(["cmdline"]):
        if f"airflow worker -- {ti_id}" in " ".join(process.info["cmdline"] or ()):
            return process
    return None


def mapped_submit(airflow: Deployment, emulator: LimioEmulator) -> None:
    """A mapped submit of a few orders runs to success: one order each, XCom ``order_id`` and the extra link.

    The tasks finish together, so on a new deployment they race in Airflow to link the orders asset to the
    alias, and Airflow may fail one after its order was sent (docs/chaining.md). Such a task, and only such a
    task, is cleared as the docs say, and its new try must adopt its order, sending nothing.
    """
    api, dag_id, prefix, count = airflow.api, "deploy_mapped_submit", unique("mapped"), 4
    run_id = api.trigger(dag_id, {"prefix": prefix, "count": count})
    raced: set[int] = set()
    if api.wait_run(dag_id, run_id) != "success":
        failed = {ti["map_index"]: ti["id"] for ti in api.task_instances(dag_id, run_id) if ti["state"] == "failed"}
        raced_ids = failed_by_asset_alias_race(airflow.processes)
        raced = {i for i, ti_id in failed.items() if ti_id in raced_ids}
        assert raced and raced == set(failed), api.diagnose(dag_id, run_id)
        api.clear(dag_id, run_id, ["submit"], only_failed=True)
        assert api.wait_run(dag_id, run_id) == "success", api.diagnose(dag_id, run_id)

    states = api.states(dag_id, run_id)
    assert [states[f"submit[{i}]"] for i in range(count)] == ["success"] * count, states
    for i in range(count):
        order = one_order(emulator, f"{prefix}-{i}")
        assert len(submits(emulator, f"{prefix}-{i}")) == 1
        assert api.xcom(dag_id, run_id, "submit", "order_id", map_index=i) == order["id"]
        assert api.xcom(dag_id, run_id, "submit", "adopted", map_index=i) is (i in raced)
        links = api.links(dag_id, run_id, "submit", map_index=i)
        assert links.get("Limio order") == f"{emulator.url}/_emulator/orders/{order['id']}", links


def deferrable_wait(airflow: Deployment, emulator: LimioEmulator) -> None:
    """A deferrable wait really defers (state ``deferred`` seen) and resumes to success through the triggerer."""
    api, dag_id, external_id = airflow.api, "deploy_deferred_wait", unique("deferred")
    run_id = api.trigger(dag_id, {"external_id": external_id})
    # The order stays `submitted` for the emulator's processing_delay: the task must give up its slot meanwhile.
    deferred = api.wait_ti(dag_id, run_id, "submit_and_wait", {"deferred", "success", "failed"}, timeout=90)
    assert deferred["state"] == "deferred", f"never seen deferred: {api.diagnose(dag_id, run_id)}"
    assert emulator.orders_with_external_id(external_id)[0]["status"] == "submitted"
    assert api.wait_run(dag_id, run_id) == "success", api.diagnose(dag_id, run_id)

    order = one_order(emulator, external_id)
    assert order["status"] == "complete", order
    result = api.xcom(dag_id, run_id, "submit_and_wait")
    assert result["id"] == order["id"] and result["status"] == "complete", result
    assert api.xcom(dag_id, run_id, "submit_and_wait", "order_id") == order["id"]
    assert api.links(dag_id, run_id, "submit_and_wait")["Limio order"].endswith(order["id"])
    # The trigger read the order back until it was final, from the triggerer.
    reads = [r for r in emulator.requests if r.method == "GET" and r.path.endswith(f"/orders/{order['id']}")]
    assert len(reads) >= 2, reads
    log = api.log(dag_id, run_id, "submit_and_wait", 1)
    assert "Trigger fired event" in log and "'order_status': 'complete'" in log, log[-3000:]


def sensor_with_stored_connection(airflow: Deployment, emulator: LimioEmulator) -> None:
    """A connection stored in the metadata database: a deferrable sensor and a deferrable submit-and-wait run in
    the triggerer at once, both succeed, and the triggerer is still healthy after them."""
    import json

    api, dag_id, external_id = airflow.api, "deploy_sensor_stored_connection", unique("sensor")
    conn_id = unique("limio_stored").replace("-", "_")
    api.set_connection(conn_id, json.loads(emulator.connection_json()))
    run_id = api.trigger(dag_id, {"external_id": external_id, "conn_id": conn_id})
    waiting = api.wait_ti(dag_id, run_id, "wait", {"deferred", "success", "failed"}, timeout=90)
    assert waiting["state"] == "deferred", f"the sensor never deferred: {api.diagnose(dag_id, run_id)}"
    assert api.wait_run(dag_id, run_id) == "success", api.diagnose(dag_id, run_id)

    for task_id, order_id in (("wait", external_id), ("submit_and_wait", f"{external_id}-w")):
        order = one_order(emulator, order_id)
        assert order["status"] == "complete", order
        assert api.ti(dag_id, run_id, task_id)["try_number"] == 1, f"{task_id} needed a retry"
    assert api.xcom(dag_id, run_id, "submit_and_wait")["status"] == "complete"
    assert "Trigger fired event" in api.log(dag_id, run_id, "wait", 1)
    assert not api.triggerer_problems(), api.triggerer_problems()
