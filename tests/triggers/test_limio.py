"""LimioOrderTrigger against the emulator: JSON-only kwargs and events, one event per outcome."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from limio_provider.hooks.limio import LimioHook
from limio_provider.testing import Fault, LimioEmulator
from limio_provider.triggers.limio import LimioOrderTrigger
from tests.helpers import new_order


def first_event(trigger: LimioOrderTrigger) -> dict[str, Any]:
    async def collect() -> dict[str, Any]:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("the trigger ended without an event")

    return asyncio.run(asyncio.wait_for(collect(), timeout=20))


def trigger_for(order_id: str, timeout: float = 10) -> LimioOrderTrigger:
    return LimioOrderTrigger(
        order_id=order_id, limio_conn_id="limio_default", poll_interval=0.05, end_time=time.time() + timeout
    )


def test_serialized_kwargs_hold_ids_and_timing_only(limio_emulator: LimioEmulator) -> None:
    token = LimioHook().get_token()
    classpath, kwargs = trigger_for("order-1").serialize()
    assert classpath == "limio_provider.triggers.limio.LimioOrderTrigger"
    assert set(kwargs) == {"order_id", "limio_conn_id", "poll_interval", "end_time", "hook_params"}
    text = json.dumps(kwargs)
    assert token not in text and limio_emulator.client_secret not in text
    assert LimioOrderTrigger(**kwargs).serialize() == (classpath, kwargs)


@pytest.mark.parametrize(
    ("decline", "delay", "timeout", "status", "order_status"),
    [
        (False, 0.2, 10, "success", "complete"),
        (True, 0.2, 10, "failed", "failed"),
        (False, 3600, 0.3, "timeout", "submitted"),
    ],
    ids=["complete", "failed", "timeout"],
)
def test_one_json_event_per_outcome(
    limio_emulator: LimioEmulator, decline: bool, delay: float, timeout: float, status: str, order_status: str
) -> None:
    limio_emulator.processing_delay = delay
    if decline:
        limio_emulator.decline_payment_refs = frozenset({"pm-1"})
    order_id = LimioHook().submit_order(new_order(f"EXT-T-{status}")).id
    event = first_event(trigger_for(order_id, timeout))
    assert json.loads(json.dumps(event)) == event
    assert (event["status"], event["order_id"], event["order_status"]) == (status, order_id, order_status)
    if decline:
        assert "declined" in event["message"]


def test_a_missing_order_is_an_error_event(limio_emulator: LimioEmulator) -> None:
    event = first_event(trigger_for("order-missing"))
    assert event["status"] == "error"
    assert "404" in event["message"]


def test_the_trigger_talks_to_limio_with_the_operators_hook_params(
    limio_emulator: LimioEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection's base path is wrong; the task's hook_params fix it, in the worker and the triggerer."""
    connection = json.loads(limio_emulator.connection_json())
    monkeypatch.setenv("AIRFLOW_CONN_LIMIO_PATHS", json.dumps({**connection, "extra": {"base_path": "/nope"}}))
    order_id = LimioHook("limio_paths", base_path="/api").submit_order(new_order("EXT-HP")).id
    trigger = LimioOrderTrigger(
        order_id=order_id,
        limio_conn_id="limio_paths",
        poll_interval=0.05,
        end_time=time.time() + 10,
        hook_params={"base_path": "/api"},
    )
    classpath, kwargs = trigger.serialize()
    assert kwargs["hook_params"] == {"base_path": "/api"}
    event = first_event(LimioOrderTrigger(**kwargs))
    assert (event["status"], event["order_id"]) == ("success", order_id)
    assert not [r for r in limio_emulator.requests if r.path.startswith("/nope")]


BLOCKING_PROBE = """
import asyncio, logging, sys, time

from limio_provider.triggers.limio import LimioOrderTrigger  # what the triggerer imports first

assert "limio_provider.hooks.limio" not in sys.modules, "importing the trigger imported the hook"
slow = []


class Collect(logging.Handler):
    def emit(self, record):
        slow.append(record.getMessage())


logging.getLogger("asyncio").addHandler(Collect())


async def main(order_id):
    # A blocking read would hold a step for the emulator's 0.5 s latency, and the hook's import on the loop took
    # 0.2 s on an idle machine; a step of a busy machine's loop may take 0.1 s (seen with the tests running).
    asyncio.get_running_loop().slow_callback_duration = 0.15
    await asyncio.sleep(0)  # from here on, each step of the loop is timed
    end = time.time() + 20
    trigger = LimioOrderTrigger(order_id=order_id, limio_conn_id="limio_default", poll_interval=0.05, end_time=end)
    async for event in trigger.run():
        return event.payload


payload = asyncio.run(main(sys.argv[1]), debug=True)
assert payload["status"] == "success", payload
assert not [m for m in slow if "took" in m], slow
print("OK")
"""


def test_the_trigger_never_blocks_the_event_loop(limio_emulator: LimioEmulator) -> None:
    """In a fresh process, as in the triggerer: importing the trigger loads no hook, and running it (importing
    the hook, reading the connection, HTTP answered after 0.5 s) holds the event loop for no step over 150 ms."""
    import os
    import subprocess
    import sys

    order = LimioHook().submit_order({**new_order("EXT-LOOP"), "process_immediately": True})
    limio_emulator.add_fault(Fault(route="get_order", action="latency_only", latency=0.5))
    probe = [sys.executable, "-c", BLOCKING_PROBE, order.id]
    done = subprocess.run(probe, capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert done.returncode == 0 and "OK" in done.stdout, done.stdout[-2000:] + done.stderr[-3000:]


def test_the_trigger_reads_the_connection_and_masks_secrets_on_its_event_loop_thread(
    limio_emulator: LimioEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Airflow 3.1's trigger runner channel breaks ("Response read out of order", the runner dies) when used from
    a thread that is not the event loop's: every secret masking (which goes through that channel) must happen on
    the loop's thread, the token's included, and it must still be masked."""
    import threading

    import airflow.providers.common.compat.sdk as compat_sdk

    calls: list[tuple[str, bool]] = []
    loop_thread = threading.get_ident()  # asyncio.run below runs the loop on this thread

    def recording(module: Any) -> None:
        real = module.mask_secret

        def mask_secret(secret: Any, name: str | None = None) -> None:
            calls.append((str(secret), threading.get_ident() == loop_thread))
            real(secret, name)

        monkeypatch.setattr(module, "mask_secret", mask_secret)

    recording(compat_sdk)
    try:
        import airflow.sdk.log as sdk_log  # Airflow 3: what Connection.extra_dejson and the runner call
    except ImportError:  # Airflow 2.11: no runner channel
        pass
    else:
        recording(sdk_log)
    worker = LimioHook()
    order_id = worker.submit_order({**new_order("EXT-MASK"), "process_immediately": True}).id
    calls.clear()
    event = first_event(trigger_for(order_id))
    assert event["status"] == "success", event

    off_loop = [secret[:4] for secret, on_loop in calls if not on_loop]
    assert not off_loop, f"masked from a worker thread: {off_loop}"
    [token] = [token for token in limio_emulator.valid_tokens if token != worker.get_token()]
    assert token in [secret for secret, _ in calls], "the trigger's token was never masked"
    from airflow.providers.common.compat.sdk import redact

    assert token not in str(redact(f"Bearer {token}"))
