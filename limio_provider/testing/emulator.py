"""A local Limio Orders API: an in-memory tenant served over real HTTP, for tests and demos.

It follows what Limio documents for its OAuth, Orders and Objects APIs. Where Limio is silent, the
behaviour is the emulator's own choice, and its docstring says "emulator behaviour".
"""

from __future__ import annotations

import base64
import binascii
import calendar
import copy
import functools
import hashlib
import html
import ipaddress
import json
import math
import random
import re
import secrets
import shutil
import socket
import ssl
import string
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote_plus, urlsplit

from limio_provider.models.orders import (
    AddOfferOrder,
    CancelSubscriptionOrder,
    ChangeOfferOrder,
    ForSubscription,
    NewOrder,
    OrderBase,
    RenewOrder,
    parse_order,
    parse_partner,
)
from limio_provider.models.results import OrderResult
from limio_provider.testing.faults import NOT_TLS, Fault, take_fault
from limio_provider.testing.objects import BILLING_FAILURE, RECORD_TYPES, ObjectStore

#: An HTTP answer: status, JSON body (or bytes, sent as they are, with the JSON content type) and extra headers.
Answer = tuple[int, dict[str, Any] | bytes, dict[str, str]]


class CatalogueOffer(NamedTuple):
    """An offer the emulator can price: name, unit price, currency and billing period in months."""

    name: str
    price: Decimal
    currency: str
    period_months: int


#: The emulator's default catalogue, by ``offer.id`` (emulator behaviour: a real tenant prices its own offers).
CATALOGUE: dict[str, CatalogueOffer] = {
    "offer-digital-monthly": CatalogueOffer("Digital Monthly", Decimal("19.99"), "GBP", 1),
    "offer-digital-annual": CatalogueOffer("Digital Annual", Decimal("199.00"), "GBP", 12),
    "offer-print-digital-monthly": CatalogueOffer("Print + Digital Monthly", Decimal("29.99"), "GBP", 1),
    "offer-digital-monthly-us": CatalogueOffer("Digital Monthly (US)", Decimal("24.99"), "USD", 1),
}

#: The partner organisations the emulator knows by default (``forPartner`` on ``/admin/order``): those of the
#: docs and examples.
PARTNERS: tuple[str, ...] = ("partner-org-1", "partner-org-newsagents")

_CENT = Decimal("0.01")
_ADMIN_ORDER_400 = "Invalid partner organisation or malformed order payload"  # Limio's documented 400
_REFERENCE_ALPHABET = string.ascii_uppercase + string.digits
_references = random.Random()
_RESULT_FIELDS = tuple(OrderResult.model_fields)
_SUMMARY_FIELDS = ("id", "status", "order_type", "external_id", "created", "updated", "order_reference")
_OBJECTS = "|".join(RECORD_TYPES)  # the object types besides orders (testing/objects.py)
_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (method, re.compile(pattern), name)
    for method, pattern, name in (
        ("POST", r"/oauth2/token", "token"),
        ("POST", r"/api/order", "order"),
        ("POST", r"/api/admin/order", "admin_order"),
        ("POST", r"/api/order/preview", "preview"),
        ("GET", r"/api/objects/limio/orders", "list_orders"),
        ("GET", r"/api/objects/limio/orders/(?P<order_id>[^/]+)", "get_order"),
        ("GET", rf"/api/objects/limio/(?P<object_type>{_OBJECTS})", "list_objects"),
        ("GET", rf"/api/objects/limio/(?P<object_type>{_OBJECTS})/(?P<object_id>[^/]+)", "get_object"),
        ("GET", rf"/api/objects/limio/(?P<object_type>orders|{_OBJECTS})/(?P<object_id>[^/]+)/related", "related"),
        ("POST", r"/_emulator/faults", "add_fault"),
        ("DELETE", r"/_emulator/faults", "clear_faults"),
        ("POST", r"/_emulator/revoke-tokens", "revoke_tokens"),
        ("POST", r"/_emulator/reset", "reset"),
        ("POST", r"/_emulator/rate-limit", "rate_limit"),
        ("GET", r"/_emulator/requests", "list_requests"),
        ("GET", r"/_emulator/orders/(?P<order_id>[^/]+)", "order_page"),
    )
)


@dataclass
class RecordedRequest:
    """A request the emulator received. ``status`` is what it answered, ``None`` if it answered nothing
    (dropped or hung); ``received_at`` is the emulator clock (see :meth:`LimioEmulator.advance`)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    status: int | None
    received_at: float


@dataclass
class _Request:
    """What a route handler sees of a request."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    body: Any
    body_error: str | None
    route: str | None
    params: dict[str, str]
    allowed: list[str]
    billing_failure: str | None = None  # a "billing_fails" fault's message: the order's billing plugin fails


