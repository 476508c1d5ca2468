"""Fencing, with real processes: a try that Airflow thought dead (frozen with SIGSTOP) and that resumes (SIGCONT)
after a retry took its claim over sends nothing, on a local and on an S3 (moto) ledger.

Each try is a Python process of its own running the operator's ``execute`` against the emulator, with the task
context Airflow gives a try (its task instance and try number; no ``task_state_store``, as on Airflow 2, so
the ledger is the only record the tries share).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from limio_provider.testing import Fault, LimioEmulator
from tests.helpers import new_order

pytestmark = pytest.mark.usefixtures("airflow_db")

TRY = r"""
import json, sys
from types import SimpleNamespace

from limio_provider.operators import {operator}

args = json.loads(sys.argv[1])
pushed = {{}}
ti = SimpleNamespace(
    dag_id="fencing", task_id="submit", map_index=-1, try_number=args["try_number"],
    xcom_push=lambda key, value: pushed.__setitem__(key, value),
)
task = {operator}(task_id="submit", **args["arguments"])
try:
    result = task.execute({{"ti": ti, "run_id": "manual__fencing"}})
except Exception as exc:
    print(json.dumps({{"raised": type(exc).__name__, "error": str(exc)}}), flush=True)
    sys.exit(1)
print(json.dumps({{"result": result, "pushed": pushed}}), flush=True)
"""


def _start(env: dict[str, str], try_number: int, operator: str, **arguments: Any) -> subprocess.Popen[str]:
    args = json.dumps({"try_number": try_number, "arguments": arguments})
    return subprocess.Popen(
        [sys.executable, "-c", TRY.format(operator=operator), args],
        env=env,
        cwd=str(Path(__file__).resolve().parents[2]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _outcome(proc: subprocess.Popen[str], timeout: float = 120) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    lines = out.strip().splitlines()
    assert lines, f"the try said nothing (exit {proc.returncode}):\n{err[-4000:]}"
    return {**json.loads(lines[-1]), "exit": proc.returncode, "stderr": err}


def _wait_until(what: str, condition: Callable[[], Any], proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"waiting for {what}: the try exited {proc.returncode}:\n{proc.stderr.read()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"waiting for {what}: timed out")
        time.sleep(0.02)


@pytest.fixture
def env(limio_emulator: LimioEmulator, request: pytest.FixtureRequest) -> dict[str, str]:
    env = {**os.environ, **limio_emulator.connection_env()}
    if "s3" in request.node.callspec.id:
        env["AIRFLOW_CONN_LIMIO_S3"] = request.getfixturevalue("limio_s3_conn")
    return env


def test_a_frozen_try_that_resumes_after_a_retry_took_its_claim_sends_nothing(
    limio_emulator: LimioEmulator, ledger_root: str, env: dict[str, str]
) -> None:
    """Try 1 claims the order, then waits for its token (the emulator holds the answer 3 s) and is frozen there
    (SIGSTOP). Try 2 of the same task instance resumes the claim, sends and succeeds. Try 1 resumes (SIGCONT),
    gets its token, and its "sent" write, right before its request would leave, finds the claim taken: it fails
    saying so, and Limio holds one order."""
    limio_emulator.add_fault(Fault(route="token", action="latency_only", latency=3.0, times=1))
    arguments = {"order": new_order("EXT-ZOMBIE"), "ledger_path": ledger_root}
    first = _start(env, 1, "LimioSubmitOrderOperator", **arguments)
    try:
        _wait_until(
            "try 1 to ask for its token",
            lambda: any("token" in r.path and r.status is None for r in limio_emulator.requests),
            first,
        )
        first.send_signal(signal.SIGSTOP)
        second = _outcome(_start(env, 2, "LimioSubmitOrderOperator", **arguments))
        assert second["exit"] == 0, second["stderr"][-4000:]
        (order,) = limio_emulator.orders.values()
        assert second["result"]["id"] == order["id"] and second["pushed"]["adopted"] is False
        time.sleep(3.5)  # the token answer try 1 waits for is written (the emulator is not frozen)
    finally:
        first.send_signal(signal.SIGCONT)
    resumed = _outcome(first)
    assert resumed["exit"] == 1 and resumed["raised"] == "LimioClaimLostError", resumed
    assert "no longer holds its ledger claim" in resumed["error"] and "sends nothing" in resumed["error"]
    assert "'try_number': 2" in resumed["error"]
    posts = [r for r in limio_emulator.requests if r.method == "POST" and r.path == "/api/order"]
    assert len(posts) == 1 and len(limio_emulator.orders) == 1


def _read_results(uri: str) -> list[dict[str, Any]]:
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    return [json.loads(line) for line in ObjectStoragePath(uri).read_text().splitlines() if line.strip()]


def test_a_frozen_batch_that_resumes_after_a_retry_took_over_sends_nothing_more_and_keeps_off_its_results(
    limio_emulator: LimioEmulator, ledger_root: str, env: dict[str, str]
) -> None:
    """Try 1 of a 40-order batch (2 in flight, each order answered in 0.25 s) is frozen mid-batch with orders in
    flight and others waiting for a slot. Try 2 takes the task instance over and finishes the batch. Try 1
    resumes: the answers it was waiting for, and the orders queued for a slot, find their claims taken; it sends
    nothing more, fails saying it was superseded, and try 2's results file stands: every order once."""
    limio_emulator.add_fault(Fault(route="order", action="latency_only", latency=0.25))
    ids = [f"EXT-ZB-{n:02d}" for n in range(40)]
    results_uri = ledger_root.rsplit("/", 1)[0] + "/results.jsonl"
    arguments = {
        "orders": [new_order(eid) for eid in ids],
        "results_path": results_uri,
        "ledger_path": ledger_root,
        "max_in_flight": 2,
    }
    first = _start(env, 1, "LimioSubmitOrdersOperator", **arguments)
    try:
        _wait_until("try 1 to have sent 8 orders", lambda: len(limio_emulator.orders) >= 8, first)
        first.send_signal(signal.SIGSTOP)
        frozen_at = len(limio_emulator.orders)
        second = _outcome(_start(env, 2, "LimioSubmitOrdersOperator", **arguments))
        assert second["exit"] == 0, second["stderr"][-4000:]
        assert second["result"]["counts"]["submitted"] + second["result"]["counts"]["adopted"] == 40, second
    finally:
        first.send_signal(signal.SIGCONT)
    resumed = _outcome(first)
    assert resumed["exit"] == 1 and resumed["raised"] == "LimioClaimLostError", resumed
    assert "superseded by try 2 of this task instance" in resumed["error"], resumed

    by_external_id: dict[str, list[str]] = {}
    for order in limio_emulator.orders.values():
        by_external_id.setdefault(order["external_id"], []).append(order["id"])
    assert sorted(by_external_id) == ids and all(len(v) == 1 for v in by_external_id.values()), by_external_id
    posts = [r for r in limio_emulator.requests if r.method == "POST" and r.path == "/api/order"]
    assert len(posts) == 40, f"{len(posts)} POSTs for 40 orders (try 1 had sent {frozen_at} when frozen)"
    rows = _read_results(results_uri)
    assert [row["external_id"] for row in rows] and sorted(row["external_id"] for row in rows) == ids, rows
    assert all(row["outcome"] in ("submitted", "adopted") for row in rows), rows
    assert {row["external_id"]: row["order_id"] for row in rows} == {k: v[0] for k, v in by_external_id.items()}


