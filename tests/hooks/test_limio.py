"""LimioHook against the Limio emulator over real loopback HTTP."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from limio_provider.exceptions import (
    LimioAuthError,
    LimioConfigError,
    LimioNotFoundError,
    LimioOrderRejectedError,
    LimioOutcomeUnknownError,
    LimioRateLimitedError,
    LimioServerError,
    LimioValidationError,
)
from limio_provider.hooks.limio import LimioHook
from limio_provider.testing import Fault, LimioEmulator
from tests.helpers import calls, new_order, set_connection, set_no_proxy


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def hook(limio_emulator: LimioEmulator, sleeps: list[float], clock: FakeClock) -> LimioHook:
    return LimioHook(sleep=sleeps.append, clock=clock)


# -- tokens -----------------------------------------------------------------------------------------


def test_one_token_serves_many_calls(hook: LimioHook, limio_emulator: LimioEmulator) -> None:
    for i in range(12):
        hook.submit_order(new_order(f"EXT-{i}"))
    assert len(calls(limio_emulator, "/oauth2/token")) == 1
    assert len(limio_emulator.orders) == 12
    assert hook.token_requests == 1


def test_token_sent_in_body_by_default_and_basic_on_request(
    limio_emulator: LimioEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    LimioHook().get_token()
    set_connection(
        monkeypatch,
        "limio_basic",
        host=limio_emulator.url,
        login=limio_emulator.client_id,
        password=limio_emulator.client_secret,
        extra={"token_auth": "basic"},
    )
    LimioHook("limio_basic").get_token()
    body_call, basic_call = calls(limio_emulator, "/oauth2/token")
    assert body_call.body["client_id"] == limio_emulator.client_id
    assert body_call.body["grant_type"] == "client_credentials"
    assert "client_secret" not in basic_call.body and "client_id" not in basic_call.body
    assert [body_call.status, basic_call.status] == [200, 200]  # Basic was accepted: the body had no credentials


def test_token_refreshed_when_less_than_60s_remain(
    hook: LimioHook, limio_emulator: LimioEmulator, clock: FakeClock
) -> None:
    hook.submit_order(new_order("A"))
    clock.now += 3600 - 61
    hook.submit_order(new_order("B"))
    assert len(calls(limio_emulator, "/oauth2/token")) == 1
    clock.now += 2  # 59 s left
    hook.submit_order(new_order("C"))
    assert len(calls(limio_emulator, "/oauth2/token")) == 2


@pytest.mark.parametrize(
    ("expires_in", "cached", "said"),
    [
        ({}, True, None),  # absent: OAuth2 makes it optional, 3600 s
        ({"expires_in": 1800}, True, None),
        ({"expires_in": "1800"}, True, None),
        ({"expires_in": 0}, False, "expires_in=0, no time"),
        ({"expires_in": -5}, False, "expires_in=-5, no number of seconds"),
        ({"expires_in": float("nan")}, False, "expires_in=NaN, no number of seconds"),
        ({"expires_in": "soon"}, False, 'expires_in="soon", no number of seconds'),
        ({"expires_in": True}, False, "expires_in=true, no number of seconds"),
    ],
    ids=["absent", "1800", "1800-text", "zero", "negative", "nan", "text", "bool"],
)
def test_token_lifetimes_are_taken_as_given_and_nonsense_is_said_once(
    hook: LimioHook,
    limio_emulator: LimioEmulator,
    task_log: Callable[[], str],
    expires_in: dict[str, Any],
    cached: bool,
    said: str | None,
) -> None:
    """Issue 18: ``expires_in: 0`` was cached for an hour (``or 3600``); negative, NaN or text refetched on
    every call without a word."""
    body = {"access_token": "tok-lifetime", "token_type": "Bearer", **expires_in}
    limio_emulator.add_fault(Fault(route="token", action="process_then_garbage", body=body))
    task_log()
    for _ in range(3):
        assert hook.get_token() == "tok-lifetime"
    assert hook.token_requests == (1 if cached else 3)
    warnings = [line for line in task_log().splitlines() if "token endpoint" in line]
    if said is None:
        assert warnings == []
    else:
        assert len(warnings) == 1, warnings  # once per hook, not once per call
        assert said in warnings[0] and "connection 'limio_default'" in warnings[0]


@pytest.mark.parametrize("token", ["tok-secret-1\n", "tok secret", "tök-sécret"], ids=["newline", "space", "latin-1"])
def test_a_token_that_cannot_be_sent_is_a_configuration_error_and_nothing_is_sent(
    hook: LimioHook, limio_emulator: LimioEmulator, token: str
) -> None:
    """Issue 18: a token that cannot be put in a header was reported as "the request was sent" (an unknown
    outcome) with 0 bytes sent, and requests' error text carried ``Bearer <token>`` in its context."""
    body = {"access_token": token, "token_type": "Bearer", "expires_in": 3600}
    limio_emulator.add_fault(Fault(route="token", action="process_then_garbage", body=body))
    with pytest.raises(LimioConfigError, match="cannot be sent in an HTTP header") as excinfo:
        hook.submit_order(new_order("EXT-BAD-TOKEN"))
    assert not calls(limio_emulator, "/api/order")
    chain, error = [], excinfo.value
    while error is not None:
        chain.append(f"{error!r} {error}")
        error = error.__cause__ or error.__context__
    assert not any(token.strip() in text or "Bearer" in text for text in chain), chain


