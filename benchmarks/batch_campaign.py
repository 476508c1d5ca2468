"""The fault campaign at batch level: 10,000 orders through one ``LimioSubmitOrdersOperator`` task, about 20 %
of them given one fault each, the task process SIGKILLed mid-batch and retried, with the operator's default
``on_unknown_outcome`` ("fail"). Goal: 0 duplicates, 0 lost, 0 misreported.

Run: ``.venv/bin/python benchmarks/batch_campaign.py [--orders 10000] [--fault-share 0.2] [--seed 7]
[--in-flight 16]`` (``make bench`` runs it with the defaults; ``--help`` lists the other knobs).

How it runs:

- The emulator (HTTPS, ``tls=True``) runs in this process; the orders are a local JSON Lines file and the order
  ledger a local ``file://`` directory, both in a scratch directory.
- Each try of the task is a separate child process (this script with ``--worker``) with its own scratch
  ``AIRFLOW_HOME``, reading the connection from ``AIRFLOW_CONN_LIMIO_BATCH_CAMPAIGN``: it builds the operator
  and calls ``execute()`` as Airflow's task runner does (with ``ExecutorSafeguard``'s sentinel), with a stub
  context whose ``ti`` has the dag_id, task_id, map_index, try_number and run_id of one task instance.
- Try 1 is SIGKILLed once the emulator has created ``--kill-at`` (40 %) of the orders. Try 2 (same task
  instance, try_number 2) must resume from the ledger: adopt the orders it holds as done (no POST), look up
  the ones try 1 had sent without an answer, and send the rest. While try 2 runs, the client credentials are
  revoked (see below), which stops the batch: try 2 fails, the credentials are restored, and try 3 (Airflow's
  next retry) finishes the batch. A try that raised is retried, as Airflow would (at most ``--max-tries``),
  until one ends with every order done or ``unknown`` (a retry only looks an unknown one up again, never
  resends it, so it changes nothing). Should try 1 stop before the kill point, the kill hits the next try.
- A frozen try (a "zombie"): the first try after the outage's (try 3) is frozen with SIGSTOP once
  ``--freeze-at`` (85 %) of the orders exist, with orders in flight and others queued for a slot, and the next
  try (try 4) starts, as Airflow starts a retry once the heartbeat timeout passes. Once ``--thaw-at`` (92 %)
  exist, while try 4 runs, try 3 resumes (SIGCONT). It must send nothing more (every ledger write it makes
  fails: try 4 took its claims over), raise ``LimioClaimLostError`` and leave try 4's results file alone. An
  order try 3 had recorded ``sent`` when it froze is looked up by try 4; one it does not find is reported
  ``unknown`` while Limio may hold it (counted apart).

Ledger write faults: in try 1's process, ``--ledger-faults`` (20) orders it reaches before the kill have their
record's ``sent`` write fail (ENOSPC: nothing leaves; the order is "failed", and a later try sends it), and as
many their ``done`` write (after Limio created the order: the order is "submitted" with the error, and a
later try finds it and records it). Each must end held once.

The faults, spread evenly over :data:`benchmarks.campaign.FAULT_KINDS` (each order gets at most one):

- the twelve per-request kinds are armed exactly as ``benchmarks/fault_campaign.py`` arms them
  (:func:`benchmarks.campaign._inject`), except that the 429's ``Retry-After`` is ``--retry-after`` (0.1 s:
  each 429 and 503 also cuts the batch's learnt rate, as Limio pushing back would, so 2 s waits make the
  campaign minutes longer without testing more) and "no answer" holds the
  connection ``--hang`` s, longer than the client's read timeout ``--timeout``, so it is a real read timeout;
- "token expired mid-run": every token the emulator issued expires (its clock jumps past the token lifetime)
  the moment this order's submit arrives. The submit is answered 401, so is every other request in flight
  with the batch's shared token; the hook fetches one new token and replays each once;
- "credentials revoked, restored": every token is revoked the moment this order's submit arrives (the same
  401 and replay, by revocation rather than expiry). A revocation the token endpoint also refuses stops a
  batch (every order would fail alike), so that half is one batch-level event: when the try after the kill
  (try 2) reaches the first such order past ``--outage-at`` (70 %), the token endpoint also refuses the
  credentials (401 ``invalid_client``) until that try has exited; they are restored for the next one.

  A global event fires only ``--event-gap`` s (0.5 s at 16 in flight) after the previous token event: a token
  invalidated while the task refetches and replays after an earlier 401 would 401 the replay too, which stops
  the batch (the hook's rule: a second 401 with a freshly issued token is a credentials problem), and on two
  shared cores a replay can take 0.3 s. A submit of such an order arriving sooner gets a 401 of its own (its
  token refused, the others left valid): the same path for that order, without the global blast.

At the end every intended order is checked against what the emulator holds and against the final try's
results file (one line per order):

- held once: the emulator holds exactly one order for its external_id and the results report it
  ``submitted`` or ``adopted`` with that order's id;
- failed loudly: the results report it ``unknown``, or ``failed``/``refused`` with nothing held (or, for
  ``failed``, the held order's id: Limio failed it), and the final try failed with ``LimioBatchFailedError``;
  the ``loud, held`` column counts those with an order held.

Anything else is a defect: ``duplicates`` (orders held beyond one), ``lost`` (nothing held though reported
submitted/adopted, or no result line at all) or ``misreported`` (held but reported with another id, or
reported failed/refused, "nothing was created", while an order is held). Also checked: the POSTs a retry
makes for orders the ledger held as done (or as sent without an answer) when it started: must be 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: `benchmarks` package

CONN_ID = "limio_batch_campaign"
CONN_ENV = f"AIRFLOW_CONN_{CONN_ID.upper()}"
DAG_ID, TASK_ID, MAP_INDEX = "batch_campaign", "submit", -1
#: The fault kinds that touch every token, not one request: fired by the emulator when the order's submit arrives.
GLOBAL_KINDS = ("token expired mid-run", "credentials revoked, restored")
#: Ledger writes that fail (ENOSPC) in try 1: the "sent" write before a request, the "done" write after one.
LEDGER_WRITE_KINDS = ("ledger: sent write fails", "ledger: done write fails")
#: Outcomes a result line may report for an order Limio holds.
HELD_OUTCOMES = ("submitted", "adopted")
#: Outcomes of orders the task did not submit (the final try must fail with LimioBatchFailedError).
LOUD_OUTCOMES = ("unknown", "failed", "refused")


# -- the task process ------------------------------------------------------------------------------------


def run_worker(args: argparse.Namespace) -> int:
    """One try of the batch task, as a task process: build the operator, call ``execute()`` as Airflow's task
    runner does, write what happened to ``--status`` (JSON). Exit 0 if it returned, 1 if it raised."""
    from airflow.sdk.bases.operator import ExecutorSafeguard

    from benchmarks.campaign import TaskInstanceStub
    from limio_provider.operators.batch import LimioSubmitOrdersOperator

    if args.ledger_faults_file:  # this try's ledger writes that fail, as on a full disk: {record file: state}
        _fail_ledger_writes(
            json.loads(Path(args.ledger_faults_file).read_text()), Path(args.ledger_faults_file + ".fired")
        )

    @dataclass
    class TaskInstance(TaskInstanceStub):
        run_id: str = ""

    operator = LimioSubmitOrdersOperator(
        task_id=TASK_ID,
        orders_path=args.orders_path,
        results_path=args.results_path,
        ledger_path=args.ledger_path,
        max_in_flight=args.in_flight,
        limio_conn_id=CONN_ID,
        hook_params=json.loads(args.hook_params),
    )
    ti = TaskInstance(DAG_ID, TASK_ID, MAP_INDEX, try_number=args.try_number, run_id=args.run_id)
    # The task instance's task_state_store, kept in a file across its tries as Airflow keeps it in its database
    # (the batch keeps there only the ids of orders whose ledger record it failed to write).
    context: Any = {"ti": ti, "run_id": args.run_id, "task_state_store": FileTaskStateStore(Path(args.state_store))}
    as_task_runner = {f"{type(operator).__name__}__sentinel": ExecutorSafeguard.sentinel_value}
    status: dict[str, Any] = {"try_number": args.try_number, "pid": os.getpid()}
    started = time.monotonic()
    try:
        summary = operator.execute(context, **as_task_runner)
        status.update(raised=None, error=None, summary=summary)
        code = 0
    except Exception as exc:  # noqa: BLE001 - Airflow fails the try on any exception
        status.update(raised=type(exc).__name__, error=str(exc)[:3000], summary=getattr(exc, "summary", None))
        code = 1
    status["seconds"] = round(time.monotonic() - started, 3)
    xcom = ti.xcoms.get("return_value")
    status["xcom_bytes"] = None if xcom is None else len(json.dumps(xcom, default=str))
    tmp = args.status + ".tmp"
    Path(tmp).write_text(json.dumps(status, default=str))
    os.replace(tmp, args.status)
    return code


class FileTaskStateStore:
    """A task instance's ``task_state_store`` in a JSON file: each write replaces it whole before returning, so
    a try killed after a write leaves it for the next try."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._values: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def get(self, key: str, default: Any = None) -> Any:
        return self._values.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self._values[key] = value
        self._save()

    def delete(self, key: str) -> None:
        self._values.pop(key, None)
        self._save()

    def _save(self) -> None:
        tmp = self._path.with_name(self._path.name + ".tmp")
        tmp.write_text(json.dumps(self._values))
        os.replace(tmp, self._path)


