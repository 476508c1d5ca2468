"""Export Limio objects of one type to a JSON Lines file on object storage, a page at a time.

This module is imported at DAG-parse time, so it imports nothing heavy: the hook is imported when a task runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from airflow.providers.common.compat.sdk import BaseOperator

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context, ObjectStoragePath

    from limio_provider.hooks.limio import LimioHook

#: Objects written to one part file before the export records how far it got (a retry resumes from there).
PART_OBJECTS = 5000


class LimioExportObjectsOperator(BaseOperator):
    """Export every Limio object of one type (``GET /objects/limio/{object_type}``, through its ``queryMore``
    cursor) to a JSON Lines file, one object per line as Limio sent it, and return a small summary.

    Windowed by the run's data interval by default: only objects whose ``date_field`` falls in
    ``[data_interval_start, data_interval_end)`` are written (an object without that date is written and
    counted as ``undated``; a run without an interval exports everything). Limio documents no date filter
    and no order for its lists, so every page is read unless ``stop_at_window_start`` says the tenant lists
    newest first.

    Bounded in memory (a page at a time) and resumable: the objects go to part files beside ``path``
    (``<path>.parts/``), and after each part (:data:`PART_OBJECTS` objects) the task records, in Airflow's
    ``task_state_store`` (Airflow 3.3), the parts written and the cursor of the next page. A retry continues
    from there; once every page is read the parts are joined into ``path`` and removed. Without
    ``task_state_store`` a retry starts again. Returns ``{"object_type", "path", "exported", "undated",
    "outside_window", "pages", "window", "resumed"}``.

    :param object_type: the Objects API type: ``orders``, ``subscriptions``, ``customers``, ``events``,
        ``process``, ... (templated)
    :param path: the JSON Lines file to write, an ``ObjectStoragePath`` URI (``s3://aws_conn@bucket/key``,
        ``file:///data/orders.jsonl``). (templated)
    :param limio_conn_id: the Limio connection. (templated)
    :param window: ``"data_interval"`` (default) or ``"all"``.
    :param date_field: the objects' date to window on (default ``created``).
    :param stop_at_window_start: stop after the first page whose dated objects are all older than the
        window: only for a tenant that lists newest first (the emulator does). Default False.
    :param page_size: objects per page (``limit``).
    :param max_pages: read at most this many pages (``None``: every page).
    :param hook_params: keyword arguments for :class:`~limio_provider.hooks.limio.LimioHook`.
    """

    template_fields: Sequence[str] = ("object_type", "path", "limio_conn_id")
    ui_color = "#e8f1fb"
    #: The ``task_state_store`` key of the export's progress.
    state_key = "limio_export"

    def __init__(
        self,
        *,
        object_type: str,
        path: str,
        limio_conn_id: str = "limio_default",
        window: Literal["data_interval", "all"] = "data_interval",
        date_field: str = "created",
        stop_at_window_start: bool = False,
        page_size: int = 100,
        max_pages: int | None = None,
        hook_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if window not in ("data_interval", "all"):
            raise ValueError(f"window must be 'data_interval' or 'all', got {window!r}")
        if not isinstance(page_size, int) or not 1 <= page_size <= 1000:
            raise ValueError(f"page_size must be an integer from 1 to 1000, got {page_size!r}")
        self.object_type = object_type
        self.path = path
        self.limio_conn_id = limio_conn_id
        self.window = window
        self.date_field = date_field
        self.stop_at_window_start = stop_at_window_start
        self.page_size = page_size
        self.max_pages = max_pages
        self.hook_params = hook_params or {}

    @cached_property
    def hook(self) -> LimioHook:
        from limio_provider.hooks.limio import LimioHook

        return LimioHook(self.limio_conn_id, **self.hook_params)

    def execute(self, context: Context) -> dict[str, Any]:
        from limio_provider.exactly_once.ledger import make_folder, storage_path

        self.hook.objects_path(self.object_type)  # a bad object_type fails before any call
        target = storage_path("path", self.path)
        parts_dir = storage_path("path", str(self.path).rstrip("/") + ".parts")
        window = self._window(context)
        job = {"object_type": self.object_type, "path": str(self.path), "window": window}
        store = context.get("task_state_store")
        stored = store.get(self.state_key) if store is not None else None
        resumed = isinstance(stored, dict) and stored.get("job") == job
        state: dict[str, Any] = (
            stored  # type: ignore[assignment]
            if resumed
            else {"job": job, "parts": [], "cursor": None, "exported": 0, "undated": 0, "outside": 0, "pages": 0}
        )
        if resumed:
            self.log.info("Resuming the export after %d pages (%d objects written)", state["pages"], state["exported"])
        elif parts_dir.exists():
            parts_dir.rmdir(recursive=True)  # a previous try's parts that no record names
        make_folder(parts_dir)
        start, end = (_parse(window[0]), _parse(window[1])) if window else (None, None)
        token = os.urandom(6).hex()  # this try's part names: a try Airflow thought dead never writes over them
        part: Any = None
        part_name, in_part = "", 0
        pages = self.hook.object_pages(
            self.object_type, page_size=self.page_size, max_pages=self._pages_left(state), cursor=state["cursor"]
        )
        try:
            for items, following in pages:
                state["pages"] += 1
                older = 0
                for item in items:
                    when = _parse(item.get(self.date_field))
                    if when is None:
                        state["undated"] += 1
                    elif start is not None and end is not None and not start <= when < end:
                        state["outside"] += 1
                        older += when < start
                        continue
                    if part is None:
                        part_name, in_part = f"part-{len(state['parts']):05d}-{token}.jsonl", 0
                        part = (parts_dir / part_name).open("w")
                    part.write(json.dumps(item, separators=(",", ":"), default=str) + "\n")
                    state["exported"] += 1
                    in_part += 1
                state["cursor"] = following
                done = following is None or bool(self.stop_at_window_start and items and older == len(items))
                if part is not None and (in_part >= PART_OBJECTS or done):
                    part.close()
                    part = None
                    state["parts"].append(part_name)
                    if store is not None:  # every object up to this page is in a recorded part
                        store.set(self.state_key, state)
                if done:
                    break
            if part is not None:  # max_pages reached inside a part: it is written all the same
                part.close()
                part = None
                state["parts"].append(part_name)
        finally:
            if part is not None:
                part.close()
        self._join(target, parts_dir, state["parts"])
        if store is not None:
            store.delete(self.state_key)
        summary = {
            "object_type": self.object_type,
            "path": str(self.path),
            "exported": state["exported"],
            "undated": state["undated"],
            "outside_window": state["outside"],
            "pages": state["pages"],
            "window": window,
            "resumed": resumed,
        }
        self.log.info("Export done: %s", json.dumps(summary))
        return summary

    def _pages_left(self, state: dict[str, Any]) -> int | None:
        return None if self.max_pages is None else max(0, self.max_pages - state["pages"])

    def _window(self, context: Context) -> list[str] | None:
        """The run's data interval as two ISO timestamps, or None (``window="all"``, or a run without one)."""
        if self.window == "all":
            return None
        start, end = context.get("data_interval_start"), context.get("data_interval_end")
        if start is None or end is None or start >= end:
            self.log.info("The run has no data interval: exporting every %s", self.object_type)
            return None
        return [start.isoformat(), end.isoformat()]

    def _join(self, target: ObjectStoragePath, parts_dir: ObjectStoragePath, parts: list[str]) -> None:
        """Write ``target`` from the parts, in order, a chunk at a time; then remove the parts."""
        with target.open("wb") as out:
            for name in parts:
                with (parts_dir / name).open("rb") as source:
                    while chunk := source.read(1 << 20):
                        out.write(chunk)
        if parts_dir.exists():
            parts_dir.rmdir(recursive=True)


def _parse(value: Any) -> datetime | None:
    """An ISO 8601 timestamp (``2026-12-01T06:00:00.000Z``) as an aware datetime; None if it is not one."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        from datetime import UTC

        moment = moment.replace(tzinfo=UTC)
    return moment
