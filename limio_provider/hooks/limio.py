"""LimioHook: the Airflow connection, the OAuth2 token and every HTTP call to Limio."""

from __future__ import annotations

import base64
import difflib
import json
import os
import random
import re
import string
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, quote_plus, urlsplit

import requests
from airflow.providers.common.compat.sdk import BaseHook, mask_secret
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from limio_provider import __version__
from limio_provider.assets.limio import canonical_tenant, is_loopback
from limio_provider.exceptions import (
    LimioAuthError,
    LimioConfigError,
    LimioConnectionError,
    LimioError,
    LimioNotFoundError,
    LimioOrderRejectedError,
    LimioOutcomeUnknownError,
    LimioProcessingFailedError,
    LimioRateLimitedError,
    LimioResponseError,
    LimioServerError,
    LimioValidationError,
)
from limio_provider.hooks.transport import (
    TrackedAdapter,
    cause_in_words,
    limio_message,
    parse_retry_after,
    read_answer,
    wire,
)
from limio_provider.models.orders import OrderBase, admin_order_body, order_body
from limio_provider.models.results import (
    OBJECT_PATH_TYPES,
    OrderObject,
    OrderPage,
    OrderResult,
    PreviewResult,
    ProcessEvent,
)

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Connection

    from limio_provider.hooks.rate import AdaptiveRate


#: How a call may be retried: reads and previews are safe to repeat; a submit only where it provably
#: was not processed (see :func:`submit_outcome`); the token call is always safe.
CallKind = Literal["read", "submit", "token"]

# -- The one rule that protects orders (docs/reliability.md) -------------------------------------------
#: Answers to a submit that prove Limio did not process it and that it is worth asking again: 429 (rate
#: limited) and 503 (Limio documents it as "not accepted"); 401 is replayed once with a fresh token.
SUBMIT_NOT_PROCESSED_STATUSES = frozenset({401, 429, 503})
#: Answers to a submit that prove Limio refused it for good: the request itself is at fault.
SUBMIT_REFUSED_STATUSES = frozenset({400, 403, 404, 405, 410, 411, 413, 414, 415, 422})
#: Statuses a read (GET or preview) is retried on; a token call is also retried on any other 5xx.
READ_RETRY_STATUSES = frozenset({429, 502, 503, 504})

SubmitOutcome = Literal["not_processed", "refused", "unknown"]


def submit_outcome(status: int | None, *, reached_limio: bool) -> SubmitOutcome:
    """What a submit's fate proves. ``status`` is Limio's HTTP status (``None`` if no answer was read);
    ``reached_limio`` is whether any byte of the request may have been written.

    ``not_processed`` (safe to send again) and ``refused`` (permanent) are allow-lists; everything else
    (any other 5xx, 3xx, 409, a timeout or reset after sending, a cut-short or unreadable body, a 2xx
    that is not an order) is ``unknown``: the order may exist and is never resent blindly.
    """
    if not reached_limio:
        return "not_processed"
    if status in SUBMIT_NOT_PROCESSED_STATUSES:
        return "not_processed"
    if status in SUBMIT_REFUSED_STATUSES:
        return "refused"
    return "unknown"


TOKEN_REFRESH_LEAD_SECONDS = 60.0
#: A token's lifetime when Limio's token endpoint gives no ``expires_in`` (OAuth2 makes it optional).
DEFAULT_TOKEN_LIFETIME = 3600.0


def _check_link_template(template: str | None) -> str | None:
    """``order_link_template`` is a web address (Airflow's UI opens only ``http(s)`` links) that may use
    ``{order_id}`` and nothing else: checked before any network call."""
    if template is None:
        return None
    if not template.strip().lower().startswith(("https://", "http://")):
        raise ValueError("must be a web page's address, starting https:// (Airflow's UI shows no other link)")
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ValueError(f"not a valid template ({exc}); use {{order_id}} for the order id") from None
    unknown = sorted({name for name in names if name != "order_id"})
    if unknown:
        shown = ", ".join("{" + name + "}" for name in unknown)
        raise ValueError(f"unknown placeholder {shown}; the only placeholder is {{order_id}}")
    return template


