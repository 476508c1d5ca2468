"""Test set-up: a throw-away AIRFLOW_HOME (set before anything imports Airflow) and a SQLite DB on demand."""

from __future__ import annotations

import os
import tempfile

os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="limio-airflow-home-")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = os.path.join(os.environ["AIRFLOW_HOME"], "dags")
os.makedirs(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.pop("AIRFLOW_CONN_LIMIO_DEFAULT", None)

from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from tests.helpers import AIRFLOW_VERSION, LIMIO_S3_CONN_ID, S3_PUT_FAULTS, Capture, in_use, moto_client  # noqa: E402


def _one_execution_api_app() -> None:
    """Airflow 3.0 and 3.1 build the in-process Execution API app (cadwyn's versioned routers: about 2.6 s on
    2 cores) anew for every ``dag.test()`` run; 3.2+ does not. The suite builds it once: each run still gets
    its own client, dag bag and dependency overrides on it. Test speed only; nothing is faked."""
    if not (3, 0) <= (AIRFLOW_VERSION.major, AIRFLOW_VERSION.minor) < (3, 2):
        return
    import functools

    import airflow.api_fastapi.execution_api.app as app_module

    app_module.create_task_execution_api_app = functools.cache(app_module.create_task_execution_api_app)


_one_execution_api_app()


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """A fresh SQLite metadata DB under the test AIRFLOW_HOME, created once per session."""
    from airflow.utils import db

    db.resetdb()


@pytest.fixture
def task_log(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> Callable[[], str]:
    """What tasks logged since the last call: Airflow 3's task logs reach the captured output, Airflow 2's
    the captured log records."""

    def read() -> str:
        text = "".join(capfd.readouterr()) + caplog.text
        caplog.clear()
        return text

    return read


@pytest.fixture
def capture() -> Iterator[Capture]:
    """A loopback server that records what reaches it: a redirect target or a proxy must see nothing."""
    with Capture() as server:
        yield server


# --- The order ledger's backends: a local directory and S3 (moto's server on 127.0.0.1; never real AWS) ---


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[str]:
    """moto's server in this process on 127.0.0.1 and an ephemeral port, for the session; yields its endpoint URL.

    No real AWS, ever: every ``AWS_*`` variable of the machine is dropped, the credentials are dummies, the
    instance metadata service is off, and a client that is not pointed at moto explicitly (through the
    ``limio_s3`` connection or ``endpoint_url``) goes to a closed local port instead of Amazon.
    """
    import logging

    pytest.importorskip("moto", reason="moto is in the test extra, not in the older Airflow lines' environments")
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        for name in [name for name in os.environ if name.startswith("AWS_")]:
            mp.delenv(name)
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # the discard port: refused at once, never Amazon
        }.items():
            mp.setenv(name, value)
        for name in ("NO_PROXY", "no_proxy"):
            mp.setenv(name, ",".join(filter(None, [os.environ.get(name), "127.0.0.1", "localhost"])))
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
        import moto.backends

        if callable(getattr(moto.backends, "list_of_moto_modules", None)):
            # moto lists its own package directory (~180 stat calls, under a global lock) on every request to
            # find the service; it never changes while we run, so list it once (a quarter of each request's CPU).
            modules = tuple(moto.backends.list_of_moto_modules())
            mp.setattr(moto.backends, "list_of_moto_modules", lambda: modules)
        import threading

        from moto.s3.responses import S3Response

        # S3's conditional PUT (If-None-Match: *) is atomic; moto's server checks, then writes, with other
        # requests' threads free to run in between, so two racing creates could both succeed (seen once in
        # the 8-process reclaim race). One PUT at a time makes moto keep S3's promise.
        put_object, one_put = S3Response.put_object, threading.Lock()

        def atomic_put_object(self: S3Response) -> Any:
            body = self.body.decode(errors="replace") if isinstance(self.body, bytes) else str(self.body or "")
            for fault in S3_PUT_FAULTS:
                hit = not fault.get("local") and fault["times"] > 0 and fault["key"] in self.path
                if hit and all(part in body for part in fault["body"]):
                    fault["times"] -= 1
                    fault["hits"] += 1
                    return 500, {}, "<Error><Code>InternalError</Code><Message>injected by a test</Message></Error>"
            with one_put:
                return put_object(self)

        mp.setattr(S3Response, "put_object", atomic_put_object)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            _, port = server.get_host_and_port()
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()


@pytest.fixture(scope="session")
def limio_s3_conn(moto_s3: str) -> str:
    """The ``limio_s3`` Airflow connection (an ``AIRFLOW_CONN_LIMIO_S3`` value): AWS, pointed at moto."""
    import json

    return json.dumps(
        {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"endpoint_url": moto_s3, "region_name": "us-east-1"},
        }
    )


@pytest.fixture
def s3_ledger_root(moto_s3: str, limio_s3_conn: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket in moto and the ``limio_s3`` connection set: ``s3://limio_s3@<bucket>/ledger``."""
    import uuid

    bucket = f"limio-ledger-{uuid.uuid4().hex[:16]}"
    client = moto_client(moto_s3)
    client.create_bucket(Bucket=bucket)
    monkeypatch.setenv(f"AIRFLOW_CONN_{LIMIO_S3_CONN_ID.upper()}", limio_s3_conn)
    return in_use(f"s3://{LIMIO_S3_CONN_ID}@{bucket}/ledger")


@pytest.fixture(params=["local", "s3"])
def ledger_root(request: pytest.FixtureRequest) -> str:
    """A ledger root on each backend: the local disk, and S3 (moto; not installed in the older Airflow lines'
    test environments, where a test using this runs on the local disk only)."""
    if request.param == "s3":
        pytest.importorskip("moto")
    return str(request.getfixturevalue(f"{request.param}_ledger_root"))


@pytest.fixture
def local_ledger_root(tmp_path) -> str:
    """A ledger root on the local disk: ``file://<tmp_path>/ledger``."""
    return in_use(f"file://{tmp_path}/ledger")