def _fail_ledger_writes(failing: dict[str, str], fired: Path) -> None:
    """Make the ledger's write of ``state`` to each record file named in ``failing`` fail once (ENOSPC); each
    that fires is appended to ``fired``."""
    import errno

    from limio_provider.exactly_once import ledger

    real_swap = ledger._swap

    def swap(fs: Any, path: str, expected: dict[str, Any], data: bytes, *, durable: bool) -> None:
        state = failing.get(path.rsplit("/", 1)[-1])
        if state is not None and f'"state": "{state}"'.encode() in data:
            del failing[path.rsplit("/", 1)[-1]]
            with fired.open("a") as out:
                out.write(path.rsplit("/", 1)[-1] + "\n")
            raise OSError(errno.ENOSPC, "No space left on device (the campaign's ledger fault)")
        real_swap(fs, path, expected, data, durable=durable)

    ledger._swap = swap


# -- the emulator, with the two global fault kinds ---------------------------------------------------------


def campaign_emulator(event_gap: float) -> Any:
    """A :class:`LimioEmulator` (HTTPS) that counts the orders it creates and runs a one-shot action when a given
    order's submit arrives, before the submit is authorised.

    An action runs at least ``event_gap`` s after the previous token event; a submit that arrives sooner is
    answered 401 on its own instead (its token refused, the others left valid: a token event too, since the
    task refetches the token), unless its action is ``forced``."""
    from limio_provider.testing.emulator import HttpError, LimioEmulator

    class CampaignEmulator(LimioEmulator):
        def __init__(self) -> None:
            super().__init__(token_ttl=3600, tls=True)
            self.created = 0
            self.on_submit: dict[str, Callable[[], None]] = {}
            self.forced: set[str] = set()  # external_ids whose action runs whatever the gap
            self.fired: dict[str, tuple[float, str]] = {}  # external_id -> (monotonic time, "global" or "own 401")
            self._event_lock = threading.Lock()
            self._last_event = float("-inf")

        def _authorise(self, request: Any) -> None:
            external_id = request.body.get("external_id") if isinstance(request.body, dict) else None
            if request.route == "order" and external_id in self.on_submit:
                with self._event_lock:
                    action = self.on_submit.pop(external_id, None)
                    now = time.monotonic()
                    if action is not None and (now >= self._last_event + event_gap or external_id in self.forced):
                        action()
                        self._last_event = now
                        self.fired[external_id] = (now, "global")
                    elif action is not None:  # its 401 makes the task refetch the token, as a global event does
                        self._last_event = now
                        self.fired[external_id] = (now, "own 401")
                        raise HttpError(401, "Unauthorized", {"WWW-Authenticate": "Bearer"})
            super()._authorise(request)

        def _on_order(self, request: Any) -> Any:
            answer = super()._on_order(request)
            with self._lock:
                self.created += 1
            return answer

    return CampaignEmulator()


