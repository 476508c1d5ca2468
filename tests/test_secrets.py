"""Secrets never leak: neither the client secret nor any access token Limio issued.

The example DAGs and a small submit DAG run with dag.test() (tasks run in this process) against an emulator
with a distinctive client secret, on their happy and failing paths: 401 (a refresh that fails too, and wrong
credentials), 400, and ambiguous outcomes (processed then 502, connection dropped). After each run these are
searched for the secret, a wrong secret that was configured, and every token issued so far:

- the task logs (everything written to stdout/stderr, the logging records, and any log file),
- every XCom value of the run,
- the rendered template fields of the run,
- every row of the run in the metadata DB (any table with ``dag_id`` and ``run_id``), and at the end the
  SQLite file itself,
- the exceptions, raised by the hook directly (``str``, ``repr``, traceback, chained exceptions).

Controls show each of those channels really is searched (a canary planted in each is found), that the
search finds a secret wherever it sits and in its usual encodings, and that the failing paths do fail.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import traceback
import uuid
from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from airflow.providers.common.compat.sdk import DAG, task

from limio_provider.exceptions import (
    LimioAuthError,
    LimioError,
    LimioOrderRejectedError,
    LimioOutcomeUnknownError,
)
from limio_provider.hooks.limio import LimioHook
from limio_provider.operators import LimioSubmitOrderOperator
from limio_provider.testing import Fault, LimioEmulator
from tests.helpers import START, Capture, new_order, run_dag, set_no_proxy, states, xcom

pytestmark = pytest.mark.usefixtures("airflow_db")

CLIENT_ID = "client-secret-tests"
# Made at import, not written out: Airflow stores the source of a file that defines DAGs (dag_code), and
# this file does, so a literal secret here would be "found" in the metadata DB.
SECRET = "cs-DISTINCTIVE-" + uuid.uuid4().hex[:12]
WRONG_SECRET = "cs-WRONG-DISTINCTIVE-" + uuid.uuid4().hex[:12]  # on a second connection; Limio refuses it
EXAMPLES = Path(__file__).resolve().parents[1] / "dags_examples"
#: The secret as the hook itself sends it: the form body, a URL, JSON, and the HTTP Basic header.
SENT_FORMS = (
    quote_plus(SECRET),
    json.dumps(SECRET)[1:-1],
    SECRET,
    base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode(),
)
FAST = {"timeout": 2.0, "retry_backoff": 0.01, "retry_max_backoff": 0.05}


# -- finding a secret ---------------------------------------------------------------------------------


def encodings(secret: str) -> set[str]:
    """``secret`` as it might appear: verbatim, URL-encoded, base64, or inside an HTTP Basic header."""
    forms = {secret, quote(secret, safe=""), quote_plus(secret), base64.b64encode(secret.encode()).decode()}
    for client_id in (CLIENT_ID, ""):
        forms.add(base64.b64encode(f"{client_id}:{secret}".encode()).decode())
    return forms


def find_leaks(text: str, secrets: Iterable[str]) -> list[str]:
    """The secrets that appear in ``text``, in any of their :func:`encodings`."""
    return sorted({s for s in secrets if s and any(form in text for form in encodings(s))})


def dump(value: Any) -> str:
    return json.dumps(value, default=repr, ensure_ascii=False)


def test_control_find_leaks_finds_a_secret_wherever_it_sits() -> None:
    token = "tok-" + uuid.uuid4().hex
    secrets = {SECRET, token}
    assert find_leaks(f"HTTP 401 for client_secret={SECRET} (retrying)", secrets) == [SECRET]
    assert find_leaks(dump({"headers": {"Authorization": f"Bearer {token}"}}), secrets) == [token]
    assert find_leaks(dump({"nested": [{"deep": f"x{SECRET}y"}]}), secrets) == [SECRET]
    basic = base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()
    assert find_leaks(f"Authorization: Basic {basic}", secrets) == [SECRET]
    assert find_leaks(f"client_secret={quote_plus(SECRET + ' &')}", {SECRET + " &"}) == [SECRET + " &"]
    assert find_leaks("client_secret=*** token=***", secrets) == []
    assert find_leaks(SECRET[:-1], secrets) == []


# -- where to look --------------------------------------------------------------------------------------


def run_rows(run: Any) -> dict[str, list[dict[str, Any]]]:
    """Every row of every metadata table that belongs to ``run`` (tables with ``dag_id`` and ``run_id``)."""
    import sqlalchemy as sa
    from airflow.models.base import Base
    from airflow.utils.session import create_session

    rows: dict[str, list[dict[str, Any]]] = {}
    with create_session() as session:
        for table in Base.metadata.sorted_tables:
            if {"dag_id", "run_id"} <= set(table.c.keys()):
                query = sa.select(table).where(table.c.dag_id == run.dag_id, table.c.run_id == run.run_id)
                rows[table.name] = [dict(row._mapping) for row in session.execute(query)]
    return rows


def xcom_values(run: Any) -> list[tuple[str, str, int, Any]]:
    """Every XCom of ``run``, deserialized: (task_id, key, map_index, value)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter_by(dag_id=run.dag_id, run_id=run.run_id).all()
        return [(r.task_id, r.key, r.map_index, XComModel.deserialize_value(r)) for r in rows]