class HttpError(Exception):
    """An error answer, raised from a route handler."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, **fields: Any) -> None:
        super().__init__(message)
        self.answer: Answer = (status, {**fields, "message": message}, headers or {})


class LimioEmulator:
    """An in-memory Limio tenant behind a real HTTP(S) server (``ThreadingHTTPServer``, HTTP/1.1 keep-alive).

    Use it as a context manager (or :meth:`start`/:meth:`stop`), point the Limio connection at
    :meth:`connection_json`, and inspect :attr:`orders` and :attr:`requests`. All state sits behind one
    lock, so tests may read it while requests are served.

    :param processing_delay: emulator-clock seconds an order without ``process_immediately`` stays
        ``submitted`` before it completes (or fails).
    :param decline_payment_refs: payment ``refId`` s (or payment ``type`` s) whose orders fail.
    :param clock: the emulator's time source; :meth:`advance` moves it forward.
    :param tls: serve HTTPS with a self-signed certificate made on :meth:`start` (needs ``cryptography``)
        and removed on :meth:`stop`; :attr:`ca_path` is its file, which :meth:`connection_json` trusts.
    :param admin_client_id: the management client, the only one ``/admin/order`` accepts (with its
        ``admin_client_secret``); :meth:`connection_json` ``(admin=True)`` uses it.
    :param catalogue: the offers it knows, by ``offer.id`` (``CatalogueOffer`` s or their fields as a dict;
        :func:`load_catalogue` reads a JSON file); default :data:`CATALOGUE`. An order for another offer is
        refused.
    :param partners: the partner organisation ids ``forPartner`` may name; default :data:`PARTNERS`.
    :param lenient: accept what Limio documents it refuses: ``/admin/order`` with any client's token, offers
        outside the catalogue (priced from their id) and any partner: the emulator as it was before it was strict.
    :param rate_limit: the tenant's API requests per second (:meth:`set_rate_limit`); ``None``: no limit.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        client_id: str = "emulator-client",
        client_secret: str = "emulator-secret",
        token_ttl: float = 3600.0,
        processing_delay: float = 0.0,
        decline_payment_refs: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
        tls: bool = False,
        admin_client_id: str = "emulator-admin",
        admin_client_secret: str = "emulator-admin-secret",
        catalogue: Mapping[str, CatalogueOffer | Mapping[str, Any]] | None = None,
        partners: Iterable[str] = PARTNERS,
        lenient: bool = False,
        rate_limit: float | None = None,
    ) -> None:
        if admin_client_id == client_id:
            raise ValueError("admin_client_id must differ from client_id: management credentials are their own client")
        self.host, self.port = host, port
        self.client_id, self.client_secret = client_id, client_secret
        self.admin_client_id, self.admin_client_secret = admin_client_id, admin_client_secret
        self.catalogue: dict[str, CatalogueOffer] = {
            offer_id: _catalogue_offer(offer_id, offer)
            for offer_id, offer in (CATALOGUE if catalogue is None else catalogue).items()
        }
        self.partners = frozenset(partners)
        self.lenient = lenient
        self.token_ttl, self.processing_delay = token_ttl, processing_delay
        self.decline_payment_refs = frozenset(decline_payment_refs)
        self.tls = tls
        self._tls_dir: str | None = None
        self._clock, self._skew = clock, 0.0
        self._wall_origin, self._clock_origin = time.time(), clock()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._tokens: dict[str, tuple[float, bool]] = {}  # token -> (expiry on the emulator clock, admin client)
        self._orders: dict[str, dict[str, Any]] = {}  # oldest first
        self._order_ids: list[str] = []  # the same ids, oldest first: a page is a slice of it
        # id -> (ready at, final status, reason, billing plugin failure)
        self._pending: dict[str, tuple[float, str, str | None, str | None]] = {}
        self._objects = ObjectStore()  # the events, process events, customers and subscriptions orders make
        self._requests: list[RecordedRequest] = []
        self._faults: list[Fault] = []
        self._limit: _RateLimit | None = None
        if rate_limit is not None:
            self.set_rate_limit(rate_limit)

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> LimioEmulator:
        """Bind the port and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("the Limio emulator is already running")
        self._stopping.clear()
        try:
            self._server = _Server((self.host, self.port), self, self._tls_context() if self.tls else None)
        except BaseException:
            self._remove_certificate()
            raise
        serve = self._server.serve_forever
        self._thread = threading.Thread(target=serve, args=(0.01,), name="limio-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection, hung ones included. Safe to call twice."""
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is None or thread is None:
            return
        self._stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        thread.join()
        self._remove_certificate()

    def _tls_context(self) -> ssl.SSLContext:
        """A server context with a fresh self-signed certificate, written to a new temporary directory."""
        self._tls_dir = tempfile.mkdtemp(prefix="limio-emulator-tls-")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*_self_signed_certificate(self._tls_dir, self.host))
        return context

    def _remove_certificate(self) -> None:
        """Delete the TLS certificate's directory, if any."""
        directory, self._tls_dir = self._tls_dir, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def __enter__(self) -> LimioEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:8080`` (``https://`` with ``tls``; the API is under ``/api``)."""
        if self._server is None:
            raise RuntimeError("the Limio emulator is not running; call start() first")
        host, port = self._server.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    @property
    def ca_path(self) -> str | None:
        """The running TLS emulator's self-signed certificate (PEM), to trust as a CA bundle; else ``None``."""
        return None if self._tls_dir is None else f"{self._tls_dir}/cert.pem"

    def connection_json(self, admin: bool = False) -> str:
        """The Airflow connection to this emulator, as the JSON of an ``AIRFLOW_CONN_...`` variable: its client,
        or with ``admin`` its management client (for ``/admin/order``). With ``tls``, its ``verify`` extra
        trusts :attr:`ca_path`."""
        connection: dict[str, Any] = {
            "conn_type": "limio",
            "host": self.url,
            "login": self.admin_client_id if admin else self.client_id,
            "password": self.admin_client_secret if admin else self.client_secret,
            # The emulator's own order page (Limio's API URL needs a token a browser lacks).
            # A test tenant: a large batch needs no confirm_production.
            "extra": {
                "order_link_template": f"{self.url}/_emulator/orders/{{order_id}}",
                "environment": "sandbox",
            },
        }
        if self.ca_path is not None:
            connection["extra"]["verify"] = self.ca_path
        return json.dumps(connection)

    def connection_env(
        self, conn_id: str = "limio_default", admin_conn_id: str | None = "limio_admin"
    ) -> dict[str, str]:
        """The environment variables defining ``conn_id`` as this emulator and ``admin_conn_id`` (unless
        ``None``) as its management client, e.g. ``{"AIRFLOW_CONN_LIMIO_DEFAULT": "{...}",
        "AIRFLOW_CONN_LIMIO_ADMIN": "{...}"}``."""
        env = {f"AIRFLOW_CONN_{conn_id.upper()}": self.connection_json()}
        if admin_conn_id is not None:
            env[f"AIRFLOW_CONN_{admin_conn_id.upper()}"] = self.connection_json(admin=True)
        return env

    # -- state, for tests --------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (``Authorization`` and ``client_secret`` redacted)."""
        with self._lock:
            return list(self._requests)

    @property
    def orders(self) -> dict[str, dict[str, Any]]:
        """A copy of the stored orders by id, oldest first, with their current status."""
        with self._lock:
            self._settle()
            return copy.deepcopy(self._orders)

    @property
    def valid_tokens(self) -> list[str]:
        """The access tokens issued and not revoked, oldest first (a test checks that they reach no log)."""
        with self._lock:
            return list(self._tokens)

    def orders_with_external_id(self, external_id: str) -> list[dict[str, Any]]:
        """The stored orders carrying ``external_id``, oldest first (Limio itself offers no such query)."""
        return [order for order in self.orders.values() if order.get("external_id") == external_id]

    def add_fault(self, fault: Fault) -> Fault:
        """Inject ``fault``; faults are tried in the order they were added, the first hit wins."""
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove every fault."""
        with self._lock:
            self._faults.clear()

    def set_rate_limit(self, per_second: float | None, burst: float | None = None, retry_after: bool = True) -> None:
        """Limit the tenant's API (every ``/api`` request, not the token endpoint) to ``per_second`` requests a
        second, a token bucket holding ``burst`` (default: one second's worth): a request beyond it is answered
        429 and not processed, with ``Retry-After`` (whole seconds until the bucket has a request again) if
        ``retry_after``. ``None`` lifts the limit. Emulator behaviour: Limio documents no rate limit."""
        if per_second is None:
            with self._lock:
                self._limit = None
            return
        if not (isinstance(per_second, int | float) and per_second > 0):
            raise ValueError(f"per_second must be a positive number, got {per_second!r}")
        if burst is not None and not (isinstance(burst, int | float) and burst >= 1):
            raise ValueError(f"burst must be a number >= 1, got {burst!r}")
        with self._lock:
            self._limit = _RateLimit(float(per_second), float(burst or max(1.0, per_second)), bool(retry_after))

    def revoke_tokens(self) -> None:
        """Revoke every token issued so far: requests carrying one now get 401."""
        with self._lock:
            self._tokens.clear()

    def advance(self, seconds: float) -> None:
        """Move the emulator clock forward (token expiry, order processing, timestamps)."""
        if seconds < 0:
            raise ValueError("the emulator clock only moves forward")
        with self._lock:
            self._skew += seconds

    def reset(self) -> None:
        """Forget every order, object, request, fault and token, and lift the rate limit."""
        with self._lock:
            self._limit = None
            for state in (self._orders, self._order_ids, self._pending, self._requests, self._faults, self._tokens):
                state.clear()
            self._objects.clear()

    # -- request handling --------------------------------------------------------------------------

    def _serve(self, http: _Handler) -> None:
        """Answer one request: record it, apply the first matching fault, process it and reply."""
        url = urlsplit(http.path)
        headers = dict(http.headers.items())
        lower = {name.lower(): value for name, value in headers.items()}
        raw = http.rfile.read(int(lower.get("content-length") or 0))
        control = url.path.startswith("/_emulator/")  # the emulator's own routes: JSON whatever the type
        body, body_error = _parse_body(raw, "application/json" if control else lower.get("content-type", ""))
        route, params, allowed = _route(http.command, url.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        request = _Request(http.command, url.path, query, lower, body, body_error, route, params, allowed)
        if control:  # not recorded, never faulted
            http.reply(self._process(request))
            return
        headers = {name: "REDACTED" if name.lower() == "authorization" else v for name, v in headers.items()}
        record = RecordedRequest(http.command, url.path, query, headers, _redacted(body), None, self._now())
        with self._lock:
            self._requests.append(record)
            limited = self._limit is not None and url.path.startswith("/api/") and self._limit.refuses()
            fault = take_fault(self._faults, route, body) if route and not limited else None
        if limited:
            assert self._limit is not None
            record.status = 429
            http.reply(self._limit.answer())
            return
        if fault is not None and fault.action == "revoke_tokens":
            self.revoke_tokens()
        if fault is not None and fault.action == "billing_fails":
            request.billing_failure = fault.message or BILLING_FAILURE
        answer: Answer | None = self._process(request) if fault is None or fault.processes else None
        how = "normal" if fault is None else fault.reply
        if fault is not None:
            if fault.wait_seconds:
                self._stopping.wait(fault.wait_seconds)
            if how == "status":
                answer = fault.error()
            elif how == "garbage":
                answer = (200, fault.raw_body(), {})
            elif how in ("none", "reset", "tls_error"):
                answer = None
        record.status = None if answer is None else answer[0]
        if how == "bomb" and answer is not None and fault is not None:
            answer = (answer[0], _gzip_bomb(answer[1], fault.bomb_bytes), {**answer[2], "Content-Encoding": "gzip"})
        http.reply(answer, how, pause=fault.trickle_seconds if fault is not None else 0.0)

    def _process(self, request: _Request) -> Answer:
        """Route, authorise and handle a request; every error becomes a ``{"message": ...}`` answer."""
        try:
            if request.route is None:
                if request.allowed:
                    raise HttpError(405, "Method not allowed", {"Allow": ", ".join(request.allowed)})
                raise HttpError(404, "Not found")
            if request.path.startswith("/api/"):
                admin = self._authorise(request)
                if request.route == "admin_order" and not admin and not self.lenient:
                    raise HttpError(403, "Forbidden: /admin/order needs management credentials")
            handler: Callable[[_Request], Answer] = getattr(self, f"_on_{request.route}")
            return handler(request)
        except HttpError as error:
            return error.answer
        except Exception as error:  # a bug in the emulator: say so rather than drop the connection
            return 500, {"message": f"Limio emulator error: {error!r}"}, {}

    def _authorise(self, request: _Request) -> bool:
        """Accept only a current ``Bearer`` token; whether it is the management client's."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        with self._lock:
            expiry, admin = self._tokens.get(token.strip(), (None, False))
        if scheme.lower() != "bearer" or expiry is None or self._now() >= expiry:
            raise HttpError(401, "Unauthorized", {"WWW-Authenticate": "Bearer"})
        return admin

    def _on_token(self, request: _Request) -> Answer:
        """``POST /oauth2/token``: client credentials in the form body or as HTTP Basic."""
        form = request.body if isinstance(request.body, dict) else {}
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            client_id, _, client_secret = (unquote_plus(part) for part in decoded.partition(":"))
        clients: dict[tuple[Any, Any], bool] = {
            (self.client_id, self.client_secret): False,
            (self.admin_client_id, self.admin_client_secret): True,  # the management client
        }
        admin = clients.get((client_id, client_secret))
        if admin is None:
            raise HttpError(401, "Invalid client credentials", error="invalid_client")
        if form.get("grant_type") != "client_credentials":
            raise HttpError(400, "grant_type must be client_credentials", error="unsupported_grant_type")
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = (self._now() + self.token_ttl, admin)
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": int(self.token_ttl)}, {}

    def _on_order(self, request: _Request) -> Answer:
        """``POST /api/order`` (and ``/api/admin/order``): store the order.

        With ``process_immediately`` the answer carries the final status, else the order stays
        ``submitted`` for ``processing_delay``. It ends ``complete``, or ``failed`` with a ``message`` if
        its payment is declined (emulator behaviour). A repeated ``external_id`` makes a second order:
        Limio documents no idempotency.
        """
        body, order = self._validated(request)
        now = self._now()
        reason = self._decline_reason(body)
        subscription = getattr(order, "forSubscription", None)
        reused = subscription.name if isinstance(subscription, ForSubscription) else None
        stored = {
            **body,
            "id": f"order-{secrets.token_hex(16)}",
            "order_type": order.order_type,
            "external_id": body.get("external_id"),
            "order_reference": _reference(),
            "subscriptionReference": reused or _reference(),
            "owner": f"id-{secrets.token_hex(16)}",
            "status": "submitted",
            "created": (created := self._timestamp(now)),
            "updated": created,
        }
        outcome = ("failed" if reason else "complete", reason, request.billing_failure)
        with self._lock:
            self._orders[stored["id"]] = stored
            self._order_ids.append(stored["id"])
            self._objects.received(stored, created)
            if order.process_immediately:
                self._finish(stored, *outcome, now)
            else:
                self._pending[stored["id"]] = (now + self.processing_delay, *outcome)
            result = {key: stored.get(key) for key in _RESULT_FIELDS}
            if "message" in stored:
                result["message"] = stored["message"]
        return 200, result, {}

    _on_admin_order = _on_order

    def _on_preview(self, request: _Request) -> Answer:
        """``POST /api/order/preview``: a Zuora-shaped price preview; nothing is stored.

        Emulator behaviour: prices come from :data:`CATALOGUE`; ``new`` charges each item times its
        quantity, ``change_offer``/``add_offer`` charge the new offer, ``cancel_subscription`` credits
        one period of the subscription (a credit memo with negative amounts and a zero invoice), ``renew``
        charges one period of it (priced from the subscription id), and other types preview nothing due. One
        invoice per charged line, tax always zero; the period starts on the order's ``effectiveDate``,
        ``cancelDate`` or ``orderDate``, else today.
        """
        _, order = self._validated(request)
        start = _order_date(order) or datetime.fromtimestamp(self._wall(self._now()), UTC).date()
        subscription_number = f"S-{secrets.randbelow(10**9):09d}"
        charges, refunds = _priced_lines(order)
        lines = [_line(self.offer(key), key, quantity, start, subscription_number) for key, quantity in charges]
        credits = [_line(self.offer(key), key, quantity, start, subscription_number, -1) for key, quantity in refunds]
        invoices = [_document(amount, start, "invoiceItems", item) for amount, _, item in lines]
        credit_memos = [_document(amount, start, "creditMemoItems", [item]) for amount, _, item in credits]
        total = str(sum((amount for amount, _, _ in lines), Decimal("0.00")))
        currency = next((currency for _, currency, _ in lines + credits), "GBP")
        status = "cancelled" if isinstance(order, CancelSubscriptionOrder) else "active"
        preview = {
            "success": True,
            "orderNumber": _reference(),
            "orderId": secrets.token_hex(16),
            "accountNumber": f"A-{secrets.randbelow(10**9):09d}",
            "status": "active",
            "subscriptions": [
                {
                    "status": status,
                    "subscriptionId": secrets.token_hex(16),
                    "subscriptionNumber": subscription_number,
                }
            ],
            "previewResult": {
                "invoices": invoices or [_document(Decimal("0.00"), start, "invoiceItems", {})],
                "creditMemos": credit_memos,
            },
        }
        schedule = {
            "date": start.isoformat(),
            "schedule_date": start.isoformat(),
            "type": "Schedule",
            "description": "Schedule",
            "amount": total,
            "taxAmount": 0,
            "amountWithoutTax": total,
            "currency": currency,
            "lineItems": [item for _, _, item in lines],
        }
        return 200, {"preview": preview, "schedule": [schedule]}, {}

    def _on_get_order(self, request: _Request) -> Answer:
        """``GET /api/objects/limio/orders/{id}``: the stored order with its current status."""
        with self._lock:
            self._settle()
            order = self._orders.get(request.params["order_id"])
            if order is None:
                raise HttpError(404, "Not found")
            return 200, dict(order), {}

    def _on_list_orders(self, request: _Request) -> Answer:
        """``GET /api/objects/limio/orders?limit=&queryMore=``: order summaries, newest first.

        Emulator behaviour: the ``queryMore`` cursor marks where the page ended, so orders created while
        paging never shift the pages.
        """
        with self._lock:
            self._settle()
            page, cursor = _page(self._order_ids, request.query)
            items = [{key: self._orders[order_id].get(key) for key in _SUMMARY_FIELDS} for order_id in page]
        return 200, {"items": items, "queryMore": cursor}, {}

    def _on_list_objects(self, request: _Request) -> Answer:
        """``GET /api/objects/limio/{subscriptions|customers|events|process}?limit=&queryMore=``: whole objects,
        newest first, paged as orders are (emulator behaviour)."""
        kind = request.params["object_type"]
        with self._lock:
            self._settle()
            page, cursor = _page(self._objects.ids(kind), request.query)
            items = [self._objects.get(kind, object_id) for object_id in page]
        return 200, {"items": items, "queryMore": cursor}, {}

    def _on_get_object(self, request: _Request) -> Answer:
        """``GET /api/objects/limio/{type}/{id}``: one object."""
        with self._lock:
            self._settle()
            found = self._objects.get(request.params["object_type"], request.params["object_id"])
        if found is None:
            raise HttpError(404, "Not found")
        return 200, found, {}

    def _on_related(self, request: _Request) -> Answer:
        """``GET /api/objects/limio/{type}/{id}/related``: ``{"items": [...]}``, each with its ``record_type``.
        An order's are the objects it made (its events, process events, customer and subscription); another
        object's are its order and that order's other objects (emulator behaviour)."""
        kind, object_id = request.params["object_type"], request.params["object_id"]
        with self._lock:
            self._settle()
            if kind == "orders":
                order_id = object_id if object_id in self._orders else None
            else:
                found = self._objects.get(kind, object_id)
                order_id = found["order"] if found is not None else None
            if order_id is None:
                raise HttpError(404, "Not found")
            items = [obj for obj in self._objects.of_order(order_id) if obj["id"] != object_id]
            if kind != "orders":
                items.insert(0, {**copy.deepcopy(self._orders[order_id]), "record_type": "order"})
        return 200, {"items": items}, {}

    def _on_add_fault(self, request: _Request) -> Answer:
        """``POST /_emulator/faults``: add the fault whose spec is the JSON body."""
        try:
            fault = Fault.from_dict(request.body if request.body_error is None else None)
        except (TypeError, ValueError) as error:
            raise HttpError(400, str(error)) from None
        self.add_fault(fault)
        return 200, {"fault": fault.to_dict()}, {}

    def _on_clear_faults(self, request: _Request) -> Answer:
        """``DELETE /_emulator/faults``."""
        self.clear_faults()
        return 200, {"message": "Faults cleared"}, {}

    def _on_revoke_tokens(self, request: _Request) -> Answer:
        """``POST /_emulator/revoke-tokens``."""
        self.revoke_tokens()
        return 200, {"message": "Tokens revoked"}, {}

    def _on_reset(self, request: _Request) -> Answer:
        """``POST /_emulator/reset``."""
        self.reset()
        return 200, {"message": "Emulator reset"}, {}

    def _on_rate_limit(self, request: _Request) -> Answer:
        """``POST /_emulator/rate-limit``: ``{"per_second": 100, "burst": 100, "retry_after": true}``
        (:meth:`set_rate_limit`); ``{"per_second": null}`` lifts it."""
        spec = request.body if isinstance(request.body, dict) else {}
        unknown = sorted(set(spec) - {"per_second", "burst", "retry_after"})
        if unknown or "per_second" not in spec:
            raise HttpError(400, f"expected {{per_second, burst, retry_after}}, got {sorted(spec)}")
        try:
            self.set_rate_limit(spec["per_second"], spec.get("burst"), spec.get("retry_after", True))
        except ValueError as error:
            raise HttpError(400, str(error)) from None
        return 200, {"rate_limit": spec}, {}

    def _on_list_requests(self, request: _Request) -> Answer:
        """``GET /_emulator/requests``: the recorded requests, oldest first."""
        return 200, {"requests": [asdict(record) for record in self.requests]}, {}

    def _on_order_page(self, request: _Request) -> Answer:
        """``GET /_emulator/orders/{id}``: the order as a web page, for the "Limio order" link (emulator
        behaviour: Limio documents no web page per order; :meth:`connection_json` points the link here)."""
        with self._lock:
            self._settle()
            order = self._orders.get(request.params["order_id"])
        if order is None:
            raise HttpError(404, "Not found")
        rows = "".join(
            f"<tr><th>{html.escape(key)}</th><td>{html.escape(str(order.get(key)))}</td></tr>"
            for key in ("id", "external_id", "order_type", "status", "order_reference")
        )
        page = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>Limio order {html.escape(order['id'])}</title>"
            f"</head><body><h1>Limio order (emulator)</h1><table>{rows}</table>"
            f"<pre>{html.escape(json.dumps(order, indent=2, default=str))}</pre></body></html>"
        )
        return 200, page.encode(), {"Content-Type": "text/html; charset=utf-8"}

    # -- helpers -----------------------------------------------------------------------------------

    def _validated(self, request: _Request) -> tuple[dict[str, Any], OrderBase]:
        """The order body and its model, or a 400 naming what is wrong (``forPartner`` is required on
        ``/admin/order`` and passes through untouched elsewhere)."""
        admin = request.route == "admin_order"
        prefix = _ADMIN_ORDER_400 if admin else "Malformed order payload"
        body = request.body
        if request.body_error or not isinstance(body, dict):
            raise HttpError(400, f"{prefix}: {request.body_error or 'the body must be a JSON object'}")
        try:
            order = parse_order(body, allow_unmodelled=False)
            if admin:
                if body.get("forPartner") is None:
                    raise ValueError("forPartner: required on /admin/order, e.g. {'id': 'partner-org-...'}")
                partner = parse_partner(body["forPartner"])
                if not self.lenient and partner.id not in self.partners:
                    known = ", ".join(sorted(self.partners)) or "none"
                    raise ValueError(f"forPartner.id: no partner organisation {partner.id!r} (known: {known})")
            if not self.lenient:
                for field, offer_id in _offer_ids(order):
                    if offer_id not in self.catalogue:
                        raise ValueError(f"{field}: no published offer {offer_id!r} in the catalogue")
        except ValueError as error:  # LimioValidationError is a ValueError (imported lazily by the models)
            raise HttpError(400, f"{prefix}: {error}") from None
        return body, order

    def offer(self, key: str) -> CatalogueOffer:
        """The catalogue's offer ``key``; else (a subscription being renewed or cancelled, or an unknown offer
        when ``lenient``) a made-up one, see :func:`made_up_offer`."""
        return self.catalogue.get(key) or made_up_offer(key)

    def _decline_reason(self, body: dict[str, Any]) -> str | None:
        """Why the billing provider declines this order's payment, if its payment ``type`` or any
        ``refId`` of its payment sub-objects is in ``decline_payment_refs`` (emulator behaviour)."""
        payment = body.get("payment")
        if not isinstance(payment, dict):
            return None
        refs = [payment.get("type")] + [sub.get("refId") for sub in payment.values() if isinstance(sub, dict)]
        declined = [ref for ref in refs if isinstance(ref, str) and ref in self.decline_payment_refs]
        return f"{payment.get('type')}: payment method {declined[0]} was declined" if declined else None

    def _settle(self) -> None:
        """Finish the orders whose processing delay has passed. Call under the lock."""
        now = self._now()
        for order_id, (ready_at, status, reason, billing_failure) in list(self._pending.items()):
            if now >= ready_at:
                self._finish(self._orders[order_id], status, reason, billing_failure, ready_at)
                del self._pending[order_id]

    def _finish(
        self, order: dict[str, Any], status: str, reason: str | None, billing_failure: str | None, at: float
    ) -> None:
        """Give ``order`` its final status (and failure ``message``) and its process event (whose billing plugin
        failed with ``billing_failure``, if given: the order stays complete). Call under the lock."""
        order.update(status=status, updated=self._timestamp(at))
        if reason:
            order["message"] = reason
        self._objects.finished(order, reason, billing_failure, order["updated"])

    def _now(self) -> float:
        """The emulator clock: the ``clock`` given, plus every :meth:`advance`."""
        return self._clock() + self._skew

    def _wall(self, at: float) -> float:
        """The Unix time of emulator-clock time ``at``."""
        return self._wall_origin + (at - self._clock_origin)

    def _timestamp(self, at: float) -> str:
        """Emulator-clock time ``at`` as an ISO 8601 UTC timestamp."""
        moment = datetime.fromtimestamp(self._wall(at), UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class _RateLimit:
    """A token bucket: ``per_second`` requests a second, at most ``burst`` at once (read under the lock)."""

    per_second: float
    burst: float
    retry_after: bool
    tokens: float = -1.0  # full once first asked
    at: float = 0.0

    def refuses(self) -> bool:
        """Whether the request arriving now is beyond the limit (else it takes one request from the bucket)."""
        now = time.monotonic()
        refill = (now - self.at) * self.per_second
        self.tokens = self.burst if self.tokens < 0 else min(self.burst, self.tokens + refill)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return False
        return True

    def answer(self) -> Answer:
        headers = {}
        if self.retry_after:  # whole seconds (HTTP), until the bucket holds a request again
            headers["Retry-After"] = str(max(1, math.ceil((1 - self.tokens) / self.per_second)))
        return 429, {"message": "Too Many Requests"}, headers


class _Handler(BaseHTTPRequestHandler):
    """Hands every request to the emulator; HTTP/1.1 keep-alive, Nagle off, no per-request logging."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else small answers on loopback stall ~40 ms (delayed ACK)
    wbufsize = -1  # buffer the answer: headers and body leave in one send, flushed after each request
    server: _Server

    def setup(self) -> None:
        """Do the TLS handshake, if any, here in the connection's thread rather than in the accept loop."""
        if isinstance(self.request, ssl.SSLSocket):
            try:
                self.request.do_handshake()
            except (OSError, ValueError) as error:  # the client hung up, or does not trust the certificate
                raise ConnectionAbortedError(f"TLS handshake failed: {error}") from error
        super().setup()

    def _dispatch(self) -> None:
        self.server.emulator._serve(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def reply(self, answer: Answer | None, how: str = "normal", pause: float = 0.0) -> None:
        """Send ``answer`` with its ``Content-Length``, spoilt as a fault's reply kind ``how`` says (see
        :data:`~limio_provider.testing.faults.ACTIONS`; ``pause`` spaces a ``trickle`` body's bytes); ``None``
        answers nothing and closes the connection."""
        if answer is None:
            self.close_connection = True
            if how == "reset":  # the server closes it without a FIN: SO_LINGER 0 makes that a RST
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.server.resets.add(self.connection)
            elif how == "tls_error":  # under the SSL object, straight onto the TCP stream
                socket.socket.sendall(self.connection, NOT_TLS)
            return
        status, payload, headers = answer
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        headers = {"Content-Type": "application/json", "Content-Length": str(len(data)), **headers}
        if how == "undecodable":
            headers["Content-Encoding"] = "gzip"
        if how == "bad_chunked":
            del headers["Content-Length"]
            headers["Transfer-Encoding"] = "chunked"
        for name, value in headers.items():
            self.send_header(name, value)
        if how == "trickle_head":  # the status line and headers (buffered by the calls above) a byte at a time
            buffered: list[bytes] = getattr(self, "_headers_buffer", [])
            head, self._headers_buffer = b"".join(buffered) + b"\r\n", []  # type: ignore[var-annotated]
            if not self._trickle(head, pause):
                return
        else:
            self.end_headers()
        if how == "truncate":
            data, self.close_connection = data[: len(data) // 2], True
        if how == "bad_chunked":  # a chunk-size line that is not hex, some bytes, then the end of the stream
            data, self.close_connection = b"zz\r\n" + data[:16], True
        if how == "trickle":
            self._trickle(data, pause)
            return
        self.wfile.write(data)

    def _trickle(self, data: bytes, pause: float) -> bool:
        """Send ``data`` a byte every ``pause`` seconds (the connection then closes); ``False`` if the emulator
        stopped first."""
        self.close_connection = True
        stopping = self.server.emulator._stopping
        for index in range(len(data)):
            self.wfile.write(data[index : index + 1])
            self.wfile.flush()
            if stopping.wait(pause):
                return False
        return True

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: per-request logging costs throughput and clutters test output."""


class _Server(ThreadingHTTPServer):
    """A threading HTTP(S) server that can close its open (keep-alive or hung) connections on stop.

    With an SSL ``context`` the listening socket is wrapped without handshaking on accept: each
    connection's handler thread does its handshake.
    """

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], emulator: LimioEmulator, context: ssl.SSLContext | None = None
    ) -> None:
        self.emulator = emulator
        self.connections: set[socket.socket] = set()
        self.resets: set[socket.socket] = set()  # connections to close with a RST, without a FIN first
        super().__init__(address, _Handler)
        if context is not None:
            self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.connections.discard(request)
        if request in self.resets:
            self.resets.discard(request)
            self.close_request(request)
        else:
            super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that went away (e.g. timed out on a slow answer) or broke TLS; report anything else."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError)):
            super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """Shut every open connection, which ends its handler thread."""
        for connection in list(self.connections):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _self_signed_certificate(directory: str, host: str) -> tuple[str, str]:
    """Write a fresh self-signed CA certificate for ``127.0.0.1``, ``::1``, ``localhost`` and ``host``, and
    its key, to ``directory``; return their paths. Imports ``cryptography`` (an Airflow dependency)."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as error:
        raise RuntimeError("the Limio emulator needs the cryptography package for tls=True") from error

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
        x509.DNSName("localhost"),
    ]
    try:
        address = ipaddress.ip_address(host)
        extra: x509.GeneralName | None = None if address.is_unspecified else x509.IPAddress(address)
    except ValueError:
        extra = x509.DNSName(host) if host else None
    if extra is not None and extra not in names:
        names.append(extra)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Limio emulator")])
    now = datetime.now(UTC)
    public_key = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = f"{directory}/cert.pem", f"{directory}/key.pem"
    with open(cert_path, "wb") as file:
        file.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as file:  # the directory is private (mkdtemp)
        file.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return cert_path, key_path


def _gzip_bomb(payload: Any, padding: int) -> bytes:
    """``payload``'s JSON and ``padding`` bytes of whitespace after it, gzipped: two gzip members, the second
    made once per size (a few hundred KB for 256 MiB)."""
    import gzip

    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return gzip.compress(data) + _gzipped_whitespace(padding)


@functools.lru_cache(maxsize=4)
def _gzipped_whitespace(size: int) -> bytes:
    import zlib

    packer, piece = zlib.compressobj(9, zlib.DEFLATED, 31), b" " * min(size, 2**20)
    parts, left = [], size
    while left > 0:
        parts.append(packer.compress(piece[:left]))
        left -= len(piece)
    return b"".join(parts) + packer.flush()


def _route(method: str, path: str) -> tuple[str | None, dict[str, str], list[str]]:
    """The route name and path parameters of a request, or ``None`` and the methods the path allows."""
    allowed = []
    for route_method, pattern, name in _ROUTES:
        match = pattern.fullmatch(path)
        if match and route_method == method:
            return name, match.groupdict(), []
        if match:
            allowed.append(route_method)
    return None, {}, allowed


def _parse_body(raw: bytes, content_type: str) -> tuple[Any, str | None]:
    """The body as a form dict or parsed JSON (``None`` if empty), and why it is not valid JSON; invalid
    JSON is kept as text."""
    if not raw:
        return None, None
    text = raw.decode("utf-8", "replace")
    if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        return dict(parse_qsl(text, keep_blank_values=True)), None
    try:
        return json.loads(text), None
    except ValueError as error:
        return text, f"the body is not valid JSON ({error})"


def _redacted(body: Any) -> Any:
    """``body`` with any ``client_secret`` hidden, for the request log."""
    if isinstance(body, dict) and "client_secret" in body:
        return {**body, "client_secret": "REDACTED"}
    return body


def _page(ids: list[str], query: dict[str, str]) -> tuple[list[str], str | None]:
    """One page of ``ids`` (oldest first), newest first, and the ``queryMore`` cursor of the next: it marks
    where the page ended, so objects created while paging never shift the pages (emulator behaviour). A slice:
    ``O(limit)`` whatever the number of objects."""
    limit = query.get("limit", "50")
    if not limit.isdigit() or not 1 <= int(limit) <= 1000:
        raise HttpError(400, "limit must be an integer from 1 to 1000")
    end = len(ids) if "queryMore" not in query else _read_cursor(query["queryMore"])
    start = max(0, min(end, len(ids)) - int(limit))
    cursor = base64.urlsafe_b64encode(f"before:{start}".encode()).decode() if start else None
    return list(reversed(ids[start:end])), cursor


def _read_cursor(cursor: str) -> int:
    """The position a ``queryMore`` cursor points at; 400 if it is not one of ours."""
    try:
        tag, _, position = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
        if tag == "before" and position.isdigit():
            return int(position)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise HttpError(400, "Invalid queryMore cursor")


def _reference() -> str:
    """A Limio-style reference: 12 uppercase letters and digits, e.g. ``8HK92PL401QW`` (not secret)."""
    return "".join(_references.choices(_REFERENCE_ALPHABET, k=12))


def made_up_offer(key: str) -> CatalogueOffer:
    """A stable made-up offer for ``key`` (5.00 to 49.99 GBP a month, derived from it): how the emulator prices
    a subscription it never sold (``renew``, ``cancel_subscription``), and, when ``lenient``, an unknown offer
    (emulator behaviour)."""
    cents = 500 + int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % 4500
    return CatalogueOffer(f"Offer {key}", (Decimal(cents) / 100).quantize(_CENT), "GBP", 1)


def load_catalogue(path: str) -> dict[str, CatalogueOffer]:
    """Read a catalogue for ``LimioEmulator(catalogue=...)`` from a JSON file: an object of offer ids, each
    ``{"name": ..., "price": "19.99", "currency": "GBP", "period_months": 1}``."""
    with open(path, encoding="utf-8") as file:
        offers = json.load(file)
    if not isinstance(offers, dict):
        raise ValueError(f"{path}: a catalogue is a JSON object of offer ids, not {type(offers).__name__}")
    return {offer_id: _catalogue_offer(offer_id, offer) for offer_id, offer in offers.items()}


def _catalogue_offer(offer_id: str, offer: CatalogueOffer | Mapping[str, Any]) -> CatalogueOffer:
    """``offer`` as a ``CatalogueOffer``, or a ``ValueError`` naming the offer and what is wrong."""
    if isinstance(offer, CatalogueOffer):
        return offer
    try:
        price = Decimal(str(offer["price"])).quantize(_CENT)
        period = int(offer.get("period_months", 1))
        if not price.is_finite() or price < 0 or period < 1:
            raise ValueError("price must be a number of at least 0 and period_months a whole number from 1")
        return CatalogueOffer(str(offer.get("name", offer_id)), price, str(offer.get("currency", "GBP")), period)
    except (KeyError, TypeError, ArithmeticError, AttributeError, ValueError) as error:
        raise ValueError(
            f"catalogue offer {offer_id!r}: {error!r}; expected {{'name', 'price', 'currency', 'period_months'}}"
        ) from None


def _offer_ids(order: OrderBase) -> list[tuple[str, str]]:
    """The offers an order names, as ``(field, offer id)`` pairs."""
    if isinstance(order, NewOrder):
        return [(f"orderItems[{index}].offer.id", item.offer.id) for index, item in enumerate(order.orderItems)]
    if isinstance(order, (ChangeOfferOrder, AddOfferOrder)):
        return [("offer.id", order.offer.id)]
    return []


def _priced_lines(order: OrderBase) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """What a preview charges and credits: ``(offer id or subscription key, quantity)`` pairs."""
    if isinstance(order, NewOrder):
        return [(item.offer.id, item.quantity) for item in order.orderItems], []
    if isinstance(order, (ChangeOfferOrder, AddOfferOrder)):
        return [(order.offer.id, order.quantity or 1)], []
    if isinstance(order, (CancelSubscriptionOrder, RenewOrder)):
        target = order.forSubscription
        key = (target and (target.id or target.name)) or order.subscriptionId or "subscription"
        return ([], [(key, 1)]) if isinstance(order, CancelSubscriptionOrder) else ([(key, 1)], [])
    return [], []


def _line(
    offer: CatalogueOffer, offer_id: str, quantity: int, start: date, subscription_number: str, sign: int = 1
) -> tuple[Decimal, str, dict[str, Any]]:
    """One priced line: its amount, currency and Zuora-style item for ``quantity`` of ``offer`` (``offer_id``)."""
    amount = (offer.price * quantity * sign).quantize(_CENT)
    month = start.month - 1 + offer.period_months
    year, month = start.year + month // 12, month % 12 + 1
    end = date(year, month, min(start.day, calendar.monthrange(year, month)[1])) - timedelta(days=1)
    item = {
        "additionalInfo": {"quantity": quantity, "unitOfMeasure": "Each"},
        "amountWithoutTax": float(amount),
        "chargeDescription": offer.name,
        "chargeName": offer.name,
        "chargeNumber": "C-00000001",
        "processingType": "Charge" if sign > 0 else "Credit",
        "productName": offer.name,
        "productRatePlanChargeId": offer_id,
        "serviceStartDate": start.isoformat(),
        "serviceEndDate": end.isoformat(),
        "subscriptionNumber": subscription_number,
        "taxAmount": 0,
        "unitPrice": float(offer.price),
    }
    return amount, offer.currency, item


def _document(amount: Decimal, start: date, items_key: str, items: Any) -> dict[str, Any]:
    """A previewed invoice or credit memo (numbers, as in Limio's sample)."""
    return {
        "amount": float(amount),
        "amountWithoutTax": float(amount),
        "targetDate": start.isoformat(),
        "taxAmount": 0,
        items_key: items,
    }


def _order_date(order: OrderBase) -> date | None:
    """The date an order takes effect, if it names one (``effectiveDate``, ``cancelDate``, ``orderDate``)."""
    for name in ("effectiveDate", "cancelDate", "orderDate"):
        try:
            return datetime.fromisoformat(getattr(order, name).replace("Z", "+00:00")).date()
        except (AttributeError, TypeError, ValueError):  # absent, or an unvalidated pass-through field
            continue
    return None
