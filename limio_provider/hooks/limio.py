"""LimioHook: the Airflow connection, the OAuth2 token and every HTTP call to Limio."""

from __future__ import annotations

import email.utils
import ipaddress
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import requests
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from urllib3.exceptions import NewConnectionError

from airflow.providers.common.compat.sdk import BaseHook, mask_secret
from limio_provider import __version__
from limio_provider.exceptions import (
    LimioAuthError,
    LimioConfigError,
    LimioError,
    LimioNotFoundError,
    LimioOrderRejectedError,
    LimioOutcomeUnknownError,
    LimioRateLimitedError,
    LimioResponseError,
    LimioServerError,
    LimioValidationError,
)
from limio_provider.models.orders import OrderBase, order_body, parse_partner
from limio_provider.models.results import OrderObject, OrderPage, OrderResult, PreviewResult

#: How a call may be retried: reads and previews are safe to repeat; a submit only where it provably
#: was not processed; the token call is always safe.
CallKind = Literal["read", "submit", "token"]
RETRY_STATUSES: dict[str, frozenset[int]] = {
    "read": frozenset({429, 502, 503, 504}),
    "submit": frozenset({429, 503}),
    "token": frozenset({429, 500, 502, 503, 504}),
}
#: A submit answered with one of these may have been processed: never resent, reported as unknown.
SUBMIT_OUTCOME_UNKNOWN_STATUSES = frozenset({500, 502, 504})
TOKEN_REFRESH_LEAD_SECONDS = 60.0
MAX_MESSAGE_CHARS = 500


class LimioConnectionOptions(BaseModel):
    """Connection extras (and hook arguments of the same names). All optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_path: str = Field("/api", description="Path of the API on the tenant host.")
    token_path: str = Field("/oauth2/token", description="Path of the OAuth2 token endpoint, on the tenant root.")
    token_auth: Literal["body", "basic"] = Field(
        "body", description="How the client credentials are sent to the token endpoint: form body or HTTP Basic."
    )
    timeout: float = Field(30.0, gt=0, description="Seconds to wait for Limio's answer (read timeout).")
    connect_timeout: float = Field(10.0, gt=0, description="Seconds to wait for a connection.")
    retry_limit: int = Field(4, ge=0, le=20, description="Retries after the first attempt, where retrying is safe.")
    retry_backoff: float = Field(1.0, ge=0, description="First backoff in seconds; doubles each retry, with jitter.")
    retry_max_backoff: float = Field(30.0, ge=0, description="Longest backoff between two attempts, in seconds.")
    retry_after_max: float = Field(60.0, ge=0, description="Longest Retry-After honoured, in seconds.")
    verify: bool | str = Field(True, description="TLS verification: true, false, or a CA bundle path.")
    proxies: dict[str, str] | None = Field(None, description="requests-style proxies, e.g. {'https': 'http://proxy:3128'}.")
    order_link_template: str | None = Field(
        None,
        description="URL of an order for the 'Limio order' link, with {order_id}; default: the order in the Objects API.",
    )


    @field_validator("verify", mode="before")
    @classmethod
    def _verify_flag(cls, value: Any) -> Any:
        """Form fields arrive as text: "true"/"false" are flags, anything else a CA bundle path."""
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        return value


OPTION_NAMES = tuple(LimioConnectionOptions.model_fields)


@dataclass(frozen=True)
class _Settings:
    api_url: str
    token_url: str
    client_id: str
    client_secret: str
    options: LimioConnectionOptions


@dataclass
class _Token:
    value: str
    expires_at: float


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (a number or an HTTP date); ``None`` if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _limio_message(response: requests.Response) -> str:
    """Limio's own ``message`` from an error body, shortened; never the body itself (the hook also
    scrubs its secrets from it, in case Limio echoes them)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    message = ""
    if isinstance(body, dict):
        for key in ("message", "error_description", "error"):
            if isinstance(body.get(key), str):
                message = body[key]
                break
    message = message or response.reason or "no message"
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "..."


