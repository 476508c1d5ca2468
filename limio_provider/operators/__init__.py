"""Limio order operators (cheap to import at DAG-parse time: each operator's module is loaded when a DAG file
first names it, so a DAG with single-order operators never loads the batch operator's)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from limio_provider.exactly_once.identity import external_id_for
    from limio_provider.operators.batch import LimioSubmitOrdersOperator
    from limio_provider.operators.export import LimioExportObjectsOperator
    from limio_provider.operators.orders import (
        LimioAdminSubmitOrderOperator,
        LimioPreviewOrderOperator,
        LimioSubmitOrderOperator,
    )
    from limio_provider.operators.reconcile import LimioReconcileOrdersOperator

#: Where each public name lives.
_MODULES = {
    "LimioAdminSubmitOrderOperator": "limio_provider.operators.orders",
    "LimioExportObjectsOperator": "limio_provider.operators.export",
    "LimioPreviewOrderOperator": "limio_provider.operators.orders",
    "LimioReconcileOrdersOperator": "limio_provider.operators.reconcile",
    "LimioSubmitOrderOperator": "limio_provider.operators.orders",
    "LimioSubmitOrdersOperator": "limio_provider.operators.batch",
    "external_id_for": "limio_provider.exactly_once.identity",
}

__all__ = [
    "LimioAdminSubmitOrderOperator",
    "LimioExportObjectsOperator",
    "LimioPreviewOrderOperator",
    "LimioReconcileOrdersOperator",
    "LimioSubmitOrderOperator",
    "LimioSubmitOrdersOperator",
    "external_id_for",
]


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULES[name]), name)
    globals()[name] = value  # once: later look-ups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