# -- the campaign ------------------------------------------------------------------------------------------


@dataclass
class Try:
    """One try of the task: how it ended, its results, and the requests it made."""

    number: int
    seconds: float = 0.0
    killed: bool = False
    frozen: bool = False  # SIGSTOPped, and the next try started; resumed (SIGCONT) while that one ran
    raised: str | None = None
    error: str | None = None
    summary: dict[str, Any] | None = None
    xcom_bytes: int | None = None
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # external_id -> its result line
    ledger_at_start: dict[str, str] = field(default_factory=dict)  # external_id -> state when the try started
    # external_ids the frozen try had recorded "sent" when this try started: that try may send them on resuming
    # (its own first send, the protocol's one unfenced step), so their POSTs are not this try's resends.
    frozen_sent: set[str] = field(default_factory=set)
    posts: Counter[str] = field(default_factory=Counter)  # external_id -> order POSTs the emulator received
    list_reads: int = 0
    answers: Counter[str] = field(default_factory=Counter)  # status of each order POST ("none": no answer)

    def ended(self) -> str:
        if self.killed:
            return "SIGKILLed"
        if self.frozen:
            return f"frozen (SIGSTOP), resumed, then {'raised ' + str(self.raised) if self.raised else 'returned'}"
        return f"raised {self.raised}" if self.raised else "returned"

    def posts_for(self, *states: str) -> int:
        """Order POSTs this try made for orders whose ledger record was in one of ``states`` when it started."""
        return sum(
            n
            for external_id, n in self.posts.items()
            if self.ledger_at_start.get(external_id) in states and external_id not in self.frozen_sent
        )


def _count_requests(attempt: Try, requests: list[Any]) -> None:
    for request in requests:
        if request.method == "POST" and request.path == "/api/order" and isinstance(request.body, dict):
            attempt.posts[str(request.body.get("external_id"))] += 1
            attempt.answers["none" if request.status is None else str(request.status)] += 1
        elif request.path == "/api/objects/limio/orders":
            attempt.list_reads += 1


