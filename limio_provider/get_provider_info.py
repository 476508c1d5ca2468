"""Provider metadata for Airflow's ProvidersManager (entry point ``apache_airflow_provider``).

Kept free of imports beyond the standard library: Airflow reads it without importing the hook.
"""

from __future__ import annotations

from typing import Any

UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["schema"],  # the port is shown: it is used, and overrides a port written in the host
    "relabeling": {"host": "Tenant Host", "login": "Client ID", "password": "Client Secret"},
    "placeholders": {
        "host": "acme.prod.limio.com",
        "port": "443 (optional)",
        "login": "client id issued by Limio Support",
        "password": "client secret",
        "extra": '{"timeout": 30, "retry_limit": 4}',
    },
}


def _field(label: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"label": label, "description": description, "schema": schema}


def _optional(kind: str | list[str], **schema: Any) -> dict[str, Any]:
    kinds = kind if isinstance(kind, list) else [kind]
    return {"type": [*kinds, "null"], **schema}


CONN_FIELDS: dict[str, Any] = {
    "scheme": _field(
        "Scheme",
        _optional(
            "string",
            enum=["https", "http", None],
            values_display={"https": "https", "http": "http (loopback emulator only)", "null": "default (https)"},
        ),
        "https (default). http only for a loopback emulator (127.0.0.1, localhost).",
    ),
    "base_path": _field("API Base Path", _optional("string"), "Path of the API on the tenant host (default /api)."),
    "token_path": _field(
        "Token Path", _optional("string"), "OAuth2 token endpoint on the tenant root (default /oauth2/token)."
    ),
    "token_auth": _field(
        "Token Auth",
        _optional(
            "string",
            enum=["body", "basic", None],
            values_display={"body": "body", "basic": "basic (HTTP Basic)", "null": "default (body)"},
        ),
        "Send client credentials in the form body (default, as Limio documents) or as HTTP Basic.",
    ),
    "timeout": _field(
        "Answer Timeout (s)", _optional("number", exclusiveMinimum=0), "The whole answer, once a request is sent (30)."
    ),
    "max_answer_bytes": _field(
        "Max Answer Size (bytes)", _optional("integer", minimum=1024), "Largest answer read, decoded (32 MiB)."
    ),
    "connect_timeout": _field("Connect Timeout (s)", _optional("number", exclusiveMinimum=0), "Default 10."),
    "retry_limit": _field(
        "Retry Limit", _optional("integer", minimum=0, maximum=20), "Retries where safe, after the first try (4)."
    ),
    "retry_backoff": _field("Retry Backoff (s)", _optional("number", minimum=0), "First backoff, doubling (1)."),
    "retry_max_backoff": _field("Max Backoff (s)", _optional("number", minimum=0), "Longest backoff (30)."),
    "retry_after_max": _field(
        "Max Retry-After (s)", _optional("number", minimum=0), "Longest Retry-After honoured (60)."
    ),
    "verify": _field(
        "TLS Verification",
        _optional("string", examples=["true", "false"]),  # a text field offering both flags: a path is text too
        "true (default), false, or a CA bundle path.",
    ),
    "proxies": _field(
        "Proxies",
        _optional("object"),
        'requests-style proxies, e.g. {"https": "http://proxy:3128"}; empty: the HTTPS_PROXY, HTTP_PROXY and '
        "NO_PROXY environment variables apply.",
    ),
    "order_link_template": _field(
        "Order Link Template",
        _optional("string"),
        "Your order page's URL with {order_id}, e.g. https://crm.example.com/limio/orders/{order_id}, for the "
        "task's 'Limio order' link (Limio documents no page for an order; without it there is no link).",
    ),
    "ledger_path": _field(
        "Order Ledger Path",
        _optional("string"),
        "Where every order sent is remembered, across runs and workers: file:///... on one machine, "
        "s3://aws_conn_id@bucket/prefix when workers are many.",
    ),
    "environment": _field(
        "Environment",
        _optional(
            "string",
            enum=["sandbox", "production", None],
            values_display={"sandbox": "sandbox", "production": "production", "null": "not said (production)"},
        ),
        "sandbox or production; not said counts as production: a batch of more orders than its "
        "max_unconfirmed_orders then needs confirm_production.",
    ),
    "tenant": _field(
        "Tenant Name (Ledger)",
        _optional("string"),
        "Names this tenant in the order ledger; default: the host, lower-case, without a default port. Set it "
        "when the tenant is reached through more than one host name.",
    ),
}


#: The ``limio://<tenant>/orders`` assets the submit operators produce (:mod:`limio_provider.assets.limio`).
_LIMIO_URIS: dict[str, Any] = {
    "schemes": ["limio"],
    "handler": "limio_provider.assets.limio.sanitize_uri",
    "factory": "limio_provider.assets.limio.create_asset",
    "to_openlineage_converter": "limio_provider.assets.limio.convert_asset_to_openlineage",
}


def get_provider_info() -> dict[str, Any]:
    """What ``airflow providers list`` and the connection form know about this provider."""
    from limio_provider import __version__

    return {
        "package-name": "airflow-provider-limio",
        "name": "Limio",
        "description": "Limio Orders API: preview, submit and admin-submit subscription orders.",
        "versions": [__version__],
        "connection-types": [
            {
                "hook-class-name": "limio_provider.hooks.limio.LimioHook",
                "hook-name": "Limio",
                "connection-type": "limio",
                "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
                "conn-fields": CONN_FIELDS,
            }
        ],
        "integrations": [
            {
                "integration-name": "Limio",
                "external-doc-url": "https://developers.limio.com/",
                "tags": ["service"],
            }
        ],
        "hooks": [{"integration-name": "Limio", "python-modules": ["limio_provider.hooks.limio"]}],
        "operators": [
            {
                "integration-name": "Limio",
                "python-modules": [
                    "limio_provider.operators.orders",
                    "limio_provider.operators.batch",
                    "limio_provider.operators.export",
                    "limio_provider.operators.reconcile",
                ],
            }
        ],
        "sensors": [{"integration-name": "Limio", "python-modules": ["limio_provider.sensors.limio"]}],
        "triggers": [{"integration-name": "Limio", "python-modules": ["limio_provider.triggers.limio"]}],
        "asset-uris": [_LIMIO_URIS],
        "dataset-uris": [_LIMIO_URIS],  # Airflow 2.x's name for the same
        "extra-links": [
            "limio_provider.links.limio.LimioOrderLink",
            "limio_provider.links.limio.LimioResultsFileLink",
        ],
    }