def test_a_token_request_never_waits_for_an_in_flight_slot(limio_emulator: LimioEmulator) -> None:
    """Threads holding every in-flight slot may wait for the token another thread is fetching: that request
    must not need a slot. (The batch campaign deadlocked here when a token expired with every slot busy.)"""
    hook = LimioHook(max_in_flight=1)
    limio_emulator.add_fault(Fault(route="token", action="latency_only", latency=0.5, times=1))
    fetching, tokens = threading.Event(), {}

    def fetch() -> None:  # holds the token lock for the 0.5 s Limio takes to answer
        fetching.set()
        tokens["fetcher"] = hook.get_token()

    def hold_the_slot_then_want_a_token() -> None:
        with hook.in_flight_slot():
            fetching.wait(5)
            time.sleep(0.2)  # the fetcher is inside the token lock by now
            tokens["slot holder"] = hook.get_token()

    threads = [threading.Thread(target=hold_the_slot_then_want_a_token, daemon=True)]
    threads.append(threading.Thread(target=fetch, daemon=True))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads), "deadlock: the token request waited for a slot"
    assert tokens["fetcher"] == tokens["slot holder"]
    assert len(calls(limio_emulator, "/oauth2/token")) == 1


def test_401_fetches_a_new_token_once_and_replays_once(hook: LimioHook, limio_emulator: LimioEmulator) -> None:
    hook.submit_order(new_order("A"))
    limio_emulator.revoke_tokens()
    result = hook.submit_order(new_order("B"))
    assert result.status == "submitted"
    assert [r.status for r in calls(limio_emulator, "/api/order")] == [200, 401, 200]
    assert len(calls(limio_emulator, "/oauth2/token")) == 2
    assert len(limio_emulator.orders_with_external_id("B")) == 1


def test_second_401_is_an_auth_error(hook: LimioHook, limio_emulator: LimioEmulator) -> None:
    limio_emulator.add_fault(Fault(route="order", action="status", status=401))
    with pytest.raises(LimioAuthError, match="401") as excinfo:
        hook.submit_order(new_order())
    assert excinfo.value.status == 401
    assert len(calls(limio_emulator, "/api/order")) == 2
    assert limio_emulator.orders == {}


