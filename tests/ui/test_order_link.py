"""The tasks' extra links in a real browser: "Limio order" after a submit, "Limio results file" after a batch."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest
from selenium.webdriver.common.by import By

from tests.helpers import moto_client
from tests.ui import pages
from tests.ui.conftest import BATCH_TASK_ID, DAG_ID, EXTERNAL_ID, TASK_ID
from tests.ui.pages import click, text_is

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

    from limio_provider.testing.emulator import LimioEmulator
    from tests.ui.conftest import Airflow

pytestmark = pytest.mark.ui


def the_order(emulator: LimioEmulator) -> dict:
    orders = emulator.orders_with_external_id(EXTERNAL_ID)
    assert len(orders) == 1, orders
    return orders[0]


def open_task_details(driver: WebDriver, airflow: Airflow, task_id: str = TASK_ID) -> None:
    run_id = airflow.dag_run_id()
    driver.get(f"{airflow.url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/{task_id}")
    click(driver, f"//*[self::a or self::button or @role='tab'][{text_is('Details')}]")


def test_order_link_leads_to_the_emulators_order(browser: WebDriver, airflow: Airflow, emulator: LimioEmulator) -> None:
    open_task_details(browser, airflow)
    link = pages.visible(browser, f"//a[{text_is('Limio order')}]")
    order = the_order(emulator)
    order_url = f"{emulator.url}/_emulator/orders/{order['id']}"  # the emulator connection's order page
    assert link.get_attribute("href") == order_url
    assert link.get_attribute("target") == "_blank"  # another site: a new tab
    pages.screenshot(browser, "07-task-extra-link")

    home = browser.current_window_handle
    link.click()
    pages.wait(browser).until(lambda d: len(d.window_handles) == 2, "the link opened no tab")
    browser.switch_to.window(next(handle for handle in browser.window_handles if handle != home))
    try:
        pages.wait(browser).until(lambda d: d.current_url == order_url, "the tab is not at the order's URL")
        page = pages.wait(browser).until(lambda d: d.find_element(By.TAG_NAME, "body").text.strip(), "an empty page")
        assert order["id"] in page and EXTERNAL_ID in page  # the order a person came to see
        pages.screenshot(browser, "08-limio-order-link-target")
    finally:
        browser.close()
        browser.switch_to.window(home)


def test_the_batch_links_to_its_results_file(
    browser: WebDriver, airflow: Airflow, emulator: LimioEmulator, moto_s3: str
) -> None:

    open_task_details(browser, airflow, BATCH_TASK_ID)
    link = pages.visible(browser, f"//a[{text_is('Limio results file')}]")
    pages.screenshot(browser, "09-batch-results-link")
    # Results on S3: the link opens the file in the AWS console (not followed here: that is AWS, not moto).
    console = "https://s3.console.aws.amazon.com/s3/object/limio-ui-results?prefix=batch.results.jsonl"
    assert link.get_attribute("href") == console
    assert link.get_attribute("target") == "_blank"
    # What is at the other end: the batch's results, one line per order, each the one order Limio holds.
    s3 = moto_client(moto_s3)
    body = s3.get_object(Bucket="limio-ui-results", Key="batch.results.jsonl")["Body"].read().decode()
    rows = [json.loads(line) for line in body.splitlines()]
    assert sorted((row["external_id"], row["outcome"]) for row in rows) == [
        ("ui-batch-1", "submitted"),
        ("ui-batch-2", "submitted"),
    ]
    for row in rows:
        assert [order["id"] for order in emulator.orders_with_external_id(row["external_id"])] == [row["order_id"]]
