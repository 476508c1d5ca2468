"""``python -m limio_provider.decide``: record a person's decision on an order whose outcome is unknown, after
checking it against Limio (where ``airflow variables set`` would record anything).

``send`` is recorded only if Limio holds no order with the external_id (for the partner) among the newest it
can search; ``adopt <order id>`` only if that order carries the external_id and the partner. The decision is
the Variable the task's error names, with the name of the send it answers (the error gives it too)::

    python -m limio_provider.decide renew-sub-1001-2026-01-01 5c1e07a2 send
    python -m limio_provider.decide renew-sub-1001-2026-01-01 5c1e07a2 adopt order-4dd1... --partner partner-org-1

Then clear the task. Exit status: 0 recorded, 1 refused (nothing recorded: the message says why), 2 bad usage.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

from limio_provider.exceptions import LimioError

REF = re.compile(r"[0-9a-f]{8}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m limio_provider.decide",
        description="Check a decision on an order whose outcome is unknown against Limio, then record it.",
    )
    parser.add_argument("external_id", help="the order's external_id, as the error names it")
    parser.add_argument("ref", help="the name of the send the decision answers (8 hex digits the error gives)")
    parser.add_argument("decision", choices=["send", "adopt"], help="send: Limio does not have it; adopt: it does")
    parser.add_argument("order_id", nargs="?", help="with adopt: the order Limio holds")
    parser.add_argument("--partner", help="the partner organisation id of an admin order (none for /order)")
    parser.add_argument("--conn-id", default="limio_default", help="the Limio connection (default limio_default)")
    parser.add_argument("--pages", type=int, default=5, help="pages of 100 newest orders searched (default 5)")
    return parser


def check(
    external_id: str, decision: str, order_id: str | None, partner: str | None, conn_id: str, pages: int
) -> str | None:
    """Why Limio contradicts the decision, or ``None`` if it does not."""
    from limio_provider.exactly_once.matching import not_this_order, orders_for
    from limio_provider.hooks.limio import LimioHook

    hook = LimioHook(conn_id)
    try:
        if decision == "send":
            ours, _ = orders_for(hook, external_id, partner, max_pages=pages)
            if ours:
                shown = ", ".join(f"{order.id} ({order.status})" for order in ours)
                return f"Limio holds {shown} with external_id {external_id}: adopt it instead of sending again"
            return None
        return not_this_order(hook.get_order(str(order_id)), external_id, partner)
    finally:
        hook.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not REF.fullmatch(args.ref):
        parser.error(f"ref must be the 8 hex digits the error gives, got {args.ref!r}")
    if (args.decision == "adopt") != (args.order_id is not None):
        parser.error("adopt takes the order id; send takes none")
    from limio_provider.exactly_once.decisions import decision_key

    try:
        problem = check(args.external_id, args.decision, args.order_id, args.partner, args.conn_id, args.pages)
    except LimioError as exc:
        print(f"Not recorded: Limio could not be asked: {exc}", file=sys.stderr)
        return 1
    if problem is not None:
        print(f"Not recorded: {problem}", file=sys.stderr)
        return 1
    from airflow.models.variable import Variable

    key = decision_key(args.external_id)
    value = " ".join(filter(None, [args.decision, args.order_id, args.ref]))
    Variable.set(key, value)
    searched = "" if args.decision == "adopt" else f" (not among the {100 * args.pages} newest orders)"
    print(f"Recorded {key} = {value!r}{searched}; now clear the task")
    return 0


if __name__ == "__main__":
    sys.exit(main())
