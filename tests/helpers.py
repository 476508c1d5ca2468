"""Helpers shared by the tests (the one place they live; test modules never import each other)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import requests
from packaging.version import Version

from limio_provider.testing import LimioEmulator, sample_order
from limio_provider.testing import dags as testing_dags

START = datetime(2026, 1, 1, tzinfo=UTC)


def limio_tenant(emulator: LimioEmulator) -> str:
    """The emulator's folder in the ledger: its tenant name, canonical (every loopback address is localhost)."""
    from urllib.parse import quote, urlsplit

    return quote(f"localhost:{urlsplit(emulator.url).port}", safe="")


def in_use(root: str) -> str:
    """``root`` as a ledger in use since long before the tests' work (2000-01-01): a first claim there does not
    look Limio up (a new ledger's look-up for older work has tests of its own, in tests/operators)."""
    from limio_provider.exactly_once.ledger import start_ledger

    start_ledger(root, datetime(2000, 1, 1, tzinfo=UTC))
    return root


def new_order(external_id: str = "EXT-1", **extra: Any) -> dict[str, Any]:
    return sample_order(external_id, **extra)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a server a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, for a failure message ("" if there is none)."""
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def set_no_proxy(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """``NO_PROXY`` and ``no_proxy`` (requests reads the lower-case one first; the moto fixture sets it)."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, value)


#: The Airflow this suite runs on (read without importing Airflow).
AIRFLOW_VERSION = Version(version("apache-airflow"))


def needs_airflow(minimum: str, why: str) -> pytest.MarkDecorator:
    """Skip a test below Airflow ``minimum``, saying why: the compatibility runs (``make test-compat``) run
    the rest of the suite on older Airflow lines."""
    return pytest.mark.skipif(AIRFLOW_VERSION < Version(minimum), reason=f"needs Airflow {minimum}+: {why}")


def set_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: Any) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "limio", **fields}))


def calls(emulator: Any, path: str) -> list[Any]:
    """The requests ``emulator`` received on ``path``."""
    return [r for r in emulator.requests if r.path == path]


def run_dag(dag: Any, **kwargs: Any) -> Any:
    """``dag.test()`` through the public helper, on the session's database (the ``airflow_db`` fixture made
    it); logical date ``START`` unless given."""
    kwargs.setdefault("logical_date", START)
    return testing_dags.run_dag(dag, migrate=False, **kwargs)


xcom = testing_dags.xcom_values
states = testing_dags.task_states


class Capture:
    """A loopback HTTP server that records every request it gets (a redirect target, a proxy); answers ``{}``.
    Use it as a context manager."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        capture = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                capture.requests.append((self.command, self.path, self.rfile.read(length)))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = do_CONNECT = _any

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- raw clients of the emulator (tests of the emulator itself) ---------------------------------------

CLIENT_ID, SECRET = "emulator-client", "emulator-secret"
ADMIN_CLIENT_ID, ADMIN_SECRET = "emulator-admin", "emulator-admin-secret"  # the management client


def emulator_order(**fields: Any) -> dict[str, Any]:
    """A valid ``new`` order with a payment the emulator accepts, with ``fields`` overriding."""
    return sample_order(
        **{"payment": {"type": "zuora", "zuora": {"refId": "pm-ok"}}, "checkoutId": "basket-1", **fields}
    )


def token_form(secret: str = SECRET, **fields: str) -> dict[str, str]:
    """The form body of a client-credentials token request."""
    return {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": secret, **fields}


class Client:
    """A keep-alive session to an emulator; paths are relative to its URL."""

    def __init__(self, emulator: LimioEmulator, authorised: bool = True, admin: bool = False) -> None:
        self.emulator = emulator
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = emulator.ca_path or True  # a TLS emulator's self-signed certificate
        if authorised:
            form = token_form(ADMIN_SECRET, client_id=ADMIN_CLIENT_ID) if admin else token_form()
            token = self.post("/oauth2/token", data=form).json()["access_token"]
            self.session.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send ``method path`` to the emulator."""
        return self.session.request(method, f"{self.emulator.url}{path}", **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def order(self, path: str = "/api/order", **fields: Any) -> requests.Response:
        """Submit (or preview, with ``path``) a valid ``new`` order with ``fields`` overriding."""
        return self.post(path, json=emulator_order(**fields))


Connect = Callable[..., Client]
Start = Callable[..., LimioEmulator]


#: The Airflow connection to the test S3 server (moto, ``tests/conftest.py``) that S3 URIs name
#: (``s3://limio_s3@bucket/...``).
LIMIO_S3_CONN_ID = "limio_s3"

#: Faults of the test S3 server (moto, ``tests/conftest.py``): a PUT whose key contains ``key`` and whose body
#: contains every string of ``body`` is answered ``500 InternalError`` (S3's own transient error), ``times``
#: times; ``hits`` counts them. Tests append one and remove it when done (see :func:`s3_put_fault`).
S3_PUT_FAULTS: list[dict[str, Any]] = []


def s3_put_fault(key: str, *body: str, times: int = 1000) -> dict[str, Any]:
    """Fail the test S3 server's PUTs of ``key`` whose body holds every one of ``body``; the fault, to read
    ``hits`` from and to remove from :data:`S3_PUT_FAULTS`."""
    fault = {"key": key, "body": body, "times": times, "hits": 0}
    S3_PUT_FAULTS.append(fault)
    return fault


def ledger_write_fault(root: str, key: str, *body: str, times: int = 1000) -> dict[str, Any]:
    """:func:`s3_put_fault` for a ledger under ``root``, on S3 or on the local disk. On the local disk the
    ledger's writes in this process (``dag.test`` runs tasks here) of a record whose path holds ``key`` and
    whose new bytes hold every one of ``body`` fail as a full disk does (``ENOSPC``), nothing written; the
    fault is in :data:`S3_PUT_FAULTS` all the same, and is removed the same way."""
    if not root.startswith("file://"):
        return s3_put_fault(key, *body, times=times)
    _fail_local_ledger_writes()
    fault = {"key": key, "body": body, "times": times, "hits": 0, "local": True}
    S3_PUT_FAULTS.append(fault)
    return fault


def _fail_local_ledger_writes() -> None:
    """Wrap the ledger's local writes (once per process) so that :data:`S3_PUT_FAULTS`' local faults fail them."""
    import errno

    from limio_provider.exactly_once import ledger

    if getattr(ledger._swap, "faulty", False):
        return
    real_swap, real_write = ledger._swap, ledger._write

    def fail(path: str, data: bytes) -> None:
        for fault in S3_PUT_FAULTS:
            hit = fault.get("local") and fault["times"] > 0 and fault["key"] in path
            if hit and all(part.encode() in data for part in fault["body"]):
                fault["times"] -= 1
                fault["hits"] += 1
                raise OSError(errno.ENOSPC, "No space left on device (injected by a test)", path)

    def swap(fs: Any, path: str, expected: dict[str, Any], data: bytes, *, durable: bool) -> None:
        fail(path, data)
        real_swap(fs, path, expected, data, durable=durable)

    def write(fs: Any, path: str, data: bytes, *, create: bool, durable: bool = False) -> None:
        fail(path, data)
        real_write(fs, path, data, create=create, durable=durable)

    swap.faulty = True  # type: ignore[attr-defined]
    ledger._swap, ledger._write = swap, write


def moto_client(endpoint: str) -> Any:
    """A boto3 S3 client on moto's server at ``endpoint`` (dummy credentials: never real AWS)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
