"""A person's decision on an order whose outcome stayed unknown: an Airflow Variable, bound to the one send it
answers, checked before it is applied and used up once it is."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from limio_provider.exactly_once.matching import not_this_order, result_of

if TYPE_CHECKING:
    from logging import Logger

    from limio_provider.hooks.limio import LimioHook


#: Prefix of the Airflow Variable through which a person decides an order whose outcome stayed unknown.
DECISION_PREFIX = "limio_decision."


def decision_key(external_id: str) -> str:
    """The Airflow Variable that carries a person's decision for order ``external_id``:
    ``limio_decision.<external_id>`` (a SHA-256 for an id too long for a Variable name). Its value is
    ``send <ref>`` (I checked: Limio does not have it; send it) or ``adopt <order id> <ref>`` (Limio has it as
    that order), where ``ref`` names the send it answers (:func:`outcome_ref`; the error gives it). The submit
    task reads it only when an order's outcome is unknown, and deletes it once it is applied."""
    if len(DECISION_PREFIX) + len(external_id) <= 250:  # Airflow's longest Variable key
        return DECISION_PREFIX + external_id
    return DECISION_PREFIX + "sha256-" + hashlib.sha256(external_id.encode()).hexdigest()


def outcome_ref(external_id: str, holder: dict[str, Any]) -> str:
    """A short name (8 hex digits) for one send of ``external_id`` whose outcome is unknown, which a person's
    decision must repeat: a decision answers that send and no other. ``holder`` is what tells the sends apart:
    the ledger record's ``claimed_by`` and ``claimed_at`` (every claim of the external_id is another), or
    without a ledger the task instance."""
    text = json.dumps([external_id, holder], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def ledger_ref(external_id: str, entry: dict[str, Any]) -> str:
    return outcome_ref(external_id, {"claimed_by": entry.get("claimed_by"), "claimed_at": entry.get("claimed_at")})


def how_to_decide(external_id: str, ref: str) -> str:
    """What a person does about the send ``ref`` of an order whose outcome is unknown: the error message's last
    sentence. The decision repeats ``ref``: it answers that send and no other."""
    key = decision_key(external_id)
    return (
        f"Check Limio for external_id {external_id}, then set the Airflow Variable {key} to 'send {ref}' (Limio "
        f"does not have it) or 'adopt <order id> {ref}' (it does), e.g. `airflow variables set {key} \"send "
        f'{ref}"` (or `python -m limio_provider.decide {external_id} {ref} send`, which checks Limio first), and '
        "clear this task (docs: production.md, recovery actions)."
    )


def read(hook: LimioHook, log: Logger, external_id: str, partner: str | None, ref: str) -> str | dict[str, Any] | None:
    """A person's decision on the send of order ``external_id`` named ``ref`` (see :func:`decision_key`,
    :func:`outcome_ref`), taken once: ``"send"``, the adopted order's result, or ``None`` when there is none.
    An ``adopt`` is deleted once its order is read and checked (this external_id and partner); a ``send`` by
    the caller, once Limio was looked up again, before sending (:func:`use_up`). One that answers
    another send is refused and left set.

    :raises LimioValidationError: the Variable holds something else, answers another send, or names an
        order with another external_id or partner.
    """
    from airflow.providers.common.compat.sdk import Variable

    from limio_provider.exceptions import LimioValidationError

    key = decision_key(external_id)
    value = Variable.get(key, None)  # positional: Airflow 2 calls the default default_var
    if value is None:
        return None
    words = str(value).split()
    if not (words[:1] == ["send"] and len(words) == 2) and not (words[:1] == ["adopt"] and len(words) == 3):
        raise LimioValidationError(
            f"invalid Variable {key}: expected 'send {ref}' or 'adopt <order id> {ref}' (the send it answers), "
            f"got {str(value)[:100]!r}"
        )
    if words[-1] != ref:
        raise LimioValidationError(
            f"invalid Variable {key}: it answers the send {words[-1]!r} of order {external_id}, not this one "
            f"({ref!r}); not applying it. {how_to_decide(external_id, ref)}"
        )
    if words[0] == "send":  # deleted by the caller once it has looked Limio up, before it sends
        return "send"
    # Checked before the Variable is deleted: a failed read or a wrong order leaves the decision to correct.
    order = hook.get_order(words[1])
    problem = not_this_order(order, external_id, partner)
    if problem is not None:
        raise LimioValidationError(f"invalid Variable {key}: {problem}; not adopting it")
    Variable.delete(key)
    log.warning("Variable %s says Limio has order %s as %s: adopting it (Variable deleted)", key, external_id, order.id)
    return result_of(order)


def use_up(log: Logger, external_id: str, found: dict[str, Any] | None) -> None:
    """Use up a ``send`` decision, Limio having been looked up again: it found ``found`` (then that order is
    taken, not sent again), or nothing (then the order is sent, once: the decision is gone before it is,
    so a send lost again asks again)."""
    from airflow.providers.common.compat.sdk import Variable

    key = decision_key(external_id)
    Variable.delete(key)
    if found is None:
        log.warning("Variable %s says Limio does not have order %s: sending it (Variable deleted)", key, external_id)
    else:
        log.warning(
            "Order %s was decided 'send', but Limio has it now as %s (%s): adopting it, not sending "
            "(Variable %s deleted)",
            external_id,
            found["id"],
            found.get("status"),
            key,
        )
