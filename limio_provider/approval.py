"""A person's approval before a batch sends (Airflow 3.1+), through Airflow's own human-in-the-loop requests.

The batch's preview pass is summarised in Markdown and put to a person in Airflow's "Required Actions" (or
through its REST API), with two answers: :data:`APPROVE` and :data:`REJECT`. Nobody answering within the
timeout counts as a rejection. The approval names the orders it answers (a digest of them): if they change
before the task resumes, nothing is sent.

Imported only when a task runs: this module imports nothing of Airflow's at import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import BaseOperator, Context

#: The answer that sends the orders.
APPROVE = "Send"
#: The answer that sends nothing; also what a timeout gives.
REJECT = "Reject"


@dataclass(frozen=True)
class LimioApproval:
    """When a batch asks a person before sending, and for how long.

    :param below_orders: ask no one when fewer than this many orders would be sent (and the total is below
        ``below_total_due``, if given). ``None``: no threshold on the number.
    :param below_total_due: ask no one when the previewed total due is less than this (and the number is
        below ``below_orders``, if given). ``None``: no threshold on the total. With neither, always ask.
    :param timeout: how long a person has to answer; no answer in time is a rejection. Default one day.
    :param assigned_users: who may answer, as Airflow users (``{"id": ..., "name": ...}``); default: anyone
        allowed to answer the task's required actions.
    """

    below_orders: int | None = None
    below_total_due: Decimal | float | str | None = None
    timeout: timedelta = timedelta(days=1)
    assigned_users: tuple[dict[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.below_orders is not None and (
            not isinstance(self.below_orders, int) or isinstance(self.below_orders, bool) or self.below_orders < 0
        ):
            raise ValueError(f"below_orders must be a whole number >= 0, got {self.below_orders!r}")
        if self.below_total_due is not None:
            try:
                due = Decimal(str(self.below_total_due))
            except ArithmeticError:
                due = Decimal("NaN")
            if not due.is_finite() or due < 0:
                raise ValueError(f"below_total_due must be an amount >= 0, got {self.below_total_due!r}")
        if not isinstance(self.timeout, timedelta) or self.timeout <= timedelta(0):
            raise ValueError(f"timeout must be a positive timedelta, got {self.timeout!r}")

    def asks(self, orders: int, total_due: Decimal) -> bool:
        """Whether ``orders`` orders coming to ``total_due`` need a person's approval."""
        if self.below_orders is None and self.below_total_due is None:
            return True
        few = self.below_orders is None or orders < self.below_orders
        small = self.below_total_due is None or total_due < Decimal(str(self.below_total_due))
        return not (few and small)


def require_hitl() -> None:
    """:raises LimioConfigError: this Airflow has no human-in-the-loop requests (older than 3.1)."""
    import importlib.util

    from limio_provider.exceptions import LimioConfigError

    try:
        found = importlib.util.find_spec("airflow.sdk.execution_time.hitl") is not None
    except ModuleNotFoundError:  # Airflow 2: no airflow.sdk at all
        found = False
    if not found:
        raise LimioConfigError(
            "approval needs Airflow 3.1 or later (human-in-the-loop requests); nothing was sent. On older Airflow "
            "run the batch with dry_run=True, review its results, then trigger the real run (docs: guard-rails.md)"
        )


def ask(
    operator: BaseOperator,
    context: Context,
    approval: LimioApproval,
    *,
    subject: str,
    body: str,
    method_name: str,
    kwargs: dict[str, Any],
    options: list[str] | None = None,
    default: str = REJECT,
    params: dict[str, str] | None = None,
) -> NoReturn:
    """Put ``subject`` and ``body`` (Markdown) to a person as this task instance's human-in-the-loop request,
    and wait: the task resumes in ``operator.<method_name>(context, event, **kwargs)`` once they answer or the
    timeout passes (``event["chosen_options"]`` is then ``[default]``). ``options`` default to
    ``[APPROVE, REJECT]``; ``params`` are text fields (name: description) the person may fill in. Airflow 3.3
    parks the task awaiting input; 3.1 and 3.2 defer it to Airflow's ``HITLTrigger`` (a triggerer must run).

    :raises LimioConfigError: Airflow older than 3.1 (no human-in-the-loop requests).
    """
    require_hitl()  # before the imports, which would fail without saying why
    from airflow.providers.common.compat.sdk import timezone
    from airflow.sdk.execution_time.hitl import upsert_hitl_detail

    options, defaults = options or [APPROVE, REJECT], [default]
    fields = {name: _text_param(description) for name, description in (params or {}).items()}
    upsert_hitl_detail(
        ti_id=context["task_instance"].id,
        options=options,
        subject=subject,
        body=body,
        defaults=defaults,
        multiple=False,
        params=fields,
        assigned_users=[dict(user) for user in approval.assigned_users] or None,  # type: ignore[misc]
    )
    operator.log.info("Waiting up to %s for a person's answer: %s", approval.timeout, subject)
    try:
        from airflow.sdk.exceptions import TaskAwaitingInput  # Airflow 3.3: no trigger, no triggerer
    except ImportError:
        from airflow.providers.standard.triggers.hitl import HITLTrigger

        operator.defer(
            trigger=HITLTrigger(
                ti_id=context["task_instance"].id,
                options=options,
                defaults=defaults,
                params=fields,
                multiple=False,
                timeout_datetime=timezone.utcnow() + approval.timeout,
            ),
            method_name=method_name,
            kwargs=kwargs,
        )
    raise TaskAwaitingInput(method_name=method_name, kwargs=kwargs, timeout=approval.timeout)


def check_approved(approved: dict[str, Any], digest: str, what: str) -> str:
    """That what is about to be sent (its ``digest``) is what ``approved`` (``{"digest", "answer"}``, from the
    resumed task) answered; the answer, in words.

    :raises LimioApprovalError: ``what`` changed after it was approved; nothing was sent.
    """
    from limio_provider.exceptions import LimioApprovalError

    if approved.get("digest") != digest:
        raise LimioApprovalError(
            f"{what} changed after {'it was' if what.startswith('order ') else 'they were'} approved "
            f"({approved.get('answer')}; digest {approved.get('digest')}, now {digest}): nothing was sent. Clear the "
            "task to ask again"
        )
    return str(approved.get("answer"))


def _text_param(description: str) -> dict[str, Any]:
    """A text field of a human-in-the-loop request, as Airflow serialises a ``Param``."""
    from airflow.sdk.definitions.param import Param

    return Param("", type="string", description=description).serialize()


def answer_of(event: dict[str, Any], approval: LimioApproval) -> tuple[bool, str]:
    """Whether ``event`` (what the task resumed with) approves, and who answered what, in words."""
    chosen = event.get("chosen_options") or []
    user = event.get("responded_by_user") or {}
    name = user.get("name") or user.get("id") if isinstance(user, dict) else None
    if "error" in event:
        return False, f"the approval request failed ({event.get('error_type')}: {str(event.get('error'))[:200]})"
    if chosen == [APPROVE] and name:
        return True, f"approved by {name}"
    if chosen == [APPROVE]:
        return True, "approved"
    if name:
        return False, f"rejected by {name}"
    return False, f"not approved within {approval.timeout} (no answer counts as a rejection)"