class LimioHook(BaseHook):
    """Talks to Limio's Orders and Objects APIs with OAuth2 client credentials.

    The connection is read lazily, once; the token is cached and refreshed before it expires; each call
    is retried only where retrying cannot duplicate an order.

    :param limio_conn_id: the Airflow connection: host = tenant host, login = client id,
        password = client secret, extras = :class:`LimioConnectionOptions`.
    :param sleep: how to wait between retries (injectable for tests).
    :param clock: a monotonic clock in seconds, for token expiry (injectable for tests).
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
        self._token: _Token | None = None
        self._token_lock = threading.Lock()
        self.token_requests = 0

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """The connection form on Airflow 2 (Airflow 3 reads it from the provider info)."""
        from limio_provider.get_provider_info import UI_FIELD_BEHAVIOUR

        return UI_FIELD_BEHAVIOUR

    # -- configuration ------------------------------------------------------------------------------

    @cached_property
    def settings(self) -> _Settings:
        """The connection, read once and checked; raises :class:`LimioConfigError` if unusable."""
        conn = self.get_connection(self.limio_conn_id)
        if conn.password:
            mask_secret(conn.password)
        if not conn.login or not conn.password:
            raise LimioConfigError(
                f"connection {self.limio_conn_id!r} needs the client id (login) and client secret (password)"
            )
        extras = {k.removeprefix("extra__limio__"): v for k, v in (conn.extra_dejson or {}).items()}
        extras = {k: v for k, v in extras.items() if v not in ("", None)}
        try:
            options = LimioConnectionOptions(**{**extras, **self._overrides})
        except ValidationError as exc:
            problems = []
            for error in exc.errors(include_url=False, include_input=False):
                name = ".".join(str(part) for part in error["loc"])
                if error["type"] == "extra_forbidden":
                    problems.append(f"unknown extra {name!r}")
                else:
                    problems.append(f"{name}: {error['msg']}")
            raise LimioConfigError(
                f"connection {self.limio_conn_id!r}: {'; '.join(problems)}. "
                f"Accepted extras: {', '.join(OPTION_NAMES)}"
            ) from None

        host = (conn.host or "").strip()
        if not host:
            raise LimioConfigError(f"connection {self.limio_conn_id!r} needs the tenant host, e.g. acme.prod.limio.com")
        parts = urlsplit(host if "://" in host else f"https://{host}")
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise LimioConfigError(f"connection {self.limio_conn_id!r}: host must be a tenant host, got {host!r}")
        if parts.path.strip("/") or parts.query:
            raise LimioConfigError(
                f"connection {self.limio_conn_id!r}: host must be the tenant host only (no path); "
                "set the 'base_path' extra to change the API path"
            )
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise LimioConfigError(
                f"connection {self.limio_conn_id!r}: refusing to send credentials over plain http:// to "
                f"{parts.hostname}; use https:// (http:// is allowed only for loopback hosts)"
            )
        port = conn.port or parts.port
        netloc = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        root = f"{parts.scheme}://{netloc}{f':{port}' if port else ''}"
        return _Settings(
            api_url=root + "/" + options.base_path.strip("/"),
            token_url=root + "/" + options.token_path.lstrip("/"),
            client_id=conn.login,
            client_secret=conn.password,
            options=options,
        )

    @cached_property
    def session(self) -> requests.Session:
        """One keep-alive session per hook.

        The hook talks to one host, so the environment's proxy settings (``HTTPS_PROXY``, ``NO_PROXY``...) and
        CA bundle (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``) are read once here rather than by requests on
        every call, which scans the whole environment each time; the connection's extras win over them.
        """
        options = self.settings.options
        session = requests.Session()
        session.trust_env = False
        session.headers["User-Agent"] = f"airflow-provider-limio/{__version__} requests/{requests.__version__}"
        session.headers["Accept"] = "application/json"
        session.proxies.update(requests.utils.get_environ_proxies(self.settings.api_url))
        session.proxies.update(options.proxies or {})
        env_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        session.verify = env_bundle if options.verify is True and env_bundle else options.verify
        return session

    def order_url(self, order_id: str) -> str:
        """Where a person finds the order: ``order_link_template`` or the order's Objects API URL."""
        template = self.settings.options.order_link_template
        if template:
            return template.format(order_id=quote(order_id, safe=""))
        return f"{self.settings.api_url}/objects/limio/orders/{quote(order_id, safe='')}"

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
        response = self._send("POST", settings.token_url, "token", data=data, auth=auth)
        if response.status_code >= 400:
            raise LimioAuthError(
                f"Limio refused the client credentials of connection {self.limio_conn_id!r} "
                f"(HTTP {response.status_code}: {self._scrub(_limio_message(response))})",
                status=response.status_code,
            )
        body = self._json(response, "POST", settings.token_url, "token")
        access_token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(access_token, str) or not access_token:
            raise LimioAuthError("Limio's token endpoint answered without an access_token", status=response.status_code)
        mask_secret(access_token)
        try:
            lifetime = float(body.get("expires_in") or 3600)
        except (TypeError, ValueError):
            lifetime = 3600.0
        lead = min(TOKEN_REFRESH_LEAD_SECONDS, lifetime / 2)
        return _Token(access_token, self._clock() + lifetime - lead)

    def _scrub(self, text: str) -> str:
        """``text`` with the client secret and the current token replaced by ``***``."""
        secrets = [self.settings.client_secret, self._token.value if self._token else ""]
        for secret in filter(None, secrets):
            text = text.replace(secret, "***")
        return text

    def _discard_token(self, value: str) -> None:
        with self._token_lock:
            if self._token is not None and self._token.value == value:
                self._token = None

    # -- HTTP ---------------------------------------------------------------------------------------

    def _send(self, method: str, url: str, kind: CallKind, **kwargs: Any) -> requests.Response:
        """One HTTP exchange; transport failures become typed errors marked retryable where safe."""
        options = self.settings.options
        try:
            response = self.session.request(
                method, url, timeout=(options.connect_timeout, options.timeout), **kwargs
            )
        except (requests.ConnectTimeout, requests.exceptions.SSLError) as exc:
            raise self._not_sent(method, url, exc) from None
        except requests.ConnectionError as exc:
            reason = getattr(exc.args[0], "reason", None) if exc.args else None
            if isinstance(reason, NewConnectionError):
                raise self._not_sent(method, url, exc) from None
            raise self._lost_answer(method, url, kind, exc, kwargs.get("json")) from None
        except requests.Timeout as exc:
            raise self._lost_answer(method, url, kind, exc, kwargs.get("json")) from None
        except requests.RequestException as exc:
            raise LimioError(f"Limio {method} {self._path(url)} failed: {type(exc).__name__}") from None
        status = response.status_code
        if status < 400 or status == 401 or (kind == "token" and status < 500 and status != 429):
            return response  # 401: the caller refreshes the token once and replays; token 4xx: bad credentials
        raise self._http_error(method, url, kind, response, kwargs.get("json"))

    def _path(self, url: str) -> str:
        return urlsplit(url).path

    def _not_sent(self, method: str, url: str, exc: Exception) -> LimioServerError:
        error = LimioServerError(f"could not connect to Limio for {method} {self._path(url)}: {type(exc).__name__}")
        error.retryable = True
        return error

    def _lost_answer(
        self, method: str, url: str, kind: CallKind, exc: Exception, body: Any
    ) -> LimioError:
        what = f"Limio {method} {self._path(url)}: the request was sent but no answer came back ({type(exc).__name__})"
        if kind == "submit":
            return self._outcome_unknown(what, body, None)
        error = LimioServerError(what)
        error.retryable = True
        return error

    def _outcome_unknown(self, what: str, body: Any, status: int | None) -> LimioOutcomeUnknownError:
        external_id = body.get("external_id") if isinstance(body, dict) else None
        return LimioOutcomeUnknownError(
            f"{what}. Limio may or may not have created the order with external_id {external_id!r}; it was "
            "not resent. Look it up by external_id before submitting again.",
            external_id=external_id,
            status=status,
        )

    def _http_error(
        self, method: str, url: str, kind: CallKind, response: requests.Response, body: Any
    ) -> LimioError:
        status = response.status_code
        what = f"Limio {method} {self._path(url)} answered HTTP {status}: {self._scrub(_limio_message(response))}"
        retry_after = _parse_retry_after(response.headers.get("Retry-After"))
        error: LimioResponseError
        if kind == "submit" and status in SUBMIT_OUTCOME_UNKNOWN_STATUSES:
            return self._outcome_unknown(what, body, status)
        if status == 403:
            error = LimioAuthError(what, status=status)
        elif status == 429:
            error = LimioRateLimitedError(what, status=status, retry_after=retry_after)
        elif status == 404 and method == "GET":
            error = LimioNotFoundError(what, status=status)
        elif status < 500:
            error = LimioOrderRejectedError(what, status=status)
        else:
            error = LimioServerError(what, status=status, retry_after=retry_after)
        error.retryable = status in RETRY_STATUSES[kind]
        return error

    def _json(self, response: requests.Response, method: str, url: str, kind: CallKind, body: Any = None) -> Any:
        try:
            return response.json()
        except ValueError:
            what = f"Limio {method} {self._path(url)} answered HTTP {response.status_code} with a body that is not JSON"
            if kind == "submit":
                raise self._outcome_unknown(what, body, response.status_code) from None
            raise LimioServerError(what, status=response.status_code) from None

    def _backoff(self, error: LimioError, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt``: Limio's ``Retry-After`` (capped), else an
        exponential backoff with full jitter."""
        options = self.settings.options
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return min(retry_after, options.retry_after_max)
        return random.uniform(0, min(options.retry_max_backoff, options.retry_backoff * 2 ** (attempt - 1)))

    def request(
        self, method: str, path: str, kind: CallKind, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        """Call ``{api_url}{path}`` with the bearer token and the retry rules of ``kind``; return its JSON."""
        url = self.settings.api_url + path
        attempts = self.settings.options.retry_limit + 1
        for attempt in range(1, attempts + 1):
            try:
                return self._authorized_call(method, url, kind, json, params)
            except LimioError as error:
                if not error.retryable or attempt == attempts:
                    raise
                wait = self._backoff(error, attempt)
                self.log.warning("%s (attempt %d of %d); retrying in %.1f s", error, attempt, attempts, wait)
                self._sleep(wait)
        raise AssertionError("unreachable")

    def _authorized_call(self, method: str, url: str, kind: CallKind, body: Any, params: dict[str, Any] | None) -> Any:
        token = self.get_token()
        response = self._send(method, url, kind, json=body, params=params, headers={"Authorization": f"Bearer {token}"})
        if response.status_code == 401:
            self._discard_token(token)
            token = self.get_token()
            response = self._send(
                method, url, kind, json=body, params=params, headers={"Authorization": f"Bearer {token}"}
            )
            if response.status_code == 401:
                raise LimioAuthError(
                    f"Limio {method} {self._path(url)} answered HTTP 401 with a fresh token: "
                    f"{self._scrub(_limio_message(response))}",
                    status=401,
                )
        self.log.debug("Limio %s %s -> HTTP %s", method, self._path(url), response.status_code)
        return self._json(response, method, url, kind, body)

    # -- Limio calls --------------------------------------------------------------------------------

    def preview_order(self, order: OrderBase | dict[str, Any], *, allow_unmodelled: bool = False) -> PreviewResult:
        """Preview an order (``POST /order/preview``); nothing is created.

        :param order: the order body (a dict as Limio spells it, or a model), validated before sending.
        :param allow_unmodelled: accept an ``order_type`` this provider does not model.
        """
        body = order_body(order, allow_unmodelled=allow_unmodelled)
        return PreviewResult.model_validate(self.request("POST", "/order/preview", "read", json=body))

    def submit_order(self, order: OrderBase | dict[str, Any], *, allow_unmodelled: bool = False) -> OrderResult:
        """Submit an order (``POST /order``). Never resent when the outcome is unknown.

        :raises LimioOutcomeUnknownError: the order may have been created; reconcile by ``external_id``.
        """
        body = order_body(order, allow_unmodelled=allow_unmodelled)
        return OrderResult.model_validate(self.request("POST", "/order", "submit", json=body))

    def submit_admin_order(
        self,
        order: OrderBase | dict[str, Any],
        *,
        partner: str | dict[str, Any] | BaseModel | None = None,
        allow_unmodelled: bool = False,
    ) -> OrderResult:
        """Submit an order with management credentials on behalf of a partner (``POST /admin/order``).

        :param partner: the partner organisation, sent as ``forPartner``: an id string or an object.
            May be omitted when the order already carries ``forPartner``.
        """
        body = order_body(order, allow_unmodelled=allow_unmodelled)
        if partner is not None and "forPartner" in body:
            raise LimioValidationError("invalid admin order: give the partner either as 'partner' or in forPartner, not both")
        if partner is None and "forPartner" not in body:
            raise LimioValidationError("invalid admin order:\n  - forPartner: required (pass partner=...)")
        partner_value = partner if partner is not None else body["forPartner"]
        if isinstance(partner_value, BaseModel):
            partner_value = partner_value.model_dump(mode="json", by_alias=True, exclude_unset=True)
        body["forPartner"] = parse_partner(partner_value).to_json_dict()
        return OrderResult.model_validate(self.request("POST", "/admin/order", "submit", json=body))

    def get_order(self, order_id: str) -> OrderObject:
        """Read an order through the Objects API (``GET /objects/limio/orders/{id}``)."""
        if not isinstance(order_id, str) or not order_id.strip():
            raise LimioValidationError(f"invalid order_id: expected a non-empty string, got {order_id!r}")
        path = "/objects/limio/orders/" + quote(order_id, safe="")
        return OrderObject.model_validate(self.request("GET", path, "read"))

    def list_orders(self, *, page_size: int = 50, max_pages: int | None = None) -> Iterator[OrderObject]:
        """Yield orders (newest first, as Limio lists them), following the ``queryMore`` cursor.

        :param page_size: orders asked for per page (``limit``).
        :param max_pages: stop after this many pages (``None``: until the cursor runs out).
        """
        if not isinstance(page_size, int) or page_size < 1:
            raise LimioValidationError(f"invalid page_size: expected a positive integer, got {page_size!r}")
        params: dict[str, Any] = {"limit": page_size}
        pages = 0
        while max_pages is None or pages < max_pages:
            page = OrderPage.model_validate(self.request("GET", "/objects/limio/orders", "read", params=params))
            pages += 1
            yield from page.items
            if not page.queryMore:
                return
            params = {"limit": page_size, "queryMore": page.queryMore}

    def find_order(self, external_id: str, *, page_size: int = 100, max_pages: int = 5) -> OrderObject | None:
        """The newest order carrying ``external_id`` among the ``page_size * max_pages`` newest orders, or None.

        Limio documents no filter by ``external_id``, so this walks the order list newest first within a
        bounded budget: ``None`` means "not among the newest orders", not "never submitted".
        """
        if not isinstance(external_id, str) or not external_id:
            raise LimioValidationError(f"invalid external_id: expected a non-empty string, got {external_id!r}")
        return next(
            (o for o in self.list_orders(page_size=page_size, max_pages=max_pages) if o.external_id == external_id),
            None,
        )

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
