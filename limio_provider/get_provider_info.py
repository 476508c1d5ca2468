"""Provider metadata for Airflow's ProvidersManager (entry point ``apache_airflow_provider``).

Kept free of imports beyond the standard library: Airflow reads it without importing the hook.
"""

from __future__ import annotations

from typing import Any

UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["schema"],  # the port is shown: it is used, and overrides a port written in the host
    "relabeling": {"host": "Tenant host", "login": "Client ID", "password": "Client secret"},
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
        _optional("string", enum=["https", "http", None]),
        "https (default). http only for a loopback emulator (127.0.0.1, localhost).",
    ),
    "base_path": _field("API base path", _optional("string"), "Path of the API on the tenant host (default /api)."),
    "token_path": _field(
        "Token path", _optional("string"), "OAuth2 token endpoint on the tenant root (default /oauth2/token)."
    ),
    "token_auth": _field(
        "Token auth style",
        _optional("string", enum=["body", "basic", None]),
        "Send client credentials in the form body (default, as Limio documents) or as HTTP Basic.",
    ),
    "timeout": _field(
        "Answer timeout (s)", _optional("number", exclusiveMinimum=0), "The whole answer, once a request is sent (30)."
    ),
    "max_answer_bytes": _field(
        "Max answer size (bytes)", _optional("integer", minimum=1024), "Largest answer read, decoded (32 MiB)."
    ),
    "connect_timeout": _field("Connect timeout (s)", _optional("number", exclusiveMinimum=0), "Default 10."),
    "retry_limit": _field(
        "Retry limit", _optional("integer", minimum=0, maximum=20), "Retries where safe, after the first try (4)."
    ),
    "retry_backoff": _field("Retry backoff (s)", _optional("number", minimum=0), "First backoff, doubling (1)."),
    "retry_max_backoff": _field("Max backoff (s)", _optional("number", minimum=0), "Longest backoff (30)."),
    "retry_after_max": _field(
        "Max Retry-After (s)", _optional("number", minimum=0), "Longest Retry-After honoured (60)."
    ),
    "verify": _field(
        "TLS verification", _optional(["boolean", "string"]), "true (default), false, or a CA bundle path."
    ),
    "proxies": _field("Proxies", _optional("object"), 'requests-style proxies, e.g. {"https": "http://proxy:3128"}.'),
    "order_link_template": _field(
        "Order link template",
        _optional("string"),
        "URL for the 'Limio order' link with {order_id}; default: the order in the Objects API.",
    ),
    "ledger_path": _field(
        "Order ledger path",
        _optional("string"),
        "Where every order sent is remembered, across runs and workers: file:///... on one machine, "
        "s3://aws_conn_id@bucket/prefix when workers are many.",
    ),
    "tenant": _field(
        "Tenant name (ledger)",
        _optional("string"),
        "Names this tenant in the order ledger; default: the host, lower-case, without a default port. Set it "
        "when the tenant is reached through more than one host name.",
    ),
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
                "python-modules": ["limio_provider.operators.orders", "limio_provider.operators.batch"],
            }
        ],
        "sensors": [{"integration-name": "Limio", "python-modules": ["limio_provider.sensors.limio"]}],
        "triggers": [{"integration-name": "Limio", "python-modules": ["limio_provider.triggers.limio"]}],
        "extra-links": ["limio_provider.links.limio.LimioOrderLink"],
    }
