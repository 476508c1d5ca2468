"""The task's "Limio order" extra link in a real browser, after a DAG run that submitted an order to the emulator."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest
from selenium.webdriver.common.by import By

from tests.ui import pages
from tests.ui.conftest import DAG_ID, EXTERNAL_ID, TASK_ID
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


def open_task_details(driver: WebDriver, airflow: Airflow) -> None:
    run_id = airflow.dag_run_id()
    driver.get(f"{airflow.url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/{TASK_ID}")
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
