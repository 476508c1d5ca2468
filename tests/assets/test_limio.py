"""The ``limio://<tenant>/orders`` asset: Airflow normalises it with the provider's handler, and the submit
operators record an event on it, with a small extra, when they succeed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.assets import Asset
from airflow.providers.common.compat.sdk import DAG

from limio_provider.operators import LimioSubmitOrderOperator, LimioSubmitOrdersOperator
from limio_provider.testing import LimioEmulator
from tests.helpers import AIRFLOW_VERSION, START, needs_airflow, new_order, run_dag, states


def events(uri: str) -> list[dict[str, Any]]:
    """The extras of the events Airflow recorded on the asset ``uri``, oldest first."""
    from airflow.utils.session import create_session

    if AIRFLOW_VERSION.major >= 3:
        from airflow.models.asset import AssetEvent as Event
        from airflow.models.asset import AssetModel as Model
    else:
        from airflow.models.dataset import DatasetEvent as Event  # type: ignore[no-redef]
        from airflow.models.dataset import DatasetModel as Model
    with create_session() as session:
        model = session.query(Model).filter(Model.uri == uri).one_or_none()
        if model is None:
            return []
        key = Event.asset_id if AIRFLOW_VERSION.major >= 3 else Event.dataset_id
        return [event.extra for event in session.query(Event).filter(key == model.id).order_by(Event.id)]


@pytest.mark.parametrize(
    ("written", "normalised"),
    [
        ("limio://Acme.Limio.com:443/orders", "limio://acme.limio.com/orders"),
        ("limio://acme.limio.com/orders/", "limio://acme.limio.com/orders"),
        ("limio://127.0.0.1:8765/orders", "limio://localhost:8765/orders"),
        ("limio://acme.limio.com:8443/subscriptions", "limio://acme.limio.com:8443/subscriptions"),
    ],
)
def test_one_tenant_spelt_two_ways_is_one_asset(written: str, normalised: str) -> None:
    assert Asset(written).uri == normalised


@pytest.mark.parametrize(
    ("uri", "named"),
    [
        ("limio:///orders", "names the tenant host"),
        ("limio://acme.limio.com/ordres", "path is one of"),
        ("limio://acme.limio.com/orders?x=1", "no credentials, query or fragment"),
    ],
)
def test_a_malformed_limio_uri_is_refused_naming_what_is_wrong(uri: str, named: str) -> None:
    if AIRFLOW_VERSION.major < 3:  # Airflow 2 warns where the handler refuses ("In Airflow 3, this will raise")
        with pytest.warns(UserWarning, match=named):
            Asset(uri)
        return
    with pytest.raises(ValueError, match=named):
        Asset(uri)


@needs_airflow("3.0", "asset events from a task through an alias (on 2.11 such a task hung in dag.test())")
@pytest.mark.usefixtures("airflow_db")
def test_the_submit_operators_record_an_event_on_the_tenants_orders(
    limio_emulator: LimioEmulator, tmp_path: Path
) -> None:
    uri = f"limio://localhost:{limio_emulator.url.rsplit(':', 1)[1]}/orders"  # the emulator, as the tenant
    before, named_before = len(events(uri)), len(events("limio://acme.limio.com/orders"))
    with DAG("limio_asset_events", schedule=None, start_date=START) as dag:
        LimioSubmitOrderOperator(task_id="single", order=new_order("EXT-ASSET-1"), preview_check=lambda preview: True)
        LimioSubmitOrdersOperator(
            task_id="batch",
            orders=[new_order("EXT-ASSET-2"), new_order("EXT-ASSET-3")],
            results_path=f"file://{tmp_path}/r.jsonl",
            ledger_path=f"file://{tmp_path}/ledger",
        )
        LimioSubmitOrderOperator(task_id="quiet", order=new_order("EXT-ASSET-4"), orders_asset=False)
        named = "limio://Acme.Limio.com/orders"  # another name for the tenant, as a user may give one
        LimioSubmitOrderOperator(task_id="named", order=new_order("EXT-ASSET-6"), orders_asset=named)
        LimioSubmitOrderOperator(task_id="rehearsal", order=new_order("EXT-ASSET-5"), dry_run=True)
    run = run_dag(dag)
    assert run.state == "success", states(run)
    recorded = events(uri)[before:]
    (single,) = [extra for extra in recorded if extra.get("external_id") == "EXT-ASSET-1"]
    (order,) = limio_emulator.orders_with_external_id("EXT-ASSET-1")
    assert single == {
        "orders": 1,
        "counts": {"submitted": 1},
        "order_id": order["id"],
        "external_id": "EXT-ASSET-1",
        "total_due": "19.99",  # previewed: the preview's total
    }
    (batch,) = [extra for extra in recorded if "results_path" in extra]
    assert batch == {"orders": 2, "counts": {"submitted": 2}, "results_path": f"file://{tmp_path}/r.jsonl"}
    assert len(recorded) == 2  # orders_asset=False and a dry run record none
    (named_event,) = events("limio://acme.limio.com/orders")[named_before:]
    assert named_event["external_id"] == "EXT-ASSET-6" and named_event["counts"] == {"submitted": 1}


def test_on_airflow_2_the_operators_declare_no_asset_and_still_check_the_argument() -> None:
    from limio_provider.operators.orders import _orders_outlet

    outlet = _orders_outlet(True, "limio_default")
    assert (outlet is None) == (AIRFLOW_VERSION.major < 3)
    with pytest.raises(ValueError, match="orders_asset must be True, False, a limio:// URI or an Asset"):
        LimioSubmitOrderOperator(task_id="bad", order=new_order("EXT-BAD-ASSET"), orders_asset=3)


def test_openlineage_names_a_limio_asset_through_the_registered_converter() -> None:
    """OpenLineage's provider finds the converter in the provider info: one tenant, however it is spelt."""
    pytest.importorskip("airflow.providers.openlineage", reason="the test extra installs the OpenLineage provider")
    from airflow.providers.openlineage.utils.utils import translate_airflow_asset

    for uri in ("limio://Acme.prod.limio.com:443/orders", "limio://acme.prod.limio.com/orders"):
        dataset = translate_airflow_asset(Asset(uri), None)
        assert dataset is not None, f"no converter registered for {uri}"
        assert (dataset.namespace, dataset.name) == ("limio://acme.prod.limio.com", "orders")
