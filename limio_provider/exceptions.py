"""Typed errors raised by the Limio provider, all under one :class:`LimioError`."""

from __future__ import annotations

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException


class LimioError(AirflowException):
    """Base class of every error the Limio provider raises.

    :param retryable: the call that raised it may safely be repeated (set by the hook).
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class LimioConfigError(LimioError):
    """The Airflow connection or hook arguments are not usable (raised before any network call)."""


class LimioValidationError(LimioError, ValueError):
    """An order or argument failed validation; nothing was sent to Limio."""


class LimioExternalIdTakenError(LimioValidationError):
    """The order's ``external_id`` already names another order (another body) in the order ledger; this one
    was not sent. Carries :attr:`order_id`: the order Limio holds under that external_id, where the ledger
    knows it (``None`` while that order's send has no known outcome)."""

    def __init__(self, message: str, *, order_id: str | None) -> None:
        super().__init__(message)
        self.order_id = order_id


class LimioPreviewRejectedError(LimioError):
    """A submit operator's ``preview_check`` refused the preview, so the order was not submitted."""


class LimioResponseError(LimioError):
    """Limio answered with an HTTP error.

    Carries the HTTP status and Limio's own ``message`` (never the request or response body, headers or
    token).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message, retryable=retryable)
        self.status = status
        self.retry_after = retry_after


class LimioAuthError(LimioResponseError):
    """Limio refused the credentials: 401 after one token refresh, 403, or a failed token request."""


class LimioOrderRejectedError(LimioResponseError):
    """Limio refused the request as invalid (400, 404, 422 and the other 4xx it answers before processing):
    permanent, never retried."""


class LimioNotFoundError(LimioOrderRejectedError):
    """The requested object does not exist (404 on a read)."""


class LimioRateLimitedError(LimioResponseError):
    """Limio answered 429 and retries ran out."""


class LimioServerError(LimioResponseError):
    """Limio answered 5xx, or could not be reached, and retries ran out."""


class LimioConnectionError(LimioServerError):
    """No HTTP exchange took place, or it broke off: the cause is in words in the message (connection refused,
    name not resolved, TLS certificate not trusted...)."""


class LimioOutcomeUnknownError(LimioError):
    """A submit reached Limio but no answer proves whether it was processed (a read timeout, a reset, a 5xx
    other than 503, a 3xx, a truncated or unreadable body...).

    Limio may or may not have created the order. The request is never resent blindly: reconcile by
    :attr:`external_id` before submitting again.
    """

    def __init__(
        self, message: str, *, external_id: str | None, status: int | None = None, ref: str | None = None
    ) -> None:
        super().__init__(message)
        self.external_id = external_id
        self.status = status
        #: The name of the send whose outcome a person may decide (the message says how), if any.
        self.ref = ref


class LimioClaimLostError(LimioError):
    """This try no longer holds the order ledger's claim on :attr:`external_id`: another try took it over (this
    one was thought dead: frozen, partitioned) or changed the record. This try sent nothing after losing it and
    sends nothing now; the holder named in the message owns the order's outcome. A batch whose task instance
    a later try took over raises it too (``external_id`` ``None``), and leaves the results file to that try.
    """

    def __init__(self, message: str, *, external_id: str | None) -> None:
        super().__init__(message)
        self.external_id = external_id


class LimioOrderFailedError(LimioError):
    """Limio finished processing the order with a failure status; carries Limio's reason."""

    def __init__(self, message: str, *, order_id: str | None, status: str | None) -> None:
        super().__init__(message)
        self.order_id = order_id
        self.status = status


class LimioOrderNotRecordedError(LimioError):
    """Limio holds the order (it answered with it, or it was found), and writing that down failed (the task's
    record, or the order ledger: a full disk, an S3 5xx). The order exists and is never sent again: a retry of
    the task finds it by the id it stored, or by its external_id, and records it. Carries :attr:`order_id`,
    :attr:`external_id` and :attr:`adopted` (whether an earlier try or run had created it)."""

    def __init__(self, message: str, *, external_id: str, order_id: str, adopted: bool) -> None:
        super().__init__(message)
        self.external_id = external_id
        self.order_id = order_id
        self.adopted = adopted


class LimioWaitTimeoutError(LimioError):
    """The order did not reach a final status within the wait timeout."""


class LimioBatchFailedError(LimioError):
    """A batch of orders ended with more orders not submitted (refused, unknown, failed or invalid) than its
    ``max_failed`` allows; :attr:`summary` is the batch's summary (also its XCom ``return_value``)."""

    def __init__(self, message: str, *, summary: dict) -> None:
        super().__init__(message)
        self.summary = summary


class LimioReconciliationError(LimioError):
    """A reconciliation found more problems (orders missing, failed, failed downstream or unexpected) than its
    ``max_problems`` allows; :attr:`summary` is its summary (also its XCom ``return_value``)."""

    def __init__(self, message: str, *, summary: dict) -> None:
        super().__init__(message)
        self.summary = summary


class LimioProcessingFailedError(LimioOrderFailedError):
    """Limio's order reads ``complete``, but one of its process events says a plugin failed (billing, for
    example): the order exists and was not fully processed. Carries the plugins' :attr:`errors`."""

    def __init__(self, message: str, *, order_id: str | None, status: str | None, errors: list[str]) -> None:
        super().__init__(message, order_id=order_id, status=status)
        self.errors = errors


class LimioBudgetExceededError(LimioError, AirflowFailException):
    """A batch's preview pass came to more than its budget (``max_orders``, ``max_total_due``): nothing was
    sent. The task fails without retrying (a retry would preview the same orders); :attr:`preview` is what
    the preview pass found."""

    def __init__(self, message: str, *, preview: dict) -> None:
        super().__init__(message)
        self.preview = preview


class LimioApprovalError(LimioError, AirflowFailException):
    """A person rejected a batch, nobody answered within the approval's timeout, or the orders changed after
    they were approved: nothing was sent. The task fails without retrying."""
