"""Injected failures for the Limio emulator: what a :class:`Fault` does and which requests it hits."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, fields
from http import HTTPStatus
from typing import Any

#: Route names a fault can target; ``"*"`` targets them all.
ROUTES = frozenset(
    {"token", "order", "admin_order", "preview", "get_order", "list_orders"}
    | {"list_objects", "get_object", "related", "*"}
)

#: What each action does: (process the request first?, how to reply). The replies: ``normal`` (the normal
#: answer), ``status`` (this fault's error answer), ``none`` (close the connection without answering),
#: ``truncate`` (the normal answer's headers, full ``Content-Length``, half its body, then close),
#: ``undecodable`` (the normal answer labelled ``Content-Encoding: gzip``, not gzipped), ``garbage`` (200 with
#: :meth:`Fault.raw_body` as the JSON body), ``trickle`` (the normal answer, its body one byte at a time,
#: ``latency`` seconds apart), ``trickle_head`` (the normal answer, its status line and headers one byte at a
#: time, ``latency`` seconds apart), ``bomb`` (200, ``Content-Encoding: gzip``, a small body that decodes to
#: the normal answer followed by ``size`` bytes of JSON whitespace), ``bad_chunked`` (the normal answer's
#: status and headers as ``Transfer-Encoding: chunked``, then a chunk-size line that is not hex, then close),
#: ``reset`` (a TCP RST, no answer) and ``tls_error`` (:data:`NOT_TLS` written on the raw TCP socket, under
#: any TLS, then close).
#: ``revoke_tokens`` also revokes every token first. ``billing_fails`` ("processed, billing failed") answers an
#: order normally, and the order completes as usual, but its process event says the billing plugin failed (with
#: the fault's ``message``): the failure only the process events show. It hits only :data:`ORDER_ROUTES` (with
#: route ``"*"`` too), so no other request uses up its ``times``.
ACTIONS: dict[str, tuple[bool, str]] = {
    "status": (False, "status"),
    "drop": (False, "none"),
    "process_then_status": (True, "status"),
    "process_then_hang": (True, "none"),
    "process_then_truncate": (True, "truncate"),
    "process_then_undecodable": (True, "undecodable"),
    "process_then_garbage": (True, "garbage"),
    "process_then_reset": (True, "reset"),
    "process_then_tls_error": (True, "tls_error"),
    "process_then_trickle": (True, "trickle"),
    "process_then_trickle_head": (True, "trickle_head"),
    "process_then_gzip_bomb": (True, "bomb"),
    "process_then_bad_chunked": (True, "bad_chunked"),
    "latency_only": (True, "normal"),
    "revoke_tokens": (True, "normal"),
    "billing_fails": (True, "normal"),
}

#: The routes that create an order: the only ones a ``billing_fails`` fault hits.
ORDER_ROUTES = frozenset({"order", "admin_order"})

#: What ``process_then_tls_error`` writes: neither a TLS record nor an HTTP status line.
NOT_TLS = b"\xff\xffnot a TLS record\r\n\r\n"

#: The pause between two bytes of a ``process_then_trickle`` body when the fault sets no ``latency``.
DEFAULT_TRICKLE_SECONDS = 0.1

#: What a ``process_then_gzip_bomb`` answer decodes to, in bytes, when the fault sets no ``size``.
DEFAULT_BOMB_BYTES = 256 * 2**20

#: How long ``process_then_hang`` holds the connection when the fault sets no ``latency``.
DEFAULT_HANG_SECONDS = 30.0

_PHRASES = {status.value: status.phrase for status in HTTPStatus}


@dataclass
class Fault:
    """A failure to inject into the emulator's answers.

    :param route: the route to hit (``token``, ``order``, ``admin_order``, ``preview``, ``get_order``,
        ``list_orders``, ``list_objects``, ``get_object``, ``related``) or ``"*"`` for all of them.
    :param action: ``status`` (answer ``status`` without processing), ``drop`` (close the connection
        without answering, nothing processed), ``process_then_status`` (process, e.g. create the order,
        then answer ``status``), ``process_then_hang`` (process, then hold the connection for ``latency``
        seconds, 30 by default, and close it unanswered), ``process_then_truncate`` (process, then send
        the answer's headers with its full ``Content-Length`` but only half its body, and close),
        ``process_then_undecodable`` (process, then answer labelled ``Content-Encoding: gzip`` with a body
        that is not gzip), ``process_then_garbage`` (process, then answer 200 with ``body`` instead of the
        order), ``process_then_reset`` (process, then reset the connection: TCP RST, no answer),
        ``process_then_tls_error`` (process, then write bytes that are not TLS on the raw socket and close;
        meant for a ``tls=True`` emulator), ``process_then_trickle`` (process, then send the answer's headers
        at once and its body one byte every ``latency`` seconds, 0.1 by default: each read of a client
        comes back within its read timeout, the whole answer takes minutes), ``process_then_trickle_head``
        (process, then send the status line and headers one byte every ``latency`` seconds, 0.1 by default,
        then the body), ``process_then_gzip_bomb`` (process, then answer 200 with ``Content-Encoding: gzip``
        and a body of a few hundred KB that decodes to the order followed by ``size`` bytes of whitespace,
        256 MiB by default: valid JSON, for a client that reads it all), ``latency_only`` (answer
        normally, late), ``revoke_tokens`` (revoke every token, then answer normally: 401 on ``/api``
        routes) or ``billing_fails`` (emulator behaviour, after what Limio documents can happen: on ``order``
        and ``admin_order`` only, also when ``route`` is ``"*"``: processed and answered normally, the order
        completes, but its process event is ``failed`` with ``pluginErrorOutput`` naming the ``zuora`` plugin
        and ``message``, by default a payment gateway timeout).
    :param status: the HTTP status of ``status``/``process_then_status`` answers (default 502), 3xx too.
    :param retry_after: sent as the ``Retry-After`` header of those answers.
    :param latency: seconds waited (really) after processing and before answering (with
        ``process_then_trickle``: between two bytes of the body; ``process_then_trickle_head``: of the head).
    :param times: hit only the next ``times`` matching requests; ``None`` for no limit.
    :param probability: chance (0..1) that a matching request is hit, drawn from a generator seeded
        with ``seed``.
    :param external_id: hit only requests whose JSON body has this ``external_id``.
    :param message: the ``message`` of the error body (default: the status's reason phrase).
    :param location: sent as the ``Location`` header of ``status``/``process_then_status`` answers, e.g.
        with a 307 to another host.
    :param body: what ``process_then_garbage`` sends: a string verbatim, anything else as its JSON
        (default ``{}``).
    :param size: with ``process_then_gzip_bomb``: the bytes of whitespace after the answer, decoded.
    """

    route: str = "*"
    action: str = "status"
    status: int = 502
    retry_after: float | str | None = None
    latency: float | None = None
    times: int | None = None
    probability: float = 1.0
    seed: int | None = None
    external_id: str | None = None
    message: str | None = None
    location: str | None = None
    body: Any = None
    size: int | None = None
    _random: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        checks = {
            f"route must be one of {sorted(ROUTES)}": self.route in ROUTES,
            f"action must be one of {sorted(ACTIONS)}": self.action in ACTIONS,
            "status must be an HTTP status (100-599)": _is_number(self.status, int, 100, 599),
            "probability must be between 0 and 1": _is_number(self.probability, float, 0, 1),
            "times must be None or >= 0": self.times is None or _is_number(self.times, int, 0),
            "latency must be None or >= 0": self.latency is None or _is_number(self.latency, float, 0),
            "location must be None or a one-line string": self.location is None or _is_header(self.location),
            "body must be a string or JSON-serialisable": _is_json(self.body),
            "size must be None or >= 0": self.size is None or _is_number(self.size, int, 0),
            "billing_fails targets order, admin_order or *": self.action != "billing_fails"
            or self.route in ORDER_ROUTES | {"*"},
        }
        problems = [problem for problem, ok in checks.items() if not ok]
        if problems:
            raise ValueError("invalid fault: " + "; ".join(problems))
        self._random = random.Random(self.seed)

    @classmethod
    def from_dict(cls, spec: Any) -> Fault:
        """Build a fault from its JSON spec (the dataclass's fields); raises ``ValueError`` if malformed."""
        if not isinstance(spec, dict):
            raise ValueError("invalid fault: expected a JSON object")
        unknown = set(spec) - set(cls.field_names())
        if unknown:
            raise ValueError(f"invalid fault: unknown fields {sorted(unknown)}; known: {cls.field_names()}")
        return cls(**spec)

    @classmethod
    def field_names(cls) -> list[str]:
        """The fields of a fault spec."""
        return [f.name for f in fields(cls) if f.init]

    def to_dict(self) -> dict[str, Any]:
        """The JSON spec of this fault."""
        return {name: getattr(self, name) for name in self.field_names()}

    @property
    def processes(self) -> bool:
        """Whether the request is processed (e.g. the order created) despite the fault."""
        return ACTIONS[self.action][0]

    @property
    def reply(self) -> str:
        """How the emulator replies: one of the replies listed above :data:`ACTIONS`."""
        return ACTIONS[self.action][1]

    @property
    def wait_seconds(self) -> float:
        """How long to wait before answering (or, for ``process_then_hang``, before closing)."""
        if self.action in ("process_then_trickle", "process_then_trickle_head"):
            return 0.0  # its latency spaces the answer's bytes
        if self.latency is None:
            return DEFAULT_HANG_SECONDS if self.action == "process_then_hang" else 0.0
        return float(self.latency)

    @property
    def trickle_seconds(self) -> float:
        """With ``process_then_trickle`` (``_head``): the pause between two bytes of the body (the head)."""
        return DEFAULT_TRICKLE_SECONDS if self.latency is None else float(self.latency)

    @property
    def bomb_bytes(self) -> int:
        """With ``process_then_gzip_bomb``: the bytes of whitespace the answer decodes to after the order."""
        return DEFAULT_BOMB_BYTES if self.size is None else self.size

    def error(self) -> tuple[int, dict[str, Any], dict[str, str]]:
        """The answer of a ``status`` reply: status, ``{"message": ...}`` body and headers."""
        headers = {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}
        if self.location is not None:
            headers["Location"] = self.location
        return self.status, {"message": self.message or _PHRASES.get(self.status, "Injected fault")}, headers

    def raw_body(self) -> bytes:
        """The body of a ``garbage`` reply: ``body`` itself if a string, else its JSON (``{}`` if ``None``)."""
        body = {} if self.body is None else self.body
        return (body if isinstance(body, str) else json.dumps(body)).encode()

    def matches(self, route: str, body: Any) -> bool:
        """Whether this fault hits a request to ``route`` with ``body`` (draws a random number only when
        everything else matches, so a seeded fault is reproducible)."""
        if self.times == 0 or self.route not in ("*", route):
            return False
        if self.action == "billing_fails" and route not in ORDER_ROUTES:
            return False
        sent_id = body.get("external_id") if isinstance(body, dict) else None
        if self.external_id is not None and sent_id != self.external_id:
            return False
        return self.probability >= 1 or self._random.random() < self.probability


def take_fault(faults: list[Fault], route: str, body: Any) -> Fault | None:
    """The first fault in ``faults`` that hits this request, with one of its ``times`` used up.

    Not thread-safe on its own: the emulator calls it under its lock.
    """
    for fault in faults:
        if fault.matches(route, body):
            if fault.times is not None:
                fault.times -= 1
            return fault
    return None


def _is_number(value: Any, kind: type, low: float, high: float = float("inf")) -> bool:
    """Whether ``value`` is a number of ``kind`` (an ``int`` also counts as a ``float``; a bool never does)
    between ``low`` and ``high``."""
    kinds = (int, float) if kind is float else (int,)
    return isinstance(value, kinds) and not isinstance(value, bool) and low <= value <= high


def _is_header(value: Any) -> bool:
    """Whether ``value`` can be sent as an HTTP header value."""
    return isinstance(value, str) and "\r" not in value and "\n" not in value


def _is_json(value: Any) -> bool:
    """Whether ``value`` is a string or serialises to JSON."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