def _ended(attempt: Try, work: Path) -> Try:
    """``attempt`` with how it ended, from the status file its process wrote."""
    status_file = work / f"status.try{attempt.number}.json"
    if status_file.exists():
        status = json.loads(status_file.read_text())
        attempt.raised, attempt.error, attempt.summary = status["raised"], status["error"], status["summary"]
    elif attempt.raised is None:
        attempt.raised = "nothing: the task process wrote no status (see its log)"
    return attempt


def ledger_states(ledger_dir: Path) -> dict[str, dict[str, Any]]:
    """Every record under the ledger (one tenant folder), by external_id."""
    from limio_provider.exactly_once.ledger import parse_record

    records: dict[str, dict[str, Any]] = {}
    for tenant in ledger_dir.iterdir() if ledger_dir.exists() else ():
        with os.scandir(tenant) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.name.endswith(".json"):
                    continue  # a temporary file a killed writer left, a reclaim marker
                record = parse_record(Path(entry.path).read_bytes()) or {}
                records[record["external_id"]] = record
    return records


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """The result lines of a results file by external_id (a killed try's file may end mid-line)."""
    rows: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        rows[row["external_id"]] = row
    return rows


def loud_reason(outcome: Any, reported: str, at_kill: dict[str, dict[str, Any]], frozen_sent: set[str]) -> str:
    """Why an order that failed loudly did: each reason the design expects, else "other"."""
    from benchmarks.campaign import PROCESSED_KINDS

    if outcome.kind == "dropped before processing":
        return "dropped before processing: never processed, its outcome unknown to the task (by design)"
    if (at_kill.get(outcome.external_id) or {}).get("state") == "sent" and not outcome.held_ids:
        return "'sent' in the ledger when the task was killed, never reached Limio: unknown (by design)"
    if outcome.kind == "ledger: done write fails" and outcome.held_ids and reported == "unknown":
        return "its 'done' write failed in try 1, which was killed; no later try found it among the newest: unknown"
    if outcome.external_id in frozen_sent and outcome.held_ids and reported == "unknown":
        return "'sent' by the frozen try when it froze; the retry that took it over did not find it: unknown"
    if outcome.held_ids and reported == "unknown":
        return "Limio holds it, but not among the newest orders the look-up reads (reconcile budget): unknown"
    if outcome.kind in PROCESSED_KINDS and not outcome.held_ids and outcome.faults and not outcome.faults[0].times:
        return "its 'processed' fault hit a submit Limio refused (401 in a token event): nothing created, unknown"
    return "other (see the scratch directory)"


