"""Provider registration: metadata, and Airflow's own CLI finding the provider and its connection type."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from limio_provider import __version__
from limio_provider.get_provider_info import CONN_FIELDS, get_provider_info
from limio_provider.hooks.limio import OPTION_NAMES, LimioHook
from limio_provider.testing import LimioEmulator


def airflow_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "airflow", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_provider_info_matches_the_code() -> None:
    info = get_provider_info()
    assert info["package-name"] == "airflow-provider-limio"
    assert info["versions"] == [__version__]
    (conn,) = info["connection-types"]
    assert conn["connection-type"] == LimioHook.conn_type
    assert conn["hook-class-name"] == f"{LimioHook.__module__}.{LimioHook.__qualname__}"
    assert list(CONN_FIELDS) == list(OPTION_NAMES)  # every extra the hook accepts is in the form, and no other
    assert conn["ui-field-behaviour"]["relabeling"] == {
        "host": "Tenant Host",
        "login": "Client ID",
        "password": "Client Secret",
    }
    assert "port" not in conn["ui-field-behaviour"]["hidden-fields"]  # the hook uses conn.port


def test_the_hooks_form_behaviour_passes_airflows_hook_schema() -> None:
    """Below Airflow 3.2 the form comes from the hook, checked against this schema (``hidden_fields``)."""
    from pathlib import Path

    import airflow
    import jsonschema

    schema_file = Path(airflow.__file__).parent / "customized_form_field_behaviours.schema.json"
    behaviour = LimioHook.get_ui_field_behaviour()
    jsonschema.validate(behaviour, json.loads(schema_file.read_text()))
    provider_spelling = get_provider_info()["connection-types"][0]["ui-field-behaviour"]
    assert behaviour == {key.replace("-", "_"): value for key, value in provider_spelling.items()}


def test_provider_info_lists_each_module_of_each_kind() -> None:
    from limio_provider.operators import (
        LimioAdminSubmitOrderOperator,
        LimioExportObjectsOperator,
        LimioPreviewOrderOperator,
        LimioReconcileOrdersOperator,
        LimioSubmitOrderOperator,
        LimioSubmitOrdersOperator,
    )
    from limio_provider.sensors.limio import LimioOrderSensor
    from limio_provider.triggers.limio import LimioOrderTrigger

    info = get_provider_info()
    (integration,) = info["integrations"]
    operators = [
        LimioPreviewOrderOperator,
        LimioSubmitOrderOperator,
        LimioAdminSubmitOrderOperator,
        LimioSubmitOrdersOperator,
        LimioExportObjectsOperator,
        LimioReconcileOrdersOperator,
    ]
    kinds = {
        "hooks": [LimioHook],
        "operators": operators,
        "sensors": [LimioOrderSensor],
        "triggers": [LimioOrderTrigger],
    }
    for kind, classes in kinds.items():
        (entry,) = info[kind]
        assert entry["integration-name"] == integration["integration-name"], kind
        assert sorted(entry["python-modules"]) == sorted({cls.__module__ for cls in classes}), kind


def test_provider_info_passes_airflows_schema() -> None:
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert manager.providers["airflow-provider-limio"].version == __version__  # the package's one version
    assert "limio_provider.links.limio.LimioOrderLink" in manager.extra_links_class_names
    # What `airflow providers triggers` lists.
    assert [
        (t.trigger_class_name, t.integration_name)
        for t in manager.trigger
        if t.package_name == "airflow-provider-limio"
    ] == [("limio_provider.triggers.limio", "Limio")]


@pytest.mark.usefixtures("airflow_db")
def test_airflow_cli_lists_adds_and_tests_limio_connections(limio_emulator: LimioEmulator) -> None:
    listed = airflow_cli("providers", "list", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert any(p["package_name"] == "airflow-provider-limio" for p in json.loads(listed.stdout))

    added = airflow_cli(
        "connections",
        "add",
        "limio_cli",
        "--conn-type",
        "limio",
        "--conn-host",
        limio_emulator.url,
        "--conn-login",
        limio_emulator.client_id,
        "--conn-password",
        limio_emulator.client_secret,
    )
    assert added.returncode == 0, added.stderr

    tested = airflow_cli("connections", "test", "limio_cli", AIRFLOW__CORE__TEST_CONNECTION="Enabled")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "success" in tested.stdout.lower()
    assert limio_emulator.client_secret not in tested.stdout + tested.stderr
    assert [r.path for r in limio_emulator.requests] == ["/oauth2/token", "/api/objects/limio/orders"]

    bad = {"conn_type": "limio", "host": limio_emulator.url, "login": "nobody", "password": "wrong-secret-123"}
    failed = airflow_cli(
        "connections",
        "test",
        "limio_bad",
        AIRFLOW__CORE__TEST_CONNECTION="Enabled",
        AIRFLOW_CONN_LIMIO_BAD=json.dumps(bad),
    )
    assert "refused the client credentials" in failed.stdout + failed.stderr
    assert "wrong-secret-123" not in failed.stdout + failed.stderr


def test_airflow_cli_lists_the_hook_link_and_trigger() -> None:
    hooks = airflow_cli("providers", "hooks", "-o", "json")
    assert hooks.returncode == 0, hooks.stderr
    assert {"connection_type": "limio", "class": "limio_provider.hooks.limio.LimioHook"}.items() <= next(
        h for h in json.loads(hooks.stdout) if h.get("connection_type") == "limio"
    ).items()
    links = airflow_cli("providers", "links", "-o", "json")
    assert links.returncode == 0, links.stderr
    assert "limio_provider.links.limio.LimioOrderLink" in [
        link["extra_link_class_name"] for link in json.loads(links.stdout)
    ]
    triggers = airflow_cli("providers", "triggers", "-o", "json")
    assert triggers.returncode == 0, triggers.stderr
    assert any("limio_provider.triggers.limio" in json.dumps(t) for t in json.loads(triggers.stdout))


def test_the_connection_form_shows_each_extra_and_the_relabelled_fields_on_this_airflow() -> None:
    """What the connection form gets: below 3.2 Airflow reads it from the hook, from 3.2 from the provider info."""
    expected = {name for name, field in CONN_FIELDS.items() if "object" not in field["schema"]["type"]}
    try:
        from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService
    except ImportError:  # Airflow 2: the Flask form
        from airflow.providers_manager import ProvidersManager

        manager = ProvidersManager()
        fields = {key.split("__")[-1] for key in manager.connection_form_widgets if key.startswith("extra__limio__")}
        assert expected <= fields
        behaviour = manager.field_behaviours["limio"]
        assert behaviour["relabeling"]["host"] == "Tenant Host"
        assert behaviour["hidden_fields"] == ["schema"]
        return
    HookMetaService.hook_meta_data.cache_clear()
    (meta,) = [m for m in HookMetaService.hook_meta_data() if m.connection_type == "limio"]
    assert expected <= set(meta.extra_fields or {})
    assert meta.standard_fields is not None
    fields = meta.standard_fields.model_dump()
    assert fields["host"]["title"] == "Tenant Host"
    assert fields["login"]["title"] == "Client ID"
    assert fields["port"]["hidden"] is False  # used: it overrides a port written in the host
    assert fields["url_schema"]["hidden"] is True
