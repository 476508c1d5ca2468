"""The extra links' URLs: where a browser shows a batch's results file."""

from __future__ import annotations

import pytest

from limio_provider.links.limio import browser_url


@pytest.mark.parametrize(
    ("uri", "url"),
    [
        (
            "s3://aws_default@renewals/2026/01/01 results.jsonl",
            "https://s3.console.aws.amazon.com/s3/object/renewals?prefix=2026%2F01%2F01%20results.jsonl",
        ),
        ("s3://renewals/r.jsonl", "https://s3.console.aws.amazon.com/s3/object/renewals?prefix=r.jsonl"),
        ("gs://renewals/d/r.jsonl", "https://console.cloud.google.com/storage/browser/_details/renewals/d/r.jsonl"),
        ("https://files.example.com/r.jsonl", "https://files.example.com/r.jsonl"),
        # Airflow's UI shows only http(s) and mailto links: a local file, or a scheme with no known console, has none.
        ("file:///data/renewals/r.jsonl", None),
        ("/data/renewals/r.jsonl", None),
        ("abfs://container/r.jsonl", None),
    ],
    ids=["s3-with-conn-id", "s3", "gcs", "https", "file", "local-path", "other"],
)
def test_the_results_file_link_is_where_a_browser_shows_the_file(uri: str, url: str | None) -> None:
    assert browser_url(uri) == url