def run_campaign(args: argparse.Namespace) -> bool:
    from benchmarks.campaign import FAULT_KINDS, Outcome, Report, _inject, tally
    from limio_provider.testing import sample_order
    from limio_provider.testing.faults import Fault

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="limio-batch-campaign-"))
    home = work / "airflow-home"
    home.mkdir()
    orders_file, results_file, ledger_dir = work / "orders.jsonl", work / "orders.results.jsonl", work / "ledger"
    ids = [f"batch-{args.seed}-{index:05d}" for index in range(args.orders)]
    with orders_file.open("w") as out:
        for external_id in ids:
            out.write(json.dumps(sample_order(external_id, process_immediately=True)) + "\n")

    rng = random.Random(args.seed)
    faulted = rng.sample(range(args.orders), round(args.orders * args.fault_share))
    kind_of = {ids[index]: FAULT_KINDS[n % len(FAULT_KINDS)] for n, index in enumerate(faulted)}
    nth_of = {ids[index]: n // len(FAULT_KINDS) for n, index in enumerate(faulted)}
    # Ledger write faults, in try 1 only, on orders it reaches before the kill: a "sent" write (nothing leaves)
    # and a "done" write (after Limio created the order) that fail as on a full disk.
    early = [eid for eid in ids[: round(args.orders * args.kill_at * 0.75)] if eid not in kind_of]
    for n, external_id in enumerate(rng.sample(early, min(len(early), 2 * args.ledger_faults))):
        kind_of[external_id] = LEDGER_WRITE_KINDS[n % 2]
    ledger_faults = work / "ledger-faults.json"
    ledger_faults.write_text(
        json.dumps(
            {
                quote(eid, safe="") + ".json": "sent" if kind == LEDGER_WRITE_KINDS[0] else "done"
                for eid, kind in kind_of.items()
                if kind in LEDGER_WRITE_KINDS
            }
        )
    )
    outage_at = round(args.orders * args.outage_at)
    outage_id = (
        next(
            (ids[i] for i in range(outage_at, args.orders) if kind_of.get(ids[i]) == "credentials revoked, restored"),
            None,
        )
        if args.outage_at > 0
        else None
    )
    from benchmarks.campaign import MAX_ANSWER_BYTES

    hook_params = {
        "timeout": args.timeout,
        "max_answer_bytes": MAX_ANSWER_BYTES,
        "retry_limit": 3,
        "retry_backoff": 0.05,  # a backoff pauses the whole batch: short, as the Retry-After
        "retry_max_backoff": 0.5,
    }

    emulator = campaign_emulator(args.event_gap)
    armed: dict[str, list[Any]] = {}
    outage = Fault(route="token", action="status", status=401, message="invalid_client", times=None)
    outage_seen: list[float] = []
    tries: list[Try] = []
    kill_point: dict[str, Any] = {}
    frozen_point: dict[str, Any] = {}
    with emulator:
        for external_id, kind in kind_of.items():
            if kind in LEDGER_WRITE_KINDS:
                continue  # armed in try 1's process (--ledger-faults)
            if kind == "token expired mid-run":
                emulator.on_submit[external_id] = lambda: emulator.advance(emulator.token_ttl + 1)
            elif kind == "credentials revoked, restored":
                emulator.on_submit[external_id] = emulator.revoke_tokens
            else:
                armed[external_id] = _inject(
                    emulator, kind, external_id, nth_of[external_id], retry_after=args.retry_after, hang=args.hang
                )
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            CONN_ENV: emulator.connection_json(),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": args.log_level,
        }
        kill_after = round(args.orders * args.kill_at)
        kill_try: int | None = None
        freeze_after, thaw_after = round(args.orders * args.freeze_at), round(args.orders * args.thaw_at)
        zombie: subprocess.Popen[bytes] | None = None  # the frozen try's process
        zombie_attempt: Try | None = None
        for number in range(1, args.max_tries + 1):
            attempt = Try(number)
            ledger = ledger_states(ledger_dir)
            attempt.ledger_at_start = {external_id: record["state"] for external_id, record in ledger.items()}
            if zombie_attempt is not None and zombie_attempt.number == number - 1:
                attempt.frozen_sent = {
                    external_id
                    for external_id, record in ledger.items()
                    if record["state"] == "sent" and (record.get("holder") or {}).get("try_number") == number - 1
                }
                frozen_point["sent"] = len(attempt.frozen_sent)
            if kill_try is not None and number == kill_try + 1 and outage_id is not None:  # the try after the kill

                def revoke_credentials() -> None:
                    emulator.revoke_tokens()
                    emulator.add_fault(outage)
                    outage_seen.append(time.monotonic())

                emulator.on_submit[outage_id] = revoke_credentials
                emulator.forced.add(outage_id)
            first_request = len(emulator.requests)
            status_file = work / f"status.try{number}.json"
            command = [
                sys.executable, str(Path(__file__).resolve()), "--worker",
                "--orders-path", f"file://{orders_file}",
                "--results-path", f"file://{results_file}",
                "--ledger-path", f"file://{ledger_dir}",
                "--in-flight", str(args.in_flight),
                "--try-number", str(number),
                "--run-id", f"campaign-{args.seed}",
                "--hook-params", json.dumps(hook_params),
                "--status", str(status_file),
                "--state-store", str(work / "task_state_store.json"),
                "--ledger-faults-file", str(ledger_faults) if number == 1 else "",
            ]  # fmt: skip
            with (work / f"task.try{number}.log").open("wb") as log:
                began = time.perf_counter()
                child = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
                deadline = began + args.try_timeout
                while child.poll() is None:
                    if kill_try is None and emulator.created >= kill_after:
                        os.kill(child.pid, signal.SIGKILL)
                        attempt.killed, kill_try = True, number
                        kill_point = {"created": emulator.created, "after": time.perf_counter() - began}
                        break
                    # A try after the kill's is frozen past the point Airflow gives up on it; the next one starts.
                    late = kill_try is not None and number > kill_try + 1 and zombie_attempt is None
                    if late and args.freeze_at > 0 and emulator.created >= freeze_after:
                        os.kill(child.pid, signal.SIGSTOP)
                        attempt.frozen, zombie, zombie_attempt = True, child, attempt
                        frozen_point.update(created=emulator.created, after=time.perf_counter() - began)
                        break
                    if zombie is not None and "resumed" not in frozen_point and emulator.created >= thaw_after:
                        os.kill(zombie.pid, signal.SIGCONT)
                        frozen_point["resumed"] = emulator.created
                        frozen_point["resumed during"] = number
                        frozen_point["resumed after"] = time.perf_counter() - began
                    if time.perf_counter() > deadline:
                        os.kill(child.pid, signal.SIGKILL)
                        attempt.raised = f"nothing: killed after {args.try_timeout:.0f} s (--try-timeout)"
                        break
                    time.sleep(0.01)
                if not attempt.frozen:
                    child.wait()
                attempt.seconds = time.perf_counter() - began
            if zombie is not None and zombie_attempt is not None and not attempt.frozen:  # resume it, see it end
                if "resumed" not in frozen_point:
                    os.kill(zombie.pid, signal.SIGCONT)
                    frozen_point.update({"resumed": emulator.created, "resumed during": None})
                zombie.wait(timeout=args.try_timeout)
                zombie_attempt, zombie = _ended(zombie_attempt, work), None
                time.sleep(0.5)  # its last requests are served (and recorded)
            if attempt.frozen:  # its requests until now are its own; after it resumes, counted with the next try's
                _count_requests(attempt, emulator.requests[first_request:])
                tries.append(attempt)
                continue
            if attempt.killed:
                time.sleep(0.5)  # requests the dead task had written are served (and recorded) by now
            if outage_seen and outage.times is None:
                outage.times = 0  # restored: the token endpoint accepts the credentials again
            if status_file.exists():
                status = json.loads(status_file.read_text())
                attempt.raised, attempt.error = status["raised"], status["error"]
                attempt.summary, attempt.xcom_bytes = status["summary"], status["xcom_bytes"]
            elif not attempt.killed and attempt.raised is None:
                attempt.raised = f"nothing: the task process exited {child.returncode} (see its log)"
            if results_file.exists():
                shutil.copy(results_file, work / f"results.try{number}.jsonl")
                attempt.rows = read_results(results_file)
            _count_requests(attempt, emulator.requests[first_request:])
            tries.append(attempt)
            if attempt.killed:
                at_kill = ledger_states(ledger_dir)
                kill_point["states"] = Counter(record["state"] for record in at_kill.values())
                kill_point["not claimed"] = args.orders - len(at_kill)
                kill_point["records"] = at_kill
                continue
            # Airflow retries a try that raised; a retry changes nothing once every order is done or unknown
            # (an unknown outcome is only looked up again, never resent), unless the kill is still to come.
            resendable = any(row["outcome"] in ("failed", "refused") for row in attempt.rows.values())
            if attempt.raised is None or (attempt.raised == "LimioBatchFailedError" and not resendable and kill_try):
                break
        held = emulator.orders
        unfired_triggers = set(emulator.on_submit)
        with (work / "requests.jsonl").open("w") as out:  # every request Limio received, for a reproduction
            for request in emulator.requests:
                body = request.body if isinstance(request.body, dict) else {}
                out.write(
                    json.dumps(
                        [request.received_at, request.method, request.path, body.get("external_id"), request.status]
                    )
                    + "\n"
                )
        with (work / "token-events.jsonl").open("w") as out:
            for external_id, (at, how) in sorted(emulator.fired.items(), key=lambda item: item[1]):
                out.write(json.dumps([at, external_id, kind_of.get(external_id), how]) + "\n")
        token_events = Counter((kind_of.get(external_id), how) for external_id, (_, how) in emulator.fired.items())
    final = tries[-1]
    final_ledger = ledger_states(ledger_dir)
    frozen_sent = set().union(*(t.frozen_sent for t in tries))

    # -- the check ----------------------------------------------------------------------------------------
    by_external_id: dict[str, list[str]] = {}
    for order in held.values():
        by_external_id.setdefault(order["external_id"], []).append(order["id"])
    loud_end = final.raised == "LimioBatchFailedError"
    rows: dict[str, Counter[str]] = {kind: Counter() for kind in ("no fault", *FAULT_KINDS, *LEDGER_WRITE_KINDS)}
    outcomes: list[Outcome] = []
    for external_id in ids:
        outcome = Outcome(external_id, kind_of.get(external_id, "no fault"), faults=armed.get(external_id, []))
        outcome.held_ids = by_external_id.get(external_id, [])
        row = final.rows.get(external_id)
        reported = row["outcome"] if row else None
        if reported in HELD_OUTCOMES:
            outcome.reported_id = row["order_id"] if row else None
        elif reported == "unknown":
            outcome.failed_loudly = loud_end
        elif reported in ("failed", "refused"):
            failed_order = reported == "failed" and row is not None and outcome.held_ids == [row.get("order_id")]
            outcome.failed_loudly = loud_end and (not outcome.held_ids or failed_order)
        outcomes.append(outcome)
        tally(rows[outcome.kind], outcome)
    report = Report(rows, args.orders, time.perf_counter() - started, [], outcomes)

    # -- the report ---------------------------------------------------------------------------------------
    print(report.table())
    print()
    states = kill_point.get("states", Counter())
    done_at_kill = states["done"]
    in_flight = states["claimed"] + states["sent"]
    print(
        f"kill point: try {kill_try} SIGKILLed {kill_point.get('after', 0):.1f} s after it started, once the emulator "
        f"had created {kill_point.get('created', 0)} orders (--kill-at {args.kill_at:.0%} of {args.orders})"
        if kill_try
        else "kill point: NONE, the task ended before the kill point"
    )
    print(
        f"  ledger at the kill: {done_at_kill} done, {in_flight} in flight ({states['claimed']} claimed, "
        f"{states['sent']} sent), {states['unknown']} unknown, {states['refused']} refused, "
        f"{kill_point.get('not claimed', 0)} not yet claimed"
    )
    records = kill_point.get("records", {})
    sent_at_kill = [external_id for external_id, record in records.items() if record["state"] == "sent"]
    sent_held = sum(bool(by_external_id.get(external_id)) for external_id in sent_at_kill)
    print(f"  of the {len(sent_at_kill)} sent at the kill, Limio holds {sent_held} (processed before the task died)")
    for attempt in tries:
        counts_text = ", ".join(f"{k} {v}" for k, v in (attempt.summary or {}).get("counts", {}).items() if v)
        print(
            f"try {attempt.number}: {attempt.seconds:.1f} s, {attempt.ended()}; {sum(attempt.posts.values())} order "
            f"POSTs ({', '.join(f'{s}: {n}' for s, n in sorted(attempt.answers.items()))}), {attempt.list_reads} "
            f"list reads; results file {len(attempt.rows)} lines" + (f"; summary: {counts_text}" if counts_text else "")
        )
        if attempt.number > 1:
            print(
                f"  POSTs for orders the ledger held as done when it started: {attempt.posts_for('done')} "
                f"(must be 0); as sent/unknown (looked up, never resent): {attempt.posts_for('sent', 'unknown')} "
                f"(must be 0); as claimed/refused/none (sent now): "
                f"{sum(attempt.posts.values()) - attempt.posts_for('done', 'sent', 'unknown')}"
            )
        if attempt.raised and attempt.raised != "LimioBatchFailedError":
            print(f"  error: {(attempt.error or '')[:300]}")
        if attempt.summary is not None and attempt.summary.get("stopped"):
            print(f"  the batch stopped: {attempt.summary['stopped'][:200]}")
    armed_writes = json.loads(ledger_faults.read_text())
    fired_file = Path(str(ledger_faults) + ".fired")
    fired_writes = set(fired_file.read_text().split()) if fired_file.exists() else set()
    print(
        f"ledger write faults (try 1): {len(fired_writes)} of {len(armed_writes)} fired "
        f"({sum(v == 'sent' for v in armed_writes.values())} 'sent' writes, "
        f"{sum(v == 'done' for v in armed_writes.values())} 'done' writes)"
    )
    frozen_ok = args.freeze_at <= 0
    if zombie_attempt is not None:
        print(
            f"frozen try: try {zombie_attempt.number} SIGSTOPped {frozen_point['after']:.1f} s after it started, once "
            f"the emulator had created {frozen_point['created']} orders (--freeze-at {args.freeze_at:.0%}); it had "
            f"{frozen_point.get('sent', 0)} orders recorded sent; SIGCONT once {frozen_point.get('resumed')} existed "
            f"(--thaw-at {args.thaw_at:.0%}), while try {frozen_point.get('resumed during')} ran; it then "
            f"{'raised ' + str(zombie_attempt.raised) if zombie_attempt.raised else 'returned'}"
        )
        print(f"  its error: {(zombie_attempt.error or '')[:300]}")
        frozen_ok = zombie_attempt.raised == "LimioClaimLostError" and frozen_point.get("resumed during") is not None
    elif args.freeze_at > 0:
        print("frozen try: NONE, the task ended before the freeze point")
    resumed = tries[kill_try] if kill_try is not None and len(tries) > kill_try else None
    if resumed is not None:
        print(
            f"POSTs try {resumed.number} (the resume) made for the {done_at_kill} orders done before the kill: "
            f"{resumed.posts_for('done')} (must be 0)"
        )
    else:
        print("no try after the kill")
    if outage_id is not None:
        where = "never fired"
        if outage_seen and resumed is not None:
            where = f"at {outage_id} in try {resumed.number}, restored for try {resumed.number + 1}"
        print(f"credentials outage: {where}")
    if final.xcom_bytes is not None:
        print(f"final try's summary XCom: {final.xcom_bytes} bytes")
    file_counts = Counter(row["outcome"] for row in final.rows.values())
    summary_counts = {k: v for k, v in ((final.summary or {}).get("counts") or {}).items() if v}
    consistent = summary_counts == dict(file_counts)
    if not consistent:
        print(f"INCONSISTENT: the summary counts {summary_counts} but the results file has {dict(file_counts)}")
    rate_limited = sum(attempt.answers["429"] for attempt in tries)
    print(f"429s answered: {rate_limited} (Retry-After {args.retry_after} s; each, and each 503, cuts the learnt rate)")
    for kind in GLOBAL_KINDS:
        print(
            f"{kind}: {token_events[kind, 'global']} orders' submits invalidated every token, "
            f"{token_events[kind, 'own 401']} (within {args.event_gap} s of the previous) got a 401 of their own"
        )
    for outcome in report.unfired:
        print(f"WARNING: a fault armed for {outcome.external_id} [{outcome.kind}] never fired")
    for external_id in sorted(unfired_triggers):
        print(f"WARNING: the token event of {external_id} [{kind_of.get(external_id)}] never fired")

    unaccounted = report.unaccounted
    if unaccounted:
        print(f"{len(unaccounted)} orders were neither held once nor failed loudly:")
        for outcome in unaccounted:
            record = final_ledger.get(outcome.external_id) or {}
            what = [
                f"try {t.number}: "
                + (
                    f"{t.rows[outcome.external_id]['outcome']} {t.rows[outcome.external_id].get('order_id')} "
                    f"{(t.rows[outcome.external_id].get('error') or '')[:200]}"
                    if outcome.external_id in t.rows
                    else "no result line"
                )
                + f", {t.posts[outcome.external_id]} POSTs"
                for t in tries
            ]
            print(
                f"  {outcome.external_id} (line {ids.index(outcome.external_id) + 1}) [{outcome.kind}]: emulator "
                f"holds {outcome.held_ids or 'nothing'}; ledger {record.get('state')} {record.get('order_id')} "
                f"(claimed by try {(record.get('claimed_by') or {}).get('try_number')}); " + "; ".join(what)
            )
    else:
        print(f"every one of the {args.orders} intended orders was held once or failed loudly")
    if failed_loud := [o for o in outcomes if o.failed_loudly]:
        shown = Counter(final.rows[o.external_id]["outcome"] for o in failed_loud)
        shown_text = ", ".join(f"{k} {v}" for k, v in shown.items())
        print(f"failed loudly ({shown_text}); the final try raised {final.raised}:")
        why: Counter[str] = Counter()
        for outcome in failed_loud:
            why[loud_reason(outcome, final.rows[outcome.external_id]["outcome"], records, frozen_sent)] += 1
        for reason, count in why.most_common():
            print(f"  {count:5d}  {reason}")

    ok = (
        report.ok
        and resumed is not None
        and frozen_ok
        and fired_writes == set(armed_writes)
        and all(t.posts_for("done", "sent", "unknown") == 0 for t in tries[1:])
        and consistent
    )
    print(
        f"{args.orders} orders, {len(kind_of)} faulted, {len(tries)} tries, in {time.perf_counter() - started:.1f} s "
        f"(scratch: {work})"
    )
    print(
        "PASS: no duplicate, lost or misreported order; no order done before a retry was sent again" if ok else "FAIL"
    )
    if ok and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=10000)
    parser.add_argument("--fault-share", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--in-flight", type=int, default=16, help="the operator's max_in_flight")
    parser.add_argument("--kill-at", type=float, default=0.4, help="SIGKILL the task once this share of orders exists")
    parser.add_argument(
        "--outage-at", type=float, default=0.7, help="in the try after the kill, revoke the credentials here (0: never)"
    )
    parser.add_argument(
        "--freeze-at", type=float, default=0.85, help="SIGSTOP a try after the kill's here, start the next (0: never)"
    )
    parser.add_argument("--thaw-at", type=float, default=0.92, help="SIGCONT the frozen try here (in the next try)")
    parser.add_argument("--max-tries", type=int, default=5, help="at most this many tries (Airflow retries + 1)")
    parser.add_argument("--retry-after", type=float, default=0.1, help="the 429 fault's Retry-After, s")
    parser.add_argument("--timeout", type=float, default=1.0, help="the hook's read timeout, s")
    parser.add_argument("--hang", type=float, default=1.5, help="how long 'no answer' holds the connection, s")
    parser.add_argument(
        "--event-gap", type=float, help="least time before a global token event, s (default 0.5 s per 16 in flight)"
    )
    parser.add_argument("--try-timeout", type=float, default=600.0, help="kill a try running longer, s")
    parser.add_argument("--log-level", default="WARNING", help="the task process's Airflow log level")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (kept anyway on FAIL)")
    # The task process (--worker): one try of the task.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ledger-faults", type=int, default=20, help="orders of each ledger write fault kind")
    for name in (
        "--orders-path",
        "--results-path",
        "--ledger-path",
        "--run-id",
        "--hook-params",
        "--status",
        "--state-store",
    ):
        parser.add_argument(name, help=argparse.SUPPRESS)
    for name in ("--ledger-faults-file",):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--try-number", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        raise SystemExit(run_worker(args))
    if not 0 < args.kill_at < 1:
        parser.error("--kill-at must be between 0 and 1")
    if args.event_gap is None:  # a refetch-and-replay takes longer with more threads in the task process
        args.event_gap = 0.5 * max(1.0, args.in_flight / 16)
    raise SystemExit(0 if run_campaign(args) else 1)


if __name__ == "__main__":
    main()
