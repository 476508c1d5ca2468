"""The order ledger: what was sent to Limio, remembered durably and outside any one task.

One small JSON record per (tenant, external_id) under a root given as an Airflow ``ObjectStoragePath`` URI:
``file:///var/lib/limio-ledger/`` on one machine, ``s3://aws_conn_id@bucket/prefix/`` when workers are many
(any fsspec scheme works the same). Claiming a record is an atomic create-if-absent (a hard link of a complete
temporary file on a local disk, a conditional ``PUT`` with ``If-None-Match: *`` on S3), so of two workers
claiming the same external_id exactly one proceeds. Every later write is a compare-and-swap: it replaces the
record only if the record is still the one the writer last read or wrote (``If-Match`` on the ETag on S3; a
lock on the record's file, then a compare and a rename, on a local disk). A try that takes a claim over (a
retry resuming an earlier try's claim) writes its own ``holder`` token, so a try it superseded (frozen, then
resumed) fails its next write and sends nothing (:class:`~limio_provider.exceptions.LimioClaimLostError`).

A record, one line of JSON a person can read (shown here folded)::

    {"tenant": "acme.prod.limio.com", "external_id": "renewal-2026-01-01-42", "fingerprint": "sha256:...",
     "state": "done",
     "order_id": "order-...", "status": "complete", "result": {...}, "error": null,
     "claimed_by": {"dag_id": ..., "run_id": ..., "task_id": ..., "map_index": -1, "try_number": 1},
     "claimed_at": "2026-...Z", "updated_at": "2026-...Z",
     "holder": {"token": "9f2c...", "try_number": 2, "host": "worker-3", "pid": 4242, "since": "2026-...Z"}}

``claimed_by`` and ``claimed_at`` name the claim (what a person's decision refers to) and never change; ``holder``
is the try that holds it now.

States: ``claimed`` (claimed, nothing sent yet), ``sent`` (the request is leaving or left; no answer yet),
``unknown`` (sent, outcome not proven), ``done`` (Limio holds the order: ``order_id`` and ``result`` say
which) and ``refused`` (Limio refused it, or it never left: Limio does not hold it, and a corrected order
may claim the external_id again).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, get_args
from urllib.parse import quote

from limio_provider.exceptions import LimioClaimLostError, LimioConfigError, LimioExternalIdTakenError

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

State = Literal["claimed", "sent", "unknown", "done", "refused"]

#: Every change of a record's state, with the event that makes it: (event, from states, to state); ``None`` is
#: no record. docs/reliability.md shows this table (a test checks they agree); a write outside it is refused.
#: ``done`` is final; a ``refused`` record is only claimed again, or repaired from an order a try stored.
TRANSITIONS: tuple[tuple[str, tuple[State | None, ...], State | Literal["same"]], ...] = (
    ("claim", (None,), "claimed"),
    ("a retry takes the claim over", ("claimed", "sent", "unknown"), "same"),
    ("the request is about to leave", ("claimed", "sent", "unknown"), "sent"),
    ("Limio answers with the order", ("sent",), "done"),
    ("the outcome is unknown", ("sent",), "unknown"),
    ("Limio refused it, or it never left", ("claimed", "sent"), "refused"),
    ("the order is found, or a person names it", ("claimed", "sent", "unknown"), "done"),
    ("a person decides `send` on another task's send", ("sent", "unknown"), "refused"),
    ("a retry records the order an earlier try stored", ("claimed", "sent", "unknown", "refused"), "done"),
    ("a corrected order claims it again", ("refused",), "claimed"),
)
_ALLOWED = {(old, old if new == "same" else new) for _, olds, new in TRANSITIONS for old in olds}
#: What a claim that found a record must do next (see :func:`next_step`).
Step = Literal["adopt", "reclaim", "resume", "reconcile", "wait"]


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


def make_folder(folder: Any) -> None:
    """Make the ``ObjectStoragePath`` ``folder`` (and those above it) where the filesystem has folders, a local
    disk; an object store has none to make."""
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(folder.fs, LocalFileSystem):
        folder.fs.makedirs(folder.path, exist_ok=True)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def holder(owner: Owner, token: str | None = None) -> dict[str, Any]:
    """The ``holder`` of a record: the try that holds its claim, with its ``token`` (a new one if not given)."""
    return {
        "token": token or os.urandom(16).hex(),
        "try_number": owner.try_number,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": _now(),
    }


class _Changed(Exception):
    """A compare-and-swap found another record than expected (``None``: none)."""

    def __init__(self, current: dict[str, Any] | None) -> None:
        super().__init__("changed")
        self.current = current


def start_ledger(root: Any, since: datetime, tenant: str | None = None) -> datetime:
    """Say, if nothing has yet, that the ledger under ``root`` (one ``tenant``'s, else every tenant's) holds every
    order sent since ``since`` (aware): for records copied from another root, or a new ledger for work nothing
    was sent for before. Else its first use says "since now", and older work is looked up in Limio before its
    first send. The ``since`` in effect (this call's or an earlier one's)."""
    base = storage_path("ledger_path", root)
    folder = base / quote(tenant, safe="") if tenant else base
    note = _start(base.fs, f"{folder.path.rstrip('/')}/.ledger", since)
    return datetime.fromisoformat(str(note["since"]))


def _start(fs: Any, key: str, since: datetime) -> dict[str, Any]:
    """Write the ``.ledger`` file ``key`` if there is none; the one there."""
    note = {"since": since.astimezone(UTC).isoformat(timespec="milliseconds")}
    try:
        _write(fs, key, _dump(note), create=True)
    except FileExistsError:
        note = _parse(_read(fs, key)) or note
    return note


def _lost(record: dict[str, Any], now: dict[str, Any] | None) -> LimioClaimLostError:
    """The error of a try whose ``record`` the ledger no longer holds (it holds ``now``)."""
    now = now or {}
    who = now.get("holder") or now.get("claimed_by")
    return LimioClaimLostError(
        f"order {record['external_id']}: this try no longer holds its ledger claim (the record is now "
        f"{now.get('state', 'gone')}, held by {who}, updated {now.get('updated_at')}); it writes nothing "
        "more and sends nothing",
        external_id=record["external_id"],
    )


def next_step(record: dict[str, Any], body_fingerprint: str, owner: Owner) -> Step:
    """What to do with the ``record`` an external_id already has, for an order with ``body_fingerprint``.

    - ``adopt``: Limio holds the order (``done``): take its result, send nothing.
    - ``reclaim``: Limio does not hold it (``refused``): a (corrected) order may claim the external_id again.
    - ``resume``: an earlier try of this task instance claimed it and never sent it: send.
    - ``reconcile``: an earlier try of this task instance may have sent it (``sent``/``unknown``): look it up.
    - ``wait``: another task instance holds the claim and has not finished: wait for it, boundedly.

    :raises LimioExternalIdTakenError: the same external_id with a different body (as payment APIs treat a
        reused idempotency key), unless the earlier one was refused.
    """
    state = record.get("state")
    if state == "refused":
        return "reclaim"
    if record.get("fingerprint") != body_fingerprint:
        order_id = record.get("order_id") if state == "done" else None
        held = (
            f"Limio holds it as order {order_id}"
            if order_id
            else "its send has no known outcome yet: Limio may hold it"
            if state in ("sent", "unknown")
            else "another task holds its claim"
        )
        raise LimioExternalIdTakenError(
            f"invalid order: external_id {record.get('external_id')!r} was already used for a different order "
            f"({held}; ledger fingerprint {record.get('fingerprint')}, this order {body_fingerprint}); this one "
            "was not sent. An external_id names one order: give this one its own",
            order_id=order_id,
        )
    if state == "done":
        return "adopt"
    if owner.same_task_instance(record.get("claimed_by")):
        return "resume" if state == "claimed" else "reconcile"
    return "wait"


def ledger_for(settings: Any, path: str | None = None) -> OrderLedger | None:
    """The order ledger of a connection's tenant (``settings``: a hook's :class:`ConnectionSettings`) under
    ``path``, else its ``ledger_path`` extra; ``None`` if neither is set. Records written before tenant names
    were canonical live under the host as the connection spelt it: they are read there too, so an upgrade
    resends nothing."""
    from urllib.parse import urlsplit

    root = path or settings.options.ledger_path
    if not root:
        return None
    spelt, tenant = urlsplit(settings.api_url).netloc, settings.tenant
    return OrderLedger(root, tenant, aliases=() if spelt == tenant else (spelt,))


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
        self._base = base.path.rstrip("/")
        self.tenant = tenant
        self.root = base / quote(tenant, safe="")
        self.fs = self.root.fs
        self._local = _is_local(self.fs)
        self._folder = self.root.path.rstrip("/")
        # Only folders that exist (one look each, here): a ledger with nothing under an alias reads nothing more.
        folders = [(base / quote(alias, safe="")).path.rstrip("/") for alias in aliases]
        self._alias_folders = [folder for folder in folders if self.fs.exists(folder)]
        self._since: datetime | None = None

    def since(self) -> datetime:
        """Since when this ledger holds every order sent to its tenant through it: what its ``.ledger`` file
        says (the tenant's, else the root's: :func:`start_ledger`), else now, written there by this first use.
        Work older than that may have been sent before the ledger existed (under another root, before a wipe)."""
        if self._since is None:
            note = (
                _parse(_read(self.fs, f"{self._folder}/.ledger"))
                or _parse(_read(self.fs, f"{self._base}/.ledger"))
                or _start(self.fs, f"{self._folder}/.ledger", datetime.now(UTC))
            )
            self._since = datetime.fromisoformat(str(note["since"]))
        return self._since

    def path(self, external_id: str) -> Any:
        """Where the record of ``external_id`` lives (an ``ObjectStoragePath``)."""
        return self.root / self._name(external_id)

    def _name(self, external_id: str) -> str:
        """The record's file name: the external_id, percent-encoded, and ``.json``. Where that would not fit a
        local file name (255 bytes), its first characters, ``%%`` (never in an encoded id) and its SHA-256:
        any valid external_id has a record. An object store's keys take every encoded id as it is."""
        name = quote(external_id, safe="")
        if len(name) > MAX_LOCAL_NAME and self._local:
            digest = hashlib.sha256(external_id.encode()).hexdigest()
            head = name[:120]
            head = head[: head.rfind("%")] if "%" in head[-2:] else head  # no escape cut in two
            name = f"{head}%%{digest}"
        return name + ".json"

    def _key(self, external_id: str) -> str:
        """:meth:`path` as the filesystem's own path string (building an ``ObjectStoragePath`` costs more
        than writing a record to a local disk)."""
        return f"{self._folder}/{self._name(external_id)}"

    def read(self, external_id: str) -> dict[str, Any] | None:
        """The record of ``external_id`` (under the tenant's name, else under an alias), or ``None``.

        :raises LimioError: the record's file holds no record of ``external_id`` (not JSON, not an object, no
            known state, another external_id): it names the file; nothing is sent for that order.
        """
        name = self._name(external_id)
        for folder in (self._folder, *self._alias_folders):
            data = _read(self.fs, f"{folder}/{name}")
            if data is not None:
                return _checked(data, external_id, f"{folder}/{name}")
        return None

    def claim(
        self, external_id: str, body_fingerprint: str, owner: Owner, token: str | None = None
    ) -> tuple[bool, dict[str, Any]]:
        """Create the record of ``external_id`` if it does not exist (atomically), held with ``token`` (the
        claiming try's own; a new one if not given).

        :returns: ``(True, the new record)`` if this call created it, else ``(False, the existing record)``.
        """
        if self._alias_folders and (existing := self.read(external_id)) is not None:
            if existing.get("state") != "refused":  # a refused one may be claimed again, as under the tenant's name
                return False, existing  # written under an alias: it is this tenant's record all the same
        record = self._new(external_id, body_fingerprint, owner, token)
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

    def _new(self, external_id: str, body_fingerprint: str, owner: Owner, token: str | None) -> dict[str, Any]:
        now = _now()
        return {
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
            "holder": holder(owner, token),
        }

    def reclaim(
        self, record: dict[str, Any], body_fingerprint: str, owner: Owner, token: str | None = None
    ) -> tuple[bool, dict[str, Any]]:
        """Claim the external_id of a ``refused`` record again: a new claim replaces ``record`` if the ledger
        still holds it (compare-and-swap: of workers doing this, one wins); else ``(False, the record now)``."""
        external_id = record["external_id"]
        fresh = self._new(external_id, body_fingerprint, owner, token)
        try:
            self._swap(record, fresh, durable=False)
        except _Changed as changed:
            if changed.current is None:  # deleted (or never under the tenant's name): claim as usual
                return self.claim(external_id, body_fingerprint, owner, token)
            return False, changed.current
        return True, fresh

    def take(self, record: dict[str, Any], owner: Owner, token: str | None = None) -> dict[str, Any]:
        """Hold ``record``'s claim with ``token`` (a retry resuming an earlier try's claim): any write of a try
        that held it before then fails. :raises LimioClaimLostError: the record changed since it was read."""
        return self.update(record, record["state"], holder=holder(owner, token))

    def update(self, record: dict[str, Any], state: State, **fields: Any) -> dict[str, Any]:
        """Write ``record`` with a new ``state`` (and fields), if the ledger still holds ``record`` as it is.

        :raises LimioClaimLostError: the record changed since this try read or wrote it (another try took the
            claim over, or a person's decision was applied): nothing is written.
        """
        if (record.get("state"), state) not in _ALLOWED:
            from limio_provider.exceptions import LimioError

            raise LimioError(
                f"order {record.get('external_id')}: the ledger record cannot go from {record.get('state')!r} to "
                f"{state!r} (not a transition of the protocol: docs/reliability.md); nothing written"
            )
        new = {**record, **fields, "state": state, "updated_at": _now()}
        # Only "sent" is written to stable storage before going on (the request leaves next): were a machine
        # crash to lose any other write, the record would read as an earlier state, which is always safe:
        # a lost claim is claimed again (nothing was sent), a lost "done", "unknown" or "refused" reads as
        # "sent", which is looked up in Limio and never sent again blindly.
        try:
            self._swap(record, new, durable=state == "sent")
        except _Changed as changed:
            raise _lost(record, changed.current) from None
        return new

    def check(self, record: dict[str, Any]) -> None:
        """That the ledger still holds ``record`` as this try last wrote it (read now).

        :raises LimioClaimLostError: it does not (another try took the claim over)."""
        current = self.read(record["external_id"])
        if current != record:
            raise _lost(record, current)

    def _swap(self, expected: dict[str, Any], new: dict[str, Any], *, durable: bool) -> None:
        """Write ``new`` in place of ``expected``; :class:`_Changed` if the ledger holds something else."""
        external_id = expected["external_id"]
        key = self._key(external_id)
        try:
            _swap(self.fs, key, expected, _dump(new), durable=durable)
        except _Changed as changed:
            if changed.current is not None or not self._alias_folders or self.read(external_id) != expected:
                raise
            try:  # the record is under an alias: its first write under the tenant's name creates it
                _write(self.fs, key, _dump(new), create=True, durable=durable)
            except FileExistsError:
                raise _Changed(self.read(external_id)) from None

    def _try_key(self, owner: Owner) -> str:
        task_instance = json.dumps([owner.dag_id, owner.run_id, owner.task_id, owner.map_index])
        return f"{self._folder}/.tries/{hashlib.sha256(task_instance.encode()).hexdigest()[:32]}.try"

    def hold_task_instance(self, owner: Owner, token: str) -> None:
        """Say that the try with ``token`` is the one of ``owner``'s task instance that runs now: a later try
        writes its own, and an earlier one that resumes sees it (:meth:`task_instance_holder`) and stops."""
        note = {"task_instance": [owner.dag_id, owner.run_id, owner.task_id, owner.map_index], **holder(owner, token)}
        _write(self.fs, self._try_key(owner), _dump(note), create=False)

    def task_instance_holder(self, owner: Owner) -> dict[str, Any]:
        """What the latest :meth:`hold_task_instance` of ``owner``'s task instance wrote (``{}``: none)."""
        return _parse(_read(self.fs, self._try_key(owner))) or {}

    def preflight(self) -> None:
        """Prove that the ledger works where it lives before anything is sent: a probe record is created, a
        second create of it must be refused (the atomic create every claim relies on), and it is deleted.

        :raises LimioConfigError: the ledger cannot be written, or does not refuse the second create.
        """
        key = f"{self._folder}/.preflight-{os.urandom(8).hex()}.json"
        try:
            _write(self.fs, key, b"{}\n", create=True)
            try:
                _write(self.fs, key, b"{}\n", create=True)
            except FileExistsError:
                return
            raise LimioConfigError(
                f"the order ledger at {self.root} did not refuse a second create of one record: it cannot tell "
                "two workers claiming one order apart, so nothing was sent. Put it on a local disk or on S3"
            )
        except LimioConfigError:
            raise
        except Exception as exc:
            raise LimioConfigError(
                f"the order ledger at {self.root} cannot be written ({type(exc).__name__}: {str(exc)[:300]}): "
                "nothing was sent"
            ) from exc
        finally:
            try:
                self.fs.rm_file(key)
            except Exception:  # never written, or the store keeps it: a probe record holds no order
                pass

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