def test_wrong_client_secret_is_an_auth_error_without_the_secret(
    limio_emulator: LimioEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "wrong-secret-7f3a9c"
    set_connection(monkeypatch, "limio_bad", host=limio_emulator.url, login="emulator-client", password=secret)
    with pytest.raises(LimioAuthError, match="refused the client credentials") as excinfo:
        LimioHook("limio_bad", sleep=lambda s: None).preview_order(new_order())
    assert secret not in str(excinfo.value)
    assert calls(limio_emulator, "/api/order/preview") == []


def test_token_and_secret_are_masked_and_never_logged(
    limio_emulator: LimioEmulator,
    sleeps: list[float],
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from airflow.providers.common.compat.sdk import redact

    caplog.set_level(logging.DEBUG)
    hook = LimioHook(sleep=sleeps.append, clock=clock, retry_limit=1)
    limio_emulator.add_fault(Fault(route="preview", action="status", status=503, times=1))
    hook.preview_order(new_order())
    limio_emulator.add_fault(Fault(route="order", action="status", status=400, message="bad offer"))
    with pytest.raises(LimioOrderRejectedError) as excinfo:
        hook.submit_order(new_order())
    token = hook.get_token()
    secret = limio_emulator.client_secret
    assert redact(f"token={token}") == "token=***"
    assert redact(f"secret={secret}") == "secret=***"
    logged = caplog.text + "".join(capfd.readouterr())  # stdlib logging and Airflow's structlog output
    for text in (logged, str(excinfo.value), repr(excinfo.value)):
        assert token not in text
        assert secret not in text
    assert "retrying" in logged  # the retry was logged, without the secrets


# -- retries ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_preview_retries_transient_statuses(
    hook: LimioHook, limio_emulator: LimioEmulator, sleeps: list[float], status: int
) -> None:
    limio_emulator.add_fault(Fault(route="preview", action="status", status=status, times=2))
    preview = hook.preview_order(new_order())
    assert preview.total_due() > 0
    assert [r.status for r in calls(limio_emulator, "/api/order/preview")] == [status, status, 200]
    assert len(sleeps) == 2
    assert sleeps[1] <= 2 * hook.settings.options.retry_backoff * 2


def test_retry_after_is_honoured_and_capped(
    hook: LimioHook, limio_emulator: LimioEmulator, sleeps: list[float]
) -> None:
    limio_emulator.add_fault(Fault(route="preview", action="status", status=429, retry_after=7, times=1))
    limio_emulator.add_fault(Fault(route="preview", action="status", status=503, retry_after=900, times=1))
    hook.preview_order(new_order())
    assert sleeps == [7.0, hook.settings.options.retry_after_max]


def test_preview_retries_a_dropped_connection_and_a_read_timeout(
    limio_emulator: LimioEmulator, sleeps: list[float]
) -> None:
    hook = LimioHook(sleep=sleeps.append, timeout=1.0)
    limio_emulator.add_fault(Fault(route="preview", action="drop", times=1))
    limio_emulator.add_fault(Fault(route="preview", action="latency_only", latency=2.5, times=1))
    hook.preview_order(new_order())
    assert len(calls(limio_emulator, "/api/order/preview")) == 3
    assert len(sleeps) == 2


def test_retries_are_bounded(limio_emulator: LimioEmulator, sleeps: list[float]) -> None:
    hook = LimioHook(sleep=sleeps.append, retry_limit=2)
    limio_emulator.add_fault(Fault(route="get_order", action="status", status=503))
    with pytest.raises(LimioServerError, match="503") as excinfo:
        hook.get_order("order-123")
    assert excinfo.value.status == 503
    assert len(calls(limio_emulator, "/api/objects/limio/orders/order-123")) == 3
    assert len(sleeps) == 2


def test_rate_limit_exhausted_is_typed(limio_emulator: LimioEmulator, sleeps: list[float]) -> None:
    hook = LimioHook(sleep=sleeps.append, retry_limit=1)
    limio_emulator.add_fault(Fault(route="preview", action="status", status=429, retry_after=1))
    with pytest.raises(LimioRateLimitedError):
        hook.preview_order(new_order())
    assert sleeps == [1.0]


@pytest.mark.parametrize("status", [429, 503])
def test_submit_retries_only_when_the_order_was_not_processed(
    hook: LimioHook, limio_emulator: LimioEmulator, sleeps: list[float], status: int
) -> None:
    limio_emulator.add_fault(Fault(route="order", action="status", status=status, times=1))
    result = hook.submit_order(new_order("EXT-R"))
    assert result.external_id == "EXT-R"
    assert len(limio_emulator.orders_with_external_id("EXT-R")) == 1
    assert len(sleeps) == 1


def test_submit_retries_a_refused_connection(sleeps: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    set_connection(monkeypatch, "limio_down", host=f"http://127.0.0.1:{port}", login="id", password="secret-x")
    with pytest.raises(LimioServerError, match="could not connect"):
        LimioHook("limio_down", sleep=sleeps.append, retry_limit=2).submit_order(new_order())
    assert len(sleeps) == 2


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        (Fault(route="order", action="process_then_status", status=502), 502),
        (Fault(route="order", action="process_then_status", status=504), 504),
        (Fault(route="order", action="process_then_status", status=500), 500),
        (Fault(route="order", action="process_then_hang", latency=3.0), None),
    ],
    ids=["502", "504", "500", "read-timeout"],
)
def test_ambiguous_submit_is_never_resent(
    limio_emulator: LimioEmulator, sleeps: list[float], fault: Fault, status: int | None
) -> None:
    hook = LimioHook(sleep=sleeps.append, timeout=1.5)
    limio_emulator.add_fault(fault)
    with pytest.raises(LimioOutcomeUnknownError, match="EXT-AMB") as excinfo:
        hook.submit_order(new_order("EXT-AMB"))
    assert excinfo.value.external_id == "EXT-AMB"
    assert excinfo.value.status == status
    assert len(calls(limio_emulator, "/api/order")) == 1
    assert len(limio_emulator.orders_with_external_id("EXT-AMB")) == 1
    assert sleeps == []


