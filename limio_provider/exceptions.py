"""Typed errors raised by the Limio provider, all under one :class:`LimioError`."""

from __future__ import annotations

from airflow.providers.common.compat.sdk import AirflowException


class LimioError(AirflowException):
    """Base class of every error the Limio provider raises."""

    #: Set by the hook on errors that are safe to retry for the call that raised them.
    retryable: bool = False


class LimioConfigError(LimioError):
    """The Airflow connection or hook arguments are not usable (raised before any network call)."""


class LimioValidationError(LimioError, ValueError):
    """An order or argument failed validation; nothing was sent to Limio."""


class LimioPreviewRejectedError(LimioError):
    """A submit operator's ``preview_check`` refused the preview, so the order was not submitted."""


class LimioResponseError(LimioError):
    """Limio answered with an HTTP error.

    Carries the HTTP status and Limio's own ``message`` (never the request or response body, headers or
    token).
    """

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class LimioAuthError(LimioResponseError):
    """Limio refused the credentials: 401 after one token refresh, 403, or a failed token request."""


class LimioOrderRejectedError(LimioResponseError):
    """Limio rejected the request as invalid (400, 404, 409, 422 and other 4xx): permanent, never retried."""


class LimioNotFoundError(LimioOrderRejectedError):
    """The requested object does not exist (404 on a read)."""


class LimioRateLimitedError(LimioResponseError):
    """Limio answered 429 and retries ran out."""


class LimioServerError(LimioResponseError):
    """Limio answered 5xx (or the connection failed) and retries ran out."""


class LimioOutcomeUnknownError(LimioError):
    """A submit was sent but no trustworthy answer came back (read timeout, dropped connection, 500/502/504).

    Limio may or may not have created the order. The request is never resent blindly: reconcile by
    :attr:`external_id` before submitting again.
    """

    def __init__(self, message: str, *, external_id: str | None, status: int | None = None) -> None:
        super().__init__(message)
        self.external_id = external_id
        self.status = status


class LimioOrderFailedError(LimioError):
    """Limio finished processing the order with a failure status; carries Limio's reason."""

    def __init__(self, message: str, *, order_id: str | None, status: str | None) -> None:
        super().__init__(message)
        self.order_id = order_id
        self.status = status


class LimioWaitTimeoutError(LimioError):
    """The order did not reach a final status within the wait timeout."""