def _s3_error_code(exc: BaseException) -> str | None:
    """The S3 error code behind an ``OSError`` s3fs raised, if any."""
    for cause in (exc.__cause__, exc.__context__):
        code = ((getattr(cause, "response", None) or {}).get("Error") or {}).get("Code")
        if code:
            return str(code)
    return None


def _is_conflict(exc: OSError) -> bool:
    """Whether S3 refused a conditional write because another one to the same key was in progress."""
    return _s3_error_code(exc) == "ConditionalRequestConflict" or "ConditionalRequestConflict" in str(exc)


def _is_precondition_failed(exc: OSError) -> bool:
    """Whether S3 refused a conditional write because its condition (``If-Match``) did not hold: 412."""
    return _s3_error_code(exc) in ("PreconditionFailed", "412") or "Precondition" in str(exc)


def _parse(data: bytes | None) -> dict[str, Any] | None:
    try:
        record = json.loads(_last_line(data)) if data is not None else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _last_line(data: bytes) -> bytes:
    """A record's file's last line: the record (on a local disk a record's updates are appended, one line
    each; an object store's object, or a new file, is one line). A last line that is not ended by a newline
    and is not a JSON document is a write that never finished: the line before it is the record."""
    ended = data.endswith(b"\n")
    head, _, last = (data[:-1] if ended else data).rpartition(b"\n")
    if head and not ended:
        try:
            json.loads(last)
        except ValueError:
            return head.rpartition(b"\n")[2]
    return last


