"""The emulator's hostile-network faults and HTTPS, over real loopback connections (no mocks)."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
import requests

from limio_provider.testing import Fault, LimioEmulator
from limio_provider.testing.faults import NOT_TLS
from tests.helpers import Client, Connect, Start, token_form
from tests.helpers import emulator_order as new_order


def raw_order(emulator: LimioEmulator, api: Client, **fields: Any) -> http.client.HTTPConnection:
    """Send ``POST /api/order`` on a fresh ``http.client`` connection (HTTPS with the emulator's
    certificate if it has one) and return the connection, its answer unread."""
    host, port = emulator.url.rsplit("/", 1)[1].rsplit(":", 1)
    if emulator.ca_path:
        context = ssl.create_default_context(cafile=emulator.ca_path)
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(host, int(port), context=context)
    else:
        connection = http.client.HTTPConnection(host, int(port), timeout=5)
    headers = {"Authorization": api.session.headers["Authorization"], "Content-Type": "application/json"}
    connection.request("POST", "/api/order", body=json.dumps(new_order(**fields)), headers=headers)
    return connection


def caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``error`` is, wraps (in its ``args``) or was raised from an exception of type ``kind``."""
    seen: list[BaseException] = [error]
    while seen:
        current = seen.pop()
        if isinstance(current, kind):
            return True
        seen += [arg for arg in current.args if isinstance(arg, BaseException)]
        seen += [cause for cause in (current.__cause__, current.__context__) if cause is not None]
    return False


def ordered(emulator: LimioEmulator, external_id: str) -> bool:
    """Whether exactly one order with ``external_id`` was created."""
    return len(emulator.orders_with_external_id(external_id)) == 1


# -- new actions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["status", "process_then_status"])
def test_status_faults_can_redirect_with_a_location(api: Client, emu: LimioEmulator, action: str) -> None:
    elsewhere = "https://elsewhere.example/api/order"
    emu.add_fault(Fault(route="order", action=action, status=307, location=elsewhere, times=1))
    answer = api.post("/api/order", json=new_order(external_id="EXT-307"), allow_redirects=False)
    assert answer.status_code == 307 and answer.headers["Location"] == elsewhere
    assert answer.json() == {"message": "Temporary Redirect"}
    assert ordered(emu, "EXT-307") is (action == "process_then_status")
    assert emu.requests[-1].status == 307


def test_process_then_truncate_sends_half_the_declared_body(api: Client, emu: LimioEmulator) -> None:
    emu.add_fault(Fault(route="order", action="process_then_truncate", times=2))
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        api.order(external_id="EXT-CUT")
    assert ordered(emu, "EXT-CUT") and emu.requests[-1].status == 200
    answer = raw_order(emu, api, external_id="EXT-CUT-2").getresponse()
    assert answer.status == 200 and answer.getheader("Content-Type") == "application/json"
    with pytest.raises(http.client.IncompleteRead) as cut:
        answer.read()
    declared = int(answer.getheader("Content-Length"))
    assert len(cut.value.partial) == declared // 2 and cut.value.expected == declared - declared // 2
    assert cut.value.partial.startswith(b'{"id": "order-') and ordered(emu, "EXT-CUT-2")
    assert api.order().status_code == 200  # times=2 used up


def test_process_then_bad_chunked_sends_a_chunk_size_that_is_not_hex(api: Client, emu: LimioEmulator) -> None:
    emu.add_fault(Fault(route="order", action="process_then_bad_chunked", times=2))
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        api.order(external_id="EXT-CHUNK")
    assert ordered(emu, "EXT-CHUNK") and emu.requests[-1].status == 200
    answer = raw_order(emu, api, external_id="EXT-CHUNK-2").getresponse()
    assert answer.status == 200 and answer.getheader("Transfer-Encoding") == "chunked"
    assert answer.getheader("Content-Length") is None
    with pytest.raises(http.client.IncompleteRead):  # http.client reads "zz" as no chunk size
        answer.read()
    assert ordered(emu, "EXT-CHUNK-2")
    assert api.order().status_code == 200  # times=2 used up


def test_process_then_undecodable_labels_plain_json_as_gzip(api: Client, emu: LimioEmulator) -> None:
    emu.add_fault(Fault(route="order", action="process_then_undecodable", times=2))
    with pytest.raises(requests.exceptions.ContentDecodingError):
        api.order(external_id="EXT-GZ")
    assert ordered(emu, "EXT-GZ") and emu.requests[-1].status == 200
    answer = raw_order(emu, api, external_id="EXT-GZ-2").getresponse()
    assert answer.status == 200 and answer.getheader("Content-Encoding") == "gzip"
    body = answer.read()
    assert len(body) == int(answer.getheader("Content-Length"))
    assert json.loads(body)["external_id"] == "EXT-GZ-2"  # the order, not gzipped
    with pytest.raises((OSError, zlib.error)):
        gzip.decompress(body)


