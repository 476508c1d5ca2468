"""Throughput of the Limio emulator: ``POST /api/order`` with no faults.

Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_emulator.py [--requests 2000]``.

The emulator runs as a user starts it (``python -m limio_provider.testing --port 0``) in its own process; the
client is one keep-alive ``http.client`` connection in this process, so the figure is the emulator's, not
the client library's (``requests`` itself costs about 0.7 ms of CPU per call here, which caps any server at
roughly 1,400 calls/s; bench_hook.py measures that path). Goal: at least 1,500 orders/s on 2 cores.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import time
from urllib.parse import urlencode, urlsplit

from limio_provider.testing import sample_order

ORDER = sample_order("BENCH-1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="orders to send (default 2000)")
    count = parser.parse_args().requests
    proc = subprocess.Popen(
        [sys.executable, "-m", "limio_provider.testing", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        conn = next(
            json.loads(line.split("=", 1)[1].strip().strip("'"))
            for line in proc.stdout
            if line.startswith("export AIRFLOW_CONN_LIMIO_DEFAULT=")
        )
        url = urlsplit(conn["host"])
        client = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        form = urlencode(
            {"grant_type": "client_credentials", "client_id": conn["login"], "client_secret": conn["password"]}
        )
        client.request("POST", "/oauth2/token", form, {"Content-Type": "application/x-www-form-urlencoded"})
        token = json.loads(client.getresponse().read())["access_token"]
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        body = json.dumps(ORDER)
        for _ in range(100):  # warm-up: first-use imports and caches in the emulator
            client.request("POST", "/api/order", body, headers)
            client.getresponse().read()
        started = time.perf_counter()
        for _ in range(count):
            client.request("POST", "/api/order", body, headers)
            response = client.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"unexpected answer {response.status}")
        elapsed = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(f"{count} POST /api/order in {elapsed:.2f} s: {count / elapsed:,.0f} orders/s (goal >= 1,500)")


if __name__ == "__main__":
    main()