def _checked(data: bytes, external_id: str, where: str) -> dict[str, Any]:
    """The record ``data`` holds, if it is a record of ``external_id``; else a :class:`LimioError` naming ``where``."""
    from limio_provider.exceptions import LimioError

    try:
        record = json.loads(_last_line(data))
    except (ValueError, RecursionError):
        problem = "it is not JSON"
    else:
        if not isinstance(record, dict):
            problem = f"it holds a JSON {type(record).__name__}, not a record"
        elif record.get("state") not in get_args(State):
            problem = f"its state is {record.get('state')!r}, none of the protocol's"
        elif record.get("external_id") != external_id:
            problem = f"it is the record of {record.get('external_id')!r}"
        else:
            return record
    raise LimioError(
        f"the ledger record of order {external_id} ({where}) is corrupt: {problem}. Nothing was sent for this "
        "order: restore the record from a backup, or, once Limio has been searched for the order by its "
        "external_id, delete it (docs/production.md)"
    )


def parse_record(data: bytes) -> dict[str, Any] | None:
    """The record a ledger file's bytes hold (``None`` if none can be read): for tools and tests that read a
    ledger's files themselves; :meth:`OrderLedger.read` is the ledger's own way."""
    return _parse(data)


#: The longest percent-encoded external_id a local record's file is named after (with ``.json``, within the
#: 255 bytes of a file name); a longer one is named after its digest (:meth:`OrderLedger._name`).
MAX_LOCAL_NAME = 250


