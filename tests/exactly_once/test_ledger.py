"""The order ledger (limio_provider.exactly_once.ledger) on its two backends: a local directory and S3 (moto).

Every behaviour is checked on each backend; the races run 8 separate processes (each with its own Airflow home
and connection) against one ledger, as 8 workers would.
"""

from __future__ import annotations

import json
import os
import queue
import string
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from limio_provider.exactly_once import ledger as ledger_module
from limio_provider.exactly_once.identity import fingerprint
from limio_provider.exactly_once.ledger import OrderLedger, Owner, next_step, parse_record
from limio_provider.exceptions import LimioClaimLostError, LimioError, LimioValidationError
from tests.helpers import moto_client

TENANT = "acme.prod.limio.com"
FIELDS = {
    "tenant",
    "external_id",
    "fingerprint",
    "state",
    "order_id",
    "status",
    "result",
    "error",
    "claimed_by",
    "claimed_at",
    "updated_at",
    "holder",
}
OWNER_FIELDS = {"dag_id", "run_id", "task_id", "map_index", "try_number"}
HOLDER_FIELDS = {"token", "try_number", "host", "pid", "since"}
BODY = {"external_id": "renewal-42", "order": {"items": [{"offer": "offer-1", "quantity": 1}]}}
FP = fingerprint(BODY)
OTHER_FP = fingerprint({**BODY, "order": {"items": [{"offer": "offer-2", "quantity": 1}]}})
A = Owner("renewals", "scheduled__2026-01-01", "submit", map_index=3, try_number=1)
A_RETRY = Owner("renewals", "scheduled__2026-01-01", "submit", map_index=3, try_number=2)
B = Owner("renewals", "manual__2026-01-02", "submit", map_index=3, try_number=1)

RACE_WORKERS = 8
RACE_IDS = 200
RACE_RECLAIMS = 32


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def root(backend: str, request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{backend}_ledger_root")


@pytest.fixture
def ledger(root: str) -> OrderLedger:
    return OrderLedger(root, TENANT)


def other_writer(ledger: OrderLedger, moto_endpoint: str | None):
    """Writes a record's bytes as another machine would: not through this process's filesystem object (and its
    caches), but straight to the disk or to S3 with boto3."""
    if ledger.root.protocol in ("file", "local", ""):

        def write(external_id: str, record: dict[str, Any]) -> None:
            target = Path(ledger.path(external_id).path)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".other-writer")
            tmp.write_text(json.dumps(record))
            os.replace(tmp, target)

        return write

    client = moto_client(moto_endpoint)

    def write(external_id: str, record: dict[str, Any]) -> None:
        bucket, _, key = ledger.path(external_id).path.partition("/")
        client.put_object(Bucket=bucket, Key=key, Body=json.dumps(record).encode())

    return write


@pytest.fixture
def writer(ledger: OrderLedger, backend: str, request: pytest.FixtureRequest):
    return other_writer(ledger, request.getfixturevalue("moto_s3") if backend == "s3" else None)


def _ts(value: str) -> datetime:
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value)


# --- claim, read, update ---


def test_claim_creates_a_readable_record_with_every_documented_field(ledger: OrderLedger) -> None:
    assert ledger.read("renewal-42") is None
    won, record = ledger.claim("renewal-42", FP, A)
    assert won is True
    assert set(record) == FIELDS
    assert record["external_id"] == "renewal-42" and record["tenant"] == TENANT
    assert record["fingerprint"] == FP and FP.startswith("sha256:") and len(FP) == len("sha256:") + 32
    assert record["state"] == "claimed"
    assert record["order_id"] is None and record["status"] is None
    assert record["result"] is None and record["error"] is None
    assert record["claimed_by"] == asdict(A) and set(record["claimed_by"]) == OWNER_FIELDS
    assert record["claimed_at"] == record["updated_at"]
    _ts(record["claimed_at"])
    assert set(record["holder"]) == HOLDER_FIELDS and record["holder"]["pid"] == os.getpid()
    assert len(record["holder"]["token"]) == 32 and record["holder"]["try_number"] == A.try_number

    assert ledger.read("renewal-42") == record
    # A person can read it: one JSON object on one line, keys sorted, from the path the ledger names.
    text = ledger.path("renewal-42").read_text()
    assert text.startswith('{"claimed_at": ') and text.endswith("}\n") and text.count("\n") == 1
    assert json.loads(text) == record