def test_dropped_submit_is_outcome_unknown_not_resent(
    hook: LimioHook, limio_emulator: LimioEmulator, sleeps: list[float]
) -> None:
    limio_emulator.add_fault(Fault(route="order", action="drop", times=1))
    with pytest.raises(LimioOutcomeUnknownError):
        hook.submit_order(new_order("EXT-D"))
    assert len(calls(limio_emulator, "/api/order")) == 1
    assert sleeps == []


# -- errors -----------------------------------------------------------------------------------------


def test_rejected_order_carries_limio_message_and_status(hook: LimioHook, limio_emulator: LimioEmulator) -> None:
    limio_emulator.add_fault(Fault(route="order", action="status", status=422, message="Offer is not published"))
    with pytest.raises(LimioOrderRejectedError, match="Offer is not published") as excinfo:
        hook.submit_order(new_order())
    assert excinfo.value.status == 422
    assert len(calls(limio_emulator, "/api/order")) == 1


def test_emulator_validation_message_reaches_the_user(hook: LimioHook, limio_emulator: LimioEmulator) -> None:
    # Sent raw, bypassing client validation, to prove the server's 400 message is surfaced.
    with pytest.raises(LimioOrderRejectedError, match="checkoutId") as excinfo:
        hook.request("POST", "/order", "submit", json={**new_order(), "checkoutId": ""})
    assert excinfo.value.status == 400


def test_unknown_order_is_not_found(hook: LimioHook) -> None:
    with pytest.raises(LimioNotFoundError) as excinfo:
        hook.get_order("order-missing")
    assert excinfo.value.status == 404


def test_server_error_on_a_read_is_not_retried(
    hook: LimioHook, limio_emulator: LimioEmulator, sleeps: list[float]
) -> None:
    limio_emulator.add_fault(Fault(route="get_order", action="status", status=500))
    with pytest.raises(LimioServerError):
        hook.get_order("order-1")
    assert sleeps == []