_PROCESS_TAG = os.urandom(4).hex()


def _is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _temporary(path: str, data: bytes, *, durable: bool) -> str:
    """A complete temporary copy of ``data`` next to ``path`` (on a local disk), synced if ``durable``."""
    folder = os.path.dirname(path)
    # This thread's own temporary name (it writes one file at a time), short whatever the record's name: its
    # process's (a random tag: another machine's process may have the same pid on a shared disk) and thread's.
    tmp = f"{folder}/.{_PROCESS_TAG}-{os.getpid()}-{threading.get_ident()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, 0o644)
    except FileNotFoundError:  # the first record under this root
        os.makedirs(folder, exist_ok=True)
        fd = os.open(tmp, flags, 0o644)
    try:
        _write_all(fd, data)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink(tmp)
        raise
    os.close(fd)
    return tmp


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _sync_folder(folder: str) -> None:
    folder_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(folder_fd)  # a link or rename in it
    finally:
        os.close(folder_fd)


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
    if not _is_local(fs):  # no directories to make on an object store
        _put(fs, path, data, create=create)
        return
    tmp = _temporary(path, data, durable=durable)
    try:
        if create:
            os.link(tmp, path)  # FileExistsError if the name exists
        else:
            os.replace(tmp, path)
            tmp = ""  # renamed: nothing left to remove
        if durable:
            _sync_folder(os.path.dirname(path))
    finally:
        if tmp:
            _unlink(tmp)


