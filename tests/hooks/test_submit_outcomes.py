"""The one rule that protects orders, tried with a hostile network: a submit is resent only when it provably
was not processed; everything else is an unknown outcome. Also redirects, proxies and secrets in errors."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from limio_provider.exceptions import (
    LimioAuthError,
    LimioConfigError,
    LimioOrderRejectedError,
    LimioOutcomeUnknownError,
    LimioResponseError,
    LimioServerError,
)
from limio_provider.hooks.limio import LimioHook, submit_outcome
from limio_provider.testing import Fault, LimioEmulator
from tests.helpers import Capture, calls, new_order, set_connection, set_no_proxy


@pytest.fixture
def hook(limio_emulator: LimioEmulator) -> LimioHook:
    return LimioHook(sleep=lambda seconds: None, timeout=2.0)


def submits(emulator: LimioEmulator) -> list[Any]:
    return calls(emulator, "/api/order")


# -- the rule, as a table -------------------------------------------------------------------------------


def test_the_rule_is_an_allow_list_with_unknown_as_default() -> None:
    assert submit_outcome(None, reached_limio=False) == "not_processed"
    assert {submit_outcome(s, reached_limio=True) for s in (429, 503)} == {"not_processed"}
    assert {submit_outcome(s, reached_limio=True) for s in (400, 422)} == {"refused"}
    unlisted = [None, 200, 301, 302, 307, 308, 408, 409, 499, 500, 501, 502, 504, 505, 507, 520, 524, 530, 599]
    assert {submit_outcome(s, reached_limio=True) for s in unlisted} == {"unknown"}


# -- defect: any 5xx but 503, and 3xx, after sending: unknown, never resent ------------------------------


@pytest.mark.parametrize("status", [500, 501, 502, 504, 505, 507, 520, 524, 599, 409, 408])
def test_unlisted_error_status_after_processing_is_outcome_unknown(
    hook: LimioHook, limio_emulator: LimioEmulator, status: int
) -> None:
    limio_emulator.add_fault(Fault(route="order", action="process_then_status", status=status, times=1))
    with pytest.raises(LimioOutcomeUnknownError, match="EXT-1") as excinfo:
        hook.submit_order(new_order("EXT-1"))
    assert excinfo.value.status == status
    assert excinfo.value.external_id == "EXT-1"
    assert len(submits(limio_emulator)) == 1  # never resent
    assert len(limio_emulator.orders_with_external_id("EXT-1")) == 1


@pytest.mark.parametrize("status", [429, 503])
def test_not_accepted_statuses_are_resent(hook: LimioHook, limio_emulator: LimioEmulator, status: int) -> None:
    limio_emulator.add_fault(Fault(route="order", action="status", status=status, times=2))
    result = hook.submit_order(new_order("EXT-2"))
    assert [r.status for r in submits(limio_emulator)] == [status, status, 200]
    assert [o["id"] for o in limio_emulator.orders_with_external_id("EXT-2")] == [result.id]


@pytest.mark.parametrize("status", [400, 422])
def test_refusals_are_permanent_and_not_resent(hook: LimioHook, limio_emulator: LimioEmulator, status: int) -> None:
    limio_emulator.add_fault(Fault(route="order", action="status", status=status, message="no such offer"))
    with pytest.raises(LimioOrderRejectedError, match="no such offer"):
        hook.submit_order(new_order())
    assert len(submits(limio_emulator)) == 1


def test_a_redirect_on_submit_is_not_followed_and_is_outcome_unknown(
    hook: LimioHook, limio_emulator: LimioEmulator, capture: Capture
) -> None:
    target = f"{capture.url}/api/order?token=abc"
    limio_emulator.add_fault(Fault(route="order", action="process_then_status", status=307, location=target))
    with pytest.raises(LimioOutcomeUnknownError) as excinfo:
        hook.submit_order(new_order("EXT-3"))
    assert "a redirect to 127.0.0.1, not followed" in str(excinfo.value)
    assert "token=abc" not in str(excinfo.value)
    assert capture.requests == []  # the order body went nowhere else
    assert len(submits(limio_emulator)) == 1


# -- defect: cut-short, undecodable and garbage answers after processing: unknown -----------------------


@pytest.mark.parametrize(
    ("fault", "words"),
    [
        (Fault(route="order", action="process_then_truncate", times=1), "cut short"),
        (Fault(route="order", action="process_then_bad_chunked", times=1), "cut short"),
        (Fault(route="order", action="process_then_undecodable", times=1), "could not be decoded"),
        (Fault(route="order", action="process_then_reset", times=1), "no complete answer"),
        (Fault(route="order", action="process_then_garbage", body="not json", times=1), "not JSON"),
        (Fault(route="order", action="process_then_garbage", body={}, times=1), "without an order id"),
        (Fault(route="order", action="process_then_garbage", body=[], times=1), "a list, not an order"),
        (Fault(route="order", action="process_then_garbage", body='"ok"', times=1), "a str, not an order"),
        (Fault(route="order", action="process_then_garbage", body={"id": ""}, times=1), "without an order id"),
    ],
    ids=["truncated", "bad-chunked", "undecodable", "reset", "not-json", "empty-object", "list", "string", "empty-id"],
)
def test_a_broken_answer_after_processing_is_outcome_unknown(
    hook: LimioHook, limio_emulator: LimioEmulator, fault: Fault, words: str
) -> None:
    limio_emulator.add_fault(fault)
    with pytest.raises(LimioOutcomeUnknownError, match=words) as excinfo:
        hook.submit_order(new_order("EXT-4"))
    assert excinfo.value.external_id == "EXT-4"
    assert len(submits(limio_emulator)) == 1
    assert len(limio_emulator.orders_with_external_id("EXT-4")) == 1


# -- defect: an answer trickled a byte at a time held a call far past its read timeout ------------------


def test_a_trickled_submit_answer_ends_at_the_read_timeout_as_outcome_unknown(limio_emulator: LimioEmulator) -> None:
    """Each byte arrives within the read timeout, so requests alone would wait for the whole body (here 0.05 s
    a byte: over 10 s); the hook gives the body the read timeout, all of it."""
    limio_emulator.add_fault(Fault(route="order", action="process_then_trickle", latency=0.05, times=1))
    hook = LimioHook(sleep=lambda seconds: None, timeout=0.5)
    hook.get_token()
    started = time.monotonic()
    with pytest.raises(LimioOutcomeUnknownError, match="timed out waiting for the answer") as excinfo:
        hook.submit_order(new_order("EXT-TRICKLE"))
    assert time.monotonic() - started < 3
    assert excinfo.value.external_id == "EXT-TRICKLE"
    assert len(submits(limio_emulator)) == 1  # never resent
    assert len(limio_emulator.orders_with_external_id("EXT-TRICKLE")) == 1


def test_a_trickled_status_line_and_headers_end_at_the_timeout_as_outcome_unknown(
    limio_emulator: LimioEmulator,
) -> None:
    """Issue 18: the status line and headers a byte every 0.1 s held a ``timeout=1`` submit for 22.6 s (only
    the body had a deadline). The whole answer now has ``timeout`` seconds from the request being sent."""
    limio_emulator.add_fault(Fault(route="order", action="process_then_trickle_head", latency=0.1, times=1))
    hook = LimioHook(sleep=lambda seconds: None, timeout=1.0)
    hook.get_token()
    started = time.monotonic()
    with pytest.raises(LimioOutcomeUnknownError, match="timed out waiting for the answer") as excinfo:
        hook.submit_order(new_order("EXT-HEAD"))
    assert 1.0 <= time.monotonic() - started < 3
    assert excinfo.value.external_id == "EXT-HEAD"
    assert len(submits(limio_emulator)) == 1  # never resent
    assert len(limio_emulator.orders_with_external_id("EXT-HEAD")) == 1
    assert LimioHook(timeout=2.0).submit_order(new_order("EXT-AFTER")).external_id == "EXT-AFTER"  # next call


def test_a_compressed_answer_past_max_answer_bytes_is_refused_within_bounded_memory(
    limio_emulator: LimioEmulator,
) -> None:
    """Issue 18: a 0.26 MB gzip answer decoded to 256 MB and the worker grew by 769 MB. Decoding stops at
    ``max_answer_bytes``: the submit's outcome is unknown (Limio created the order), and the memory the read
    took stays near the cap."""
    import tracemalloc

    limio_emulator.add_fault(Fault(route="order", action="process_then_gzip_bomb", times=1))  # 256 MiB decoded
    hook = LimioHook(sleep=lambda seconds: None, timeout=10.0, max_answer_bytes=4 * 2**20)
    hook.get_token()
    tracemalloc.start()
    try:
        with pytest.raises(LimioOutcomeUnknownError, match="larger than 4194304 bytes decoded") as excinfo:
            hook.submit_order(new_order("EXT-BOMB"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert excinfo.value.external_id == "EXT-BOMB"
    assert len(submits(limio_emulator)) == 1
    assert len(limio_emulator.orders_with_external_id("EXT-BOMB")) == 1


def test_an_answer_under_max_answer_bytes_is_read_whole(limio_emulator: LimioEmulator) -> None:
    limio_emulator.add_fault(Fault(route="order", action="process_then_gzip_bomb", size=2**20, times=1))
    order = LimioHook(timeout=10.0, max_answer_bytes=2 * 2**20).submit_order(new_order("EXT-SMALL-BOMB"))
    assert order.external_id == "EXT-SMALL-BOMB"


def test_a_trickled_read_is_retried_within_its_timeout(limio_emulator: LimioEmulator) -> None:
    order_id = LimioHook(timeout=2.0).submit_order(new_order("EXT-READ")).id
    limio_emulator.add_fault(Fault(route="get_order", action="process_then_trickle", latency=0.05, times=1))
    hook = LimioHook(sleep=lambda seconds: None, timeout=0.5, retry_limit=1)
    started = time.monotonic()
    assert hook.get_order(order_id).id == order_id
    assert time.monotonic() - started < 3
    assert len(calls(limio_emulator, f"/api/objects/limio/orders/{order_id}")) == 2


# -- defect: a TLS error while reading the answer is not "not sent" -------------------------------------


@pytest.fixture
def tls_emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[LimioEmulator]:
    with LimioEmulator(tls=True) as emulator:
        for name, value in emulator.connection_env("limio_tls").items():
            monkeypatch.setenv(name, value)
        yield emulator


def test_tls_error_while_reading_a_submit_answer_is_outcome_unknown(tls_emulator: LimioEmulator) -> None:
    hook = LimioHook("limio_tls", sleep=lambda seconds: None)
    hook.get_token()
    tls_emulator.add_fault(Fault(route="order", action="process_then_tls_error", times=1))
    with pytest.raises(LimioOutcomeUnknownError, match="TLS"):
        hook.submit_order(new_order("EXT-TLS"))
    assert len(submits(tls_emulator)) == 1
    assert len(tls_emulator.orders_with_external_id("EXT-TLS")) == 1


def test_tls_handshake_failure_is_not_sent_and_says_why(
    tls_emulator: LimioEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_connection(
        monkeypatch, "limio_untrusted", host=tls_emulator.url, login="emulator-client", password="emulator-secret"
    )
    sleeps: list[float] = []
    with pytest.raises(LimioServerError, match="TLS certificate not trusted") as excinfo:
        LimioHook("limio_untrusted", sleep=sleeps.append, retry_limit=1).submit_order(new_order())
    assert "could not connect" in str(excinfo.value)
    assert excinfo.value.retryable
    assert tls_emulator.requests == []  # nothing reached the emulator


def test_https_against_plain_http_names_the_mismatch(
    limio_emulator: LimioEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = limio_emulator.url.replace("http://", "https://")
    set_connection(monkeypatch, "limio_mismatch", host=host, login="emulator-client", password="emulator-secret")
    with pytest.raises(LimioServerError, match=r"is the host http://\?"):
        LimioHook("limio_mismatch", sleep=lambda s: None, retry_limit=0).get_token()


def test_a_refused_connection_on_the_token_call_names_the_connection_and_the_likely_cause(
    monkeypatch: pytest.MonkeyPatch, capture: Capture
) -> None:
    port = capture.server.server_address[1]
    capture.server.shutdown()
    capture.server.server_close()
    set_connection(monkeypatch, "limio_down", host=f"http://127.0.0.1:{port}", login="id", password="pw-9")
    with pytest.raises(LimioServerError) as excinfo:
        LimioHook("limio_down", sleep=lambda s: None, retry_limit=1).get_token()
    text = str(excinfo.value)
    for expected in (
        "could not connect",
        f"http://127.0.0.1:{port}",
        "connection refused",
        "'limio_down'",
        "wrong host or port",
        "gave up after 2 attempts",
    ):
        assert expected in text
    assert "pw-9" not in text


# -- defect: redirects on the token call: the secret never leaves for another host ---------------------


@pytest.mark.parametrize("status", [307, 308, 302])
def test_token_redirect_is_not_followed_and_the_secret_stays_home(
    hook: LimioHook, limio_emulator: LimioEmulator, capture: Capture, status: int
) -> None:
    limio_emulator.add_fault(Fault(route="token", action="status", status=status, location=f"{capture.url}/steal"))
    with pytest.raises(LimioResponseError) as excinfo:
        hook.get_token()
    assert capture.requests == []
    assert "redirect to 127.0.0.1" in str(excinfo.value)
    assert limio_emulator.client_secret not in str(excinfo.value)


# -- defect: a secret echoed in any encoding the hook sends is scrubbed ---------------------------------

SECRET = 's3cr3t/with+odd&chars="x"'


@pytest.mark.parametrize(
    "encode",
    [
        lambda cid, s: s,
        lambda cid, s: quote_plus(s),
        lambda cid, s: quote(s, safe=""),
        lambda cid, s: quote(s, safe="").lower(),
        lambda cid, s: json.dumps(s)[1:-1],
        lambda cid, s: base64.b64encode(f"{cid}:{s}".encode()).decode(),
        lambda cid, s: "client_id=" + quote_plus(cid) + "&client_secret=" + quote_plus(s),
    ],
    ids=["raw", "form", "url", "url-lower", "json", "basic", "whole-form"],
)
def test_an_echoed_secret_is_scrubbed_in_every_encoding(
    limio_emulator: LimioEmulator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, encode: Any
) -> None:
    limio_emulator.client_secret = SECRET
    set_connection(monkeypatch, "limio_echo", host=limio_emulator.url, login="emulator-client", password=SECRET)
    echoed = encode("emulator-client", SECRET)
    limio_emulator.add_fault(Fault(route="token", action="status", status=400, message=f"bad request: {echoed}"))
    with pytest.raises(LimioAuthError) as excinfo:
        LimioHook("limio_echo", sleep=lambda s: None).get_token()
    text = str(excinfo.value) + repr(excinfo.value) + caplog.text
    assert "bad request: " in text  # positive control: the echo did reach the error
    assert echoed not in text
    assert SECRET not in text


# -- defect: loopback hosts never go through a proxy ----------------------------------------------------


def test_a_loopback_host_never_goes_through_the_environment_proxy(
    hook: LimioHook, limio_emulator: LimioEmulator, capture: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, capture.url)
    set_no_proxy(monkeypatch, "")
    result = hook.submit_order(new_order("EXT-P"))
    assert result.id in limio_emulator.orders
    assert capture.requests == []
    assert hook.session.proxies == {}


def test_a_remote_host_still_uses_the_environment_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    set_no_proxy(monkeypatch, "")
    set_connection(monkeypatch, "limio_remote", host="acme.prod.limio.com", login="id", password="pw")
    assert LimioHook("limio_remote").session.proxies["https"] == "http://proxy.internal:3128"


# -- defect: config errors are typed and never echo credentials -----------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "ftp://id:PW-123@acme.prod.limio.com",
        "acme.prod.limio.com:abc",
        "https://id:PW-123@acme.prod.limio.com",
        "http://[::1",
        "gopher://PW-123",
    ],
)
def test_bad_hosts_are_config_errors_that_never_echo_credentials(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    set_connection(monkeypatch, "limio_bad_host", host=host, login="id", password="PW-123")
    with pytest.raises(LimioConfigError, match="limio_bad_host") as excinfo:
        LimioHook("limio_bad_host").settings  # noqa: B018 - reading it raises
    assert "PW-123" not in str(excinfo.value)


def test_a_bad_order_link_template_fails_with_the_connection_before_any_call(
    limio_emulator: LimioEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_connection(
        monkeypatch,
        "limio_link",
        host=limio_emulator.url,
        login="emulator-client",
        password="emulator-secret",
        extra={"order_link_template": "https://app.example/orders/{orderid}"},
    )
    with pytest.raises(LimioConfigError, match=r"order_link_template: unknown placeholder \{orderid\}"):
        LimioHook("limio_link").submit_order(new_order())
    set_connection(
        monkeypatch,
        "limio_link",
        host=limio_emulator.url,
        login="emulator-client",
        password="emulator-secret",
        extra={"order_link_template": "file:///orders/{order_id}"},  # Airflow's UI would show no such link
    )
    with pytest.raises(LimioConfigError, match=r"order_link_template: must be a web page's address"):
        LimioHook("limio_link").submit_order(new_order())
    assert limio_emulator.requests == []


# -- defect: orders Limio lists in unexpected shapes are read, never fatal ------------------------------


def test_listed_orders_with_unexpected_shapes_are_read_leniently(
    hook: LimioHook, limio_emulator: LimioEmulator
) -> None:
    page = {
        "items": [
            {"id": "order-1", "external_id": "EXT-L", "created": 1767225600000, "status": {"code": "complete"}},
            "not an order",
            {"id": 42, "external_id": None, "updated": ["x"]},
        ],
        "queryMore": None,
    }
    limio_emulator.add_fault(Fault(route="list_orders", action="process_then_garbage", body=page, times=1))
    (first,) = hook.find_orders("EXT-L")
    assert first.id == "order-1"
    assert first.created == "1767225600000"
    assert json.loads(first.status or "") == {"code": "complete"}