def test_forbidden_is_an_auth_error(hook: LimioHook, limio_emulator: LimioEmulator) -> None:
    limio_emulator.add_fault(Fault(route="admin_order", action="status", status=403, message="Forbidden"))
    with pytest.raises(LimioAuthError, match="403"):
        hook.submit_admin_order(new_order(), partner="partner-1")


# -- calls ------------------------------------------------------------------------------------------


def test_submit_then_read_back(hook: LimioHook, limio_emulator: LimioEmulator) -> None:
    result = hook.submit_order(new_order("EXT-RB"))
    assert result.id and result.id.startswith("order-")
    assert result.status == "submitted"
    assert result.model_dump(mode="json")["external_id"] == "EXT-RB"
    order = hook.get_order(result.id)
    assert order.id == result.id
    assert order.external_id == "EXT-RB"
    assert order.order_type == "new"


def test_unknown_fields_are_sent_untouched(hook: LimioHook, limio_emulator: LimioEmulator) -> None:
    hook.submit_order(new_order("EXT-U", customFields={"crm": {"id": 7}}, orderDate="2026-01-01T00:00:00Z"))
    (sent,) = calls(limio_emulator, "/api/order")
    assert sent.body["customFields"] == {"crm": {"id": 7}}
    assert sent.body["orderDate"] == "2026-01-01T00:00:00Z"
    assert "process_immediately" not in sent.body  # defaults are Limio's, not ours
    assert sent.headers["User-Agent"].startswith("airflow-provider-limio/")


def test_admin_order_sends_for_partner(limio_emulator: LimioEmulator) -> None:
    hook = LimioHook("limio_admin")  # management credentials
    result = hook.submit_admin_order(new_order("EXT-P"), partner="partner-org-1")
    (sent,) = calls(limio_emulator, "/api/admin/order")
    assert sent.body["forPartner"] == {"id": "partner-org-1"}
    assert result.external_id == "EXT-P"
    with pytest.raises(LimioValidationError, match="forPartner"):
        hook.submit_admin_order(new_order("EXT-Q"))


def test_admin_order_with_the_ordinary_client_is_refused_and_creates_nothing(limio_emulator: LimioEmulator) -> None:
    with pytest.raises(LimioAuthError, match="HTTP 403: Forbidden: /admin/order needs management credentials") as info:
        LimioHook().submit_admin_order(new_order("EXT-NOT-ADMIN"), partner="partner-org-1")
    assert info.value.status == 403 and not info.value.retryable
    assert limio_emulator.orders_with_external_id("EXT-NOT-ADMIN") == []  # refused: nothing was created


def test_process_immediately_returns_the_final_status(hook: LimioHook) -> None:
    assert hook.submit_order(new_order("EXT-I", process_immediately=True)).status == "complete"


def test_list_orders_follows_the_cursor(hook: LimioHook, limio_emulator: LimioEmulator) -> None:
    ids = [hook.submit_order(new_order(f"EXT-L{i}")).id for i in range(7)]
    listed = [o.id for o in hook.list_orders(page_size=3)]
    assert listed == list(reversed(ids))
    assert len(calls(limio_emulator, "/api/objects/limio/orders")) == 3
    assert [o.id for o in hook.list_orders(page_size=3, max_pages=1)] == listed[:3]


def test_object_pages_resume_at_a_cursor_and_read_one_object(hook: LimioHook, limio_emulator: LimioEmulator) -> None:
    ids = [hook.submit_order(new_order(f"EXT-P{i}")).id for i in range(5)]
    (first, cursor), *_ = hook.object_pages("orders", page_size=2, max_pages=1)
    assert [item["id"] for item in first] == ids[::-1][:2] and cursor
    rest = [item["id"] for items, _ in hook.object_pages("orders", page_size=2, cursor=cursor) for item in items]
    assert rest == ids[::-1][2:]  # from the cursor on: nothing read twice, nothing skipped
    assert hook.get_object("orders", ids[0])["external_id"] == "EXT-P0"


