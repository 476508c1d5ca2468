"""The order ledger: what was sent to Limio, remembered durably and outside any one task.

One small JSON record per (tenant, external_id) under a root given as an Airflow ``ObjectStoragePath`` URI:
``file:///var/lib/limio-ledger/`` on one machine, ``s3://aws_conn_id@bucket/prefix/`` when workers are many
(any fsspec scheme works the same). Claiming a record is an atomic create-if-absent (a hard link of a complete
temporary file on a local disk, a conditional ``PUT`` with ``If-None-Match: *`` on S3), so of two workers
claiming the same external_id exactly one proceeds.

A record, one line of JSON a person can read (shown here folded)::

    {"tenant": "acme.prod.limio.com", "external_id": "renewal-2026-01-01-42", "fingerprint": "sha256:...",
     "state": "done",
     "order_id": "order-...", "status": "complete", "result": {...}, "error": null,
     "claimed_by": {"dag_id": ..., "run_id": ..., "task_id": ..., "map_index": -1, "try_number": 1},
     "claimed_at": "2026-...Z", "updated_at": "2026-...Z"}

States: ``claimed`` (claimed, nothing sent yet), ``sent`` (the request is leaving or left; no answer yet),
``unknown`` (sent, outcome not proven), ``done`` (Limio holds the order: ``order_id`` and ``result`` say
which) and ``refused`` (Limio refused it, or it never left: Limio does not hold it, and a corrected order
may claim the external_id again).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from limio_provider.exceptions import LimioConfigError, LimioValidationError

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

State = Literal["claimed", "sent", "unknown", "done", "refused"]
#: What a claim that found a record must do next (see :func:`next_step`).
Step = Literal["adopt", "reclaim", "resume", "reconcile", "wait"]


def fingerprint(body: dict[str, Any]) -> str:
    """A fingerprint of the canonical order body (sorted keys, no spaces): ``sha256:`` and 32 hex digits.

    ``external_id`` is part of it; so two orders that differ in any field have different fingerprints.
    """
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Owner:
    """Who claimed a record: the task instance and its try."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1
    try_number: int = 1

    @classmethod
    def of(cls, context: Context) -> Owner:
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        return cls(ti.dag_id, context["run_id"], ti.task_id, -1 if map_index is None else map_index, ti.try_number)

    def same_task_instance(self, other: dict[str, Any] | None) -> bool:
        """Whether ``other`` (a record's ``claimed_by``) is this task instance, in any try."""
        if not isinstance(other, dict):
            return False
        return all(other.get(key) == getattr(self, key) for key in ("dag_id", "run_id", "task_id", "map_index"))


def storage_path(name: str, value: Any) -> Any:
    """The ``ObjectStoragePath`` that the argument ``name`` gives as a URI (or as a path already).

    :raises LimioConfigError: not a URI, or not usable here (an unknown scheme, a missing filesystem
        package...), naming the argument.
    """
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    if isinstance(value, ObjectStoragePath):
        return value
    if not isinstance(value, str) or not value.strip():
        raise LimioConfigError(
            f"{name} must be an ObjectStoragePath URI such as file:///data/limio or "
            f"s3://aws_conn_id@bucket/limio, got {value!r}"
        )
    try:
        return ObjectStoragePath(value.strip())
    except Exception as exc:  # an unknown scheme, a missing filesystem package...
        raise LimioConfigError(f"{name} {value!r} is not usable: {type(exc).__name__}: {exc}") from None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def next_step(record: dict[str, Any], body_fingerprint: str, owner: Owner) -> Step:
    """What to do with the ``record`` an external_id already has, for an order with ``body_fingerprint``.

    - ``adopt``: Limio holds the order (``done``): take its result, send nothing.
    - ``reclaim``: Limio does not hold it (``refused``): a (corrected) order may claim the external_id again.
    - ``resume``: an earlier try of this task instance claimed it and never sent it: send.
    - ``reconcile``: an earlier try of this task instance may have sent it (``sent``/``unknown``): look it up.
    - ``wait``: another task instance holds the claim and has not finished: wait for it, boundedly.

    :raises LimioValidationError: the same external_id with a different body (as payment APIs treat a reused
        idempotency key), unless the earlier one was refused.
    """
    state = record.get("state")
    if state == "refused":
        return "reclaim"
    if record.get("fingerprint") != body_fingerprint:
        raise LimioValidationError(
            f"invalid order: external_id {record.get('external_id')!r} was already used for a different order "
            f"(ledger fingerprint {record.get('fingerprint')}, this order {body_fingerprint}); an external_id "
            "names one order: give this one its own"
        )
    if state == "done":
        return "adopt"
    if owner.same_task_instance(record.get("claimed_by")):
        return "resume" if state == "claimed" else "reconcile"
    return "wait"


