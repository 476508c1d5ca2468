from __future__ import annotations


def get_provider_info() -> dict:
    return {
        "package-name": "airflow-provider-limio",
        "name": "Limio",
        "description": "Limio Orders API: preview, submit and admin-submit subscription orders.",
        "versions": ["0.1.0"],
    }