def test_objects_calls_refuse_a_type_or_id_limio_does_not_have(hook: LimioHook, limio_emulator: LimioEmulator) -> None:
    with pytest.raises(LimioValidationError, match="invalid object_type: 'order' is not one of address, customers"):
        next(hook.object_pages("order"))
    for bad in ("", "None", None):
        with pytest.raises(LimioValidationError, match="invalid object id"):
            hook.get_related("orders", bad)  # type: ignore[arg-type]
    assert limio_emulator.requests == []


def test_processing_errors_name_each_failed_plugin(hook: LimioHook, limio_emulator: LimioEmulator) -> None:
    """The emulator's "processed, billing failed": the order completes, its process event says billing failed."""
    from limio_provider.exceptions import LimioProcessingFailedError

    limio_emulator.add_fault(Fault(route="order", action="billing_fails", external_id="EXT-PE-BF"))
    failed = hook.submit_order(new_order("EXT-PE-BF", process_immediately=True))
    billed = hook.submit_order(new_order("EXT-PE-OK", process_immediately=True))
    assert failed.status == billed.status == "complete"
    (error,) = hook.processing_errors(str(failed.id))
    assert error.startswith("zuora: ")
    assert hook.processing_errors(str(billed.id)) == []
    hook.raise_for_processing(str(billed.id))
    with pytest.raises(LimioProcessingFailedError) as info:
        hook.raise_for_processing(str(failed.id), "complete")
    assert info.value.errors == [error] and info.value.order_id == failed.id
    assert "do not submit it again" in str(info.value)


def test_connection_test_reports_success_and_failure(
    limio_emulator: LimioEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok, message = LimioHook().test_connection()
    assert ok, message
    assert "token issued" in message
    set_connection(monkeypatch, "limio_bad", host=limio_emulator.url, login="x", password="s3cr3t-value")
    ok, message = LimioHook("limio_bad").test_connection()
    assert not ok
    assert "s3cr3t-value" not in message


# -- input and configuration are refused before any network call --------------------------------------


@pytest.mark.parametrize(
    ("order", "field"),
    [
        ({"order_type": "nwe"}, "order_type"),
        ({**new_order(), "orderItems": []}, "orderItems"),
        ({**new_order(), "payment": {"zuora": {}}}, "payment.type"),
        ({**new_order(), "orderDate": "tomorrow"}, "orderDate"),
        ({"order_type": "cancel_subscription"}, "forSubscription"),
        ("not an order", "JSON object"),
    ],
)
def test_bad_orders_are_refused_before_sending(
    hook: LimioHook, limio_emulator: LimioEmulator, order: Any, field: str
) -> None:
    for call in (hook.preview_order, hook.submit_order):
        with pytest.raises(LimioValidationError, match=field.replace(".", r"\.")):
            call(order)
    assert limio_emulator.requests == []


def test_plain_http_is_refused_for_remote_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "limio_http", host="http://acme.prod.limio.com", login="id", password="pw")
    with pytest.raises(LimioConfigError, match="plain http"):
        LimioHook("limio_http").submit_order(new_order())


def test_unknown_extras_are_refused_with_the_accepted_list(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(
        monkeypatch, "limio_x", host="acme.prod.limio.com", login="id", password="pw", extra={"X-Api-Key": "k"}
    )
    with pytest.raises(LimioConfigError, match="unknown extra 'X-Api-Key'.*Accepted extras: scheme, base_path"):
        LimioHook("limio_x").get_token()
    set_connection(monkeypatch, "limio_x", host="acme.prod.limio.com", login="id", password="pw", extra={"timout": 3})
    with pytest.raises(LimioConfigError, match=r"unknown extra 'timout' \(did you mean 'timeout'\?\)"):
        LimioHook("limio_x").get_token()
    with pytest.raises(LimioConfigError, match="unknown LimioHook option"):
        LimioHook(tiemout=3)


def test_the_connections_port_is_used_and_wins_over_a_port_in_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "limio_port", host="acme.prod.limio.com", port=9443, login="id", password="pw")
    assert LimioHook("limio_port").settings.api_url == "https://acme.prod.limio.com:9443/api"
    set_connection(monkeypatch, "limio_both", host="acme.prod.limio.com:8443", port=9443, login="id", password="pw")
    assert LimioHook("limio_both").settings.token_url == "https://acme.prod.limio.com:9443/oauth2/token"
    set_connection(monkeypatch, "limio_host", host="acme.prod.limio.com:8443", login="id", password="pw")
    assert LimioHook("limio_host").settings.api_url == "https://acme.prod.limio.com:8443/api"