#: How long a compare-and-swap on a local disk waits for another process's on the same record (a frozen
#: process holds its lock until it resumes or dies).
LOCK_WAIT = 30.0
#: A local record's file grows by a line per update; past this size an update rewrites it whole.
COMPACT_AT = 16384


def _swap(fs: Any, path: str, expected: dict[str, Any], data: bytes, *, durable: bool) -> None:
    """Write ``data`` at ``path`` only if the record there is ``expected`` (:class:`_Changed` if not), atomically
    with respect to every other writer: S3's ``If-Match``; on a local disk, an exclusive lock on the record's
    file, held while it is compared and the new version appended as a line (a reader takes the last complete
    line; a file grown past :data:`COMPACT_AT` has a complete temporary file renamed over it instead: a writer
    that waited for the lock finds the name now points to a new file, and looks again).

    Appending, not renaming, is what keeps a record's write cheap on a local disk: a new file per write frees
    an inode per write, and allocating the next one costs more the more were freed (ext4)."""
    if not _is_local(fs):
        _swap_object(fs, path, expected, data)
        return
    import fcntl

    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise _Changed(None) from None
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:  # its writer is frozen: it may write when it resumes
                        raise _Changed(_parse(_read(fs, path))) from None
                    time.sleep(0.002)
            try:
                if os.stat(path).st_ino != os.fstat(fd).st_ino:
                    continue  # replaced while this waited: lock the new file
            except FileNotFoundError:
                raise _Changed(None) from None
            current = _read_fd(fd)  # from the start (appending moves only the writes to the end)
            if _parse(current) != expected:
                raise _Changed(_parse(current))
            if len(current) + len(data) > COMPACT_AT:
                _write(fs, path, data, create=False, durable=durable)
                return
            # A torn last line (a write that never finished) is ended first, so that this one is a line.
            _write_all(fd, data if current.endswith(b"\n") or not current else b"\n" + data)
            if durable:
                os.fsync(fd)
            break
        finally:
            os.close(fd)  # and the lock with it
    if durable:
        _sync_folder(os.path.dirname(path))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_fd(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _swap_object(fs: Any, path: str, expected: dict[str, Any], data: bytes) -> None:
    """:func:`_swap` on an object store: a PUT with ``If-Match`` the ETag of ``expected``. A record's ETag is
    the MD5 of its bytes (one PUT, no encryption with a customer's or KMS key): tried first, with no read;
    where that fails, the record is read, compared, and PUT with ``If-Match`` the ETag it was read with."""
    md5 = hashlib.md5(_dump(expected), usedforsecurity=False).hexdigest()
    try:
        _put(fs, path, data, create=False, if_match=f'"{md5}"')
        return
    except FileNotFoundError:
        raise _Changed(None) from None
    except OSError as exc:
        if not _is_precondition_failed(exc):
            raise
    fs.invalidate_cache(path)
    try:
        etag = fs.info(path)["ETag"]
    except FileNotFoundError:
        raise _Changed(None) from None
    record = _parse(_read(fs, path))
    if record != expected:
        raise _Changed(record)
    try:
        _put(fs, path, data, create=False, if_match=etag)
    except FileNotFoundError:
        raise _Changed(None) from None
    except OSError as exc:
        if not _is_precondition_failed(exc):
            raise
        raise _Changed(_parse(_read(fs, path))) from None


def _put(fs: Any, path: str, data: bytes, *, create: bool, if_match: str | None = None) -> None:
    """An object store's PUT; a conditional one that S3 answers 409 (a racing write) is retried."""
    pause = CONFLICT_PAUSE
    condition = {"IfMatch": if_match} if if_match else {}
    for attempt in range(CONFLICT_RETRIES + 1):
        try:
            fs.pipe_file(path, data, mode="create" if create else "overwrite", **condition)
            return
        except FileExistsError:
            raise
        except OSError as exc:
            if not ((create or if_match) and _is_conflict(exc)) or attempt == CONFLICT_RETRIES:
                raise
            time.sleep(pause)
            pause *= 2


def _dump(record: dict[str, Any]) -> bytes:
    """A record as one line of JSON (sorted keys: ``jq`` shows it to a person)."""
    return (json.dumps(record, sort_keys=True) + "\n").encode()
