"""The CeleryExecutor deployment's backing services, from the OS packages (``.ci/install-deploy-services``):
PostgreSQL (metadata database and Celery result backend) and Redis (the broker), each a fresh instance in a
temporary folder on a free loopback port, started as a service of the deployment (stopped with it).

PostgreSQL refuses to run as root: as root it runs as the ``postgres`` user the package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.deploy.harness import Processes, wait_until
from tests.helpers import free_port, tail

#: How long a fresh PostgreSQL or Redis may take to accept connections.
SERVICE_SECONDS = 60


def _missing(what: str) -> NoReturn:
    pytest.fail(
        f"{what} not found: the CeleryExecutor deployment needs Debian's redis-server and postgresql. Run the "
        "tests with `make test-deploy`, which installs them (.ci/install-deploy-services, as root), or install them "
        "yourself: apt-get install -y --no-install-recommends redis-server postgresql",
        pytrace=False,
    )


def scratch_dir(prefix: str, owner: str | None = None) -> Path:
    """A new folder in the system's temporary directory (reachable by another user, unlike pytest's)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if owner is not None:
        user = pwd.getpwnam(owner)
        os.chown(path, user.pw_uid, user.pw_gid)
    return path


def start_postgres(processes: Processes, data: Path) -> str:
    """A PostgreSQL server with an ``airflow`` database (trust authentication, loopback only, no fsync: it
    is thrown away); its SQLAlchemy URL without the driver: ``postgresql://postgres@127.0.0.1:PORT/airflow``."""
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if not binaries:
        _missing("PostgreSQL's server (/usr/lib/postgresql/*/bin/postgres)")
    bin_dir = Path(binaries[-1]).parent
    as_postgres = (
        ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--"] if os.geteuid() == 0 else []
    )
    port = free_port()
    processes.run(
        "postgres-initdb",
        [
            *as_postgres,
            str(bin_dir / "initdb"),
            "-D",
            str(data / "db"),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ],
        timeout=SERVICE_SECONDS,
    )
    server = processes.start(
        "postgres",
        [
            *as_postgres,
            str(bin_dir / "postgres"),
            "-D",
            str(data / "db"),
            "-p",
            str(port),
            "-k",
            str(data),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=300",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ],
        stop_signal=signal.SIGINT,  # fast shutdown: SIGTERM would wait for every client to disconnect
    )
    import psycopg2

    def connect() -> Any:
        if not server.alive():
            pytest.fail(f"postgres exited ({server.process.returncode}):\n{tail(server.log)}", pytrace=False)
        try:
            return psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        except psycopg2.OperationalError:
            return None

    connection = wait_until("PostgreSQL to accept connections", connect, SERVICE_SECONDS, 0.2, lambda: tail(server.log))
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("CREATE DATABASE airflow")
    connection.close()
    return f"postgresql://postgres@127.0.0.1:{port}/airflow"


def start_redis(processes: Processes, data: Path) -> str:
    """A Redis server that keeps nothing on disk; its URL ``redis://127.0.0.1:PORT/0``."""
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        _missing("redis-server")
    port = free_port()
    server = processes.start(
        "redis",
        [
            redis_server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data),
        ],
    )
    import redis

    def ping() -> bool:
        if not server.alive():
            pytest.fail(f"redis-server exited ({server.process.returncode}):\n{tail(server.log)}", pytrace=False)
        try:
            return bool(redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1).ping())
        except redis.exceptions.ConnectionError:
            return False

    wait_until("Redis to answer", ping, SERVICE_SECONDS, 0.1, lambda: tail(server.log))
    return f"redis://127.0.0.1:{port}/0"