@pytest.mark.parametrize(
    ("host", "port", "tenant"),
    [
        ("acme.prod.limio.com", None, "acme.prod.limio.com"),
        ("Acme.Prod.Limio.com.", 443, "acme.prod.limio.com"),
        ("https://ACME.prod.limio.com:443/", None, "acme.prod.limio.com"),
        ("acme.prod.limio.com", 8443, "acme.prod.limio.com:8443"),
        ("http://127.0.0.1:8765", None, "localhost:8765"),
        ("http://localhost", 8765, "localhost:8765"),
        ("http://[::1]:8765", None, "localhost:8765"),
        ("http://localhost:80", None, "localhost"),
    ],
)
def test_one_tenant_name_however_the_host_is_spelt(
    monkeypatch: pytest.MonkeyPatch, host: str, port: int | None, tenant: str
) -> None:
    """The order ledger's name for the tenant: a port in the Port field or a capital letter is no new tenant."""
    set_connection(monkeypatch, "limio_t", host=host, port=port, login="id", password="pw")
    assert LimioHook("limio_t").settings.tenant == tenant
    set_connection(monkeypatch, "limio_t", host=host, port=port, login="id", password="pw", extra={"tenant": " Acme "})
    assert LimioHook("limio_t").settings.tenant == "acme"  # the extra wins: one tenant behind two host names
    set_connection(monkeypatch, "limio_t", host=host, port=port, login="id", password="pw", extra={"tenant": "a/b"})
    with pytest.raises(LimioConfigError, match="tenant: a tenant name is a non-empty line without '/'"):
        _ = LimioHook("limio_t").settings


def test_host_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "limio_us", host="acme.prod-us.limio.com", login="id", password="pw")
    settings = LimioHook("limio_us").settings
    assert settings.api_url == "https://acme.prod-us.limio.com/api"
    assert settings.token_url == "https://acme.prod-us.limio.com/oauth2/token"
    set_connection(
        monkeypatch,
        "limio_s",
        host="https://acme-sandbox.prod.limio.com/",
        login="id",
        password="pw",
        extra={"base_path": "/api/v2", "timeout": "12.5"},
    )
    settings = LimioHook("limio_s").settings
    assert settings.api_url == "https://acme-sandbox.prod.limio.com/api/v2"
    assert settings.options.timeout == 12.5
    set_connection(
        monkeypatch,
        "limio_t",
        host="acme.prod.limio.com:8443",
        login="id",
        password="pw",
        extra={"extra__limio__verify": "false", "extra__limio__retry_limit": "", "token_auth": "basic"},
    )
    settings = LimioHook("limio_t").settings  # Airflow 2 form fields: prefixed, text, empty meaning unset
    assert settings.api_url == "https://acme.prod.limio.com:8443/api"
    assert settings.options.verify is False
    assert settings.options.retry_limit == 4
    assert settings.options.token_auth == "basic"


def test_constructing_a_hook_does_no_io() -> None:
    hook = LimioHook("no_such_connection")  # no connection exists: reading it would fail
    assert hook.limio_conn_id == "no_such_connection"
    with pytest.raises(Exception, match="no_such_connection"):
        hook.settings  # noqa: B018 - reading it raises


