"""What names an order and its body: the ``external_id`` an order without one gets, and the one fingerprint of
an order body. Imported at DAG-parse time: nothing heavy."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context


def fingerprint(body: dict[str, Any]) -> str:
    """A fingerprint of the canonical order body (sorted keys, no spaces): ``sha256:`` and 32 hex digits.

    ``external_id`` is part of it; so two orders that differ in any field have different fingerprints.
    """
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:32]


def external_id_for(dag_id: str, task_id: str, work: str, order: dict[str, Any]) -> str:
    """The ``external_id`` the submit operators give an order that has none: it names the work, not the run.

    ``airflow-`` followed by 32 hex digits of a SHA-256 over dag_id, task_id, ``work`` (what identifies the
    run's work: see :func:`work_of`) and a fingerprint of the order body (its ``external_id`` aside). Every
    try, and every new run of the same work (a re-run of a date, a backfill of a day already run), derives
    the same id for the same order; a mapped order keeps its id when the upstream list is reordered. Two
    identical orders in one run get the same id: give them explicit ids. 40 printable ASCII characters.
    """
    body = {key: value for key, value in order.items() if key != "external_id"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    key = "\x1f".join((dag_id, task_id, work, hashlib.sha256(canonical.encode()).hexdigest()))
    return "airflow-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def work_of(context: Context) -> str:
    """What identifies a run's work: its data interval, else its logical date, else (a run with neither,
    e.g. triggered without a logical date) its run id."""
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if start is not None and end is not None:
        return f"interval:{start.isoformat()}/{end.isoformat()}"
    logical_date = context.get("logical_date")
    if logical_date is not None:
        return f"date:{logical_date.isoformat()}"
    return f"run:{context['run_id']}"


class ExternalIdsDigest:
    """A digest of a set of external ids that any order of arrival gives alike: the sum, modulo 2**256, of
    each id's SHA-256, as 64 hex digits. Constant memory for a batch of any size; recompute it from a results
    file with ``sum(int(sha256(i.encode()).hexdigest(), 16) for i in ids) % 2**256``."""

    def __init__(self, external_ids: Iterable[str] = ()) -> None:
        self._sum = 0
        for external_id in external_ids:
            self.add(external_id)

    def add(self, external_id: Any) -> None:
        """Count ``external_id`` in (anything but text, e.g. an invalid order's ``None``, is left out)."""
        if not isinstance(external_id, str):
            return
        self._sum = (self._sum + int(hashlib.sha256(external_id.encode()).hexdigest(), 16)) % 2**256

    def hexdigest(self) -> str:
        return f"{self._sum:064x}"