class LimioConnectionOptions(BaseModel):
    """Connection extras (and hook arguments of the same names). All optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheme: Literal["https", "http"] | None = Field(
        None, description="https (default), or http for a loopback emulator; for a host written without one."
    )
    base_path: str = Field("/api", description="Path of the API on the tenant host.")
    token_path: str = Field("/oauth2/token", description="Path of the OAuth2 token endpoint, on the tenant root.")
    token_auth: Literal["body", "basic"] = Field(
        "body", description="How the client credentials are sent to the token endpoint: form body or HTTP Basic."
    )
    timeout: float = Field(
        30.0, gt=0, description="Seconds for Limio's whole answer (status line, headers, body) once a request is sent."
    )
    max_answer_bytes: int = Field(
        32 * 2**20, ge=1024, description="Largest answer read, in bytes once decoded; a larger one is an error."
    )
    connect_timeout: float = Field(10.0, gt=0, description="Seconds to wait for a connection.")
    retry_limit: int = Field(4, ge=0, le=20, description="Retries after the first attempt, where retrying is safe.")
    retry_backoff: float = Field(1.0, ge=0, description="First backoff in seconds; doubles each retry, with jitter.")
    retry_max_backoff: float = Field(30.0, ge=0, description="Longest backoff between two attempts, in seconds.")
    retry_after_max: float = Field(60.0, ge=0, description="Longest Retry-After honoured, in seconds.")
    verify: bool | str = Field(True, description="TLS verification: true, false, or a CA bundle path.")
    proxies: dict[str, str] | None = Field(
        None, description="requests-style proxies, e.g. {'https': 'http://proxy:3128'}."
    )
    order_link_template: str | None = Field(
        None,
        description="URL of an order's page for the 'Limio order' link, with {order_id}; none: no link.",
    )
    ledger_path: str | None = Field(
        None,
        description="Root of the order ledger (file:///..., s3://aws_conn_id@bucket/prefix): remembers every order "
        "sent, across runs and workers.",
    )
    environment: Literal["sandbox", "production"] | None = Field(
        None,
        description="sandbox or production; not said counts as production (a large batch then needs "
        "confirm_production).",
    )
    tenant: str | None = Field(
        None,
        description="The tenant's name in the order ledger (default: the host, lower-case, without a default "
        "port); set it when one tenant is reached through more than one host name.",
    )

    @field_validator("verify", mode="before")
    @classmethod
    def _verify_flag(cls, value: Any) -> Any:
        """Form fields arrive as text: "true"/"false" are flags, anything else a CA bundle path."""
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        return value

    @field_validator("order_link_template")
    @classmethod
    def _link_template(cls, value: str | None) -> str | None:
        return _check_link_template(value)

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip() or any(c in value for c in "/\\") or not value.isprintable():
            raise ValueError("a tenant name is a non-empty line without '/' or '\\', e.g. acme.prod.limio.com")
        return value.strip().lower()


OPTION_NAMES = tuple(LimioConnectionOptions.model_fields)


@dataclass(frozen=True)
class _Settings:
    api_url: str
    token_url: str
    client_id: str
    client_secret: str
    options: LimioConnectionOptions
    loopback: bool
    #: The tenant's name in the order ledger (see :func:`canonical_tenant`).
    tenant: str


@dataclass
class _Token:
    value: str
    expires_at: float


class LimioHook(BaseHook):
    """Talks to Limio's Orders and Objects APIs with OAuth2 client credentials.

    The connection is read lazily, once; the token is cached and refreshed before it expires; each call
    is retried only where retrying cannot duplicate an order. Redirects are never followed.

    :param limio_conn_id: the Airflow connection: host = tenant host, login = client id,
        password = client secret, extras = :class:`LimioConnectionOptions`.
    :param sleep: how to wait between retries (injectable for tests).
    :param clock: a monotonic clock in seconds, for token expiry (injectable for tests).
    :param pool_size: keep-alive connections the session keeps to Limio (requests' default, 10, if not
        given): as many as the calls made at once by threads sharing this hook.
    :param max_in_flight: at most this many calls to Limio at once through this hook, not counting the
        token request (one at a time); more threads wait for a free slot (``None``: no limit).
    :param rate: the request rate shared by the threads of a batch (:class:`~limio_provider.hooks.rate.AdaptiveRate`):
        every request but the token's leaves at its pace, retries and replays included, and a 429 or 503 slows
        it down; ``None``: requests leave as soon as they can.
    :param connection: the connection, already read (the trigger reads it on its event loop); by default the
        hook reads ``limio_conn_id`` itself, on first use.
    :param mask: how a secret is hidden from logs the moment the hook learns it (default: Airflow's
        ``mask_secret``; the trigger passes one that runs it on its event loop).
    :param options: any :class:`LimioConnectionOptions` field, overriding the connection's extras.
    """

    conn_name_attr = "limio_conn_id"
    default_conn_name = "limio_default"
    conn_type = "limio"
    hook_name = "Limio"

    def __init__(
        self,
        limio_conn_id: str = default_conn_name,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        pool_size: int = requests.adapters.DEFAULT_POOLSIZE,
        max_in_flight: int | None = None,
        rate: AdaptiveRate | None = None,
        connection: Connection | None = None,
        mask: Callable[[str], None] = mask_secret,
        **options: Any,
    ) -> None:
        super().__init__()
        unknown = sorted(set(options) - set(OPTION_NAMES))
        if unknown:
            raise LimioConfigError(
                f"unknown LimioHook option(s) {', '.join(unknown)}; accepted: {', '.join(OPTION_NAMES)}"
            )
        self.limio_conn_id = limio_conn_id
        self._overrides = options
        self._sleep = sleep
        self._clock = clock
        self._pool_size = pool_size
        self._connection = connection
        self._mask = mask
        self._slots: AbstractContextManager[Any] = (
            nullcontext() if max_in_flight is None else threading.BoundedSemaphore(max_in_flight)
        )
        self._token: _Token | None = None
        self._token_lock = threading.Lock()
        self.token_requests = 0
        self._told_lifetime = False
        self._rate = rate

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """The connection form below Airflow 3.2, which reads it from the hook (3.2 on read the provider info),
        in the hook's spelling (``hidden_fields``; the provider info says ``hidden-fields``)."""
        from limio_provider.get_provider_info import UI_FIELD_BEHAVIOUR

        return {key.replace("-", "_"): value for key, value in UI_FIELD_BEHAVIOUR.items()}

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The extras as connection form fields below Airflow 3.2, which reads them from the hook (3.2 on read
        ``conn-fields`` from the provider info). Numbers and flags are text fields, as the hook reads form
        text; ``proxies`` (an object) stays in the Extra JSON."""
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import IntegerField, StringField
        from wtforms.validators import Optional

        from limio_provider.get_provider_info import CONN_FIELDS

        widgets: dict[str, Any] = {}
        for name, field in CONN_FIELDS.items():
            kinds = set(field["schema"]["type"]) - {"null"}
            if "object" in kinds:
                continue
            kind = IntegerField if kinds == {"integer"} else StringField
            widgets[name] = kind(
                lazy_gettext(field["label"]),
                validators=[Optional()],
                description=field["description"],
                widget=BS3TextFieldWidget(),
            )
        return widgets

    # -- configuration ------------------------------------------------------------------------------

    @cached_property
    def settings(self) -> _Settings:
        """The connection, read once and checked; raises :class:`LimioConfigError` if unusable."""
        conn = self._connection or self.get_connection(self.limio_conn_id)
        if conn.password:
            self._mask(conn.password)
        if not conn.login or not conn.password:
            raise LimioConfigError(
                f"connection {self.limio_conn_id!r} needs the client id (login) and client secret (password)"
            )
        options = self._options(self._extras(conn.extra))
        root, loopback = self._root_url(conn.host, conn.port, options.scheme)
        parts = urlsplit(root)
        settings = _Settings(
            api_url=root + "/" + options.base_path.strip("/"),
            token_url=root + "/" + options.token_path.lstrip("/"),
            client_id=conn.login,
            client_secret=conn.password,
            options=options,
            loopback=loopback,
            tenant=options.tenant or canonical_tenant(parts.scheme, parts.hostname or "", parts.port),
        )
        self.__dict__["settings"] = settings  # _secret_forms reads it
        for form in self._secret_forms():
            self._mask(form)
        return settings

    def _extras(self, text: str | None) -> dict[str, Any]:
        """The connection's extras, parsed here rather than by ``Connection.extra_dejson``: on Airflow 3.1 that
        masks them through the task or trigger runner's channel to its supervisor, which must not be used from
        the thread a trigger runs this hook in (see ``limio_provider.triggers.limio``). None of the extras is a
        secret."""
        try:
            extras = json.loads(text) if text else {}
        except ValueError:
            extras = None
        if not isinstance(extras, dict):
            raise LimioConfigError(f"connection {self.limio_conn_id!r}: the extras are not a JSON object")
        return extras

    def _options(self, extra: dict[str, Any]) -> LimioConnectionOptions:
        extras = {k.removeprefix("extra__limio__"): v for k, v in extra.items()}
        extras = {k: v for k, v in extras.items() if v not in ("", None)}
        try:
            return LimioConnectionOptions(**{**extras, **self._overrides})
        except ValidationError as exc:
            problems = []
            for error in exc.errors(include_url=False, include_input=False):
                name = ".".join(str(part) for part in error["loc"])
                if error["type"] == "extra_forbidden":
                    close = difflib.get_close_matches(name, OPTION_NAMES, n=1)
                    problems.append(f"unknown extra {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
                else:
                    problems.append(f"{name}: {error['msg'].removeprefix('Value error, ')}")
            raise LimioConfigError(
                f"connection {self.limio_conn_id!r}: {'; '.join(problems)}. Accepted extras: {', '.join(OPTION_NAMES)}"
            ) from None

    def _root_url(self, host: str | None, port: int | None, scheme: str | None = None) -> tuple[str, bool]:
        """``scheme://host[:port]`` of the tenant, and whether it is a loopback host. The scheme is the host's
        own (``http://127.0.0.1``), else the ``scheme`` extra, else https. Errors never repeat the host as
        given: it may carry credentials."""
        where = f"connection {self.limio_conn_id!r}"
        text = (host or "").strip()
        if not text:
            raise LimioConfigError(f"{where} needs the tenant host, e.g. acme.prod.limio.com")
        if scheme and "://" in text and not text.lower().startswith(f"{scheme}://"):
            raise LimioConfigError(f"{where}: the host's scheme and the 'scheme' extra ({scheme}) differ; give one")
        try:
            parts = urlsplit(text if "://" in text else f"{scheme or 'https'}://{text}")
            hostname, host_port = parts.hostname, parts.port
        except ValueError:
            raise LimioConfigError(
                f"{where}: the host is not a valid tenant host (expected e.g. acme.prod.limio.com, "
                "optionally with https:// and a numeric port)"
            ) from None
        if "@" in parts.netloc:
            raise LimioConfigError(
                f"{where}: the host must not contain credentials; put the client id in login and the client "
                "secret in password"
            )
        if parts.scheme not in ("https", "http") or not hostname:
            raise LimioConfigError(
                f"{where}: the host must be an https:// tenant host (http:// only for a loopback emulator)"
            )
        if parts.path.strip("/") or parts.query or parts.fragment:
            raise LimioConfigError(
                f"{where}: host must be the tenant host only (no path); set the 'base_path' extra to change the "
                "API path"
            )
        loopback = is_loopback(hostname)
        if parts.scheme == "http" and not loopback:
            raise LimioConfigError(
                f"{where}: refusing to send credentials over plain http:// to {hostname}; use https:// "
                "(http:// is allowed only for loopback hosts)"
            )
        port = port or host_port
        netloc = f"[{hostname}]" if ":" in hostname else hostname
        return f"{parts.scheme}://{netloc}{f':{port}' if port else ''}", loopback

    @cached_property
    def session(self) -> requests.Session:
        """One keep-alive session per hook, which never follows redirects.

        The hook talks to one host, so the environment's proxy settings (``HTTPS_PROXY``, ``NO_PROXY``...) and
        CA bundle (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``) are read once here rather than by requests on
        every call; the connection's extras win over them. A loopback host never goes through a proxy.
        """
        settings = self.settings
        options = settings.options
        session = requests.Session()
        session.trust_env = False
        adapter = TrackedAdapter(pool_connections=self._pool_size, pool_maxsize=self._pool_size)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        session.headers["User-Agent"] = f"airflow-provider-limio/{__version__} requests/{requests.__version__}"
        session.headers["Accept"] = "application/json"
        if not settings.loopback:
            session.proxies.update(requests.utils.get_environ_proxies(settings.api_url))
            session.proxies.update(options.proxies or {})
        env_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        session.verify = env_bundle if options.verify is True and env_bundle else options.verify
        return session

    def order_url(self, order_id: str) -> str | None:
        """Where a person's browser shows the order: ``order_link_template`` with its id; ``None`` without
        one (Limio documents no web page for an order, and its API URL needs a token a browser lacks)."""
        template = self.settings.options.order_link_template
        return template.format(order_id=quote(order_id, safe="")) if template else None

    def close(self) -> None:
        """Close the HTTP session (its pooled connections)."""
        if "session" in self.__dict__:
            self.session.close()
            del self.__dict__["session"]

    # -- token --------------------------------------------------------------------------------------

    def get_token(self, *, force: bool = False) -> str:
        """A valid access token: the cached one, or a new one when fewer than 60 s remain."""
        with self._token_lock:
            token = self._token
            if not force and token is not None and token.expires_at > self._clock():
                return token.value
            self._token = self._fetch_token()
            return self._token.value

    def _fetch_token(self) -> _Token:
        settings = self.settings
        data = {"grant_type": "client_credentials"}
        auth = None
        if settings.options.token_auth == "basic":
            auth = (settings.client_id, settings.client_secret)
        else:
            data |= {"client_id": settings.client_id, "client_secret": settings.client_secret}
        self.token_requests += 1
        body = self._call("POST", settings.token_url, "token", data=data, auth=auth)
        access_token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(access_token, str) or not access_token:
            raise LimioAuthError("Limio's token endpoint answered without an access_token")
        for form in (access_token, quote_plus(access_token), quote(access_token, safe="")):
            self._mask(form)
        if not all("!" <= char <= "~" for char in access_token):  # RFC 6750: visible ASCII, no space
            raise LimioConfigError(
                f"Limio's token endpoint (connection {self.limio_conn_id!r}) answered an access_token that cannot "
                "be sent in an HTTP header (whitespace, or characters outside visible ASCII); no request was sent "
                "with it. Check the connection's host and token_path: is this Limio's token endpoint?"
            )
        lifetime = self._lifetime(body.get("expires_in"))
        lead = min(TOKEN_REFRESH_LEAD_SECONDS, lifetime / 2)
        return _Token(access_token, self._clock() + lifetime - lead)

    def _lifetime(self, expires_in: Any) -> float:
        """The token's lifetime in seconds, as Limio's token endpoint gave it (``expires_in``; OAuth2 makes it
        optional: 3600 when absent). A token given no time (0), or a time that is no number of seconds (negative,
        NaN, text), is used for the call that fetched it only, and said once per hook: each call then fetches a
        token of its own."""
        import math

        if expires_in is None:
            return DEFAULT_TOKEN_LIFETIME
        try:
            lifetime = math.nan if isinstance(expires_in, bool) else float(expires_in)
        except (TypeError, ValueError, OverflowError):
            lifetime = math.nan
        if math.isfinite(lifetime) and lifetime > 0:
            return lifetime
        if not self._told_lifetime:
            self._told_lifetime = True
            meaning = "no time" if lifetime == 0 else "no number of seconds"
            self.log.warning(
                "Limio's token endpoint (connection %r) gave expires_in=%s, %s: each token is used for one call, "
                "and every call fetches a new one",
                self.limio_conn_id,
                json.dumps(expires_in)[:40],
                meaning,
            )
        return 0.0

    def _secret_forms(self) -> list[str]:
        """The client secret and the token in every encoding the hook ever sends them in."""
        settings = self.settings
        forms = []
        for secret in filter(None, (settings.client_secret, self._token.value if self._token else "")):
            forms += [secret, quote_plus(secret), quote(secret, safe=""), json.dumps(secret)[1:-1]]
            forms.append(base64.b64encode(secret.encode()).decode())
        for user, password in (
            (settings.client_id, settings.client_secret),
            (quote_plus(settings.client_id), quote_plus(settings.client_secret)),
        ):
            forms.append(base64.b64encode(f"{user}:{password}".encode("latin-1", "replace")).decode())
        return sorted({form for form in forms if len(form) >= 4}, key=len, reverse=True)

    def _scrub(self, text: str) -> str:
        """``text`` with the client secret and the current token, in any encoding the hook sends them in,
        replaced by ``***``."""
        pattern = "|".join(re.escape(form) for form in self._secret_forms())
        return re.sub(pattern, "***", text, flags=re.IGNORECASE) if pattern else text

    def _discard_token(self, value: str) -> None:
        with self._token_lock:
            if self._token is not None and self._token.value == value:
                self._token = None

    # -- HTTP ---------------------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        url: str,
        kind: CallKind,
        *,
        json: Any = None,
        data: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> requests.Response:
        """One HTTP exchange: a 2xx answer, or a typed error (``retryable`` where repeating it is safe)."""
        options = self.settings.options
        session = self.session
        wire.phase = None
        try:
            # Prepared here and handed to the adapter: ``Session.request`` would merge cookies, hooks and
            # environment settings the hook never uses (it reads the environment once, in ``session``), and
            # follow redirects, which it never does; that merging costs a third of a call's CPU.
            prepared = requests.PreparedRequest()
            prepared.prepare(
                method=method,
                url=url,
                headers={**session.headers, **(headers or {})},
                data=data,
                json=json,
                params=params,
                auth=auth,
            )
            # A token request takes no slot: it runs under the token lock, one at a time, and the threads it
            # serves may be holding every slot while they wait for that lock.
            with nullcontext() if kind == "token" else self.in_flight_slot():
                if self._rate is not None and kind != "token":
                    self._rate.depart()
                    if str(prepared.headers.get("Authorization", "")).startswith("Bearer "):
                        # Another thread's 401 may have replaced the token while this request waited for its
                        # turn: it leaves with the current one, not one Limio has already refused.
                        prepared.headers["Authorization"] = f"Bearer {self.get_token()}"
                wire.bearer = str(prepared.headers.get("Authorization", "")).removeprefix("Bearer ")
                if kind == "submit":
                    if (gate := getattr(wire, "gate", None)) is not None:
                        gate()  # the last word before the request leaves (see submit_gate)
                wire.answer_timeout = options.timeout  # the whole answer, once the request is sent
                response = session.get_adapter(url).send(
                    prepared,
                    stream=True,  # the body is read below, all of it within the timeout
                    timeout=(options.connect_timeout, options.timeout),
                    verify=session.verify,
                    cert=None,
                    proxies=session.proxies,
                )
                read_answer(response, time.monotonic() + options.timeout, options.max_answer_bytes)
        except requests.RequestException as exc:
            reached = getattr(wire, "phase", None) != "connecting"
            raise self._transport_error(method, url, kind, exc, reached, json) from None
        if 200 <= response.status_code < 300:
            if self._rate is not None and kind != "token":
                self._rate_succeeded()
            return response
        raise self._answer_error(method, url, kind, response, json)

    def _rate_succeeded(self) -> None:
        """Tell the batch's rate of a 2xx. Its bookkeeping never turns an answer Limio gave into an error (after
        a submit that would label a created order unknown): a failure there is logged, and the rate stays."""
        try:
            self._rate.succeeded()  # type: ignore[union-attr]
        except Exception:
            self.log.exception("The batch's rate could not count a success; it keeps its rate")

    @contextmanager
    def submit_gate(self, check: Callable[[], None] | None) -> Iterator[None]:
        """Within this block, in this thread, call ``check`` right before each submit request leaves (a replay
        after a 401 or a retry too); it raises to stop the request, which then never left."""
        previous = getattr(wire, "gate", None)
        wire.gate = check
        try:
            yield
        finally:
            wire.gate = previous

    @contextmanager
    def in_flight_slot(self) -> Iterator[None]:
        """Hold one of the ``max_in_flight`` slots (re-entrant within a thread). A caller that records an
        intent to send ("sent" in the order ledger) takes the slot first, so no order is recorded as sent while
        it still waits for a slot: a task killed then has sent nothing it would have to look for."""
        if getattr(wire, "slot_held", False):
            yield
            return
        with self._slots:
            wire.slot_held = True
            try:
                yield
            finally:
                wire.slot_held = False

    def _what(self, method: str, url: str) -> str:
        return f"Limio {method} {urlsplit(url).path} (connection {self.limio_conn_id!r})"

    def _transport_error(
        self, method: str, url: str, kind: CallKind, exc: Exception, reached: bool, body: Any
    ) -> LimioError:
        parts = urlsplit(url)
        cause = cause_in_words(exc, sent=reached)
        if not reached:
            message = (
                f"could not connect to Limio at {parts.scheme}://{parts.netloc} for {method} {parts.path}: {cause}"
            )
            if kind == "token" and "refused" in cause:
                message += "; on a first call this is more often a wrong host or port than an outage"
            return LimioConnectionError(f"{message} (connection {self.limio_conn_id!r})", retryable=True)
        what = f"{self._what(method, url)}: the request was sent but no complete answer came back: {cause}"
        if kind == "submit":
            return self._outcome_unknown(what, body, None)
        return LimioConnectionError(what, retryable=True)

    def _outcome_unknown(self, what: str, body: Any, status: int | None) -> LimioOutcomeUnknownError:
        external_id = body.get("external_id") if isinstance(body, dict) else None
        return LimioOutcomeUnknownError(
            f"{what}. Limio may or may not have created the order with external_id {external_id!r}; it was "
            "not resent. Look it up by external_id before submitting again.",
            external_id=external_id,
            status=status,
        )

    def _answer_error(
        self, method: str, url: str, kind: CallKind, response: requests.Response, body: Any
    ) -> LimioError:
        status = response.status_code
        if 300 <= status < 400:
            target = urlsplit(response.headers.get("Location") or "").hostname or "an unnamed location"
            detail = f"a redirect to {target}, not followed (the provider never follows redirects)"
        else:
            detail = self._scrub(limio_message(response))
        what = f"{self._what(method, url)} answered HTTP {status}: {detail}"
        if status == 401 and kind != "token":  # LimioHook.request fetches a new token once and replays
            return LimioAuthError(what, status=status)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if kind == "submit":
            outcome = submit_outcome(status, reached_limio=True)
            if outcome == "unknown":
                return self._outcome_unknown(what, body, status)
            retryable = outcome == "not_processed"
        elif kind == "token":
            retryable = status == 429 or status >= 500
        else:
            retryable = status in READ_RETRY_STATUSES
        if kind == "token" and 400 <= status < 500 and status != 429:
            return LimioAuthError(
                f"Limio refused the client credentials of connection {self.limio_conn_id!r} (HTTP {status}: {detail})",
                status=status,
            )
        error_type: type[LimioResponseError]
        if status in (401, 403):
            error_type = LimioAuthError
        elif status == 429:
            error_type = LimioRateLimitedError
        elif status == 404 and method == "GET":
            error_type = LimioNotFoundError
        elif 400 <= status < 500:
            error_type = LimioOrderRejectedError
        elif status >= 500:
            error_type = LimioServerError
        else:
            error_type = LimioResponseError
        return error_type(what, status=status, retry_after=retry_after, retryable=retryable)

    def _json(self, response: requests.Response, method: str, url: str, kind: CallKind, body: Any = None) -> Any:
        try:
            return response.json()
        except ValueError:
            what = f"{self._what(method, url)} answered HTTP {response.status_code} with a body that is not JSON"
            if kind == "submit":
                raise self._outcome_unknown(what, body, response.status_code) from None
            raise LimioServerError(what, status=response.status_code, retryable=kind == "token") from None

    def _backoff(self, error: LimioError, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt``: Limio's ``Retry-After`` (capped), else an
        exponential backoff with full jitter."""
        options = self.settings.options
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return min(retry_after, options.retry_after_max)
        return random.uniform(0, min(options.retry_max_backoff, options.retry_backoff * 2 ** (attempt - 1)))

    def _call(self, method: str, url: str, kind: CallKind, **kwargs: Any) -> Any:
        """One call with the retry rules of ``kind``; its JSON answer."""
        retries = self.settings.options.retry_limit
        attempt = 1
        while True:
            try:
                response = self._send(method, url, kind, **kwargs)
                return self._json(response, method, url, kind, kwargs.get("json"))
            except LimioError as error:
                if not error.retryable or attempt > retries:
                    if attempt > 1:
                        error.args = (f"{error} (gave up after {attempt} attempts)",)
                    raise
                wait = self._backoff(error, attempt)
                self.log.warning("%s (attempt %d of %d); retrying in %.1f s", error, attempt, retries + 1, wait)
                if self._rate is not None and kind != "token":
                    self._rate.backoff(getattr(error, "status", None), wait)
                else:
                    self._sleep(wait)
                attempt += 1

    def request(
        self, method: str, path: str, kind: CallKind, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        """Call ``{api_url}{path}`` with the bearer token and the retry rules of ``kind``; return its JSON.

        A 401 fetches a new token once and replays the call once (Limio's guidance).
        """
        url = self.settings.api_url + path
        token = self.get_token()
        try:
            return self._call(method, url, kind, json=json, params=params, headers={"Authorization": f"Bearer {token}"})
        except LimioAuthError as error:
            if error.status != 401:
                raise
            self._discard_token(getattr(wire, "bearer", None) or token)  # the token the request left with
        token = self.get_token()
        try:
            return self._call(method, url, kind, json=json, params=params, headers={"Authorization": f"Bearer {token}"})
        except LimioAuthError as error:
            if error.status == 401:
                error.args = (f"{error} (with a freshly issued token)",)
            raise

    # -- Limio calls --------------------------------------------------------------------------------

    def preview_order(
        self,
        order: OrderBase | dict[str, Any],
        *,
        allow_unmodelled: bool = False,
        allow_fields: Collection[str] = (),
    ) -> PreviewResult:
        """Preview an order (``POST /order/preview``); nothing is created.

        :param order: the order body (a dict as Limio spells it, or a model), validated before sending.
        :param allow_unmodelled: accept an ``order_type`` this provider does not model.
        :param allow_fields: fields sent as written although one typo away from a known one.
        """
        body = order_body(order, allow_unmodelled=allow_unmodelled, allow_fields=allow_fields)
        answer = self.request("POST", "/order/preview", "read", json=body)
        if not isinstance(answer, dict):
            raise LimioServerError(f"Limio POST /order/preview answered a {type(answer).__name__}, not a preview")
        return PreviewResult.model_validate(answer)

    def submit_order(
        self,
        order: OrderBase | dict[str, Any],
        *,
        allow_unmodelled: bool = False,
        allow_fields: Collection[str] = (),
    ) -> OrderResult:
        """Submit an order (``POST /order``). Never resent when the outcome is unknown.

        :raises LimioOutcomeUnknownError: the order may have been created; reconcile by ``external_id``.
        """
        return self.send_order(order_body(order, allow_unmodelled=allow_unmodelled, allow_fields=allow_fields))

    def submit_admin_order(
        self,
        order: OrderBase | dict[str, Any],
        *,
        partner: str | dict[str, Any] | BaseModel | None = None,
        allow_unmodelled: bool = False,
        allow_fields: Collection[str] = (),
    ) -> OrderResult:
        """Submit an order with management credentials on behalf of a partner (``POST /admin/order``).

        :param partner: the partner organisation, sent as ``forPartner``: an id string or an object.
            Give it here or as the order's own ``forPartner``, not both.
        """
        body = admin_order_body(
            order_body(order, allow_unmodelled=allow_unmodelled, allow_fields=allow_fields), partner
        )
        return self.send_order(body, admin=True)

    def send_order(self, body: dict[str, Any], *, admin: bool = False) -> OrderResult:
        """Send an order body already validated (:func:`~limio_provider.models.orders.order_body`) as it is:
        ``POST /order``, or ``/admin/order`` if ``admin``. An answer that is not an order with an ``id`` is an
        unknown outcome, as every submit's is when nothing proves whether it was processed.

        :raises LimioOutcomeUnknownError: the order may have been created; reconcile by ``external_id``.
        """
        path = "/admin/order" if admin else "/order"
        answer = self.request("POST", path, "submit", json=body)
        result = OrderResult.model_validate(answer) if isinstance(answer, dict) else None
        if result is None or not result.id:
            shape = "an object without an order id" if isinstance(answer, dict) else f"a {type(answer).__name__}"
            raise self._outcome_unknown(f"Limio POST {path} answered {shape}, not an order", body, 200)
        return result

    def get_order(self, order_id: str) -> OrderObject:
        """Read an order through the Objects API (``GET /objects/limio/orders/{id}``)."""
        if not isinstance(order_id, str) or not order_id.strip() or order_id.strip() == "None":
            raise LimioValidationError(f"invalid order_id: expected a Limio order id, got {order_id!r}")
        path = "/objects/limio/orders/" + quote(order_id, safe="")
        answer = self.request("GET", path, "read")
        return OrderObject.model_validate(answer if isinstance(answer, dict) else {})

    def list_orders(self, *, page_size: int = 50, max_pages: int | None = None) -> Iterator[OrderObject]:
        """Yield orders (newest first, as Limio lists them), following the ``queryMore`` cursor.

        :param page_size: orders asked for per page (``limit``).
        :param max_pages: stop after this many pages (``None``: until the cursor runs out).
        """
        for items, _ in self.object_pages("orders", page_size=page_size, max_pages=max_pages):
            yield from OrderPage.model_validate({"items": items}).items

    def object_pages(
        self, object_type: str, *, page_size: int = 100, max_pages: int | None = None, cursor: str | None = None
    ) -> Iterator[tuple[list[dict[str, Any]], str | None]]:
        """Yield each page of ``GET /objects/limio/{object_type}``: its objects, as Limio sent them, and the
        ``queryMore`` cursor of the page after it (``None`` after the last).

        :param object_type: one of :data:`~limio_provider.models.results.OBJECT_PATH_TYPES` (``orders``,
            ``subscriptions``, ``customers``, ``events``, ``process``, ...).
        :param page_size: objects asked for per page (``limit``).
        :param max_pages: stop after this many pages (``None``: until the cursor runs out).
        :param cursor: start at this ``queryMore`` cursor (one this method yielded) instead of the first page.
        """
        path = self.objects_path(object_type)
        if not isinstance(page_size, int) or page_size < 1:
            raise LimioValidationError(f"invalid page_size: expected a positive integer, got {page_size!r}")
        params: dict[str, Any] = {"limit": page_size} | ({"queryMore": cursor} if cursor else {})
        pages = 0
        while max_pages is None or pages < max_pages:
            answer = self.request("GET", path, "read", params=params)
            answer = answer if isinstance(answer, dict) else {}
            items = answer.get("items")
            following = answer.get("queryMore")
            pages += 1
            following = following if isinstance(following, str) and following else None
            yield [item for item in items if isinstance(item, dict)] if isinstance(items, list) else [], following
            if following is None:
                return
            params = {"limit": page_size, "queryMore": following}

    def get_object(self, object_type: str, object_id: str) -> dict[str, Any]:
        """One object as Limio sent it (``GET /objects/limio/{object_type}/{id}``)."""
        answer = self.request("GET", self._object_path(object_type, object_id), "read")
        return answer if isinstance(answer, dict) else {}

    def get_related(self, object_type: str, object_id: str) -> list[dict[str, Any]]:
        """The objects related to one (``GET /objects/limio/{object_type}/{id}/related``): its events,
        process events, subscriptions, ..., each with its ``record_type``."""
        answer = self.request("GET", self._object_path(object_type, object_id) + "/related", "read")
        items = answer.get("items") if isinstance(answer, dict) else None
        return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []

    def processing_errors(self, order_id: str) -> list[str]:
        """What an order's process events say failed, each as ``plugin: message`` (from ``/related``). Empty:
        none failed, or Limio has recorded none yet (its docs do not say when they appear)."""
        related = self.get_related("orders", order_id)
        events = [ProcessEvent.model_validate(item) for item in related if ProcessEvent.is_one(item)]
        return [error for event in events for error in event.errors()]

    def raise_for_processing(self, order_id: str, status: str | None = None) -> None:
        """Fail if the order's process events say a plugin failed (Limio marks an order complete even when its
        billing plugin failed).

        :raises LimioProcessingFailedError: naming each failed plugin and its message.
        """
        errors = self.processing_errors(order_id)
        if errors:
            raise LimioProcessingFailedError(
                f"Limio order {order_id} is {status or 'complete'}, but its processing failed: "
                f"{'; '.join(errors)[:1000]}. The order exists: do not submit it again; see to it in Limio or "
                "the system the plugin calls",
                order_id=order_id,
                status=status,
                errors=errors,
            )

    @staticmethod
    def objects_path(object_type: str) -> str:
        """``/objects/limio/{object_type}``; :class:`LimioValidationError` for a type the Objects API does not have."""
        if object_type not in OBJECT_PATH_TYPES:
            kinds = ", ".join(sorted(OBJECT_PATH_TYPES))
            raise LimioValidationError(f"invalid object_type: {object_type!r} is not one of {kinds}")
        return f"/objects/limio/{object_type}"

    def _object_path(self, object_type: str, object_id: str) -> str:
        """``/objects/limio/{object_type}/{id}``."""
        path = self.objects_path(object_type)
        if not isinstance(object_id, str) or not object_id.strip() or object_id.strip() == "None":
            raise LimioValidationError(f"invalid object id: expected a Limio {object_type} id, got {object_id!r}")
        return f"{path}/{quote(object_id, safe='')}"

    def find_orders(self, external_id: str, *, page_size: int = 100, max_pages: int = 5) -> list[OrderObject]:
        """Every order carrying ``external_id`` among the ``page_size * max_pages`` newest, newest first.

        Limio documents no filter by ``external_id``, so this walks the order list within a bounded budget:
        an empty list means "not among the newest orders", not "never submitted".
        """
        if not isinstance(external_id, str) or not external_id:
            raise LimioValidationError(f"invalid external_id: expected a non-empty string, got {external_id!r}")
        orders = self.list_orders(page_size=page_size, max_pages=max_pages)
        return [order for order in orders if order.external_id == external_id and order.id]

    def find_order(self, external_id: str, *, page_size: int = 100, max_pages: int = 5) -> OrderObject | None:
        """The newest order carrying ``external_id`` among the ``page_size * max_pages`` newest, or None."""
        return next(iter(self.find_orders(external_id, page_size=page_size, max_pages=max_pages)), None)

    def test_connection(self) -> tuple[bool, str]:
        """Fetch a token and read one order: ``(True, message)`` if both work, else ``(False, reason)``."""
        try:
            self.get_token(force=True)
            next(self.list_orders(page_size=1, max_pages=1), None)
        except LimioError as exc:
            return False, str(exc)
        except Exception as exc:  # a connection that cannot even be read
            return False, f"{type(exc).__name__}: {exc}"
        return True, f"Connected to Limio at {self.settings.api_url}: token issued and orders readable"