def rendered_fields(run: Any) -> list[tuple[str, int, dict[str, Any]]]:
    """The rendered template fields of every task instance of ``run``: (task_id, map_index, fields)."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as RTIF
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(RTIF).filter_by(dag_id=run.dag_id, run_id=run.run_id).all()
        return [(r.task_id, r.map_index, r.rendered_fields) for r in rows]


def log_files() -> str:
    """The text of every task log file Airflow wrote (dag.test() may write none)."""
    from airflow.configuration import conf

    folder = Path(conf.get("logging", "base_log_folder"))
    if not folder.is_dir():
        return ""
    return "\n".join(p.read_text(errors="replace") for p in sorted(folder.rglob("*")) if p.is_file())


def metadata_db_bytes() -> bytes:
    """The raw SQLite metadata DB (and its journal, if any): catches anything ever written to it."""
    from airflow.configuration import conf

    url = conf.get("database", "sql_alchemy_conn")
    assert url.startswith("sqlite:///"), url
    path = url.removeprefix("sqlite:///").split("?")[0]
    return b"".join(Path(p).read_bytes() for p in (path, path + "-wal", path + "-journal") if os.path.exists(p))


def exception_texts(exc: BaseException) -> str:
    """All an exception shows: str, repr, args, attributes and traceback, for it and every chained one."""
    texts = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), dump(current.args), dump(vars(current))]
        texts += traceback.format_exception(current)
        current = current.__cause__ or current.__context__  # even a context hidden by "from None"
    return "\n".join(texts)


class Watch:
    """Runs DAGs and collects, per run, what each channel shows; knows every token issued so far."""

    def __init__(self, emulator: LimioEmulator, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture):
        self.emulator, self.capfd, self.caplog = emulator, capfd, caplog
        self.spied_tokens: set[str] = set()  # tokens the hook received, whatever happened to them later
        self.emulator_tokens: set[str] = set()  # tokens the emulator holds after each run (before any revoke)

    @property
    def secrets(self) -> set[str]:
        return {SECRET, WRONG_SECRET} | self.spied_tokens | self.emulator_tokens

    def channels(self, run: Any) -> dict[str, str]:
        out, err = self.capfd.readouterr()
        logs = out + err + self.caplog.text + log_files()
        self.caplog.clear()
        return {
            "task logs": logs,
            "XCom": dump(xcom_values(run)),
            "rendered template fields": dump(rendered_fields(run)),
            "metadata DB rows of the run": dump(run_rows(run)),
        }

    def run(self, dag: Any, **kwargs: Any) -> tuple[Any, dict[str, str]]:
        """Run ``dag``, record the tokens issued, and assert no channel shows a secret."""
        self.capfd.readouterr()  # start from a clean capture
        self.caplog.clear()
        run = run_dag(dag, **kwargs)
        self.emulator_tokens |= set(self.emulator._tokens)  # noqa: SLF001 - the issued tokens, read-only
        channels = self.channels(run)
        for channel, text in channels.items():
            assert find_leaks(text, self.secrets) == [], f"{dag.dag_id}: a secret leaks into the {channel}"
        return run, channels

    def assert_db_clean(self) -> None:
        raw = metadata_db_bytes()
        leaked = [s for s in self.secrets if any(form.encode() in raw for form in encodings(s))]
        assert leaked == [], "a secret was written to the metadata DB"


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[LimioEmulator]:
    """An emulator with a distinctive client secret; ``limio_default`` points at it, ``limio_wrong`` too but
    with a wrong secret."""
    with LimioEmulator(client_id=CLIENT_ID, client_secret=SECRET) as emulator:
        for name, value in emulator.connection_env().items():
            monkeypatch.setenv(name, value)
        wrong = {"conn_type": "limio", "host": emulator.url, "login": CLIENT_ID, "password": WRONG_SECRET}
        monkeypatch.setenv("AIRFLOW_CONN_LIMIO_WRONG", json.dumps(wrong))
        yield emulator


@pytest.fixture
def watch(
    emulator: LimioEmulator,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Watch]:
    watch = Watch(emulator, capfd, caplog)
    fetch = LimioHook._fetch_token

    def spy(self: LimioHook) -> Any:  # a pass-through: records the token a task's hook received
        token = fetch(self)
        watch.spied_tokens.add(token.value)
        return token

    monkeypatch.setattr(LimioHook, "_fetch_token", spy)
    yield watch
    assert watch.emulator_tokens <= watch.spied_tokens  # the spy saw every token the emulator still knew
    watch.assert_db_clean()


# -- controls: every channel searched really carries what a task puts there ----------------------------


def test_control_each_channel_is_searched(watch: Watch) -> None:
    canary = "CANARY-" + uuid.uuid4().hex

    with DAG("limio_secrets_canary", schedule=None, start_date=START, params={"canary": canary}) as dag:

        @task
        def plant(value: str) -> str:
            print(f"task log line: {value}")
            return value

        plant("{{ params.canary }}")

    run, channels = watch.run(dag)
    assert run.state == "success", states(run)
    for channel, text in channels.items():
        assert find_leaks(text, {canary}) == [canary], f"the {channel} were not searched"
    assert canary.encode() in metadata_db_bytes()


# -- the example DAGs -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dagbag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(EXAMPLES))
    assert bag.import_errors == {}
    return bag


def example(dagbag: Any, dag_id: str) -> Any:
    return copy.deepcopy(dagbag.get_dag(dag_id))  # dag.test() writes run_conf into the DAG's own params


def failed_tasks(run: Any) -> list[str]:
    return sorted(task for task, state in states(run).items() if state == "failed")


EXAMPLE_RUNS = [
    pytest.param("limio_scheduled_renewals", [], "success", None, id="renewals-happy"),
    pytest.param(
        "limio_scheduled_renewals",
        [Fault(route="order", action="status", status=401)],  # the refreshed token is refused too
        "failed",
        "(with a freshly issued token)",
        id="renewals-401",
    ),
    pytest.param("limio_billing_reconciliation", [], "success", None, id="reconciliation-happy"),
    pytest.param(
        "limio_billing_reconciliation",
        [Fault(route="preview", action="status", status=400, message="Offer not available to this account")],
        "failed",
        "Offer not available to this account",
        id="reconciliation-400",
    ),
    pytest.param("limio_backfill_orders", [], "success", None, id="backfill-happy"),
    pytest.param(
        "limio_backfill_orders",
        [Fault(route="order", action="process_then_status", status=502)],  # created, then 502: found by id
        "success",
        None,
        id="backfill-processed-then-502",
    ),
    pytest.param(
        "limio_backfill_orders",
        [Fault(route="order", action="drop")],  # not created, and not found: unknown, and the task fails
        "failed",
        "LimioBatchFailedError: 2 of 2 orders were not submitted (unknown 2)",
        id="backfill-dropped",
    ),
]
#: The outcomes in the backfill's results file (its two orders), by case.
BACKFILL_OUTCOMES = {
    "backfill-happy": ["submitted", "submitted"],
    "backfill-processed-then-502": ["submitted", "submitted"],
    "backfill-dropped": ["unknown", "unknown"],
}


def backfill_files(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The renewals file of START for ``limio_backfill_orders`` (two orders), and a ledger, under ``root``."""
    renewals = root / "renewals"
    renewals.mkdir(parents=True)
    ids = [f"renewal-{START:%Y-%m-%d}-{n}" for n in (1, 2)]
    (renewals / f"{START:%Y-%m-%d}.jsonl").write_text("".join(json.dumps(new_order(i)) + "\n" for i in ids))
    monkeypatch.setenv("AIRFLOW_VAR_LIMIO_RENEWALS_ROOT", f"file://{root}")
    monkeypatch.setenv("AIRFLOW_VAR_LIMIO_LEDGER_PATH", f"file://{root}/ledger")