def test_environment_proxies_and_ca_bundle_are_read_once_and_extras_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    set_no_proxy(monkeypatch, "")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/corporate.pem")
    set_connection(monkeypatch, "limio_p", host="acme.prod.limio.com", login="id", password="pw")
    session = LimioHook("limio_p").session
    assert session.proxies["https"] == "http://proxy.internal:3128"
    assert session.verify == "/etc/ssl/corporate.pem"
    assert session.trust_env is False  # requests need not scan the environment again on every call

    set_no_proxy(monkeypatch, "acme.prod.limio.com")
    assert "https" not in LimioHook("limio_p").session.proxies
    set_connection(
        monkeypatch,
        "limio_q",
        host="acme.prod.limio.com",
        login="id",
        password="pw",
        extra={"proxies": {"https": "http://other:8080"}, "verify": False},
    )
    session = LimioHook("limio_q").session
    assert session.proxies["https"] == "http://other:8080"
    assert session.verify is False


@pytest.mark.parametrize(("header", "expected"), [("7", 7.0), ("soon", None), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)])
def test_retry_after_forms(
    hook: LimioHook, limio_emulator: LimioEmulator, sleeps: list[float], header: str, expected: float | None
) -> None:
    limio_emulator.add_fault(Fault(route="preview", action="status", status=429, retry_after=header, times=1))
    hook.preview_order(new_order())
    if expected is None:  # unreadable: the ordinary backoff applies
        assert 0 <= sleeps[0] <= hook.settings.options.retry_backoff
    else:
        assert sleeps == [expected]


def test_a_secret_echoed_by_limio_is_scrubbed_from_the_error(hook: LimioHook, limio_emulator: LimioEmulator) -> None:
    secret = limio_emulator.client_secret
    limio_emulator.add_fault(Fault(route="order", action="status", status=400, message=f"bad client {secret}"))
    with pytest.raises(LimioOrderRejectedError) as excinfo:
        hook.submit_order(new_order())
    assert secret not in str(excinfo.value)
    assert "bad client ***" in str(excinfo.value)


def test_the_order_link_is_the_template_and_nothing_without_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # Limio's API URL for the order would answer a browser 401: no link rather than one that cannot open.
    set_connection(monkeypatch, "limio_link", host="acme.prod.limio.com", login="id", password="pw")
    assert LimioHook("limio_link").order_url("order-1") is None
    set_connection(
        monkeypatch,
        "limio_link",
        host="acme.prod.limio.com",
        login="id",
        password="pw",
        extra={"order_link_template": "https://app.example/orders/{order_id}"},
    )
    assert LimioHook("limio_link").order_url("order/1") == "https://app.example/orders/order%2F1"


def test_the_uri_form_reaches_a_loopback_emulator_with_the_scheme_extra(
    monkeypatch: pytest.MonkeyPatch, limio_emulator: LimioEmulator
) -> None:
    netloc = limio_emulator.url.removeprefix("http://")
    uri = f"limio://emulator-client:emulator-secret@{netloc}"
    monkeypatch.setenv("AIRFLOW_CONN_LIMIO_URI", uri)  # no scheme: https, which a plain-http server cannot answer
    assert LimioHook("limio_uri").settings.api_url == f"https://{netloc}/api"
    monkeypatch.setenv("AIRFLOW_CONN_LIMIO_URI", f"{uri}?scheme=http")
    hook = LimioHook("limio_uri")
    assert hook.settings.api_url == f"{limio_emulator.url}/api"
    assert hook.test_connection()[0] is True
    monkeypatch.setenv("AIRFLOW_CONN_LIMIO_URI", "limio://id:pw@acme.prod.limio.com?scheme=http")
    with pytest.raises(LimioConfigError, match="plain http:// to acme.prod.limio.com"):
        LimioHook("limio_uri").get_token()  # http only for loopback, whichever way it is said
    set_connection(
        monkeypatch, "limio_both", host="https://127.0.0.1:1", login="i", password="p", extra={"scheme": "http"}
    )
    with pytest.raises(LimioConfigError, match="scheme and the 'scheme' extra"):
        LimioHook("limio_both").get_token()