class OrderLedger:
    """Records of what was sent to one Limio tenant, under ``root``.

    :param root: an ``ObjectStoragePath`` URI (or path), e.g. ``file:///data/limio-ledger`` or
        ``s3://aws_default@bucket/limio-ledger``.
    :param tenant: the tenant's name (``LimioHook.settings.tenant``: its host, canonical); records of different
        tenants never mix, and each record names its tenant.
    :param aliases: other names records of this tenant may have been written under (a host as a connection
        spelt it before names were canonical): those that hold records (looked at once, here) are read when the
        tenant's own folder has no record, so moving to the canonical name sends nothing again. New records are
        written under ``tenant`` only.
    """

    def __init__(self, root: Any, tenant: str, aliases: tuple[str, ...] = ()) -> None:
        base = storage_path("ledger_path", root)
        self.tenant = tenant
        self.root = base / quote(tenant, safe="")
        self.fs = self.root.fs
        self._folder = self.root.path.rstrip("/")
        # Only folders that exist (one look each, here): a ledger with nothing under an alias reads nothing more.
        folders = [(base / quote(alias, safe="")).path.rstrip("/") for alias in aliases]
        self._alias_folders = [folder for folder in folders if self.fs.exists(folder)]

    def path(self, external_id: str) -> Any:
        """Where the record of ``external_id`` lives (an ``ObjectStoragePath``)."""
        return self.root / (quote(external_id, safe="") + ".json")

    def _key(self, external_id: str) -> str:
        """:meth:`path` as the filesystem's own path string (building an ``ObjectStoragePath`` costs more
        than writing a record to a local disk)."""
        return f"{self._folder}/{quote(external_id, safe='')}.json"

    def read(self, external_id: str) -> dict[str, Any] | None:
        """The record of ``external_id`` (under the tenant's name, else under an alias), or ``None``."""
        name = quote(external_id, safe="")
        for folder in (self._folder, *self._alias_folders):
            data = _read(self.fs, f"{folder}/{name}.json")
            if data is not None:
                record = json.loads(data)
                return record if isinstance(record, dict) else None
        return None

    def claim(self, external_id: str, body_fingerprint: str, owner: Owner) -> tuple[bool, dict[str, Any]]:
        """Create the record of ``external_id`` if it does not exist (atomically).

        :returns: ``(True, the new record)`` if this call created it, else ``(False, the existing record)``.
        """
        if self._alias_folders and (existing := self.read(external_id)) is not None:
            if existing.get("state") != "refused":  # a refused one may be claimed again, as under the tenant's name
                return False, existing  # written under an alias: it is this tenant's record all the same
        now = _now()
        record: dict[str, Any] = {
            "tenant": self.tenant,
            "external_id": external_id,
            "fingerprint": body_fingerprint,
            "state": "claimed",
            "order_id": None,
            "status": None,
            "result": None,
            "error": None,
            "claimed_by": vars(owner).copy(),
            "claimed_at": now,
            "updated_at": now,
        }
        key = self._key(external_id)
        for _ in range(3):  # a record deleted between our create and our read is claimed again
            try:
                _write(self.fs, key, _dump(record), create=True)
                return True, record
            except FileExistsError:
                existing = self.read(external_id)
                if existing is not None:
                    return False, existing
        raise LimioConfigError(f"the ledger record of {external_id!r} keeps disappearing under {self.root}")

    def reclaim(
        self, record: dict[str, Any], body_fingerprint: str, owner: Owner, wait: float = 30.0
    ) -> tuple[bool, dict[str, Any]]:
        """Claim the external_id of a ``refused`` record again (of workers doing this, one wins).

        Only the record as ``record`` shows it is replaced: if it changed since (another worker reclaimed it
        already), ``(False, the record now)``. Of workers reclaiming the same record, the one that creates its
        reclaim marker (atomically, as a claim) deletes it and claims as usual; the others wait up to ``wait``
        seconds for the winner's claim and return ``(False, it)``. A marker left by an earlier try of this task
        instance (stopped between marker and claim) lets this try go on.
        """
        external_id = record["external_id"]
        current = self.read(external_id)
        if current is None:
            return self.claim(external_id, body_fingerprint, owner)
        if current != record:
            return False, current
        version = hashlib.sha256(_dump(current)).hexdigest()[:32]
        marker = f"{self._key(external_id)}.reclaimed-{version}"
        note = {"external_id": external_id, "reclaimed_by": vars(owner).copy(), "at": _now()}
        try:
            _write(self.fs, marker, _dump(note), create=True)
        except FileExistsError:
            try:
                holder = json.loads(_read(self.fs, marker) or b"").get("reclaimed_by")
            except (ValueError, AttributeError):
                holder = None
            if not owner.same_task_instance(holder):
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline:
                    current = self.read(external_id)
                    if current is not None and current != record:
                        return False, current
                    time.sleep(0.05)
                raise LimioConfigError(
                    f"the refused ledger record of {external_id!r} is being reclaimed by {holder}, which did not "
                    f"finish within {wait:.0f} s; if it is not running, delete {self.root.protocol}://{marker} to "
                    "let it be reclaimed"
                ) from None
        try:
            self.fs.rm_file(self._key(external_id))
        except FileNotFoundError:
            pass
        return self.claim(external_id, body_fingerprint, owner)

    def update(self, record: dict[str, Any], state: State, **fields: Any) -> dict[str, Any]:
        """Write ``record`` with a new ``state`` (and fields); only its claimer does this."""
        record = {**record, **fields, "state": state, "updated_at": _now()}
        # Only "sent" is written to stable storage before going on (the request leaves next): were a machine
        # crash to lose any other write, the record would read as an earlier state, which is always safe:
        # a lost claim is claimed again (nothing was sent), a lost "done", "unknown" or "refused" reads as
        # "sent", which is looked up in Limio and never sent again blindly.
        _write(self.fs, self._key(record["external_id"]), _dump(record), create=False, durable=state == "sent")
        return record

    def wait_final(self, external_id: str, timeout: float, interval: float = 1.0) -> dict[str, Any] | None:
        """Read the record until another worker has finished it (``done`` or ``refused``) or ``timeout``
        seconds pass; the last record read (``None`` if it was deleted)."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.read(external_id)
            finished = record is None or record.get("state") in ("done", "refused")
            if finished or time.monotonic() >= deadline:
                return record
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


#: How often a conditional PUT that S3 answered 409 ConditionalRequestConflict (another write to the same key
#: was in progress: AWS asks to retry) is retried, and the first pause between tries (doubled each time).
CONFLICT_RETRIES = 5
CONFLICT_PAUSE = 0.05


def _read(fs: Any, path: str) -> bytes | None:
    """The bytes at ``path``, or ``None``."""
    # Ask the store, not a cache: s3fs answers "not found" for an object missing from a listing it cached,
    # and its ``cat_file`` looks the size up (in that cache, else with a HEAD) first unless given a range.
    fs.invalidate_cache(path)
    try:
        return fs.cat_file(path, start=0)
    except FileNotFoundError:
        return None


def _is_conflict(exc: OSError) -> bool:
    """Whether S3 refused a conditional write because another one to the same key was in progress."""
    response = getattr(exc.__cause__, "response", None) or {}
    code = (response.get("Error") or {}).get("Code")
    return code == "ConditionalRequestConflict" or "ConditionalRequestConflict" in str(exc)


def _write(fs: Any, path: str, data: bytes, *, create: bool, durable: bool = False) -> None:
    """Write all of ``data`` at ``path`` at once: a reader sees the old bytes or the new, never a part.
    ``create``: only if nothing is there (else :class:`FileExistsError`), atomically. ``durable``: on a local
    disk, also on stable storage (file and folder synced) when this returns, so a machine crash keeps it; an
    object store's PUT is durable when it returns.

    An object store's PUT is both (s3fs sends ``If-None-Match: *`` for ``mode="create"``; a 409 conflict is
    retried, and then finds the winner's object). fsspec's local filesystem is neither: its ``mode="create"``
    is ``exists()`` then ``open("wb")``, and ``open("wb")`` empties the file before writing it. So on a local
    disk: a temporary file, then ``link`` (fails if the name exists) or ``rename`` into place.
    """
    from fsspec.implementations.local import LocalFileSystem

    if not isinstance(fs, LocalFileSystem):  # no directories to make on an object store
        _put(fs, path, data, create=create)
        return
    folder, name = os.path.split(path)
    # This thread's own temporary name (it writes one record at a time); a leftover of a dead process whose
    # pid and thread id this one reuses is simply overwritten.
    tmp = f"{folder}/.{name}.{os.getpid()}-{threading.get_ident()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, 0o644)
    except FileNotFoundError:  # the first record under this root
        os.makedirs(folder, exist_ok=True)
        fd = os.open(tmp, flags, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if create:
            os.link(tmp, path)  # FileExistsError if the name exists
        else:
            os.replace(tmp, path)
            tmp = ""  # renamed: nothing left to remove
        if durable:
            folder_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(folder_fd)  # the rename itself
            finally:
                os.close(folder_fd)
    finally:
        if tmp:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


def _put(fs: Any, path: str, data: bytes, *, create: bool) -> None:
    """An object store's PUT; a conditional one that S3 answers 409 (a racing write) is retried."""
    pause = CONFLICT_PAUSE
    for attempt in range(CONFLICT_RETRIES + 1):
        try:
            fs.pipe_file(path, data, mode="create" if create else "overwrite")
            return
        except FileExistsError:
            raise
        except OSError as exc:
            if not (create and _is_conflict(exc)) or attempt == CONFLICT_RETRIES:
                raise
            time.sleep(pause)
            pause *= 2


def _dump(record: dict[str, Any]) -> bytes:
    """A record as one line of JSON (sorted keys: ``jq`` shows it to a person)."""
    return (json.dumps(record, sort_keys=True) + "\n").encode()
