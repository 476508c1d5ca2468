"""The ``limio`` asset URI scheme: ``limio://<tenant>/orders`` is a tenant's orders, the asset the submit
operators produce.

Kept to the standard library: Airflow imports the normaliser whenever a DAG names a ``limio://`` asset.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from urllib.parse import SplitResult

    from airflow.providers.common.compat.assets import Asset
    from openlineage.client.event_v2 import Dataset

#: What a ``limio://`` asset may hold: the objects the Objects API names (the submit operators produce
#: ``orders``).
OBJECT_TYPES = frozenset({"orders", "subscriptions", "customers", "events", "process"})

_DEFAULT_PORTS = {"https": 443, "http": 80}


def canonical_tenant(scheme: str, hostname: str, port: int | None) -> str:
    """One name for one tenant, however its connection spells the host: lower-case, without a trailing dot,
    without the scheme's default port (``Acme.limio.com:443`` and ``acme.limio.com`` are one tenant); every
    loopback name (``127.0.0.1``, ``::1``) is ``localhost``. A second host name of the same tenant (a DNS
    alias) cannot be known from here: the connection's ``tenant`` extra names it."""
    host = hostname.lower().rstrip(".")
    if is_loopback(host):
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    return host if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"


def is_loopback(hostname: str) -> bool:
    """Whether ``hostname`` is this machine (``localhost``, ``127.0.0.0/8``, ``::1``)."""
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def orders_uri(tenant: str) -> str:
    """The URI of ``tenant``'s orders asset, e.g. ``limio://acme.prod.limio.com/orders``."""
    return f"limio://{tenant}/orders"


def sanitize_uri(uri: SplitResult) -> SplitResult:
    """Airflow's normaliser for ``limio://`` URIs: the tenant as :func:`canonical_tenant` names it (so
    ``limio://Acme.limio.com:443/orders`` and ``limio://acme.limio.com/orders`` are one asset) and one of
    :data:`OBJECT_TYPES` as the path, with no query or fragment."""
    example = "e.g. limio://acme.prod.limio.com/orders"
    if not uri.hostname:
        raise ValueError(f"a limio:// asset URI names the tenant host, {example}")
    try:
        port = uri.port
    except ValueError:
        raise ValueError(f"a limio:// asset URI's port is a number, {example}") from None
    objects = uri.path.strip("/")
    if objects not in OBJECT_TYPES:
        kinds = ", ".join(sorted(OBJECT_TYPES))
        raise ValueError(f"a limio:// asset URI's path is one of {kinds}, not {uri.path!r}; {example}")
    if uri.query or uri.fragment or uri.username or uri.password:
        raise ValueError(f"a limio:// asset URI has no credentials, query or fragment, {example}")
    return uri._replace(netloc=canonical_tenant("https", uri.hostname, port), path=f"/{objects}")


def create_asset(*, tenant: str, objects: str = "orders", extra: dict[str, Any] | None = None) -> Asset:
    """The asset of ``tenant``'s ``objects`` (Airflow's ``asset-uris`` factory)."""
    from airflow.providers.common.compat.assets import Asset

    return Asset(uri=f"limio://{tenant}/{objects}", extra=extra)


def convert_asset_to_openlineage(asset: Asset, lineage_context: Any) -> Dataset:
    """Airflow's ``to_openlineage_converter`` for ``limio://`` assets (with OpenLineage installed):
    ``limio://<tenant>/<objects>`` is the dataset of namespace ``limio://<tenant>``, name ``<objects>``."""
    from urllib.parse import urlsplit

    from openlineage.client.event_v2 import Dataset

    parts = urlsplit(asset.uri)
    return Dataset(namespace=f"limio://{parts.netloc}", name=parts.path.strip("/"))
