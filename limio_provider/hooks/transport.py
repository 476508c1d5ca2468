"""How the hook talks to Limio on the wire: connections that record whether a request left this process, an
answer read whole within a deadline, and what went wrong said in words (the hook decides what it means)."""

from __future__ import annotations

import email.utils
import io
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import requests
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

#: Limio's error message is kept to this many characters.
MAX_MESSAGE_CHARS = 500

# -- Knowing whether a request left this process ---------------------------------------------------------
# requests raises the same exception types (SSLError, ConnectionError) whether the connection failed before
# the request was written or after, so the hook's connections record how far each exchange got: a submit
# is "not sent" only when the pool was entered and no connection to Limio was established for it.

wire = threading.local()


class _Tracked:
    """Marks the exchange "sending" once a connection is established (a request on a fresh connection
    connects first; one on a kept-alive connection sends at once)."""

    sock: Any

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        wire.phase = "sending"

    def request(self, *args: Any, **kwargs: Any) -> None:
        if self.sock is not None:
            wire.phase = "sending"
        super().request(*args, **kwargs)  # type: ignore[misc]

    def getresponse(self) -> Any:
        """The answer, read through a socket that gives each read only what is left of ``wire.answer_timeout``
        (seconds from now): a status line, headers or body trickled a byte at a time end there."""
        timeout, sock = getattr(wire, "answer_timeout", None), self.sock
        if timeout is None or sock is None:
            return super().getresponse()  # type: ignore[misc]
        self.sock = _DeadlineSocket(sock, time.monotonic() + timeout)
        try:
            return super().getresponse()  # type: ignore[misc]
        finally:
            if self.sock is not None:  # None: http.client closed it (the answer said so)
                self.sock = sock


class _DeadlineSocket:
    """A connection's socket while an answer is read: every read waits at most until ``deadline``."""

    def __init__(self, sock: Any, deadline: float) -> None:
        self._sock, self._deadline = sock, deadline

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(socket.SocketIO(self, "rb"))  # type: ignore[arg-type]

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the answer was still arriving when the timeout ran out")
        timeout = self._sock.gettimeout()
        self._sock.settimeout(left if timeout is None else min(timeout, left))
        try:
            return int(self._sock.recv_into(buffer, nbytes, flags))
        finally:
            self._sock.settimeout(timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _TrackedHTTPConnection(_Tracked, HTTPConnection):
    pass


class _TrackedHTTPSConnection(_Tracked, HTTPSConnection):
    pass


class _TrackedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection

    def urlopen(self, *args: Any, **kwargs: Any) -> Any:
        wire.phase = "connecting"
        return super().urlopen(*args, **kwargs)


class _TrackedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection

    def urlopen(self, *args: Any, **kwargs: Any) -> Any:
        wire.phase = "connecting"
        return super().urlopen(*args, **kwargs)


_TRACKED_POOLS = {"http": _TrackedHTTPConnectionPool, "https": _TrackedHTTPSConnectionPool}


class TrackedAdapter(requests.adapters.HTTPAdapter):
    """An adapter whose pools record whether a request was started (SOCKS proxies are not tracked, so
    every failure through them counts as "may have been sent")."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _TRACKED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _TRACKED_POOLS
        return manager


class AnswerTooLarge(requests.RequestException):
    """An answer larger, once decoded, than the hook reads (``max_answer_bytes``)."""


def read_answer(response: requests.Response, deadline: float, max_bytes: int) -> None:
    """Read the whole body into ``response``, as requests does unless asked to stream, but give up at
    ``deadline`` (monotonic) or past ``max_bytes`` decoded: requests' read timeout bounds each read, so an
    answer trickled a byte at a time would otherwise hold the call for as long as the server likes, and a
    small compressed answer can decode to gigabytes. (urllib3 decodes a streamed read a chunk at a time.)"""
    from urllib3.exceptions import DecodeError, ProtocolError, ReadTimeoutError
    from urllib3.exceptions import SSLError as TLSError

    chunks, size = [], 0
    try:
        while chunk := response.raw.read1(65536, decode_content=True):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                response.close()
                raise AnswerTooLarge(f"the answer was larger than {max_bytes} bytes decoded (max_answer_bytes)")
            if time.monotonic() > deadline:
                response.close()
                raise requests.exceptions.ReadTimeout("the answer was still arriving when the timeout ran out")
    except ProtocolError as exc:  # the same mapping as requests' own reading of a body
        raise requests.exceptions.ChunkedEncodingError(exc) from exc
    except DecodeError as exc:
        raise requests.exceptions.ContentDecodingError(exc) from exc
    except ReadTimeoutError as exc:  # requests says ConnectionError; it is the answer's time running out
        raise requests.exceptions.ReadTimeout(exc) from exc
    except TLSError as exc:
        raise requests.exceptions.SSLError(exc) from exc
    response._content = b"".join(chunks)
    response.raw.release_conn()  # back to the pool for the next call


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (a number or an HTTP date); ``None`` if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def limio_message(response: requests.Response) -> str:
    """Limio's own ``message`` from an error body, shortened; never the body itself (the hook also
    scrubs its secrets from it, in case Limio echoes them)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    message = ""
    if isinstance(body, dict):
        for key in ("message", "error_description", "error"):
            if isinstance(body.get(key), str):
                message = body[key]
                break
    message = message or response.reason or "no message"
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "..."


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: ``__cause__``/``__context__``, urllib3's ``reason`` and ``args[0]``."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for nested in (current.__cause__, current.__context__, getattr(current, "reason", None)):
            if isinstance(nested, BaseException):
                todo.append(nested)
        todo.extend(arg for arg in current.args[:1] if isinstance(arg, BaseException))


def _setup_cause_in_words(cause: BaseException, *, sent: bool) -> str | None:
    """A cause that says what is wrong with how this machine reaches Limio (TLS, DNS, a refused port), in
    words; ``None`` for any other."""
    from urllib3.exceptions import NameResolutionError

    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({cause.verify_message or cause.reason})"
    if isinstance(cause, ssl.SSLError) and sent:
        return f"TLS error while reading the answer ({cause.reason or type(cause).__name__})"
    if isinstance(cause, ssl.SSLError) and cause.reason in ("WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL"):
        return "TLS protocol mismatch: the server did not answer TLS (is the host http://?)"
    if isinstance(cause, NameResolutionError):
        return "host name not resolved"
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused (is the host or port right, and is Limio reachable from here?)"
    return None


def cause_in_words(exc: BaseException, *, sent: bool = False) -> str:
    """What went wrong on the wire, in words a person can act on (``sent``: after the request left, when a
    TLS error is a broken answer, not a wrong scheme)."""
    from urllib3.exceptions import DecodeError, ProtocolError

    causes = list(_causes(exc))
    if isinstance(exc, AnswerTooLarge):
        return str(exc)
    if isinstance(exc, requests.exceptions.ContentDecodingError):
        return "the answer could not be decoded"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "the answer was cut short"
    for cause in causes:
        words = _setup_cause_in_words(cause, sent=sent)
        if words:
            return words
    for cause in causes:
        if isinstance(cause, ssl.SSLError):
            return f"TLS error ({cause.reason or type(cause).__name__})"
        if isinstance(cause, DecodeError):
            return "the answer could not be decoded"
        if isinstance(cause, ConnectionResetError):
            return "connection reset"
    if isinstance(exc, requests.ConnectTimeout):
        return "timed out connecting"
    if isinstance(exc, requests.Timeout):
        return "timed out waiting for the answer"
    if any(isinstance(cause, ProtocolError) for cause in causes):
        return "connection closed without a complete answer"
    return type(exc).__name__
