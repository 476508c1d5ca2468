"""The extra links: "Limio order" (a submit task's order) and "Limio results file" (a batch's results), each
read from the URL its operator pushes to XCom."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, urlsplit

from airflow.providers.common.compat.sdk import BaseOperatorLink, XCom

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context, TaskInstanceKey


class _XComLink(BaseOperatorLink):
    """A link whose URL the task pushed to XCom under :attr:`key` (empty: none, and no link is shown)."""

    name: ClassVar[str]
    key: ClassVar[str]

    #: The operator attribute holding the URL in the worker that ran the task (``None``: no URL).
    attribute: ClassVar[str]

    @classmethod
    def persist(cls, context: Context, *, url: str | None) -> None:
        """Push the URL to XCom for this task instance; nothing when there is none (no link is shown)."""
        if url:
            context["ti"].xcom_push(key=cls.key, value=url)

    def get_link(self, operator: Any, *, ti_key: TaskInstanceKey) -> str:
        # Airflow 3 computes each link in the worker as the task ends: the operator that ran knows whether it
        # has a URL, and asking XCom for a task without one would log "XCom not found" at ERROR.
        if hasattr(operator, self.attribute):
            return getattr(operator, self.attribute) or ""
        return XCom.get_value(key=self.key, ti_key=ti_key) or ""


class LimioOrderLink(_XComLink):
    """Links a submit task instance (mapped ones included) to the order it created, on the page the
    connection's ``order_link_template`` names. Limio documents no web address for an order, so without a
    template there is no link."""

    name = "Limio order"
    key: ClassVar[str] = "limio_order_url"
    attribute: ClassVar[str] = "limio_order_url"


class LimioResultsFileLink(_XComLink):
    """Links a batch task instance to its results file where a browser can show it (:func:`browser_url`): on
    S3 or Google Cloud Storage, their consoles; a local file has no link (its path is in the summary)."""

    name = "Limio results file"
    key: ClassVar[str] = "limio_results_url"
    attribute: ClassVar[str] = "limio_results_url"


def browser_url(uri: str) -> str | None:
    """Where a browser shows the object storage file ``uri``: the AWS S3 console for ``s3://``, the Google
    Cloud console for ``gs://``, an ``http(s)://`` URI as it is; ``None`` (no link) for a local file or
    another scheme, which Airflow's UI would not open (it shows only ``http``, ``https`` and ``mailto``
    links). An Airflow connection id written in the URI (``s3://aws_default@bucket/key``) is left out."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    bucket = parts.hostname or ""
    key = parts.path.lstrip("/")
    if scheme in ("s3", "s3a") and bucket:
        return f"https://s3.console.aws.amazon.com/s3/object/{quote(bucket)}?prefix={quote(key, safe='')}"
    if scheme in ("gs", "gcs") and bucket:
        return f"https://console.cloud.google.com/storage/browser/_details/{quote(bucket)}/{quote(key)}"
    if scheme in ("http", "https"):
        return uri
    return None
