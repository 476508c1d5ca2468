"""Limio order operators (cheap to import at DAG-parse time)."""

from __future__ import annotations

from limio_provider.operators.batch import LimioSubmitOrdersOperator
from limio_provider.operators.orders import (
    LimioAdminSubmitOrderOperator,
    LimioPreviewOrderOperator,
    LimioSubmitOrderOperator,
    external_id_for,
)

__all__ = [
    "LimioAdminSubmitOrderOperator",
    "LimioPreviewOrderOperator",
    "LimioSubmitOrderOperator",
    "LimioSubmitOrdersOperator",
    "external_id_for",
]