def backfill_written(root: Path) -> str:
    """Everything the backfill wrote under ``root`` (its results file and the ledger's records)."""
    return "\n".join(p.read_text(errors="replace") for p in sorted(root.rglob("*")) if p.is_file())


def backfill_outcomes(root: Path) -> list[str]:
    results = root / "renewals" / f"{START:%Y-%m-%d}.results.jsonl"
    return sorted(json.loads(line)["outcome"] for line in results.read_text().splitlines())


@pytest.mark.parametrize(("dag_id", "faults", "expected", "failure_text"), EXAMPLE_RUNS)
def test_example_dags_leak_no_secret(
    dagbag: Any,
    watch: Watch,
    dag_id: str,
    faults: list[Fault],
    expected: str,
    failure_text: str | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    for fault in faults:
        watch.emulator.add_fault(copy.deepcopy(fault))
    if dag_id == "limio_backfill_orders":
        backfill_files(tmp_path, monkeypatch)
    run, channels = watch.run(example(dagbag, dag_id), logical_date=START)

    assert run.state == expected, states(run)
    assert watch.spied_tokens, "no token was issued: the run never reached Limio"
    submitted = [r for r in watch.emulator.requests if r.path in ("/api/order", "/api/admin/order")]
    if expected == "success":
        assert failed_tasks(run) == []
        assert watch.emulator.orders, "nothing was submitted"
        assert xcom_values(run) and rendered_fields(run)  # the XCom and rendered-field checks had rows
    else:
        assert failed_tasks(run), states(run)
        assert failure_text in channels["task logs"]  # the failure is in the logs that were searched
    if faults and faults[0].route == "order":
        assert submitted and all(r.status != 200 for r in submitted)  # every submit met the fault
    if dag_id == "limio_backfill_orders":
        assert backfill_outcomes(tmp_path) == BACKFILL_OUTCOMES[request.node.callspec.id]
        assert (tmp_path / "ledger").is_dir()  # the results file and the ledger are searched too
        assert find_leaks(backfill_written(tmp_path), watch.secrets) == []


# -- a submit DAG on each failing path --------------------------------------------------------------------


def submit_dag(dag_id: str, external_id: str, conn_id: str = "limio_default") -> DAG:
    """One submit whose order is a template rendered to JSON (so it shows in the rendered fields)."""
    params = {"order": new_order(external_id)}
    with DAG(dag_id, schedule=None, start_date=START, params=params) as dag:
        LimioSubmitOrderOperator(
            task_id="submit",
            order="{{ params.order | tojson }}",
            limio_conn_id=conn_id,
            hook_params=FAST,
            retries=0,
            retry_delay=timedelta(0),
        )
    return dag


SUBMIT_PATHS = [
    pytest.param("limio_default", [], "success", None, id="happy"),
    pytest.param(
        "limio_default",
        [Fault(route="order", action="status", status=401)],
        "failed",
        "(with a freshly issued token)",
        id="401-refresh-fails-too",
    ),
    pytest.param(
        "limio_default",
        [Fault(route="order", action="revoke_tokens", times=1)],  # revoked mid-run: refreshed, then it works
        "success",
        None,
        id="401-revoked-then-refreshed",
    ),
    pytest.param("limio_wrong", [], "failed", "refused the client credentials", id="401-wrong-credentials"),
    pytest.param(
        "limio_default",
        [Fault(route="order", action="status", status=400, message="Payment method declined")],
        "failed",
        "answered HTTP 400: Payment method declined",
        id="400",
    ),
    pytest.param(
        "limio_default",
        [Fault(route="order", action="process_then_status", status=502)],
        "success",
        None,
        id="processed-then-502",
    ),
    pytest.param(
        "limio_default", [Fault(route="order", action="drop")], "failed", "Limio may have received order", id="dropped"
    ),
    pytest.param(
        "limio_default",
        [Fault(route="order", action="status", status=400, message=f"echo {' '.join(SENT_FORMS)}")],
        "failed",
        "answered HTTP 400: echo *** *** *** ***",
        id="400-echoes-the-secret-in-every-encoding",
    ),
    pytest.param(
        "limio_default",
        [Fault(route="token", action="status", status=400, message=f"bad {quote_plus(SECRET)}&{SECRET}")],
        "failed",
        "refused the client credentials",
        id="token-400-echoes-the-secret",
    ),
]


@pytest.mark.parametrize(("conn_id", "faults", "expected", "failure_text"), SUBMIT_PATHS)
def test_submit_operator_leaks_no_secret(
    watch: Watch,
    request: pytest.FixtureRequest,
    conn_id: str,
    faults: list[Fault],
    expected: str,
    failure_text: str | None,
) -> None:
    for fault in faults:
        watch.emulator.add_fault(copy.deepcopy(fault))
    name = request.node.callspec.id.replace("-", "_")
    run, channels = watch.run(submit_dag(f"limio_secrets_{name}", f"EXT-SECRETS-{name}", conn_id))

    assert states(run) == {"submit": expected}
    assert f"EXT-SECRETS-{name}" in channels["rendered template fields"]  # the rendered order was searched
    if conn_id == "limio_wrong":
        assert watch.spied_tokens == set()
        assert [r.status for r in watch.emulator.requests] == [401]  # the token request, refused
    elif faults and faults[0].route == "token":
        assert watch.spied_tokens == set()
        assert [r.status for r in watch.emulator.requests] == [400]
    else:
        assert watch.spied_tokens
    if expected == "failed":
        assert failure_text in channels["task logs"]
    else:
        (result,) = xcom(run, "submit")
        assert result["id"] in watch.emulator.orders
    if name == "401_revoked_then_refreshed":
        assert len(watch.spied_tokens) == 2 and not watch.spied_tokens <= set(watch.emulator._tokens)  # noqa: SLF001


# -- the exceptions themselves, raised outside any DAG ---------------------------------------------------

HOOK_PATHS = [
    pytest.param(
        "limio_default", Fault(route="order", action="status", status=401), "submit", LimioAuthError, id="401"
    ),
    pytest.param("limio_wrong", None, "submit", LimioAuthError, id="401-wrong-credentials"),
    pytest.param(
        "limio_default",
        Fault(route="order", action="status", status=400, message="Payment method declined"),
        "submit",
        LimioOrderRejectedError,
        id="400",
    ),
    pytest.param(
        "limio_default",
        Fault(route="preview", action="status", status=400, message="Offer not available"),
        "preview",
        LimioOrderRejectedError,
        id="400-preview",
    ),
    pytest.param(
        "limio_default",
        Fault(route="order", action="process_then_status", status=502),
        "submit",
        LimioOutcomeUnknownError,
        id="processed-then-502",
    ),
    pytest.param(
        "limio_default", Fault(route="order", action="drop"), "submit", LimioOutcomeUnknownError, id="dropped"
    ),
    pytest.param(
        "limio_default",
        Fault(route="order", action="process_then_hang", latency=1.0),
        "submit",
        LimioOutcomeUnknownError,
        id="processed-then-no-answer",
    ),
]


@pytest.mark.parametrize(("conn_id", "fault", "call", "error"), HOOK_PATHS)
def test_hook_exceptions_leak_no_secret(
    emulator: LimioEmulator, conn_id: str, fault: Fault | None, call: str, error: type[LimioError]
) -> None:
    hook = LimioHook(conn_id, timeout=0.5, retry_limit=0)
    tokens: set[str] = set()
    if conn_id == "limio_default":
        tokens.add(hook.get_token())  # the token the failing call will carry
        tokens |= set(emulator._tokens)  # noqa: SLF001
    if fault is not None:
        emulator.add_fault(fault)
    method = hook.submit_order if call == "submit" else hook.preview_order

    with pytest.raises(error) as excinfo:
        method(new_order("EXT-HOOK"))
    tokens |= set(emulator._tokens)  # noqa: SLF001 - any token issued by a refresh
    if hook._token is not None:  # noqa: SLF001
        tokens.add(hook._token.value)  # noqa: SLF001

    text = exception_texts(excinfo.value)
    assert type(excinfo.value).__name__ in text  # the control: the text searched is the exception's
    assert find_leaks(text, {SECRET, WRONG_SECRET} | tokens) == []
    assert len(tokens) == (0 if conn_id == "limio_wrong" else 2 if fault and fault.status == 401 else 1)
    # and the hook did hold the secret it must not show
    assert hook.settings.client_secret == (WRONG_SECRET if conn_id == "limio_wrong" else SECRET)


# -- the secret never travels to another host: redirects, proxies ----------------------------------------


@pytest.mark.parametrize("route", ["token", "order"])
def test_a_redirect_sends_nothing_to_its_target(watch: Watch, capture: Capture, route: str) -> None:
    watch.emulator.add_fault(Fault(route=route, action="status", status=307, location=f"{capture.url}/elsewhere"))
    run, channels = watch.run(submit_dag(f"limio_secrets_redirect_{route}", f"EXT-REDIRECT-{route}"))
    assert states(run) == {"submit": "failed"}
    assert "a redirect to 127.0.0.1, not followed" in channels["task logs"]  # the failure was searched
    assert capture.requests == []  # neither the form with the secret nor the order went there


def test_a_proxy_in_the_environment_never_sees_a_loopback_tenant(
    watch: Watch, capture: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, capture.url)
    set_no_proxy(monkeypatch, "")
    run, _ = watch.run(submit_dag("limio_secrets_proxy", "EXT-PROXY"))
    assert states(run) == {"submit": "success"}
    assert capture.requests == []


def test_control_the_capture_server_records_what_reaches_it(capture: Capture) -> None:
    import requests

    requests.post(f"{capture.url}/steal", data={"client_secret": SECRET}, timeout=5)
    assert capture.requests and SECRET in capture.requests[0][2].decode()
