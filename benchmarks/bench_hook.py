"""What LimioHook costs per order compared with a bare ``requests.Session`` loop, against the same emulator.

Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_hook.py [--calls 2000] [--batch 100]``.

The emulator runs in its own process (one core for it, one for the client), started with the CLI as a user
would. Three clients send ``--calls`` orders each: a raw keep-alive ``requests.Session`` (token fetched once,
JSON posted with the bearer header); the same with ``trust_env=False``, as the hook's session is (it reads the
proxy and CA settings from the environment once, where requests otherwise scans the environment on every
call); and ``LimioHook.submit_order`` (validation, token cache, retry wrapper, typed result). They alternate
batches so that drift in the machine's load hits all alike. Prints the median cost per order of each, the
ratios, and how many token requests the hook made. Goal: hook/raw <= 1.10 and one token request.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import requests

from limio_provider.hooks.limio import LimioHook
from limio_provider.testing import sample_order

ORDER = sample_order("BENCH-1")


def start_emulator() -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "limio_provider.testing", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("export AIRFLOW_CONN_LIMIO_DEFAULT="):
            return proc, json.loads(line.split("=", 1)[1].strip().strip("'"))
    raise RuntimeError("the emulator did not print its connection")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="orders sent by each client (default 2000)")
    parser.add_argument("--batch", type=int, default=100, help="orders per batch; the clients alternate batches")
    args = parser.parse_args()

    proc, conn = start_emulator()
    os.environ["AIRFLOW_CONN_LIMIO_DEFAULT"] = json.dumps(conn)
    try:
        session = requests.Session()
        token = session.post(
            f"{conn['host']}/oauth2/token",
            data={"grant_type": "client_credentials", "client_id": conn["login"], "client_secret": conn["password"]},
            timeout=10,
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}

        def raw(external_id: str) -> None:
            response = session.post(
                f"{conn['host']}/api/order", json={**ORDER, "external_id": external_id}, headers=headers, timeout=30
            )
            response.raise_for_status()
            response.json()

        tuned = requests.Session()
        tuned.trust_env = False  # what the hook does: environment proxies and CA bundle read once, not per call

        def raw_tuned(external_id: str) -> None:
            response = tuned.post(
                f"{conn['host']}/api/order", json={**ORDER, "external_id": external_id}, headers=headers, timeout=30
            )
            response.raise_for_status()
            response.json()

        hook = LimioHook()

        def via_hook(external_id: str) -> None:
            hook.submit_order({**ORDER, "external_id": external_id})

        def batch(send: Any, tag: str) -> float:
            start = time.perf_counter()
            for i in range(args.batch):
                send(f"{tag}-{i}")
            return (time.perf_counter() - start) / args.batch

        for name, send in (("warm-raw", raw), ("warm-tuned", raw_tuned), ("warm-hook", via_hook)):
            batch(send, name)
        raws, tuneds, hooks = [], [], []
        for n in range(args.calls // args.batch):  # alternate, so drift in machine load hits all alike
            raws.append(batch(raw, f"raw{n}"))
            tuneds.append(batch(raw_tuned, f"tuned{n}"))
            hooks.append(batch(via_hook, f"hook{n}"))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    raw_cost, tuned_cost, hook_cost = (statistics.median(x) for x in (raws, tuneds, hooks))
    print(f"{len(raws)} alternating batches of {args.batch} orders per client ({len(raws) * args.batch} orders each):")
    print(f"  raw requests.Session:                   median {raw_cost * 1e6:7.1f} us/order ({1 / raw_cost:.0f}/s)")
    print(f"  raw requests.Session, trust_env=False:  median {tuned_cost * 1e6:7.1f} us/order ({1 / tuned_cost:.0f}/s)")
    print(f"  LimioHook.submit_order:                 median {hook_cost * 1e6:7.1f} us/order ({1 / hook_cost:.0f}/s)")
    print(f"  ratio hook/raw: {hook_cost / raw_cost:.3f} (goal <= 1.10)")
    print(f"  ratio hook/raw with trust_env=False (the hook's own overhead): {hook_cost / tuned_cost:.3f}")
    print(f"  token requests made by the hook: {hook.token_requests} (goal 1)")


if __name__ == "__main__":
    main()