def test_process_then_trickle_head_sends_the_status_line_and_headers_a_byte_at_a_time(
    api: Client, emu: LimioEmulator
) -> None:
    emu.add_fault(Fault(route="order", action="process_then_trickle_head", latency=0.005, times=1))
    connection = raw_order(emu, api, external_id="EXT-HEAD")
    started = time.monotonic()
    answer = connection.getresponse()  # the head, a byte every 5 ms: over a hundred bytes
    assert time.monotonic() - started > 0.3
    assert answer.status == 200
    assert json.loads(answer.read())["external_id"] == "EXT-HEAD"  # then the body at once
    assert ordered(emu, "EXT-HEAD")


def test_process_then_gzip_bomb_is_small_on_the_wire_and_decodes_to_the_order_and_whitespace(
    api: Client, emu: LimioEmulator
) -> None:
    emu.add_fault(Fault(route="order", action="process_then_gzip_bomb", size=64 * 2**20, times=1))
    answer = raw_order(emu, api, external_id="EXT-BOMB").getresponse()
    assert answer.status == 200 and answer.getheader("Content-Encoding") == "gzip"
    body = answer.read()
    assert len(body) < 2**20  # under 1 MB on the wire
    decoded = gzip.decompress(body)
    assert len(decoded) > 64 * 2**20
    assert json.loads(decoded)["external_id"] == "EXT-BOMB"  # valid JSON: the order, then whitespace
    assert ordered(emu, "EXT-BOMB")


@pytest.mark.parametrize(
    ("body", "sent"),
    [(None, b"{}"), ("not json", b"not json"), ('"ok"', b'"ok"'), ([], b"[]"), ({"id": None}, b'{"id": null}')],
    ids=["default", "text", "json-string", "list", "object"],
)
def test_process_then_garbage_answers_200_with_the_body(
    api: Client, emu: LimioEmulator, body: Any, sent: bytes
) -> None:
    emu.add_fault(Fault(route="order", action="process_then_garbage", body=body, times=1))
    answer = api.order(external_id="EXT-JUNK")
    assert answer.status_code == 200 and answer.content == sent
    assert answer.headers["Content-Type"] == "application/json"
    assert ordered(emu, "EXT-JUNK") and emu.requests[-1].status == 200
    assert api.order().json()["status"] == "submitted"  # the next answer is an order again


def test_process_then_reset_resets_the_connection(api: Client, emu: LimioEmulator) -> None:
    emu.add_fault(Fault(route="order", action="process_then_reset", times=2))
    with pytest.raises(requests.ConnectionError) as failed:
        api.order(external_id="EXT-RST")
    assert caused_by(failed.value, ConnectionResetError)
    assert ordered(emu, "EXT-RST") and emu.requests[-1].status is None
    connection = raw_order(emu, api, external_id="EXT-RST-2")
    assert connection.sock is not None
    with pytest.raises(ConnectionResetError):
        connection.sock.recv(1024)  # a RST, not an orderly close (which would read b"")
    assert ordered(emu, "EXT-RST-2")
    assert api.order().status_code == 200


def test_process_then_reset_under_tls(emulators: Start, connect: Connect) -> None:
    emulator = emulators(tls=True)
    api = connect(emulator)
    emulator.add_fault(Fault(route="order", action="process_then_reset", times=1))
    with pytest.raises(requests.ConnectionError) as failed:
        api.order(external_id="EXT-TLS-RST")
    assert caused_by(failed.value, ConnectionResetError)  # Python's ssl reads the RST as an abrupt EOF
    assert ordered(emulator, "EXT-TLS-RST")


def test_process_then_tls_error_breaks_tls_after_creating_the_order(emulators: Start, connect: Connect) -> None:
    emulator = emulators(tls=True)
    api = connect(emulator)
    emulator.add_fault(Fault(route="order", action="process_then_tls_error", times=2))
    with pytest.raises(requests.exceptions.SSLError):
        api.order(external_id="EXT-TLS")
    assert ordered(emulator, "EXT-TLS") and emulator.requests[-1].status is None
    connection = raw_order(emulator, api, external_id="EXT-TLS-2")
    with pytest.raises(ssl.SSLError):
        connection.getresponse()
    assert ordered(emulator, "EXT-TLS-2")
    assert api.order().status_code == 200


def test_process_then_tls_error_without_tls_sends_the_same_garbage(api: Client, emu: LimioEmulator) -> None:
    emu.add_fault(Fault(route="order", action="process_then_tls_error", times=2))
    with pytest.raises(requests.ConnectionError):
        api.order(external_id="EXT-PLAIN")
    connection = raw_order(emu, api, external_id="EXT-PLAIN-2")
    assert connection.sock is not None
    received = b""
    while chunk := connection.sock.recv(1024):
        received += chunk
    assert received == NOT_TLS
    assert ordered(emu, "EXT-PLAIN") and ordered(emu, "EXT-PLAIN-2")