def test_only_the_sent_state_waits_for_stable_storage(local_ledger_root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a local disk "sent" (the request leaves next) is synced, file and folder, before the write returns; the
    other states are not (a crash losing one leaves an earlier state, which is safe): fsync costs more than
    the rest of a record's write."""
    ledger = OrderLedger(local_ledger_root, TENANT)
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append("folder" if os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    _, record = ledger.claim("renewal-42", FP, A)
    assert synced == []
    record = ledger.update(record, "sent")
    assert synced == ["file", "folder"]
    for state in ("unknown", "done"):
        synced.clear()
        record = ledger.update(record, state)
        assert synced == [], state
    assert ledger.read("renewal-42") == record
    _, other = ledger.claim("renewal-43", FP, A)
    synced.clear()
    ledger.update(other, "refused")
    assert synced == []


def test_a_local_record_keeps_its_versions_one_line_each_and_its_last_line_is_the_record(
    local_ledger_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a local disk an update appends a line (no new file per write); the last line is the record. A write
    that never finished (a torn last line) is not the record, and the next update ends it and goes after it;
    a file grown past ``COMPACT_AT`` is rewritten as one line."""
    ledger = OrderLedger(local_ledger_root, TENANT)
    _, claimed = ledger.claim("renewal-42", FP, A)
    path = Path(ledger.path("renewal-42").path)
    inode = path.stat().st_ino
    sent = ledger.update(claimed, "sent")
    lines = path.read_bytes().splitlines()
    assert [json.loads(line) for line in lines] == [claimed, sent]
    assert path.stat().st_ino == inode  # the same file: appended to
    assert ledger.read("renewal-42") == sent == parse_record(path.read_bytes())

    with path.open("ab") as torn:  # a write cut short: the disk filled, the machine stopped
        torn.write(json.dumps({**sent, "state": "done"}).encode()[:40])
    assert ledger.read("renewal-42") == sent
    done = ledger.update(sent, "done", order_id="order-1")
    assert ledger.read("renewal-42") == done
    assert path.read_bytes().endswith(b"\n") and len(path.read_bytes().splitlines()) == 4

    _, record = ledger.claim("renewal-43", FP, A)
    other_path = Path(ledger.path("renewal-43").path)
    monkeypatch.setattr(ledger_module, "COMPACT_AT", 2 * len(other_path.read_bytes()) + 100)
    record = ledger.update(record, "sent")
    assert len(other_path.read_bytes().splitlines()) == 2
    record = ledger.update(record, "unknown")  # would pass COMPACT_AT: the file is rewritten
    assert [json.loads(line) for line in other_path.read_bytes().splitlines()] == [record]
    assert ledger.read("renewal-43") == record
    assert not [p for p in other_path.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "external_id",
    ["%" * 85, "x" * 255, "a" * 221 + "/", "~" * 250, "é", "a" * 200 + "%"],
    ids=["85-percent", "255-chars", "encoded-225", "250-chars", "non-ascii", "escape-at-the-cut"],
)
def test_every_valid_external_id_has_a_record(ledger: OrderLedger, backend: str, external_id: str) -> None:
    """Issue 18: an external_id the model accepts (up to 255 printable ASCII) but a local file name cannot hold
    once encoded (about 220 characters, or 85 '%') failed with a bare OSError. Such a name is now its first
    characters and its digest; a name that fitted before keeps its name (records written then are found)."""
    from urllib.parse import quote

    _, claimed = ledger.claim(external_id, FP, A)
    sent = ledger.update(claimed, "sent")
    assert ledger.read(external_id) == sent
    won, existing = ledger.claim(external_id, FP, B)
    assert (won, existing) == (False, sent)
    name = ledger.path(external_id).name
    encoded = quote(external_id, safe="")
    if backend == "local" and len(encoded) > ledger_module.MAX_LOCAL_NAME:
        assert len(name.encode()) <= 200 and "%%" in name and name.startswith(encoded[:40])
    else:
        assert name == encoded + ".json"
    assert parse_record(ledger.path(external_id).read_bytes()) == sent


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"not json\n", "it is not JSON"),
        (b"[1, 2]\n", "it holds a JSON list, not a record"),
        (b"{}\n", "its state is None, none of the protocol's"),
        (b'{"external_id": "renewal-7", "state": "done"}\n', "it is the record of 'renewal-7'"),
    ],
    ids=["not-json", "list", "empty-object", "another-order"],
)
def test_a_corrupt_record_is_an_error_naming_its_file_and_nothing_is_claimed(
    ledger: OrderLedger, writer, content: bytes, problem: str
) -> None:
    """Issue 18: a corrupt record gave a bare JSONDecodeError naming no file; a JSON list stopped the whole batch
    with "keeps disappearing"; ``{}`` said "external_id None already used"."""
    writer("renewal-42", {})  # the file exists (another machine's write), then holds the corrupt bytes
    ledger.path("renewal-42").write_bytes(content)
    for attempt in (lambda: ledger.read("renewal-42"), lambda: ledger.claim("renewal-42", FP, A)):
        with pytest.raises(LimioError, match="is corrupt") as excinfo:
            attempt()
        message = str(excinfo.value)
        assert problem in message and "renewal-42.json" in message and "Nothing was sent" in message
    assert ledger.path("renewal-42").read_bytes() == content  # left for a person


def test_a_second_claim_returns_the_existing_record_unchanged(ledger: OrderLedger) -> None:
    _, first = ledger.claim("renewal-42", FP, A)
    won, existing = ledger.claim("renewal-42", OTHER_FP, B)
    assert won is False
    assert existing == first
    assert ledger.read("renewal-42") == first
    won, existing = ledger.claim("renewal-42", FP, A_RETRY)
    assert (won, existing) == (False, first)


def test_update_moves_the_record_through_its_states(ledger: OrderLedger) -> None:
    _, record = ledger.claim("renewal-42", FP, A)
    claimed_at = record["claimed_at"]
    last = _ts(claimed_at)
    for state, fields in [
        ("sent", {}),
        ("unknown", {"error": "read timed out"}),
        ("done", {"order_id": "order-123", "status": "complete", "result": {"id": "order-123"}, "error": None}),
    ]:
        time.sleep(0.002)
        record = ledger.update(record, state, **fields)
        assert record["state"] == state
        assert record["claimed_at"] == claimed_at and record["claimed_by"] == asdict(A)
        assert _ts(record["updated_at"]) >= last
        last = _ts(record["updated_at"])
        assert ledger.read("renewal-42") == record
    assert record["order_id"] == "order-123" and record["result"] == {"id": "order-123"}
    assert record["error"] is None and record["fingerprint"] == FP

    _, other = ledger.claim("renewal-43", FP, A)
    refused = ledger.update(other, "refused", status="rejected", error="400: offer unknown")
    assert ledger.read("renewal-43") == refused
    assert (refused["state"], refused["status"], refused["error"]) == ("refused", "rejected", "400: offer unknown")


def test_reclaim_of_a_refused_record(ledger: OrderLedger) -> None:
    _, record = ledger.claim("renewal-42", FP, A)
    refused = ledger.update(record, "refused", error="400: offer unknown")

    assert next_step(ledger.read("renewal-42"), OTHER_FP, B) == "reclaim"
    won, mine = ledger.reclaim(refused, OTHER_FP, B)
    assert won is True
    assert mine["state"] == "claimed" and mine["fingerprint"] == OTHER_FP and mine["claimed_by"] == asdict(B)
    assert mine["error"] is None and mine["order_id"] is None
    assert ledger.read("renewal-42") == mine

    # A second worker that read the same refused record reclaims too late: the new claim stands.
    won, existing = ledger.reclaim(refused, FP, A_RETRY)
    assert won is False
    assert existing == mine
    assert ledger.read("renewal-42") == mine

    # A record that vanished is simply claimed.
    _, gone = ledger.claim("renewal-44", FP, A)
    gone = ledger.update(gone, "refused")
    ledger.path("renewal-44").unlink()
    won, fresh = ledger.reclaim(gone, FP, B)
    assert won is True and fresh["claimed_by"] == asdict(B)


# --- fencing: every write after the claim is a compare-and-swap ---


def test_a_try_whose_claim_was_taken_over_writes_nothing(ledger: OrderLedger) -> None:
    """Try 1 claims and is thought dead; try 2 takes the claim over with its own token. Try 1's next write (the
    "sent" it writes right before its request leaves) fails and changes nothing; try 2 goes on."""
    _, first = ledger.claim("renewal-42", FP, A, token="a" * 32)
    taken = ledger.take(first, A_RETRY, token="b" * 32)
    assert taken["holder"]["token"] == "b" * 32 and taken["holder"]["try_number"] == 2
    assert (taken["claimed_by"], taken["claimed_at"]) == (first["claimed_by"], first["claimed_at"])  # same claim
    assert ledger.read("renewal-42") == taken

    for state in ("sent", "done", "refused"):
        with pytest.raises(LimioClaimLostError) as err:
            ledger.update(first, state)
        assert err.value.external_id == "renewal-42"
        assert "no longer holds its ledger claim" in str(err.value) and "'try_number': 2" in str(err.value)
        assert ledger.read("renewal-42") == taken
    with pytest.raises(LimioClaimLostError):
        ledger.take(first, A, token="c" * 32)  # nor can it take the claim back
    sent = ledger.update(taken, "sent")
    assert ledger.read("renewal-42") == sent


def test_a_write_to_a_record_another_writer_changed_or_deleted_fails(ledger: OrderLedger, writer) -> None:
    """Written by another machine (other bytes for the same record: on S3 its ETag is then not the MD5 this
    writer expects, and the record is read and compared instead): the same record is written over, a changed
    one is not; a deleted one is not recreated."""
    _, record = ledger.claim("renewal-42", FP, A)
    writer("renewal-42", record)  # the same record, spelt differently
    sent = ledger.update(record, "sent")
    assert ledger.read("renewal-42") == sent

    writer("renewal-42", {**sent, "state": "refused", "error": "decided"})
    with pytest.raises(LimioClaimLostError, match="the record is now refused"):
        ledger.update(sent, "done", order_id="order-1")
    assert ledger.read("renewal-42")["state"] == "refused"

    ledger.path("renewal-42").unlink()
    with pytest.raises(LimioClaimLostError, match="the record is now gone"):
        ledger.update(sent, "done", order_id="order-1")
    assert ledger.read("renewal-42") is None


def test_a_local_write_waits_for_a_process_holding_the_record_then_gives_up(
    local_ledger_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local compare-and-swap holds a lock on the record's file while it compares and writes. A process
    frozen there holds it until it resumes: a writer waits ``LOCK_WAIT`` seconds, then fails without writing
    (the frozen one may write when it resumes); once the lock is free, it writes."""
    import fcntl

    ledger = OrderLedger(local_ledger_root, TENANT)
    _, record = ledger.claim("renewal-42", FP, A)
    monkeypatch.setattr(ledger_module, "LOCK_WAIT", 0.3)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
            ledger.path("renewal-42").path,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(LimioClaimLostError):
            ledger.update(record, "sent")
        assert 0.3 <= time.monotonic() - started < 5
        assert ledger.read("renewal-42") == record
    finally:
        holder.kill()
        holder.wait()
    assert ledger.read("renewal-42") == record
    assert ledger.update(record, "sent")["state"] == "sent"
    assert not [p for p in Path(ledger.root.path).iterdir() if p.name.endswith(".tmp")]  # no temporary left
    del fcntl


def test_wait_final_returns_when_another_writer_finishes(ledger: OrderLedger, writer) -> None:
    _, record = ledger.claim("renewal-42", FP, B)
    done = {**record, "state": "done", "order_id": "order-9", "status": "complete"}
    timer = threading.Timer(0.4, writer, args=("renewal-42", done))
    timer.start()
    try:
        started = time.monotonic()
        final = ledger.wait_final("renewal-42", timeout=20, interval=0.05)
        elapsed = time.monotonic() - started
    finally:
        timer.join()
    assert final == done
    assert 0.3 < elapsed < 10


def test_wait_final_times_out_with_the_last_record(ledger: OrderLedger) -> None:
    _, record = ledger.claim("renewal-42", FP, B)
    record = ledger.update(record, "sent")
    started = time.monotonic()
    final = ledger.wait_final("renewal-42", timeout=0.6, interval=0.1)
    elapsed = time.monotonic() - started
    assert final == record
    assert 0.55 < elapsed < 5
    # A deleted record ends the wait at once.
    ledger.path("renewal-42").unlink()
    assert ledger.wait_final("renewal-42", timeout=5, interval=0.1) is None


def test_reads_see_what_another_writer_wrote_despite_cached_listings(ledger: OrderLedger, writer) -> None:
    """This process listed the tenant's records (s3fs caches listings); another worker then claims an id and
    finishes one: ``read``, ``claim`` and ``wait_final`` must still see both."""
    _, record = ledger.claim("renewal-42", FP, B)
    assert [p.rsplit("/", 1)[-1] for p in ledger.root.fs.ls(ledger.root.path, detail=False)] == ["renewal-42.json"]

    foreign = {**record, "external_id": "renewal-43", "claimed_by": asdict(A)}
    writer("renewal-43", foreign)
    assert ledger.read("renewal-43") == foreign
    assert ledger.claim("renewal-43", FP, B) == (False, foreign)

    writer("renewal-42", {**record, "state": "done", "order_id": "order-1"})
    assert ledger.wait_final("renewal-42", timeout=5, interval=0.05)["state"] == "done"


def test_reads_never_see_a_half_written_record(ledger: OrderLedger, backend: str) -> None:
    _, record = ledger.claim("renewal-42", FP, A)
    stop = threading.Event()
    seen: list[Any] = []

    def read_all_the_time() -> None:
        while not stop.is_set():
            try:
                seen.append(ledger.read("renewal-42"))
            except Exception as exc:  # noqa: BLE001 (a torn record fails to parse)
                seen.append(exc)

    reader = threading.Thread(target=read_all_the_time)
    reader.start()
    try:
        for n in range(150 if backend == "local" else 30):  # a PUT is atomic: S3 needs fewer to show it
            record = ledger.update(record, "sent", result={"attempt": n, "padding": "x" * 4000})
    finally:
        stop.set()
        reader.join()
    assert seen
    torn = [r for r in seen if not (isinstance(r, dict) and r["external_id"] == "renewal-42")]
    assert not torn, f"{len(torn)} of {len(seen)} reads saw a half-written record: {torn[:3]}"


# --- next_step over records read back from the ledger ---


@pytest.mark.parametrize(
    ("state", "same_ti", "other_ti"),
    [
        ("claimed", "resume", "wait"),
        ("sent", "reconcile", "wait"),
        ("unknown", "reconcile", "wait"),
        ("done", "adopt", "adopt"),
        ("refused", "reclaim", "reclaim"),
    ],
)
def test_next_step_for_every_state(ledger: OrderLedger, state: str, same_ti: str, other_ti: str) -> None:
    _, record = ledger.claim("renewal-42", FP, A)
    if state in ("unknown", "done"):
        record = ledger.update(record, "sent")
    if state != "claimed":
        ledger.update(record, state)
    stored = ledger.read("renewal-42")
    assert next_step(stored, FP, A_RETRY) == same_ti
    assert next_step(stored, FP, A) == same_ti
    assert next_step(stored, FP, B) == other_ti
    if state == "refused":  # a corrected order may take the external_id again
        assert next_step(stored, OTHER_FP, B) == "reclaim"
    else:
        for owner in (A_RETRY, B):
            with pytest.raises(LimioValidationError) as err:
                next_step(stored, OTHER_FP, owner)
            message = str(err.value)
            assert FP in message and OTHER_FP in message and "renewal-42" in message


def test_fingerprint_is_canonical() -> None:
    reordered = {"order": BODY["order"], "external_id": BODY["external_id"]}
    assert fingerprint(reordered) == FP
    assert fingerprint({**BODY, "external_id": "renewal-43"}) != FP


def test_owner_of_a_task_context() -> None:
    class TI:
        dag_id, task_id, map_index, try_number = "renewals", "submit", None, 3

    owner = Owner.of({"ti": TI(), "run_id": "manual__1"})
    assert owner == Owner("renewals", "manual__1", "submit", -1, 3)
    assert owner.same_task_instance(asdict(Owner("renewals", "manual__1", "submit", -1, 1)))
    assert not owner.same_task_instance(asdict(Owner("renewals", "manual__2", "submit", -1, 3)))
    assert not owner.same_task_instance(None)


# --- names: tenants and external ids ---


def test_records_of_two_tenants_never_mix(root: str) -> None:
    tenants = ["acme.prod.limio.com", "acme.prod.limio.com.evil", "other.prod.limio.com", "a/b", "a%2Fb"]
    ledgers = [OrderLedger(root, tenant) for tenant in tenants]
    fingerprints = [fingerprint({"tenant": tenant}) for tenant in tenants]
    for ledger, fp in zip(ledgers, fingerprints, strict=True):
        assert ledger.read("renewal-42") is None
        won, _ = ledger.claim("renewal-42", fp, A)
        assert won is True
    for ledger, fp in zip(ledgers, fingerprints, strict=True):
        assert ledger.read("renewal-42")["fingerprint"] == fp
    assert len({ledger.path("renewal-42").path for ledger in ledgers}) == len(tenants)


EXTERNAL_IDS = sorted(
    set(string.punctuation + " " + "aA")
    | {"a/b", "a%2Fb", "a%252Fb", "a%2fb", "a b", "a+b", "a?b=c", "a#b", "a\\b", "..", "../x", "./x", "x/..", "-"}
    | {"%", "%%", "%25", "~user", "a.json", "a.json.json", "*", "a:b", "a|b", "<a>", "[a]", "{a}", "'\"`"}
)


def test_external_ids_with_any_printable_ascii_map_to_distinct_records(ledger: OrderLedger) -> None:
    for external_id in EXTERNAL_IDS:
        won, record = ledger.claim(external_id, fingerprint({"external_id": external_id}), A)
        assert won is True, external_id
    for external_id in EXTERNAL_IDS:
        record = ledger.read(external_id)
        assert record["external_id"] == external_id
        assert record["fingerprint"] == fingerprint({"external_id": external_id})
        assert ledger.claim(external_id, FP, B)[0] is False
    paths = [ledger.path(external_id).path for external_id in EXTERNAL_IDS]
    assert len(set(paths)) == len(EXTERNAL_IDS)
    # Every record is one object right under the tenant's folder: no id escapes it or makes a sub-folder.
    assert all(path.rsplit("/", 1)[0] == ledger.root.path for path in paths)
    stored = ledger.root.fs.ls(ledger.root.path, detail=False)
    assert sorted(p.rsplit("/", 1)[-1] for p in stored) == sorted(p.rsplit("/", 1)[-1] for p in paths)


def test_a_missing_bucket_is_an_error_and_is_not_created(moto_s3: str, s3_ledger_root: str) -> None:

    client = moto_client(moto_s3)
    bucket = s3_ledger_root.split("@", 1)[1].split("/", 1)[0] + "-missing"
    ledger = OrderLedger(f"s3://limio_s3@{bucket}/ledger", TENANT)
    assert ledger.read("renewal-42") is None
    with pytest.raises(OSError):
        ledger.claim("renewal-42", FP, A)
    assert bucket not in [b["Name"] for b in client.list_buckets()["Buckets"]]


def _conflict() -> OSError:
    """The error s3fs raises for S3's ``409 ConditionalRequestConflict`` (another conditional write to the key
    was in progress), which moto never answers."""
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    answer = {
        "Error": {"Code": "ConditionalRequestConflict", "Message": "retry"},
        "ResponseMetadata": {"HTTPStatusCode": 409},
    }
    return translate_boto_error(ClientError(answer, "PutObject"))


@pytest.mark.parametrize("conflicts", [1, ledger_module.CONFLICT_RETRIES])
def test_a_409_conflict_on_an_s3_claim_is_retried(
    s3_ledger_root: str, monkeypatch: pytest.MonkeyPatch, conflicts: int
) -> None:
    ledger = OrderLedger(s3_ledger_root, TENANT)
    monkeypatch.setattr(ledger_module, "CONFLICT_PAUSE", 0.001)
    real_pipe, calls = ledger.fs.pipe_file, []

    def conflicting(path: str, data: bytes, **kwargs: Any) -> None:
        calls.append(kwargs.get("mode"))
        if len(calls) <= conflicts:
            raise _conflict()
        real_pipe(path, data, **kwargs)

    monkeypatch.setattr(ledger.fs, "pipe_file", conflicting)
    won, record = ledger.claim("renewal-42", FP, A)
    assert won is True and calls == ["create"] * (conflicts + 1)
    assert ledger.read("renewal-42") == record

    # The conflicting write was another worker's claim: the retry finds its record, and does not claim.
    calls.clear()
    won, existing = ledger.claim("renewal-42", OTHER_FP, B)
    assert won is False and existing == record


def test_a_409_conflict_that_persists_fails_the_claim(s3_ledger_root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = OrderLedger(s3_ledger_root, TENANT)
    monkeypatch.setattr(ledger_module, "CONFLICT_PAUSE", 0.001)
    calls: list[str] = []

    def always_conflicting(path: str, data: bytes, **kwargs: Any) -> None:
        calls.append(kwargs.get("mode"))
        raise _conflict()

    monkeypatch.setattr(ledger.fs, "pipe_file", always_conflicting)
    with pytest.raises(OSError, match="ConditionalRequestConflict"):
        ledger.claim("renewal-42", FP, A)
    assert len(calls) == ledger_module.CONFLICT_RETRIES + 1
    # An update is conditional too (If-Match): retried alike.
    calls.clear()
    with pytest.raises(OSError, match="ConditionalRequestConflict"):
        ledger.update({"external_id": "renewal-42", "state": "claimed"}, "sent")
    assert calls == ["overwrite"] * (ledger_module.CONFLICT_RETRIES + 1)


def test_s3_goes_through_the_airflow_connection_to_moto_only(moto_s3: str, s3_ledger_root: str) -> None:
    """``s3://limio_s3@bucket/...`` uses the ``limio_s3`` connection (moto's endpoint); nothing but 127.0.0.1 is
    ever contacted (the default endpoint, had it been used, is a closed local port)."""
    ledger = OrderLedger(s3_ledger_root, TENANT)
    assert ledger.root.conn_id == "limio_s3"
    fs = ledger.root.fs
    assert type(fs).__name__ == "S3FileSystem" and fs.endpoint_url == moto_s3
    assert os.environ["AWS_ENDPOINT_URL"] != moto_s3

    contacted: list[Any] = []
    recording = threading.Event()

    def audit(event: str, args: tuple) -> None:
        if recording.is_set() and event in ("socket.connect", "socket.getaddrinfo"):
            contacted.append(args[1] if event == "socket.connect" else args[0])

    sys.addaudithook(audit)
    recording.set()
    try:
        ledger.claim("renewal-42", FP, A)
        assert ledger.read("renewal-42")["claimed_by"] == asdict(A)
    finally:
        recording.clear()
    hosts = {c[0] if isinstance(c, tuple) else c for c in contacted}
    assert hosts <= {"127.0.0.1"}, contacted

    bucket, _, key = ledger.path("renewal-42").path.partition("/")
    body = moto_client(moto_s3).get_object(Bucket=bucket, Key=key)["Body"].read()
    assert json.loads(body)["external_id"] == "renewal-42"


# --- races: 8 processes, one ledger ---

WORKER = r"""
import json, os, sys, time, traceback

# Messages to the test go to the original stdout; anything else printed (Airflow logs...) goes to stderr.
channel = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr

from limio_provider.exceptions import LimioClaimLostError
from limio_provider.exactly_once.ledger import OrderLedger, Owner

def say(**message):
    channel.write(json.dumps(message) + "\n")
    channel.flush()

# Everything a race needs is imported and connected before the race: Airflow, s3fs and the `limio_s3` connection.
from airflow.providers.common.compat.sdk import ObjectStoragePath

ObjectStoragePath("s3://limio_s3@warm-up/").fs
ObjectStoragePath("file:///").fs
say(ready=True)
for line in iter(sys.stdin.readline, ""):
    cmd = json.loads(line)
    ledger = OrderLedger(cmd["root"], cmd["tenant"])  # one path object (and filesystem) per race
    owner = Owner("race", cmd["worker"], "submit")
    ledger.read("warm-up")  # the connection and the filesystem exist before the start
    read = {eid: ledger.read(eid) for eid in cmd["ids"]} if cmd["op"] != "claim" else {}
    say(armed=True)
    sys.stdin.readline()  # go
    started = time.perf_counter()
    won, errors = [], []
    for eid in cmd["ids"]:
        try:
            if cmd["op"] == "claim":
                ok, record = ledger.claim(eid, cmd["fingerprint"], owner)
            elif cmd["op"] == "reclaim":
                ok, record = ledger.reclaim(read[eid], cmd["fingerprint"], owner)
            else:  # take: every worker read the same record, and takes its claim over
                try:
                    ok, record = True, ledger.take(read[eid], owner, token=cmd["worker"])
                except LimioClaimLostError:
                    ok, record = False, ledger.read(eid)
            assert record["external_id"] == eid, record
            if ok:
                if cmd["op"] == "take":
                    assert record["holder"]["token"] == cmd["worker"], record
                else:
                    assert record["claimed_by"]["run_id"] == cmd["worker"], record
                won.append(eid)
        except Exception:  # reported, and this worker stays up for the next race
            errors.append(f"{eid}: {traceback.format_exc()}")
    say(won=won, errors=errors, seconds=time.perf_counter() - started)
"""


class RacePool:
    """``RACE_WORKERS`` Python processes, each with its own AIRFLOW_HOME and ``limio_s3`` connection, that claim
    (or reclaim) the same external_ids at the same moment on command."""

    def __init__(self, n: int, env: dict[str, str], homes: Path) -> None:
        self.procs: list[subprocess.Popen] = []
        self.lines: list[queue.Queue] = []
        self.logs: list[Path] = []
        self.started = False
        for i in range(n):
            home = homes / f"worker-{i}"
            home.mkdir()
            log = homes / f"worker-{i}.stderr"
            proc = subprocess.Popen(
                [sys.executable, "-c", WORKER],
                env={**env, "AIRFLOW_HOME": str(home)},
                cwd=str(Path(__file__).resolve().parents[2]),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log.open("wb"),
                text=True,
            )
            lines: queue.Queue = queue.Queue()
            threading.Thread(
                target=lambda p=proc, q=lines: [q.put(x) for x in p.stdout] + [q.put("")], daemon=True
            ).start()
            self.procs.append(proc)
            self.lines.append(lines)
            self.logs.append(log)

    def _expect(self, i: int, key: str, timeout: float = 180) -> dict:
        try:
            line = self.lines[i].get(timeout=timeout)
        except queue.Empty:
            line = ""
        message = json.loads(line) if line else {}
        if key not in message:
            raise AssertionError(f"race worker {i} said {line!r}, not {key!r}:\n{self.logs[i].read_text()[-4000:]}")
        return message

    def _send(self, i: int, text: str) -> None:
        self.procs[i].stdin.write(text + "\n")
        self.procs[i].stdin.flush()

    def race(self, op: str, root: str, tenant: str, ids: list[str], fp: str) -> tuple[list[list[str]], float]:
        if not self.started:
            for i in range(len(self.procs)):
                self._expect(i, "ready")
            self.started = True
        for i in range(len(self.procs)):
            self._send(
                i,
                json.dumps(
                    {"op": op, "root": root, "tenant": tenant, "ids": ids, "fingerprint": fp, "worker": f"worker-{i}"}
                ),
            )
        for i in range(len(self.procs)):
            self._expect(i, "armed")
        started = time.perf_counter()
        for i in range(len(self.procs)):
            self._send(i, "go")
        results = [self._expect(i, "won") for i in range(len(self.procs))]
        seconds = time.perf_counter() - started
        errors = [error for result in results for error in result["errors"]]
        assert not errors, f"{len(errors)} {op}s failed; the first:\n{errors[0]}"
        return [r["won"] for r in results], seconds

    def close(self) -> None:
        for proc in self.procs:  # done with them: no need to wait for Airflow's and s3fs's shutdown
            proc.kill()
        for proc in self.procs:
            proc.wait()
            proc.stdin.close()
            proc.stdout.close()


@pytest.fixture(scope="module")
def race_pool(limio_s3_conn: str, tmp_path_factory: pytest.TempPathFactory):
    env = {**os.environ, "AIRFLOW_CONN_LIMIO_S3": limio_s3_conn, "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    env.pop("AIRFLOW__CORE__DAGS_FOLDER", None)
    pool = RacePool(RACE_WORKERS, env, tmp_path_factory.mktemp("race-homes"))
    yield pool
    pool.close()


@pytest.fixture(scope="module", autouse=True)
def _start_race_pool_early(request: pytest.FixtureRequest) -> None:
    """The race workers take a while to import Airflow: start them with this module's first test, if a race is
    among the tests selected, so that they start up while the other tests run."""
    if any(item.name.startswith("test_race_") and item.module is request.module for item in request.session.items):
        request.getfixturevalue("race_pool")


def _check_race(ledger: OrderLedger, won: list[list[str]], ids: list[str]) -> None:
    counts = Counter(eid for mine in won for eid in mine)
    doubles = {eid: n for eid, n in counts.items() if n > 1}
    assert not doubles, f"claimed more than once: {doubles}"
    assert sum(len(mine) for mine in won) == len(ids)
    assert set(counts) == set(ids)
    winner = {eid: f"worker-{i}" for i, mine in enumerate(won) for eid in mine}
    for eid in ids:
        record = ledger.read(eid)
        assert record["state"] == "claimed" and record["claimed_by"]["run_id"] == winner[eid], record


def test_race_8_processes_claim_200_ids_each_exactly_once(root: str, backend: str, race_pool: RacePool) -> None:
    ids = [f"renewal-{n:03d}" for n in range(RACE_IDS)]
    won, seconds = race_pool.race("claim", root, TENANT, ids, FP)
    print(
        f"\n[{backend}] {RACE_WORKERS} processes x {RACE_IDS} claims: {seconds:.2f} s; "
        f"wins per process {[len(mine) for mine in won]}"
    )
    _check_race(OrderLedger(root, TENANT), won, ids)


def test_race_8_processes_reclaim_the_same_refused_records_once(root: str, backend: str, race_pool: RacePool) -> None:
    ledger = OrderLedger(root, TENANT)
    ids = [f"refused-{n:03d}" for n in range(RACE_RECLAIMS)]
    for eid in ids:
        _, record = ledger.claim(eid, FP, A)
        ledger.update(record, "refused", error="400")
    won, seconds = race_pool.race("reclaim", root, TENANT, ids, OTHER_FP)
    print(
        f"\n[{backend}] {RACE_WORKERS} processes x {len(ids)} reclaims: {seconds:.2f} s; "
        f"wins per process {[len(mine) for mine in won]}"
    )
    _check_race(ledger, won, ids)


def test_race_8_processes_take_the_same_claims_over_once(root: str, backend: str, race_pool: RacePool) -> None:
    """Eight tries that read the same record each take its claim over (a compare-and-swap): one wins each."""
    ledger = OrderLedger(root, TENANT)
    ids = [f"taken-{n:03d}" for n in range(RACE_RECLAIMS)]
    for eid in ids:
        ledger.claim(eid, FP, A)
    won, seconds = race_pool.race("take", root, TENANT, ids, FP)
    print(
        f"\n[{backend}] {RACE_WORKERS} processes x {len(ids)} take-overs: {seconds:.2f} s; "
        f"wins per process {[len(mine) for mine in won]}"
    )
    counts = Counter(eid for mine in won for eid in mine)
    assert sorted(counts) == ids and set(counts.values()) == {1}, counts
    winner = {eid: f"worker-{i}" for i, mine in enumerate(won) for eid in mine}
    for eid in ids:
        assert ledger.read(eid)["holder"]["token"] == winner[eid]


# --- the protocol's transitions: the code's table is the documented one, and nothing else is written ---


def test_the_documented_state_table_is_the_code_s() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "reliability.md").read_text()
    section = text.split("### The ledger's states", 1)[1].split("###", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    documented = [
        (event.strip(), tuple(None if s.strip() == "(no record)" else s.strip() for s in olds.split(",")), new.strip())
        for event, olds, new in rows[1:]  # the header first
    ]
    assert documented == list(ledger_module.TRANSITIONS)


@pytest.mark.parametrize(
    ("old", "new"), [("done", "sent"), ("done", "refused"), ("refused", "sent"), ("unknown", "claimed")]
)
def test_a_write_outside_the_table_is_refused_and_writes_nothing(ledger: OrderLedger, old: str, new: str) -> None:
    _, record = ledger.claim("renewal-42", FP, A)
    path = {"claimed": [], "sent": ["sent"], "unknown": ["sent", "unknown"], "done": ["sent", "done"]}
    for state in path.get(old, ["refused"]):
        record = ledger.update(record, state)
    assert record["state"] == old
    with pytest.raises(LimioError, match=f"cannot go from '{old}' to '{new}'"):
        ledger.update(record, new)
    assert ledger.read("renewal-42") == record
