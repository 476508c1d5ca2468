"""The walk of one order from the task to the wire and back: every transition of its records, top to bottom.

:class:`Submitter` is what both submit operators run: the single-order ones for their one order, the batch for
each of its orders. :class:`OrderRecord` is the only code that reads or writes the task's ``task_state_store``
record and the order's ledger record; :class:`NotRecorded` keeps a batch's few orders whose ledger record
failed to say that Limio holds them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from limio_provider.exactly_once import decisions
from limio_provider.exactly_once.decisions import how_to_decide, ledger_ref, outcome_ref
from limio_provider.exactly_once.matching import orders_for, partner_id, result_of

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

    from limio_provider.exactly_once.ledger import OrderLedger
    from limio_provider.hooks.limio import LimioHook
    from limio_provider.models.results import OrderObject

log = logging.getLogger(__name__)

#: Seconds after its "sent" write past which a request about to leave has its claim read again (a try that
#: stalled that long may have been superseded meanwhile).
RECHECK_AFTER = 1.0


def older_than(context: Context, ledger: OrderLedger) -> bool:
    """Whether the run's work (its data interval's end, else its logical date) is older than ``ledger``: then
    orders for it may have been sent before the ledger existed. A run with neither is new work."""
    work = context.get("data_interval_end") or context.get("logical_date")
    return work is not None and work < ledger.since()


class OrderRecord:
    """What a submit task instance has done, kept in ``task_state_store`` under one key, and mirrored to the
    order ledger when one is configured: the only code that reads or writes either. Without a store
    (Airflow before 3.3) the task's own record does not survive the try; the ledger's does.

    The task's record is ``{"external_id", "state", "seen", "order_id", "result", "adopted"}``, in the ledger's
    states (``limio_provider.exactly_once.ledger``): ``sent`` (written before the request leaves), ``unknown``
    (sent, outcome not proven) or ``done`` (Limio's answer, or the order found, is in ``result``); ``seen``
    lists the ids of orders that already carried this external_id before sending, which this task never adopts
    as its own. The ledger's record also knows ``claimed`` and ``refused``.
    """

    def __init__(self, context: Context, key: str, external_id: str, ledger: OrderLedger | None = None) -> None:
        self._store = context.get("task_state_store")
        self.key = key
        self.external_id = external_id
        self.ledger = ledger
        self.entry: dict[str, Any] = {}  # the ledger record this task holds
        self.first_claim = False  # whether the claim created the external_id's record (none existed)
        self.token = os.urandom(16).hex()  # this try's: its writes fail once another try holds the claim

    @property
    def durable(self) -> bool:
        return self._store is not None

    def ref(self, context: Context) -> str:
        """The :func:`outcome_ref` of this task's send: its ledger record's, else its task instance's."""
        if self.entry:
            return ledger_ref(self.external_id, self.entry)
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        holder = [ti.dag_id, context["run_id"], ti.task_id, -1 if map_index is None else map_index]
        return outcome_ref(self.external_id, {"task_instance": holder})

    def load(self) -> dict[str, Any]:
        """The record of this external_id, or ``{}``."""
        value = self._store.get(self.key) if self._store is not None else None
        return value if isinstance(value, dict) and value.get("external_id") == self.external_id else {}

    def save(self, state: str, **fields: Any) -> None:
        """Write this task's record, and the ledger's, in one state (the ledger's vocabulary: ``sent`` as the
        request leaves, ``unknown``, ``done`` with the order). ``done`` says Limio holds the order: when writing
        it fails, the error says so and names the order (:class:`LimioOrderNotRecordedError`), whatever failed.

        The ledger is written first (its write fails once another try holds the claim: then this try's record
        is left alone), except for ``done``, a fact worth keeping whoever holds the claim.
        """
        from limio_provider.exceptions import LimioClaimLostError, LimioOutcomeUnknownError

        record = {"external_id": self.external_id, "state": state, **fields}
        try:
            if self._store is not None and state == "done":
                self._store.set(self.key, record)
            # An adopted entry is done already, and is another task's claim: it is not written again.
            if self.ledger is not None and self.entry and self.entry.get("state") != "done":
                changes = {}
                if state == "done":
                    result = fields["result"]
                    changes = {"order_id": fields["order_id"], "status": result.get("status"), "result": result}
                self.entry = self.ledger.update(self.entry, state, **changes)  # type: ignore[arg-type]
            if self._store is not None and state != "done":
                self._store.set(self.key, record)
        except LimioClaimLostError as exc:
            if state == "unknown":  # this try sent it, holding the claim then: what became of it is not known
                raise LimioOutcomeUnknownError(
                    f"Limio may have received order {self.external_id} (the submit's outcome is unknown), and "
                    f"{exc}: that try looks it up",
                    external_id=self.external_id,
                ) from exc
            if state != "done":
                raise
            raise self._not_recorded(fields["order_id"], bool(fields.get("adopted")), exc) from exc
        except Exception as exc:
            if state == "sent":  # a local failure, before the request: it never left
                from limio_provider.exceptions import LimioError

                raise LimioError(
                    f"order {self.external_id} was not sent: recording that it is leaving failed "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
            if state != "done":
                raise
            raise self._not_recorded(fields["order_id"], bool(fields.get("adopted")), exc) from exc

    def _not_recorded(self, order_id: str, adopted: bool, exc: Exception) -> Exception:
        from limio_provider.exceptions import LimioOrderNotRecordedError

        return LimioOrderNotRecordedError(
            f"Limio holds order {self.external_id} as {order_id}, and recording it failed "
            f"({type(exc).__name__}: {exc}); it is never sent again: a retry of this task finds it and records it",
            external_id=self.external_id,
            order_id=order_id,
            adopted=adopted,
        )

    def repair(self, body: dict[str, Any], context: Context, result: dict[str, Any]) -> None:
        """Make the ledger say what this task's record says: Limio holds ``result`` (an earlier try stored its
        id and then failed to write the ledger). Another body's record under this external_id is left alone."""
        from limio_provider.exactly_once.identity import fingerprint
        from limio_provider.exactly_once.ledger import Owner

        if self.ledger is None:
            return
        owner, body_fingerprint = Owner.of(context), fingerprint(body)
        try:
            _, entry = self.ledger.claim(self.external_id, body_fingerprint, owner, self.token)
            if entry.get("state") != "done" and entry.get("fingerprint") == body_fingerprint:
                changes = {"order_id": result["id"], "status": result.get("status"), "result": result}
                self.entry = self.ledger.update(
                    {**entry, "external_id": self.external_id}, "done", claimed_by=vars(owner).copy(), **changes
                )
        except Exception as exc:
            raise self._not_recorded(result["id"], True, exc) from exc

    def clear(self, error: str) -> None:
        """Nothing was created: forget the intent; the ledger says ``refused`` (a corrected order may claim
        the external_id again). Once another try holds the ledger's claim, both records are that try's."""
        from limio_provider.exceptions import LimioClaimLostError

        if self.ledger is not None and self.entry:
            try:
                self.entry = self.ledger.update(self.entry, "refused", error=error[:500])
            except LimioClaimLostError as exc:
                log.warning("%s", exc)
                return
            except Exception as exc:  # the record stays as it was: a retry resumes or looks the order up
                log.warning(
                    "Order %s: writing the ledger's refusal failed: %s: %s", self.external_id, type(exc).__name__, exc
                )
        if self._store is not None:
            self._store.delete(self.key)

    def claim(
        self,
        body: dict[str, Any],
        context: Context,
        wait_timeout: float,
        decide: Callable[[dict[str, Any]], Any] | None = None,
    ) -> str:
        """Take the ledger's claim on this external_id: ``send``, ``adopt`` (the ledger holds Limio's order:
        ``entry`` has it) or ``reconcile`` (an earlier try of this task may have sent it).

        ``decide(record)`` returns a person's decision on the outcome of another task instance's send that never
        learnt it (a ``sent``/``unknown`` ledger record; the decision must name that record's outcome): the
        record is then set ``refused`` ("send": Limio does not have it, looked up again) or ``done`` (an order
        result: Limio has it) instead of waited for.

        :raises LimioOutcomeUnknownError: another task instance holds the claim and did not finish within
            ``wait_timeout`` seconds.
        """
        from limio_provider.exactly_once.identity import fingerprint
        from limio_provider.exactly_once.ledger import Owner, next_step
        from limio_provider.exceptions import LimioOutcomeUnknownError

        assert self.ledger is not None
        owner, body_fingerprint = Owner.of(context), fingerprint(body)
        created, entry = self.ledger.claim(self.external_id, body_fingerprint, owner, self.token)
        self.first_claim = created  # no record existed: the ledger knows nothing of this external_id
        for _ in range(3):
            if created:
                break
            step = next_step(entry, body_fingerprint, owner)
            if step == "wait" and decide is not None and entry.get("state") in ("sent", "unknown"):
                decision = decide(entry)
                if decision == "send":
                    entry = self.ledger.update({**entry, "external_id": self.external_id}, "refused", error="decided")
                    step = "reclaim"
                elif decision is not None:
                    order_id, result = decision["id"], decision
                    self.entry = self.ledger.update(
                        {**entry, "external_id": self.external_id},
                        "done",
                        order_id=order_id,
                        status=result.get("status"),
                        result=result,
                    )
                    return "adopt"
            if step == "wait":
                entry = self.ledger.wait_final(self.external_id, wait_timeout) or {"state": "refused"}
                step = next_step(
                    {**entry, "fingerprint": entry.get("fingerprint", body_fingerprint)}, body_fingerprint, owner
                )
                if step == "wait":
                    if entry.get("state") in ("sent", "unknown"):  # a decision applies where it may have been sent
                        what = how_to_decide(self.external_id, ledger_ref(self.external_id, entry))
                    else:  # claimed: not sent yet
                        what = (
                            "It has not sent it yet: if that task instance is not running, clear it (its retry "
                            "takes the claim up again)."
                        )
                    raise LimioOutcomeUnknownError(
                        f"order {self.external_id} is claimed in the ledger by {entry.get('claimed_by')} (state "
                        f"{entry.get('state')} since {entry.get('updated_at')}) and did not finish within "
                        f"{wait_timeout:.0f} s; not sending it a second time. {what}",
                        external_id=self.external_id,
                    )
            if step == "reclaim":
                created, entry = self.ledger.reclaim(
                    {**entry, "external_id": self.external_id}, body_fingerprint, owner, self.token
                )
                continue
            # An earlier try's claim is taken over (its writes, and so its sends, fail from now on); an adopted
            # one is only read.
            self.entry = entry if step == "adopt" else self.ledger.take(entry, owner, self.token)
            return {"adopt": "adopt", "resume": "send", "reconcile": "reconcile"}[step]
        if not created:
            raise LimioOutcomeUnknownError(
                f"order {self.external_id}: the ledger claim keeps changing hands; not sending it",
                external_id=self.external_id,
            )
        self.entry = entry
        return "send"

    def gate(self, superseded: Callable[[], str | None]) -> Callable[[], None] | None:
        """What checks, right before the request leaves, that this try still holds the ledger's claim: nothing
        to do within :data:`RECHECK_AFTER` seconds of the "sent" write (that write was the check), else the
        record is read again (the try stalled: frozen, paused by a 429, or replaying after a 401 and a new
        token), and ``superseded()`` (a batch: whether a later try holds the task instance) must say nothing.
        ``None`` without a ledger."""
        if self.ledger is None or not self.entry:
            return None
        ledger, written = self.ledger, time.monotonic()
        entry = self.entry

        def check() -> None:
            if time.monotonic() - written < RECHECK_AFTER:
                return
            if why := superseded():
                from limio_provider.exceptions import LimioClaimLostError

                raise LimioClaimLostError(
                    f"order {entry['external_id']}: this try was {why}; it sends nothing",
                    external_id=entry["external_id"],
                )
            ledger.check(entry)

        return check

    @staticmethod
    def stored(context: Context, key: str, order_id: str) -> dict[str, Any]:
        """The stored record of order ``order_id``, or ``{}`` (for a resumed task, which knows only the id)."""
        store = context.get("task_state_store")
        value = store.get(key) if store is not None else None
        return value if isinstance(value, dict) and value.get("order_id") == order_id else {}


class NotRecorded:
    """A batch's orders that Limio holds and whose ledger record could not be made to say so (a full disk, an
    S3 5xx), kept in the task's ``task_state_store`` under one key as each happens: the next try reconnects to
    each by its id, as a single-order task does to its stored order, where a look-up by external_id finds only
    the newest orders. At most ``LIMIT``; without ``task_state_store`` (Airflow before 3.3) the next try
    looks each up instead."""

    key = "limio_batch_not_recorded"
    LIMIT = 500

    def __init__(self, context: Context) -> None:
        self._store: Any = context.get("task_state_store")
        value: Any = self._store.get(self.key) if self._store is not None else None
        kept = value.items() if isinstance(value, dict) else ()
        self._orders = {key: order for key, order in kept if isinstance(order, dict) and order.get("order_id")}
        self._lock = threading.Lock()

    def get(self, external_id: str) -> dict[str, Any]:
        """What is kept of ``external_id``'s order, as :meth:`OrderRecord.load` gives it, or ``{}``."""
        return self._orders.get(external_id, {})

    def add(self, external_id: str, order_id: str) -> None:
        with self._lock:
            if self._store is None or (external_id not in self._orders and len(self._orders) >= self.LIMIT):
                return
            result = {"id": order_id, "external_id": external_id}
            self._orders[external_id] = {"external_id": external_id, "order_id": order_id, "result": result}
            self._save()

    def discard(self, external_id: str) -> None:
        """Forget ``external_id``'s order: the ledger says it now."""
        with self._lock:
            if self._orders.pop(external_id, None) is not None:
                self._save()

    def _save(self) -> None:
        assert self._store is not None
        try:
            if self._orders:
                self._store.set(self.key, self._orders)
            else:
                self._store.delete(self.key)
        except Exception as exc:  # the next try looks the order up by its external_id instead
            log.warning("Keeping the batch's not-recorded orders failed: %s: %s", type(exc).__name__, exc)


class Submitted(NamedTuple):
    """What :meth:`Submitter.submit_once` got: the order, and where it came from."""

    #: Limio's answer (or the order as found): an order with its ``id`` and ``status``.
    result: dict[str, Any]
    #: Whether this try found the order rather than sent it (an earlier try, run or person had).
    adopted: bool
    #: Whether this task instance created the order, in this try or an earlier one (``False``: another run or
    #: task instance did, or another line of this try's batch, and this one adopted it).
    by_this_task: bool
    #: When ``result``'s status was recorded, if it was read from the ledger rather than from Limio now.
    status_at: str | None = None


@dataclass
class Submitter:
    """Submits one order at a time exactly once (docs/reliability.md), with what an operator configured.

    :param hook: the hook every call goes through.
    :param log: where what became of each order is said.
    :param state_key: the ``task_state_store`` key of the task's record.
    :param ledger: the order ledger, if any.
    :param post: sends a validated order body (``POST /order`` or ``/admin/order``); Limio's answer.
    :param check: called with the body before a send (a preview check), if any; raises to stop it.
    :param pace: waits for the order's turn, right before it is recorded and sent (a batch's rate).
    :param quiet: what became of the order at DEBUG, not INFO (a batch: its results file says it).
    :param superseded: why this try no longer runs its task instance, if a later one does (a batch's), asked
        right before a request leaves after a stall.
    :param not_recorded: a batch's orders Limio holds that an earlier try failed to record: reconnected to first.
    """

    hook: LimioHook
    log: logging.Logger | Any
    state_key: str
    ledger: OrderLedger | None
    post: Callable[[dict[str, Any]], Any]
    ledger_wait_timeout: float = 300.0
    on_unknown_outcome: str = "fail"
    adopt_existing: bool = True
    reconcile_page_size: int = 100
    reconcile_pages: int = 5
    check: Callable[[dict[str, Any]], Any] | None = None
    pace: Callable[[], None] = lambda: None
    quiet: bool = False
    superseded: Callable[[], str | None] = lambda: None
    not_recorded: NotRecorded | None = None

    def _say(self, message: str, *args: Any) -> None:
        (self.log.debug if self.quiet else self.log.info)(message, *args)

    def submit_once(self, body: dict[str, Any], context: Context) -> Submitted:
        """The order for ``body``: submitted once by this task instance, or found (:class:`Submitted`)."""
        external_id, partner = body["external_id"], partner_id(body.get("forPartner"))
        record = OrderRecord(context, self.state_key, external_id, self.ledger)
        stored = record.load() or (self.not_recorded.get(external_id) if self.not_recorded is not None else {})

        # 1. An order an earlier try stored always wins; the ledger is made to say so (that try may have failed
        #    to write it).
        if stored.get("order_id"):
            order = self.hook.get_order(stored["order_id"])
            self._say(
                "Order %s (%s) was submitted by an earlier try; reconnecting (status %s)",
                stored["order_id"],
                external_id,
                order.status,
            )
            reconnected = {**stored["result"], **result_of(order, status_only=True)}
            record.repair(body, context, reconnected)
            if self.not_recorded is not None:
                self.not_recorded.discard(external_id)
            return Submitted(reconnected, adopted=True, by_this_task=True)

        # 2. The ledger, if any: one object read says whether this external_id is taken, across runs and workers.
        step = "send"
        if record.ledger is not None:
            step = self._claim(record, body, context, partner)
            if step == "adopt":
                result = record.entry["result"] or {"id": record.entry["order_id"], "external_id": external_id}
                self._say("Order %s is in the ledger as %s: adopting it (no Limio call)", external_id, result["id"])
                from limio_provider.exactly_once.ledger import Owner

                # An earlier try of this task instance sent it; this try's own claim is another line of a batch
                # naming the same order (its first line says submitted).
                owner, claimed = Owner.of(context), record.entry.get("claimed_by") or {}
                by_this_task = owner.same_task_instance(claimed) and claimed.get("try_number") != owner.try_number
                status_at = record.entry.get("updated_at")
                record.save("done", order_id=result["id"], result=result, adopted=True)
                return Submitted(result, adopted=True, by_this_task=by_this_task, status_at=status_at)

        # 3. An earlier try sent it and never learnt the outcome: only an order it could have created counts.
        earlier_try_sent = stored.get("state") in ("sent", "unknown") or step == "reconcile"
        if earlier_try_sent or (not record.durable and record.ledger is None and context["ti"].try_number > 1):
            seen = stored.get("seen")  # None: any order with this external_id may be ours
            # A person's decision is read before looking; a 'send' is used up (deleted) after the look, whatever
            # it finds, and before sending: a send lost again asks again.
            decided = decisions.read(self.hook, self.log, external_id, partner, record.ref(context))
            if isinstance(decided, dict):
                record.save("done", order_id=decided["id"], result=decided, adopted=True)
                return Submitted(decided, adopted=True, by_this_task=True)
            found = self._created_since(external_id, seen, partner)
            if decided == "send":
                decisions.use_up(self.log, external_id, found)
            if found is not None:
                self.log.warning(
                    "An earlier try sent order %s and its outcome was unknown; Limio has it as %s (%s): adopting it",
                    external_id,
                    found["id"],
                    found.get("status"),
                )
                record.save("done", order_id=found["id"], result=found, adopted=True)
                return Submitted(found, adopted=True, by_this_task=True)
            why = "an earlier try sent it and its outcome is unknown"
            if decided is None and self.on_unknown_outcome != "resubmit":
                raise self._unknown_outcome(external_id, why, record.ref(context))
            self.log.warning("Order %s not found (%s): sending it", external_id, why)
        # 4. A first send, claimed in the ledger: Limio is not searched (nothing was sent under this external_id
        #    through this ledger), unless the work is older than the ledger (sent before it existed, maybe).
        elif record.ledger is not None and not (record.first_claim and older_than(context, record.ledger)):
            seen = None
        # 5. A first send without a ledger, or with one younger than the work: what already carries this
        #    external_id among the newest orders? (an earlier run's order is adopted)
        else:
            earlier, seen = self._look_before_first_send(external_id, partner, record.ledger)
            if earlier is not None:
                record.save("done", order_id=earlier["id"], result=earlier, adopted=True)
                return Submitted(earlier, adopted=True, by_this_task=False)

        if self.check is not None:
            self.check(body)
        result = self._send_recorded(body, record, seen)
        if result is None and self.on_unknown_outcome == "resubmit":
            self.log.warning("Resubmitting order %s (on_unknown_outcome='resubmit')", external_id)
            result = self._send_recorded(body, record, seen)
        if result is None:
            raise self._unknown_outcome(external_id, "the submit's outcome is unknown", record.ref(context))
        return Submitted(result, adopted=False, by_this_task=True)

    def _claim(self, record: OrderRecord, body: dict[str, Any], context: Context, partner: str | None) -> str:
        """:meth:`OrderRecord.claim`; a failure that is not the protocol's own (the ledger unreadable: a full or
        read-only disk, a corrupt record) is a :class:`LimioError` saying that nothing was sent."""
        from limio_provider.exceptions import LimioError

        assert record.ledger is not None
        try:
            decide = lambda entry: self._decided_for(entry, partner)  # noqa: E731
            return record.claim(body, context, self.ledger_wait_timeout, decide)
        except LimioError:
            raise
        except Exception as exc:
            raise LimioError(
                f"order {record.external_id} was not sent: its ledger record "
                f"{record.ledger.path(record.external_id)} could not be read or written ({type(exc).__name__}: "
                f"{str(exc)[:300]})"
            ) from exc

    def _look_before_first_send(
        self, external_id: str, partner: str | None, ledger: OrderLedger | None
    ) -> tuple[dict[str, Any] | None, list[str]]:
        """Before a first send the ledger cannot vouch for: an earlier order to adopt (``adopt_existing``), if
        Limio holds one, and the ids of the orders already carrying this external_id (never this send's)."""
        if ledger is None:
            self.log.info(
                "No order ledger: protection against another run sending order %s is limited to the %d newest "
                "orders; set the connection's ledger_path extra to remember every order sent",
                external_id,
                self.reconcile_page_size * self.reconcile_pages,
            )
        else:
            self.log.info(
                "The order ledger holds what was sent through it since %s; this run's work is older, so order "
                "%s may have been sent before (under another ledger, or one since wiped): looking it up first",
                ledger.since().isoformat(),
                external_id,
            )
        existing = self._lookup(external_id, partner)
        earlier = next((order for order in existing if not order.failed), None) if self.adopt_existing else None
        if earlier is not None:
            self.log.info("Order %s already exists as %s (an earlier run's): adopting it", external_id, earlier.id)
            return result_of(earlier), []
        return None, [order.id for order in existing if order.id]

    def _send_recorded(
        self, body: dict[str, Any], record: OrderRecord, seen: list[str] | None
    ) -> dict[str, Any] | None:
        """Send once: Limio's answer, or the order this send created when the answer was lost, or ``None``
        when the outcome stays unknown. The record says ``sent`` before the request leaves."""
        from limio_provider.exceptions import LimioClaimLostError, LimioError, LimioOutcomeUnknownError

        external_id = body["external_id"]
        try:
            # "sent" is written once this order holds one of the hook's in-flight slots (a batch's orders
            # queue for them): one killed while queueing is recorded as never sent, not as an unknown outcome.
            # The token comes first (a refresh then stalls no request between its turn and the wire), then the
            # order's turn (pace), then the record, then the request, which is let out only if this try still
            # holds the claim (record.gate).
            with self.hook.in_flight_slot():
                self.hook.get_token()
                self.pace()
                record.save("sent", seen=seen)
                with self.hook.submit_gate(record.gate(self.superseded)):
                    answer = self.post(body)
        except LimioClaimLostError:
            raise  # another try holds the claim: it owns this order's record, and this try sent nothing
        except LimioOutcomeUnknownError as exc:
            record.save("unknown", seen=seen)
            self.log.warning("%s", exc)
            found = self._created_since(external_id, seen, partner_id(body.get("forPartner")))
            if found is None:
                return None
            self.log.warning(
                "Outcome of order %s was unknown; resolved: Limio created it as %s (%s)",
                external_id,
                found["id"],
                found.get("status"),
            )
            record.save("done", order_id=found["id"], result=found, adopted=False)
            return found
        except LimioError as exc:
            record.clear(str(exc))  # refused by Limio, or never left this worker: nothing was created
            raise
        result = answer.to_json_dict()
        record.save("done", order_id=result["id"], result=result, adopted=False)
        self._say("Submitted order %s: id %s, status %s", external_id, result["id"], result.get("status"))
        return result

    def _lookup(self, external_id: str, partner: str | None) -> list[OrderObject]:
        """The orders among the newest that may be this one: its external_id, and its partner (``None``: an
        order for no partner) where Limio shows the order's ``forPartner``. The order list gives summaries, so
        each order with this external_id (rarely more than one) is read whole for its partner."""
        ours, others = orders_for(
            self.hook, external_id, partner, page_size=self.reconcile_page_size, max_pages=self.reconcile_pages
        )
        self.log.info(
            "Looked up external_id %s among the %d newest orders: %s",
            external_id,
            self.reconcile_page_size * self.reconcile_pages,
            ", ".join(
                [f"{order.id} ({order.status})" for order in ours]
                + [f"{order.id} ({order.status}, another partner: not this order)" for order in others]
            )
            or "not found",
        )
        return ours

    def _created_since(self, external_id: str, seen: list[str] | None, partner: str | None) -> dict[str, Any] | None:
        """The newest order with ``external_id`` that is not among ``seen`` (``None``: any), as a result.

        Asked only about an order that may have been sent: when the look-up itself fails, the order's outcome is
        unknown, and the error says so, names it and says what a person can do (the look-up's own error, a 5xx
        say, would read as if nothing was created).
        """
        from limio_provider.exceptions import LimioError, LimioOutcomeUnknownError

        try:
            orders = self._lookup(external_id, partner)
        except LimioError as exc:
            raise LimioOutcomeUnknownError(
                f"Limio may have received order {external_id}, and looking it up failed: {exc}. A retry of this "
                "task looks again and sends nothing.",
                external_id=external_id,
            ) from exc
        found = [order for order in orders if seen is None or order.id not in seen]
        return result_of(found[0]) if found else None

    def _unknown_outcome(self, external_id: str, why: str, ref: str) -> Exception:
        """The error of an order that may exist but cannot be found: it names the external_id."""
        from limio_provider.exceptions import LimioOutcomeUnknownError

        budget = self.reconcile_page_size * self.reconcile_pages
        return LimioOutcomeUnknownError(
            f"Limio may have received order {external_id} ({why}) but it is not among the {budget} newest "
            f"orders; not resubmitting. {how_to_decide(external_id, ref)}",
            external_id=external_id,
            ref=ref,
        )

    def _decided_for(self, entry: dict[str, Any], partner: str | None) -> str | dict[str, Any] | None:
        """A person's decision on another task instance's send (its ledger ``entry``): ``send`` only once Limio
        has been looked up again and does not hold the order (if it does, that order's result: it is adopted)."""
        external_id = entry["external_id"]
        decided = decisions.read(self.hook, self.log, external_id, partner, ledger_ref(external_id, entry))
        if decided == "send":
            found = self._created_since(external_id, None, partner)
            decisions.use_up(self.log, external_id, found)
            return "send" if found is None else found
        return decided