def test_new_fault_fields_round_trip_and_are_checked() -> None:
    fault = Fault(route="order", action="process_then_garbage", body={"a": [1]}, location="/elsewhere")
    assert Fault.from_dict(fault.to_dict()) == fault
    assert fault.error()[2] == {"Location": "/elsewhere"}
    with pytest.raises(ValueError, match="location"):
        Fault(location="/a\r\nSet-Cookie: x=1")
    with pytest.raises(ValueError, match="body"):
        Fault(body=object())
    with pytest.raises(ValueError, match="status"):
        Fault(status=600)


# -- HTTPS ---------------------------------------------------------------------------------------------


def test_tls_emulator_is_trusted_only_with_its_certificate(emulators: Start, connect: Connect) -> None:
    emulator = emulators(tls=True)
    ca_path = emulator.ca_path
    assert ca_path is not None and os.path.isfile(ca_path) and emulator.url.startswith("https://127.0.0.1:")
    connection = json.loads(emulator.connection_json())
    assert connection["host"] == emulator.url and connection["extra"] == {
        "verify": ca_path,
        "order_link_template": f"{emulator.url}/_emulator/orders/{{order_id}}",
        "environment": "sandbox",
    }
    token = f"{emulator.url}/oauth2/token"
    assert requests.post(token, data=token_form(), verify=ca_path, timeout=5).status_code == 200
    with pytest.raises(requests.exceptions.SSLError):
        requests.post(token, data=token_form(), timeout=5)
    localhost = token.replace("127.0.0.1", "localhost")
    assert requests.post(localhost, data=token_form(), verify=ca_path, timeout=5).status_code == 200
    assert connect(emulator).order().status_code == 200
    emulator.stop()
    assert emulator.ca_path is None and not os.path.exists(os.path.dirname(ca_path))


def test_a_silent_tls_client_does_not_block_the_others(emulators: Start) -> None:
    emulator = emulators(tls=True)
    port = int(emulator.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)):  # connects, never says hello
        answer = requests.post(f"{emulator.url}/oauth2/token", data=token_form(), verify=emulator.ca_path, timeout=5)
        assert answer.status_code == 200


def test_tls_emulator_that_cannot_listen_leaves_no_certificate(
    emulators: Start, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    taken = int(emulators().url.rsplit(":", 1)[1])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    emulator = LimioEmulator(port=taken, tls=True)
    with pytest.raises(OSError):
        emulator.start()
    assert emulator.ca_path is None and list(tmp_path.iterdir()) == []


def test_plain_emulator_has_no_certificate(emu: LimioEmulator) -> None:
    assert emu.ca_path is None and emu.url.startswith("http://")
    assert "verify" not in json.loads(emu.connection_json())["extra"]


def test_cli_tls_prints_an_https_connection_that_trusts_its_certificate() -> None:
    command = [sys.executable, "-m", "limio_provider.testing", "--port", "0", "--tls"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(4)]
        export = next(line for line in lines if line.startswith("export AIRFLOW_CONN_LIMIO_DEFAULT="))
        connection = json.loads(shlex.split(export.split("=", 1)[1])[0])
        ca_path = connection["extra"]["verify"]
        assert connection["host"].startswith("https://") and connection["host"] in lines[0]
        assert any(ca_path in line for line in lines if not line.startswith("export"))
        url = f"{connection['host']}/oauth2/token"
        assert requests.post(url, data=token_form(), verify=ca_path, timeout=5).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
        assert not os.path.exists(ca_path)
    finally:
        process.kill()
        process.wait()


# -- the control routes --------------------------------------------------------------------------------


def test_control_routes_read_json_whatever_the_content_type(api: Client, emu: LimioEmulator) -> None:
    spec = {"route": "order", "action": "process_then_garbage", "body": "not json", "times": 1}
    form = {"Content-Type": "application/x-www-form-urlencoded"}  # what curl -d sends
    added = requests.post(f"{emu.url}/_emulator/faults", data=json.dumps(spec), headers=form, timeout=5)
    assert added.status_code == 200 and added.json()["fault"] == Fault(**spec).to_dict()
    assert api.order().content == b"not json"
    refused = requests.post(f"{emu.url}/_emulator/faults", data="route=order", headers=form, timeout=5)
    assert refused.status_code == 400


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_documented_curl_line_adds_a_fault(api: Client, emu: LimioEmulator) -> None:
    spec = '{"route": "order", "action": "status", "status": 429, "retry_after": 2, "times": 1}'
    curl = ["curl", "-sS", "--noproxy", "*", "-X", "POST", f"{emu.url}/_emulator/faults", "-d", spec]
    done = subprocess.run(curl, capture_output=True, text=True, timeout=10, check=True)
    assert json.loads(done.stdout)["fault"]["status"] == 429
    assert [api.order().status_code for _ in range(2)] == [429, 200]
