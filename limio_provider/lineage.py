"""OpenLineage for the submit operators: what their ``get_openlineage_facets_on_*`` methods return.

Imported only by those methods, which Airflow's OpenLineage provider calls when it is installed and enabled:
without it nothing here is imported. Datasets follow OpenLineage's naming: a tenant's orders are namespace
``limio://<tenant>``, name ``orders`` (what
:func:`~limio_provider.assets.limio.convert_asset_to_openlineage` makes of the Airflow asset
``limio://<tenant>/orders``); a file is ``s3://bucket`` + key, ``gs://bucket`` + key, or ``file`` + path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

try:
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import Dataset
    from openlineage.client.facet_v2 import RunFacet, error_message_run
except ImportError as missing:
    raise ImportError(
        "limio_provider.lineage needs Airflow's OpenLineage provider: pip install 'airflow-provider-limio[openlineage]'"
    ) from missing

#: The run facet's key in an OpenLineage run event.
FACET = "limio"

_FILE_SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "abfs": "abfs", "wasbs": "wasbs"}


@attrs.define
class LimioOrdersRunFacet(RunFacet):
    """What a submit task did, in numbers: ``orders`` handled, ``counts`` by outcome (``submitted``,
    ``adopted``, ``refused``, ``unknown``, ...), ``externalIdsDigest``
    (:class:`~limio_provider.exactly_once.identity.ExternalIdsDigest`), the ``totalDue`` of the previews
    where the task previewed, the ``resultsPath`` of a batch, and on failure the ``error`` (the exception's
    class: ``LimioOutcomeUnknownError`` means an order may be in Limio)."""

    orders: int = 0
    counts: dict[str, int] = attrs.field(factory=dict)
    externalIdsDigest: str = ""  # noqa: N815 - OpenLineage facets spell their fields in camel case
    totalDue: str | None = None  # noqa: N815
    resultsPath: str | None = None  # noqa: N815
    error: str | None = None

    @staticmethod
    def _get_schema() -> str:
        return "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunFacet"


def orders_dataset(tenant: str) -> Dataset:
    """The tenant's orders (``tenant`` as :func:`~limio_provider.assets.limio.canonical_tenant` names it)."""
    return Dataset(namespace=f"limio://{tenant}", name="orders")


def file_dataset(uri: str) -> Dataset:
    """The dataset of a file an ``ObjectStoragePath`` URI names (``s3://conn@bucket/key``: the connection id
    is not part of the name)."""
    parts = urlsplit(uri)
    bucket = parts.hostname or ""
    scheme = _FILE_SCHEMES.get(parts.scheme)
    if scheme:
        return Dataset(namespace=f"{scheme}://{bucket}", name=parts.path.lstrip("/"))
    return Dataset(namespace=parts.scheme or "file", name=parts.path or uri)


def asset_datasets(assets: Iterable[Any]) -> list[Dataset]:
    """The OpenLineage datasets of Airflow assets (inlets or outlets), through the converters providers
    register (the ``limio`` scheme's is
    :func:`~limio_provider.assets.limio.convert_asset_to_openlineage`); aliases and anything
    without a converter are left out."""
    from airflow.providers.openlineage.utils.utils import translate_airflow_asset

    found = []
    for asset in assets:
        if getattr(asset, "uri", None) and (dataset := translate_airflow_asset(asset, None)) is not None:
            found.append(dataset)
    return found


def operator_lineage(
    *,
    inputs: Iterable[Dataset],
    outputs: Iterable[Dataset],
    record: Mapping[str, Any] | None = None,
    error: BaseException | None = None,
) -> OperatorLineage:
    """Inputs and outputs (each dataset once), the :class:`LimioOrdersRunFacet` of ``record`` (what the task
    did; none before it ran) and, for ``error``, OpenLineage's error message facet."""
    facets: dict[str, Any] = {}
    if record is not None or error is not None:
        facets[FACET] = LimioOrdersRunFacet(**dict(record or {}), error=type(error).__name__ if error else None)
    if error is not None:
        facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            message=str(error)[:2000], programmingLanguage="python"
        )
    return OperatorLineage(inputs=_unique(inputs), outputs=_unique(outputs), run_facets=facets)


def _unique(datasets: Iterable[Dataset]) -> list[Dataset]:
    seen: dict[tuple[str, str], Dataset] = {}
    for dataset in datasets:
        seen.setdefault((dataset.namespace, dataset.name), dataset)
    return list(seen.values())