def test_a_try_that_stalls_between_its_sent_write_and_the_wire_is_checked_again_before_sending(
    limio_emulator: LimioEmulator, ledger_root: str, env: dict[str, str]
) -> None:
    """The protocol's last step: try 1 has written "sent" and its request is about to leave, but its token is
    refused (401) and the new one takes 3 s: it is frozen there (SIGSTOP). Try 2 takes the claim over, finds no
    order and reports the outcome unknown (a person may then decide to send it). Try 1 resumes with its new
    token: before its replay leaves, it reads its claim again, finds it taken, and sends nothing."""
    limio_emulator.add_fault(Fault(route="token", action="latency_only", latency=0, times=1))  # try 1's first
    limio_emulator.add_fault(Fault(route="token", action="latency_only", latency=3.0, times=1))  # its refetch
    limio_emulator.add_fault(Fault(route="order", status=401, times=1))  # refused unprocessed: replayed
    arguments = {"order": new_order("EXT-STALL"), "ledger_path": ledger_root}
    first = _start(env, 1, "LimioSubmitOrderOperator", **arguments)
    try:
        _wait_until(
            "try 1 to ask for a new token after its 401",
            lambda: (
                sum("token" in r.path for r in limio_emulator.requests) == 2
                and any("token" in r.path and r.status is None for r in limio_emulator.requests)
            ),
            first,
        )
        first.send_signal(signal.SIGSTOP)
        second = _outcome(_start(env, 2, "LimioSubmitOrderOperator", **arguments))
        assert second["exit"] == 1 and second["raised"] == "LimioOutcomeUnknownError", second
        time.sleep(3.5)  # the token answer try 1 waits for is written
    finally:
        first.send_signal(signal.SIGCONT)
    resumed = _outcome(first)
    assert resumed["exit"] == 1 and resumed["raised"] == "LimioClaimLostError", resumed
    posts = [r for r in limio_emulator.requests if r.method == "POST" and r.path == "/api/order"]
    assert [r.status for r in posts] == [401] and limio_emulator.orders == {}
