"""What LimioHook costs per order compared with a bare ``requests.Session`` loop, against the same emulator.

Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_hook.py [--calls 2000] [--rounds 3]``.

The emulator runs in its own process (one core for it, one for the client), started with the CLI as a user
would. Each round sends ``--calls`` orders with a raw keep-alive session (token fetched once, JSON posted with
the bearer header) and then the same number through ``LimioHook.submit_order`` (validation, token cache,
retry wrapper, typed result). Prints each round, the median cost per order of each, their ratio, and how many
token requests the hook made. Goal: ratio <= 1.10 and one token request.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import requests

from limio_provider.hooks.limio import LimioHook

ORDER = {
    "order_type": "new",
    "orderItems": [{"offer": {"id": "offer-digital-monthly"}, "quantity": 1}],
    "billingDetails": {"firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com"},
    "payment": {"type": "zuora", "zuora": {"refId": "pm-bench", "paymentGateway": "CreditCard_UK"}},
    "checkoutId": "basket-bench",
    "country": "GB",
}


def start_emulator() -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "limio_provider.testing", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("export AIRFLOW_CONN_LIMIO_DEFAULT="):
            return proc, json.loads(line.split("=", 1)[1].strip().strip("'"))
    raise RuntimeError("the emulator did not print its connection")


def raw_loop(conn: dict[str, str], calls: int, tag: str) -> float:
    session = requests.Session()
    token = session.post(
        f"{conn['host']}/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": conn["login"], "client_secret": conn["password"]},
        timeout=10,
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    start = time.perf_counter()
    for i in range(calls):
        response = session.post(
            f"{conn['host']}/api/order", json={**ORDER, "external_id": f"{tag}-{i}"}, headers=headers, timeout=30
        )
        response.raise_for_status()
        response.json()
    elapsed = time.perf_counter() - start
    session.close()
    return elapsed / calls


def hook_loop(calls: int, tag: str) -> tuple[float, int]:
    hook = LimioHook()
    hook.get_token()
    start = time.perf_counter()
    for i in range(calls):
        hook.submit_order({**ORDER, "external_id": f"{tag}-{i}"})
    elapsed = time.perf_counter() - start
    hook.close()
    return elapsed / calls, hook.token_requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    proc, conn = start_emulator()
    os.environ["AIRFLOW_CONN_LIMIO_DEFAULT"] = json.dumps(conn)
    try:
        raw_loop(conn, 200, "warm-raw")
        hook_loop(200, "warm-hook")
        raws, hooks, tokens = [], [], []
        for r in range(args.rounds):
            raws.append(raw_loop(conn, args.calls, f"raw{r}"))
            per_call, token_requests = hook_loop(args.calls, f"hook{r}")
            hooks.append(per_call)
            tokens.append(token_requests)
            print(
                f"round {r + 1}: raw {raws[-1] * 1e6:7.1f} us/order, hook {hooks[-1] * 1e6:7.1f} us/order, "
                f"hook token requests {token_requests}"
            )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    raw, hook = statistics.median(raws), statistics.median(hooks)
    print(f"median over {args.rounds} rounds of {args.calls} orders each:")
    print(f"  raw requests.Session: {raw * 1e6:.1f} us/order ({1 / raw:.0f} orders/s)")
    print(f"  LimioHook.submit_order: {hook * 1e6:.1f} us/order ({1 / hook:.0f} orders/s)")
    print(f"  ratio hook/raw: {hook / raw:.3f} (goal <= 1.10); token requests per hook: {max(tokens)} (goal 1)")


if __name__ == "__main__":
    main()
